//! `archive export` and `archive plan`: what changed in the source since the base state, as
//! volumes of a verifiable tar archive, and the new state beside it.
//!
//! Two passes, memory flat in the object count:
//! 1. *Scan*: the source listing is merge-joined with the base state (both sorted). Unchanged
//!    keys (same size and signature) are carried into the new state without reading; new and
//!    changed ones are read once (concurrently) for their SHA-256 and CRC64NVME, and assigned
//!    to volumes by a running byte count (an object that crosses a volume boundary is split
//!    there, each piece with its own SHA-256); state keys missing from the listing are
//!    deletions. A deleted key whose content re-appears under a new key becomes a move. Every
//!    list goes to a spill file, never to memory.
//! 2. *Write*: each volume is its manifest followed by its data members, streamed from the
//!    source (small objects read ahead within the memory budget) and checked again against the
//!    SHA-256 of the scan: an object that changed in between fails the export instead of
//!    shipping bytes the manifest does not describe. Volumes and the state are written to temp
//!    files and renamed into place; the state last.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use futures::future::{self, BoxFuture};
use futures::stream::{self, StreamExt};
use s3ferry_engine::events::{Outcome, Record, Reporter};
use s3ferry_engine::exec::{Cancel, Executor};
use s3ferry_engine::filter::Filters;
use s3ferry_engine::formats::tar::{safe_member_name, Member, TarWriter};
use s3ferry_engine::plan::signature;
use s3ferry_engine::spill::Spill;
use s3ferry_engine::transfer::{optional_tags, RangedReader, TransferConfig};
use s3ferry_engine::walk::{entries, records, Entry, Join, Joined, Side, SideKind};
use s3ferry_store::checksum::{crc64_to_b64, Crc64};
use s3ferry_store::{ByteStream, ErrorKind, GetOptions, ObjectMeta, StoreError};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::format::{
    is_reserved, Header, Kind, Line, Op, StateHeader, StateRec, FORMAT, MANIFEST, STATE_FORMAT,
    STATE_MEMBER, VERSION,
};
use super::io::{read_file, read_file_raw, read_state, sweep_dead_temps, StateWriter, VolumeSink};
use super::{now_rfc3339, rfc3339, spill_err, ArchiveError};

/// Objects up to this size are read ahead of the tar writer (within the memory budget).
const READ_AHEAD_MAX: u64 = 1 << 20;

#[derive(Clone, Debug)]
pub struct ExportOptions {
    pub filters: Filters,
    /// `--since DATE`: only objects modified since then, no deletions.
    pub since: Option<SystemTime>,
    /// `--since-state STATE`: the delta against that state.
    pub since_state: Option<PathBuf>,
    /// zstd-compress the volumes.
    pub compress: bool,
    /// Object bytes per volume (`None`: one volume).
    pub volume_size: Option<u64>,
    /// Objects read at once.
    pub concurrency: usize,
    /// Read each object's tags (one more request per object).
    pub tags: bool,
    /// The source's name in the archive (default: its URI or absolute path).
    pub source_id: Option<String>,
    pub transfer: TransferConfig,
}

/// Where an export goes.
#[derive(Clone, Debug)]
pub enum Output {
    /// A file (`x.tar`, or `x.NNN.tar` for volumes) or an existing directory (names made from
    /// the source and the sequence number).
    Path(PathBuf),
    Stdout,
}

/// What an export did (or, for `plan`, would do).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ExportSummary {
    pub archive: String,
    pub source: String,
    pub seq: u64,
    pub kind: String,
    pub base: Option<String>,
    pub volumes: Vec<String>,
    pub state: String,
    /// Objects written (new or changed) and their bytes.
    pub puts: u64,
    pub put_bytes: u64,
    pub moves: u64,
    pub deletes: u64,
    pub unchanged: u64,
    /// Objects that could not be read (each reported); they stay "changed" for the next export.
    pub failed: u64,
    /// Objects in the source after the export.
    pub source_objects: u64,
    pub dry_run: bool,
    pub elapsed_secs: f64,
}

/// One key of the join, classified.
enum Class {
    /// Unchanged since the base state: carried as it is.
    Keep(StateRec),
    /// New or changed: read it.
    Put(Entry, Option<StateRec>),
    /// In the base state, gone from the source.
    Delete(StateRec),
    /// A listing error of one entry.
    ListError(StoreError),
    /// Not part of the source (the import marker).
    Ignore,
}

