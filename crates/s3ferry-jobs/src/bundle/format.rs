//! The files a bundle job writes and reads: shard manifests, indexes, dead-letter indexes and
//! shard receipts. CSV with a header row; keys URL-encoded as in S3 Inventory and Batch
//! Operations manifests (so a key with a comma, quote or newline survives); metadata and tags
//! as URL-encoded `k=v&k=v`.

use std::collections::BTreeMap;
use std::time::SystemTime;

use s3ferry_engine::formats::csv::{decode_key, encode_key, field, split_line};
use serde::{Deserialize, Serialize};

/// The prefix of the PAX records a packed member carries (`<prefix>etag`, `<prefix>meta.<k>`,
/// ...): GNU tar and bsdtar read them as extended attributes (`tar --xattrs` restores them as
/// `user.s3ferry.*`) instead of warning about unknown keywords.
pub const RECORD: &str = "SCHILY.xattr.user.s3ferry.";

/// The header of a shard manifest.
pub const SHARD_HEADER: &str = "bucket,key,version_id,size,last_modified,etag,storage_class,direct";
/// The header of an index.
pub const INDEX_HEADER: &str = "bucket,key,version_id,size,last_modified,etag,md5,checksum_crc64nvme,content_type,metadata,tags,storage_class,header_offset,data_offset,data_length,location";
/// The header of a dead-letter index.
pub const DEAD_HEADER: &str =
    "bucket,key,version_id,size,etag,reason,http_status,error_code,message";

fn time_text(t: Option<SystemTime>) -> String {
    t.map(|t| {
        chrono::DateTime::<chrono::Utc>::from(t)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    })
    .unwrap_or_default()
}

fn parse_time(s: &str) -> Result<Option<SystemTime>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| Some(t.with_timezone(&chrono::Utc).into()))
        .map_err(|_| format!("bad time {s:?}"))
}

fn opt(s: &Option<String>) -> String {
    field(s.as_deref().unwrap_or(""))
}

fn some(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn num(s: &str, what: &str) -> Result<u64, String> {
    s.parse().map_err(|_| format!("bad {what} {s:?}"))
}

fn fields(line: &str, n: usize) -> Result<Vec<String>, String> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let f = split_line(line)?;
    if f.len() != n {
        return Err(format!("{} fields, expected {n}", f.len()));
    }
    Ok(f)
}

/// `k=v&k=v`, both sides URL-encoded (sorted by key).
pub fn encode_pairs<'a>(pairs: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    pairs
        .into_iter()
        .map(|(k, v)| format!("{}={}", encode_key(k), encode_key(v)))
        .collect::<Vec<_>>()
        .join("&")
}

pub fn decode_pairs(s: &str) -> Result<Vec<(String, String)>, String> {
    if s.is_empty() {
        return Ok(vec![]);
    }
    s.split('&')
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Ok((decode_key(k)?, decode_key(v)?))
        })
        .collect()
}

/// One object of a shard manifest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardRow {
    pub bucket: String,
    pub key: String,
    pub version_id: Option<String>,
    pub size: u64,
    pub last_modified: Option<SystemTime>,
    /// The ETag the inventory or listing saw: reads are pinned to it (a changed object is a
    /// dead letter, never a silent mix).
    pub etag: Option<String>,
    pub storage_class: Option<String>,
    /// Copied directly (server-side) instead of packed: bigger than `--big-object`.
    pub direct: bool,
}

impl ShardRow {
    pub fn to_row(&self) -> String {
        format!(
            "{},{},{},{},{},{},{},{}",
            field(&self.bucket),
            encode_key(&self.key),
            opt(&self.version_id),
            self.size,
            time_text(self.last_modified),
            opt(&self.etag),
            opt(&self.storage_class),
            if self.direct { "1" } else { "" }
        )
    }

    pub fn parse_row(line: &str) -> Result<Self, String> {
        let f = fields(line, 8)?;
        let mut it = f.into_iter();
        let mut next = || it.next().unwrap_or_default();
        let bucket = next();
        let key = decode_key(&next())?;
        if bucket.is_empty() || key.is_empty() {
            return Err("empty bucket or key".into());
        }
        Ok(Self {
            bucket,
            key,
            version_id: some(next()),
            size: num(&next(), "size")?,
            last_modified: parse_time(&next())?,
            etag: some(next()),
            storage_class: some(next()),
            direct: next() == "1",
        })
    }
}

/// One object of an index: where its bytes are and what they were.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexRow {
    pub bucket: String,
    pub key: String,
    pub version_id: Option<String>,
    pub size: u64,
    pub last_modified: Option<SystemTime>,
    pub etag: Option<String>,
    /// Hex MD5 of the bytes (packed objects; direct copies are verified by the server).
    pub md5: Option<String>,
    /// Base64 CRC64NVME of the bytes, as S3 writes it.
    pub crc64nvme: Option<String>,
    pub content_type: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub tags: Vec<(String, String)>,
    pub storage_class: Option<String>,
    /// Offsets in the tar (packed objects); `None` for direct copies.
    pub header_offset: Option<u64>,
    pub data_offset: Option<u64>,
    pub data_length: u64,
    /// Where the bytes are, relative to the index: the shard's tar, or `bigobjects/<key>`.
    pub location: String,
}

