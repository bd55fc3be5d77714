//! Keys are kept exactly as the bucket has them (`a//b` stays `a//b`). All safety checks for
//! turning a key into a local path live in ONE place: [`key_to_relpath`].

use std::fmt;
use std::path::{Component, Path, PathBuf};

/// Longest file-name segment most local file systems accept.
pub const MAX_SEGMENT_BYTES: usize = 255;
/// S3's key length limit.
pub const MAX_KEY_BYTES: usize = 1024;

/// Why a key cannot become a local path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnsafeKey {
    Empty,
    Absolute,
    DotSegment,
    EmptySegment,
    ControlChar,
    SegmentTooLong(usize),
    KeyTooLong(usize),
    DirectoryMarker,
}

impl fmt::Display for UnsafeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "empty key"),
            Self::Absolute => write!(f, "key starts with '/'"),
            Self::DotSegment => write!(f, "key has a '.' or '..' segment"),
            Self::EmptySegment => write!(f, "key has an empty segment ('//')"),
            Self::ControlChar => write!(f, "key has a NUL or control character"),
            Self::SegmentTooLong(n) => {
                write!(f, "key has a {n}-byte segment (limit {MAX_SEGMENT_BYTES})")
            }
            Self::KeyTooLong(n) => write!(f, "key is {n} bytes (limit {MAX_KEY_BYTES})"),
            Self::DirectoryMarker => write!(f, "non-empty object whose key ends with '/'"),
        }
    }
}

/// THE key -> relative path mapper. A key maps to a path only if every segment is a plain
/// file name: no `.`/`..`, no empty segment, no leading `/`, no control characters, no segment
/// longer than 255 bytes. The result never escapes the directory it is joined to.
pub fn key_to_relpath(key: &str) -> Result<PathBuf, UnsafeKey> {
    if key.is_empty() {
        return Err(UnsafeKey::Empty);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(UnsafeKey::KeyTooLong(key.len()));
    }
    if key.starts_with('/') {
        return Err(UnsafeKey::Absolute);
    }
    if key.chars().any(|c| c.is_control()) {
        return Err(UnsafeKey::ControlChar);
    }
    let mut path = PathBuf::new();
    for seg in key.split('/') {
        match seg {
            "" => return Err(UnsafeKey::EmptySegment),
            "." | ".." => return Err(UnsafeKey::DotSegment),
            s if s.len() > MAX_SEGMENT_BYTES => return Err(UnsafeKey::SegmentTooLong(s.len())),
            s => path.push(s),
        }
    }
    // Belt and braces: the components must all be normal names.
    if !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(UnsafeKey::DotSegment);
    }
    Ok(path)
}

/// The inverse: a relative path made of normal UTF-8 components -> key. `None` for anything else
/// (non-UTF-8 names cannot be S3 keys).
pub fn relpath_to_key(rel: &Path) -> Option<String> {
    let mut key = String::new();
    for c in rel.components() {
        match c {
            Component::Normal(s) => {
                if !key.is_empty() {
                    key.push('/');
                }
                key.push_str(s.to_str()?);
            }
            _ => return None,
        }
    }
    (!key.is_empty()).then_some(key)
}