fn classify(
    joined: Joined,
    kind: SideKind,
    since: Option<SystemTime>,
) -> Result<Class, StoreError> {
    let mut row = match joined {
        Joined::EntryError(_, e) => return Ok(Class::ListError(e)),
        Joined::Row(r) => r,
    };
    if is_reserved(&row.key) {
        return Ok(Class::Ignore);
    }
    let rec = match row.record(1) {
        Some(r) => Some(serde_json::from_str::<StateRec>(&r).map_err(|e| {
            StoreError::new(
                ErrorKind::InvalidInput,
                "state",
                format!("{}: {e}", row.key),
            )
        })?),
        None => None,
    };
    Ok(match (row.entry(0), rec) {
        (Some(e), rec) => {
            let sig = signature(kind, &e.meta);
            match rec {
                Some(r) if r.size == e.meta.size && sig.is_some() && r.sig == sig => Class::Keep(r),
                None if since.is_some_and(|s| e.meta.last_modified.is_some_and(|t| t < s)) => {
                    Class::Keep(StateRec {
                        key: e.rel.clone(),
                        size: e.meta.size,
                        sig,
                        sha256: None,
                    })
                }
                rec => Class::Put(e, rec),
            }
        }
        (None, Some(r)) => Class::Delete(r),
        (None, None) => Class::Ignore,
    })
}

/// Assigns object bytes to volumes by a running count.
struct Volumes {
    cap: Option<u64>,
    volume: u32,
    used: u64,
}

impl Volumes {
    /// The pieces `(volume, offset, length)` an object of `size` bytes is written as.
    fn assign(&mut self, size: u64) -> Vec<(u32, u64, u64)> {
        let Some(cap) = self.cap else {
            return vec![(1, 0, size)];
        };
        let mut pieces = Vec::new();
        let mut off = 0;
        loop {
            if self.used >= cap {
                self.volume += 1;
                self.used = 0;
            }
            let take = (cap - self.used).min(size - off);
            pieces.push((self.volume, off, take));
            self.used += take;
            off += take;
            if off >= size {
                return pieces;
            }
        }
    }
}

/// One classified key after the scan, in key order.
enum Step {
    Keep(StateRec),
    Delete(StateRec),
    Put {
        lines: Vec<Line>,
        rec: StateRec,
        new: bool,
    },
    Failed {
        key: String,
        size: u64,
        error: StoreError,
        old: Option<StateRec>,
    },
    ListError(StoreError),
    Ignore,
}

/// Read one new or changed object: its SHA-256 (and each piece's), CRC64NVME, metadata and
/// tags.
async fn scan(
    src: Side,
    e: Entry,
    old: Option<StateRec>,
    pieces: Vec<(u32, u64, u64)>,
    cfg: TransferConfig,
    tags: bool,
) -> Step {
    let key = src.key(&e.rel);
    let r = async {
        // A small object is one GET (its answer has the metadata); a big one is discovered
        // with a HEAD and read in ranges pinned to its ETag (resumed after a reset). A small
        // one whose body breaks off is read the second way.
        let small = src.kind == SideKind::Remote && e.meta.size <= READ_AHEAD_MAX;
        let first = if small {
            match src.store.get(&key, GetOptions::new()).await {
                Ok(g) => {
                    let meta = g.meta;
                    match hash_body(g.body, &pieces, meta.size).await {
                        Err(e) if e.kind.retryable() => None,
                        r => Some(r.map(|h| (meta, h))),
                    }
                }
                Err(e) => Some(Err(e)),
            }
        } else {
            None
        };
        let (meta, (sha, crc, piece_sums)) = match first {
            Some(r) => r?,
            None => {
                let reader = if src.kind == SideKind::Local {
                    RangedReader::new(src.store.clone(), &key, e.meta.clone(), &cfg)
                } else {
                    RangedReader::open(src.store.clone(), &key, &cfg).await?
                };
                let meta = reader.meta().clone();
                let body = if meta.size == 0 {
                    stream::empty().boxed()
                } else {
                    reader.stream(0..meta.size)
                };
                let h = hash_body(body, &pieces, meta.size).await?;
                (meta, h)
            }
        };
        if meta.size != e.meta.size {
            return Err(StoreError::new(
                ErrorKind::PreconditionFailed,
                "get",
                format!("size {} differs from the listed {}", meta.size, e.meta.size),
            )
            .with_key(&key));
        }
        let tags = if tags && src.store.capabilities().tags {
            optional_tags(&src.store, &key).await?
        } else {
            vec![]
        };
        Ok((meta, sha, crc, piece_sums, tags))
    }
    .await;
    match r {
        Ok((meta, sha, crc, piece_sums, tags)) => {
            let split = pieces.len() > 1;
            let lines = pieces
                .iter()
                .enumerate()
                .map(|(i, (volume, offset, length))| Line {
                    op: Op::Put,
                    key: e.rel.clone(),
                    from: None,
                    size: meta.size,
                    sha256: Some(sha.clone()),
                    crc64nvme: Some(crc.clone()),
                    last_modified: meta.last_modified.map(rfc3339),
                    mtime: meta.mtime.map(s3ferry_store::format_mtime),
                    content_type: meta.content_type.clone(),
                    metadata: meta.metadata.clone().unwrap_or_default(),
                    tags: tags.clone(),
                    storage_class: meta.storage_class.clone(),
                    etag: meta.etag.clone(),
                    offset: *offset,
                    length: *length,
                    piece_sha256: if split {
                        piece_sums.get(i).cloned()
                    } else {
                        None
                    },
                    volume: *volume,
                })
                .collect();
            Step::Put {
                lines,
                rec: StateRec {
                    key: e.rel.clone(),
                    size: meta.size,
                    sig: signature(src.kind, &meta),
                    sha256: Some(sha),
                },
                new: old.is_none(),
            }
        }
        Err(error) => Step::Failed {
            key: e.rel,
            size: e.meta.size,
            error,
            old,
        },
    }
}

