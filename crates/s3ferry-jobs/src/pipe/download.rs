//! `pipe down`: an object (or a segmented upload, followed while it is written) to the output,
//! strictly in order; and `pipe join`: a finished segmented upload into one object,
//! server-side.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use s3ferry_engine::journal::Journal;
use s3ferry_engine::transfer::{
    cleanup_orphan_uploads, upload_parts, MultipartWriter, PartBody, RangedReader,
};
use s3ferry_store::checksum::{
    crc64nvme_combine, part_size_for, MAX_PARTS, MAX_PART_SIZE, MIN_PART_SIZE,
};
use s3ferry_store::{
    CopyOptions, CopySource, ErrorKind, GetOptions, ObjectMeta, PartLayout, PutOptions, StoreError,
    StoreExt,
};

use super::manifest::{manifest_key, parse_crc, Index, Manifest, Sealed, Segment};
use super::output::Output;
use super::{crc_hex, DownOptions, DownReport, PipeError, Target};

/// Write the object at `target` (or the segmented upload there) to `out`.
pub async fn down(
    target: Target,
    out: &mut Output,
    opts: DownOptions,
) -> Result<DownReport, PipeError> {
    let started = Instant::now();
    let uri = target.uri();
    if target.key.is_empty() {
        return Err(PipeError::Failed(format!(
            "{uri}: pipe down needs an object name, like s3://bucket/path/name"
        )));
    }
    target
        .store
        .check()
        .await
        .map_err(|e| PipeError::store(&uri, e))?;
    let mut rep = if opts.follow {
        segments(&target, out, &opts).await?
    } else {
        match target.store.head(&target.key).await {
            Ok(meta) => object(&target, meta, out, &opts).await?,
            Err(e) if e.kind == ErrorKind::NotFound => {
                let base = target.key.trim_end_matches('/');
                match target.store.head(&manifest_key(base)).await {
                    Ok(_) => segments(&target, out, &opts).await?,
                    Err(m) if m.kind == ErrorKind::NotFound => {
                        return Err(PipeError::Failed(format!(
                            "{uri}: no such object (nor a segmented upload: no {})",
                            target.at(&manifest_key(base))
                        )))
                    }
                    Err(m) => return Err(PipeError::store(&uri, m)),
                }
            }
            Err(e) => return Err(PipeError::store(&uri, e)),
        }
    };
    rep.uri = uri;
    rep.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(rep)
}

/// The outcome of copying one object to the output.
enum Copied {
    Done { crc: u64 },
    Closed,
}

/// Stream `meta` (pinned to its ETag) to `out` in parallel ranged GETs, in order.
async fn copy_to(
    target: &Target,
    key: &str,
    meta: ObjectMeta,
    out: &mut Output,
    opts: &DownOptions,
) -> Result<Copied, PipeError> {
    let uri = target.at(key);
    let size = meta.size;
    let etag = meta.etag.clone();
    let reader = RangedReader::new(target.store.clone(), key, meta, &opts.transfer);
    let layout = PartLayout::Uniform(opts.transfer.part_size.max(1));
    let mut parts = reader.ordered_parts(layout, opts.transfer.part_concurrency.max(1));
    let mut crc = 0u64;
    let mut total = 0u64;
    while let Some(p) = parts.next().await {
        let p = p.map_err(|e| read_error(&uri, etag.as_deref(), e))?;
        crc = crc64nvme_combine(crc, p.crc, p.data.len() as u64);
        total += p.data.len() as u64;
        if !out.write(p.data.clone()).await? {
            // The reader went away: stop quietly; dropping the stream aborts the reads.
            drop(parts);
            return Ok(Copied::Closed);
        }
    }
    if total != size {
        return Err(PipeError::Failed(format!(
            "{uri}: read {total} bytes, expected {size}"
        )));
    }
    Ok(Copied::Done { crc })
}

fn read_error(uri: &str, etag: Option<&str>, e: StoreError) -> PipeError {
    if e.kind == ErrorKind::PreconditionFailed {
        return PipeError::Failed(format!(
            "{uri} changed while it was being read (it no longer has ETag {}); the output is \
             incomplete",
            etag.unwrap_or("?")
        ));
    }
    PipeError::store(uri, e)
}

