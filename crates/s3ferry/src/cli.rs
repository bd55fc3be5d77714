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

#[derive(Clone, Debug, Args)]
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
    /// When to send request checksums: when-supported (the default) or when-required, for
    /// S3-compatible servers that reject the SDK's default checksums. s3ferry verifies the data
    /// itself either way. Without it, AWS_REQUEST_CHECKSUM_CALCULATION or the profile's
    /// request_checksum_calculation (when_supported, when_required) decide, as for aws-cli;
    /// AWS_RESPONSE_CHECKSUM_VALIDATION / response_checksum_validation = when_required stops
    /// asking GETs for the object's checksums.
    #[arg(
        long,
        global = true,
        value_enum,
        ignore_case = true,
        value_name = "MODE"
    )]
    pub checksum_mode: Option<ChecksumMode>,
    /// Trust the certificate authorities in FILE (PEM) for HTTPS endpoints, besides the
    /// system's: a private CA in front of an S3-compatible server. As aws-cli's --ca-bundle;
    /// AWS_CA_BUNDLE and the profile's ca_bundle do the same when it is not given.
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_bundle: Option<PathBuf>,
    /// Refused: s3ferry never turns certificate checks off. Give the endpoint's certificate
    /// (or its CA's) with --ca-bundle instead.
    #[arg(long, global = true, hide = true)]
    pub no_verify_ssl: bool,
    /// Send S3 requests unsigned, without looking for credentials: public buckets, as aws-cli's
    /// --no-sign-request (both sides).
    #[arg(long, global = true)]
    pub no_sign_request: bool,
    /// Accept a write that asked for server-side encryption (--sse) although the server's
    /// answer does not confirm it (servers without SSE store the object plainly and say
    /// nothing); without it such an object fails, with this option named.
    #[arg(long, global = true)]
    pub allow_unconfirmed_sse: bool,
    /// Requester Pays buckets: `requester` sends `x-amz-request-payer: requester` on every S3
    /// request (both sides), so this account is charged for the requests and the data sent.
    #[arg(long, global = true, value_parser = ["requester"], value_name = "PAYER")]
    pub request_payer: Option<String>,
    /// Print one JSON object per line (begin, one per object, summary) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// More output: -v lists skipped objects and logs retries, -vv debug logs.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors (aws-cli's --only-show-errors is the same).
    #[arg(short, long, global = true, alias = "only-show-errors")]
    pub quiet: bool,
    /// Give up on an S3 request whose answer has not started after this long (retried like
    /// any timeout).
    #[arg(
        long,
        global = true,
        env = "S3FERRY_READ_TIMEOUT",
        default_value = "5m",
        value_name = "DURATION"
    )]
    pub read_timeout: String,
    /// Attempts per request before that object fails (1 to 100; the first try included), as
    /// AWS_MAX_ATTEMPTS is for aws-cli. Waits between them grow from 100 ms to 20 s, with
    /// jitter; a server's Retry-After is honoured. The whole job also keeps a retry budget, so a
    /// server that fails everything is not hammered.
    #[arg(
        long,
        global = true,
        env = "AWS_MAX_ATTEMPTS",
        default_value_t = 10,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..=100)
    )]
    pub max_attempts: u32,
    /// At most this many S3 requests per second, for the whole process (on top of the adaptive
    /// concurrency limit that backs off on 503 SlowDown).
    #[arg(long, global = true, env = "S3FERRY_MAX_RPS", value_parser = parse_rps, value_name = "N")]
    pub max_rps: Option<f64>,
    /// Keys asked for per listing request (1 to 1,000; S3's default is 1,000), as aws-cli's
    /// --page-size: smaller pages for servers that time out on large ones.
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub page_size: Option<u32>,
    /// Log level (overrides -v/-q for logs): error, warn, info or debug.
    #[arg(long, global = true, env = "S3FERRY_LOG_LEVEL", value_parser = ["error", "warn", "info", "debug"], value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Never show progress: no bar on a terminal, no progress lines otherwise.
    #[arg(long, global = true)]
    pub no_progress: bool,
    /// When stderr is not a terminal (CI logs, containers), write a progress line this often
    /// ("1,234 of 10,000 objects, 1.2 GiB of 9.8 GiB, 45 MiB/s, ETA 3m"); 0 for none.
    #[arg(
        long,
        global = true,
        env = "S3FERRY_PROGRESS_INTERVAL",
        default_value = "10s",
        value_name = "DURATION"
    )]
    pub progress_interval: String,
    /// Log lines on stderr as text, or as one JSON object per line (with the job, the run id
    /// and the key where there is one) for log pipelines.
    #[arg(
        long,
        global = true,
        env = "S3FERRY_LOG_FORMAT",
        value_enum,
        default_value = "text",
        value_name = "FORMAT"
    )]
    pub log_format: LogFormat,
    /// Serve Prometheus metrics on http://HOST:PORT/metrics, with /healthz (alive) and /readyz
    /// (bisync: the last round succeeded lately; a worker: its queue answers) for container
    /// probes. Port 0 picks a free port (the address is printed on stderr).
    #[arg(
        long,
        global = true,
        env = "S3FERRY_METRICS_ADDR",
        value_name = "HOST:PORT"
    )]
    pub metrics_addr: Option<String>,
    /// Write the same metrics as CloudWatch Embedded Metric Format lines to FILE (appended), or
    /// to stderr with `-`: every --metrics-interval and once at the end of the run. Counters are
    /// the increase since the previous line, so CloudWatch's Sum adds up.
    #[arg(
        long,
        global = true,
        env = "S3FERRY_METRICS_EMF",
        value_name = "FILE|-"
    )]
    pub metrics_emf: Option<String>,
    /// The CloudWatch namespace of --metrics-emf.
    #[arg(
        long,
        global = true,
        env = "S3FERRY_METRICS_NAMESPACE",
        default_value = "s3ferry",
        value_name = "NAME"
    )]
    pub metrics_namespace: String,
    /// How often --metrics-emf writes (CloudWatch's standard resolution is one minute).
    #[arg(
        long,
        global = true,
        env = "S3FERRY_METRICS_INTERVAL",
        default_value = "60s",
        value_name = "DURATION"
    )]
    pub metrics_interval: String,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Addressing {
    Path,
    Virtual,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ChecksumMode {
    #[value(alias = "when_supported")]
    WhenSupported,
    #[value(alias = "when_required")]
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
    /// Stream stdin into an S3 object (`pipe up`) or an object to stdout (`pipe down`), in
    /// parallel parts; segmented uploads can be read while they are written.
    #[command(subcommand, long_about = PIPE_ABOUT)]
    Pipe(PipeCommand),
    /// Keep a local directory and an S3 prefix in two-way sync, continuously.
    #[command(long_about = BISYNC_ABOUT)]
    Bisync(BisyncArgs),
    /// Server-side copies of listed objects or whole bucket pairs, as a resumable job.
    #[command(subcommand, long_about = BATCH_ABOUT)]
    Batch(BatchCommand),
    /// Pack many small objects into indexed tar shards, on one machine or as SQS workers.
    #[command(subcommand, long_about = BUNDLE_ABOUT)]
    Bundle(BundleCommand),
    /// Offline delta sync across an air gap: export what changed into a verifiable archive,
    /// carry it, import it on the other side in order.
    #[command(subcommand, long_about = ARCHIVE_ABOUT)]
    Archive(ArchiveCommand),
    /// Copy a file or object, a directory or prefix (--recursive), or the objects an S3
    /// wildcard matches.
    #[command(long_about = CP_ABOUT)]
    Cp(CpArgs),
    /// Move: copy, then delete each source once its copy is verified.
    #[command(long_about = MV_ABOUT)]
    Mv(CpArgs),
    /// Delete an object, a prefix (--recursive), or the objects a wildcard matches.
    #[command(long_about = RM_ABOUT)]
    Rm(RmArgs),
    /// Compare two sides without copying: missing, extra and different keys (exit 1 if any).
    #[command(long_about = CHECK_ABOUT)]
    Check(CheckArgs),
    /// Write an object to stdout (the same as `pipe down`).
    Cat(PipeDownArgs),
    /// Count the objects and bytes under a prefix, a wildcard or a directory.
    #[command(long_about = DU_ABOUT)]
    Du(DuArgs),
    /// Delete a bucket; --force deletes everything in it first.
    #[command(long_about = RB_ABOUT)]
    Rb(RbArgs),
    /// Print a URL that reads an object without credentials until it expires.
    Presign(PresignArgs),
    /// Run the cp, mv and rm commands of FILE (- for stdin), one per line, in parallel.
    #[command(long_about = RUN_ABOUT)]
    Run(RunArgs),
}

const WILDCARDS: &str = "
WILDCARDS (in S3 sources, as in s5cmd)
    *       any run of characters, across /       s3://b/logs/2026-*/*.gz
    ?       one character                          s3://b/img-??.png
    [a-c]   one of a class ([!a-c]: none of it)    s3://b/part-[0-4]*
    \\*      a literal *
The listing starts at the text before the first wildcard (s3://b/logs/2026-), so a wildcard
deep in a big bucket lists only what it can match. Matched objects keep their path after the
last / before the first wildcard: s3://b/logs/2026-*/*.gz copies logs/2026-01/a.gz to
DST/2026-01/a.gz. Quote wildcards so the shell leaves them alone.";

const CP_ABOUT: &str = "\
Copy one file or object, a local directory or S3 prefix with --recursive, or every object an S3
wildcard matches. Local to S3, S3 to local, S3 to S3 (server-side when both sides share an
endpoint; objects over 5 GiB in parts).

One object: DST is the new key or file; a DST ending in / (or an existing directory, or a bare
bucket) gets the source's name. Several objects: DST is a prefix or directory, and each object
keeps its path relative to the source prefix (or the wildcard's base).

Every copy is verified (part and full-object checksums); a partial object never appears under
its final name, and a local destination is never written outside DST (keys like ../x are
refused and listed). Existing objects are replaced unless --no-clobber, --if-size-differ or
--if-source-newer say otherwise (each looks at the destination first).

EXAMPLES
    s3ferry cp report.pdf s3://bucket/reports/
    s3ferry cp s3://bucket/reports/2026.pdf ./2026.pdf
    s3ferry cp --recursive ./site s3://bucket/site
    s3ferry cp 's3://bucket/logs/2026-*/*.gz' ./logs/
    s3ferry cp --no-clobber 's3://src/data/*' s3://dst/data/

EQUIVALENTS
    aws s3 cp --recursive SRC DST         s3ferry cp --recursive SRC DST
    s5cmd cp -n -s -u 's3://b/*' dir/     s3ferry cp --no-clobber --if-size-differ --if-source-newer 's3://b/*' dir/
";

const MV_ABOUT: &str = "\
Move objects: each is copied as `cp` copies it (same forms, same options), and its source is
deleted only after the copy is verified. A source that could not be deleted is listed as failed
(the copy stays). --dry-run shows what would move.

EXAMPLES
    s3ferry mv s3://bucket/incoming/a.csv s3://bucket/done/
    s3ferry mv 's3://bucket/incoming/*.csv' s3://archive/2026/";

const RM_ABOUT: &str = "\
Delete an object (s3://bucket/key), everything under a prefix (--recursive), or the objects a
wildcard matches, in batches of 1,000 keys per DeleteObjects request sent in parallel.
--all-versions deletes every version and delete marker as well (versioned buckets).

The matching objects are counted before anything is deleted, and more than --max-delete
(default 1000) are refused: the command exits 2 and nothing is deleted. --dry-run lists them.

EXAMPLES
    s3ferry rm s3://bucket/tmp/x.bin
    s3ferry rm --recursive --max-delete 50000 s3://bucket/tmp/
    s3ferry rm 's3://bucket/logs/2025-*'
    s3ferry rm --recursive --all-versions s3://bucket/old/

EQUIVALENTS
    aws s3 rm --recursive s3://b/p/       s3ferry rm --recursive s3://b/p/
    s5cmd rm 's3://b/logs/*'              s3ferry rm 's3://b/logs/*'";

const CHECK_ABOUT: &str = "\
Prove that DST holds what SRC holds, without copying: after a sync, a migration, or seeding a
replica. Both listings are merged by key (memory stays flat at millions of keys). Each key is:

    missing     in SRC only
    extra       in DST only
    size        both, sizes differ
    content     both, same size, checksums or ETags say the content differs
    unverified  both, same size, but nothing both sides carry can tell (use --download)

Same-size pairs are compared by full-object checksums, plain-MD5 ETags, or a local file hashed
the way the object's ETag was made (multipart-aware); with --download by the content read from
both sides (CRC64NVME of each). Equal keys are listed with -v.

EXIT STATUS
    0 the sides hold the same objects; 1 some key differs (or could not be read); 2 bad input.

EXAMPLES
    s3ferry check ./site s3://bucket/site
    s3ferry check --download s3://src/data s3://replica/data
    s3ferry --json check s3://a/x s3://b/x | jq 'select(.action==\"differ\")'

EQUIVALENTS
    rclone check SRC DST                  s3ferry check SRC DST
    rclone check --download SRC DST       s3ferry check --download SRC DST";

const DU_ABOUT: &str = "\
Count the objects and bytes under each s3://bucket/prefix, S3 wildcard or local directory given:
one line per argument, or per storage class (--group-by storage-class) or per first path segment
under the prefix (--group-by prefix). --json writes one record per line.

EXAMPLES
    s3ferry du s3://bucket/logs/
    s3ferry du --group-by storage-class s3://bucket
    s3ferry du 's3://bucket/logs/2026-*'";

const RB_ABOUT: &str = "\
Delete a bucket. It must be empty, unless --force: then every object (every version and delete
marker, in a versioned bucket) is deleted first, and unfinished multipart uploads are aborted.

EXAMPLES
    s3ferry rb s3://scratch-bucket
    s3ferry rb --force s3://scratch-bucket";

const RUN_ABOUT: &str = "\
Run many commands as one job: each line of FILE (- reads stdin) is a cp, mv or rm command as it
would follow `s3ferry` (without global options); empty lines and lines starting with # are
skipped. Every line's objects go to one executor, under one --concurrency, with one summary and
one exit status: 0 all done, 1 something failed (a bad line is reported with its line number and
the other lines still run), 130 stopped by a signal.

    $ cat commands.txt
    cp s3://bucket/a.csv ./in/
    mv 's3://bucket/incoming/*.json' s3://bucket/done/
    rm --recursive s3://bucket/tmp/
    $ s3ferry run commands.txt

EQUIVALENTS
    s5cmd run commands.txt                s3ferry run commands.txt";

/// Options every command that copies objects shares.
#[derive(Debug, Args, Clone)]
pub struct TransferArgs {
    /// Objects in flight at once (1 to 4096). Default 64, lowered as for sync so that 4 file
    /// descriptors per transfer stay within half the open-files limit (`ulimit -n`).
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,
    /// Minimum multipart part size, 5 MiB to 5 GiB (the rule is max(SIZE, size/10000)).
    #[arg(long, default_value = "8MiB", value_name = "SIZE")]
    pub part_size: String,
    /// Memory budget for data in flight (at least one part).
    #[arg(long, default_value = "1GiB", value_name = "SIZE")]
    pub max_memory: String,
}

#[derive(Debug, Args)]
#[command(after_help = WILDCARDS)]
pub struct CpArgs {
    /// A file, directory, s3://bucket/key, s3://bucket/prefix or S3 wildcard.
    pub src: String,
    /// A file, directory, s3://bucket/key or s3://bucket/prefix/.
    pub dst: String,
    /// Copy everything under a directory or prefix.
    #[arg(short, long)]
    pub recursive: bool,
    /// Show what would be copied; change nothing.
    #[arg(short = 'n', long, alias = "dryrun")]
    pub dry_run: bool,
    /// Never replace an existing destination object.
    #[arg(long)]
    pub no_clobber: bool,
    /// Replace an existing destination object only when the sizes differ.
    #[arg(long)]
    pub if_size_differ: bool,
    /// Replace an existing destination object only when the source is newer.
    #[arg(long)]
    pub if_source_newer: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Storage class of new objects (STANDARD, STANDARD_IA, INTELLIGENT_TIERING, GLACIER_IR, …).
    #[arg(long, value_name = "CLASS")]
    pub storage_class: Option<String>,
    #[command(flatten)]
    pub transfer: TransferArgs,
    #[command(flatten)]
    pub write: WriteArgs,
}

#[derive(Debug, Args)]
#[command(after_help = WILDCARDS)]
pub struct RmArgs {
    /// s3://bucket/key, s3://bucket/prefix (with --recursive) or an S3 wildcard.
    pub uri: String,
    /// Delete everything under the prefix.
    #[arg(short, long)]
    pub recursive: bool,
    /// Delete every version and delete marker too (versioned buckets).
    #[arg(long)]
    pub all_versions: bool,
    /// Show what would be deleted; delete nothing.
    #[arg(short = 'n', long, alias = "dryrun")]
    pub dry_run: bool,
    /// Most objects (or versions) deleted; more is refused before anything is deleted.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub max_delete: u64,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// DeleteObjects requests in flight at once (1 to 4096).
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub concurrency: usize,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The side that should be complete: a directory or s3://bucket[/prefix].
    pub src: String,
    /// The side checked against it: a directory or s3://bucket[/prefix].
    pub dst: String,
    /// Compare the content of every same-size pair, read from both sides.
    #[arg(long)]
    pub download: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Keys compared at once (1 to 4096).
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub concurrency: usize,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum GroupByArg {
    StorageClass,
    Prefix,
}

#[derive(Debug, Args)]
#[command(after_help = WILDCARDS)]
pub struct DuArgs {
    /// s3://bucket[/prefix], S3 wildcards or local directories.
    #[arg(required = true)]
    pub uris: Vec<String>,
    /// One line per storage class, or per first path segment under the prefix.
    #[arg(long, value_enum, value_name = "WHAT")]
    pub group_by: Option<GroupByArg>,
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Debug, Args)]
pub struct RbArgs {
    /// s3://bucket
    pub uri: String,
    /// Delete every object, version and unfinished upload first.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct PresignArgs {
    /// s3://bucket/key
    pub uri: String,
    /// How long the URL works (at most 7d).
    #[arg(long, default_value = "1h", value_name = "DURATION")]
    pub expires_in: String,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A file of commands, one per line; - reads stdin.
    pub file: String,
    /// For all lines together (a line's own transfer options are not used).
    #[command(flatten)]
    pub transfer: TransferArgs,
}

/// One line of a `run` file.
#[derive(Debug, Parser)]
#[command(name = "line", no_binary_name = true)]
pub struct RunLine {
    #[command(subcommand)]
    pub command: LineCommand,
}

#[derive(Debug, Subcommand)]
pub enum LineCommand {
    Cp(CpArgs),
    Mv(CpArgs),
    Rm(RmArgs),
}

const ARCHIVE_ABOUT: &str = "\
Carry a bucket prefix or a directory across a boundary that only files cross. The first export is
full; each later one holds only what changed since the state the previous one wrote: new and
changed objects, deletions (tombstones) and moves (a deleted object whose content reappears under
another key). Every archive says which source it is of and where it stands in that source's
sequence; the destination remembers what it applied, so a missing or repeated archive is caught.

    s3ferry archive export s3://data/reports --out /media/usb/                 # full: seq 1
    s3ferry archive export s3://data/reports --out /media/usb/ \\
            --since-state /media/usb/data-reports-000001.state                 # delta: seq 2
    s3ferry archive verify /media/usb/data-reports-000002.tar
    s3ferry archive import /media/usb/data-reports-00000*.tar s3://mirror/reports

An archive is a tar (zstd-compressed with --compress) whose first member, s3ferry-archive.json,
is JSON Lines: a header (format, version, archive id, source, sequence number, base archive,
creation time, volume i of n) and one line per entry (op put|move|delete, key, size, SHA-256,
CRC64NVME, last-modified, content type, metadata, tags); the data members follow in that order.
--volume-size splits an export into volumes of that many object bytes (an object is split at a
volume boundary); each volume verifies alone. Next to the archive the export writes
<name>.state, the state the next export builds on (gzipped JSON Lines, one line per object).

Import verifies every archive completely (structure, every SHA-256 and CRC64NVME, every volume
present) before it changes anything; then writes the puts, makes the moves as copies at the
destination, deletes (within --max-delete), and records the archive in the marker
.s3ferry-archive.json at the destination, next to the state its export wrote
(.s3ferry-archive.state, which `archive state DEST --out FILE` writes out to carry back). An
archive applied before is skipped; one that does not follow the destination's last archive, or
is of another source, is refused unless --force.

Exit status: 0 done (or nothing to do); 1 some objects failed (the marker is not advanced: run the
import again); 2 bad input (damaged, incomplete, out-of-order archive; bad state file; missing
bucket) and nothing was applied.";

#[derive(Debug, Subcommand)]
pub enum ArchiveCommand {
    /// Write the changes since --since-state (or everything) as an archive, and the new state.
    Export(ArchiveExportArgs),
    /// Count what an export would hold (from listings and the state; nothing read or written).
    Plan(ArchivePlanArgs),
    /// Check archives' structure and every checksum; apply nothing.
    Verify(ArchiveVerifyArgs),
    /// Verify archives, then apply them to a directory or s3://bucket/prefix, in order.
    Import(ArchiveImportArgs),
    /// Write the state the destination's last imported archive carried, for the export side's
    /// next --since-state (carry it back when the export side lost its own).
    State(ArchiveStateArgs),
}

#[derive(Debug, Args)]
pub struct ArchiveStateArgs {
    /// The destination archives were imported into: a directory or s3://bucket/prefix.
    pub dest: String,
    /// The state file to write.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct ArchiveSourceArgs {
    /// The source: s3://bucket[/prefix] or a local directory.
    pub src: String,
    /// The state written by the previous export (or carried back): export only what changed
    /// since.
    #[arg(long, value_name = "STATE", conflicts_with = "since")]
    pub since_state: Option<PathBuf>,
    /// Only objects modified at or after DATE (2026-01-31, RFC 3339, or an age like 7d); no
    /// deletions. Starts a sequence like a full export.
    #[arg(long, value_name = "DATE")]
    pub since: Option<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// The source's name in the archive (default: its s3:// URI or absolute path); keep it
    /// when the source moves.
    #[arg(long, value_name = "ID")]
    pub source_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct ArchiveExportArgs {
    #[command(flatten)]
    pub source: ArchiveSourceArgs,
    /// The archive file (x.tar; volumes become x.001.tar, x.002.tar, ...), an existing
    /// directory (names from the source and sequence number), or - for stdout.
    #[arg(long, value_name = "FILE|DIR|-")]
    pub out: String,
    /// Where the new state goes (default: next to the archive, <name>.state; required with
    /// --out -).
    #[arg(long, value_name = "FILE")]
    pub state_out: Option<PathBuf>,
    /// zstd-compress the archive (.tar.zst).
    #[arg(long)]
    pub compress: bool,
    /// Split into volumes of at most this many object bytes (tar headers and the manifest add
    /// about 1 KiB per object).
    #[arg(long, value_name = "SIZE")]
    pub volume_size: Option<String>,
    /// Objects read at once.
    #[arg(
        long,
        env = "S3FERRY_CONCURRENCY",
        default_value_t = 16,
        value_name = "N"
    )]
    pub concurrency: usize,
    /// Memory for objects read ahead.
    #[arg(long, default_value = "256MiB", value_name = "SIZE")]
    pub max_memory: String,
    /// Do not read object tags (saves one request per object).
    #[arg(long)]
    pub no_tags: bool,
}

#[derive(Debug, Args)]
pub struct ArchivePlanArgs {
    #[command(flatten)]
    pub source: ArchiveSourceArgs,
}

#[derive(Debug, Args)]
pub struct ArchiveVerifyArgs {
    /// Archive files (all volumes of an archive, or any one of them alone).
    #[arg(required = true, value_name = "ARCHIVE")]
    pub archives: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ArchiveImportArgs {
    /// Archive files (every volume), then the destination: a directory or s3://bucket/prefix.
    #[arg(required = true, num_args = 2.., value_name = "ARCHIVE... DEST")]
    pub paths: Vec<String>,
    /// Apply archives out of order, after a gap, or of another source.
    #[arg(long)]
    pub force: bool,
    /// Verify and print what would be done; change nothing.
    #[arg(long, alias = "dryrun")]
    pub dry_run: bool,
    /// Deletions allowed per archive: a count, or a percentage of the source's objects.
    #[arg(long, default_value = "50%", value_name = "N|N%")]
    pub max_delete: String,
    /// Objects written at once.
    #[arg(
        long,
        env = "S3FERRY_CONCURRENCY",
        default_value_t = 16,
        value_name = "N"
    )]
    pub concurrency: usize,
    /// Part size of multipart uploads (objects above it are written in parts).
    #[arg(long, default_value = "8MiB", value_name = "SIZE")]
    pub part_size: String,
    /// Memory for objects being written.
    #[arg(long, default_value = "256MiB", value_name = "SIZE")]
    pub max_memory: String,
    /// Where the state database lives (it journals open uploads; default ~/.local/state/s3ferry).
    #[arg(long, env = "S3FERRY_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

const BUNDLE_ABOUT: &str = "\
Pack buckets of many small objects into a few large tar shards, each with an index that finds
any object again with one ranged GET. Big objects are copied directly. Scale out by running any
number of workers that share one SQS queue.

    s3ferry bundle group --source s3://photos --out s3://work/shards/ --queue $QUEUE_URL
    s3ferry bundle worker --queue $QUEUE_URL --to s3://archive/photos/      # on each machine
    s3ferry bundle run s3://work/shards/ --to s3://archive/photos/          # or here, all shards
    s3ferry bundle get s3://archive/photos/shard-000001.index.csv 2024/img_0001.jpg -o img.jpg
    s3ferry bundle extract s3://archive/photos/shard-000001.tar ./restored/

`group` reads an S3 Inventory (--inventory manifest.json, CSV data files) or lists a bucket
(--source) and writes shard manifests (shard-NNNNNN.csv) of at most --max-objects objects and
--max-bytes bytes; objects above --big-object go to shards of their own that are copied
server-side. Memory stays flat however large the inventory.

`run` and `worker` pack a shard into <to>/shard-NNNNNN.tar: a PAX tar (any key length, user
metadata, tags, checksums in each member's header) uploaded as one multipart object, one part
in memory at a time. Next to it: shard-NNNNNN.index.csv (bucket, key, version id, size, last
modified, ETag, MD5, CRC64NVME, content type, metadata, tags, storage class, header and data
offsets, length, location), shard-NNNNNN.dead-letters.csv (objects that were missing, denied,
changed since they were listed, or kept failing, with the reason) and shard-NNNNNN.json, the
receipt, written last. Every packed object is read pinned to the listed ETag and checked against
its MD5. Big objects land in <to>/bigobjects/<key>. A shard whose receipt and tar are in place
is skipped; a rerun writes the same keys, never a second copy.

`worker` long-polls the queue, keeps the message invisible while it packs (heartbeat), deletes
it when the shard is done and releases it at once when the shard fails, so that the queue's
redrive policy moves a shard that keeps failing to its dead-letter queue. SIGINT/SIGTERM abort
the shard in hand and release its message; the next worker packs it from the start. Give the
bucket a lifecycle rule that aborts incomplete multipart uploads (a worker killed with -9 leaves
its upload for the next worker of that shard to abort).

Exit status: 0 done; 1 some objects went to dead letters or a shard failed; 2 bad input or a
fatal error (bad manifest, missing bucket or queue, no credentials).";

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Write shard manifests from an S3 Inventory or a listing (and enqueue them).
    Group(BundleGroupArgs),
    /// Pack one shard manifest (or every shard-*.csv under a folder ending in /).
    Run(BundleRunArgs),
    /// Pack the shards a queue hands out, until stopped.
    Worker(BundleWorkerArgs),
    /// One object back through a shard's index, with one ranged GET.
    Get(BundleGetArgs),
    /// Restore every member of a shard's tar into a directory or s3://bucket/prefix.
    Extract(BundleExtractArgs),
}

#[derive(Debug, Args)]
pub struct BundleGroupArgs {
    /// An S3 Inventory manifest.json (CSV data files): a file or s3://bucket/key.
    #[arg(long, value_name = "FILE|S3_URI", group = "input")]
    pub inventory: Option<String>,
    /// List this bucket (and prefix) live instead.
    #[arg(long, value_name = "S3_URI", group = "input")]
    pub source: Option<String>,
    /// Where the shard manifests go: s3://bucket/prefix/ or a local directory.
    #[arg(long, value_name = "S3_URI|DIR")]
    pub out: String,
    /// At most this many objects per shard.
    #[arg(long, default_value_t = 65_000, value_name = "N")]
    pub max_objects: u64,
    /// At most this many bytes of packed objects per shard.
    #[arg(long, default_value = "4GiB", value_name = "SIZE")]
    pub max_bytes: String,
    /// Objects larger than this are copied directly instead of packed.
    #[arg(long, default_value = "16MiB", value_name = "SIZE")]
    pub big_object: String,
    /// Send each shard to this SQS queue as soon as it is written.
    #[arg(long, env = "S3FERRY_QUEUE_URL", value_name = "URL")]
    pub queue: Option<String>,
    #[command(flatten)]
    pub queue_endpoint: QueueEndpointArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Only objects modified at or after DATE (2026-01-31, RFC 3339, or an age like 7d).
    #[arg(long, value_name = "DATE")]
    pub since: Option<String>,
}

#[derive(Debug, Args)]
pub struct QueueEndpointArgs {
    /// SQS endpoint (for emulators; default AWS, or AWS_ENDPOINT_URL_SQS).
    #[arg(long, env = "AWS_ENDPOINT_URL_SQS", value_name = "URL")]
    pub queue_endpoint_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct BundlePackArgs {
    /// Where the tars, indexes and big objects go: s3://bucket/prefix/ (or a local directory).
    #[arg(long, env = "S3FERRY_BUNDLE_TO", value_name = "S3_URI|DIR")]
    pub to: String,
    /// Objects fetched at once.
    #[arg(
        long,
        env = "S3FERRY_CONCURRENCY",
        default_value_t = 32,
        value_name = "N"
    )]
    pub concurrency: usize,
    /// Part size of the tar's multipart upload.
    #[arg(long, default_value = "16MiB", value_name = "SIZE")]
    pub part_size: String,
    /// Memory for objects being fetched (the tar's parts in flight come on top).
    #[arg(long, default_value = "256MiB", value_name = "SIZE")]
    pub max_memory: String,
    /// Do not read object tags (saves one request per object).
    #[arg(long)]
    pub no_tags: bool,
    /// Pack again even when the shard's receipt says it is done.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct BundleRunArgs {
    /// A shard manifest (s3://bucket/shards/shard-000001.csv or a file), or a folder ending in
    /// `/` whose shard-*.csv are packed one after another.
    pub shard: String,
    #[command(flatten)]
    pub pack: BundlePackArgs,
    /// Where the state database lives (default ~/.local/state/s3ferry): it records the tar
    /// uploads in flight, so a run killed outright has them aborted by the next run.
    #[arg(long, env = "S3FERRY_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BundleWorkerArgs {
    /// The SQS queue URL the shards come from.
    #[arg(long, env = "S3FERRY_QUEUE_URL", value_name = "URL")]
    pub queue: String,
    #[command(flatten)]
    pub queue_endpoint: QueueEndpointArgs,
    #[command(flatten)]
    pub pack: BundlePackArgs,
    /// Exit after handling this many messages (default: run until stopped).
    #[arg(long, env = "S3FERRY_MAX_MESSAGES", value_name = "N")]
    pub max_messages: Option<u64>,
    /// How long a shard in hand stays invisible to other workers; renewed every third of it
    /// while packing.
    #[arg(
        long,
        env = "S3FERRY_VISIBILITY_TIMEOUT",
        default_value = "5m",
        value_name = "DURATION"
    )]
    pub visibility_timeout: String,
    /// Exit once the queue has been empty this long (default: wait for more).
    #[arg(long, env = "S3FERRY_IDLE_EXIT", value_name = "DURATION")]
    pub idle_exit: Option<String>,
}

