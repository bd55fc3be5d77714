//! `check`: prove that two sides hold the same objects, without copying anything. The two
//! sorted listings are merge-joined by relative key (as sync joins them: memory stays flat at
//! millions of keys); each key is `missing` (only in the first side), `extra` (only in the
//! second), or compared: by size, then by what the listings and HEADs say (full-object
//! checksums, plain-MD5 ETags, a local file hashed the way the remote ETag was made), and with
//! `download` by the CRC64NVME of the content read from both sides. A pair nothing can settle
//! without reading is `unverified` unless `download` is set. Every difference is an
//! [`Outcome::Differ`] record; equal keys are skips (listed with -v).

use std::sync::Arc;

use futures::StreamExt;
use s3ferry_engine::events::{Outcome, Record};
use s3ferry_engine::exec::{Done, Executor};
use s3ferry_engine::filter::Filters;
use s3ferry_engine::identity::resolve_check;
use s3ferry_engine::journal::Journal;
use s3ferry_engine::plan::{plan, same_content, Action, Check, CopyReason, PlanOptions};
use s3ferry_engine::walk::{entries, Entry, Join, Joined, Side};
use s3ferry_store::checksum::Crc64;
use s3ferry_store::{GetOptions, ObjectMeta, Result, StoreError};

#[derive(Debug)]
pub struct CheckSpec {
    pub a: Side,
    pub b: Side,
    pub filters: Filters,
    /// Read both sides of every same-size pair and compare the content.
    pub download: bool,
    /// The part size a local file is hashed with when the remote ETag does not say.
    pub part_size: u64,
}

struct Pair {
    rel: String,
    a: Option<Entry>,
    b: Option<Entry>,
}

/// Compare the two sides; the records go to the executor (and its reporter). A side that
/// cannot be listed ends the check with its error.
pub async fn run(spec: CheckSpec, exec: Arc<Executor>, journal: Arc<Journal>) -> Result<()> {
    spec.a.store.check().await?;
    spec.b.store.check().await?;
    let join = Join::new(vec![
        entries(spec.a.list(&spec.filters)),
        entries(spec.b.list(&spec.filters)),
    ]);
    // An entry that failed (a file that cannot be read) is its own failure; a listing that
    // fails ends the check.
    let pairs = futures::stream::unfold(Some(join), |join| async move {
        let mut join = join?;
        match join.next().await {
            Ok(Some(Joined::Row(mut r))) => {
                let pair = Pair {
                    rel: r.key.clone(),
                    a: r.entry(0),
                    b: r.entry(1),
                };
                Some((Ok(Ok(pair)), Some(join)))
            }
            Ok(Some(Joined::EntryError(_, e))) if e.key.is_some() => Some((Ok(Err(e)), Some(join))),
            Ok(Some(Joined::EntryError(_, e))) | Err(e) => Some((Err(e), None)),
            Ok(None) => None,
        }
    });
    let spec = Arc::new(spec);
    exec.run_once(
        pairs,
        |item: std::result::Result<Pair, StoreError>, _pass| {
            let (spec, journal) = (spec.clone(), journal.clone());
            async move {
                match item {
                    Ok(p) => compare(&spec, &journal, p).await,
                    Err(e) => Done::failed(e.key.clone().unwrap_or_default(), 0, e),
                }
            }
        },
    )
    .await
}

fn differ<I>(rel: String, why: impl Into<String>, size: u64) -> Done<I> {
    Done::Record(Record::new(rel, Outcome::Differ, why, size))
}

fn same<I>(rel: String, why: &str, size: u64) -> Done<I> {
    Done::Record(Record::new(rel, Outcome::Skip, why, size))
}

/// The record of one key.
async fn compare<I>(spec: &CheckSpec, journal: &Journal, p: Pair) -> Done<I> {
    let (a, b) = match (p.a, p.b) {
        (None, None) => return Done::Nothing,
        (Some(a), None) => {
            return differ(
                p.rel,
                format!("missing from {}", spec.b.describe()),
                a.meta.size,
            )
        }
        (None, Some(b)) => {
            return differ(
                p.rel,
                format!("extra: only in {}", spec.b.describe()),
                b.meta.size,
            )
        }
        (Some(a), Some(b)) => (a, b),
    };
    let size = a.meta.size;
    if a.meta.size != b.meta.size {
        return differ(
            p.rel,
            format!("size {} vs {}", a.meta.size, b.meta.size),
            size,
        );
    }
    if spec.download {
        return match content_equal(spec, &a, &b).await {
            Ok(true) => same(p.rel, "same content (read from both sides)", size),
            Ok(false) => differ(p.rel, "content differs (read from both sides)", size),
            Err(e) => Done::failed(p.rel, 0, e),
        };
    }
    match same_content(&a.meta, &b.meta) {
        Some(true) => return same(p.rel, "same checksum", size),
        Some(false) => return differ(p.rel, "content differs (checksum)", size),
        None => {}
    }
    let opts = PlanOptions {
        checksum: true,
        src_kind: Some(spec.a.kind),
        dst_kind: Some(spec.b.kind),
        ..Default::default()
    };
    match plan(Some(&a), Some(&b), None, &opts) {
        Action::Check(Check::LocalEtag) => {
            match resolve_check(
                Check::LocalEtag,
                &spec.a,
                &spec.b,
                &a,
                &b,
                journal,
                spec.part_size,
            )
            .await
            {
                Ok(Action::Skip(_)) => same(p.rel, "same content (local file hashed)", size),
                Ok(Action::Copy(CopyReason::NotComparable)) => differ(
                    p.rel,
                    "unverified: a multipart ETag of an unknown part size and no whole-object checksum (--download compares content)",
                    size,
                ),
                Ok(_) => differ(p.rel, "content differs (ETag)", size),
                Err(e) => Done::failed(p.rel, 0, e),
            }
        }
        _ => match heads(spec, &a, &b).await {
            Ok((x, y)) => match same_content(&x, &y) {
                Some(true) => same(p.rel, "same checksum", size),
                Some(false) => differ(p.rel, "content differs (checksum)", size),
                None => differ(
                    p.rel,
                    "unverified: no checksum both sides share (--download compares content)",
                    size,
                ),
            },
            Err(e) => Done::failed(p.rel, 0, e),
        },
    }
}

/// What a HEAD of each side says (full-object checksums are not in listings).
async fn heads(spec: &CheckSpec, a: &Entry, b: &Entry) -> Result<(ObjectMeta, ObjectMeta)> {
    let (ka, kb) = (spec.a.key(&a.rel), spec.b.key(&b.rel));
    futures::try_join!(spec.a.store.head(&ka), spec.b.store.head(&kb))
}

/// Read both objects as streams (nothing held in memory) and compare their CRC64NVME.
async fn content_equal(spec: &CheckSpec, a: &Entry, b: &Entry) -> Result<bool> {
    let x = crc_of(&spec.a, &a.rel, a.meta.size);
    let y = crc_of(&spec.b, &b.rel, b.meta.size);
    let (x, y) = futures::try_join!(x, y)?;
    Ok(x == y)
}

async fn crc_of(side: &Side, rel: &str, size: u64) -> Result<u64> {
    let key = side.key(rel);
    let got = side.store.get(&key, GetOptions::new()).await?;
    let mut body = got.body;
    let mut crc = Crc64::default();
    let mut n = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        n += chunk.len() as u64;
        crc.update(&chunk);
    }
    if n != size {
        return Err(StoreError::new(
            s3ferry_store::ErrorKind::Corrupt,
            "get",
            format!("read {n} bytes, the listing said {size}"),
        )
        .with_key(key));
    }
    Ok(crc.finish())
}
