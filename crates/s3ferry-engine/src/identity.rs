//! Settling "same content?" for same-size pairs the planner could not settle from listings:
//! recompute a local file's ETag the way the remote side made it (with a hash cache keyed by
//! path, size, mtime, inode and ctime, so an unchanged file is read once), compare full-object
//! CRC64NVME checksums, or compare stored modification times.

use std::time::SystemTime;

use base64::Engine as _;
use futures::StreamExt;
use s3ferry_store::checksum::{candidate_part_sizes, crc64_to_b64, Crc64, EtagBuilder, EtagShape};
use s3ferry_store::{ErrorKind, GetOptions, ObjectMeta, Result, StoreError};

use crate::journal::{FileId, Journal};
use crate::plan::{Action, Check, CopyReason, SkipReason};
use crate::walk::{Entry, Side, SideKind};

/// At most this many candidate part sizes are tried for a foreign multipart ETag.
const MAX_CANDIDATES: usize = 3;

fn file_id(side: &Side, e: &Entry) -> Option<FileId> {
    let ns = |t: SystemTime| match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(d) => -(d.duration().as_nanos() as i64),
    };
    Some(FileId {
        path: format!(
            "{}/{}",
            side.store.describe().trim_end_matches('/'),
            side.key(&e.rel)
        ),
        size: e.meta.size,
        mtime_ns: ns(e.meta.mtime?),
        inode: e.meta.inode.unwrap_or(0),
        ctime_ns: e.meta.ctime.map(ns).unwrap_or(0),
    })
}

enum Hasher {
    Etag(EtagBuilder),
    Crc(Crc64),
}

/// Hash a local entry (cached). `algo` is `crc64` or `etag:<part size>:<multipart>`.
async fn local_hash(side: &Side, e: &Entry, algo: &str, journal: &Journal) -> Result<String> {
    let id = file_id(side, e);
    let jerr = |e: crate::journal::JournalError| {
        StoreError::new(ErrorKind::Other, "journal", e.to_string())
    };
    if let Some(id) = &id {
        if let Some(v) = journal.cached_hash(id, algo).await.map_err(jerr)? {
            return Ok(v);
        }
    }
    let mut h = match algo.strip_prefix("etag:") {
        Some(rest) => {
            let (ps, mp) = rest.split_once(':').unwrap_or((rest, "1"));
            Hasher::Etag(EtagBuilder::new(ps.parse().unwrap_or(1), mp == "1"))
        }
        None => Hasher::Crc(Crc64::default()),
    };
    let key = side.key(&e.rel);
    let got = side.store.get(&key, GetOptions::new()).await?;
    let mut body = got.body;
    let mut n = 0u64;
    while let Some(chunk) = body.next().await {
        let c = chunk?;
        n += c.len() as u64;
        match &mut h {
            Hasher::Etag(b) => b.update(&c),
            Hasher::Crc(c2) => c2.update(&c),
        }
    }
    if n != e.meta.size {
        return Err(StoreError::new(
            ErrorKind::Transient,
            "hash",
            "file changed while it was being hashed",
        )
        .with_key(key));
    }
    let v = match h {
        Hasher::Etag(b) => b.finish(),
        Hasher::Crc(c) => crc64_to_b64(c.finish()),
    };
    if let Some(id) = &id {
        journal.store_hash(id, algo, &v);
    }
    Ok(v)
}

async fn remote_head(side: &Side, e: &Entry) -> Result<ObjectMeta> {
    side.store.head(&side.key(&e.rel)).await
}

async fn crc_of(side: &Side, e: &Entry, journal: &Journal) -> Result<Option<String>> {
    match side.kind {
        SideKind::Local => local_hash(side, e, "crc64", journal).await.map(Some),
        SideKind::Remote => Ok(remote_head(side, e).await?.crc64nvme.map(crc64_to_b64)),
    }
}

async fn mtime_of(side: &Side, e: &Entry) -> Result<Option<SystemTime>> {
    match side.kind {
        SideKind::Local => Ok(e.meta.mtime),
        SideKind::Remote => Ok(remote_head(side, e).await?.mtime),
    }
}

/// A HEAD that may not tell (denied, gone, SSE-C, a store without parts): the comparison goes on
/// with what else there is.
fn may_not_tell(e: &s3ferry_store::StoreError) -> bool {
    matches!(
        e.kind,
        ErrorKind::NotFound
            | ErrorKind::PermissionDenied
            | ErrorKind::InvalidInput
            | ErrorKind::Unsupported
    )
}

/// The user metadata rclone stores with a multipart upload: the whole object's MD5, base64.
const RCLONE_MD5: &str = "md5chksum";