#[derive(Debug, Args)]
pub struct BundleGetArgs {
    /// A shard's index, tar or receipt (s3://... or a local file).
    pub at: String,
    /// The object's key.
    pub key: String,
    /// Write here (atomically) instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BundleExtractArgs {
    /// A shard's tar (s3://... or a local file).
    pub archive: String,
    /// A local directory or s3://bucket/prefix.
    pub dest: String,
    /// Objects written at once.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub concurrency: usize,
}

const BATCH_ABOUT: &str = "\
Copy the objects a manifest lists, or whole bucket pairs, server-side, as a job that lives in the
state database: it survives crashes (`resume` never redoes or double-reports an entry) and ends
with a completion report in the S3 Batch Operations format.

    s3ferry batch manifest s3://src-bucket/data --out manifest.csv
    s3ferry batch run --manifest manifest.csv --to s3://dst-bucket/copy/
    s3ferry batch run --pairs pairs.csv --detach        # prints the job id and returns
    s3ferry batch wait b-20261129-101500-3fa2c1
    s3ferry batch status|cancel|resume JOB; s3ferry batch list

Objects up to --multipart-threshold (default 5 GiB) are copied with one CopyObject, larger ones
with UploadPartCopy parts in parallel; metadata, tags and content headers are kept. When source
and destination have different endpoints or credentials (--source-endpoint-url,
--source-profile) the bytes stream through this machine instead, verified as in sync.