impl IndexRow {
    pub fn to_row(&self) -> String {
        let o = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_default();
        format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            field(&self.bucket),
            encode_key(&self.key),
            opt(&self.version_id),
            self.size,
            time_text(self.last_modified),
            opt(&self.etag),
            opt(&self.md5),
            opt(&self.crc64nvme),
            opt(&self.content_type),
            encode_pairs(&self.metadata),
            encode_pairs(self.tags.iter().map(|(k, v)| (k, v))),
            opt(&self.storage_class),
            o(self.header_offset),
            o(self.data_offset),
            self.data_length,
            encode_key(&self.location),
        )
    }

    pub fn parse_row(line: &str) -> Result<Self, String> {
        let f = fields(line, 16)?;
        let mut it = f.into_iter();
        let mut next = || it.next().unwrap_or_default();
        let onum = |s: String, what: &str| -> Result<Option<u64>, String> {
            if s.is_empty() {
                Ok(None)
            } else {
                num(&s, what).map(Some)
            }
        };
        Ok(Self {
            bucket: next(),
            key: decode_key(&next())?,
            version_id: some(next()),
            size: num(&next(), "size")?,
            last_modified: parse_time(&next())?,
            etag: some(next()),
            md5: some(next()),
            crc64nvme: some(next()),
            content_type: some(next()),
            metadata: decode_pairs(&next())?.into_iter().collect(),
            tags: decode_pairs(&next())?,
            storage_class: some(next()),
            header_offset: onum(next(), "header_offset")?,
            data_offset: onum(next(), "data_offset")?,
            data_length: num(&next(), "data_length")?,
            location: decode_key(&next())?,
        })
    }
}

/// An object the shard could not take, and why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeadRow {
    pub bucket: String,
    pub key: String,
    pub version_id: Option<String>,
    pub size: u64,
    pub etag: Option<String>,
    /// `not-found`, `access-denied`, `changed`, `throttled`, `corrupt`, ...
    pub reason: String,
    pub http_status: Option<u16>,
    pub error_code: String,
    pub message: String,
}

impl DeadRow {
    pub fn to_row(&self) -> String {
        format!(
            "{},{},{},{},{},{},{},{},{}",
            field(&self.bucket),
            encode_key(&self.key),
            opt(&self.version_id),
            self.size,
            opt(&self.etag),
            field(&self.reason),
            self.http_status.map(|s| s.to_string()).unwrap_or_default(),
            field(&self.error_code),
            field(&self.message.replace(['\n', '\r'], " ")),
        )
    }

    pub fn parse_row(line: &str) -> Result<Self, String> {
        let f = fields(line, 9)?;
        let mut it = f.into_iter();
        let mut next = || it.next().unwrap_or_default();
        Ok(Self {
            bucket: next(),
            key: decode_key(&next())?,
            version_id: some(next()),
            size: num(&next(), "size")?,
            etag: some(next()),
            reason: next(),
            http_status: {
                let s = next();
                if s.is_empty() {
                    None
                } else {
                    Some(s.parse().map_err(|_| format!("bad http_status {s:?}"))?)
                }
            },
            error_code: next(),
            message: next(),
        })
    }
}

/// Written last, next to a shard's tar and index: the shard is complete. A rerun that finds
/// a receipt whose tar is still there with the same ETag does nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub format: u32,
    /// The shard manifest it was made from.
    pub shard: String,
    /// Keys relative to the receipt's directory.
    pub tar: String,
    pub tar_size: u64,
    pub tar_etag: Option<String>,
    pub index: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letters: Option<String>,
    pub objects: u64,
    pub packed: u64,
    pub direct: u64,
    pub failed: u64,
    pub bytes: u64,
    pub created: String,
}

pub const RECEIPT_FORMAT: u32 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_with_awkward_keys_metadata_and_tags() {
        let t = Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123));
        let s = ShardRow {
            bucket: "b".into(),
            key: "a,b \"c\"\n/é+%.txt".into(),
            version_id: Some("v1".into()),
            size: 42,
            last_modified: t,
            etag: Some("abc".into()),
            storage_class: None,
            direct: true,
        };
        assert_eq!(ShardRow::parse_row(&s.to_row()).unwrap(), s);
        let i = IndexRow {
            bucket: "b".into(),
            key: s.key.clone(),
            size: 42,
            last_modified: t,
            md5: Some("00ff".into()),
            crc64nvme: Some("AAAAAAAAAAA=".into()),
            content_type: Some("text/plain; charset=utf-8".into()),
            metadata: [("color".to_string(), "blue & green=yes".to_string())].into(),
            tags: vec![("k=1".into(), "v&2".into()), ("x".into(), String::new())],
            header_offset: Some(0),
            data_offset: Some(1536),
            data_length: 42,
            location: "shard-000001.tar".into(),
            ..Default::default()
        };
        assert_eq!(IndexRow::parse_row(&i.to_row()).unwrap(), i);
        let d = DeadRow {
            bucket: "b".into(),
            key: "k".into(),
            reason: "changed".into(),
            http_status: Some(412),
            message: "line1\nline2, \"q\"".into(),
            ..Default::default()
        };
        let back = DeadRow::parse_row(&d.to_row()).unwrap();
        assert_eq!(back.message, "line1 line2, \"q\"");
        assert_eq!(back.http_status, Some(412));
    }

    #[test]
    fn malformed_rows_are_named() {
        assert!(ShardRow::parse_row("b,k").unwrap_err().contains("fields"));
        assert!(ShardRow::parse_row("b,k,,x,,,,")
            .unwrap_err()
            .contains("size"));
        assert!(ShardRow::parse_row(",k,,1,,,,").is_err());
        assert!(IndexRow::parse_row("b,k,,1,,,,,,%zz,,,,,1,x").is_err());
    }
}