/// Resolve a [`Check`] into `Copy(Changed)` or a skip.
pub async fn resolve_check(
    check: Check,
    src: &Side,
    dst: &Side,
    s: &Entry,
    d: &Entry,
    journal: &Journal,
    part_size: u64,
) -> Result<Action> {
    let changed = Action::Copy(CopyReason::Changed);
    match check {
        Check::LocalEtag => {
            let (lside, rside, le, re) = if src.kind == SideKind::Local {
                (src, dst, s, d)
            } else {
                (dst, src, d, s)
            };
            let etag = re.meta.etag.clone().unwrap_or_default();
            let same = |yes: bool| {
                if yes {
                    Action::Skip(SkipReason::SameContent)
                } else {
                    Action::Copy(CopyReason::Changed)
                }
            };
            let parts = match re.meta.etag_shape() {
                EtagShape::Md5 => {
                    let algo = format!("etag:{}:0", le.meta.size.max(1));
                    return Ok(same(local_hash(lside, le, &algo, journal).await? == etag));
                }
                EtagShape::Multipart(n) => n,
                EtagShape::Opaque => return Ok(changed),
            };
            // A multipart ETag: a whole-object hash the object carries decides with one read of
            // the file (a full-object CRC64NVME, as s3ferry and recent AWS tools write, or
            // rclone's md5chksum), from one HEAD. A HEAD we may not make (denied, gone, SSE-C)
            // leaves the ETag to decide.
            match remote_head(rside, re).await {
                Ok(head) => {
                    if let Some(crc) = head.crc64nvme {
                        let local = local_hash(lside, le, "crc64", journal).await?;
                        return Ok(same(local == crc64_to_b64(crc)));
                    }
                    if let Some(md5) = head
                        .metadata
                        .as_ref()
                        .and_then(|m| m.get(RCLONE_MD5))
                        .and_then(|b| {
                            base64::engine::general_purpose::STANDARD
                                .decode(b.trim())
                                .ok()
                        })
                        .filter(|d| d.len() == 16)
                    {
                        let algo = format!("etag:{}:0", le.meta.size.max(1));
                        let local = local_hash(lside, le, &algo, journal).await?;
                        return Ok(same(local == hex::encode(md5)));
                    }
                }
                Err(e) if may_not_tell(&e) => {}
                Err(e) => return Err(e),
            }
            // The uploader's part size, learnt from the store (S3: HEAD with partNumber=1 says
            // part 1's length): where parts of that size make the ETag's count (a uniform
            // layout, as aws-cli, rclone and s5cmd use), the ETag recomputed with it decides,
            // either way. Other layouts go on to the candidates.
            match rside.store.head_part(&rside.key(&re.rel), 1).await {
                Ok((p, n))
                    if u64::from(n) == parts && p > 0 && le.meta.size.div_ceil(p) == parts =>
                {
                    let local = local_hash(lside, le, &format!("etag:{p}:1"), journal).await?;
                    return Ok(same(local == etag));
                }
                Ok(_) => {}
                Err(e) if may_not_tell(&e) => {}
                Err(e) => return Err(e),
            }
            // The ETag, recomputed with the part sizes that give its part count (ours first).
            for p in candidate_part_sizes(le.meta.size, parts, part_size)
                .into_iter()
                .take(MAX_CANDIDATES)
            {
                if local_hash(lside, le, &format!("etag:{p}:1"), journal).await? == etag {
                    return Ok(Action::Skip(SkipReason::SameContent));
                }
            }
            // None reproduces it (aws-cli with another multipart_chunksize, s5cmd -p, rclone
            // --s3-chunk-size, and nothing else to go by): not known to differ.
            Ok(Action::Copy(CopyReason::NotComparable))
        }
        Check::Checksum => match (
            crc_of(src, s, journal).await?,
            crc_of(dst, d, journal).await?,
        ) {
            (Some(a), Some(b)) if a == b => Ok(Action::Skip(SkipReason::SameContent)),
            _ => Ok(changed),
        },
        Check::Mtime => match (mtime_of(src, s).await?, mtime_of(dst, d).await?) {
            (Some(a), Some(b)) if a == b => Ok(Action::Skip(SkipReason::SameTime)),
            (Some(_), Some(_)) => Ok(changed),
            // No stored mtime on the remote side: fall back to "not newer than the copy".
            (sm, dm) => {
                let sm = sm.or(s.meta.last_modified);
                let dm = dm.or(d.meta.last_modified);
                match (sm, dm) {
                    (Some(a), Some(b)) if a <= b => Ok(Action::Skip(SkipReason::SameTime)),
                    _ => Ok(changed),
                }
            }
        },
    }
}
