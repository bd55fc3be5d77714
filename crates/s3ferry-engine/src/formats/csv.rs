//! The CSV dialects of S3 Batch Operations and S3 Inventory: manifests (`bucket,key[,versionId]`
//! with URL-encoded keys), completion reports, inventory data files, and the bucket-pairs file of
//! `batch run --pairs`.
//!
//! Keys are URL-encoded the way S3 Inventory writes them (form encoding: space as `+`, every
//! byte but `A-Za-z0-9.-_*` as `%XX`), and decoded leniently (`+` and `%20` are both a space),
//! which is what Batch Operations accepts. A key with a newline can be carried encoded, but a
//! raw newline in a row is a malformed row.

use std::fmt::Write as _;

/// Encode a key for a manifest or report.
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// Decode a URL-encoded key (`+` = space). Errors on a bad escape or bytes that are not UTF-8.
pub fn decode_key(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad URL escape at byte {i} of {s:?}"))?;
                out.push(hex);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} does not decode to UTF-8"))
}

/// Split one CSV line into fields (RFC 4180 quoting; `""` inside quotes is a quote).
pub fn split_line(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    cur.push('"');
                    chars.next();
                } else {
                    quoted = false;
                }
            } else {
                cur.push(c);
            }
        } else if c == '"' {
            if !cur.is_empty() || was_quoted {
                return Err("quote in the middle of a field".into());
            }
            quoted = true;
            was_quoted = true;
        } else if c == ',' {
            fields.push(std::mem::take(&mut cur));
            was_quoted = false;
        } else if was_quoted {
            return Err("text after a closing quote".into());
        } else {
            cur.push(c);
        }
    }
    if quoted {
        return Err("unterminated quote".into());
    }
    fields.push(cur);
    Ok(fields)
}

/// Quote a field if it needs it.
pub fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `line` without a leading UTF-8 byte order mark.
fn without_bom(line: &str) -> &str {
    line.strip_prefix('\u{feff}').unwrap_or(line)
}

/// One entry of a Batch Operations manifest.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ManifestEntry {
    pub bucket: String,
    pub key: String,
    pub version_id: Option<String>,
}

impl ManifestEntry {
    /// The manifest row (no line end).
    pub fn to_row(&self) -> String {
        let mut s = format!("{},{}", field(&self.bucket), encode_key(&self.key));
        if let Some(v) = &self.version_id {
            s.push(',');
            s.push_str(&field(v));
        }
        s
    }

    /// Parse a manifest row. Errors name what is wrong (the caller adds the line number). A
    /// UTF-8 byte order mark (spreadsheets save one at the start of the file) is not data.
    pub fn parse_row(line: &str) -> Result<Self, String> {
        let line = without_bom(line.strip_suffix('\r').unwrap_or(line));
        let f = split_line(line)?;
        let (bucket, key, version) = match f.as_slice() {
            [b, k] => (b, k, None),
            [b, k, v] => (b, k, Some(v)),
            _ => {
                return Err(format!(
                    "expected bucket,key[,versionId], got {} fields",
                    f.len()
                ))
            }
        };
        if bucket.trim().is_empty() {
            return Err("empty bucket".into());
        }
        if key.is_empty() {
            return Err("empty key".into());
        }
        Ok(Self {
            bucket: bucket.trim().to_string(),
            key: decode_key(key)?,
            version_id: version.filter(|v| !v.is_empty()).cloned(),
        })
    }
}

/// The outcome of one task in a Batch Operations completion report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportRow {
    pub entry: ManifestEntry,
    pub succeeded: bool,
    /// e.g. `200`, `404`, `403`.
    pub http_status: u16,
    /// e.g. `NoSuchKey`, `AccessDenied` (empty on success).
    pub error_code: String,
    pub message: String,
}

impl ReportRow {
    /// `Bucket,Key,VersionId,TaskStatus,HTTPStatusCode,ErrorCode,ResultMessage`: the order of
    /// real completion reports and of AWS's own examples (`…,succeeded,200,,Successful`), which
    /// puts the HTTP status before the error code although the report's `ReportSchema` string
    /// names them the other way round.
    pub fn to_row(&self) -> String {
        format!(
            "{},{},{},{},{},{},{}",
            field(&self.entry.bucket),
            encode_key(&self.entry.key),
            field(self.entry.version_id.as_deref().unwrap_or("")),
            if self.succeeded {
                "succeeded"
            } else {
                "failed"
            },
            self.http_status,
            field(&self.error_code),
            field(&self.message),
        )
    }

    /// A row as [`ReportRow::to_row`] writes it; a row of an older s3ferry, with the error code
    /// before the HTTP status, is read too (the status is the field that is a number).
    pub fn parse_row(line: &str) -> Result<Self, String> {
        let f = split_line(line.strip_suffix('\r').unwrap_or(line))?;
        let [b, k, v, status, x, y, msg] = f.as_slice() else {
            return Err(format!("expected 7 fields, got {}", f.len()));
        };
        let (http, code) = match (x.parse::<u16>(), y.parse::<u16>()) {
            (Ok(h), _) => (h, y),
            (Err(_), Ok(h)) => (h, x),
            _ => return Err(format!("bad HTTPStatusCode {x:?}")),
        };
        Ok(Self {
            entry: ManifestEntry {
                bucket: b.clone(),
                key: decode_key(k)?,
                version_id: (!v.is_empty()).then(|| v.clone()),
            },
            succeeded: match status.as_str() {
                "succeeded" => true,
                "failed" => false,
                s => return Err(format!("bad TaskStatus {s:?}")),
            },
            error_code: code.clone(),
            http_status: http,
            message: msg.clone(),
        })
    }
}