async fn object(
    target: &Target,
    meta: ObjectMeta,
    out: &mut Output,
    opts: &DownOptions,
) -> Result<DownReport, PipeError> {
    let uri = target.uri();
    let want = meta.crc64nvme;
    let bytes = meta.size;
    match copy_to(target, &target.key, meta, out, opts).await? {
        Copied::Closed => Ok(DownReport {
            bytes: out.written,
            closed_early: true,
            ..Default::default()
        }),
        Copied::Done { crc } => {
            if let Some(want) = want {
                if want != crc {
                    return Err(PipeError::Failed(format!(
                        "{uri}: the data read has CRC64NVME {}, the object says {}: corrupt read",
                        crc_hex(crc),
                        crc_hex(want)
                    )));
                }
            }
            Ok(DownReport {
                bytes,
                verified: want.is_some(),
                ..Default::default()
            })
        }
    }
}

/// Read the manifest; `None` if it does not exist.
async fn read_manifest(target: &Target, mkey: &str) -> Result<Option<Manifest>, PipeError> {
    let muri = target.at(mkey);
    match target.store.get_bytes(mkey).await {
        Ok(b) => Manifest::parse(&b)
            .map(Some)
            .map_err(|e| PipeError::Failed(format!("{muri}: {e}"))),
        Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PipeError::store(&muri, e)),
    }
}

/// The segments of a stream by number: from the manifest's own list, or from the sealed index
/// that lists them (fetched when first needed and kept until the reader moves past it).
#[derive(Default)]
struct SegmentList {
    cached: Option<(usize, Vec<Segment>)>,
}

impl SegmentList {
    async fn get(
        &mut self,
        target: &Target,
        base: &str,
        m: &Manifest,
        i: usize,
    ) -> Result<Segment, PipeError> {
        if i >= m.first_segment {
            return Ok(m.segments[i - m.first_segment].clone());
        }
        if let Some((first, segs)) = &self.cached {
            if let Some(s) = i.checked_sub(*first).and_then(|j| segs.get(j)) {
                return Ok(s.clone());
            }
        }
        let Some(x) = m
            .sealed
            .iter()
            .find(|x| (x.first..x.first + x.count).contains(&i))
        else {
            return Err(PipeError::Failed(format!(
                "{}: segment {i} is in no sealed index",
                target.uri()
            )));
        };
        let segs = read_index(target, base, m, x).await?;
        let s = segs[i - x.first].clone();
        self.cached = Some((x.first, segs));
        Ok(s)
    }
}

/// The segments a sealed index lists, checked against its entry in the manifest.
async fn read_index(
    target: &Target,
    base: &str,
    m: &Manifest,
    x: &Sealed,
) -> Result<Vec<Segment>, PipeError> {
    let key = format!("{base}/{}", x.key);
    let uri = target.at(&key);
    let got = target
        .store
        .get(&key, GetOptions::new().if_match(x.etag.clone()))
        .await
        .map_err(|e| read_error(&uri, x.etag.as_deref(), e))?;
    let data = got.bytes().await.map_err(|e| PipeError::store(&uri, e))?;
    Index::parse(&data, m.stream_id(), x).map_err(|e| PipeError::Failed(format!("{uri}: {e}")))
}

/// Every segment of the stream, in order (the sealed indexes read one after another).
async fn all_segments(
    target: &Target,
    base: &str,
    m: &Manifest,
) -> Result<Vec<Segment>, PipeError> {
    let mut all = Vec::with_capacity(m.segment_count());
    for x in &m.sealed {
        all.extend(read_index(target, base, m, x).await?);
    }
    all.extend(m.segments.iter().cloned());
    Ok(all)
}

