//! The real S3 Batch Operations service: copy jobs created with S3 Control `CreateJob`, watched
//! with `DescribeJob`, confirmed or cancelled with `UpdateJobStatus`, and the IAM role such a
//! job runs as.
//!
//! The public API speaks plain Rust types; the SDK types stay in this module. Every SDK error
//! goes through [`map_sdk_error`]; the operation names used in errors are the IAM actions the
//! call needs (`s3:CreateJob`, `iam:PutRolePolicy`, ...), so an access-denied error says which
//! permission is missing.

use std::collections::BTreeSet;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::ProvideCredentials;
use aws_sdk_iam::Client as IamClient;
use aws_sdk_s3control::types::{
    JobManifest, JobManifestFieldName, JobManifestFormat, JobManifestLocation, JobManifestSpec,
    JobOperation, JobReport, JobReportFormat, JobReportScope, RequestedJobStatus,
    S3ChecksumAlgorithm, S3CopyObjectOperation, S3MetadataDirective, S3StorageClass,
};
use aws_sdk_s3control::Client as S3ControlClient;
use aws_smithy_runtime_api::http::Response as HttpResponse;
use s3ferry_store::{ErrorKind, Result, StoreError};
use serde_json::{json, Value};

use crate::error::{build_error, map_sdk_error, ErrCtx};

/// The service principal that runs Batch Operations jobs (the role's trust policy names it).
pub const BATCH_OPS_PRINCIPAL: &str = "batchoperations.s3.amazonaws.com";
/// The name of the inline policy [`BatchOps::create_role`] puts on the role.
pub const ROLE_POLICY_NAME: &str = "s3ferry-batch-copy";

/// Where and as whom to talk to S3 Control and IAM.
#[derive(Clone, Debug, Default)]
pub struct BatchOpsConfig {
    /// The account that owns the jobs. `None`: the one the credentials name (SSO, or
    /// `AWS_ACCOUNT_ID` / `aws_account_id` in the profile); STS is not asked.
    pub account_id: Option<String>,
    /// `None` = AWS (or `AWS_ENDPOINT_URL_S3_CONTROL` / the profile, which the SDK reads).
    pub endpoint_url: Option<String>,
    pub profile: Option<String>,
    /// The region the job runs in (the buckets' region). `None` = the SDK's default chain.
    pub region: Option<String>,
}

/// What a job reads its object list from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManifestSpec {
    /// A Batch Operations CSV (`bucket,key` or `bucket,key,versionId`), no header.
    Csv {
        object_arn: String,
        etag: String,
        with_version_ids: bool,
    },
    /// An S3 Inventory `manifest.json` (CSV inventory).
    Inventory { object_arn: String, etag: String },
}

/// A server-side copy job (`S3PutObjectCopy`) of every object the manifest lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyJobSpec {
    pub manifest: ManifestSpec,
    /// `arn:aws:s3:::dest-bucket`.
    pub target_bucket_arn: String,
    /// Prepended to every key as is (`backup/` gives `backup/<key>`).
    pub target_prefix: Option<String>,
    /// `STANDARD`, `STANDARD_IA`, `GLACIER_IR`, ... (case-insensitive).
    pub storage_class: Option<String>,
    /// `COPY` or `REPLACE` (case-insensitive).
    pub metadata_directive: Option<String>,
    /// `CRC64NVME`, `CRC32`, `CRC32C`, `SHA1`, `SHA256` (case-insensitive).
    pub checksum_algorithm: Option<String>,
    /// `arn:aws:s3:::report-bucket`; the completion report is always written.
    pub report_bucket_arn: String,
    pub report_prefix: Option<String>,
    /// Report only failed tasks (`FailedTasksOnly`) instead of all (`AllTasks`).
    pub report_failed_only: bool,
    pub role_arn: String,
    /// 0 or more; higher runs first.
    pub priority: i32,
    /// The job waits in `Suspended` until [`BatchOps::confirm`].
    pub confirmation_required: bool,
    /// Idempotency: the same token creates the same job once. Empty: the SDK makes one.
    pub client_request_token: String,
    /// Empty: no description.
    pub description: String,
}

