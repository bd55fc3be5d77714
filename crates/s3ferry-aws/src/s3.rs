//! [`S3Store`]: the [`Store`] trait on aws-sdk-s3.
//!
//! The SDK's own retries are off (our retry layer does that, with its budget and adaptive
//! limit); a 10 s connect timeout stays. Bodies are in-memory `Bytes`, so request checksums go
//! in plain headers (never aws-chunked trailers): we send CRC64NVME ourselves on PUT, UploadPart
//! and CompleteMultipartUpload unless `checksum_when_required` is set; then in-memory bodies
//! carry Content-MD5 instead.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::Credentials;
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::primitives::ByteStream as SdkByteStream;
use aws_sdk_s3::types::{
    BucketLocationConstraint, ChecksumAlgorithm, ChecksumMode, ChecksumType,
    CompletedMultipartUpload, CompletedPart, CreateBucketConfiguration, Delete, MetadataDirective,
    ObjectIdentifier, ServerSideEncryption, StorageClass, TaggingDirective,
};
use aws_sdk_s3::Client;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use s3ferry_store::checksum::{clean_etag, crc64_from_b64, crc64_to_b64, crc64nvme};
use s3ferry_store::{
    format_mtime, parse_mtime, Capabilities, CopyOptions, CopySource, ErrorKind, FileRange,
    GetOptions, GetResult, ListOptions, MultipartUpload, ObjectMeta, PartInfo, PartLayout, PutMode,
    PutOptions, PutResult, Result, Store, StoreError, MTIME_META,
};

use crate::error::{build_error, map_body_error, map_sdk_error, root_cause, ErrCtx};
use crate::list::{ListMode, Lister, ServerHeader};

/// Largest single PUT / CopyObject S3 accepts.
pub const MAX_SINGLE_PUT: u64 = 5 * 1024 * 1024 * 1024;
/// DeleteObjects takes at most this many keys.
const DELETE_BATCH: usize = 1000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// RFC 3986 unreserved characters stay; everything else is percent-encoded.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// For `x-amz-copy-source`: like [`QUERY_VALUE`] but `/` stays.
const COPY_SOURCE: &AsciiSet = &QUERY_VALUE.remove(b'/');

/// How to reach one bucket.
#[derive(Clone, Debug, Default)]
pub struct S3Config {
    pub bucket: String,
    /// Custom endpoint (`--endpoint-url`); `None` = AWS, or `AWS_ENDPOINT_URL[_S3]` / the profile's
    /// `endpoint_url`, which the SDK reads itself.
    pub endpoint_url: Option<String>,
    /// Named profile from `~/.aws/config` / `~/.aws/credentials`.
    pub profile: Option<String>,
    /// Region; `None` = from env/profile, else `us-east-1`.
    pub region: Option<String>,
    /// Path-style addressing; `None` = on when a custom endpoint is set, off for AWS.
    pub force_path_style: Option<bool>,
    /// Only send checksums when an operation requires them (for S3-compatible servers that
    /// reject the SDK's default checksums); we then verify data ourselves. `None`: as
    /// `AWS_REQUEST_CHECKSUM_CALCULATION` or the profile's `request_checksum_calculation` say.
    pub checksum_when_required: Option<bool>,
    /// A write that asked for server-side encryption and whose answer does not confirm it
    /// (`x-amz-server-side-encryption`) is accepted instead of failed.
    pub allow_unconfirmed_sse: bool,
    /// Keys per listing request (1 to 1,000; aws-cli's `--page-size`).
    pub page_size: Option<u32>,
    /// Explicit credentials; override the standard chain when `access_key_id` and
    /// `secret_access_key` are both set.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Send requests unsigned (public buckets; aws-cli's `--no-sign-request`): no credentials
    /// are looked for.
    pub anonymous: bool,
    pub session_token: Option<String>,
    /// Attempts the SDK makes per request; 0 or 1 = no SDK retries (our retry layer retries).
    pub max_attempts_sdk: u32,
    /// How to list (flat, or a per-directory walk for servers that do not list in byte order).
    pub list_mode: ListMode,
    /// How long to wait for the first byte of an answer (`None`: [`DEFAULT_READ_TIMEOUT`]); a
    /// server that accepts a request and never answers is then a retryable timeout, not a hang.
    pub read_timeout: Option<Duration>,
    /// Seconds added to the clock the SDK signs with (0: the system clock). For tests of a
    /// skewed client clock only.
    pub clock_offset_secs: i64,
    /// Send `x-amz-request-payer: requester` on every request (Requester Pays buckets).
    pub request_payer: bool,
    /// SSE-C: objects of this bucket are written and read with this key.
    pub sse_customer_key: Option<SseCustomerKey>,
    /// SSE-C: the sources of server-side copies into this bucket are read with this key.
    pub copy_source_sse_customer_key: Option<SseCustomerKey>,
}

/// A customer-provided AES-256 key (SSE-C), as S3 takes it: the key and its MD5, in base64.
#[derive(Clone, PartialEq, Eq)]
pub struct SseCustomerKey {
    key_b64: String,
    md5_b64: String,
}

impl std::fmt::Debug for SseCustomerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself.
        write!(f, "SseCustomerKey(md5 {})", self.md5_b64)
    }
}

impl SseCustomerKey {
    /// The 32 bytes of an AES-256 key.
    pub fn from_bytes(key: &[u8]) -> std::result::Result<Self, String> {
        if key.len() != 32 {
            return Err(format!(
                "an SSE-C key is 32 bytes (AES-256), this one has {}",
                key.len()
            ));
        }
        use base64::Engine as _;
        Ok(Self {
            key_b64: base64::engine::general_purpose::STANDARD.encode(key),
            md5_b64: s3ferry_store::checksum::md5_b64(key),
        })
    }

    /// A key as `aws s3` takes it: the 32 bytes as text, `fileb://FILE` holding them, or (ours)
    /// their base64 (44 characters).
    pub fn parse(value: &str) -> std::result::Result<Self, String> {
        use base64::Engine as _;
        if let Some(path) = value.strip_prefix("fileb://") {
            let bytes = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
            return Self::from_bytes(&bytes).map_err(|m| format!("{path}: {m}"));
        }
        if value.len() == 32 {
            return Self::from_bytes(value.as_bytes());
        }
        match base64::engine::general_purpose::STANDARD.decode(value.trim()) {
            Ok(b) if b.len() == 32 => Self::from_bytes(&b),
            _ => Err(format!(
                "an SSE-C key is 32 bytes (AES-256): give 32 characters, their base64 (44 characters) or fileb://FILE holding the 32 bytes; this one has {} characters",
                value.chars().count()
            )),
        }
    }

    /// The MD5 S3 reports for objects written with this key (base64).
    pub fn md5_b64(&self) -> &str {
        &self.md5_b64
    }
}

/// The SSE-C parameters of a copy request: the destination's (this store's objects) and the
/// source's (`copy_source_sse_c`).
macro_rules! copy_sse_c {
    ($req:expr, $store:expr) => {
        $req.set_sse_customer_algorithm($store.sse_c.algorithm())
            .set_sse_customer_key($store.sse_c.key())
            .set_sse_customer_key_md5($store.sse_c.key_md5())
            .set_copy_source_sse_customer_algorithm($store.copy_source_sse_c.algorithm())
            .set_copy_source_sse_customer_key($store.copy_source_sse_c.key())
            .set_copy_source_sse_customer_key_md5($store.copy_source_sse_c.key_md5())
    };
}

/// The SSE-C request parameters of one store (none without a key).
#[derive(Clone, Debug, Default)]
struct SseC(Option<SseCustomerKey>);

impl SseC {
    fn algorithm(&self) -> Option<String> {
        self.0.as_ref().map(|_| "AES256".to_string())
    }
    fn key(&self) -> Option<String> {
        self.0.as_ref().map(|k| k.key_b64.clone())
    }
    fn key_md5(&self) -> Option<String> {
        self.0.as_ref().map(|k| k.md5_b64.clone())
    }
}