/// A segmented upload: its segments in order as the manifest lists them; with `follow`, waits
/// for more until the manifest says complete.
async fn segments(
    target: &Target,
    out: &mut Output,
    opts: &DownOptions,
) -> Result<DownReport, PipeError> {
    let uri = target.uri();
    let base = target.key.trim_end_matches('/').to_string();
    let mkey = manifest_key(&base);
    let muri = target.at(&mkey);
    let mut seen: Option<Manifest> = None;
    let mut list = SegmentList::default();
    let mut next = 0usize;
    let mut first: Option<usize> = None;
    let mut crc = 0u64;
    let mut total = 0u64;
    let mut progress = Instant::now();
    loop {
        let m = read_manifest(target, &mkey).await?;
        match (&m, &seen) {
            (Some(m), Some(old)) => {
                if !m.extends(old) {
                    return Err(PipeError::Failed(format!(
                        "{muri} was replaced by a different upload while it was read (writer {} \
                         became {}); the output is incomplete",
                        old.writer, m.writer
                    )));
                }
                if m != old {
                    progress = Instant::now();
                }
            }
            (None, Some(_)) => {
                return Err(PipeError::Failed(format!(
                    "{muri} disappeared while the upload was read; the output is incomplete"
                )))
            }
            (Some(m), None) => {
                progress = Instant::now();
                if opts.from_end {
                    next = m.segment_count().saturating_sub(1);
                    first = Some(next);
                }
            }
            (None, None) if !opts.follow => {
                return Err(PipeError::Failed(format!(
                    "{uri}: no such segmented upload (no {muri})"
                )))
            }
            (None, None) => {}
        }
        if let Some(m) = m {
            if let Some(why) = &m.failed {
                return Err(PipeError::Failed(format!(
                    "{uri}: the writer gave up ({why}); {} of {} segments were read",
                    next,
                    m.segment_count()
                )));
            }
            if !m.complete && !opts.follow {
                return Err(PipeError::Failed(match &m.stopped {
                    Some(why) => format!(
                        "{uri}: its writer was stopped ({why}) and left it open: {muri} is not \
                         complete; use --follow to stream it while a writer continues it \
                         (pipe up --append)"
                    ),
                    None => format!(
                        "{uri} is still being written (or its writer died): {muri} is not \
                         complete; use --follow to stream it as it grows"
                    ),
                }));
            }
            while next < m.segment_count() {
                let s = &list.get(target, &base, &m, next).await?;
                let key = format!("{base}/{}", s.key);
                let meta = ObjectMeta {
                    key: key.clone(),
                    size: s.size,
                    etag: s.etag.clone(),
                    ..Default::default()
                };
                let want = parse_crc(&s.crc64nvme).unwrap_or_default();
                match copy_to(target, &key, meta, out, opts).await? {
                    Copied::Closed => {
                        return Ok(DownReport {
                            bytes: out.written,
                            segments: Some((next - first.unwrap_or(0)) as u64),
                            first_segment: first.map(|f| f as u64),
                            closed_early: true,
                            ..Default::default()
                        })
                    }
                    Copied::Done { crc: got } => {
                        if got != want {
                            return Err(PipeError::Failed(format!(
                                "{}: the data read has CRC64NVME {}, the manifest says {}",
                                target.at(&key),
                                crc_hex(got),
                                s.crc64nvme
                            )));
                        }
                        crc = crc64nvme_combine(crc, got, s.size);
                        total += s.size;
                    }
                }
                next += 1;
                progress = Instant::now();
            }
            if m.complete && first.is_some_and(|f| f > 0) {
                // Started mid-stream: each segment was checked, the whole cannot be.
                return Ok(DownReport {
                    bytes: total,
                    segments: Some((next - first.unwrap_or(0)) as u64),
                    first_segment: first.map(|f| f as u64),
                    ..Default::default()
                });
            }
            if m.complete {
                let want = m.whole_crc().unwrap_or_default();
                if m.total_size != Some(total) || want != crc {
                    return Err(PipeError::Failed(format!(
                        "{uri}: the stream read ({total} bytes, CRC64NVME {}) differs from the \
                         manifest ({:?} bytes, {:?})",
                        crc_hex(crc),
                        m.total_size,
                        m.crc64nvme
                    )));
                }
                return Ok(DownReport {
                    bytes: total,
                    segments: Some(next as u64),
                    first_segment: first.map(|f| f as u64),
                    verified: true,
                    ..Default::default()
                });
            }
            seen = Some(m);
        }
        if progress.elapsed() >= opts.writer_timeout {
            if let Some(why) = seen.as_ref().and_then(|m| m.stopped.as_ref()) {
                return Err(PipeError::Failed(format!(
                    "{uri}: its writer was stopped ({why}) and no writer continued it (pipe up \
                     --append) within {} s; {total} bytes were read (see --writer-timeout)",
                    opts.writer_timeout.as_secs_f64()
                )));
            }
            let what = match &seen {
                Some(m) => format!(
                    "{muri} has not changed for {} s ({} segments, {total} bytes read; last \
                     written by the writer at {})",
                    opts.writer_timeout.as_secs_f64(),
                    m.segment_count(),
                    m.updated
                ),
                None => format!(
                    "{muri} did not appear within {} s",
                    opts.writer_timeout.as_secs_f64()
                ),
            };
            return Err(PipeError::Failed(format!(
                "{uri}: no progress from the writer: {what}; is it still running? (see \
                 --writer-timeout)"
            )));
        }
        tokio::time::sleep(opts.poll_interval).await;
    }
}