Exit status: 0 all entries succeeded; 1 some failed (each is a report row); 2 the job could not
run (bad manifest, missing bucket, access denied on a bucket): nothing was copied.";

#[derive(Debug, Subcommand)]
pub enum BatchCommand {
    /// Write a Batch Operations manifest CSV (bucket,key — keys URL-encoded) from listings.
    Manifest(BatchManifestArgs),
    /// Create a job and run it (attached), or start it in the background (--detach).
    Run(BatchRunArgs),
    /// Show a job's state.
    Status(BatchJobArgs),
    /// Wait for a job to end; exit status as for `run`.
    Wait(BatchWaitArgs),
    /// List the jobs in the state database.
    List(BatchStateArgs),
    /// Stop a job (a running one stops after the entries in flight).
    Cancel(BatchJobArgs),
    /// Continue an interrupted job: finished entries are neither redone nor reported twice.
    Resume(BatchResumeArgs),
    /// Let an s3-batch job created with --confirm run.
    Confirm(BatchJobArgs),
}

#[derive(Debug, Args)]
pub struct BatchStateArgs {
    /// Where the state database lives (default ~/.local/state/s3ferry).
    #[arg(long, env = "S3FERRY_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BatchJobArgs {
    pub job: String,
    #[command(flatten)]
    pub state: BatchStateArgs,
}

