//! What an archive holds and what the two sides remember, as data:
//!
//! - the manifest, `s3ferry-archive.json`, the first member of every volume: JSON Lines, a
//!   [`Header`] and then one [`Line`] per entry of that volume (puts in data order; the first
//!   volume also holds the moves and deletes);
//! - the state file an export writes next to its archive (gzipped JSON Lines: a
//!   [`StateHeader`], then one [`StateRec`] per source key in byte order), which the next
//!   export reads with `--since-state`;
//! - the marker an import keeps at the destination ([`Marker`]), which says which archives of
//!   which source were applied there, so the next import checks the order on any machine.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The name of the manifest member, first in every volume.
pub const MANIFEST: &str = "s3ferry-archive.json";
/// The marker's name at the destination (never exported, never deleted by an import).
pub const MARKER: &str = ".s3ferry-archive.json";
/// The state the last applied archive's export wrote, kept at the destination next to the
/// marker (`archive state` fetches it, to carry back to the export side).
pub const STATE_OBJECT: &str = ".s3ferry-archive.state";
/// The last member of an archive's last volume: the export's new state (gzipped JSON Lines).
pub const STATE_MEMBER: &str = "s3ferry-archive.state";

/// Keys of the destination that belong to the archive machinery, not to the data.
pub fn is_reserved(key: &str) -> bool {
    key == MARKER || key == STATE_OBJECT
}
pub const FORMAT: &str = "s3ferry-archive";
pub const STATE_FORMAT: &str = "s3ferry-archive-state";
pub const MARKER_FORMAT: &str = "s3ferry-archive-marker";
pub const VERSION: u32 = 1;
/// Archives the marker remembers by id (older ones are remembered by sequence number only).
pub const MARKER_HISTORY: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Everything the source held: starts a sequence.
    Full,
    /// What changed since the base state: continues a sequence.
    Delta,
    /// Objects modified since a date (`--since`), no deletions: starts a sequence.
    Since,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Delta => "delta",
            Self::Since => "since",
        }
    }
}

/// The first line of every volume's manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    /// This archive's id (the same in all its volumes).
    pub archive: String,
    /// The source it was exported from (`s3://bucket/prefix/` or an absolute directory).
    pub source: String,
    /// Position in the source's sequence of archives (1 for a full export).
    pub seq: u64,
    pub kind: Kind,
    /// The archive whose state this one was made against (deltas).
    pub base: Option<String>,
    pub base_seq: Option<u64>,
    /// RFC 3339.
    pub created: String,
    /// 1-based volume number, and how many volumes the archive has.
    pub volume: u32,
    pub volumes: u32,
    /// Lines after this header in this volume's manifest.
    pub entries: u64,
    /// Objects the source held at export (the base of percentage delete limits).
    pub source_objects: u64,
    /// SHA-256 of the state member at the end of the last volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_sha256: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Write the object (its data is a member of this volume).
    #[default]
    Put,
    /// Copy `from` to `key` at the destination, then delete `from` (same content, no data).
    Move,
    /// Delete `key` (a tombstone).
    Delete,
}

/// One entry of a manifest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub op: Op,
    /// The key relative to the source prefix (and to the destination prefix).
    pub key: String,
    /// A move's old key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The whole object's size.
    pub size: u64,
    /// The whole object's SHA-256 (hex) and CRC64NVME (base64, as S3 shows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc64nvme: Option<String>,
    /// When the source last wrote the object (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    /// The source file's modification time, where known (seconds with a fraction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    /// The source's ETag when it was read (exports read each piece pinned to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// A put's member holds bytes `offset..offset + length` of the object: the whole object,
    /// or one piece of an object split across volumes.
    #[serde(default)]
    pub offset: u64,
    #[serde(default)]
    pub length: u64,
    /// SHA-256 of this piece, for an object split across volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub piece_sha256: Option<String>,
    /// The volume holding this put's member.
    #[serde(default)]
    pub volume: u32,
}

impl Line {
    /// A put of part of an object (not its whole in one member).
    pub fn is_piece(&self) -> bool {
        self.op == Op::Put && (self.offset != 0 || self.length != self.size)
    }

    /// A put's last (or only) member.
    pub fn ends_object(&self) -> bool {
        self.offset + self.length == self.size
    }