/// A job's state and progress as `DescribeJob` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobStatus {
    pub id: String,
    /// New, Preparing, Suspended, Ready, Active, Pausing, Paused, Complete, Cancelling,
    /// Cancelled, Failing, Failed.
    pub state: String,
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// `code: reason` of each job-level failure.
    pub failure_reasons: Vec<String>,
}

impl JobStatus {
    /// The job will not change any more.
    pub fn is_terminal(&self) -> bool {
        matches!(self.state.as_str(), "Complete" | "Cancelled" | "Failed")
    }

    /// As the console shows it: `State: Complete, Total: 836, Success: 836, Failed: 0`.
    pub fn summary_line(&self) -> String {
        format!(
            "State: {}, Total: {}, Success: {}, Failed: {}",
            self.state, self.total, self.succeeded, self.failed
        )
    }
}

/// S3 Control and IAM clients for one account.
#[derive(Clone, Debug)]
pub struct BatchOps {
    s3control: S3ControlClient,
    iam: IamClient,
    account_id: String,
    /// The ARN partition of the region (`aws`, `aws-cn`, `aws-us-gov`, ...).
    partition: &'static str,
    ctx: ErrCtx,
}

/// The ARN partition of `region`: `aws-cn` for China, `aws-us-gov` for GovCloud, the ISO
/// partitions, else `aws`.
pub fn partition_of(region: &str) -> &'static str {
    const BY_PREFIX: [(&str, &str); 6] = [
        ("cn-", "aws-cn"),
        ("us-gov-", "aws-us-gov"),
        ("us-isob-", "aws-iso-b"),
        ("us-isof-", "aws-iso-f"),
        ("eu-isoe-", "aws-iso-e"),
        ("us-iso-", "aws-iso"),
    ];
    BY_PREFIX
        .iter()
        .find(|(p, _)| region.starts_with(p))
        .map_or("aws", |(_, partition)| partition)
}