/// SHA-256 (hex), CRC64NVME (base64) and, for an object split into `pieces`, each piece's
/// SHA-256, of a body of `size` bytes.
async fn hash_body(
    mut body: ByteStream,
    pieces: &[(u32, u64, u64)],
    size: u64,
) -> Result<(String, String, Vec<String>), StoreError> {
    let mut whole = Sha256::new();
    let mut crc = Crc64::default();
    let mut piece_sums = Vec::new();
    let split = pieces.len() > 1;
    let mut piece = Sha256::new();
    let ends: Vec<u64> = pieces.iter().map(|p| p.1 + p.2).collect();
    let mut next_end = 0usize;
    let mut pos = 0u64;
    let mut seen = 0u64;
    while let Some(c) = body.next().await {
        let mut c = c?;
        seen += c.len() as u64;
        whole.update(&c);
        crc.update(&c);
        while split && !c.is_empty() {
            let end = ends.get(next_end).copied().unwrap_or(u64::MAX);
            let n = ((end - pos) as usize).min(c.len());
            piece.update(&c[..n]);
            pos += n as u64;
            c = c.slice(n..);
            if pos == end {
                piece_sums.push(hex::encode(std::mem::take(&mut piece).finalize()));
                next_end += 1;
            }
        }
    }
    if seen != size {
        return Err(StoreError::new(
            ErrorKind::Transient,
            "get",
            format!("body ended at {seen} of {size} bytes"),
        ));
    }
    Ok((
        hex::encode(whole.finalize()),
        crc64_to_b64(crc.finish()),
        piece_sums,
    ))
}

/// The source's name in archives: its URI, or a directory's absolute path, ending in `/`.
pub fn source_id(src: &Side) -> String {
    let mut s = match src.store.local_path(&src.prefix) {
        Some(p) => p.canonicalize().unwrap_or(p).to_string_lossy().into_owned(),
        None => src.describe(),
    };
    if !s.ends_with('/') {
        s.push('/');
    }
    s
}

/// What pass 1 found.
struct Scanned {
    header: Header,
    puts: Spill<Line>,
    moves: Vec<Line>,
    deletes: Spill<StateRec>,
    /// Deleted keys that became move sources (left out of the deletes).
    moved_from: HashSet<String>,
    keep: Spill<StateRec>,
    /// Manifest lines per volume (index 0 = volume 1).
    per_volume: Vec<u64>,
    summary: ExportSummary,
    /// Deletes were held back (the listing had errors).
    deletes_held: bool,
}