/// Where a sync side lives: a local directory or `s3://bucket/prefix`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl Location {
    /// Parse `s3://bucket[/prefix]` or a local path. A non-empty prefix is treated as a
    /// directory: `s3://b/p` and `s3://b/p/` both mean the keys under `p/`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            validate_bucket(bucket).map_err(|e| format!("bad S3 URI {s:?}: {e}"))?;
            let mut prefix = prefix.to_string();
            if !prefix.is_empty() && !prefix.ends_with('/') {
                prefix.push('/');
            }
            return Ok(Self::S3 {
                bucket: bucket.to_string(),
                prefix,
            });
        }
        if let Some(hint) = scheme_hint(s) {
            return Err(format!(
                "{s:?} looks like a URI, not a local path: {hint} (a local path that really starts like this: ./{s})"
            ));
        }
        if s.contains("://") {
            return Err(format!(
                "unsupported URI {s:?}: use s3://bucket/prefix or a local path"
            ));
        }
        if s.is_empty() {
            return Err("empty path".into());
        }
        Ok(Self::Local(PathBuf::from(s)))
    }

    /// [`Location::parse`] for commands that name objects (`cp`, `rm`): the key part of an
    /// `s3://` URI is kept exactly as typed (`s3://b/k` is the object `k`, `s3://b/p/` the
    /// prefix `p/`).
    pub fn parse_exact(s: &str) -> Result<Self, String> {
        match Self::parse(s)? {
            Self::S3 { bucket, .. } => {
                let rest = &s["s3://".len()..];
                let key = rest.split_once('/').map(|(_, k)| k).unwrap_or_default();
                Ok(Self::S3 {
                    bucket,
                    prefix: key.to_string(),
                })
            }
            local => Ok(local),
        }
    }

    pub fn is_s3(&self) -> bool {
        matches!(self, Self::S3 { .. })
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local(p) => write!(f, "{}", p.display()),
            Self::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// URI schemes a mistyped location starts with; a "local path" `s3:/bucket` would otherwise
/// create a directory named `s3:` and sync into it.
const S3_LIKE: &[&str] = &["s3", "s3a", "s3n"];
const OTHER_SCHEMES: &[&str] = &[
    "http", "https", "gs", "gcs", "az", "abfs", "abfss", "wasb", "wasbs", "file", "ftp", "sftp",
];

/// When `s` starts with a URI scheme (`s3:/b`, `s3:b`, `s3a://b`, `https:`, `gs:` ...) other than
/// a well-formed `s3://`, what the user probably meant.
fn scheme_hint(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once(':')?;
    let lower = scheme.to_ascii_lowercase();
    if S3_LIKE.contains(&lower.as_str()) {
        if lower == "s3" && rest.starts_with("//") && scheme == "s3" {
            return None; // a real s3:// URI
        }
        let path = rest.trim_start_matches('/');
        return Some(format!("did you mean s3://{path}?"));
    }
    if OTHER_SCHEMES.contains(&lower.as_str()) {
        return Some(match lower.as_str() {
            "http" | "https" => {
                "give the bucket as s3://bucket/prefix and the server with --endpoint-url URL"
                    .to_string()
            }
            "file" => format!(
                "did you mean the local path {}?",
                rest.trim_start_matches("//")
            ),
            _ => format!(
                "{scheme}: is not supported; did you mean s3://{}? (other S3-compatible services: --endpoint-url)",
                rest.trim_start_matches('/')
            ),
        });
    }
    None
}

/// Bucket names per S3's rules (lenient on dots; strict on length and characters).
pub fn validate_bucket(b: &str) -> Result<(), String> {
    if b.is_empty() {
        return Err("missing bucket name".into());
    }
    if b.len() < 3 || b.len() > 63 {
        return Err(format!("bucket name {b:?} must be 3 to 63 characters"));
    }
    let ok = b
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.');
    if !ok
        || !b.as_bytes()[0].is_ascii_alphanumeric()
        || !b.as_bytes()[b.len() - 1].is_ascii_alphanumeric()
    {
        return Err(format!(
            "bucket name {b:?} may hold only lowercase letters, digits, '-' and '.', and must start and end with a letter or digit"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_keys_map() {
        assert_eq!(
            key_to_relpath("a/b c/ü+%.txt").unwrap(),
            PathBuf::from("a/b c/ü+%.txt")
        );
        assert_eq!(key_to_relpath("..a/b..").unwrap(), PathBuf::from("..a/b.."));
    }

    #[test]
    fn unsafe_keys_refused() {
        for (k, e) in [
            ("", UnsafeKey::Empty),
            ("/etc/passwd", UnsafeKey::Absolute),
            ("..", UnsafeKey::DotSegment),
            ("../x", UnsafeKey::DotSegment),
            ("a/../../b", UnsafeKey::DotSegment),
            ("p/..", UnsafeKey::DotSegment),
            ("./a", UnsafeKey::DotSegment),
            ("a//b", UnsafeKey::EmptySegment),
            ("d/", UnsafeKey::EmptySegment),
            ("a\0b", UnsafeKey::ControlChar),
            ("a\nb", UnsafeKey::ControlChar),
        ] {
            assert_eq!(key_to_relpath(k), Err(e), "{k:?}");
        }
        let long = "x".repeat(256);
        assert_eq!(key_to_relpath(&long), Err(UnsafeKey::SegmentTooLong(256)));
    }

    #[test]
    fn roundtrip() {
        let k = "dir/sub dir/file+1%.txt";
        assert_eq!(relpath_to_key(&key_to_relpath(k).unwrap()).unwrap(), k);
    }

    #[test]
    fn parse_locations() {
        assert_eq!(
            Location::parse("s3://my-bucket/a/b").unwrap(),
            Location::S3 {
                bucket: "my-bucket".into(),
                prefix: "a/b/".into()
            }
        );
        assert_eq!(
            Location::parse("s3://my-bucket").unwrap(),
            Location::S3 {
                bucket: "my-bucket".into(),
                prefix: "".into()
            }
        );
        assert!(Location::parse("s3://").is_err());
        assert!(Location::parse("s3://Bad_Bucket/x").is_err());
        assert!(Location::parse("gs://x/y").is_err());
        for (bad, hint) in [
            ("s3:/my-bucket/p", "s3://my-bucket/p"),
            ("s3:my-bucket", "s3://my-bucket"),
            ("s3a://my-bucket/x", "s3://my-bucket/x"),
            ("S3://my-bucket", "s3://my-bucket"),
            ("https://host/b", "--endpoint-url"),
            ("http:x", "--endpoint-url"),
            ("gs:b", "s3://b"),
        ] {
            let e = Location::parse(bad).unwrap_err();
            assert!(e.contains(hint), "{bad}: {e}");
        }
        assert_eq!(
            Location::parse("./s3:x").unwrap(),
            Location::Local("./s3:x".into())
        );
        assert_eq!(
            Location::parse("notes:2024").unwrap(),
            Location::Local("notes:2024".into())
        );
        assert_eq!(
            Location::parse("./dir").unwrap(),
            Location::Local("./dir".into())
        );
    }

    proptest::proptest! {
        #[test]
        fn mapped_paths_never_escape(key in "[a-z./\\\\\\x00 ]{0,12}") {
            if let Ok(p) = key_to_relpath(&key) {
                proptest::prop_assert!(p.components().all(|c| matches!(c, Component::Normal(_))));
                proptest::prop_assert_eq!(relpath_to_key(&p).unwrap(), key);
            }
        }
    }
}