impl BatchOps {
    pub async fn connect(cfg: BatchOpsConfig) -> Result<Self> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(p) = &cfg.profile {
            loader = loader.profile_name(p);
        }
        if let Some(r) = &cfg.region {
            loader = loader.region(Region::new(r.clone()));
        }
        if let Some(u) = &cfg.endpoint_url {
            loader = loader.endpoint_url(u);
        }
        let loader = crate::settings::configure(loader, cfg.profile.as_deref()).await?;
        let sdk = loader.load().await;
        let Some(region) = sdk.region().map(|r| r.to_string()) else {
            return Err(StoreError::new(
                ErrorKind::InvalidInput,
                "batch connect",
                "no region: S3 Batch Operations jobs run in the buckets' region; pass --region \
                 or set AWS_REGION",
            ));
        };
        let account_id = match cfg.account_id {
            Some(a) => a,
            None => account_from_credentials(&sdk).await?,
        };
        check_account_id(&account_id)?;
        let ctx = ErrCtx {
            bucket: format!("S3 Batch Operations of account {account_id}"),
            endpoint: cfg
                .endpoint_url
                .unwrap_or_else(|| format!("AWS S3 Control ({region})")),
            creds: None,
            sse_c: false,
        };
        Ok(Self {
            s3control: S3ControlClient::new(&sdk),
            iam: IamClient::new(&sdk),
            account_id,
            partition: partition_of(&region),
            ctx,
        })
    }

    /// Clients made elsewhere (tests hand in mocked ones).
    #[doc(hidden)]
    pub fn from_clients(s3control: S3ControlClient, iam: IamClient, account_id: String) -> Self {
        Self {
            ctx: ErrCtx {
                bucket: format!("S3 Batch Operations of account {account_id}"),
                endpoint: "S3 Control".into(),
                creds: None,
                sse_c: false,
            },
            s3control,
            iam,
            account_id,
            partition: "aws",
        }
    }

    pub fn account_id(&self) -> &str {
        &self.account_id
    }

    /// The ARN partition jobs, roles and buckets are named in (from the region).
    pub fn partition(&self) -> &'static str {
        self.partition
    }

    /// [`Self::create_copy_job`] with a role created moments ago. IAM is eventually consistent:
    /// until the role has propagated, S3 Control answers that it cannot assume or pass it.
    /// Such answers are retried for about a minute, with the same client request token (so
    /// never two jobs); any other error is returned at once.
    pub async fn create_copy_job_new_role(&self, spec: &CopyJobSpec) -> Result<String> {
        let deadline = tokio::time::Instant::now() + NEW_ROLE_WAIT;
        let mut wait = Duration::from_secs(2);
        loop {
            match self.create_copy_job(spec).await {
                Err(e) if role_not_ready(&e) && tokio::time::Instant::now() + wait < deadline => {
                    tracing::info!("{e}; the role is new, trying again in {wait:?}");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(16));
                }
                r => return r,
            }
        }
    }

    /// Create an `S3PutObjectCopy` job; returns its id. A role created just before may take a
    /// few seconds to be usable (IAM is eventually consistent).
    pub async fn create_copy_job(&self, spec: &CopyJobSpec) -> Result<String> {
        const OP: &str = "s3:CreateJob";
        let (manifest, operation, report) = job_parts(spec)?;
        if spec.priority < 0 {
            return Err(invalid(OP, format!("priority {} < 0", spec.priority)));
        }
        if !spec.role_arn.starts_with("arn:") {
            return Err(invalid(
                OP,
                format!(
                    "role '{}' is not an ARN (arn:aws:iam::<account>:role/<name>)",
                    spec.role_arn
                ),
            ));
        }
        let mut req = self
            .s3control
            .create_job()
            .account_id(&self.account_id)
            .role_arn(&spec.role_arn)
            .priority(spec.priority)
            .confirmation_required(spec.confirmation_required)
            .manifest(manifest)
            .operation(operation)
            .report(report);
        if !spec.client_request_token.is_empty() {
            req = req.client_request_token(&spec.client_request_token);
        }
        if !spec.description.is_empty() {
            req = req.description(&spec.description);
        }
        let out = req.send().await.map_err(|e| self.sdk_error(OP, e))?;
        match out.job_id() {
            Some(id) if !id.is_empty() => Ok(id.to_string()),
            _ => Err(StoreError::new(
                ErrorKind::Other,
                OP,
                "the service answered without a job id",
            )),
        }
    }

    pub async fn describe(&self, job_id: &str) -> Result<JobStatus> {
        const OP: &str = "s3:DescribeJob";
        let out = self
            .s3control
            .describe_job()
            .account_id(&self.account_id)
            .job_id(job_id)
            .send()
            .await
            .map_err(|e| self.sdk_error(OP, e))?;
        let Some(job) = out.job() else {
            return Err(StoreError::new(
                ErrorKind::Other,
                OP,
                format!("the service answered without job {job_id}"),
            ));
        };
        let count = |n: Option<i64>| n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
        let progress = job.progress_summary();
        Ok(JobStatus {
            id: job.job_id().unwrap_or(job_id).to_string(),
            state: job
                .status()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            total: count(progress.and_then(|p| p.total_number_of_tasks())),
            succeeded: count(progress.and_then(|p| p.number_of_tasks_succeeded())),
            failed: count(progress.and_then(|p| p.number_of_tasks_failed())),
            failure_reasons: job
                .failure_reasons()
                .iter()
                .map(|f| match (f.failure_code(), f.failure_reason()) {
                    (Some(c), Some(r)) => format!("{c}: {r}"),
                    (Some(s), None) | (None, Some(s)) => s.to_string(),
                    (None, None) => "unknown failure".to_string(),
                })
                .collect(),
        })
    }

    /// Let a job created with `confirmation_required` run (`Suspended` -> `Ready`).
    pub async fn confirm(&self, job_id: &str) -> Result<()> {
        self.update_status(job_id, RequestedJobStatus::Ready).await
    }

    pub async fn cancel(&self, job_id: &str) -> Result<()> {
        self.update_status(job_id, RequestedJobStatus::Cancelled)
            .await
    }

    async fn update_status(&self, job_id: &str, status: RequestedJobStatus) -> Result<()> {
        const OP: &str = "s3:UpdateJobStatus";
        self.s3control
            .update_job_status()
            .account_id(&self.account_id)
            .job_id(job_id)
            .requested_job_status(status)
            .send()
            .await
            .map_err(|e| self.sdk_error(OP, e))?;
        Ok(())
    }

    /// Poll [`describe`](Self::describe) every `poll` until the job is terminal and return its
    /// last status. `on_status` sees the first status and every change of (state, succeeded,
    /// failed). A job waiting for confirmation (`Suspended`) is waited for too: bound the call
    /// with a timeout if nobody will confirm it.
    pub async fn wait(
        &self,
        job_id: &str,
        poll: Duration,
        on_status: &mut (dyn FnMut(&JobStatus) + Send),
    ) -> Result<JobStatus> {
        let mut seen: Option<(String, u64, u64)> = None;
        loop {
            let status = self.describe(job_id).await?;
            let now = (status.state.clone(), status.succeeded, status.failed);
            if seen.as_ref() != Some(&now) {
                on_status(&status);
                seen = Some(now);
            }
            if status.is_terminal() {
                return Ok(status);
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Create the IAM role `name` that Batch Operations can assume, with `policy` as its inline
    /// policy [`ROLE_POLICY_NAME`]; returns the role's ARN. If the role exists and trusts
    /// Batch Operations, its inline policy is replaced; if it does not trust Batch Operations,
    /// nothing is changed and the error says so.
    pub async fn create_role(&self, name: &str, policy: &Value) -> Result<String> {
        let created = self
            .iam
            .create_role()
            .role_name(name)
            .assume_role_policy_document(trust_policy().to_string())
            .description("S3 Batch Operations copy jobs (made by s3ferry)")
            .send()
            .await;
        let arn = match created {
            Ok(out) => match out.role() {
                Some(r) => r.arn().to_string(),
                None => {
                    return Err(StoreError::new(
                        ErrorKind::Other,
                        "iam:CreateRole",
                        "the service answered without the role",
                    ))
                }
            },
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_entity_already_exists_exception()) =>
            {
                self.existing_role_arn(name).await?
            }
            Err(e) => return Err(self.sdk_error("iam:CreateRole", e)),
        };
        self.iam
            .put_role_policy()
            .role_name(name)
            .policy_name(ROLE_POLICY_NAME)
            .policy_document(policy.to_string())
            .send()
            .await
            .map_err(|e| self.sdk_error("iam:PutRolePolicy", e))?;
        Ok(arn)
    }

    async fn existing_role_arn(&self, name: &str) -> Result<String> {
        const OP: &str = "iam:GetRole";
        let out = self
            .iam
            .get_role()
            .role_name(name)
            .send()
            .await
            .map_err(|e| self.sdk_error(OP, e))?;
        let Some(role) = out.role() else {
            return Err(StoreError::new(
                ErrorKind::Other,
                OP,
                format!("the service answered without role {name}"),
            ));
        };
        // IAM returns the trust policy URL-encoded.
        let trust = role.assume_role_policy_document().unwrap_or_default();
        let decoded = percent_encoding::percent_decode_str(trust).decode_utf8_lossy();
        if !decoded.contains(BATCH_OPS_PRINCIPAL) {
            return Err(invalid(
                OP,
                format!(
                    "role {name} exists but its trust policy does not name \
                     {BATCH_OPS_PRINCIPAL}; left unchanged (choose another role name)"
                ),
            ));
        }
        Ok(role.arn().to_string())
    }

    /// [`map_sdk_error`], plus the permission to ask for when access was denied.
    fn sdk_error<E>(
        &self,
        op: &'static str,
        err: aws_smithy_runtime_api::client::result::SdkError<E, HttpResponse>,
    ) -> StoreError
    where
        E: aws_smithy_types::error::metadata::ProvideErrorMetadata
            + std::error::Error
            + Send
            + Sync
            + 'static,
    {
        let mut e = map_sdk_error(&self.ctx, op, None, err);
        if e.kind == ErrorKind::PermissionDenied {
            let needs = if op == "s3:CreateJob" {
                "s3:CreateJob and iam:PassRole on the job's role".to_string()
            } else {
                op.to_string()
            };
            e.message = format!("{} (the caller needs {needs})", e.message);
        }
        e
    }
}

/// How long a new role may take to become usable by S3 Batch Operations.
const NEW_ROLE_WAIT: Duration = Duration::from_secs(60);

/// An answer to CreateJob that a role not yet propagated gives: a 400 or 403 that says the
/// service cannot assume (or find) the job's role. Not the caller's own AccessDenied, whose
/// message names the caller (an assumed role too) and is not about propagation.
fn role_not_ready(e: &StoreError) -> bool {
    let status = e.http.as_ref().and_then(|h| h.status);
    let message = e
        .message
        .split(" (the caller needs")
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    matches!(status, Some(400 | 403))
        && !message.contains("not authorized to perform")
        && [
            "assume",
            "cannot be assumed",
            "role does not exist",
            "invalid role",
        ]
        .iter()
        .any(|m| message.contains(m))
}

/// The trust policy that lets Batch Operations assume a role.
pub fn trust_policy() -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": { "Service": BATCH_OPS_PRINCIPAL },
            "Action": "sts:AssumeRole"
        }]
    })
}