#[derive(Debug, Args)]
pub struct BatchWaitArgs {
    pub job: String,
    /// How often to look.
    #[arg(long, default_value = "2s", value_name = "DURATION")]
    pub poll: String,
    #[command(flatten)]
    pub state: BatchStateArgs,
}

#[derive(Debug, Args)]
pub struct BatchResumeArgs {
    pub job: String,
    /// Resume in the background.
    #[arg(long)]
    pub detach: bool,
    #[command(flatten)]
    pub state: BatchStateArgs,
}

#[derive(Debug, Args)]
pub struct BatchManifestArgs {
    /// s3://bucket[/prefix] to list (any number).
    #[arg(required = true, value_name = "SRC_URI")]
    pub sources: Vec<String>,
    /// Where to write the manifest: a file, `-` for stdout, or s3://bucket/key.
    #[arg(long, value_name = "FILE|S3_URI")]
    pub out: String,
    /// Only objects modified at or after this time (2024-05-01, RFC 3339, or 7d).
    #[arg(long, value_name = "DATE")]
    pub since: Option<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Every version of every object (rows bucket,key,versionId; delete markers left out),
    /// not only the current ones.
    #[arg(long)]
    pub versions: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ReportScope {
    All,
    Failed,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("input").required(true)))]
pub struct BatchRunArgs {
    /// A Batch Operations manifest CSV (bucket,key[,versionId]): a file or s3://bucket/key.
    #[arg(long, value_name = "FILE|S3_URI", group = "input")]
    pub manifest: Option<String>,
    /// An S3 Inventory manifest.json (CSV data files): a file or s3://bucket/key.
    #[arg(long, value_name = "FILE|S3_URI", group = "input")]
    pub inventory: Option<String>,
    /// Bucket pairs, one per line: source_bucket,destination_bucket[,prefix]; each source is
    /// listed live and copied whole.
    #[arg(long, value_name = "FILE", group = "input")]
    pub pairs: Option<PathBuf>,
    /// Destination of manifest and inventory entries: s3://bucket[/prefix] (the key is
    /// appended to the prefix).
    #[arg(long, value_name = "S3_URI")]
    pub to: Option<String>,
    /// Skip entries already identical at the destination (reported as succeeded).
    #[arg(long)]
    pub skip_existing: bool,
    /// Storage class of the copies (default: the source's).
    #[arg(long, value_name = "CLASS")]
    pub storage_class: Option<String>,
    /// Objects above this size are copied in parts (UploadPartCopy).
    #[arg(long, default_value = "5GiB", value_name = "SIZE")]
    pub multipart_threshold: String,
    /// Part size of multipart copies.
    #[arg(long, default_value = "64MiB", value_name = "SIZE")]
    pub part_size: String,
    /// Entries copied at once.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub concurrency: usize,
    /// Memory for parts in flight (copies streamed through this machine).
    #[arg(long, default_value = "1GiB", value_name = "SIZE")]
    pub max_memory: String,
    /// Local directory for the completion report (default: STATE_DIR/batch-reports).
    #[arg(long, value_name = "DIR")]
    pub report_dir: Option<PathBuf>,
    /// Also write the completion report under s3://bucket/prefix.
    #[arg(long, value_name = "S3_URI")]
    pub report: Option<String>,
    /// Report every entry, or only the failed ones.
    #[arg(long, value_enum, default_value = "all", value_name = "SCOPE")]
    pub report_scope: ReportScope,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Start the job in the background, print its id and exit.
    #[arg(long)]
    pub detach: bool,
    /// Who copies: s3ferry itself (local), or the S3 Batch Operations service (s3-batch: the
    /// manifest must be in S3 or is uploaded next to the report; --report and a role needed).
    #[arg(long, value_enum, default_value = "local", value_name = "ENGINE")]
    pub engine: EngineArg,
    /// s3-batch: the IAM role S3 Batch Operations assumes.
    #[arg(long, value_name = "ARN", conflicts_with = "create_role")]
    pub role_arn: Option<String>,
    /// s3-batch: create (or update) a least-privilege role of this name for the job.
    #[arg(long, value_name = "NAME")]
    pub create_role: Option<String>,
    /// s3-batch: the account that owns the job (default: from the credentials or AWS_ACCOUNT_ID).
    #[arg(long, env = "AWS_ACCOUNT_ID", value_name = "ID")]
    pub account_id: Option<String>,
    /// s3-batch: job priority (higher runs first).
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub priority: i32,
    /// s3-batch: create the job suspended until `s3ferry batch confirm JOB`.
    #[arg(long)]
    pub confirm: bool,
    /// COPY (default) the source's metadata, or REPLACE it with --metadata and --content-type.
    #[arg(long, value_name = "DIRECTIVE", value_parser = ["COPY", "REPLACE"])]
    pub metadata_directive: Option<String>,
    /// With --metadata-directive REPLACE: user metadata of the copies (repeatable).
    #[arg(long, value_name = "KEY=VALUE", requires = "metadata_directive")]
    pub metadata: Vec<String>,
    /// With --metadata-directive REPLACE: Content-Type of the copies.
    #[arg(long, value_name = "TYPE", requires = "metadata_directive")]
    pub content_type: Option<String>,
    /// Checksum algorithm of the copies: CRC64NVME (default), CRC32, CRC32C, SHA1, SHA256
    /// (objects copied in parts keep CRC64NVME with the local engine).
    #[arg(long, value_name = "ALGORITHM", value_parser = ["CRC64NVME", "CRC32", "CRC32C", "SHA1", "SHA256"], ignore_case = true)]
    pub checksum_algorithm: Option<String>,
    /// s3-batch: S3 Control endpoint (for emulators).
    #[arg(long, env = "AWS_ENDPOINT_URL_S3_CONTROL", value_name = "URL")]
    pub s3control_endpoint_url: Option<String>,
    #[command(flatten)]
    pub state: BatchStateArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum EngineArg {
    Local,
    S3Batch,
}

const BISYNC_ABOUT: &str = "\
Keep LOCAL_DIR and S3_URI (s3://bucket/prefix) in two-way sync: a round every --poll seconds
(0 = one round, then exit). The two may be given in either order.

Each round lists both sides once and compares them with the base — both sides as they were
after the last round, kept in the state database — so it knows which side changed:
  - new or changed on one side: copied to the other;
  - deleted on one side, unchanged on the other: deleted there too if deletes go that way
    (--up-delete: local deletions remove objects; --down-delete: object deletions remove
    files), else left alone. A deleted file is never copied back;
  - changed on one side, deleted on the other: the edit wins and is copied;
  - changed on both sides: identical content is just recorded; otherwise a conflict, settled
    by --conflict (keep-both: the remote version keeps the name, the local one is renamed
    NAME.conflict-<node>-<UTC time> and uploaded too).
Local change detection uses size, mtime (ns), inode and ctime, so an edit that keeps the size
and the second is seen; an idle round reads no file contents. The whole round is planned
before anything changes: more deletions on one side than --max-delete allows stop the round
with nothing changed. A failed or interrupted round leaves every file either as it was or
synced, and the next round converges; --max-failures rounds failing in a row end s3ferry
with status 2.

SEVERAL NODES
    With --lock, each round holds a lease object (default PREFIX/.s3ferry.lock) taken with a
    conditional create (If-None-Match) and renewed and released with If-Match, carrying the
    node id and a fencing counter. A lease not renewed for --lock-timeout may be taken over
    (conditionally: two nodes cannot both win). A node that cannot get the lease within
    --lock-wait exits with status 2. Servers without conditional writes are refused.

CDN
    --cf-distribution-id invalidates, after each round that changed objects, exactly the
    changed paths (batches of 1,000; collapsed to directory wildcards when there are more), or
    the fixed --cf-paths.

STOPPING
    SIGINT or SIGTERM: the transfers in flight finish (no upload is left open, a partial file
    never appears under its name), nothing new starts, the lease is released. One round
    (--poll 0) then exits with status 130, as every command stopped by a signal; a --poll loop
    says it stopped and exits with status 0. A second signal stops at once.

ENVIRONMENT
    Every option can also be set from S3FERRY_<OPTION> (S3FERRY_POLL, S3FERRY_LOCK,
    S3FERRY_LOCK_TIMEOUT, S3FERRY_UP_DELETE, S3FERRY_EXCLUDE=a,b, ...), for container
    entrypoints. Boolean variables take true/false, 1/0, yes/no or on/off.

EXAMPLES
    s3ferry bisync --poll 30 --up-delete --down-delete /data s3://bucket/app/data
    s3ferry bisync --init down --poll 0 /data s3://bucket/app/data
    S3FERRY_LOCK=true S3FERRY_POLL=10 s3ferry bisync /srv/www s3://site/www";

/// Which side wins a conflict.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ConflictArg {
    Newer,
    Local,
    Remote,
    KeepBoth,
}