/// One ordinary object at `dst` from the finished segmented upload at `src`, copied
/// server-side (UploadPartCopy of each segment, pinned to its ETag).
pub async fn join(
    src: Target,
    dst: Target,
    put: PutOptions,
    transfer: s3ferry_engine::transfer::TransferConfig,
    journal: &Arc<Journal>,
) -> Result<super::UpReport, PipeError> {
    let started = Instant::now();
    let (suri, duri) = (src.uri(), dst.uri());
    if dst.key.is_empty() || dst.key.ends_with('/') {
        return Err(PipeError::Failed(format!(
            "{duri}: pipe join needs an object name, like s3://bucket/path/name"
        )));
    }
    src.store
        .check()
        .await
        .map_err(|e| PipeError::store(&suri, e))?;
    dst.store
        .check()
        .await
        .map_err(|e| PipeError::store(&duri, e))?;
    let (a, b) = (src.store.capabilities(), dst.store.capabilities());
    let bucket = src.store.bucket().map(str::to_string);
    let Some(bucket) = bucket.filter(|_| {
        b.upload_part_copy && a.copy_domain.is_some() && a.copy_domain == b.copy_domain
    }) else {
        return Err(PipeError::Failed(format!(
            "pipe join copies server-side: {suri} and {duri} must be on one S3 endpoint with the \
             same credentials"
        )));
    };
    let base = src.key.trim_end_matches('/').to_string();
    let mkey = manifest_key(&base);
    let muri = src.at(&mkey);
    let m = read_manifest(&src, &mkey)
        .await?
        .ok_or_else(|| PipeError::Failed(format!("{suri}: no segmented upload (no {muri})")))?;
    if !m.complete || m.failed.is_some() {
        return Err(PipeError::Failed(format!(
            "{suri}: the segmented upload is not complete (its writer is still running, died or \
             failed); join needs a finished one"
        )));
    }
    let want = m.whole_crc();
    let total = m.total_size.unwrap_or_default();
    let cleaned = cleanup_orphan_uploads(&dst.store, journal, None).await as u64;
    let segs = all_segments(&src, &base, &m).await?;
    let size = join_part_size(&segs, total);
    // One part for an empty stream or a single segment (one PUT or CopyObject).
    let parts = if segs.len() <= 1 {
        1
    } else {
        total.div_ceil(size)
    };
    let res = if segs.is_empty() {
        dst.store
            .put(&dst.key, bytes::Bytes::new(), put.crc64nvme(Some(0)))
            .await
            .map_err(|e| PipeError::store(&duri, e))?
    } else if let [one] = &segs[..] {
        // One segment: one CopyObject (some servers refuse an UploadPartCopy under 5 MiB even
        // as the only part).
        let from = CopySource {
            bucket: bucket.clone(),
            key: format!("{base}/{}", one.key),
            if_match: one.etag.clone(),
            version_id: None,
        };
        dst.store
            .copy(&from, &dst.key, CopyOptions::new().replace(Some(put)))
            .await
            .map_err(|e| PipeError::store(&duri, e))?
    } else {
        let w = MultipartWriter::create(
            dst.store.clone(),
            &dst.key,
            put,
            PartLayout::Uniform(size),
            &transfer,
            journal.clone(),
        )
        .await
        .map_err(|e| PipeError::store(&duri, e))?
        .with_window(transfer.part_concurrency.max(1) * 2);
        let bodies = join_parts(&src, &bucket, &base, &segs, size);
        upload_parts(w, bodies, want).await.map_err(|e| {
            if matches!(e.kind, ErrorKind::PreconditionFailed | ErrorKind::Corrupt) {
                PipeError::Failed(format!(
                    "{suri}: a segment changed since the manifest was written ({e}); {duri} was \
                     not written"
                ))
            } else {
                PipeError::store(&duri, e)
            }
        })?
    };
    // The result must be the stream the manifest describes.
    let meta = dst
        .store
        .head(&dst.key)
        .await
        .map_err(|e| PipeError::store(&duri, e))?;
    let got = meta.crc64nvme.or(res.crc64nvme);
    if meta.size != total || (want.is_some() && got.is_some() && got != want) {
        return Err(PipeError::Failed(format!(
            "{duri}: the joined object ({} bytes, CRC64NVME {:?}) differs from the manifest ({total} \
             bytes, {:?})",
            meta.size,
            got.map(crc_hex),
            m.crc64nvme
        )));
    }
    Ok(super::UpReport {
        uri: duri,
        bytes: total,
        parts,
        segments: Some(segs.len() as u64),
        crc64nvme: m.crc64nvme.clone().unwrap_or_default(),
        etag: res.etag,
        appended_to: None,
        cleaned_up: cleaned,
        elapsed_secs: started.elapsed().as_secs_f64(),
    })
}