/// The offset of the clock requests are signed with (see [`S3Config::clock_offset_secs`]).
static SIGNING_OFFSET: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// The time requests are signed with (the system clock, unless a test shifted it).
pub(crate) fn signing_now() -> std::time::SystemTime {
    use aws_smithy_async::time::TimeSource;
    OffsetClock(SIGNING_OFFSET.load(std::sync::atomic::Ordering::Relaxed)).now()
}

/// The system clock shifted by a fixed offset (a client whose clock is off).
#[derive(Debug)]
struct OffsetClock(i64);

impl aws_smithy_async::time::TimeSource for OffsetClock {
    fn now(&self) -> std::time::SystemTime {
        let now = std::time::SystemTime::now();
        let d = Duration::from_secs(self.0.unsigned_abs());
        if self.0 >= 0 {
            now + d
        } else {
            now - d
        }
    }
}

/// Adds `x-amz-request-payer: requester` to every request of a client, before it is signed:
/// one place for every operation, including the ones added later.
#[derive(Debug)]
struct RequesterPays;

impl aws_sdk_s3::config::Intercept for RequesterPays {
    fn name(&self) -> &'static str {
        "s3ferry::RequesterPays"
    }

    fn modify_before_signing(
        &self,
        context: &mut aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextMut<'_>,
        _rc: &aws_sdk_s3::config::RuntimeComponents,
        _cfg: &mut aws_sdk_s3::config::ConfigBag,
    ) -> std::result::Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        context
            .request_mut()
            .headers_mut()
            .insert("x-amz-request-payer", "requester");
        Ok(())
    }
}

/// Headers S3 sends once that some servers repeat with the same value (SeaweedFS 4.x sends
/// `x-amz-server-side-encryption-customer-key-MD5` twice), which the SDK then fails to parse.
const SINGLE_HEADERS: &[&str] = &[
    "x-amz-server-side-encryption",
    "x-amz-server-side-encryption-aws-kms-key-id",
    "x-amz-server-side-encryption-customer-algorithm",
    "x-amz-server-side-encryption-customer-key-md5",
    "x-amz-server-side-encryption-bucket-key-enabled",
];

/// Takes a repeated single-valued header (see [`SINGLE_HEADERS`]) once when every copy says the
/// same; copies that disagree are left for the SDK to refuse.
#[derive(Debug)]
struct RepeatedHeaders;

impl aws_sdk_s3::config::Intercept for RepeatedHeaders {
    fn name(&self) -> &'static str {
        "s3ferry::RepeatedHeaders"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut aws_sdk_s3::config::interceptors::BeforeDeserializationInterceptorContextMut<
            '_,
        >,
        _rc: &aws_sdk_s3::config::RuntimeComponents,
        _cfg: &mut aws_sdk_s3::config::ConfigBag,
    ) -> std::result::Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let headers = context.response_mut().headers_mut();
        for name in SINGLE_HEADERS {
            let values: Vec<String> = headers.get_all(name).map(str::to_string).collect();
            if values.len() > 1 && values.iter().all(|v| *v == values[0]) {
                headers.remove(name);
                headers.insert(*name, values[0].clone());
            }
        }
        Ok(())
    }
}

/// See [`S3Config::read_timeout`].
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(300);

impl S3Config {
    pub fn new(bucket: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            ..Self::default()
        }
    }
}