/// Make one side authoritative first.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum InitArg {
    Up,
    Down,
    None,
}

fn parse_rps(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of requests per second"))?;
    if !(0.1..=1_000_000.0).contains(&v) {
        return Err(format!("{v} is not between 0.1 and 1000000"));
    }
    Ok(v)
}

fn parse_poll(s: &str) -> Result<u64, String> {
    let v: u64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number of seconds"))?;
    if v > 3600 {
        return Err(format!("{v} is more than 3600 seconds"));
    }
    Ok(v)
}

fn parse_secs(s: &str) -> Result<u64, String> {
    let v: u64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number of seconds"))?;
    if v == 0 || v > 86_400 {
        return Err(format!("{v} is not between 1 and 86400 seconds"));
    }
    Ok(v)
}

#[derive(Debug, Args)]
pub struct BisyncArgs {
    /// The local directory and the S3 prefix (s3://bucket/prefix), in either order.
    #[arg(value_name = "LOCAL_DIR|S3_URI", num_args = 2, required = true)]
    pub sides: Vec<String>,
    /// Seconds between rounds, 0 to 3600; 0 runs one round and exits.
    #[arg(long, env = "S3FERRY_POLL", default_value = "30", value_parser = parse_poll, value_name = "SECS")]
    pub poll: u64,
    /// With --metrics-addr: /readyz answers 200 while a round succeeded within the last N polls
    /// (N x --poll seconds, at least 60 s), or a round runs that started while that held; 503
    /// otherwise.
    #[arg(long, default_value_t = 3, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub ready_polls: u32,
    /// Make one side authoritative in the first round (a one-way sync that deletes, under
    /// --max-delete), then go on two-way.
    #[arg(
        long,
        env = "S3FERRY_INIT",
        value_enum,
        default_value = "none",
        value_name = "SIDE"
    )]
    pub init: InitArg,
    /// Only push local changes (the loop, lock and invalidation stay).
    #[arg(long, env = "S3FERRY_ONLY_UP", conflicts_with = "only_down", value_parser = clap::builder::BoolishValueParser::new())]
    pub only_up: bool,
    /// Only pull remote changes.
    #[arg(long, env = "S3FERRY_ONLY_DOWN", value_parser = clap::builder::BoolishValueParser::new())]
    pub only_down: bool,
    /// Local deletions delete the objects.
    #[arg(long, env = "S3FERRY_UP_DELETE", value_parser = clap::builder::BoolishValueParser::new())]
    pub up_delete: bool,
    /// Object deletions delete the local files.
    #[arg(long, env = "S3FERRY_DOWN_DELETE", value_parser = clap::builder::BoolishValueParser::new())]
    pub down_delete: bool,
    /// Leave matching paths out entirely, both ways and from change detection (repeatable;
    /// globs as in sync).
    #[arg(
        long,
        env = "S3FERRY_EXCLUDE",
        value_delimiter = ',',
        value_name = "GLOB"
    )]
    pub exclude: Vec<String>,
    /// Do not push local changes of matching paths.
    #[arg(
        long,
        env = "S3FERRY_UP_EXCLUDE",
        value_delimiter = ',',
        value_name = "GLOB"
    )]
    pub up_exclude: Vec<String>,
    /// Do not pull remote changes of matching paths.
    #[arg(
        long,
        env = "S3FERRY_DOWN_EXCLUDE",
        value_delimiter = ',',
        value_name = "GLOB"
    )]
    pub down_exclude: Vec<String>,
    /// How a file changed differently on both sides is settled.
    #[arg(
        long,
        env = "S3FERRY_CONFLICT",
        value_enum,
        default_value = "keep-both",
        value_name = "POLICY"
    )]
    pub conflict: ConflictArg,
    /// Most deletions per side per round: a count, or a percentage of that side's entries.
    #[arg(
        long,
        env = "S3FERRY_MAX_DELETE",
        default_value = "50%",
        value_name = "N|N%"
    )]
    pub max_delete: String,
    /// Failed rounds in a row before exiting with status 2 (0 = keep trying).
    #[arg(
        long,
        env = "S3FERRY_MAX_FAILURES",
        default_value_t = 3,
        value_name = "N"
    )]
    pub max_failures: u32,
    /// Hold a lease in S3 for each round (several nodes sharing one prefix).
    #[arg(long, env = "S3FERRY_LOCK", value_parser = clap::builder::BoolishValueParser::new())]
    pub lock: bool,
    /// The lease object's key (default: PREFIX/.s3ferry.lock).
    #[arg(long, env = "S3FERRY_LOCK_KEY", value_name = "KEY", requires = "lock")]
    pub lock_key: Option<String>,
    /// A lease not renewed for this many seconds may be taken over.
    #[arg(long, env = "S3FERRY_LOCK_TIMEOUT", default_value = "60", value_parser = parse_secs, value_name = "SECS")]
    pub lock_timeout: u64,
    /// Give up (status 2) when the lease cannot be had within this many seconds.
    #[arg(long, env = "S3FERRY_LOCK_WAIT", default_value = "180", value_parser = parse_secs, value_name = "SECS")]
    pub lock_wait: u64,
    /// This node's name in conflict copies and the lease (default: host name and process id).
    #[arg(long, env = "S3FERRY_NODE_ID", value_name = "NAME")]
    pub node_id: Option<String>,
    /// CloudFront distribution whose cached copies of changed paths are invalidated.
    #[arg(long, env = "S3FERRY_CF_DISTRIBUTION_ID", value_name = "ID")]
    pub cf_distribution_id: Option<String>,
    /// Invalidate these paths instead of the changed ones (e.g. '/*').
    #[arg(
        long,
        env = "S3FERRY_CF_PATHS",
        value_delimiter = ',',
        value_name = "PATH",
        requires = "cf_distribution_id"
    )]
    pub cf_paths: Vec<String>,
    /// CloudFront endpoint (for emulators).
    #[arg(long, env = "AWS_ENDPOINT_URL_CLOUDFRONT", value_name = "URL")]
    pub cf_endpoint_url: Option<String>,
    /// Transfers at once.
    #[arg(
        long,
        env = "S3FERRY_CONCURRENCY",
        default_value_t = 16,
        value_name = "N"
    )]
    pub concurrency: usize,
    /// Memory for parts in flight (streamed transfers; the same budget as sync's).
    #[arg(
        long,
        env = "S3FERRY_MAX_MEMORY",
        default_value = "1GiB",
        value_name = "SIZE"
    )]
    pub max_memory: String,
    /// Show what a round would do; change nothing.
    #[arg(short = 'n', long, alias = "dryrun", env = "S3FERRY_DRY_RUN", value_parser = clap::builder::BoolishValueParser::new())]
    pub dry_run: bool,
    /// Where the state database lives (default ~/.local/state/s3ferry).
    #[arg(long, env = "S3FERRY_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

