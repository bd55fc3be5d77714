//! The pure planner: (source entry, destination entry, base record) x options -> action.
//! No I/O. Where the answer needs content (hashing a file, a HEAD for a checksum or mtime),
//! it returns [`Action::Check`] and the executor resolves it with [`resolve_check`].

use std::time::SystemTime;

use s3ferry_store::checksum::EtagShape;
use s3ferry_store::key::{key_to_relpath, UnsafeKey};
use s3ferry_store::ObjectMeta;

use crate::walk::{Entry, SideKind};

#[derive(Clone, Debug, Default)]
pub struct PlanOptions {
    pub delete: bool,
    pub size_only: bool,
    /// Compare content even when sizes, times and the state say nothing changed.
    pub checksum: bool,
    /// Same-size objects whose modification times differ at all are changed.
    pub exact_timestamps: bool,
    pub since: Option<SystemTime>,
    pub src_kind: Option<SideKind>,
    pub dst_kind: Option<SideKind>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CopyReason {
    New,
    Size,
    /// The source was modified after the destination was written.
    Newer,
    /// Content identity differs (ETag/checksum/time check).
    Changed,
    /// The content could not be compared (a multipart ETag whose part size is none we know,
    /// with no whole-object hash beside it): copied, by the rule "when in doubt, copy".
    NotComparable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// The state DB says neither side changed since the last sync.
    Unchanged,
    /// Same content (ETag / checksum).
    SameContent,
    SameSize,
    SameTime,
    /// Source modified before `--since`.
    BeforeSince,
    /// A zero-byte `dir/` marker object; local directories are implicit.
    DirMarker,
}

/// How to settle a same-size pair the planner cannot settle from listings alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Check {
    /// Hash the local side the way the remote side's ETag was made and compare.
    LocalEtag,
    /// HEAD the remote side(s) for full-object checksums; copy if unknown or different.
    Checksum,
    /// HEAD the remote side(s) for the stored mtime and compare exactly.
    Mtime,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Copy(CopyReason),
    Skip(SkipReason),
    Check(Check),
    Delete,
    /// Destination-only entry kept because `--delete` was not given.
    Extra,
    /// The key cannot be written to a local destination.
    Refuse(UnsafeKey),
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Copy(_) => "copy",
            Self::Skip(_) => "skip",
            Self::Check(_) => "check",
            Self::Delete => "delete",
            Self::Extra => "extra",
            Self::Refuse(_) => "refuse",
        }
    }
}

impl CopyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Size => "size differs",
            Self::Newer => "source is newer",
            Self::Changed => "content differs",
            Self::NotComparable => {
                "content not comparable (multipart ETag of an unknown part size, no whole-object checksum)"
            }
        }
    }
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unchanged => "unchanged since last sync",
            Self::SameContent => "same content",
            Self::SameSize => "same size",
            Self::SameTime => "same size and time",
            Self::BeforeSince => "older than --since",
            Self::DirMarker => "directory marker",
        }
    }
}

/// How many deletions are allowed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MaxDelete {
    Count(u64),
    Percent(f64),
}

impl MaxDelete {
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad =
            || format!("bad --max-delete {s:?}: use a count like 100 or a percentage like 25%");
        match s.trim().strip_suffix('%') {
            Some(p) => {
                let v: f64 = p.trim().parse().map_err(|_| bad())?;
                if !(0.0..=100.0).contains(&v) {
                    return Err(bad());
                }
                Ok(Self::Percent(v))
            }
            None => s.trim().parse().map(Self::Count).map_err(|_| bad()),
        }
    }

    /// As the option is written: `100` or `25%`.
    pub fn as_option(&self) -> String {
        match *self {
            Self::Count(n) => n.to_string(),
            Self::Percent(p) => format!("{p}%"),
        }
    }

    pub fn allows(&self, deletes: u64, total: u64) -> bool {
        match *self {
            Self::Count(n) => deletes <= n,
            Self::Percent(p) => total == 0 || (deletes as f64) <= (total as f64) * p / 100.0,
        }
    }
}

