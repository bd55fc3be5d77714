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
//!   "sealed": [                     // older segments, listed in index objects (see below)
//!     {"key": "index-000000000000.json", "first": 0, "count": 256, "size": 262144,
//!      "crc64nvme": "…", "etag": "…"}
//!   ],
//!   "first_segment": 256,           // the index of segments[0] (the sealed ones come first)
//!   "segments": [                   // in stream order; segment i is <uri>/<i as 12 digits>
//!     {"key": "000000000256", "size": 104857600, "crc64nvme": "0123456789abcdef",
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
//! A stream cut every few seconds makes many segments (17,280 a day at 5 s), and the manifest is
//! rewritten with each one and read by every follower at every poll; so it lists at most
//! 2 x [`SEAL_EVERY`] segments itself. When it would list more, the writer moves the oldest
//! [`SEAL_EVERY`] into an index object `<uri>/index-<first segment, 12 digits>.json`
//! (`{"format": "s3ferry-pipe-index", "version": 2, "stream": …, "first": …, "segments": […]}`,
//! written create-only before the manifest that names it) and names the index in `sealed` with
//! the count, bytes and CRC64NVME of its segments. A reader fetches an index only to read
//! segments older than the manifest's tail (a follower far behind, `pipe join`), and checks it
//! against its entry.
//!
//! Version 1 (s3ferry before segments were cut by time) has no `stream`, `appends`, `sealed`,
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

use s3ferry_store::checksum::crc64nvme_combine;
use serde::{Deserialize, Serialize};

pub const FORMAT: &str = "s3ferry-pipe-segments";
pub const VERSION: u32 = 2;
pub const MANIFEST_NAME: &str = "manifest.json";
pub const INDEX_FORMAT: &str = "s3ferry-pipe-index";
/// Segments moved into one index object at a time; the manifest lists at most twice as many.
pub const SEAL_EVERY: usize = 256;

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
    /// Index objects that list the oldest segments, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sealed: Vec<Sealed>,
    /// The index of `segments[0]`: the segments before it are in `sealed`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub first_segment: usize,
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

/// An index object that lists `count` segments from `first` on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sealed {
    /// Name of the index object, relative to the upload's URI.
    pub key: String,
    pub first: usize,
    pub count: usize,
    /// Bytes of its segments, and their CRC64NVME in order.
    pub size: u64,
    pub crc64nvme: String,
    #[serde(default)]
    pub etag: Option<String>,
}

/// The content of an index object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Index {
    pub format: String,
    pub version: u32,
    pub stream: String,
    pub first: usize,
    pub segments: Vec<Segment>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Name of the index object whose first segment is `first`.
pub fn index_name(first: usize) -> String {
    format!("index-{first:012}.json")
}

/// CRC64NVME and length of `segments` in order.
fn crc_of(segments: &[Segment]) -> (u64, u64) {
    segments.iter().fold((0, 0), |(crc, len), s| {
        let c = parse_crc(&s.crc64nvme).unwrap_or_default();
        (crc64nvme_combine(crc, c, s.size), len + s.size)
    })
}