const PIPE_ABOUT: &str = "\
Stream data into and out of S3 in parallel parts, verified end to end.

    pg_dump mydb | zstd | s3ferry pipe up s3://backups/mydb.sql.zst
    s3ferry pipe down s3://backups/mydb.sql.zst | zstd -d | psql mydb

Default mode writes and reads one ordinary S3 object. With `pipe up --segmented` the stream is
written as numbered segments plus a manifest, so `pipe down --follow` (on any number of machines)
can stream it while it is still being written; `pipe join` turns a finished segmented upload
into one ordinary object without downloading it.

Data only ever goes to stdout (pipe down); messages go to stderr (-v or --json for a summary).";

#[derive(Debug, Subcommand)]
pub enum PipeCommand {
    /// Read stdin to its end and store it as one S3 object (or a segmented upload).
    #[command(long_about = PIPE_UP_ABOUT)]
    Up(PipeUpArgs),
    /// Write an S3 object (or a segmented upload, also while it is written) to stdout.
    #[command(long_about = PIPE_DOWN_ABOUT)]
    Down(PipeDownArgs),
    /// Make one ordinary object from a finished segmented upload, server-side.
    #[command(long_about = PIPE_JOIN_ABOUT)]
    Join(PipeJoinArgs),
}

const PIPE_UP_ABOUT: &str = "\
Read stdin to its end and store it as one S3 object at S3_URI.

The stream is cut into parts that are uploaded in parallel (--part-concurrency) as a multipart
upload. Parts start at --part-size and double every 1,000 parts, so a stream of unknown length
can reach S3's 5 TiB object limit within its 10,000 parts. Each part carries a CRC64NVME checksum
that S3 verifies, and the object gets the full-object CRC64NVME of the whole stream. A part that
fails is sent again. A stream that fits in one part is stored with a single PUT.

MEMORY
    About (part-concurrency + 1) x the current part size: 9 x 8 MiB = 72 MiB at the defaults,
    growing as parts grow (16 MiB parts after 8 GiB, 32 MiB after 24 GiB, ...). --max-memory
    caps it: fewer parts are in flight once parts are large. With --staging-dir, parts are
    written to files in DIR instead (that much disk, about 1 MiB of memory per part in flight).

FAILURES
    If the upload fails, the multipart upload is aborted: no object appears under S3_URI and no
    upload is left open; s3ferry exits with status 2. On SIGINT or SIGTERM the upload is aborted
    the same way and s3ferry exits with status 130 (as every command does). If
    s3ferry is killed outright (SIGKILL, power loss) its open upload is recorded in the state
    directory, and the next `pipe up` or `pipe join` into the same bucket aborts it.

SEGMENTED UPLOADS (--segmented)
    The stream is stored as S3_URI/000000000000, S3_URI/000000000001, ... and
    S3_URI/manifest.json, which lists the finished segments in order with their sizes and
    CRC64NVME checksums and is rewritten as each one is published (and at least every
    --heartbeat while none is). A segment is published when it holds --segment-size bytes, or
    when --segment-interval has passed since its first byte was read, whichever comes first: a
    slow writer (a log) reaches its followers within the interval, a fast one fills its segments
    and is cut by size. At the end the manifest is marked complete with the total length and the
    whole stream's CRC64NVME. The manifest is created only if it does not exist and then
    rewritten only if unchanged since this writer wrote it, so a second writer on the same URI
    fails at once. On failure the manifest is marked failed; segments already written stay.

    Cost: each published segment is one PUT and one manifest PUT (a slow stream at the default
    5 s interval: at most 24 PUTs a minute, about 35,000 a day); each follower makes one GET of
    the manifest per --poll-interval and one GET per segment. The manifest stays short however
    long the stream runs: it lists at most 512 segments (about 50 KB), and the oldest 256 at a
    time move into an index object (S3_URI/index-<first segment>.json) that readers fetch only
    to read that far back.

APPEND (--append)
    Continue the segmented upload at S3_URI instead of refusing to touch it (with none there, it
    starts one): this run's input becomes the next segments of the same stream, and followers
    that are reading it carry on. Its writer must be gone: the stream is complete, failed,
    stopped by a signal, or its manifest has not changed for --writer-timeout (default: three
    times the heartbeat the old writer states in the manifest, 90 s for the default 30 s). If the
    manifest was written more recently, s3ferry watches it for the rest of that time and refuses
    (status 2) as soon as it changes: a live writer is never joined. The takeover is a
    conditional write of the manifest, so of two runs appending at once exactly one goes on and
    the other is refused; a writer that was only thought dead fails at its next manifest write.
    Segments a killed writer wrote but never listed are deleted first.

STAGING
    With --staging-dir, parts are staged in DIR/s3ferry-pipe-<run id>/ and removed as they are
    sent. A staging folder left by a run that was killed (its run is known dead in the state
    directory) is removed by the next `pipe up` with the same --staging-dir.

EXAMPLES
    tar c /data | s3ferry pipe up s3://bucket/data.tar
    s3ferry pipe up --part-size 64MiB --part-concurrency 16 s3://bucket/big.bin < big.bin
    tail -F app.log | s3ferry pipe up --segmented --segment-interval 2s s3://bucket/logs/app
    tail -F app.log | s3ferry pipe up --segmented --append s3://bucket/logs/app   # after a restart";

