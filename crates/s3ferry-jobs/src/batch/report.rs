//! The completion report, laid out as S3 Batch Operations writes it:
//! `<prefix>/job-<id>/manifest.json` naming `results/succeeded.csv` and `results/failed.csv`
//! (rows `Bucket,Key,VersionId,TaskStatus,HTTPStatusCode,ErrorCode,ResultMessage`, no header: the
//! order of real reports, whatever the `ReportSchema` string says), each with its MD5, listed
//! under `TaskExecutionStatus` as AWS's own manifest.json does. Written to a local directory and/or an `s3://bucket/prefix`.

use std::io::Write;

use futures::StreamExt;
use s3ferry_engine::formats::csv::ReportRow;
use s3ferry_engine::journal::Journal;
use s3ferry_store::checksum::md5_hex;
use s3ferry_store::{PutOptions, StoreError};
use serde::Serialize;

use super::{BatchError, Buckets, JobSpec, JOB};

/// Where the report went.
#[derive(Clone, Debug, Serialize)]
pub struct ReportSummary {
    /// The report's manifest.json (a path or `s3://` URI; the S3 one when both were written).
    pub location: String,
    pub succeeded: u64,
    pub failed: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ResultFile {
    task_execution_status: &'static str,
    /// Empty for a report written to a local directory: then left out.
    #[serde(skip_serializing_if = "String::is_empty")]
    bucket: String,
    #[serde(rename = "MD5Checksum")]
    md5_checksum: String,
    key: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ReportManifest {
    format: &'static str,
    report_creation_date: String,
    results: Vec<ResultFile>,
    report_schema: &'static str,
}

/// Build the report from the job's `done` records (one row per entry) and write it.
pub async fn write_report(
    spec: &JobSpec,
    journal: &Journal,
    buckets: &dyn Buckets,
) -> Result<ReportSummary, BatchError> {
    let tmp = |e: std::io::Error| BatchError::Input(format!("report temp file: {e}"));
    let mut ok = tempfile::tempfile().map_err(tmp)?;
    let mut bad = tempfile::tempfile().map_err(tmp)?;
    let (mut n_ok, mut n_bad) = (0u64, 0u64);
    let mut rows = journal.scan(JOB, &spec.id, "done");
    while let Some(r) = rows.next().await {
        let (_, line) = r.map_err(|e| BatchError::Journal(e.to_string()))?;
        // Written anew: a row recorded by an older s3ferry (error code first) comes out in the
        // order of real reports too.
        let (succeeded, line) = match ReportRow::parse_row(&line) {
            Ok(r) => (r.succeeded, r.to_row()),
            Err(_) => (false, line),
        };
        if succeeded {
            n_ok += 1;
            if !spec.report_failed_only {
                writeln!(ok, "{line}").map_err(tmp)?;
            }
        } else {
            n_bad += 1;
            writeln!(bad, "{line}").map_err(tmp)?;
        }
    }
    let read = |mut f: std::fs::File| -> Result<Vec<u8>, BatchError> {
        use std::io::{Read, Seek};
        f.rewind().map_err(tmp)?;
        let mut v = Vec::new();
        f.read_to_end(&mut v).map_err(tmp)?;
        Ok(v)
    };
    let mut files: Vec<(&'static str, Vec<u8>)> = Vec::new();
    if !spec.report_failed_only {
        files.push(("succeeded", read(ok)?));
    }
    files.push(("failed", read(bad)?));
    let dir = format!("job-{}", spec.id);
    let manifest = |bucket: &str, prefix: &str| {
        let m = ReportManifest {
            format: "Report_CSV_20180820",
            report_creation_date: chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            results: files
                .iter()
                .map(|(state, data)| ResultFile {
                    task_execution_status: state,
                    bucket: bucket.to_string(),
                    md5_checksum: md5_hex(data),
                    key: format!("{prefix}{dir}/results/{state}.csv"),
                })
                .collect(),
            report_schema:
                "Bucket, Key, VersionId, TaskStatus, ErrorCode, HTTPStatusCode, ResultMessage",
        };
        serde_json::to_vec_pretty(&m).unwrap_or_default()
    };
    let mut location = None;
    if let Some(d) = &spec.report_dir {
        let root = std::path::Path::new(d).join(&dir);
        let io = |e: std::io::Error| BatchError::Input(format!("report dir {d}: {e}"));
        fs_err::create_dir_all(root.join("results")).map_err(io)?;
        for (state, data) in &files {
            fs_err::write(root.join(format!("results/{state}.csv")), data).map_err(io)?;
        }
        fs_err::write(root.join("manifest.json"), manifest("", "")).map_err(io)?;
        location = Some(root.join("manifest.json").display().to_string());
    }
    if let Some(uri) = &spec.report_uri {
        let rest = uri.strip_prefix("s3://").unwrap_or(uri);
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = if prefix.is_empty() || prefix.ends_with('/') {
            prefix.to_string()
        } else {
            format!("{prefix}/")
        };
        let store = buckets.open(bucket, false).await?;
        let put = |key: String, data: Vec<u8>, ct: &'static str| {
            let store = store.clone();
            async move {
                store
                    .put(
                        &key,
                        bytes::Bytes::from(data),
                        PutOptions::new().content_type(Some(ct.into())),
                    )
                    .await
                    .map_err(|e: StoreError| {
                        BatchError::Input(format!("report s3://{bucket}/{key}: {e}"))
                    })
            }
        };
        for (state, data) in &files {
            put(
                format!("{prefix}{dir}/results/{state}.csv"),
                data.clone(),
                "text/csv",
            )
            .await?;
        }
        let mkey = format!("{prefix}{dir}/manifest.json");
        put(mkey.clone(), manifest(bucket, &prefix), "application/json").await?;
        location = Some(format!("s3://{bucket}/{mkey}"));
    }
    Ok(ReportSummary {
        location: location.unwrap_or_default(),
        succeeded: n_ok,
        failed: n_bad,
    })
}