    /// The tar member name of a put: the key for a whole object; for a piece of an object
    /// split across volumes, `<key>.s3ferry-piece-<offset, 15 digits>`, so that plain
    /// `tar -x` of the volumes never leaves a part of the object under its name (it leaves
    /// the pieces, which `cat <key>.s3ferry-piece-* > <key>` joins in order).
    pub fn member_name(&self) -> String {
        if self.is_piece() {
            piece_name(&self.key, self.offset)
        } else {
            self.key.clone()
        }
    }

    /// The PAX `mtime` of a put's member: the source file's time to the nanosecond where known,
    /// else when the source last wrote the object.
    pub fn pax_mtime(&self) -> Option<String> {
        self.mtime.clone().or_else(|| {
            let t = chrono::DateTime::parse_from_rfc3339(self.last_modified.as_deref()?).ok()?;
            Some(format!(
                "{}.{:09}",
                t.timestamp(),
                t.timestamp_subsec_nanos()
            ))
        })
    }
}

/// See [`Line::member_name`].
pub fn piece_name(key: &str, offset: u64) -> String {
    format!("{key}{PIECE_INFIX}{offset:015}")
}

/// Between a split object's key and its piece's offset in a member name.
pub const PIECE_INFIX: &str = ".s3ferry-piece-";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateHeader {
    pub format: String,
    pub version: u32,
    pub source: String,
    /// The archive this state belongs to, and its sequence number.
    pub archive: String,
    pub seq: u64,
    pub created: String,
    pub objects: u64,
}

/// What the previous export knew of one source key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRec {
    pub key: String,
    pub size: u64,
    /// Size + ETag (S3) or size + mtime + inode + ctime (files): unchanged while it is equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
    /// Content identity (unknown for objects a `--since` export left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// One applied archive, as the marker remembers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub archive: String,
    pub seq: u64,
    pub at: String,
}

/// The destination's record of what was imported into it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub format: String,
    pub version: u32,
    pub source: String,
    /// The last archive applied and its sequence number.
    pub archive: String,
    pub seq: u64,
    /// The archives applied, newest last (at most [`MARKER_HISTORY`]).
    pub applied: Vec<Applied>,
}

/// What an import does with an archive, given the destination's marker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Order {
    Apply,
    /// Applied here before: nothing to do.
    AlreadyApplied,
    /// Out of order, of another source, or a gap: the reason (`--force` applies it anyway).
    Refuse(String),
}

/// Decide whether `h` may be applied on top of `marker` (see doc/SEMANTICS.md, archive).
pub fn order(marker: Option<&Marker>, h: &Header) -> Order {
    if marker
        .is_some_and(|m| m.source == h.source && m.applied.iter().any(|a| a.archive == h.archive))
    {
        return Order::AlreadyApplied;
    }
    let Some(m) = marker else {
        return match h.kind {
            Kind::Full | Kind::Since => Order::Apply,
            Kind::Delta => Order::Refuse(format!(
                "archive {} (seq {}) is a delta on seq {}, but no archive of {} was imported here yet: import the earlier archives first",
                h.archive,
                h.seq,
                h.base_seq.unwrap_or(0),
                h.source
            )),
        };
    };
    if m.source != h.source {
        return Order::Refuse(format!(
            "archive {} is of {}, but the destination holds archives of {}",
            h.archive, h.source, m.source
        ));
    }
    match h.kind {
        Kind::Full | Kind::Since => Order::Refuse(format!(
            "archive {} is a {} export (seq {}), but the destination is already at seq {} of {}: a new {} export restarts the sequence",
            h.archive,
            h.kind.as_str(),
            h.seq,
            m.seq,
            h.source,
            h.kind.as_str()
        )),
        Kind::Delta if h.base.as_deref() == Some(m.archive.as_str()) => Order::Apply,
        Kind::Delta if h.base_seq.is_some_and(|b| b > m.seq) => Order::Refuse(format!(
            "missing archive: the destination is at seq {}, and archive {} (seq {}) needs seq {} applied first",
            m.seq,
            h.archive,
            h.seq,
            h.base_seq.unwrap_or(0)
        )),
        Kind::Delta => Order::Refuse(format!(
            "archive {} (seq {}) was made against archive {:?}, but the destination is at seq {} (archive {}): it was skipped, superseded or made on another branch",
            h.archive,
            h.seq,
            h.base.as_deref().unwrap_or(""),
            m.seq,
            m.archive
        )),
    }
}