/// Least-privilege inline policy for the copy jobs of one s3ferry job (one role for all of
/// them). Buckets may be names or ARNs; the partition of names is the manifests' ARNs'.
/// `dest` holds (bucket, target prefix); `manifest_object_arns` every job's manifest. An
/// inventory `.../<config>/<date>/manifest.json` also grants reading `.../<config>/data/*`,
/// where S3 Inventory writes the data files the manifest lists.
pub fn copy_role_policy(
    source_buckets: &[String],
    dest: &[(String, Option<String>)],
    manifest_object_arns: &[String],
    report_bucket: &str,
    report_prefix: Option<&str>,
) -> Value {
    let partition = manifest_object_arns
        .first()
        .map(String::as_str)
        .unwrap_or_default()
        .strip_prefix("arn:")
        .and_then(|rest| rest.split(':').next())
        .filter(|p| !p.is_empty())
        .unwrap_or("aws");
    let bucket = |b: &str| {
        if b.starts_with("arn:") {
            b.to_string()
        } else {
            format!("arn:{partition}:s3:::{b}")
        }
    };
    let sources: BTreeSet<String> = source_buckets
        .iter()
        .map(|b| format!("{}/*", bucket(b)))
        .collect();
    let dests: BTreeSet<String> = dest
        .iter()
        .map(|(b, p)| format!("{}/{}*", bucket(b), p.as_deref().unwrap_or("")))
        .collect();
    let mut manifest = BTreeSet::new();
    for arn in manifest_object_arns {
        manifest.insert(arn.clone());
        if let Some(dir) = arn.strip_suffix("/manifest.json") {
            // <config>/<date>/manifest.json -> <config>/data/*
            if let Some((config, _date)) = dir.rsplit_once('/') {
                if config.contains('/') {
                    manifest.insert(format!("{config}/data/*"));
                }
            }
        }
    }
    let report_bucket = bucket(report_bucket);
    let report_objects = format!("{report_bucket}/{}*", report_prefix.unwrap_or(""));
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReadSourceObjects",
                "Effect": "Allow",
                "Action": [
                    "s3:GetObject",
                    "s3:GetObjectVersion",
                    "s3:GetObjectTagging",
                    "s3:GetObjectVersionTagging",
                    "s3:GetObjectAcl"
                ],
                "Resource": sources
            },
            {
                "Sid": "WriteDestinationObjects",
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:PutObjectTagging", "s3:PutObjectAcl"],
                "Resource": dests
            },
            {
                "Sid": "ReadManifest",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:GetObjectVersion"],
                "Resource": manifest
            },
            {
                "Sid": "WriteReport",
                "Effect": "Allow",
                "Action": ["s3:PutObject"],
                "Resource": [report_objects]
            },
            {
                "Sid": "LocateReportBucket",
                "Effect": "Allow",
                "Action": ["s3:GetBucketLocation"],
                "Resource": [report_bucket]
            }
        ]
    })
}