impl Index {
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Parse an index and check it is the one `entry` of stream `stream` names.
    pub fn parse(data: &[u8], stream: &str, entry: &Sealed) -> Result<Vec<Segment>, String> {
        let x: Index =
            serde_json::from_slice(data).map_err(|e| format!("not a pipe index: {e}"))?;
        if x.format != INDEX_FORMAT {
            return Err(format!("not a pipe index (format {:?})", x.format));
        }
        if x.stream != stream || x.first != entry.first || x.segments.len() != entry.count {
            return Err(format!(
                "the index is not the one the manifest names (stream {:?}, first {}, {} \
                 segments; the manifest says stream {stream:?}, first {}, {})",
                x.stream,
                x.first,
                x.segments.len(),
                entry.first,
                entry.count
            ));
        }
        for (i, s) in x.segments.iter().enumerate() {
            if s.key != segment_name(x.first + i) || parse_crc(&s.crc64nvme).is_none() {
                return Err(format!("segment {} of the index is malformed", x.first + i));
            }
        }
        let (crc, len) = crc_of(&x.segments);
        if len != entry.size || Some(crc) != parse_crc(&entry.crc64nvme) {
            return Err("its segments do not add up to the manifest's entry".into());
        }
        Ok(x.segments)
    }
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
            sealed: Vec::new(),
            first_segment: 0,
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
        let mut v = serde_json::to_vec(self).unwrap_or_default();
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
        let mut next = 0usize;
        for x in &m.sealed {
            // (A forged count must not wrap the arithmetic below.)
            if x.first != next || x.count == 0 || x.count > 1 << 40 || x.key != index_name(x.first)
            {
                return Err(format!(
                    "sealed index {:?} does not follow the one before it",
                    x.key
                ));
            }
            if parse_crc(&x.crc64nvme).is_none() {
                return Err(format!("sealed index {:?} has a bad crc64nvme", x.key));
            }
            next = next.checked_add(x.count).ok_or("sealed counts overflow")?;
        }
        if m.first_segment != next || (m.version == 1 && next > 0) {
            return Err(format!(
                "first_segment {} is not the number of sealed segments ({next})",
                m.first_segment
            ));
        }
        let n = m.segments.len();
        for (j, s) in m.segments.iter().enumerate() {
            let i = m.first_segment + j;
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
            if m.version == 1 && j + 1 < n && s.size != m.segment_size {
                return Err(format!("segment {i} is short but not the last"));
            }
        }
        if let Some(last) = m.segments.last() {
            if m.version == 1 && !m.complete && last.size != m.segment_size {
                return Err("a short segment in an upload that is not complete".into());
            }
        }
        if m.complete {
            let total = m.segments_crc().1;
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

    /// Segments in the stream so far (sealed and listed).
    pub fn segment_count(&self) -> usize {
        self.first_segment + self.segments.len()
    }

    /// `self` (newer) continues `old`: same stream, the same sealed indexes and segments so far
    /// (segments sealed since are checked by their count, bytes and CRC64NVME), not
    /// un-completed.
    pub fn extends(&self, old: &Manifest) -> bool {
        if self.stream_id() != old.stream_id()
            || self.segment_count() < old.segment_count()
            || self.sealed.len() < old.sealed.len()
            || self.sealed[..old.sealed.len()] != old.sealed[..]
            || (old.complete && !self.complete)
        {
            return false;
        }
        // Sealed since: each index that holds only segments `old` listed must add up to them.
        for x in &self.sealed[old.sealed.len()..] {
            let (from, to) = (x.first, x.first + x.count);
            if from < old.first_segment || to > old.segment_count() {
                continue;
            }
            let had = &old.segments[from - old.first_segment..to - old.first_segment];
            let (crc, len) = crc_of(had);
            if len != x.size || Some(crc) != parse_crc(&x.crc64nvme) {
                return false;
            }
        }
        // Listed in both: the same.
        let from = old.first_segment.max(self.first_segment);
        (from..old.segment_count())
            .all(|i| old.segments[i - old.first_segment] == self.segments[i - self.first_segment])
    }

    /// The CRC64NVME and length of the stream so far (sealed segments and listed ones).
    pub fn segments_crc(&self) -> (u64, u64) {
        let sealed = self.sealed.iter().fold((0, 0), |(crc, len), x| {
            let c = parse_crc(&x.crc64nvme).unwrap_or_default();
            (crc64nvme_combine(crc, c, x.size), len + x.size)
        });
        let (tail, n) = crc_of(&self.segments);
        (crc64nvme_combine(sealed.0, tail, n), sealed.1 + n)
    }

    /// When the manifest lists 2 x [`SEAL_EVERY`] segments: the index of the oldest
    /// [`SEAL_EVERY`] and its entry (without an ETag), to be written before [`Self::seal`].
    pub fn due_seal(&self) -> Option<(Index, Sealed)> {
        if self.segments.len() < 2 * SEAL_EVERY {
            return None;
        }
        let segments = self.segments[..SEAL_EVERY].to_vec();
        let (crc, size) = crc_of(&segments);
        let first = self.first_segment;
        Some((
            Index {
                format: INDEX_FORMAT.into(),
                version: VERSION,
                stream: self.stream_id().to_string(),
                first,
                segments,
            },
            Sealed {
                key: index_name(first),
                first,
                count: SEAL_EVERY,
                size,
                crc64nvme: format!("{crc:016x}"),
                etag: None,
            },
        ))
    }

    /// The index `entry` names was written: it lists the oldest segments from now on.
    pub fn seal(&mut self, entry: Sealed) {
        self.segments.drain(..entry.count);
        self.first_segment += entry.count;
        self.sealed.push(entry);
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

    /// The oldest segments move into an index once the manifest lists 2 x SEAL_EVERY: the
    /// manifest stays short, the stream's CRC and length stay the same, a reader's older copy
    /// is still extended, and the index checks out against its entry (a wrong one does not).
    #[test]
    fn sealing_keeps_the_manifest_short_and_the_stream_the_same() {
        let mut m = Manifest::new("w1", 10);
        for i in 0..2 * SEAL_EVERY - 1 {
            m.segments.push(seg(i, 1 + (i % 10) as u64));
        }
        assert!(m.due_seal().is_none());
        m.segments.push(seg(2 * SEAL_EVERY - 1, 4));
        let before = m.clone();
        let (index, mut entry) = m.due_seal().expect("due");
        assert_eq!(entry.key, "index-000000000000.json");
        assert_eq!((entry.first, entry.count), (0, SEAL_EVERY));
        entry.etag = Some("e".into());
        m.seal(entry.clone());
        assert_eq!(m.first_segment, SEAL_EVERY);
        assert_eq!(m.segments.len(), SEAL_EVERY);
        assert_eq!(m.segment_count(), before.segment_count());
        assert_eq!(m.segments_crc(), before.segments_crc());
        let back = Manifest::parse(&m.to_json()).expect("parses");
        assert_eq!(back, m);
        assert!(m.extends(&before), "a reader's copy from before the seal");
        let mut forged = m.clone();
        forged.sealed[0].crc64nvme = "0000000000000001".into();
        assert!(!forged.extends(&before), "an index that does not add up");
        assert!(before.segments[..SEAL_EVERY] == index.segments[..]);
        let listed = Index::parse(&index.to_json(), "w1", &entry).expect("index");
        assert_eq!(listed.len(), SEAL_EVERY);
        assert!(
            Index::parse(&index.to_json(), "w2", &entry).is_err(),
            "another stream"
        );
        let mut short = entry.clone();
        short.size -= 1;
        assert!(
            Index::parse(&index.to_json(), "w1", &short).is_err(),
            "wrong size"
        );
        // A sealed chain with a gap, or a first_segment that does not match: refused.
        let mut gap = m.clone();
        gap.first_segment += 1;
        assert!(Manifest::parse(&gap.to_json()).is_err());
    }
}