/// A bucket on S3 or an S3-compatible server.
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    ctx: ErrCtx,
    copy_domain: String,
    when_required: bool,
    /// Ask GETs for the object's checksums (which the SDK then validates): off when
    /// `response_checksum_validation` is `when_required`, as aws-cli does.
    validate_responses: bool,
    allow_unconfirmed_sse: bool,
    /// Multipart uploads that asked for server-side encryption and whose CreateMultipartUpload
    /// answer did not confirm it (some servers confirm it on the parts only): upload id -> the
    /// encryption asked for, until a part's answer confirms it.
    unconfirmed_sse: Arc<std::sync::Mutex<HashMap<String, String>>>,
    lister: Arc<Lister>,
    /// SSE-C: the key of this bucket's objects, and of the sources of server-side copies.
    sse_c: SseC,
    copy_source_sse_c: SseC,
    /// `s3://bucket` on AWS, `s3://bucket@<endpoint>` elsewhere (see [`Store::state_id`]).
    state_id: String,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.ctx.bucket)
            .field("endpoint", &self.ctx.endpoint)
            .finish()
    }
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl S3Store {
    /// Resolve configuration and credentials (standard chain, profile, env, explicit keys) and
    /// build a client. Does not contact the bucket; call [`Store::check`] for that.
    pub async fn connect(cfg: S3Config) -> Result<S3Store> {
        s3ferry_store::key::validate_bucket(&cfg.bucket)
            .map_err(|m| StoreError::new(ErrorKind::InvalidInput, "connect", m))?;
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
        if cfg.anonymous {
            loader = loader.no_credentials();
        } else if let (Some(ak), Some(sk)) = (&cfg.access_key_id, &cfg.secret_access_key) {
            loader = loader.credentials_provider(Credentials::new(
                ak,
                sk,
                cfg.session_token.clone(),
                None,
                "s3ferry-explicit",
            ));
        }
        let retry = if cfg.max_attempts_sdk > 1 {
            RetryConfig::standard().with_max_attempts(cfg.max_attempts_sdk)
        } else {
            RetryConfig::disabled()
        };
        loader = loader.retry_config(retry).timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .read_timeout(cfg.read_timeout.unwrap_or(DEFAULT_READ_TIMEOUT))
                .build(),
        );
        // What aws-cli reads from the environment and the profile and the SDK does not apply
        // to what s3ferry sends itself: the CA bundle, the checksum settings.
        let profile = crate::settings::profile(cfg.profile.as_deref()).await;
        let when_required = cfg.checksum_when_required.unwrap_or_else(|| {
            crate::settings::setting(
                profile.as_ref(),
                "AWS_REQUEST_CHECKSUM_CALCULATION",
                "request_checksum_calculation",
            )
            .is_some_and(|v| v == "when_required")
        });
        let validate_responses = crate::settings::setting(
            profile.as_ref(),
            "AWS_RESPONSE_CHECKSUM_VALIDATION",
            "response_checksum_validation",
        )
        .is_none_or(|v| v != "when_required");
        if when_required {
            loader = loader.request_checksum_calculation(RequestChecksumCalculation::WhenRequired);
        }
        if !validate_responses || when_required {
            loader = loader.response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        }
        loader = crate::settings::configure_with(loader, profile.as_ref())?;
        if cfg.clock_offset_secs != 0 {
            SIGNING_OFFSET.store(cfg.clock_offset_secs, std::sync::atomic::Ordering::Relaxed);
            loader = loader.time_source(OffsetClock(cfg.clock_offset_secs));
        }
        let sdk = loader.load().await;

        // The effective custom endpoint, if any: ours, then the env vars and profile setting the
        // SDK honours (service-specific first).
        let endpoint = cfg
            .endpoint_url
            .clone()
            .or_else(|| env_nonempty("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env_nonempty("AWS_ENDPOINT_URL"))
            .or_else(|| sdk.endpoint_url().map(str::to_string));
        let mut s3 = aws_sdk_s3::config::Builder::from(&sdk);
        let region = match sdk.region() {
            Some(r) => r.to_string(),
            None => {
                s3 = s3.region(Region::from_static("us-east-1"));
                "us-east-1".to_string()
            }
        };
        if let Some(u) = &cfg.endpoint_url {
            s3 = s3.endpoint_url(u);
        }
        s3 = s3.force_path_style(cfg.force_path_style.unwrap_or(endpoint.is_some()));
        let server = Arc::new(std::sync::OnceLock::new());
        s3 = s3
            .interceptor(ServerHeader(server.clone()))
            .interceptor(RepeatedHeaders);
        if cfg.request_payer {
            s3 = s3.interceptor(RequesterPays);
        }

        let endpoint_desc = endpoint
            .clone()
            .unwrap_or_else(|| format!("AWS S3 ({region})"));
        // Our cache instead of the SDK's, so that credentials S3 refuses as expired are
        // fetched again (see creds.rs).
        let creds = sdk
            .credentials_provider()
            .map(crate::creds::RefreshingCredentials::new);
        if let Some(c) = &creds {
            s3 = s3
                .credentials_provider(c.clone())
                .identity_cache(aws_sdk_s3::config::IdentityCache::no_cache());
        }
        let ctx = ErrCtx {
            bucket: cfg.bucket.clone(),
            endpoint: endpoint_desc,
            creds: creds.clone(),
            sse_c: cfg.sse_customer_key.is_some(),
        };

        let access_key = match &creds {
            Some(p) => match p.provide_credentials().await {
                Ok(c) => c.access_key_id().to_string(),
                Err(e) => {
                    return Err(StoreError::new(
                        ErrorKind::PermissionDenied,
                        "connect",
                        format!(
                            "no usable AWS credentials ({}); set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or --profile",
                            root_cause(&e)
                        ),
                    )
                    .with_source(e))
                }
            },
            None if cfg.anonymous => "anonymous".to_string(),
            None => {
                return Err(StoreError::new(ErrorKind::PermissionDenied, "connect", "no AWS credentials provider configured"))
            }
        };
        let copy_domain = format!("s3|{}|{}", endpoint.as_deref().unwrap_or("aws"), access_key);
        let client = Client::from_conf(s3.build());
        let lister = Arc::new(Lister {
            client: client.clone(),
            ctx: ctx.clone(),
            mode: cfg.list_mode,
            server,
            page_size: cfg.page_size.map(|n| n as i32),
        });
        Ok(S3Store {
            client,
            ctx,
            copy_domain,
            when_required,
            validate_responses,
            allow_unconfirmed_sse: cfg.allow_unconfirmed_sse,
            unconfirmed_sse: Arc::default(),
            lister,
            sse_c: SseC(cfg.sse_customer_key.clone()),
            copy_source_sse_c: SseC(cfg.copy_source_sse_customer_key.clone()),
            state_id: match &endpoint {
                Some(e) => format!("s3://{}@{}", cfg.bucket, e.trim_end_matches('/')),
                None => format!("s3://{}", cfg.bucket),
            },
        })
    }

    /// The SDK client (for callers in this crate that need more than the Store trait).
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn bucket_name(&self) -> &str {
        &self.ctx.bucket
    }

    /// The endpoint this store talks to, for messages.
    pub fn endpoint(&self) -> &str {
        &self.ctx.endpoint
    }

    fn err<E>(
        &self,
        op: &'static str,
        key: Option<&str>,
        e: aws_sdk_s3::error::SdkError<E, HttpResponse>,
    ) -> StoreError
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        map_sdk_error(&self.ctx, op, key, e)
    }

    /// Create the bucket (`s3ferry mb`). An existing bucket is `AlreadyExists`.
    pub async fn create_bucket(&self) -> Result<()> {
        let region = self
            .client
            .config()
            .region()
            .map(|r| r.to_string())
            .unwrap_or_default();
        let mut req = self.client.create_bucket().bucket(&self.ctx.bucket);
        if !region.is_empty() && region != "us-east-1" {
            req = req.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(region.as_str()))
                    .build(),
            );
        }
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let mut e = self.err("create_bucket", None, e);
                if e.kind == ErrorKind::AlreadyExists {
                    e.message = format!("bucket '{}' already exists", self.ctx.bucket);
                }
                Err(e)
            }
        }
    }

    /// Delete the bucket, which must be empty (`s3ferry rb`).
    pub async fn delete_bucket(&self) -> Result<()> {
        match self
            .client
            .delete_bucket()
            .bucket(&self.ctx.bucket)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(self.err("delete_bucket", None, e)),
        }
    }

    /// A URL that lets its holder GET `key` without credentials until it expires (SigV4 query
    /// signing; at most 7 days, as S3 allows).
    pub async fn presign_get(&self, key: &str, expires_in: Duration) -> Result<String> {
        let cfg =
            aws_sdk_s3::presigning::PresigningConfig::expires_in(expires_in).map_err(|e| {
                StoreError::new(ErrorKind::InvalidInput, "presign", e.to_string()).with_key(key)
            })?;
        let req = self
            .client
            .get_object()
            .bucket(&self.ctx.bucket)
            .key(key)
            .presigned(cfg)
            .await
            .map_err(|e| self.err("presign", Some(key), e))?;
        Ok(req.uri().to_string())
    }

    /// Delete every object (all versions and delete markers), abort every multipart upload,
    /// then delete the bucket. For tests and `s3ferry rb --force`.
    pub async fn delete_bucket_recursive(&self) -> Result<()> {
        for u in self.list_multipart("").await? {
            self.abort_multipart(&u.key, &u.upload_id).await?;
        }
        // Current objects first (works on servers without versioning support).
        loop {
            let keys: Vec<String> = self
                .list(ListOptions::default())
                .take(DELETE_BATCH)
                .map_ok(|m| m.key)
                .try_collect()
                .await?;
            if keys.is_empty() {
                break;
            }
            for r in self.delete_many(&keys).await? {
                r?;
            }
        }
        self.delete_all_versions().await?;
        self.delete_bucket().await
    }

    async fn delete_all_versions(&self) -> Result<()> {
        loop {
            let out = match self
                .client
                .list_object_versions()
                .bucket(&self.ctx.bucket)
                .send()
                .await
            {
                Ok(o) => o,
                // Servers without versioning support: the plain deletes above were enough.
                Err(e) => {
                    let e = self.err("list_versions", None, e);
                    if matches!(
                        e.kind,
                        ErrorKind::Unsupported | ErrorKind::InvalidInput | ErrorKind::Other
                    ) {
                        return Ok(());
                    }
                    return Err(e);
                }
            };
            let mut ids = Vec::new();
            for v in out.versions() {
                ids.push((
                    v.key().unwrap_or_default().to_string(),
                    v.version_id().map(str::to_string),
                ));
            }
            for m in out.delete_markers() {
                ids.push((
                    m.key().unwrap_or_default().to_string(),
                    m.version_id().map(str::to_string),
                ));
            }
            if ids.is_empty() {
                return Ok(());
            }
            // A version without an id is the "null" version of an unversioned object.
            let ids: Vec<(String, String)> = ids
                .into_iter()
                .map(|(k, v)| (k, v.unwrap_or_else(|| "null".into())))
                .collect();
            for r in Store::delete_versions(self, &ids).await? {
                r?;
            }
        }
    }

    /// UploadPart with a body of `len` bytes; the part carries `crc` (unless the upload was
    /// made without checksums: `when_required`) and `md5` (Content-MD5, base64) if given.
    async fn send_part(
        &self,
        key: &str,
        (upload_id, part_number): (&str, u32),
        len: u64,
        body: SdkByteStream,
        (crc, md5): (Option<u64>, Option<String>),
    ) -> Result<PartInfo> {
        let crc = if self.when_required { None } else { crc };
        let out = self
            .client
            .upload_part()
            .bucket(&self.ctx.bucket)
            .key(key)
            .set_sse_customer_algorithm(self.sse_c.algorithm())
            .set_sse_customer_key(self.sse_c.key())
            .set_sse_customer_key_md5(self.sse_c.key_md5())
            .upload_id(upload_id)
            .part_number(part_number as i32)
            .content_length(len as i64)
            .set_checksum_crc64_nvme(crc.map(crc64_to_b64))
            .set_content_md5(md5)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                let mut e = self.err("upload_part", Some(key), e);
                e.message = format!("part {part_number}: {}", e.message);
                e
            })?;
        self.confirm_part_sse("upload_part", key, upload_id, out.server_side_encryption())?;
        let etag = out.e_tag().map(clean_etag).unwrap_or_default();
        if etag.is_empty() {
            return Err(StoreError::new(
                ErrorKind::Other,
                "upload_part",
                format!("no ETag for part {part_number}"),
            )
            .with_key(key));
        }
        Ok(PartInfo {
            part_number,
            etag,
            crc64nvme: out.checksum_crc64_nvme().and_then(crc64_from_b64).or(crc),
        })
    }

    /// A write that asked for server-side encryption `asked` must be answered with it
    /// (`x-amz-server-side-encryption`): a server without SSE (some S3-compatible ones) writes
    /// the object plainly and says nothing, and the user asked for encryption at rest. Fails
    /// the object (not retried) unless `--allow-unconfirmed-sse`.
    fn confirm_sse(
        &self,
        op: &'static str,
        key: &str,
        asked: Option<&str>,
        got: Option<&ServerSideEncryption>,
    ) -> Result<()> {
        let Some(asked) = asked else {
            return Ok(());
        };
        let got = got.map(|g| g.as_str().to_string());
        if self.allow_unconfirmed_sse || got.as_deref() == Some(asked) {
            return Ok(());
        }
        let what = match op {
            "upload_part" | "upload_part_copy" => "the upload is aborted, no object was written",
            _ => "the object may have been stored unencrypted",
        };
        let answer = match &got {
            Some(g) => format!("answered {g}"),
            None => "did not confirm it (no x-amz-server-side-encryption)".to_string(),
        };
        // Not `Unsupported`: no fallback (a streamed copy) may write the object again.
        Err(StoreError::new(
            ErrorKind::Other,
            op,
            format!(
                "server-side encryption {asked} was asked for and the server {answer}: {what} \
                 (a server without SSE? --allow-unconfirmed-sse accepts that)"
            ),
        )
        .with_key(key))
    }

    /// A write whose encryption was not confirmed: the object it made goes again, so that no
    /// plain copy stays where the user asked for an encrypted one (and a later run, seeing the
    /// same content, would keep it). Returns `e` saying which happened.
    async fn remove_unencrypted(&self, key: &str, mut e: StoreError) -> StoreError {
        let removed = match Store::delete_many(self, &[key.to_string()]).await {
            Ok(mut r) => r.pop().unwrap_or(Ok(())),
            Err(d) => Err(d),
        };
        e.message = match removed {
            Ok(()) => format!("{}; the object was removed again", e.message),
            Err(d) => format!("{}; removing the object failed too ({d})", e.message),
        };
        e
    }

    /// HeadObject of `key` in this bucket, with this store's SSE-C key (`head`, `head_part`).
    fn head_request(
        &self,
        key: &str,
    ) -> aws_sdk_s3::operation::head_object::builders::HeadObjectFluentBuilder {
        self.client
            .head_object()
            .bucket(&self.ctx.bucket)
            .key(key)
            .set_sse_customer_algorithm(self.sse_c.algorithm())
            .set_sse_customer_key(self.sse_c.key())
            .set_sse_customer_key_md5(self.sse_c.key_md5())
    }

    /// A part of an upload whose creation did not confirm the encryption asked for: its answer
    /// must (then the upload is confirmed), else the part fails and the upload with it.
    fn confirm_part_sse(
        &self,
        op: &'static str,
        key: &str,
        upload_id: &str,
        got: Option<&ServerSideEncryption>,
    ) -> Result<()> {
        let Ok(mut m) = self.unconfirmed_sse.lock() else {
            return Ok(());
        };
        let Some(asked) = m.get(upload_id).cloned() else {
            return Ok(());
        };
        let r = self.confirm_sse(op, key, Some(&asked), got);
        if r.is_ok() {
            m.remove(upload_id);
        }
        r
    }

    /// The CRC64NVME a request carries: none with `when_required` (the server may reject
    /// checksum headers; such requests carry Content-MD5 instead, see [`Self::md5_to_send`]).
    fn crc_to_send(&self, given: Option<u64>, body: &[u8]) -> Option<u64> {
        match given {
            _ if self.when_required => None,
            Some(c) => Some(c),
            None => Some(crc64nvme(body)),
        }
    }

    /// With `when_required`, an in-memory body carries Content-MD5, which every S3-compatible
    /// server checks: the bytes are still verified on the way in.
    fn md5_to_send(&self, body: &[u8]) -> Option<String> {
        self.when_required
            .then(|| s3ferry_store::checksum::md5_b64(body))
    }
}