/// The part size of a joined object. Segments all of one size (but the last) that is a valid
/// part size: that size, one server-side copy per segment. Otherwise (segments cut by time)
/// the smallest part size that fits 10,000 parts: ranges inside one segment are still copied
/// server-side, and only parts that span segments (runs of small ones, the edges of large
/// ones) pass through this machine.
pub(super) fn join_part_size(segs: &[Segment], total: u64) -> u64 {
    let n = segs.len();
    let first = segs.first().map_or(0, |s| s.size);
    let uniform = segs[..n.saturating_sub(1)].iter().all(|s| s.size == first)
        && segs.last().is_some_and(|l| l.size <= first);
    if uniform && (MIN_PART_SIZE..=MAX_PART_SIZE).contains(&first) && n as u64 <= MAX_PARTS {
        return first;
    }
    part_size_for(total, MIN_PART_SIZE)
}

/// The parts of the joined object, in order: byte range `[k x size, (k+1) x size)` of the
/// stream is UploadPartCopy of one segment's range when it lies in one segment, else the
/// pieces read in order (ranged GETs pinned to each segment's ETag, streamed through; a whole
/// segment read is checked against its CRC64NVME on the way).
pub(super) fn join_parts<'a>(
    src: &'a Target,
    bucket: &'a str,
    base: &'a str,
    segs: &'a [Segment],
    size: u64,
) -> impl Iterator<Item = PartBody> + 'a {
    // Offset of each segment in the stream.
    let starts: Vec<u64> = segs
        .iter()
        .scan(0u64, |at, s| {
            let here = *at;
            *at += s.size;
            Some(here)
        })
        .collect();
    let total = segs.iter().map(|s| s.size).sum::<u64>();
    let mut seg = 0usize;
    let mut at = 0u64;
    std::iter::from_fn(move || {
        if at >= total {
            return None;
        }
        let end = (at + size).min(total);
        let mut pieces = Vec::new();
        while at < end {
            while starts[seg] + segs[seg].size <= at {
                seg += 1;
            }
            let s = &segs[seg];
            let from = at - starts[seg];
            let to = (end - starts[seg]).min(s.size);
            pieces.push((seg, from..to));
            at = starts[seg] + to;
        }
        let key = |i: usize| format!("{base}/{}", segs[i].key);
        // A range in one segment is copied server-side; a last part under 5 MiB is read
        // through instead (some servers refuse so small an UploadPartCopy even as the last).
        if let [(i, r)] = &pieces[..] {
            if r.end - r.start >= MIN_PART_SIZE {
                let from = CopySource {
                    bucket: bucket.to_string(),
                    key: key(*i),
                    if_match: segs[*i].etag.clone(),
                    version_id: None,
                };
                return Some(PartBody::Copy(from, r.clone()));
            }
        }
        let len = pieces.iter().map(|(_, r)| r.end - r.start).sum();
        let store = src.store.clone();
        let reads: Vec<_> = pieces
            .into_iter()
            .map(|(i, r)| {
                let s = &segs[i];
                let whole = (r.start == 0 && r.end == s.size)
                    .then(|| parse_crc(&s.crc64nvme))
                    .flatten();
                (key(i), s.etag.clone(), r, whole)
            })
            .collect();
        // Read into memory (one part: at least 5 MiB, within the memory budget) so that the
        // part's upload is retried like any other.
        let read = async move {
            let mut buf = Vec::with_capacity(len as usize);
            for (key, etag, r, whole) in reads {
                let got = store
                    .get(&key, GetOptions::new().range(r).if_match(etag))
                    .await?
                    .bytes()
                    .await?;
                if let Some(want) = whole {
                    let crc = s3ferry_store::checksum::crc64nvme(&got);
                    if crc != want {
                        return Err(StoreError::new(
                            ErrorKind::Corrupt,
                            "get",
                            format!(
                                "read CRC64NVME {}, the manifest says {}",
                                crc_hex(crc),
                                crc_hex(want)
                            ),
                        )
                        .with_key(&key));
                    }
                }
                buf.extend_from_slice(&got);
            }
            Ok(bytes::Bytes::from(buf))
        };
        Some(PartBody::Read(len, futures::FutureExt::boxed(read)))
    })
}
