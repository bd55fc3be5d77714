//! Command-line definitions: the one place flags and their environment variables are declared.
//! `--help` is generated from here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const AFTER_HELP: &str = "\
ENVIRONMENT
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE, AWS_REGION,
    AWS_ENDPOINT_URL and ~/.aws/config are honoured as by the AWS CLI. Never put secrets in
    arguments: s3ferry takes credentials only from the environment and the credential chain.
    S3FERRY_STATE_DIR   where the state database lives (default ~/.local/state/s3ferry)

EXIT STATUS
    0  everything done
    1  some objects failed or were refused (each is listed)
    2  usage error, bad input, or a fatal error (missing bucket, bad credentials, unreachable
       endpoint, delete limit exceeded); nothing or only part was done";

/// s3ferry moves data into, out of, between and across S3 buckets — correctly, fast, safely.
#[derive(Debug, Parser)]
#[command(name = "s3ferry", version, about, after_help = AFTER_HELP, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// S3 endpoint URL (for S3-compatible servers); applies to both sides unless
    /// --source-endpoint-url is given.
    #[arg(long, global = true, env = "AWS_ENDPOINT_URL", value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// AWS profile from ~/.aws/config and ~/.aws/credentials.
    #[arg(long, global = true, env = "AWS_PROFILE", value_name = "NAME")]
    pub profile: Option<String>,
    /// AWS region (default: from the environment or profile, else us-east-1).
    #[arg(long, global = true, value_name = "REGION")]
    pub region: Option<String>,
    /// Endpoint URL of the source side only (cross-account / cross-provider copies).
    #[arg(long, global = true, value_name = "URL")]
    pub source_endpoint_url: Option<String>,
    /// Profile of the source side only.
    #[arg(long, global = true, value_name = "NAME")]
    pub source_profile: Option<String>,
    /// Region of the source side only.
    #[arg(long, global = true, value_name = "REGION")]
    pub source_region: Option<String>,
    /// Addressing style: path (bucket in the path; default with --endpoint-url) or virtual
    /// (bucket in the host name; default for AWS).
    #[arg(long, global = true, value_enum, value_name = "STYLE")]
    pub addressing_style: Option<Addressing>,
    /// When to send request checksums: when-supported (default) or when-required, for
    /// S3-compatible servers that reject the SDK's default checksums. s3ferry verifies the data
    /// itself either way.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "when-supported",
        value_name = "MODE"
    )]
    pub checksum_mode: ChecksumMode,
    /// Print one JSON object per line (begin, one per object, summary) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// More output: -v lists skipped objects and logs retries, -vv debug logs.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Never draw progress bars (they are drawn only when stderr is a terminal).
    #[arg(long, global = true)]
    pub no_progress: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Addressing {
    Path,
    Virtual,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ChecksumMode {
    WhenSupported,
    WhenRequired,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make DST match SRC: copy new and changed objects, optionally delete extra ones.
    #[command(long_about = SYNC_ABOUT)]
    Sync(SyncArgs),
    /// Create a bucket (succeeds if you already own it).
    Mb {
        /// s3://bucket
        uri: String,
    },
    /// List objects under s3://bucket[/prefix], recursively (--json for JSON Lines).
    Ls {
        /// s3://bucket[/prefix]
        uri: String,
    },
}

const SYNC_ABOUT: &str = "\
Make DST match SRC. Each side is a local directory or s3://bucket[/prefix]: local to S3, S3 to
local, S3 to S3 (server-side copies when both sides share an endpoint and credentials; streamed
through otherwise) and local to local.

An object is copied when it is new, its size differs, or its content differs. Content is compared
without reading anything when the state database shows neither side changed since the last sync;
otherwise by the ETag recomputed from the local file (multipart-aware, cached), or by full-object
CRC64NVME checksums, or — for a local source modified after the object was written — by time.
Local modification times travel in the object metadata (\"mtime\") and are restored on download,
so round trips are exact.

Big objects go up as multipart uploads and come down as parallel ranged reads, each part and the
whole object verified; a partial object never appears under its final name. A killed sync resumes:
finished objects are not transferred again and unfinished uploads are aborted.

Deleting (--delete) is refused before any change when it would remove more than --max-delete
(default 50% of the destination), or anything at all when the source is empty and --max-delete was
not given; deletes are skipped for a run whose source listing had errors.

EXAMPLES
    s3ferry sync ./site s3://my-bucket/site
    s3ferry sync --delete --max-delete 100 ./site s3://my-bucket/site
    s3ferry sync --dry-run --exclude '*.tmp' s3://my-bucket/logs ./logs
    s3ferry sync --since 2024-05-01 s3://src-bucket/data s3://dst-bucket/data
    s3ferry sync --source-profile prod --profile backup s3://prod/x s3://backup/x";

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Source: a local directory or s3://bucket[/prefix].
    pub src: String,
    /// Destination: a local directory or s3://bucket[/prefix].
    pub dst: String,
    /// Delete destination objects that are not in the source (subject to --max-delete).
    #[arg(long)]
    pub delete: bool,
    /// Most deletions allowed: a count (100) or a percentage of the destination (25%).
    #[arg(long, value_name = "N|N%")]
    pub max_delete: Option<String>,
    /// Show what would be done; change nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Include keys matching GLOB (relative to the prefix; `*` matches across `/`). Include and
    /// exclude rules apply in the order given; the last matching rule wins.
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Exclude keys matching GLOB. Excluded keys are neither copied nor deleted.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Only copy objects/files modified at or after DATE (2024-05-01, 2024-05-01T12:00:00Z, or an
    /// age like 36h or 7d). Older ones are never deleted because of it.
    #[arg(long, value_name = "DATE")]
    pub since: Option<String>,
    /// Treat same-size objects as unchanged.
    #[arg(long, conflicts_with_all = ["checksum", "exact_timestamps"])]
    pub size_only: bool,
    /// Compare content (ETag / checksum) of every same-size pair, ignoring times and state.
    #[arg(long)]
    pub checksum: bool,
    /// Treat same-size objects as changed when their modification times differ at all.
    #[arg(long)]
    pub exact_timestamps: bool,
    /// Storage class for new objects (STANDARD, STANDARD_IA, INTELLIGENT_TIERING, GLACIER_IR, …).
    #[arg(long, value_name = "CLASS")]
    pub storage_class: Option<String>,
    /// Objects transferred at once.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub concurrency: usize,
    /// Parts in flight per big object.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub part_concurrency: usize,
    /// Minimum multipart part size (the rule is max(SIZE, size/10000), never below 5 MiB);
    /// objects up to this size go up in one PUT.
    #[arg(long, default_value = "8MiB", value_name = "SIZE")]
    pub part_size: String,
    /// Memory budget for data in flight.
    #[arg(long, default_value = "1GiB", value_name = "SIZE")]
    pub max_memory: String,
    /// Stream S3-to-S3 copies through this machine even when a server-side copy is possible.
    #[arg(long)]
    pub no_server_side_copy: bool,
    /// Largest object copied with one CopyObject; bigger ones use UploadPartCopy.
    #[arg(long, default_value = "5GiB", value_name = "SIZE", hide = true)]
    pub copy_threshold: String,
    /// Directory of the state database (hash cache, last-sync state, unfinished uploads).
    #[arg(long, env = "S3FERRY_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Keep no state: every run compares content afresh.
    #[arg(long)]
    pub no_state: bool,
    /// fsync each downloaded file (and its directory) before it is renamed into place, so it
    /// survives a power loss too. Without it a crash of s3ferry still never leaves a partial file
    /// under the final name (renames are atomic), as with other sync tools; it costs about 1.7 s
    /// per GiB here.
    #[arg(long)]
    pub fsync: bool,
}

/// Parse sizes like `8MiB`, `64M`, `1GB`, `4096`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let i = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(i);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("bad size {s:?}: use e.g. 8MiB, 64M or 1GiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        u => return Err(format!("bad size {s:?}: unknown unit {u:?}")),
    };
    Ok((n * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("8 parsecs").is_err());
    }
}