type HttpResponse = aws_smithy_runtime_api::http::Response;

fn to_system_time(t: Option<&aws_sdk_s3::primitives::DateTime>) -> Option<SystemTime> {
    t.and_then(|d| SystemTime::try_from(*d).ok())
}

fn encode_tags(tags: &[(String, String)]) -> Option<String> {
    if tags.is_empty() {
        return None;
    }
    Some(
        tags.iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    utf8_percent_encode(k, QUERY_VALUE),
                    utf8_percent_encode(v, QUERY_VALUE)
                )
            })
            .collect::<Vec<_>>()
            .join("&"),
    )
}

fn copy_source(src: &CopySource) -> String {
    let mut s = format!(
        "{}/{}",
        utf8_percent_encode(&src.bucket, COPY_SOURCE),
        utf8_percent_encode(&src.key, COPY_SOURCE)
    );
    if let Some(v) = &src.version_id {
        s.push_str("?versionId=");
        s.extend(utf8_percent_encode(v, NON_ALPHANUMERIC));
    }
    s
}

/// Apply the stored headers and canned ACL of `h` to a request builder with the usual setters.
macro_rules! with_headers {
    ($req:expr, $h:expr) => {{
        let h = $h;
        $req.set_website_redirect_location(h.website_redirect.clone())
            .set_grant_read(h.grant_read.clone())
            .set_grant_read_acp(h.grant_read_acp.clone())
            .set_grant_write_acp(h.grant_write_acp.clone())
            .set_grant_full_control(h.grant_full_control.clone())
            .set_cache_control(h.cache_control.clone())
            .set_content_disposition(h.content_disposition.clone())
            .set_content_encoding(h.content_encoding.clone())
            .set_content_language(h.content_language.clone())
            .set_expires(h.expires.map(aws_sdk_s3::primitives::DateTime::from))
            .set_acl(
                h.acl
                    .as_deref()
                    .map(aws_sdk_s3::types::ObjectCannedAcl::from),
            )
    }};
}

/// User metadata to send: the caller's plus `mtime`.
fn user_metadata(opts: &PutOptions) -> Option<HashMap<String, String>> {
    let mut m: HashMap<String, String> = opts
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(t) = opts.mtime {
        m.insert(MTIME_META.to_string(), format_mtime(t));
    }
    (!m.is_empty()).then_some(m)
}

/// A CRC64NVME header value that describes the whole object (not a composite `xxx-N`).
fn full_object_crc(value: Option<&str>, ty: Option<&ChecksumType>) -> Option<u64> {
    let v = value?;
    if v.contains('-') {
        return None;
    }
    match ty {
        None | Some(ChecksumType::FullObject) => crc64_from_b64(v),
        Some(_) => None,
    }
}

/// How an answer says its object is encrypted (see [`ObjectMeta::encryption`]).
fn encryption(sse: Option<&ServerSideEncryption>, sse_c: Option<&str>) -> Option<String> {
    match (sse, sse_c) {
        (_, Some(_)) => Some("SSE-C".into()),
        (Some(s), None) => Some(s.as_str().to_string()),
        (None, None) => None,
    }
}

fn meta_from_headers(
    metadata: Option<&HashMap<String, String>>,
) -> (Option<BTreeMap<String, String>>, Option<SystemTime>) {
    let md: BTreeMap<String, String> = metadata
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    let mtime = md.get(MTIME_META).and_then(|s| parse_mtime(s));
    (Some(md), mtime)
}

/// `bytes a-b/total` -> (a, b+1, total).
fn parse_content_range(s: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = s.trim().strip_prefix("bytes")?.trim();
    let (span, total) = rest.split_once('/')?;
    let (a, b) = span.split_once('-')?;
    let a: u64 = a.trim().parse().ok()?;
    let b: u64 = b.trim().parse().ok()?;
    let total = total.trim().parse().ok();
    Some((a, b.checked_add(1)?, total))
}