/// The manifest, operation and report of a copy job, checked.
fn job_parts(spec: &CopyJobSpec) -> Result<(JobManifest, JobOperation, JobReport)> {
    const OP: &str = "s3:CreateJob";
    let build = |e| build_error(OP, None, e);
    let (format, fields, object_arn, etag) = match &spec.manifest {
        ManifestSpec::Csv {
            object_arn,
            etag,
            with_version_ids,
        } => {
            let mut fields = vec![JobManifestFieldName::Bucket, JobManifestFieldName::Key];
            if *with_version_ids {
                fields.push(JobManifestFieldName::VersionId);
            }
            (
                JobManifestFormat::S3BatchOperationsCsv20180820,
                Some(fields),
                object_arn,
                etag,
            )
        }
        ManifestSpec::Inventory { object_arn, etag } => (
            JobManifestFormat::S3InventoryReportCsv20161130,
            None,
            object_arn,
            etag,
        ),
    };
    require_arn(OP, "manifest object", object_arn)?;
    // HeadObject gives the ETag in quotes; the job wants the bare value.
    let etag = etag.trim().trim_matches('"');
    if etag.is_empty() {
        return Err(invalid(OP, "empty manifest ETag"));
    }
    let manifest = JobManifest::builder()
        .spec(
            JobManifestSpec::builder()
                .format(format)
                .set_fields(fields)
                .build()
                .map_err(build)?,
        )
        .location(
            JobManifestLocation::builder()
                .object_arn(object_arn)
                .e_tag(etag)
                .build()
                .map_err(build)?,
        )
        .build();

    require_arn(OP, "target bucket", &spec.target_bucket_arn)?;
    let copy = S3CopyObjectOperation::builder()
        .target_resource(&spec.target_bucket_arn)
        .set_target_key_prefix(spec.target_prefix.clone().filter(|p| !p.is_empty()))
        .set_storage_class(
            known(
                OP,
                "storage class",
                &spec.storage_class,
                S3StorageClass::values(),
            )?
            .map(|s| S3StorageClass::from(s.as_str())),
        )
        .set_metadata_directive(
            known(
                OP,
                "metadata directive",
                &spec.metadata_directive,
                S3MetadataDirective::values(),
            )?
            .map(|s| S3MetadataDirective::from(s.as_str())),
        )
        .set_checksum_algorithm(
            known(
                OP,
                "checksum algorithm",
                &spec.checksum_algorithm,
                S3ChecksumAlgorithm::values(),
            )?
            .map(|s| S3ChecksumAlgorithm::from(s.as_str())),
        )
        .build();
    let operation = JobOperation::builder().s3_put_object_copy(copy).build();

    require_arn(OP, "report bucket", &spec.report_bucket_arn)?;
    let report = JobReport::builder()
        .bucket(&spec.report_bucket_arn)
        .set_prefix(spec.report_prefix.clone().filter(|p| !p.is_empty()))
        .format(JobReportFormat::ReportCsv20180820)
        .enabled(true)
        .report_scope(if spec.report_failed_only {
            JobReportScope::FailedTasksOnly
        } else {
            JobReportScope::AllTasks
        })
        .build();
    Ok((manifest, operation, report))
}