const PIPE_DOWN_ABOUT: &str = "\
Write the object at S3_URI to stdout.

The object is read in ranged GETs of --part-size, --part-concurrency at a time, each pinned to
the object's ETag (If-Match): an object overwritten while it is read is an error (exit status 2,
the message says it changed), never a mix of two versions. Parts are written strictly in order
through a reorder window of --part-concurrency parts: memory is about (part-concurrency + 1) x
part-size, 72 MiB at the defaults. At the end the data's full-object CRC64NVME is checked against the object's,
when the object has one. When the reader of stdout goes away (`| head -c 10`), s3ferry stops at
once, quietly, with status 0.

If S3_URI is a segmented upload (S3_URI/manifest.json) that is complete, its segments are
written in order, each checked against the manifest, and the whole stream too. With --follow,
the upload is read while it is written: new segments are written as the manifest lists them
(it is polled every --poll-interval), and s3ferry ends exactly when the manifest says the
stream is complete. If the manifest does not change for --writer-timeout (the writer died or
is stuck), or the writer marks it failed, s3ferry stops with status 2 and says so. A stream
continued by `pipe up --append` is followed across the change of writer. Any number of
followers can read one upload at once.

--from-start (the default) writes the stream from its first byte; --from-end starts at the
newest segment listed when s3ferry starts (like `tail -f`), and each segment is still checked
(the whole stream's checksum cannot be, then). In the steady state a follower is at most the
writer's --segment-interval + --poll-interval + one GET behind it.

EXAMPLES
    s3ferry pipe down s3://bucket/data.tar | tar x
    s3ferry pipe down --follow s3://bucket/logs/app | grep ERROR
    s3ferry pipe down --follow --from-end --poll-interval 1s s3://bucket/logs/app";

const PIPE_JOIN_ABOUT: &str = "\
Make one ordinary object at DEST_URI from the finished segmented upload at S3_URI, copied
server-side where it can be: when every segment (but the last) has one size of at least 5 MiB,
each segment is one UploadPartCopy pinned to its ETag and no data passes through this machine.
Segments cut by time (small, of any size) are joined in parts of at least 5 MiB: a part that
lies inside one segment is still copied server-side, a part that spans segments (a run of small
ones, the edges of large ones) is read through in ranged GETs pinned to each segment's ETag
(bounded memory, --part-concurrency parts at a time), each whole segment read checked against
its CRC64NVME. Both URIs must be on the same S3 endpoint. The result is checked against the
manifest (length and CRC64NVME); the segments are left in place.

EXAMPLE
    s3ferry pipe join s3://bucket/logs/app s3://bucket/archive/app.log";

/// Settings shared by the pipe commands.
#[derive(Debug, Args)]
pub struct PipeCommon {
    /// Parts in flight (uploads) or ranged GETs in flight (downloads).
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub part_concurrency: usize,
    /// Part size: the first part's (uploads; parts grow with the stream) or each ranged GET's
    /// (downloads). At least 5 MiB for uploads.
    #[arg(long, default_value = "8MiB", value_name = "SIZE")]
    pub part_size: String,
    /// Most memory held by parts in flight.
    #[arg(long, default_value = "1GiB", value_name = "SIZE")]
    pub max_memory: String,
    /// Directory of the state database (open multipart uploads of running pipes).
    #[arg(long, env = "S3FERRY_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Keep no state: an upload of a run killed with SIGKILL is not cleaned up by later runs.
    #[arg(long)]
    pub no_state: bool,
}

#[derive(Debug, Args)]
pub struct PipeUpArgs {
    /// s3://bucket/key of the object (or of the segmented upload) to write.
    pub uri: String,
    #[command(flatten)]
    pub common: PipeCommon,
    #[command(flatten)]
    pub sse_c: SseCKeyArgs,
    /// Stage parts in files in DIR instead of memory.
    #[arg(long, value_name = "DIR")]
    pub staging_dir: Option<PathBuf>,
    /// Content-Type of the object (or of each segment).
    #[arg(long, value_name = "TYPE")]
    pub content_type: Option<String>,
    /// User metadata KEY=VALUE (repeat for more).
    #[arg(long, value_name = "KEY=VALUE")]
    pub metadata: Vec<String>,
    /// Storage class (STANDARD, STANDARD_IA, INTELLIGENT_TIERING, GLACIER_IR, ...).
    #[arg(long, value_name = "CLASS")]
    pub storage_class: Option<String>,
    /// Server-side encryption: AES256 or aws:kms.
    #[arg(long, value_name = "ALGORITHM", value_parser = ["AES256", "aws:kms", "aws:kms:dsse"])]
    pub sse: Option<String>,
    /// KMS key for --sse aws:kms (default: the account's S3 key).
    #[arg(long, value_name = "KEY_ID", requires = "sse")]
    pub sse_kms_key_id: Option<String>,
    /// Write numbered segments plus a manifest that followers can read while the upload runs.
    #[arg(long)]
    pub segmented: bool,
    /// Largest segment (4 KiB to 5 GiB): a segment is published when it is this full.
    #[arg(
        long,
        default_value = "100MiB",
        value_name = "SIZE",
        requires = "segmented"
    )]
    pub segment_size: String,
    /// Publish a segment at most this long after its first byte was read, full or not (0:
    /// only when full). Bounds how far followers lag a slow writer.
    #[arg(
        long,
        default_value = "5s",
        value_name = "DURATION",
        requires = "segmented"
    )]
    pub segment_interval: String,
    /// Rewrite the manifest at least this often while no segment completes (lets followers
    /// tell a slow writer from a dead one; keep it well below their --writer-timeout).
    #[arg(
        long,
        default_value = "30s",
        value_name = "DURATION",
        requires = "segmented"
    )]
    pub heartbeat: String,
    /// Continue the segmented upload at S3_URI once its writer is gone (see APPEND).
    #[arg(long, requires = "segmented")]
    pub append: bool,
    /// With --append: the old writer is gone once the manifest has not changed for this long
    /// (default: three times its heartbeat).
    #[arg(long, value_name = "DURATION", requires = "append")]
    pub writer_timeout: Option<String>,
}

#[derive(Debug, Args)]
pub struct PipeDownArgs {
    /// s3://bucket/key of the object (or of the segmented upload) to read.
    pub uri: String,
    #[command(flatten)]
    pub common: PipeCommon,
    #[command(flatten)]
    pub sse_c: SseCKeyArgs,
    /// Read a segmented upload while it is written, until its manifest says complete.
    #[arg(long)]
    pub follow: bool,
    /// Start at the stream's first byte (the default).
    #[arg(long, overrides_with = "from_end")]
    pub from_start: bool,
    /// Start at the newest segment listed (like `tail -f`).
    #[arg(long, overrides_with = "from_start")]
    pub from_end: bool,
    /// How often to look for new segments.
    #[arg(long, default_value = "2s", value_name = "DURATION")]
    pub poll_interval: String,
    /// Give up when the manifest has not changed for this long (a dead writer).
    #[arg(long, default_value = "5m", value_name = "DURATION")]
    pub writer_timeout: String,
}

#[derive(Debug, Args)]
pub struct PipeJoinArgs {
    /// s3://bucket/key of the finished segmented upload.
    pub uri: String,
    /// s3://bucket/key of the object to create.
    pub dest_uri: String,
    #[command(flatten)]
    pub common: PipeCommon,
    /// Content-Type of the new object.
    #[arg(long, value_name = "TYPE")]
    pub content_type: Option<String>,
    /// Storage class of the new object.
    #[arg(long, value_name = "CLASS")]
    pub storage_class: Option<String>,
}

/// Parse durations like `2s`, `500ms`, `5m`, `1h`, `30` (seconds).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let i = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(i);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?}: use e.g. 500ms, 2s, 5m"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        u => return Err(format!("bad duration {s:?}: unknown unit {u:?}")),
    };
    std::time::Duration::try_from_secs_f64(secs).map_err(|e| format!("bad duration {s:?}: {e}"))
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