async fn scan_source(
    src: &Side,
    opts: &ExportOptions,
    read: bool,
    reporter: &Arc<dyn Reporter>,
) -> Result<Scanned, ArchiveError> {
    let start = Instant::now();
    let source = opts.source_id.clone().unwrap_or_else(|| source_id(src));
    let (base_state, base_input) = match &opts.since_state {
        Some(p) => {
            let (h, recs) = read_state(p)?;
            if h.source != source {
                return Err(ArchiveError::Input(format!(
                    "{}: the state of {}, not of {source} (give --source-id if the source was renamed)",
                    p.display(),
                    h.source
                )));
            }
            (Some(h), records(recs))
        }
        None => (None, stream::empty().boxed()),
    };
    let kind = match (&base_state, opts.since) {
        (Some(_), _) => Kind::Delta,
        (None, Some(_)) => Kind::Since,
        (None, None) => Kind::Full,
    };
    let header = Header {
        format: FORMAT.into(),
        version: VERSION,
        archive: uuid::Uuid::new_v4().simple().to_string(),
        source: source.clone(),
        seq: base_state.as_ref().map_or(1, |b| b.seq + 1),
        kind,
        base: base_state.as_ref().map(|b| b.archive.clone()),
        base_seq: base_state.as_ref().map(|b| b.seq),
        created: now_rfc3339(),
        volume: 1,
        volumes: 1,
        entries: 0,
        source_objects: 0,
        state_sha256: None,
    };
    let join = Join::new(vec![entries(src.list(&opts.filters)), base_input]);
    let rows = stream::unfold(Some(join), |j| async move {
        let mut j = j?;
        match j.next().await {
            Ok(Some(x)) => Some((Ok(x), Some(j))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    })
    .boxed();
    let mut volumes = Volumes {
        cap: opts.volume_size,
        volume: 1,
        used: 0,
    };
    let (side, since, cfg, tags) = (src.clone(), opts.since, opts.transfer.clone(), opts.tags);
    // Objects scanned concurrently by the engine's executor, taken in key order.
    let exec = Arc::new(Executor::new(
        opts.concurrency,
        Cancel::new(),
        reporter.clone(),
    ));
    let steps = exec.ordered(
        rows,
        move |r| -> BoxFuture<'static, Result<Step, StoreError>> {
            let class = match r.and_then(|j| classify(j, side.kind, since)) {
                Ok(c) => c,
                Err(e) => return Box::pin(future::ready(Err(e))),
            };
            let step = match class {
                Class::Keep(r) => Step::Keep(r),
                Class::Delete(r) => Step::Delete(r),
                Class::ListError(e) => Step::ListError(e),
                Class::Ignore => Step::Ignore,
                Class::Put(e, old) if !read => Step::Put {
                    lines: vec![Line {
                        key: e.rel.clone(),
                        size: e.meta.size,
                        length: e.meta.size,
                        volume: 1,
                        ..Default::default()
                    }],
                    rec: StateRec::default(),
                    new: old.is_none(),
                },
                Class::Put(e, old) if safe_member_name(&e.rel).is_err() => Step::Failed {
                    error: StoreError::new(
                        ErrorKind::InvalidInput,
                        "archive",
                        format!(
                            "cannot be archived: {}",
                            safe_member_name(&e.rel).err().unwrap_or_default()
                        ),
                    )
                    .with_key(&e.rel),
                    key: e.rel,
                    size: e.meta.size,
                    old,
                },
                Class::Put(e, old) => {
                    let pieces = volumes.assign(e.meta.size);
                    let fut = scan(side.clone(), e, old, pieces, cfg.clone(), tags);
                    return Box::pin(async move { Ok(fut.await) });
                }
            };
            Box::pin(future::ready(Ok(step)))
        },
    );
    futures::pin_mut!(steps);

    let mut puts: Spill<Line> = Spill::new().map_err(spill_err)?;
    let mut deletes: Spill<StateRec> = Spill::new().map_err(spill_err)?;
    let mut keep: Spill<StateRec> = Spill::new().map_err(spill_err)?;
    // Deleted keys by content, for move detection (memory: one entry per deleted key).
    let mut by_content: HashMap<(String, u64), Vec<String>> = HashMap::new();
    let mut new_keys = 0u64;
    let mut summary = ExportSummary {
        archive: header.archive.clone(),
        source: source.clone(),
        seq: header.seq,
        kind: kind.as_str().into(),
        base: header.base.clone(),
        dry_run: !read,
        ..Default::default()
    };
    let mut list_errors = 0u64;
    while let Some(step) = steps.next().await {
        match step? {
            Step::Keep(r) => {
                summary.unchanged += 1;
                keep.push(&r).map_err(spill_err)?;
            }
            Step::Delete(r) => {
                if let Some(sha) = r.sha256.clone().filter(|_| read) {
                    by_content
                        .entry((sha, r.size))
                        .or_default()
                        .push(r.key.clone());
                }
                deletes.push(&r).map_err(spill_err)?
            }
            Step::Put { lines, rec, new } => {
                if let Some(l) = lines.first() {
                    summary.puts += 1;
                    summary.put_bytes += l.size;
                    if !read {
                        let reason = if new { "new" } else { "changed" };
                        reporter.record(&Record::new(&l.key, Outcome::WouldCopy, reason, l.size));
                    }
                }
                new_keys += u64::from(new);
                for l in &lines {
                    puts.push(l).map_err(spill_err)?;
                }
                keep.push(&rec).map_err(spill_err)?;
            }
            Step::Failed {
                key,
                size,
                error,
                old,
            } => {
                summary.failed += 1;
                reporter.record(&Record {
                    key,
                    action: Outcome::Fail,
                    reason: error.kind.as_str().into(),
                    size,
                    error: Some(error.to_string()),
                });
                // The old record (if any) stays: the next export sees the key as changed again.
                if let Some(o) = old {
                    keep.push(&o).map_err(spill_err)?;
                }
            }
            Step::ListError(e) => {
                list_errors += 1;
                summary.failed += 1;
                reporter.record(&Record {
                    key: e.key.clone().unwrap_or_default(),
                    action: Outcome::Fail,
                    reason: "list".into(),
                    size: 0,
                    error: Some(e.to_string()),
                });
            }
            Step::Ignore => {}
        }
    }
    let deletes_held = list_errors > 0 && !deletes.is_empty();
    if deletes_held {
        reporter.note(&format!(
            "{} deletion(s) held back: the listing had errors; the next export carries them",
            deletes.len()
        ));
    }

    // Moves: a new key whose content (SHA-256 and size) is that of a deleted key (none when
    // the deletes are held back, or nothing is new).
    if deletes_held || new_keys == 0 {
        by_content.clear();
    }
    let deleted = deletes.len();
    let mut moves = Vec::new();
    let mut moved_from = HashSet::new();
    let mut data: Spill<Line> = Spill::new().map_err(spill_err)?;
    let mut per_volume: Vec<u64> = vec![0];
    for l in puts.read_back().map_err(spill_err)? {
        let mut l = l.map_err(spill_err)?;
        let whole = !l.is_piece();
        let from = (whole && !by_content.is_empty())
            .then(|| {
                l.sha256
                    .clone()
                    .and_then(|s| by_content.get_mut(&(s, l.size)))
                    .and_then(|keys| keys.pop())
            })
            .flatten();
        match from {
            Some(from) if !moved_from.contains(&from) => {
                moved_from.insert(from.clone());
                l.op = Op::Move;
                l.from = Some(from);
                l.volume = 1;
                l.offset = 0;
                l.length = 0;
                moves.push(l);
            }
            _ => {
                let v = l.volume.max(1) as usize;
                if per_volume.len() < v {
                    per_volume.resize(v, 0);
                }
                per_volume[v - 1] += 1;
                data.push(&l).map_err(spill_err)?;
            }
        }
    }
    summary.moves = moves.len() as u64;
    summary.puts -= summary.moves;
    summary.put_bytes -= moves.iter().map(|m| m.size).sum::<u64>();
    summary.deletes = if deletes_held {
        0
    } else {
        deleted - moved_from.len() as u64
    };
    // Keep + new records, minus nothing: deleted keys are not in the source any more (but
    // held-back deletes stay in the state, so the next export deletes them).
    summary.source_objects = keep.len();
    if !read {
        for r in deletes.read_back().map_err(spill_err)? {
            let r = r.map_err(spill_err)?;
            reporter.record(&Record::new(
                &r.key,
                Outcome::WouldDelete,
                "deleted",
                r.size,
            ));
        }
        summary.elapsed_secs = start.elapsed().as_secs_f64();
        return Ok(Scanned {
            header,
            puts: data,
            moves,
            deletes: Spill::new().map_err(spill_err)?,
            moved_from,
            keep,
            per_volume,
            summary,
            deletes_held,
        });
    }
    per_volume[0] += summary.moves + summary.deletes;
    summary.elapsed_secs = start.elapsed().as_secs_f64();
    Ok(Scanned {
        header,
        puts: data,
        moves,
        deletes,
        moved_from,
        keep,
        per_volume,
        summary,
        deletes_held,
    })
}

/// What an export would hold: counts and bytes from the listing and the base state alone,
/// nothing read (a changed signature counts as a change; moves are found by content at export).
pub async fn plan(
    src: &Side,
    opts: &ExportOptions,
    reporter: &Arc<dyn Reporter>,
) -> Result<ExportSummary, ArchiveError> {
    Ok(scan_source(src, opts, false, reporter).await?.summary)
}

/// The file names of an export's volumes and its state.
fn names(
    out: &Output,
    header: &Header,
    volumes: u32,
    compress: bool,
) -> Result<(Vec<PathBuf>, Option<PathBuf>), ArchiveError> {
    let ext = if compress { "tar.zst" } else { "tar" };
    let (stem, exact) = match out {
        Output::Stdout => {
            if volumes > 1 {
                return Err(ArchiveError::Input(
                    "--out - writes one stream: --volume-size needs a file or directory".into(),
                ));
            }
            return Ok((vec![PathBuf::from("-")], None));
        }
        Output::Path(p) if p.is_dir() => (
            p.join(format!(
                "{}-{:06}",
                super::format::slug(&header.source),
                header.seq
            )),
            None,
        ),
        Output::Path(p) => {
            let s = p.to_string_lossy();
            let stem = [".tar.zst", ".tzst", ".tar"]
                .iter()
                .find_map(|e| s.strip_suffix(e))
                .unwrap_or(&s)
                .to_string();
            (PathBuf::from(stem), Some(p.clone()))
        }
    };
    let files = if volumes == 1 {
        vec![exact.unwrap_or_else(|| PathBuf::from(format!("{}.{ext}", stem.display())))]
    } else {
        (1..=volumes)
            .map(|v| PathBuf::from(format!("{}.{v:03}.{ext}", stem.display())))
            .collect()
    };
    Ok((
        files,
        Some(PathBuf::from(format!("{}.state", stem.display()))),
    ))
}

/// Export the source's changes (or everything) into an archive.
pub async fn export(
    src: &Side,
    out: &Output,
    state_out: Option<PathBuf>,
    opts: &ExportOptions,
    reporter: &Arc<dyn Reporter>,
) -> Result<ExportSummary, ArchiveError> {
    if matches!(out, Output::Stdout) && state_out.is_none() {
        return Err(ArchiveError::Input(
            "--out - needs --state-out FILE: the next export builds on that state".into(),
        ));
    }
    let start = Instant::now();
    let dirs: Vec<PathBuf> = [
        match out {
            Output::Path(p) if p.is_dir() => Some(p.clone()),
            Output::Path(p) => p.parent().map(Path::to_path_buf),
            Output::Stdout => None,
        },
        state_out
            .as_ref()
            .and_then(|p| p.parent().map(Path::to_path_buf)),
    ]
    .into_iter()
    .flatten()
    .map(|d| {
        if d.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            d
        }
    })
    .collect();
    for d in dirs {
        let n = sweep_dead_temps(&d);
        if n > 0 {
            reporter.note(&format!(
                "removed {n} temp file(s) a killed export left in {}",
                d.display()
            ));
        }
    }
    let scanned = scan_source(src, opts, true, reporter).await?;
    let Scanned {
        mut header,
        puts,
        moves,
        deletes,
        moved_from,
        keep,
        per_volume,
        mut summary,
        deletes_held,
    } = scanned;
    let mut deletes = Some(deletes);
    let volumes = per_volume.len() as u32;
    let (files, default_state) = names(out, &header, volumes, opts.compress)?;
    let state_path = state_out
        .or(default_state)
        .ok_or_else(|| ArchiveError::Input("no place for the state file".into()))?;
    header.volumes = volumes;
    header.source_objects = summary.source_objects;

    // The new state: kept and new records, and held-back deletes, merged in key order.
    let mut w = StateWriter::create(
        &state_path,
        &StateHeader {
            format: STATE_FORMAT.into(),
            version: VERSION,
            source: header.source.clone(),
            archive: header.archive.clone(),
            seq: header.seq,
            created: header.created.clone(),
            objects: summary.source_objects,
        },
    )?;
    let mut kept = keep.read_back().map_err(spill_err)?.peekable();
    let mut held = match deletes_held.then(|| deletes.take()).flatten() {
        Some(d) => Some(d.read_back().map_err(spill_err)?.peekable()),
        None => None,
    };
    loop {
        let take_held = match (kept.peek(), held.as_mut().and_then(|h| h.peek())) {
            (None, None) => break,
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (Some(Ok(a)), Some(Ok(b))) => b.key.as_bytes() < a.key.as_bytes(),
            (Some(Err(_)), _) => false,
            (_, Some(Err(_))) => true,
        };
        let r = if take_held {
            held.as_mut().and_then(|h| h.next())
        } else {
            kept.next()
        };
        if let Some(r) = r {
            w.line(&r.map_err(spill_err)?)?;
        }
    }
    let state = w.finish_temp()?;
    header.state_sha256 = Some(file_sha256(&state.tmp)?);

    let mut data = puts.read_back().map_err(spill_err)?.peekable();
    for (i, file) in files.iter().enumerate() {
        let v = i as u32 + 1;
        // This volume's manifest, in a temp file.
        let mut mf = tempfile::NamedTempFile::new()
            .map_err(|e| ArchiveError::Input(format!("temp file: {e}")))?;
        {
            let mut w = std::io::BufWriter::new(mf.as_file_mut());
            let mut h = header.clone();
            h.volume = v;
            h.entries = per_volume[i];
            let mut line = |x: &dyn erased::Ser| -> Result<(), ArchiveError> {
                x.write_to(&mut w)
                    .map_err(|e| ArchiveError::Input(format!("temp file: {e}")))
            };
            line(&h)?;
            while let Some(l) = data.next_if(|l| l.as_ref().map_or(true, |l| l.volume == v)) {
                line(&l.map_err(spill_err)?)?;
            }
            if v == 1 {
                for m in &moves {
                    line(m)?;
                }
                if let Some(d) = (!deletes_held).then(|| deletes.take()).flatten() {
                    for r in d.read_back().map_err(spill_err)? {
                        let r = r.map_err(spill_err)?;
                        if moved_from.contains(&r.key) {
                            continue;
                        }
                        reporter.record(&Record::new(&r.key, Outcome::Delete, "deleted", r.size));
                        line(&Line {
                            op: Op::Delete,
                            key: r.key,
                            size: r.size,
                            sha256: r.sha256,
                            ..Default::default()
                        })?;
                    }
                }
            }
            w.flush()
                .map_err(|e| ArchiveError::Input(format!("temp file: {e}")))?;
        }
        let last = (v == volumes).then_some(&*state.tmp);
        write_volume(src, file, mf.path(), last, &header, opts, reporter).await?;
        summary.volumes.push(file.display().to_string());
    }
    for m in &moves {
        reporter.record(&Record::new(
            &m.key,
            Outcome::Copy,
            format!("moved from {}", m.from.as_deref().unwrap_or("")),
            0,
        ));
    }

    state.persist()?;
    summary.state = state_path.display().to_string();
    summary.elapsed_secs = start.elapsed().as_secs_f64();
    Ok(summary)
}