/// One row of a `--pairs` file: `source_bucket,destination_bucket[,prefix]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketPair {
    pub source: String,
    pub destination: String,
    pub prefix: String,
}

impl BucketPair {
    /// Parse a `--pairs` row (a leading byte order mark is dropped, as in a manifest).
    pub fn parse_row(line: &str) -> Result<Self, String> {
        let f = split_line(without_bom(line.strip_suffix('\r').unwrap_or(line)))?;
        let (s, d, p) = match f.as_slice() {
            [s, d] => (s, d, ""),
            [s, d, p] => (s, d, p.as_str()),
            _ => {
                return Err(format!(
                    "expected source_bucket,destination_bucket[,prefix], got {} fields",
                    f.len()
                ))
            }
        };
        let (s, d) = (s.trim(), d.trim());
        if s.is_empty() || d.is_empty() {
            return Err("empty bucket name".into());
        }
        if s == d && p.is_empty() {
            return Err(format!(
                "source and destination are both {s:?} with no prefix: that would copy onto itself"
            ));
        }
        Ok(Self {
            source: s.to_string(),
            destination: d.to_string(),
            prefix: p.trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn awkward_keys_round_trip_and_decode_like_aws() {
        for k in [
            "a b",
            "a+b",
            "100%",
            "é/ü",
            "x,y\"z",
            "new\nline",
            "a/b/c.txt",
            "*",
        ] {
            let e = ManifestEntry {
                bucket: "bkt".into(),
                key: k.into(),
                version_id: None,
            };
            let row = e.to_row();
            assert!(!row.contains('\n'), "{row:?}");
            assert_eq!(ManifestEntry::parse_row(&row).unwrap(), e, "{row}");
        }
        assert_eq!(encode_key("a b+c/d"), "a+b%2Bc%2Fd");
        assert_eq!(decode_key("a%20b+c").unwrap(), "a b c");
        assert!(decode_key("bad%zz").is_err());
        assert!(decode_key("%FF").is_err(), "not UTF-8");
    }

    #[test]
    fn manifest_rows() {
        let e = ManifestEntry::parse_row(
            "\"my-bucket\",photos%2F2017%2Fa.jpg,3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY\r",
        )
        .unwrap();
        assert_eq!(e.key, "photos/2017/a.jpg");
        assert_eq!(
            e.version_id.as_deref(),
            Some("3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY")
        );
        for bad in [
            "only-one-field",
            "b,k,v,extra",
            ",key",
            "b,",
            "b,\"unterminated",
        ] {
            assert!(ManifestEntry::parse_row(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn report_rows_round_trip() {
        let r = ReportRow {
            entry: ManifestEntry {
                bucket: "b".into(),
                key: "a b,c".into(),
                version_id: Some("v1".into()),
            },
            succeeded: false,
            http_status: 404,
            error_code: "NoSuchKey".into(),
            message: "The specified key does not exist, really".into(),
        };
        assert_eq!(ReportRow::parse_row(&r.to_row()).unwrap(), r);
        // As AWS writes them: the HTTP status in column 5, the error code in column 6.
        let ok = ReportRow::parse_row("b,k,,succeeded,200,,Successful").unwrap();
        assert!(ok.succeeded && ok.http_status == 200 && ok.error_code.is_empty());
        let bad = ReportRow::parse_row("b,k,,failed,404,NoSuchKey,\"gone\"").unwrap();
        assert_eq!(
            (bad.http_status, bad.error_code.as_str()),
            (404, "NoSuchKey")
        );
        assert!(ok.to_row().starts_with("b,k,,succeeded,200,,"));
        // A row of an older s3ferry (error code first) still reads the same.
        let old = ReportRow::parse_row("b,k,,failed,NoSuchKey,404,gone").unwrap();
        assert_eq!(
            (old.http_status, old.error_code.as_str()),
            (404, "NoSuchKey")
        );
    }

    /// Manifests and pairs files saved by a spreadsheet start with a byte order mark.
    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_bucket() {
        let e = ManifestEntry::parse_row("\u{feff}src,a.txt\r").unwrap();
        assert_eq!((e.bucket.as_str(), e.key.as_str()), ("src", "a.txt"));
        let p = BucketPair::parse_row("\u{feff}src,dst").unwrap();
        assert_eq!(p.source, "src");
    }

    #[test]
    fn pairs() {
        assert_eq!(
            BucketPair::parse_row("src,dst,backup/").unwrap(),
            BucketPair {
                source: "src".into(),
                destination: "dst".into(),
                prefix: "backup/".into()
            }
        );
        assert!(BucketPair::parse_row("same,same").is_err());
        assert!(BucketPair::parse_row("same,same,p/").is_ok());
        assert!(BucketPair::parse_row("a").is_err());
    }

    proptest! {
        #[test]
        fn any_key_round_trips(k in "\\PC{1,40}|[ +%/,\"\n\t]{1,10}") {
            prop_assert_eq!(decode_key(&encode_key(&k)).unwrap(), k);
        }
    }
}
