//! The manifest of a segmented upload: `<uri>/manifest.json`, next to the segments
//! `<uri>/000000000000`, `<uri>/000000000001`, …
//!
//! ```json
//! {
//!   "format": "s3ferry-pipe-segments",
//!   "version": 2,
//!   "stream": "5b0e…",              // id of the stream: its first writer's run id
//!   "writer": "5b0e…",              // id of the run writing it now (changes with --append)
//!   "segment_size": 104857600,      // the largest a segment may be
//!   "segment_interval_ms": 5000,    // a segment is published at most this long after its
//!                                   // first byte (absent: segments are cut by size only)
//!   "heartbeat_secs": 30,           // the writer rewrites the manifest at least this often
//!   "started": "2025-01-01T00:00:00Z",
//!   "updated": "2025-01-01T00:01:00Z",   // the writer's clock; informational
//!   "heartbeat": 3,                 // bumped when the writer rewrites it without a new segment
//!   "segments": [                   // in stream order; segment i is <uri>/<i as 12 digits>
//!     {"key": "000000000000", "size": 104857600, "crc64nvme": "0123456789abcdef",
//!      "etag": "…"}
//!   ],
//!   "appends": [                    // writers that continued the stream (pipe up --append)
//!     {"writer": "77c1…", "at": "2025-01-01T02:00:00Z", "first_segment": 12}
//!   ],
//!   "complete": true,               // the stream ended; then total_size and crc64nvme are set
//!   "total_size": 104857600,
//!   "crc64nvme": "0123456789abcdef",   // the whole stream's CRC64NVME
//!   "failed": null,                 // the writer's error if it gave up (the upload is dead)
//!   "stopped": null                 // the writer was stopped (a signal) and left the stream
//!                                   // open: followers wait for a writer to --append
//! }
//! ```
//!
//! Version 1 (s3ferry before segments were cut by time) has no `stream`, `appends`,
//! `segment_interval_ms` or `heartbeat_secs`, and every segment but the last has exactly
//! `segment_size` bytes. Version 2 segments have 1 to `segment_size` bytes each: a segment is
//! cut when it is full, or when its time is up. Both are read; version 2 is written.
//!
//! The writer creates the manifest with a create-only write and rewrites it with If-Match on
//! the ETag of its previous write, so a second writer on the same URI fails at once and loudly.
//! An appending writer takes the stream over with the same If-Match, so of two appenders one
//! wins and the other is refused, and a writer that was thought dead but was not fails at its
//! next rewrite. Segments are create-only writes too. A reader checks that each new version of
//! the manifest extends the one it read before (same stream, same segments so far).

use serde::{Deserialize, Serialize};

pub const FORMAT: &str = "s3ferry-pipe-segments";
pub const VERSION: u32 = 2;
pub const MANIFEST_NAME: &str = "manifest.json";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// The stream's id (its first writer's); empty in version 1 (then `writer` is the id).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stream: String,
    pub writer: String,
    pub segment_size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_interval_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_secs: Option<u64>,
    #[serde(default)]
    pub started: String,
    #[serde(default)]
    pub updated: String,
    #[serde(default)]
    pub heartbeat: u64,
    pub segments: Vec<Segment>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub appends: Vec<Append>,
    pub complete: bool,
    #[serde(default)]
    pub total_size: Option<u64>,
    #[serde(default)]
    pub crc64nvme: Option<String>,
    #[serde(default)]
    pub failed: Option<String>,
    /// The writer was stopped on request (SIGINT, SIGTERM) and left the stream open for another
    /// writer to continue (`--append`); followers wait for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// Name of the segment object, relative to the upload's URI.
    pub key: String,
    pub size: u64,
    pub crc64nvme: String,
    #[serde(default)]
    pub etag: Option<String>,
}

/// A writer that continued the stream where a dead one stopped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Append {
    pub writer: String,
    pub at: String,
    /// Index of the first segment it wrote.
    pub first_segment: usize,
}

/// Key of the manifest of the upload at `base`.
pub fn manifest_key(base: &str) -> String {
    format!("{base}/{MANIFEST_NAME}")
}

