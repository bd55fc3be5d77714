//! Log lines on stderr, as text or (`--log-format json`) as one JSON object per line: the
//! tracing logs, the command's own messages ([`say!`]: warnings, round lines, progress lines,
//! per-object errors) and the fatal error. Every JSON line carries `timestamp`, `level`,
//! `message`, the `job` (the command), the `run_id` of this process, and the event's fields
//! (`key` where there is one).
#![allow(clippy::print_stderr)]

use std::sync::OnceLock;

use crate::cli::LogFormat;

static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// The id of this run (one process), in every JSON log line.
pub fn run_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..16].to_string())
}

pub fn json() -> bool {
    FORMAT.get() == Some(&LogFormat::Json)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Error,
    Warn,
    Info,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
        }
    }
}

/// A message of the command's own on stderr: `text` as is, or a JSON line with `fields`.
pub fn say_with(level: Level, text: &str, fields: serde_json::Value) {
    if json() {
        let msg = text.strip_prefix("s3ferry: ").unwrap_or(text);
        let msg = msg
            .strip_prefix("error: ")
            .or_else(|| msg.strip_prefix("warning: "))
            .unwrap_or(msg);
        eprintln!("{}", line(level.as_str(), msg, fields));
    } else {
        eprintln!("{text}");
    }
}

/// A JSON log line.
fn line(level: &str, msg: &str, fields: serde_json::Value) -> serde_json::Value {
    let mut v = serde_json::json!({
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "level": level,
        "message": msg,
        "job": crate::context::command(),
        "run_id": run_id(),
    });
    if let (Some(o), serde_json::Value::Object(f)) = (v.as_object_mut(), fields) {
        for (k, val) in f {
            o.entry(k).or_insert(val);
        }
    }
    v
}

/// `say!(Warn, "s3ferry: warning: {x}")`: one line of the command's own on stderr.
macro_rules! say {
    ($lvl:ident, $($t:tt)*) => {
        $crate::logs::say_with($crate::logs::Level::$lvl, &format!($($t)*), serde_json::Value::Null)
    };
}
pub(crate) use say;

/// Install the tracing subscriber: `-v`/`-q`/`--log-level` (or `S3FERRY_LOG`) pick the level,
/// `--log-format` the shape.
pub fn init(verbose: u8, quiet: bool, log_level: Option<&str>, format: LogFormat) {
    let _ = FORMAT.set(format);
    let level = match (log_level, quiet, verbose) {
        (Some(l), _, _) => l,
        (None, true, _) => "error",
        (None, _, 0) => "warn",
        (None, _, 1) => "info",
        _ => "debug",
    };
    // aws_config warns for every credential provider that fails; when none works we say so in
    // our one error line, so its warnings only show with -v.
    let sdk = if verbose > 0 && !quiet {
        "warn"
    } else {
        "error"
    };
    // The SDK warns that it cannot validate the part-level checksum of a multipart object
    // (every aws-cli upload over 8 MB): s3ferry checks every byte itself (whole-object
    // CRC64NVME or the ETag's MD5s), so that warning is noise on stderr.
    let filter = tracing_subscriber::EnvFilter::try_from_env("S3FERRY_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{level},aws_smithy_runtime=warn,aws_config={sdk},hyper=warn,\
             aws_sdk_s3::http_response_checksum=error"
        ))
    });
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => b.event_format(JsonLines).try_init(),
        LogFormat::Text => b
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
            .try_init(),
    };
}

/// Tracing events as JSON lines (see the module docs).
struct JsonLines;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JsonLines
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut w: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut f = Fields::default();
        event.record(&mut f);
        let level = event.metadata().level().as_str().to_ascii_lowercase();
        let msg = f.message.take().unwrap_or_default();
        f.map
            .insert("target".into(), event.metadata().target().into());
        writeln!(
            w,
            "{}",
            line(&level, &msg, serde_json::Value::Object(f.map))
        )
    }
}

#[derive(Default)]
struct Fields {
    message: Option<String>,
    map: serde_json::Map<String, serde_json::Value>,
}

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let v = format!("{value:?}");
        if field.name() == "message" {
            self.message = Some(v);
        } else {
            self.map.insert(field.name().into(), v.into());
        }
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(value.to_string());
        } else {
            self.map.insert(field.name().into(), value.into());
        }
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.map.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.map.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.map.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.map.insert(field.name().into(), value.into());
    }
}