/// The default limit: deletions may remove at most half of the destination.
/// What the state DB remembers of a pair after the last successful sync of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseRecord {
    pub src_sig: String,
    pub dst_sig: String,
}

/// A signature that changes whenever the object or file changes: size + mtime + inode + ctime
/// for local files (ctime catches an in-place edit whose mtime was set back), size + ETag for
/// remote objects.
pub fn signature(kind: SideKind, m: &ObjectMeta) -> Option<String> {
    match kind {
        SideKind::Local => {
            let ns = |t: Option<SystemTime>| {
                t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                    .map(|d| d.as_nanos())
            };
            Some(format!(
                "L{}:{}:{}:{}",
                m.size,
                ns(m.mtime)?,
                m.inode.unwrap_or(0),
                ns(m.ctime).unwrap_or(0)
            ))
        }
        SideKind::Remote => Some(format!("E{}:{}", m.size, m.etag.as_deref()?)),
    }
}

/// Has an entry changed since the signature its side had at the base (the last sync of the
/// key)? No base signature, or an entry without one, counts as changed.
pub fn changed_since(kind: SideKind, base_sig: Option<&str>, e: &Entry) -> bool {
    match (signature(kind, &e.meta), base_sig) {
        (Some(now), Some(then)) => now != then,
        _ => true,
    }
}

/// What metadata alone says about whether two objects hold the same bytes (symmetric):
/// `Some(false)` when the sizes differ, or both carry full-object checksums or plain-MD5 ETags
/// that differ; `Some(true)` when they carry an equal checksum or an equal ETag; `None` when
/// only reading content (a [`Check`]) can tell.
pub fn same_content(a: &ObjectMeta, b: &ObjectMeta) -> Option<bool> {
    if a.size != b.size {
        return Some(false);
    }
    if let (Some(x), Some(y)) = (a.crc64nvme, b.crc64nvme) {
        return Some(x == y);
    }
    match (a.etag.as_deref(), b.etag.as_deref()) {
        (Some(x), Some(y)) if x == y => Some(true),
        (Some(_), Some(_))
            if a.etag_shape() == EtagShape::Md5 && b.etag_shape() == EtagShape::Md5 =>
        {
            Some(false)
        }
        _ => None,
    }
}

fn modified(m: &ObjectMeta) -> Option<SystemTime> {
    m.mtime.or(m.last_modified)
}