/// Write one volume: the manifest, then each put's bytes, read again and checked against the
/// scan's SHA-256.
async fn write_volume(
    src: &Side,
    file: &Path,
    manifest: &Path,
    state: Option<&Path>,
    header: &Header,
    opts: &ExportOptions,
    reporter: &Arc<dyn Reporter>,
) -> Result<(), ArchiveError> {
    let sink = if file == Path::new("-") {
        VolumeSink::stdout(opts.compress)?
    } else {
        VolumeSink::create(file, opts.compress)?
    };
    let mtime = chrono::DateTime::parse_from_rfc3339(&header.created)
        .map(|t| t.timestamp())
        .unwrap_or(0);
    let mut tar = TarWriter::new(sink);
    let mlen = std::fs::metadata(manifest)
        .map_err(|e| ArchiveError::Input(format!("temp file: {e}")))?
        .len();
    tar.append(
        &Member {
            name: MANIFEST.into(),
            size: mlen,
            mtime,
            records: vec![],
        },
        read_file(manifest)?,
    )
    .await?;
    let f = std::fs::File::open(manifest)
        .map_err(|e| ArchiveError::Input(format!("temp file: {e}")))?;
    let lines = BufReader::new(f).lines().skip(1).filter_map(|l| {
        match l
            .map_err(|e| ArchiveError::Input(format!("temp file: {e}")))
            .and_then(|l| {
                serde_json::from_str::<Line>(&l).map_err(|e| ArchiveError::Input(e.to_string()))
            }) {
            Ok(l) if l.op != Op::Put => None,
            r => Some(r),
        }
    });
    let (side, cfg) = (src.clone(), opts.transfer.clone());
    // Bodies opened ahead by the engine's executor, written in the manifest's order.
    let exec = Arc::new(Executor::new(
        opts.concurrency,
        Cancel::new(),
        reporter.clone(),
    ));
    let bodies = exec.ordered(stream::iter(lines), move |l| {
        let (side, cfg) = (side.clone(), cfg.clone());
        async move {
            let l = l?;
            let body = open_body(&side, &l, &cfg).await?;
            Ok::<_, ArchiveError>((l, body))
        }
    });
    futures::pin_mut!(bodies);
    while let Some(b) = bodies.next().await {
        let (l, (body, _held)) = b?;
        let want = l.piece_sha256.clone().or(l.sha256.clone());
        let hasher = Arc::new(Mutex::new(Sha256::new()));
        let h = hasher.clone();
        let body = body
            .inspect(move |c| {
                if let Ok(c) = c {
                    h.lock().unwrap_or_else(|p| p.into_inner()).update(c);
                }
            })
            .boxed();
        let member = Member {
            name: l.member_name(),
            size: l.length,
            mtime: l
                .last_modified
                .as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map_or(mtime, |t| t.timestamp()),
            // The exact time for tools that read PAX (GNU tar, Python's tarfile, bsdtar).
            records: l
                .pax_mtime()
                .map(|t| vec![("mtime".to_string(), t)])
                .unwrap_or_default(),
        };
        tar.append(&member, body)
            .await
            .map_err(|e| changed(&l.key, e))?;
        let got = hex::encode(
            std::mem::take(&mut *hasher.lock().unwrap_or_else(|p| p.into_inner())).finalize(),
        );
        if want.as_deref() != Some(got.as_str()) {
            return Err(ArchiveError::Input(format!(
                "{}: changed while the export ran (SHA-256 {got}, scanned {}): run the export again",
                l.key,
                want.unwrap_or_default()
            )));
        }
        if l.ends_object() {
            reporter.record(&Record::new(&l.key, Outcome::Copy, "exported", l.size));
        }
        reporter.bytes(l.length);
    }
    if let Some(state) = state {
        let len = std::fs::metadata(state)
            .map_err(|e| ArchiveError::Input(format!("{}: {e}", state.display())))?
            .len();
        let m = Member {
            name: STATE_MEMBER.into(),
            size: len,
            mtime,
            records: vec![],
        };
        tar.append(&m, read_file_raw(state)?).await?;
    }
    let (sink, _) = tar.finish().await?;
    sink.close().await?;
    Ok(())
}