/// Read buffer for parts sent from a file.
const FILE_BUFFER: usize = 256 * 1024;

#[async_trait]
impl Store for S3Store {
    fn describe(&self) -> String {
        format!("s3://{}", self.ctx.bucket)
    }

    fn state_id(&self) -> String {
        self.state_id.clone()
    }

    fn bucket(&self) -> Option<&str> {
        Some(&self.ctx.bucket)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            conditional_writes: true,
            copy_domain: Some(self.copy_domain.clone()),
            upload_part_copy: true,
            tags: true,
            versions: true,
            // With when_required we send no checksums, so objects may have no CRC64NVME.
            crc64nvme: !self.when_required,
            md5_etags: true,
            max_single_put: MAX_SINGLE_PUT,
            local: false,
        }
    }

    fn list(&self, opts: ListOptions) -> BoxStream<'static, Result<ObjectMeta>> {
        let listed = self.lister.clone().list(opts);
        if self.sse_c.0.is_none() {
            return listed;
        }
        // Read with an SSE-C key, the bucket's objects are taken to be encrypted with it: their
        // ETags are not MD5s (listings do not say how an object is encrypted).
        listed
            .map_ok(|mut m| {
                m.encryption = Some("SSE-C".into());
                m
            })
            .boxed()
    }

    fn list_versions(
        &self,
        prefix: &str,
    ) -> BoxStream<'static, Result<s3ferry_store::VersionMeta>> {
        use s3ferry_store::VersionMeta;
        let (client, ctx, prefix) = (self.client.clone(), self.ctx.clone(), prefix.to_string());
        let time = |d: Option<&aws_sdk_s3::primitives::DateTime>| {
            d.and_then(|d| SystemTime::try_from(*d).ok())
        };
        stream::unfold(Some((None::<String>, None::<String>)), move |st| {
            let (client, ctx, prefix) = (client.clone(), ctx.clone(), prefix.clone());
            async move {
                let (key_marker, version_marker) = st?;
                let r = client
                    .list_object_versions()
                    .bucket(&ctx.bucket)
                    .prefix(&prefix)
                    .set_key_marker(key_marker)
                    .set_version_id_marker(version_marker)
                    .send()
                    .await;
                let out = match r {
                    Ok(o) => o,
                    Err(e) => {
                        return Some((
                            vec![Err(map_sdk_error(&ctx, "list_versions", None, e))],
                            None,
                        ))
                    }
                };
                let mut items: Vec<VersionMeta> = out
                    .versions()
                    .iter()
                    .map(|v| VersionMeta {
                        meta: ObjectMeta {
                            key: v.key().unwrap_or_default().to_string(),
                            size: v.size().unwrap_or(0).max(0) as u64,
                            last_modified: time(v.last_modified()),
                            etag: v.e_tag().map(clean_etag),
                            version_id: v.version_id().map(str::to_string),
                            ..Default::default()
                        },
                        is_latest: v.is_latest().unwrap_or(false),
                        delete_marker: false,
                    })
                    .chain(out.delete_markers().iter().map(|d| VersionMeta {
                        meta: ObjectMeta {
                            key: d.key().unwrap_or_default().to_string(),
                            last_modified: time(d.last_modified()),
                            version_id: d.version_id().map(str::to_string),
                            ..Default::default()
                        },
                        is_latest: d.is_latest().unwrap_or(false),
                        delete_marker: true,
                    }))
                    .collect();
                // Versions and markers come in two lists: merge them by key, newest first.
                items.sort_by(|a, b| {
                    a.meta
                        .key
                        .cmp(&b.meta.key)
                        .then(b.meta.last_modified.cmp(&a.meta.last_modified))
                });
                let next = if out.is_truncated().unwrap_or(false) {
                    let k = out.next_key_marker().map(str::to_string);
                    k.is_some()
                        .then(|| (k, out.next_version_id_marker().map(str::to_string)))
                } else {
                    None
                };
                Some((items.into_iter().map(Ok).collect::<Vec<_>>(), next))
            }
        })
        .flat_map(stream::iter)
        .boxed()
    }

    async fn check(&self) -> Result<()> {
        match self
            .client
            .head_bucket()
            .bucket(&self.ctx.bucket)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let region = e
                    .raw_response()
                    .and_then(|r| r.headers().get("x-amz-bucket-region"))
                    .map(str::to_string);
                let status = e.raw_response().map(|r| r.status().as_u16());
                let mut err = self.err("check", None, e);
                let b = &self.ctx.bucket;
                match (err.kind, status) {
                    (ErrorKind::NotFound | ErrorKind::BucketNotFound, _) => {
                        err.kind = ErrorKind::BucketNotFound;
                        err.message = format!("bucket '{b}' does not exist");
                    }
                    (ErrorKind::PermissionDenied, _) => {
                        err.message =
                            format!("access denied to bucket '{b}' — check credentials/profile");
                    }
                    (_, Some(301 | 307)) => {
                        err.message = match region {
                            Some(r) => format!("bucket '{b}' is in region {r}; pass --region {r}"),
                            None => format!("bucket '{b}' is in another region"),
                        };
                    }
                    _ => {}
                }
                Err(err)
            }
        }
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let o = self
            .head_request(key)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .map_err(|e| self.err("head", Some(key), e))?;
        let (metadata, mtime) = meta_from_headers(o.metadata());
        Ok(ObjectMeta {
            key: key.to_string(),
            size: o.content_length().unwrap_or(0).max(0) as u64,
            last_modified: to_system_time(o.last_modified()),
            mtime,
            etag: o.e_tag().map(clean_etag),
            crc64nvme: full_object_crc(o.checksum_crc64_nvme(), o.checksum_type()),
            storage_class: o.storage_class().map(|s| s.as_str().to_string()),
            version_id: o.version_id().map(str::to_string),
            content_type: o.content_type().map(str::to_string),
            metadata,
            inode: None,
            ctime: None,
            encryption: encryption(o.server_side_encryption(), o.sse_customer_algorithm()),
        })
    }

    async fn get(&self, key: &str, opts: GetOptions) -> Result<GetResult> {
        if let Some(r) = &opts.range {
            if r.start > r.end {
                return Err(StoreError::new(
                    ErrorKind::InvalidInput,
                    "get",
                    format!("bad range {r:?}"),
                )
                .with_key(key));
            }
            if r.start == r.end {
                // HTTP cannot ask for zero bytes: HEAD (with the same pin) and return nothing.
                let meta = self.head(key).await?;
                if let Some(want) = &opts.if_match {
                    if meta.etag.as_deref() != Some(want.as_str()) {
                        return Err(StoreError::new(
                            ErrorKind::PreconditionFailed,
                            "get",
                            "ETag does not match",
                        )
                        .with_key(key));
                    }
                }
                if let Err(m) = s3ferry_store::covered_range(Some(r.clone()), meta.size) {
                    return Err(StoreError::new(ErrorKind::InvalidInput, "get", m).with_key(key));
                }
                return Ok(GetResult {
                    meta,
                    range: r.clone(),
                    body: stream::empty().boxed(),
                });
            }
        }
        let mut req = self
            .client
            .get_object()
            .bucket(&self.ctx.bucket)
            .key(key)
            .set_sse_customer_algorithm(self.sse_c.algorithm())
            .set_sse_customer_key(self.sse_c.key())
            .set_sse_customer_key_md5(self.sse_c.key_md5())
            .set_if_match(opts.if_match.clone());
        match &opts.range {
            // An end beyond any real size (past i64, which servers parse into) is sent
            // open-ended: the answer is clamped to the object either way.
            Some(r) if r.end > i64::MAX as u64 => req = req.range(format!("bytes={}-", r.start)),
            Some(r) => req = req.range(format!("bytes={}-{}", r.start, r.end - 1)),
            None if self.validate_responses => req = req.checksum_mode(ChecksumMode::Enabled),
            None => {}
        }
        let o = req
            .send()
            .await
            .map_err(|e| self.err("get", Some(key), e))?;
        let len = o.content_length().unwrap_or(0).max(0) as u64;
        let (range, size) = match (&opts.range, o.content_range().and_then(parse_content_range)) {
            (_, Some((a, b, total))) => (a..b, total.unwrap_or(b)),
            (Some(r), None) => {
                // A server that ignored the Range header and sent the whole object.
                if r.start != 0 || len != r.end {
                    if len > 0 && len < r.end {
                        (0..len, len)
                    } else {
                        return Err(StoreError::new(
                            ErrorKind::Other,
                            "get",
                            "the server ignored the Range header (no Content-Range in the answer)",
                        )
                        .with_key(key));
                    }
                } else {
                    (0..len, len)
                }
            }
            (None, None) => (0..len, len),
        };
        let (metadata, mtime) = meta_from_headers(o.metadata());
        let whole = opts.range.is_none();
        let meta = ObjectMeta {
            key: key.to_string(),
            size,
            last_modified: to_system_time(o.last_modified()),
            mtime,
            etag: o.e_tag().map(clean_etag),
            crc64nvme: if whole {
                full_object_crc(o.checksum_crc64_nvme(), o.checksum_type())
            } else {
                None
            },
            storage_class: o.storage_class().map(|s| s.as_str().to_string()),
            version_id: o.version_id().map(str::to_string),
            content_type: o.content_type().map(str::to_string),
            metadata,
            inode: None,
            ctime: None,
            encryption: encryption(o.server_side_encryption(), o.sse_customer_algorithm()),
        };
        let key_owned = key.to_string();
        let body = stream::unfold((o.body, key_owned), |(mut b, key)| async move {
            match b.next().await {
                None => None,
                Some(Ok(chunk)) => Some((Ok(chunk), (b, key))),
                Some(Err(e)) => {
                    let err = map_body_error("get", &key, e);
                    Some((
                        Err(err),
                        (
                            SdkByteStream::new(aws_smithy_types::body::SdkBody::empty()),
                            key,
                        ),
                    ))
                }
            }
        })
        .boxed();
        Ok(GetResult { meta, range, body })
    }

    async fn put(&self, key: &str, body: Bytes, opts: PutOptions) -> Result<PutResult> {
        let crc = self.crc_to_send(opts.crc64nvme, &body);
        let mut req = self
            .client
            .put_object()
            .bucket(&self.ctx.bucket)
            .key(key)
            .set_sse_customer_algorithm(self.sse_c.algorithm())
            .set_sse_customer_key(self.sse_c.key())
            .set_sse_customer_key_md5(self.sse_c.key_md5())
            .content_length(body.len() as i64)
            .set_content_type(opts.content_type.clone())
            .set_metadata(user_metadata(&opts))
            .set_tagging(encode_tags(&opts.tags))
            .set_storage_class(opts.storage_class.as_deref().map(StorageClass::from))
            .set_server_side_encryption(opts.sse.as_deref().map(ServerSideEncryption::from))
            .set_ssekms_key_id(opts.sse_kms_key_id.clone())
            .set_checksum_crc64_nvme(crc.map(crc64_to_b64))
            .set_content_md5(self.md5_to_send(&body))
            .body(SdkByteStream::from(body));
        req = with_headers!(req, &opts.headers);
        match &opts.mode {
            PutMode::Overwrite => {}
            PutMode::Create => req = req.if_none_match("*"),
            PutMode::Update { etag } => req = req.if_match(etag),
        }
        let out = req
            .send()
            .await
            .map_err(|e| mode_error(self.err("put", Some(key), e), &opts.mode))?;
        if let Err(e) = self.confirm_sse(
            "put",
            key,
            opts.sse.as_deref(),
            out.server_side_encryption(),
        ) {
            return Err(self.remove_unencrypted(key, e).await);
        }
        Ok(PutResult {
            etag: out.e_tag().map(clean_etag),
            version_id: out.version_id().map(str::to_string),
            crc64nvme: out.checksum_crc64_nvme().and_then(crc64_from_b64).or(crc),
        })
    }

    async fn head_part(&self, key: &str, part_number: u32) -> Result<(u64, u32)> {
        let o = self
            .head_request(key)
            .part_number(part_number as i32)
            .send()
            .await
            .map_err(|e| self.err("head_part", Some(key), e))?;
        match (o.content_length(), o.parts_count()) {
            (Some(len), Some(parts)) if len >= 0 && parts > 0 => Ok((len as u64, parts as u32)),
            _ => Err(StoreError::new(
                ErrorKind::Unsupported,
                "head_part",
                "the server does not say the object's parts (no PartsCount)",
            )
            .with_key(key)),
        }
    }

    async fn get_tags(&self, key: &str) -> Result<Vec<(String, String)>> {
        let out = self
            .client
            .get_object_tagging()
            .bucket(&self.ctx.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.err("get_tags", Some(key), e))?;
        Ok(out
            .tag_set()
            .iter()
            .map(|t| (t.key().to_string(), t.value().to_string()))
            .collect())
    }

    async fn create_multipart(
        &self,
        key: &str,
        opts: PutOptions,
        _layout: PartLayout,
    ) -> Result<String> {
        let mut req = self
            .client
            .create_multipart_upload()
            .bucket(&self.ctx.bucket)
            .key(key)
            .set_sse_customer_algorithm(self.sse_c.algorithm())
            .set_sse_customer_key(self.sse_c.key())
            .set_sse_customer_key_md5(self.sse_c.key_md5())
            .set_content_type(opts.content_type.clone())
            .set_metadata(user_metadata(&opts))
            .set_tagging(encode_tags(&opts.tags))
            .set_storage_class(opts.storage_class.as_deref().map(StorageClass::from))
            .set_server_side_encryption(opts.sse.as_deref().map(ServerSideEncryption::from))
            .set_ssekms_key_id(opts.sse_kms_key_id.clone());
        req = with_headers!(req, &opts.headers);
        if !self.when_required {
            req = req
                .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
                .checksum_type(ChecksumType::FullObject);
        }
        let out = req
            .send()
            .await
            .map_err(|e| self.err("create_multipart", Some(key), e))?;
        let id = out.upload_id().unwrap_or_default().to_string();
        if id.is_empty() {
            return Err(StoreError::new(
                ErrorKind::Other,
                "create_multipart",
                "the server returned no upload id",
            )
            .with_key(key));
        }
        if let Some(asked) = &opts.sse {
            if self
                .confirm_sse(
                    "create_multipart",
                    key,
                    Some(asked),
                    out.server_side_encryption(),
                )
                .is_err()
            {
                // Some servers confirm it on each part only: the first part decides.
                if let Ok(mut m) = self.unconfirmed_sse.lock() {
                    m.insert(id.clone(), asked.clone());
                }
            }
        }
        Ok(id)
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
        crc: Option<u64>,
    ) -> Result<PartInfo> {
        let crc = self.crc_to_send(crc, &body);
        let md5 = self.md5_to_send(&body);
        let len = body.len() as u64;
        self.send_part(
            key,
            (upload_id, part_number),
            len,
            SdkByteStream::from(body),
            (crc, md5),
        )
        .await
    }

    async fn upload_part_file(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        file: FileRange,
        crc: Option<u64>,
    ) -> Result<PartInfo> {
        // Sent from the file as it goes (the SDK reopens it for a retry): no part in memory.
        let body = SdkByteStream::read_from()
            .path(&file.path)
            .offset(file.offset)
            .length(aws_smithy_types::byte_stream::Length::Exact(file.len))
            .buffer_size(FILE_BUFFER)
            .build()
            .await
            .map_err(|e| {
                StoreError::new(
                    ErrorKind::Other,
                    "upload_part",
                    format!("cannot read {}: {e}", file.path.display()),
                )
                .with_key(key)
            })?;
        self.send_part(key, (upload_id, part_number), file.len, body, (crc, None))
            .await
    }

    async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        src: &CopySource,
        range: Range<u64>,
    ) -> Result<PartInfo> {
        if range.start >= range.end {
            return Err(StoreError::new(
                ErrorKind::InvalidInput,
                "upload_part_copy",
                format!("empty range {range:?}"),
            )
            .with_key(key));
        }
        let req = self
            .client
            .upload_part_copy()
            .bucket(&self.ctx.bucket)
            .key(key);
        let out = copy_sse_c!(req, self)
            .upload_id(upload_id)
            .part_number(part_number as i32)
            .copy_source(copy_source(src))
            .copy_source_range(format!("bytes={}-{}", range.start, range.end - 1))
            .set_copy_source_if_match(src.if_match.clone())
            .send()
            .await
            .map_err(|e| self.err("upload_part_copy", Some(key), e))?;
        self.confirm_part_sse(
            "upload_part_copy",
            key,
            upload_id,
            out.server_side_encryption(),
        )?;
        let r = out.copy_part_result();
        let etag = r
            .and_then(|r| r.e_tag())
            .map(clean_etag)
            .unwrap_or_default();
        if etag.is_empty() {
            return Err(StoreError::new(
                ErrorKind::Other,
                "upload_part_copy",
                format!("no ETag for part {part_number}"),
            )
            .with_key(key));
        }
        Ok(PartInfo {
            part_number,
            etag,
            crc64nvme: r
                .and_then(|r| r.checksum_crc64_nvme())
                .and_then(crc64_from_b64),
        })
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<PartInfo>,
        crc: Option<u64>,
        mode: PutMode,
    ) -> Result<PutResult> {
        let send_crc = !self.when_required;
        let completed: Vec<CompletedPart> = parts
            .iter()
            .map(|p| {
                CompletedPart::builder()
                    .part_number(p.part_number as i32)
                    .e_tag(&p.etag)
                    .set_checksum_crc64_nvme(if send_crc {
                        p.crc64nvme.map(crc64_to_b64)
                    } else {
                        None
                    })
                    .build()
            })
            .collect();
        let mut req = self
            .client
            .complete_multipart_upload()
            .bucket(&self.ctx.bucket)
            .key(key)
            .set_sse_customer_algorithm(self.sse_c.algorithm())
            .set_sse_customer_key(self.sse_c.key())
            .set_sse_customer_key_md5(self.sse_c.key_md5())
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            );
        if let (true, Some(c)) = (send_crc, crc) {
            req = req
                .checksum_crc64_nvme(crc64_to_b64(c))
                .checksum_type(ChecksumType::FullObject);
        }
        match &mode {
            PutMode::Overwrite => {}
            PutMode::Create => req = req.if_none_match("*"),
            PutMode::Update { etag } => req = req.if_match(etag),
        }
        let out = req
            .send()
            .await
            .map_err(|e| mode_error(self.err("complete_multipart", Some(key), e), &mode))?;
        let unconfirmed = self
            .unconfirmed_sse
            .lock()
            .ok()
            .and_then(|mut m| m.remove(upload_id));
        if let Some(asked) = unconfirmed {
            if let Err(e) = self.confirm_sse(
                "complete_multipart",
                key,
                Some(&asked),
                out.server_side_encryption(),
            ) {
                return Err(self.remove_unencrypted(key, e).await);
            }
        }
        Ok(PutResult {
            etag: out.e_tag().map(clean_etag),
            version_id: out.version_id().map(str::to_string),
            crc64nvme: full_object_crc(out.checksum_crc64_nvme(), out.checksum_type())
                .or(if send_crc { crc } else { None }),
        })
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()> {
        if let Ok(mut m) = self.unconfirmed_sse.lock() {
            m.remove(upload_id);
        }
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.ctx.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = self.err("abort_multipart", Some(key), e);
                // Aborting an upload that is already gone is done.
                if e.kind == ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    async fn list_multipart(&self, prefix: &str) -> Result<Vec<MultipartUpload>> {
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker): (Option<String>, Option<String>) = (None, None);
        loop {
            let mut req = self
                .client
                .list_multipart_uploads()
                .bucket(&self.ctx.bucket)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone());
            if !prefix.is_empty() {
                req = req.prefix(prefix);
            }
            let page = req
                .send()
                .await
                .map_err(|e| self.err("list_multipart", None, e))?;
            for u in page.uploads() {
                out.push(MultipartUpload {
                    key: u.key().unwrap_or_default().to_string(),
                    upload_id: u.upload_id().unwrap_or_default().to_string(),
                    initiated: to_system_time(u.initiated()),
                });
            }
            let next_key = page
                .next_key_marker()
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            let next_id = page
                .next_upload_id_marker()
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            if page.is_truncated() != Some(true)
                || (next_key.is_none() && next_id.is_none())
                || (next_key == key_marker && next_id == id_marker)
            {
                break;
            }
            key_marker = next_key;
            id_marker = next_id;
        }
        Ok(out)
    }

    async fn copy(&self, src: &CopySource, dst_key: &str, opts: CopyOptions) -> Result<PutResult> {
        let mut req = self
            .client
            .copy_object()
            .bucket(&self.ctx.bucket)
            .key(dst_key);
        req = copy_sse_c!(req, self);
        req = req
            .copy_source(copy_source(src))
            .set_copy_source_if_match(src.if_match.clone());
        match &opts.checksum_algorithm {
            Some(a) => {
                req =
                    req.checksum_algorithm(ChecksumAlgorithm::from(a.to_ascii_uppercase().as_str()))
            }
            None if !self.when_required => {
                req = req.checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
            }
            None => {}
        }
        let mut storage_class = opts.storage_class.clone();
        let mut mode = PutMode::Overwrite;
        match &opts.replace {
            None => {
                req = req
                    .metadata_directive(MetadataDirective::Copy)
                    .tagging_directive(TaggingDirective::Copy);
            }
            Some(p) => {
                req = req
                    .metadata_directive(MetadataDirective::Replace)
                    .set_content_type(p.content_type.clone())
                    .set_metadata(user_metadata(p))
                    .set_server_side_encryption(p.sse.as_deref().map(ServerSideEncryption::from))
                    .set_ssekms_key_id(p.sse_kms_key_id.clone());
                req = with_headers!(req, &p.headers);
                req = if p.tags.is_empty() {
                    req.tagging_directive(TaggingDirective::Copy)
                } else {
                    req.tagging_directive(TaggingDirective::Replace)
                        .set_tagging(encode_tags(&p.tags))
                };
                if storage_class.is_none() {
                    storage_class = p.storage_class.clone();
                }
                mode = p.mode.clone();
                match &p.mode {
                    PutMode::Overwrite => {}
                    PutMode::Create => req = req.if_none_match("*"),
                    PutMode::Update { etag } => req = req.if_match(etag),
                }
            }
        }
        req = req.set_storage_class(storage_class.as_deref().map(StorageClass::from));
        let out = req.send().await.map_err(|e| {
            let mut e = mode_error(self.err("copy", Some(dst_key), e), &mode);
            if e.kind == ErrorKind::PreconditionFailed
                && src.if_match.is_some()
                && mode == PutMode::Overwrite
            {
                e.message = format!("source {:?} changed (ETag no longer matches)", src.key);
            }
            e
        })?;
        let asked = opts.replace.as_ref().and_then(|p| p.sse.as_deref());
        if let Err(e) = self.confirm_sse("copy", dst_key, asked, out.server_side_encryption()) {
            return Err(self.remove_unencrypted(dst_key, e).await);
        }
        let r = out.copy_object_result();
        Ok(PutResult {
            etag: r.and_then(|r| r.e_tag()).map(clean_etag),
            version_id: out.version_id().map(str::to_string),
            crc64nvme: r.and_then(|r| full_object_crc(r.checksum_crc64_nvme(), r.checksum_type())),
        })
    }

    async fn delete_many(&self, keys: &[String]) -> Result<Vec<Result<()>>> {
        // DeleteObjects is an XML body, and XML 1.0 cannot carry most control characters: one
        // such key would fail its whole batch (MalformedXML). Those go one by one.
        if keys.iter().any(|k| !xml_safe(k)) {
            let (plain, odd): (Vec<usize>, Vec<usize>) =
                (0..keys.len()).partition(|&i| xml_safe(&keys[i]));
            let plain_keys: Vec<String> = plain.iter().map(|&i| keys[i].clone()).collect();
            let mut out: Vec<Option<Result<()>>> = (0..keys.len()).map(|_| None).collect();
            if !plain_keys.is_empty() {
                for (i, r) in plain.into_iter().zip(self.delete_many(&plain_keys).await?) {
                    out[i] = Some(r);
                }
            }
            for i in odd {
                let k = &keys[i];
                let r = match self
                    .client
                    .delete_object()
                    .bucket(&self.ctx.bucket)
                    .key(k)
                    .send()
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(e) => match self.err("delete", Some(k), e) {
                        e if e.kind == ErrorKind::NotFound => Ok(()),
                        e => Err(e),
                    },
                };
                out[i] = Some(r);
            }
            return Ok(out.into_iter().flatten().collect());
        }
        let mut results: Vec<Result<()>> = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(DELETE_BATCH) {
            let objects = chunk
                .iter()
                .map(|k| ObjectIdentifier::builder().key(k).build())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| build_error("delete", None, e))?;
            let del = Delete::builder()
                .set_objects(Some(objects))
                .quiet(false)
                .build()
                .map_err(|e| build_error("delete", None, e))?;
            let out = match self
                .client
                .delete_objects()
                .bucket(&self.ctx.bucket)
                .delete(del)
                .send()
                .await
            {
                Ok(o) => o,
                Err(e) => {
                    let e = self.err("delete", None, e);
                    if results.is_empty() {
                        return Err(e);
                    }
                    // Earlier batches went through: report this batch's keys one by one.
                    for k in chunk {
                        results.push(Err(StoreError {
                            kind: e.kind,
                            op: "delete",
                            key: Some(k.clone()),
                            message: e.message.clone(),
                            http: e.http.clone(),
                            source: None,
                        }));
                    }
                    continue;
                }
            };
            let mut failed: HashMap<&str, (Option<&str>, Option<&str>)> = HashMap::new();
            for e in out.errors() {
                if let Some(k) = e.key() {
                    failed.insert(k, (e.code(), e.message()));
                }
            }
            for k in chunk {
                match failed.get(k.as_str()) {
                    // A missing key is deleted already.
                    Some((code, _))
                        if crate::error::kind_for(None, *code) == ErrorKind::NotFound =>
                    {
                        results.push(Ok(()))
                    }
                    Some((code, msg)) => {
                        let kind = crate::error::kind_for(None, *code);
                        let mut e = StoreError::new(
                            kind,
                            "delete",
                            msg.unwrap_or("not deleted").to_string(),
                        )
                        .with_key(k.clone());
                        e.http = Some(s3ferry_store::HttpInfo {
                            status: None,
                            code: code.map(str::to_string),
                            request_id: None,
                            retry_after: None,
                        });
                        results.push(Err(e));
                    }
                    None => results.push(Ok(())),
                }
            }
        }
        Ok(results)
    }

    async fn delete_versions(&self, ids: &[(String, String)]) -> Result<Vec<Result<()>>> {
        let mut results: Vec<Result<()>> = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(DELETE_BATCH) {
            let objects = chunk
                .iter()
                .map(|(k, v)| ObjectIdentifier::builder().key(k).version_id(v).build())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| build_error("delete_versions", None, e))?;
            let del = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| build_error("delete_versions", None, e))?;
            let out = self
                .client
                .delete_objects()
                .bucket(&self.ctx.bucket)
                .delete(del)
                .send()
                .await
                .map_err(|e| self.err("delete_versions", None, e))?;
            let mut failed: HashMap<(&str, &str), (Option<&str>, Option<&str>)> = HashMap::new();
            for e in out.errors() {
                if let Some(k) = e.key() {
                    failed.insert(
                        (k, e.version_id().unwrap_or_default()),
                        (e.code(), e.message()),
                    );
                }
            }
            for (k, v) in chunk {
                results.push(match failed.get(&(k.as_str(), v.as_str())) {
                    Some((code, _))
                        if crate::error::kind_for(None, *code) == ErrorKind::NotFound =>
                    {
                        Ok(())
                    }
                    Some((code, msg)) => Err(StoreError::new(
                        crate::error::kind_for(None, *code),
                        "delete_versions",
                        format!("version {v}: {}", msg.or(*code).unwrap_or("not deleted")),
                    )
                    .with_key(k.clone())),
                    None => Ok(()),
                });
            }
        }
        Ok(results)
    }
}