/// An optional enum value, upper-cased and checked against the service's values.
fn known(
    op: &'static str,
    what: &str,
    value: &Option<String>,
    values: &[&str],
) -> Result<Option<String>> {
    let Some(v) = value else { return Ok(None) };
    let upper = v.trim().to_ascii_uppercase();
    if values.contains(&upper.as_str()) {
        Ok(Some(upper))
    } else {
        Err(invalid(
            op,
            format!("unknown {what} '{v}' (one of: {})", values.join(", ")),
        ))
    }
}

fn require_arn(op: &'static str, what: &str, arn: &str) -> Result<()> {
    if arn.starts_with("arn:") {
        Ok(())
    } else {
        Err(invalid(
            op,
            format!("{what} '{arn}' is not an ARN (arn:aws:s3:::bucket[/key])"),
        ))
    }
}

fn invalid(op: &'static str, message: impl Into<String>) -> StoreError {
    StoreError::new(ErrorKind::InvalidInput, op, message)
}

fn check_account_id(id: &str) -> Result<()> {
    if id.len() == 12 && id.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(invalid(
            "batch connect",
            format!("account id '{id}' is not 12 digits"),
        ))
    }
}

/// The account the credentials name, without asking STS; a clear error otherwise.
async fn account_from_credentials(sdk: &SdkConfig) -> Result<String> {
    const ASK: &str = "cannot tell the AWS account that owns the jobs: pass --account-id";
    let Some(provider) = sdk.credentials_provider() else {
        return Err(invalid("batch connect", format!("{ASK} (no credentials)")));
    };
    match provider.provide_credentials().await {
        Ok(creds) => match creds.account_id() {
            Some(a) => Ok(a.as_str().to_string()),
            None => Err(invalid(
                "batch connect",
                format!("{ASK} (the credentials do not name their account)"),
            )),
        },
        Err(e) => Err(StoreError::new(
            ErrorKind::PermissionDenied,
            "batch connect",
            format!(
                "{ASK}, and check the credentials: {}",
                crate::error::root_cause(&e)
            ),
        )
        .with_source(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: &str) -> JobStatus {
        JobStatus {
            id: "j".into(),
            state: state.into(),
            total: 836,
            succeeded: 836,
            failed: 0,
            failure_reasons: vec![],
        }
    }

    #[test]
    fn terminal_states() {
        for s in ["Complete", "Cancelled", "Failed"] {
            assert!(status(s).is_terminal(), "{s}");
        }
        for s in [
            "New",
            "Preparing",
            "Suspended",
            "Ready",
            "Active",
            "Pausing",
            "Paused",
            "Cancelling",
            "Failing",
        ] {
            assert!(!status(s).is_terminal(), "{s}");
        }
        assert_eq!(
            status("Complete").summary_line(),
            "State: Complete, Total: 836, Success: 836, Failed: 0"
        );
    }

    #[test]
    fn enum_values_are_checked_and_upper_cased() {
        let v = known(
            "t",
            "storage class",
            &Some("standard_ia".into()),
            S3StorageClass::values(),
        );
        assert_eq!(v.ok().flatten().as_deref(), Some("STANDARD_IA"));
        let err = known(
            "t",
            "storage class",
            &Some("FAST".into()),
            S3StorageClass::values(),
        )
        .err()
        .map(|e| (e.kind, e.message));
        let (kind, msg) = err.unwrap_or((ErrorKind::Other, String::new()));
        assert_eq!(kind, ErrorKind::InvalidInput);
        assert!(msg.contains("unknown storage class 'FAST'"), "{msg}");
        assert!(msg.contains("STANDARD_IA"), "{msg}");
    }

    #[test]
    fn account_ids_are_twelve_digits() {
        assert!(check_account_id("123456789012").is_ok());
        assert!(check_account_id("12345678901").is_err());
        assert!(check_account_id("12345678901a").is_err());
    }
}