/// SHA-256 (hex) of a file's bytes.
fn file_sha256(path: &Path) -> Result<String, ArchiveError> {
    let mut f = std::fs::File::open(path)
        .map_err(|e| ArchiveError::Input(format!("{}: {e}", path.display())))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = std::io::Read::read(&mut f, &mut buf)
            .map_err(|e| ArchiveError::Input(format!("{}: {e}", path.display())))?;
        if n == 0 {
            return Ok(hex::encode(h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

fn changed(key: &str, e: StoreError) -> ArchiveError {
    if matches!(
        e.kind,
        ErrorKind::PreconditionFailed | ErrorKind::NotFound | ErrorKind::Corrupt
    ) {
        ArchiveError::Input(format!(
            "{key}: changed or went away while the export ran ({e}): run the export again"
        ))
    } else {
        e.into()
    }
}

/// A put's bytes: read ahead whole for small objects (holding their memory reservation),
/// streamed when the tar reaches them for big ones; pinned to what the scan saw.
async fn open_body(
    src: &Side,
    l: &Line,
    cfg: &TransferConfig,
) -> Result<(ByteStream, Option<s3ferry_engine::transfer::Reservation>), ArchiveError> {
    if l.length == 0 {
        return Ok((stream::empty().boxed(), None));
    }
    let key = src.key(&l.key);
    let meta = ObjectMeta {
        key: key.clone(),
        size: l.size,
        etag: l.etag.clone(),
        mtime: l.mtime.as_deref().and_then(s3ferry_store::parse_mtime),
        ..Default::default()
    };
    let reader = RangedReader::new(src.store.clone(), &key, meta, cfg);
    let range = l.offset..l.offset + l.length;
    if l.length <= READ_AHEAD_MAX {
        let held = cfg.reserve(l.length).await?;
        let data: Bytes = reader.read(range).await.map_err(|e| changed(&l.key, e))?;
        return Ok((stream::once(future::ready(Ok(data))).boxed(), Some(held)));
    }
    Ok((reader.stream(range), None))
}

/// Serialising a header or a line as one JSON line, behind one object-safe signature.
mod erased {
    pub trait Ser {
        fn write_to(&self, w: &mut dyn std::io::Write) -> std::io::Result<()>;
    }
    impl<T: serde::Serialize> Ser for T {
        fn write_to(&self, w: &mut dyn std::io::Write) -> std::io::Result<()> {
            serde_json::to_writer(&mut *w, self)?;
            w.write_all(b"\n")
        }
    }
}