/// Name of segment `i` (relative to the upload's URI).
pub fn segment_name(i: usize) -> String {
    format!("{i:012}")
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub fn parse_crc(s: &str) -> Option<u64> {
    (s.len() == 16)
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
}

impl Manifest {
    pub fn new(writer: &str, segment_size: u64) -> Self {
        let t = now();
        Self {
            format: FORMAT.into(),
            version: VERSION,
            stream: writer.into(),
            writer: writer.into(),
            segment_size,
            segment_interval_ms: None,
            heartbeat_secs: None,
            started: t.clone(),
            updated: t,
            heartbeat: 0,
            segments: Vec::new(),
            appends: Vec::new(),
            complete: false,
            total_size: None,
            crc64nvme: None,
            failed: None,
            stopped: None,
        }
    }

    pub fn touch(&mut self) {
        self.updated = now();
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Parse and check a manifest's own consistency.
    pub fn parse(data: &[u8]) -> Result<Self, String> {
        let m: Manifest =
            serde_json::from_slice(data).map_err(|e| format!("not a pipe manifest: {e}"))?;
        if m.format != FORMAT {
            return Err(format!("not a pipe manifest (format {:?})", m.format));
        }
        if !(1..=VERSION).contains(&m.version) {
            return Err(format!(
                "manifest version {} is not supported (this s3ferry reads versions 1 to \
                 {VERSION}; a newer s3ferry wrote it)",
                m.version
            ));
        }
        if m.segment_size == 0 {
            return Err("manifest has segment_size 0".into());
        }
        let n = m.segments.len();
        for (i, s) in m.segments.iter().enumerate() {
            if s.key != segment_name(i) {
                return Err(format!("segment {i} is named {:?}", s.key));
            }
            if parse_crc(&s.crc64nvme).is_none() {
                return Err(format!("segment {i} has a bad crc64nvme {:?}", s.crc64nvme));
            }
            if s.size == 0 || s.size > m.segment_size {
                return Err(format!(
                    "segment {i} has {} bytes (segment size {})",
                    s.size, m.segment_size
                ));
            }
            // Version 1 cut by size only: every segment but the last is full.
            if m.version == 1 && i + 1 < n && s.size != m.segment_size {
                return Err(format!("segment {i} is short but not the last"));
            }
        }
        if let Some(last) = m.segments.last() {
            if m.version == 1 && !m.complete && last.size != m.segment_size {
                return Err("a short segment in an upload that is not complete".into());
            }
        }
        if m.complete {
            let total: u64 = m.segments.iter().map(|s| s.size).sum();
            if m.total_size != Some(total) {
                return Err(format!(
                    "total_size {:?} is not the sum of the segments ({total})",
                    m.total_size
                ));
            }
            if m.crc64nvme.as_deref().and_then(parse_crc).is_none() {
                return Err("a complete manifest without a valid crc64nvme".into());
            }
        }
        Ok(m)
    }

    /// The stream's id: the same across appends.
    pub fn stream_id(&self) -> &str {
        if self.stream.is_empty() {
            &self.writer
        } else {
            &self.stream
        }
    }

    /// `self` (newer) continues `old`: same stream, same segments so far, not un-completed.
    pub fn extends(&self, old: &Manifest) -> bool {
        self.stream_id() == old.stream_id()
            && self.segments.len() >= old.segments.len()
            && self.segments[..old.segments.len()] == old.segments[..]
            && (self.complete || !old.complete)
    }

    /// The CRC64NVME and length of the segments listed (the stream so far).
    pub fn segments_crc(&self) -> (u64, u64) {
        self.segments.iter().fold((0, 0), |(crc, len), s| {
            let c = parse_crc(&s.crc64nvme).unwrap_or_default();
            (
                s3ferry_store::checksum::crc64nvme_combine(crc, c, s.size),
                len + s.size,
            )
        })
    }

    pub fn whole_crc(&self) -> Option<u64> {
        self.crc64nvme.as_deref().and_then(parse_crc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(i: usize, size: u64) -> Segment {
        Segment {
            key: segment_name(i),
            size,
            crc64nvme: "00000000000000ff".into(),
            etag: None,
        }
    }

    #[test]
    fn round_trip_and_checks() {
        let mut m = Manifest::new("w1", 10);
        m.segments = vec![seg(0, 10), seg(1, 10)];
        let back = Manifest::parse(&m.to_json()).unwrap();
        assert_eq!(back, m);
        let old = back.clone();
        m.segments.push(seg(2, 3));
        m.complete = true;
        m.total_size = Some(23);
        m.crc64nvme = Some("0000000000000001".into());
        let done = Manifest::parse(&m.to_json()).unwrap();
        assert!(done.extends(&old));
        assert!(!old.extends(&done));
        let mut other = done.clone();
        other.stream = "w2".into();
        assert!(!other.extends(&old), "another stream");
        let mut appended = done.clone();
        appended.writer = "w2".into();
        assert!(
            appended.extends(&old),
            "the same stream, continued by another writer"
        );

        // Version 2: a short segment in the middle is a time cut; empty or oversized ones are
        // refused. Version 1 cut by size only: a short one in the middle is refused.
        let mut cut = m.clone();
        cut.segments[1].size = 9;
        cut.total_size = Some(22);
        assert!(Manifest::parse(&cut.to_json()).is_ok());
        let mut v1 = cut.clone();
        v1.version = 1;
        assert!(Manifest::parse(&v1.to_json()).is_err());
        for size in [0, 11] {
            let mut bad = m.clone();
            bad.segments[1].size = size;
            bad.total_size = Some(13 + size);
            assert!(Manifest::parse(&bad.to_json()).is_err(), "size {size}");
        }
        let mut future = m.clone();
        future.version = VERSION + 1;
        let e = Manifest::parse(&future.to_json()).unwrap_err();
        assert!(e.contains("newer s3ferry"), "{e}");
        let mut bad = m.clone();
        bad.total_size = Some(22);
        assert!(Manifest::parse(&bad.to_json()).is_err());
        let mut bad = m.clone();
        bad.segments[0].key = "0".into();
        assert!(Manifest::parse(&bad.to_json()).is_err());
        assert!(Manifest::parse(b"{\"format\":\"x\"}").is_err());
    }
}