/// Can this key travel in an XML 1.0 body (DeleteObjects) unchanged?
fn xml_safe(key: &str) -> bool {
    !key.chars()
        .any(|c| (c.is_control() && c != '\t' && c != '\n') || c == '\u{FFFE}' || c == '\u{FFFF}')
}

/// A failed conditional write: 412 on a create-only write means the object exists.
fn mode_error(mut e: StoreError, mode: &PutMode) -> StoreError {
    if e.kind == ErrorKind::PreconditionFailed {
        match mode {
            PutMode::Create => {
                e.kind = ErrorKind::AlreadyExists;
                e.message = "object already exists".into();
            }
            PutMode::Update { .. } => e.message = "ETag does not match (the object changed)".into(),
            PutMode::Overwrite => {}
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_copy_source_are_encoded() {
        let t = encode_tags(&[("a b".into(), "x&y=z".into()), ("k".into(), "ü".into())]);
        assert_eq!(t.as_deref(), Some("a%20b=x%26y%3Dz&k=%C3%BC"));
        let s = CopySource {
            bucket: "b".into(),
            key: "dir/a b+c%ü".into(),
            if_match: None,
            version_id: None,
        };
        assert_eq!(copy_source(&s), "b/dir/a%20b%2Bc%25%C3%BC");
    }

    #[test]
    fn content_range_parses() {
        assert_eq!(
            parse_content_range("bytes 0-9/100"),
            Some((0, 10, Some(100)))
        );
        assert_eq!(parse_content_range("bytes 5-5/*"), Some((5, 6, None)));
        assert_eq!(parse_content_range("nope"), None);
    }

    #[test]
    fn composite_checksums_are_not_full_object() {
        let v = crc64_to_b64(42);
        assert_eq!(full_object_crc(Some(&v), None), Some(42));
        assert_eq!(
            full_object_crc(Some(&v), Some(&ChecksumType::FullObject)),
            Some(42)
        );
        assert_eq!(
            full_object_crc(Some(&v), Some(&ChecksumType::Composite)),
            None
        );
        assert_eq!(full_object_crc(Some(&format!("{v}-3")), None), None);
    }
}

#[cfg(test)]
mod sse_c_tests {
    use super::SseCustomerKey;

    #[test]
    fn keys_as_text_base64_or_a_file_and_nothing_else() {
        let raw = "0123456789abcdef0123456789abcdef";
        let k = SseCustomerKey::parse(raw).unwrap();
        let b64 = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
        assert_eq!(SseCustomerKey::parse(b64).unwrap(), k);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("key");
        std::fs::write(&f, raw).unwrap();
        assert_eq!(
            SseCustomerKey::parse(&format!("fileb://{}", f.display())).unwrap(),
            k
        );
        for bad in ["short", "", "MDEy", &format!("{raw}x")] {
            let e = SseCustomerKey::parse(bad).unwrap_err();
            assert!(e.contains("32 bytes"), "{bad}: {e}");
        }
        let e = SseCustomerKey::parse("fileb:///no/such/key").unwrap_err();
        assert!(e.contains("/no/such/key"), "{e}");
        assert!(!format!("{k:?}").contains(raw) && !format!("{k:?}").contains(b64));
    }
}