/// Decide what to do with one key.
pub fn plan(
    src: Option<&Entry>,
    dst: Option<&Entry>,
    base: Option<&BaseRecord>,
    o: &PlanOptions,
) -> Action {
    let src_kind = o.src_kind.unwrap_or(SideKind::Remote);
    let dst_kind = o.dst_kind.unwrap_or(SideKind::Remote);
    let (s, d) = match (src, dst) {
        (None, None) => return Action::Skip(SkipReason::SameContent),
        (None, Some(_)) => {
            return if o.delete {
                Action::Delete
            } else {
                Action::Extra
            }
        }
        (Some(s), d) => (s, d),
    };
    if s.rel.ends_with('/') && s.meta.size == 0 && dst_kind == SideKind::Local {
        return Action::Skip(SkipReason::DirMarker);
    }
    if dst_kind == SideKind::Local {
        let why = match key_to_relpath(&s.rel) {
            Err(UnsafeKey::EmptySegment) if s.rel.ends_with('/') && !s.rel.contains("//") => {
                Some(UnsafeKey::DirectoryMarker)
            }
            Err(w) => Some(w),
            Ok(_) => None,
        };
        if let Some(w) = why {
            return Action::Refuse(w);
        }
    }
    if o.since
        .is_some_and(|since| modified(&s.meta).is_some_and(|t| t < since))
    {
        return Action::Skip(SkipReason::BeforeSince);
    }
    let Some(d) = d else {
        return Action::Copy(CopyReason::New);
    };
    if s.meta.size != d.meta.size {
        return Action::Copy(CopyReason::Size);
    }
    if o.size_only {
        return Action::Skip(SkipReason::SameSize);
    }
    if !o.checksum {
        if let Some(b) = base {
            if !changed_since(src_kind, Some(&b.src_sig), s)
                && !changed_since(dst_kind, Some(&b.dst_sig), d)
            {
                return Action::Skip(SkipReason::Unchanged);
            }
        }
    }
    match (src_kind, dst_kind) {
        (SideKind::Local, SideKind::Local) => {
            if o.checksum {
                Action::Check(Check::Checksum)
            } else if s.meta.mtime == d.meta.mtime {
                Action::Skip(SkipReason::SameTime)
            } else {
                Action::Copy(CopyReason::Newer)
            }
        }
        (SideKind::Remote, SideKind::Remote) => {
            if o.exact_timestamps {
                return Action::Check(Check::Mtime);
            }
            match same_content(&s.meta, &d.meta) {
                Some(true) => Action::Skip(SkipReason::SameContent),
                Some(false) => Action::Copy(CopyReason::Changed),
                None => Action::Check(Check::Checksum),
            }
        }
        (SideKind::Local, SideKind::Remote) | (SideKind::Remote, SideKind::Local) => {
            let (local, remote) = if src_kind == SideKind::Local {
                (s, d)
            } else {
                (d, s)
            };
            if o.exact_timestamps {
                return Action::Check(Check::Mtime);
            }
            // A local source edited after the object was written is changed: no need to read it.
            // LastModified is truncated to whole seconds, so a file written in the same second
            // just before its upload looks newer: only a full second later counts, the rest is
            // settled by content.
            if !o.checksum && src_kind == SideKind::Local {
                if let (Some(lm), Some(rm)) = (local.meta.mtime, remote.meta.last_modified) {
                    if lm >= rm + std::time::Duration::from_secs(1) {
                        return Action::Copy(CopyReason::Newer);
                    }
                }
            }
            match remote.meta.etag_shape() {
                EtagShape::Md5 | EtagShape::Multipart(_) => Action::Check(Check::LocalEtag),
                EtagShape::Opaque if o.checksum => Action::Check(Check::Checksum),
                EtagShape::Opaque => Action::Check(Check::Mtime),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    fn local(rel: &str, size: u64, mtime: u64) -> Entry {
        Entry {
            rel: rel.into(),
            meta: ObjectMeta {
                key: rel.into(),
                size,
                mtime: Some(t(mtime)),
                last_modified: Some(t(mtime)),
                inode: Some(7),
                ..Default::default()
            },
        }
    }

    fn remote(rel: &str, size: u64, lm: u64, etag: &str) -> Entry {
        Entry {
            rel: rel.into(),
            meta: ObjectMeta {
                key: rel.into(),
                size,
                last_modified: Some(t(lm)),
                etag: Some(etag.into()),
                ..Default::default()
            },
        }
    }

    fn up() -> PlanOptions {
        PlanOptions {
            src_kind: Some(SideKind::Local),
            dst_kind: Some(SideKind::Remote),
            ..Default::default()
        }
    }

    const MD5: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn upload_decisions() {
        let o = up();
        assert_eq!(
            plan(Some(&local("a", 1, 10)), None, None, &o),
            Action::Copy(CopyReason::New)
        );
        assert_eq!(
            plan(
                Some(&local("a", 1, 10)),
                Some(&remote("a", 2, 20, MD5)),
                None,
                &o
            ),
            Action::Copy(CopyReason::Size)
        );
        assert_eq!(
            plan(
                Some(&local("a", 1, 30)),
                Some(&remote("a", 1, 20, MD5)),
                None,
                &o
            ),
            Action::Copy(CopyReason::Newer)
        );
        // Within LastModified's one-second granularity: settled by content, not by time.
        let mut same_second = local("a", 1, 20);
        same_second.meta.mtime = Some(t(20) + Duration::from_millis(700));
        assert_eq!(
            plan(Some(&same_second), Some(&remote("a", 1, 20, MD5)), None, &o),
            Action::Check(Check::LocalEtag)
        );
        assert_eq!(
            plan(
                Some(&local("a", 1, 10)),
                Some(&remote("a", 1, 20, MD5)),
                None,
                &o
            ),
            Action::Check(Check::LocalEtag)
        );
        assert_eq!(
            plan(None, Some(&remote("a", 1, 20, MD5)), None, &o),
            Action::Extra
        );
        // An encrypted object's ETag is not an MD5 of the file (F26): the stored mtime decides.
        for enc in ["aws:kms", "aws:kms:dsse", "SSE-C"] {
            let mut r = remote("a", 1, 20, MD5);
            r.meta.encryption = Some(enc.into());
            assert_eq!(
                plan(Some(&local("a", 1, 10)), Some(&r), None, &o),
                Action::Check(Check::Mtime),
                "{enc}"
            );
        }
        let mut sse_s3 = remote("a", 1, 20, MD5);
        sse_s3.meta.encryption = Some("AES256".into());
        assert_eq!(
            plan(Some(&local("a", 1, 10)), Some(&sse_s3), None, &o),
            Action::Check(Check::LocalEtag),
            "SSE-S3 ETags are MD5s"
        );
        let del = PlanOptions {
            delete: true,
            ..up()
        };
        assert_eq!(
            plan(None, Some(&remote("a", 1, 20, MD5)), None, &del),
            Action::Delete
        );
        let so = PlanOptions {
            size_only: true,
            ..up()
        };
        assert_eq!(
            plan(
                Some(&local("a", 1, 30)),
                Some(&remote("a", 1, 20, MD5)),
                None,
                &so
            ),
            Action::Skip(SkipReason::SameSize)
        );
    }

    #[test]
    fn state_record_short_circuits_only_when_both_sides_match() {
        let o = up();
        let s = local("a", 1, 10);
        let d = remote("a", 1, 20, MD5);
        let b = BaseRecord {
            src_sig: signature(SideKind::Local, &s.meta).unwrap(),
            dst_sig: signature(SideKind::Remote, &d.meta).unwrap(),
        };
        assert_eq!(
            plan(Some(&s), Some(&d), Some(&b), &o),
            Action::Skip(SkipReason::Unchanged)
        );
        let d2 = remote("a", 1, 20, "ffffffffffffffffffffffffffffffff");
        assert_eq!(
            plan(Some(&s), Some(&d2), Some(&b), &o),
            Action::Check(Check::LocalEtag)
        );
        let forced = PlanOptions {
            checksum: true,
            ..up()
        };
        assert_eq!(
            plan(Some(&s), Some(&d), Some(&b), &forced),
            Action::Check(Check::LocalEtag)
        );
    }

    #[test]
    fn unsafe_keys_refused_for_local_destinations() {
        let o = PlanOptions {
            src_kind: Some(SideKind::Remote),
            dst_kind: Some(SideKind::Local),
            ..Default::default()
        };
        for k in ["../x", "/abs", "a/../../b", "a//b", "nul\0"] {
            assert!(
                matches!(
                    plan(Some(&remote(k, 1, 1, MD5)), None, None, &o),
                    Action::Refuse(_)
                ),
                "{k:?}"
            );
        }
        assert_eq!(
            plan(Some(&remote("d/", 0, 1, MD5)), None, None, &o),
            Action::Skip(SkipReason::DirMarker)
        );
        assert_eq!(
            plan(Some(&remote("d/", 3, 1, MD5)), None, None, &o),
            Action::Refuse(UnsafeKey::DirectoryMarker)
        );
        // The same keys are fine between remote stores.
        let rr = PlanOptions::default();
        assert_eq!(
            plan(Some(&remote("a//b", 1, 1, MD5)), None, None, &rr),
            Action::Copy(CopyReason::New)
        );
    }

    #[test]
    fn since_skips_old_sources_but_never_deletes_them() {
        let o = PlanOptions {
            since: Some(t(100)),
            delete: true,
            ..up()
        };
        assert_eq!(
            plan(Some(&local("a", 1, 50)), None, None, &o),
            Action::Skip(SkipReason::BeforeSince)
        );
        assert_eq!(
            plan(Some(&local("a", 1, 150)), None, None, &o),
            Action::Copy(CopyReason::New)
        );
    }

    proptest! {
        /// Model: an action never deletes a key the source has, never copies without a reason,
        /// and never skips a pair whose sizes differ (unless --since says so).
        #[test]
        fn planner_invariants(
            has_s in any::<bool>(), has_d in any::<bool>(), ss in 0u64..3, ds in 0u64..3,
            sm in 0u64..4, dm in 0u64..4, delete in any::<bool>(), size_only in any::<bool>(),
            checksum in any::<bool>(), same_etag in any::<bool>(), kinds in 0u8..4,
        ) {
            let kind = |b: bool| if b { SideKind::Local } else { SideKind::Remote };
            let (sk, dk) = (kind(kinds & 1 == 1), kind(kinds & 2 == 2));
            let mk = |k: SideKind, size: u64, m: u64, etag: &str| match k {
                SideKind::Local => local("k", size, m),
                SideKind::Remote => remote("k", size, m, etag),
            };
            let s = has_s.then(|| mk(sk, ss, sm, MD5));
            let d = has_d.then(|| mk(dk, ds, dm, if same_etag { MD5 } else { "00000000000000000000000000000000" }));
            let o = PlanOptions { delete, size_only, checksum, src_kind: Some(sk), dst_kind: Some(dk), ..Default::default() };
            let a = plan(s.as_ref(), d.as_ref(), None, &o);
            match (&s, &d) {
                (Some(_), _) => prop_assert!(!matches!(a, Action::Delete | Action::Extra)),
                (None, Some(_)) => prop_assert_eq!(&a, &if delete { Action::Delete } else { Action::Extra }),
                _ => {}
            }
            if let (Some(s), Some(d)) = (&s, &d) {
                if s.meta.size != d.meta.size {
                    prop_assert_eq!(&a, &Action::Copy(CopyReason::Size));
                }
            }
            if let (Some(_), None) = (&s, &d) {
                prop_assert_eq!(&a, &Action::Copy(CopyReason::New));
            }
        }
    }

    #[test]
    fn content_helpers_are_symmetric() {
        let r = |size, etag: &str| remote("k", size, 1, etag).meta;
        let cases = [
            (r(1, MD5), r(1, MD5), Some(true)),
            (r(1, MD5), r(2, MD5), Some(false)),
            (
                r(1, MD5),
                r(1, "ffffffffffffffffffffffffffffffff"),
                Some(false),
            ),
            (r(1, "abc-2"), r(1, MD5), None),
            (r(1, "abc-2"), r(1, "abc-2"), Some(true)),
        ];
        for (a, b, want) in cases {
            assert_eq!(same_content(&a, &b), want, "{a:?} {b:?}");
            assert_eq!(same_content(&b, &a), want, "symmetric");
        }
        // SSE-KMS / SSE-C: 32 hex digits that are not MD5s; two different ones say nothing.
        let kms = |etag: &str| ObjectMeta {
            encryption: Some("aws:kms".into()),
            ..r(1, etag)
        };
        assert_eq!(
            same_content(&kms(MD5), &r(1, "ffffffffffffffffffffffffffffffff")),
            None
        );
        assert_eq!(same_content(&kms(MD5), &kms(MD5)), Some(true));
        let mut c1 = r(1, "abc-2");
        let mut c2 = r(1, "def-3");
        c1.crc64nvme = Some(7);
        c2.crc64nvme = Some(7);
        assert_eq!(same_content(&c1, &c2), Some(true), "checksums decide");
        let l = local("a", 1, 10);
        let sig = signature(SideKind::Local, &l.meta).unwrap();
        assert!(!changed_since(SideKind::Local, Some(&sig), &l));
        assert!(changed_since(
            SideKind::Local,
            Some(&sig),
            &local("a", 1, 11)
        ));
        assert!(changed_since(SideKind::Local, None, &l));
    }
}