Source and destination must not overlap (the same directory or prefix, or one inside the other),
unless filters exclude the inner one: `s3ferry sync dir dir/backup --exclude 'backup/*'`. Symlinks
(unless --follow-symlinks) and special files (FIFOs, sockets, devices) in a local source are
skipped, never opened, and listed as skipped. A file or directory that cannot be read fails alone
(exit 1). A corrupt state database is moved aside (state.db.corrupt-<time>) and rebuilt. On a local
destination that folds case (macOS, vfat), a key differing only by case from an existing name
fails alone instead of overwriting it.

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
    /// Source: a local directory or s3://bucket[/prefix]. Anything else that starts with a URI
    /// scheme (s3:/b, s3a://b, https:, gs:) is refused; write ./s3:x for such a local path.
    pub src: String,
    /// Destination: a local directory or s3://bucket[/prefix] (not overlapping the source).
    pub dst: String,
    /// Delete destination objects that are not in the source (subject to --max-delete).
    #[arg(long)]
    pub delete: bool,
    /// Most deletions allowed: a count (100) or a percentage of the destination (25%).
    #[arg(long, value_name = "N|N%")]
    pub max_delete: Option<String>,
    /// Show what would be done; change nothing.
    #[arg(short = 'n', long, alias = "dryrun")]
    pub dry_run: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
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
    /// Objects transferred at once (1 to 4096). Default 64, lowered so that 4 file descriptors
    /// per transfer stay within half the open-files limit (`ulimit -n`): 8 at a limit of 64.
    /// A local file open that still hits the limit (EMFILE) is retried with backoff and fewer
    /// at once.
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,
    /// Parts in flight per big object (1 to 4096).
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub part_concurrency: usize,
    /// Minimum multipart part size, 5 MiB to 5 GiB (the rule is max(SIZE, size/10000));
    /// objects up to this size go up in one PUT.
    #[arg(long, default_value = "8MiB", value_name = "SIZE")]
    pub part_size: String,
    /// Memory budget for data in flight (at least one part).
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
    /// Forget the state of sync pairs not synced for this long, and cached hashes older than
    /// that (they are recomputed when needed); 0 keeps everything.
    #[arg(
        long,
        env = "S3FERRY_STATE_MAX_AGE",
        default_value = "90d",
        value_name = "DURATION"
    )]
    pub state_max_age: String,
    /// fsync each downloaded file (and its directory) before it is renamed into place, so it
    /// survives a power loss too. Without it a crash of s3ferry still never leaves a partial file
    /// under the final name (renames are atomic), as with other sync tools; it costs about 1.7 s
    /// per GiB here.
    #[arg(long)]
    pub fsync: bool,
    /// Read a local source through its symlinks: a link to a file is synced as that file, a
    /// link to a directory as that directory's tree (links outside the source too). A link back
    /// to one of its own parent directories is a loop: reported as skipped, not entered; so is a
    /// dangling link. Off by default (unlike aws-cli): links are skipped and reported. A local
    /// destination is never written through a symlink either way.
    #[arg(long, overrides_with = "no_follow_symlinks")]
    pub follow_symlinks: bool,
    /// Skip symlinks in a local source and report them (the default; for aws-cli scripts).
    #[arg(long, overrides_with = "follow_symlinks")]
    pub no_follow_symlinks: bool,
    #[command(flatten)]
    pub write: WriteArgs,
    #[command(flatten)]
    pub sse_c: SseCArgs,
}

/// Customer-provided keys (SSE-C), as `aws s3 cp/sync` takes them.
#[derive(Debug, Args, Default)]
#[command(next_help_heading = "Customer-provided keys (SSE-C)")]
pub struct SseCArgs {
    #[command(flatten)]
    pub key: SseCKeyArgs,
    /// S3 to S3: the source objects are encrypted with a key of yours (AES256).
    #[arg(long, value_name = "ALGORITHM", value_parser = ["AES256"], num_args = 0..=1,
          default_missing_value = "AES256", requires = "sse_c_copy_source_key")]
    pub sse_c_copy_source: Option<String>,
    /// S3 to S3: the source objects' SSE-C key, in the forms of --sse-c-key.
    #[arg(
        long,
        value_name = "KEY",
        env = "S3FERRY_SSE_C_COPY_SOURCE_KEY",
        hide_env_values = true
    )]
    pub sse_c_copy_source_key: Option<String>,
}

/// The SSE-C key of the objects a command reads and writes.
#[derive(Debug, Args, Default)]
#[command(next_help_heading = "Customer-provided keys (SSE-C)")]
pub struct SseCKeyArgs {
    /// Objects on S3 are encrypted with a key of yours (AES256): written with it, read with it.
    /// Implied by --sse-c-key; not with --sse. S3 to S3 (sync), this is the destination's key
    /// (--sse-c-copy-source is the source's).
    #[arg(long, value_name = "ALGORITHM", value_parser = ["AES256"], num_args = 0..=1,
          default_missing_value = "AES256", requires = "sse_c_key")]
    pub sse_c: Option<String>,
    /// The SSE-C key: its 32 bytes as text, fileb://FILE holding them, or their base64. Safer
    /// in the environment than on the command line, where other users can read it.
    #[arg(
        long,
        value_name = "KEY",
        env = "S3FERRY_SSE_C_KEY",
        hide_env_values = true
    )]
    pub sse_c_key: Option<String>,
}

/// Parse sizes like `8MiB`, `64M`, `1GB`, `4096`.
/// How written objects are stored, as `aws s3 cp/sync` takes it.
#[derive(Debug, Args, Default)]
#[command(next_help_heading = "Objects written")]
pub struct WriteArgs {
    /// Canned ACL: private, public-read, public-read-write, authenticated-read,
    /// bucket-owner-read, bucket-owner-full-control.
    #[arg(long, value_name = "ACL", value_parser = ["private", "public-read", "public-read-write", "authenticated-read", "aws-exec-read", "bucket-owner-read", "bucket-owner-full-control"], conflicts_with = "grants")]
    pub acl: Option<String>,
    /// Explicit ACL grants, as aws-cli takes them: PERMISSION=GRANTEE_TYPE=GRANTEE, with
    /// PERMISSION read, readacl, writeacl or full and GRANTEE_TYPE id, uri or emailaddress
    /// (e.g. read=uri=http://acs.amazonaws.com/groups/global/AllUsers full=id=CANONICAL_ID).
    #[arg(long, value_name = "GRANT", num_args = 1..)]
    pub grants: Vec<String>,
    /// Where a website bucket redirects requests for the written objects
    /// (x-amz-website-redirect-location: /other/key or https://…).
    #[arg(long, value_name = "LOCATION")]
    pub website_redirect: Option<String>,
    /// The checksum S3 stores with written objects. s3ferry sends and checks CRC64NVME (S3's
    /// full-object default) on every upload; CRC64NVME is accepted here for aws-cli scripts.
    /// Server-side copies in one CopyObject (S3 to S3, up to --copy-threshold) take any of
    /// CRC32, CRC32C, SHA1, SHA256, CRC64NVME; larger and streamed copies carry CRC64NVME.
    #[arg(long, value_name = "ALGORITHM", ignore_case = true, value_parser = ["CRC64NVME", "CRC32", "CRC32C", "SHA1", "SHA256"])]
    pub checksum_algorithm: Option<String>,
    /// Server-side encryption: AES256, aws:kms or aws:kms:dsse.
    #[arg(long, value_name = "ALGORITHM", value_parser = ["AES256", "aws:kms", "aws:kms:dsse"])]
    pub sse: Option<String>,
    /// KMS key for --sse aws:kms.
    #[arg(long, value_name = "KEY_ID", requires = "sse")]
    pub sse_kms_key_id: Option<String>,
    /// Cache-Control of written objects.
    #[arg(long, value_name = "VALUE")]
    pub cache_control: Option<String>,
    /// Content-Type of written objects (instead of guessing it from the name, or the source's).
    #[arg(long, value_name = "TYPE")]
    pub content_type: Option<String>,
    #[arg(long, value_name = "VALUE")]
    pub content_disposition: Option<String>,
    #[arg(long, value_name = "VALUE")]
    pub content_encoding: Option<String>,
    #[arg(long, value_name = "VALUE")]
    pub content_language: Option<String>,
    /// Expires of written objects: RFC 3339 (2027-01-01T00:00:00Z) or a date (2027-01-01).
    #[arg(long, value_name = "TIME")]
    pub expires: Option<String>,
    /// User metadata of written objects (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub metadata: Vec<String>,
    /// Upload without a guessed Content-Type.
    #[arg(long)]
    pub no_guess_mime_type: bool,
    /// S3 to S3 server-side copies: COPY the source's metadata and headers (default), or REPLACE
    /// them with the options above.
    #[arg(long, value_name = "DIRECTIVE", value_parser = ["COPY", "REPLACE"])]
    pub metadata_directive: Option<String>,
}

/// Filter rules: (include?, glob), the last matching one wins.
pub type Rules = Vec<(bool, String)>;

/// `--include`/`--exclude` as filter rules in the order typed (the last matching rule wins, as
/// in aws-cli and every command of s3ferry: [`crate::context::ordered_rules`]) and `--since` as
/// a time.
/// `--include`/`--exclude`: the same options, words and rule in every command that filters keys.
#[derive(Debug, Args, Clone, Default)]
pub struct FilterArgs {
    /// Include keys matching GLOB (relative to the prefix; `*` matches across `/`). --include
    /// and --exclude apply in the order given and the last rule that matches a key decides, as
    /// in aws-cli; a key no rule matches is included. Repeatable.
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Exclude keys matching GLOB (see --include for the order). Excluded keys are neither
    /// copied nor deleted. Repeatable.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
}

impl FilterArgs {
    /// The rules in the order typed, and `--since` as a time.
    pub fn rules_and_since(
        &self,
        since: Option<&str>,
    ) -> Result<(Rules, Option<std::time::SystemTime>), String> {
        rules_and_since(&self.include, &self.exclude, since)
    }
}

pub fn rules_and_since(
    include: &[String],
    exclude: &[String],
    since: Option<&str>,
) -> Result<(Rules, Option<std::time::SystemTime>), String> {
    let rules: Rules = crate::context::ordered_rules(include, exclude);
    let since = since
        .map(|s| s3ferry_engine::filter::parse_since(s, std::time::SystemTime::now()))
        .transpose()
        .map_err(|e| format!("--since: {e}"))?;
    Ok((rules, since))
}

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
    fn durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("5 fortnights").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("8 parsecs").is_err());
    }
}