/// The marker after applying `h` on top of `before`.
pub fn advance(before: Option<Marker>, h: &Header, at: String) -> Marker {
    let mut applied = before.map(|m| m.applied).unwrap_or_default();
    applied.push(Applied {
        archive: h.archive.clone(),
        seq: h.seq,
        at,
    });
    if applied.len() > MARKER_HISTORY {
        applied.drain(..applied.len() - MARKER_HISTORY);
    }
    Marker {
        format: MARKER_FORMAT.into(),
        version: VERSION,
        source: h.source.clone(),
        archive: h.archive.clone(),
        seq: h.seq,
        applied,
    }
}

/// A file-name-safe form of a source id.
pub fn slug(source: &str) -> String {
    let s: String = source
        .trim_start_matches("s3://")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let s = s.trim_matches(|c| c == '-' || c == '.');
    let s: String = s.chars().take(60).collect();
    if s.is_empty() {
        "archive".into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: Kind, seq: u64, archive: &str, base: Option<(&str, u64)>) -> Header {
        Header {
            format: FORMAT.into(),
            version: VERSION,
            archive: archive.into(),
            source: "s3://b/p/".into(),
            seq,
            kind,
            base: base.map(|b| b.0.to_string()),
            base_seq: base.map(|b| b.1),
            created: String::new(),
            volume: 1,
            volumes: 1,
            entries: 0,
            source_objects: 0,
            state_sha256: None,
        }
    }

    #[test]
    fn archives_apply_in_order_once() {
        let a1 = header(Kind::Full, 1, "a1", None);
        let a2 = header(Kind::Delta, 2, "a2", Some(("a1", 1)));
        let a3 = header(Kind::Delta, 3, "a3", Some(("a2", 2)));
        assert_eq!(order(None, &a1), Order::Apply);
        assert!(matches!(order(None, &a2), Order::Refuse(_)));
        let m1 = advance(None, &a1, "t".into());
        assert_eq!(order(Some(&m1), &a1), Order::AlreadyApplied);
        assert_eq!(order(Some(&m1), &a2), Order::Apply);
        match order(Some(&m1), &a3) {
            Order::Refuse(why) => assert!(why.contains("missing archive"), "{why}"),
            o => panic!("{o:?}"),
        }
        let m2 = advance(Some(m1.clone()), &a2, "t".into());
        assert_eq!(order(Some(&m2), &a2), Order::AlreadyApplied);
        assert_eq!(order(Some(&m2), &a1), Order::AlreadyApplied);
        assert_eq!(order(Some(&m2), &a3), Order::Apply);
        // A second full export of the same source restarts the sequence: refused.
        let again = header(Kind::Full, 1, "b1", None);
        assert!(matches!(order(Some(&m2), &again), Order::Refuse(_)));
        // Another source.
        let mut other = a2.clone();
        other.source = "/data/x/".into();
        match order(Some(&m1), &other) {
            Order::Refuse(why) => assert!(why.contains("/data/x/"), "{why}"),
            o => panic!("{o:?}"),
        }
        // A delta made against another branch of the same source.
        let branch = header(Kind::Delta, 2, "c2", Some(("c1", 1)));
        assert!(matches!(order(Some(&m1), &branch), Order::Refuse(_)));
    }

    #[test]
    fn the_marker_keeps_a_bounded_history() {
        let mut m = None;
        for i in 0..(MARKER_HISTORY as u64 + 5) {
            let h = header(Kind::Delta, i + 1, &format!("a{i}"), None);
            m = Some(advance(m, &h, String::new()));
        }
        let m = m.unwrap();
        assert_eq!(m.applied.len(), MARKER_HISTORY);
        assert_eq!(m.seq, MARKER_HISTORY as u64 + 5);
        assert_eq!(
            m.applied.last().unwrap().archive,
            format!("a{}", MARKER_HISTORY + 4)
        );
    }

    #[test]
    fn slugs_are_file_names() {
        assert_eq!(slug("s3://bucket/some prefix/"), "bucket-some-prefix");
        assert_eq!(slug("/data/x"), "data-x");
        assert_eq!(slug("s3://"), "archive");
    }
}
