//! `archive verify` and `archive import`.
//!
//! Verification reads every volume whole: the manifest first (its header must agree with the
//! other volumes, its line count with the header), then each put's member in manifest order
//! (name and size as listed, SHA-256 of the piece and of the whole object, CRC64NVME), then
//! the end of the archive. Import verifies everything it is going to apply before it changes
//! anything, then reads the volumes again and applies them.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use s3ferry_engine::events::{Outcome, Record, Reporter};
use s3ferry_engine::exec::{Done, Executor};
use s3ferry_engine::formats::tar::{safe_member_name, PartBuffer, TarReader};
use s3ferry_engine::journal::Journal;
use s3ferry_engine::plan::MaxDelete;
use s3ferry_engine::spill::Spill;
use s3ferry_engine::transfer::{
    cleanup_orphan_uploads, copy_object, MultipartWriter, TransferConfig,
};
use s3ferry_engine::walk::{Entry, Side};
use s3ferry_store::checksum::{crc64_from_b64, crc64_to_b64, part_size_for, Crc64, PartLayout};
use s3ferry_store::{
    key_to_relpath, ErrorKind, GetOptions, PutMode, PutOptions, StoreError, StoreExt,
};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::format::{
    advance, is_reserved, order, Header, Line, Marker, Op, Order, FORMAT, MANIFEST, MARKER,
    STATE_MEMBER, STATE_OBJECT, VERSION,
};
use super::io::{read_file, CHUNK};
use super::{now_rfc3339, spill_err, ArchiveError};
use crate::places::Dir;

#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// Apply archives out of order, of another source, or after a gap.
    pub force: bool,
    /// Verify and print the plan; change nothing.
    pub dry_run: bool,
    /// Deletions allowed per archive (a percentage is of the source's objects).
    pub max_delete: MaxDelete,
    /// Objects written at once.
    pub concurrency: usize,
    pub transfer: TransferConfig,
    /// A stop request (a signal): no new object starts, the puts in flight finish, an upload in
    /// parts is aborted, and the import ends [`ArchiveError::Interrupted`] with the marker as it
    /// was.
    pub cancel: s3ferry_engine::exec::Cancel,
}

/// One archive checked whole (or, for `verify`, the volumes of it that were given).
#[derive(Debug)]
pub struct Verified {
    /// The first given volume's header.
    pub header: Header,
    /// The given volumes, in order.
    pub volumes: Vec<PathBuf>,
    pub puts: u64,
    pub put_bytes: u64,
    pub moves: u64,
    pub deletes: u64,
    /// Volume numbers of the archive that were not given.
    pub missing: Vec<u32>,
}

/// What happened to one archive of an import.
#[derive(Clone, Debug, Serialize)]
pub struct ArchiveOutcome {
    pub archive: String,
    pub source: String,
    pub seq: u64,
    pub kind: String,
    /// applied | already-applied | would-apply | incomplete
    pub outcome: String,
    pub puts: u64,
    pub put_bytes: u64,
    pub moves: u64,
    pub deletes: u64,
    pub failed: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ImportSummary {
    pub archives: Vec<ArchiveOutcome>,
    pub failed: u64,
    pub dry_run: bool,
    /// The destination's sequence number afterwards (of its source).
    pub seq: Option<u64>,
    pub elapsed_secs: f64,
}

fn bad(path: &Path, msg: impl std::fmt::Display) -> ArchiveError {
    ArchiveError::Input(format!("{}: {msg}", path.display()))
}

/// A volume whose manifest does not read as text and JSON: damaged (a flipped byte inside a
/// compressed volume decodes to garbage), or not an archive of ours.
fn damaged(path: &Path, msg: impl std::fmt::Display) -> ArchiveError {
    bad(
        path,
        format!(
            "damaged volume: its manifest does not read ({msg}); copy it again from the export"
        ),
    )
}

/// A volume opened for reading: its tar positioned after the manifest, its header, and the
/// manifest's entry lines (from a temp copy: any number of them in flat memory).
struct Volume {
    tar: TarReader,
    header: Header,
    lines: std::io::Lines<BufReader<std::fs::File>>,
    path: PathBuf,
}

impl Volume {
    async fn open(path: &Path) -> Result<Self, ArchiveError> {
        let mut tar = open_manifest(path).await?;
        let mut tmp = tempfile::tempfile().map_err(|e| bad(path, e))?;
        {
            let mut w = std::io::BufWriter::new(&mut tmp);
            while let Some(c) = tar.read_chunk(CHUNK).await.map_err(|e| bad(path, e))? {
                w.write_all(&c).map_err(|e| bad(path, e))?;
            }
            w.flush().map_err(|e| bad(path, e))?;
        }
        use std::io::Seek;
        tmp.seek(std::io::SeekFrom::Start(0))
            .map_err(|e| bad(path, e))?;
        let mut lines = BufReader::new(tmp).lines();
        let h = lines
            .next()
            .ok_or_else(|| bad(path, "the manifest is empty"))?
            .map_err(|e| damaged(path, e))?;
        Ok(Self {
            tar,
            header: parse_header(path, &h)?,
            lines,
            path: path.to_path_buf(),
        })
    }

    /// The manifest's entries, each checked for a key that is safe anywhere.
    fn next_line(&mut self, n: u64) -> Result<Option<Line>, ArchiveError> {
        let Some(l) = self.lines.next() else {
            return Ok(None);
        };
        let l = l.map_err(|e| damaged(&self.path, format!("line {}: {e}", n + 2)))?;
        let line: Line = serde_json::from_str(&l)
            .map_err(|e| damaged(&self.path, format!("line {}: {e}", n + 2)))?;
        for k in std::iter::once(&line.key).chain(line.from.as_ref()) {
            safe_member_name(k).map_err(|e| {
                bad(
                    &self.path,
                    format!("manifest line {}: unsafe key: {e}", n + 2),
                )
            })?;
            if is_reserved(k) {
                return Err(bad(
                    &self.path,
                    format!("manifest line {}: the key {k} is reserved", n + 2),
                ));
            }
        }
        Ok(Some(line))
    }

    /// The member of put `l`, checked to be the one the manifest lists.
    async fn member_of(&mut self, l: &Line) -> Result<(), ArchiveError> {
        let m = self
            .tar
            .next_member()
            .await
            .map_err(|e| bad(&self.path, e))?
            .ok_or_else(|| bad(&self.path, format!("ends before the member of {:?}", l.key)))?;
        // A piece is named apart from its object (archives of s3ferry before that named it by
        // the key: read either way).
        let named = m.name == l.member_name() || (l.is_piece() && m.name == l.key);
        if !named || m.size != l.length {
            return Err(bad(
                &self.path,
                format!(
                    "member {:?} ({} bytes) where the manifest lists {:?} ({} bytes)",
                    m.name,
                    m.size,
                    l.member_name(),
                    l.length
                ),
            ));
        }
        Ok(())
    }

    /// The export's state, the last member of the last volume: checked against the header's
    /// SHA-256 (and copied to `save`). Nothing when this volume has none.
    async fn state_member(&mut self, save: Option<&mut std::fs::File>) -> Result<(), ArchiveError> {
        let h = &self.header;
        let Some(want) = h.state_sha256.clone().filter(|_| h.volume == h.volumes) else {
            return Ok(());
        };
        let m = self
            .tar
            .next_member()
            .await
            .map_err(|e| bad(&self.path, e))?
            .ok_or_else(|| bad(&self.path, format!("ends before its {STATE_MEMBER}")))?;
        if m.name != STATE_MEMBER {
            return Err(bad(
                &self.path,
                format!("member {:?} where {STATE_MEMBER} belongs", m.name),
            ));
        }
        let mut sha = Sha256::new();
        let mut save = save;
        while let Some(c) = self
            .tar
            .read_chunk(CHUNK)
            .await
            .map_err(|e| bad(&self.path, e))?
        {
            sha.update(&c);
            if let Some(f) = save.as_deref_mut() {
                f.write_all(&c).map_err(|e| bad(&self.path, e))?;
            }
        }
        let got = hex::encode(sha.finalize());
        if got != want {
            return Err(bad(
                &self.path,
                format!("{STATE_MEMBER}: SHA-256 {got} differs from the header's {want}"),
            ));
        }
        Ok(())
    }

    async fn end(&mut self) -> Result<(), ArchiveError> {
        match self
            .tar
            .next_member()
            .await
            .map_err(|e| bad(&self.path, e))?
        {
            None => Ok(()),
            Some(m) => Err(bad(
                &self.path,
                format!("member {:?} is not in the manifest", m.name),
            )),
        }
    }
}

/// A volume's tar, positioned at the data of its first member, which must be the manifest.
async fn open_manifest(path: &Path) -> Result<TarReader, ArchiveError> {
    let mut tar = TarReader::new(read_file(path)?);
    let first = tar
        .next_member()
        .await
        .map_err(|e| bad(path, e))?
        .ok_or_else(|| bad(path, "an empty tar, not an s3ferry archive"))?;
    if first.name != MANIFEST {
        return Err(bad(
            path,
            format!(
                "not an s3ferry archive: its first member is {:?}, not {MANIFEST}",
                first.name
            ),
        ));
    }
    Ok(tar)
}

/// The manifest's first line as a header of a format and volume this s3ferry reads.
fn parse_header(path: &Path, line: &str) -> Result<Header, ArchiveError> {
    let header: Header =
        serde_json::from_str(line).map_err(|e| damaged(path, format!("its header: {e}")))?;
    if header.format != FORMAT || header.version != VERSION {
        return Err(bad(
            path,
            format!(
                "format {:?} version {} is not {FORMAT} version {VERSION}",
                header.format, header.version
            ),
        ));
    }
    if header.volume == 0 || header.volume > header.volumes {
        return Err(bad(
            path,
            format!("volume {} of {}", header.volume, header.volumes),
        ));
    }
    Ok(header)
}

/// The first line of a volume's manifest, reading no further than that line (the whole
/// manifest is read when the volume is verified).
async fn read_header(path: &Path) -> Result<Header, ArchiveError> {
    let mut tar = open_manifest(path).await?;
    let mut head = Vec::new();
    loop {
        if let Some(i) = head.iter().position(|b| *b == b'\n') {
            head.truncate(i);
            break;
        }
        if head.len() > 1 << 20 {
            return Err(bad(path, "the manifest's header line is over 1 MiB"));
        }
        match tar.read_chunk(64 << 10).await.map_err(|e| bad(path, e))? {
            Some(c) => head.extend_from_slice(&c),
            None => break,
        }
    }
    if head.is_empty() {
        return Err(bad(path, "the manifest is empty"));
    }
    let line = String::from_utf8(head).map_err(|_| bad(path, "the manifest is not UTF-8"))?;
    parse_header(path, &line)
}

/// The volumes given, grouped by archive and ordered by sequence number and volume.
async fn group(paths: &[PathBuf]) -> Result<Vec<(Header, Vec<PathBuf>, Vec<u32>)>, ArchiveError> {
    type Volumes = BTreeMap<u32, (Header, PathBuf)>;
    let mut by: BTreeMap<(String, u64, String), Volumes> = BTreeMap::new();
    for p in paths {
        let h = read_header(p).await?;
        let vols = by
            .entry((h.source.clone(), h.seq, h.archive.clone()))
            .or_default();
        if let Some((first, _)) = vols.values().next() {
            if first.volumes != h.volumes || first.created != h.created {
                return Err(bad(
                    p,
                    format!("disagrees with the other volumes of archive {}", h.archive),
                ));
            }
        }
        if let Some((_, other)) = vols.get(&h.volume) {
            return Err(bad(
                p,
                format!(
                    "volume {} of archive {} is also given as {}",
                    h.volume,
                    h.archive,
                    other.display()
                ),
            ));
        }
        vols.insert(h.volume, (h, p.clone()));
    }
    // Every group has at least the volume that made it.
    Ok(by
        .into_values()
        .filter_map(|vols| {
            let n = vols.values().next().map_or(0, |(h, _)| h.volumes);
            let missing = (1..=n).filter(|v| !vols.contains_key(v)).collect();
            let mut it = vols.into_values();
            let (h, p) = it.next()?;
            let mut paths = vec![p];
            paths.extend(it.map(|(_, p)| p));
            Some((h, paths, missing))
        })
        .collect())
}

/// A split object followed across volumes: its whole SHA-256.
struct Whole {
    key: String,
    next: u64,
    sha: Sha256,
}

/// Check every given volume of one archive. `ops` collects its moves and deletes, `listed`
/// its puts (one line per object).
async fn verify_group(
    header: &Header,
    volumes: &[PathBuf],
    missing: Vec<u32>,
    mut ops: Option<&mut Spill<Line>>,
    mut listed: Option<&mut Spill<Line>>,
    local: bool,
) -> Result<Verified, ArchiveError> {
    let mut v = Verified {
        header: header.clone(),
        volumes: volumes.to_vec(),
        puts: 0,
        put_bytes: 0,
        moves: 0,
        deletes: 0,
        missing,
    };
    let mut whole: Option<Whole> = None;
    for path in volumes {
        let mut vol = Volume::open(path).await?;
        let h = vol.header.clone();
        if h.archive != header.archive {
            return Err(bad(path, "belongs to another archive"));
        }
        let mut n = 0u64;
        while let Some(l) = vol.next_line(n)? {
            n += 1;
            if local && l.op != Op::Delete && !is_dir_marker(&l) {
                if let Err(e) = key_to_relpath(&l.key) {
                    return Err(bad(
                        path,
                        format!("{:?} cannot be a file in a directory ({e}): import into s3://... instead", l.key),
                    ));
                }
            }
            match l.op {
                Op::Put => {
                    if l.volume != h.volume || l.offset + l.length > l.size {
                        return Err(bad(
                            path,
                            format!("manifest line {}: bad piece of {:?}", n + 1, l.key),
                        ));
                    }
                    vol.member_of(&l).await?;
                    let mut piece = Sha256::new();
                    let mut crc = Crc64::default();
                    // Follow the whole object when its first piece was seen.
                    let follow = match &mut whole {
                        Some(w) if w.key == l.key && w.next == l.offset => true,
                        _ => {
                            whole = (l.offset == 0).then(|| Whole {
                                key: l.key.clone(),
                                next: 0,
                                sha: Sha256::new(),
                            });
                            whole.is_some()
                        }
                    };
                    while let Some(c) = vol.tar.read_chunk(CHUNK).await.map_err(|e| bad(path, e))? {
                        piece.update(&c);
                        crc.update(&c);
                        if follow {
                            if let Some(w) = &mut whole {
                                w.sha.update(&c);
                            }
                        }
                    }
                    let piece = hex::encode(piece.finalize());
                    let want = if l.is_piece() {
                        &l.piece_sha256
                    } else {
                        &l.sha256
                    };
                    if want.as_deref() != Some(piece.as_str()) {
                        return Err(bad(
                            path,
                            format!(
                                "damaged volume: {:?}: SHA-256 {piece} differs from the \
                                 manifest's {}",
                                l.key,
                                want.as_deref().unwrap_or("(none)")
                            ),
                        ));
                    }
                    if !l.is_piece() {
                        let c = crc64_to_b64(crc.finish());
                        if l.crc64nvme.as_deref().is_some_and(|w| w != c) {
                            return Err(bad(
                                path,
                                format!("{:?}: CRC64NVME {c} differs from the manifest's", l.key),
                            ));
                        }
                    }
                    if let Some(w) = &mut whole {
                        w.next = l.offset + l.length;
                    }
                    if l.ends_object() {
                        if let Some(w) = whole.take().filter(|w| w.key == l.key) {
                            let got = hex::encode(w.sha.finalize());
                            if l.sha256.as_deref() != Some(got.as_str()) {
                                return Err(bad(path, format!("{:?}: the whole object's SHA-256 {got} differs from the manifest's", l.key)));
                            }
                        }
                        v.puts += 1;
                        v.put_bytes += l.size;
                        if let Some(s) = listed.as_deref_mut() {
                            s.push(&l).map_err(spill_err)?;
                        }
                    }
                }
                Op::Move | Op::Delete => {
                    if h.volume != 1 {
                        return Err(bad(
                            path,
                            format!("manifest line {}: a {:?} outside volume 1", n + 1, l.op),
                        ));
                    }
                    if l.op == Op::Move {
                        v.moves += 1;
                    } else {
                        v.deletes += 1;
                    }
                    if let Some(s) = ops.as_deref_mut() {
                        s.push(&l).map_err(spill_err)?;
                    }
                }
            }
        }
        if n != h.entries {
            return Err(bad(
                path,
                format!(
                    "the manifest has {n} entries, its header says {}",
                    h.entries
                ),
            ));
        }
        vol.state_member(None).await?;
        vol.end().await?;
    }
    Ok(v)
}

/// Check the structure and every checksum of the given volumes, changing nothing. Volumes
/// of one archive may be given alone (each verifies on its own); the missing ones are listed.
pub async fn verify(paths: &[PathBuf]) -> Result<Vec<Verified>, ArchiveError> {
    let mut out = Vec::new();
    for (h, vols, missing) in group(paths).await? {
        out.push(verify_group(&h, &vols, missing, None, None, false).await?);
    }
    Ok(out)
}

async fn read_marker(dest: &Dir) -> Result<(Option<Marker>, Option<String>), ArchiveError> {
    let key = dest.key(MARKER);
    match dest.store.get(&key, GetOptions::new()).await {
        Ok(g) => {
            let etag = g.meta.etag.clone();
            let data = g.bytes().await?;
            let m: Marker = serde_json::from_slice(&data).map_err(|e| {
                ArchiveError::Input(format!(
                    "{}: not an s3ferry archive marker ({e})",
                    dest.uri_of(MARKER)
                ))
            })?;
            Ok((Some(m), etag))
        }
        Err(e) if e.kind == ErrorKind::NotFound => Ok((None, None)),
        Err(e) => Err(e.into()),
    }
}

/// Apply archives to a destination: every archive to apply is verified first, checked
/// against the destination's marker, then applied in sequence order.
pub async fn import(
    paths: &[PathBuf],
    dest: &Dir,
    opts: &ImportOptions,
    journal: &Arc<Journal>,
    reporter: &Arc<dyn Reporter>,
) -> Result<ImportSummary, ArchiveError> {
    let start = Instant::now();
    let groups = group(paths).await?;
    let (mut marker, mut marker_etag) = read_marker(dest).await?;
    let mut summary = ImportSummary {
        dry_run: opts.dry_run,
        ..Default::default()
    };
    // Decide the fate of every archive before anything is verified or applied.
    let mut plan = Vec::new();
    let mut sim = marker.clone();
    for (h, vols, missing) in groups {
        if !missing.is_empty() {
            return Err(ArchiveError::Input(format!(
                "archive {} (seq {}) has {} volumes; missing: {} — nothing was applied",
                h.archive,
                h.seq,
                h.volumes,
                missing
                    .iter()
                    .map(|v| format!("volume {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        match order(sim.as_ref(), &h) {
            Order::AlreadyApplied => {
                reporter.note(&format!(
                    "archive {} (seq {}) was applied here already: nothing to do",
                    h.archive, h.seq
                ));
                summary.archives.push(outcome(&h, "already-applied"));
                continue;
            }
            Order::Refuse(why) if !opts.force => {
                return Err(ArchiveError::Input(format!(
                    "{why}; nothing was applied (--force applies it anyway)"
                )))
            }
            Order::Refuse(why) => reporter.note(&format!("--force: {why}")),
            Order::Apply => {}
        }
        sim = Some(advance(sim, &h, String::new()));
        plan.push((h, vols));
    }
    // Verify every archive to apply, collecting its operations.
    let mut checked = Vec::new();
    for (h, vols) in plan {
        let mut ops: Spill<Line> = Spill::new().map_err(spill_err)?;
        let mut listed: Spill<Line> = Spill::new().map_err(spill_err)?;
        let v = verify_group(
            &h,
            &vols,
            vec![],
            Some(&mut ops),
            Some(&mut listed),
            dest.store.capabilities().local,
        )
        .await?;
        if !opts
            .max_delete
            .allows(v.deletes, h.source_objects + v.deletes)
        {
            return Err(ArchiveError::Input(format!(
                "refusing to delete {} objects of {} (archive {}, seq {}; limit {}): re-run with --max-delete {} to allow it, or --dry-run to see the plan; nothing was applied",
                v.deletes,
                dest.uri,
                h.archive,
                h.seq,
                opts.max_delete.as_option(),
                v.deletes
            )));
        }
        checked.push((v, ops, listed));
    }
    if !opts.dry_run && !checked.is_empty() {
        let walk = dest
            .store
            .capabilities()
            .local
            .then_some(dest.prefix.as_str());
        let n = cleanup_orphan_uploads(&dest.store, journal, walk).await;
        if n > 0 {
            reporter.note(&format!("aborted {n} upload(s) a killed import left"));
        }
    }
    for (v, ops, listed) in checked {
        let h = v.header.clone();
        let mut o = outcome(
            &h,
            if opts.dry_run {
                "would-apply"
            } else {
                "applied"
            },
        );
        if opts.dry_run {
            for l in listed.read_back().map_err(spill_err)? {
                let l = l.map_err(spill_err)?;
                reporter.record(&Record::new(&l.key, Outcome::WouldCopy, "put", l.size));
            }
            for l in ops.read_back().map_err(spill_err)? {
                let l = l.map_err(spill_err)?;
                match l.op {
                    Op::Move => reporter.record(&Record::new(
                        &l.key,
                        Outcome::WouldCopy,
                        format!("move from {}", l.from.as_deref().unwrap_or("")),
                        0,
                    )),
                    _ => reporter.record(&Record::new(
                        &l.key,
                        Outcome::WouldDelete,
                        "deleted",
                        l.size,
                    )),
                }
            }
            (o.puts, o.put_bytes, o.moves, o.deletes) = (v.puts, v.put_bytes, v.moves, v.deletes);
            summary.archives.push(o);
            continue;
        }
        apply(&v, ops, dest, opts, journal, reporter, &mut o).await?;
        summary.failed += o.failed;
        if o.failed > 0 {
            o.outcome = "incomplete".into();
            summary.archives.push(o);
            reporter.note(&format!(
                "archive {} (seq {}) was not applied completely: the marker stays at the previous archive; run the import again (it is idempotent)",
                h.archive, h.seq
            ));
            break;
        }
        let next = advance(marker.take(), &h, now_rfc3339());
        let body =
            serde_json::to_vec_pretty(&next).map_err(|e| ArchiveError::Input(e.to_string()))?;
        let mode = match (&marker_etag, dest.store.capabilities().conditional_writes) {
            (_, false) => PutMode::Overwrite,
            (Some(e), true) => PutMode::Update { etag: e.clone() },
            (None, true) => PutMode::Create,
        };
        let put = dest
            .store
            .put(
                &dest.key(MARKER),
                Bytes::from(body),
                PutOptions::new()
                    .mode(mode)
                    .content_type(Some("application/json".into())),
            )
            .await
            .map_err(|e| match e.kind {
                ErrorKind::PreconditionFailed | ErrorKind::AlreadyExists => ArchiveError::Input(format!(
                    "{}: another import changed the marker while this one ran; the objects are in place, run the import again to record it",
                    dest.uri_of(MARKER)
                )),
                _ => e.into(),
            })?;
        marker_etag = put.etag;
        summary.seq = Some(next.seq);
        marker = Some(next);
        summary.archives.push(o);
    }
    if summary.seq.is_none() {
        summary.seq = marker.map(|m| m.seq);
    }
    summary.elapsed_secs = start.elapsed().as_secs_f64();
    Ok(summary)
}

fn outcome(h: &Header, what: &str) -> ArchiveOutcome {
    ArchiveOutcome {
        archive: h.archive.clone(),
        source: h.source.clone(),
        seq: h.seq,
        kind: h.kind.as_str().into(),
        outcome: what.into(),
        puts: 0,
        put_bytes: 0,
        moves: 0,
        deletes: 0,
        failed: 0,
    }
}

/// An empty `dir/` object: a folder marker, which a directory holds as a directory.
fn is_dir_marker(l: &Line) -> bool {
    l.key.ends_with('/') && l.size == 0
}

/// The put options a line asks for: Content-Type, user metadata, tags, and the modification
/// time (an object gets it as metadata only if the source had one; a file always).
fn put_options(l: &Line, local: bool) -> PutOptions {
    let mtime = l
        .mtime
        .as_deref()
        .and_then(s3ferry_store::parse_mtime)
        .or_else(|| {
            local
                .then_some(l.last_modified.as_deref())
                .flatten()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&chrono::Utc).into())
        });
    PutOptions::new()
        .content_type(l.content_type.clone())
        .metadata(l.metadata.clone())
        .tags(l.tags.clone())
        .mtime(mtime)
        .size(Some(l.size))
}

/// An object being written in parts (big, or split across volumes).
struct Open {
    line: Line,
    out: PartBuffer<MultipartWriter>,
    sha: Sha256,
}

/// A small object read from a volume, on its way to the executor that writes it.
struct SmallPut {
    rel: String,
    key: String,
    data: Bytes,
    opts: PutOptions,
    /// Its bytes' share of the memory budget, until they are written.
    held: s3ferry_engine::transfer::Reservation,
    store: s3ferry_store::DynStore,
}

fn fail_record(
    o: &mut ArchiveOutcome,
    reporter: &Arc<dyn Reporter>,
    key: &str,
    size: u64,
    e: &StoreError,
) {
    o.failed += 1;
    reporter.record(&Record::failure(key, size, e));
}

async fn apply(
    v: &Verified,
    ops: Spill<Line>,
    dest: &Dir,
    opts: &ImportOptions,
    journal: &Arc<Journal>,
    reporter: &Arc<dyn Reporter>,
    o: &mut ArchiveOutcome,
) -> Result<(), ArchiveError> {
    // Every move's source must be at the destination with its size (or the move was done
    // already: the new key is there, the old one gone): checked before anything is written.
    let mut checked: Spill<Line> = Spill::new().map_err(spill_err)?;
    for l in ops.read_back().map_err(spill_err)? {
        let l = l.map_err(spill_err)?;
        if l.op == Op::Move {
            move_source(dest, &l).await.map_err(|e| {
                ArchiveError::Input(format!(
                    "archive {} (seq {}): {e}; nothing was applied",
                    v.header.archive, v.header.seq
                ))
            })?;
        }
        checked.push(&l).map_err(spill_err)?;
    }
    let ops = checked;
    let local = dest.store.capabilities().local;
    let cfg = &opts.transfer;
    let small = cfg.part_size.max(1);
    reporter.planned(v.puts + v.moves + v.deletes, v.put_bytes);
    // Small objects are read here, in tar order, and written by the engine's executor
    // (`--concurrency` at a time, through a channel that bounds what is read ahead); objects in
    // parts are streamed here, one at a time, as the tar is read.
    let exec = Arc::new(Executor::new(
        opts.concurrency,
        opts.cancel.clone(),
        reporter.clone(),
    ));
    let (tx, rx) = tokio::sync::mpsc::channel::<SmallPut>(opts.concurrency.max(1));
    let small_puts = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|p| (Ok::<_, std::convert::Infallible>(p), rx))
    });
    let writer = exec.run_once(small_puts, |p: SmallPut, _| async move {
        let n = p.data.len() as u64;
        let r = p.store.put(&p.key, p.data, p.opts).await.map(|_| ());
        drop(p.held);
        match r {
            Ok(()) => Done::Record(Record::new(p.rel, Outcome::Copy, "put", n)),
            Err(e) => Done::failed(p.rel, n, e),
        }
    });
    let mut state =
        tempfile::tempfile().map_err(|e| ArchiveError::Input(format!("temp file: {e}")))?;
    let reader = async {
        let tx = tx;
        let mut open: Option<Open> = None;
        for path in &v.volumes {
            let mut vol = Volume::open(path).await?;
            let mut n = 0u64;
            while let Some(l) = vol.next_line(n)? {
                n += 1;
                if l.op != Op::Put {
                    continue;
                }
                if exec.stopping() && (open.is_none() || l.offset == 0) {
                    // A stop (or a fatal error): nothing new starts; the puts in flight finish, an
                    // upload in parts is aborted.
                    if let Some(w) = open.take() {
                        w.out.into_inner().abort().await;
                    }
                    return Ok(());
                }
                vol.member_of(&l).await?;
                let key = dest.key(&l.key);
                if local && is_dir_marker(&l) {
                    // A folder marker is a directory here.
                    let made = match dest.store.local_path(key.trim_end_matches('/')) {
                        Some(p) => std::fs::create_dir_all(&p).map_err(|e| {
                            StoreError::new(
                                ErrorKind::Other,
                                "mkdir",
                                format!("{}: {e}", p.display()),
                            )
                            .with_key(&l.key)
                        }),
                        None => Ok(()),
                    };
                    match made {
                        Ok(()) => {
                            reporter.record(&Record::new(&l.key, Outcome::Copy, "directory", 0))
                        }
                        Err(e) => fail_record(o, reporter, &l.key, 0, &e),
                    }
                    continue;
                }
                if !l.is_piece() && l.size <= small {
                    let data = vol.tar.read_data().await.map_err(|e| bad(path, e))?;
                    let sha = hex::encode(Sha256::digest(&data));
                    if l.sha256.as_deref() != Some(sha.as_str()) {
                        return Err(bad(
                            path,
                            format!("{:?} changed since it was verified", l.key),
                        ));
                    }
                    let opts = put_options(&l, local)
                        .crc64nvme(l.crc64nvme.as_deref().and_then(crc64_from_b64));
                    let held = cfg.reserve(l.size).await?;
                    let put = SmallPut {
                        rel: l.key.clone(),
                        key,
                        data,
                        opts,
                        held,
                        store: dest.store.clone(),
                    };
                    if tx.send(put).await.is_err() {
                        // The writer stopped (a stop or a fatal error): read no further.
                        return Ok(());
                    }
                    continue;
                }
                // In parts: start at the first piece, go on across volumes, finish at the last.
                if l.offset == 0 {
                    if let Some(prev) = open.take() {
                        let e = StoreError::new(
                            ErrorKind::Corrupt,
                            "import",
                            "its last piece is missing",
                        )
                        .with_key(&prev.line.key);
                        prev.out.into_inner().abort().await;
                        fail_record(o, reporter, &prev.line.key, prev.line.size, &e);
                    }
                    let layout = PartLayout::Uniform(part_size_for(l.size, cfg.part_size));
                    match MultipartWriter::create(
                        dest.store.clone(),
                        &key,
                        put_options(&l, local),
                        layout,
                        cfg,
                        journal.clone(),
                    )
                    .await
                    {
                        Ok(w) => {
                            open = Some(Open {
                                line: l.clone(),
                                out: PartBuffer::new(w),
                                sha: Sha256::new(),
                            })
                        }
                        Err(e) => fail_record(o, reporter, &l.key, l.size, &e),
                    }
                }
                let Some(mut w) = open.take() else {
                    continue; // its upload failed; the member is skipped
                };
                if w.line.key != l.key {
                    let e =
                        StoreError::new(ErrorKind::Corrupt, "import", "its last piece is missing")
                            .with_key(&w.line.key);
                    w.out.into_inner().abort().await;
                    fail_record(o, reporter, &w.line.key, w.line.size, &e);
                    continue;
                }
                let mut failed = None;
                while let Some(c) = vol.tar.read_chunk(CHUNK).await.map_err(|e| bad(path, e))? {
                    w.sha.update(&c);
                    if failed.is_none() {
                        if let Err(e) = w.out.write(&c).await {
                            failed = Some(e);
                        }
                    }
                    reporter.bytes(c.len() as u64);
                }
                if let Some(e) = failed {
                    w.out.into_inner().abort().await;
                    fail_record(o, reporter, &l.key, l.size, &e);
                    continue;
                }
                if !l.ends_object() {
                    open = Some(w);
                    continue;
                }
                let sha = hex::encode(std::mem::take(&mut w.sha).finalize());
                let r = match w.out.finish().await {
                    Ok((mw, _)) if l.sha256.as_deref() == Some(sha.as_str()) => mw
                        .finish(l.crc64nvme.as_deref().and_then(crc64_from_b64))
                        .await
                        .map(|_| ()),
                    Ok((mw, _)) => {
                        mw.abort().await;
                        Err(StoreError::new(
                            ErrorKind::Corrupt,
                            "import",
                            format!("SHA-256 {sha} differs from the manifest's"),
                        )
                        .with_key(&l.key))
                    }
                    Err(e) => Err(e),
                };
                match r {
                    Ok(()) => {
                        o.puts += 1;
                        o.put_bytes += l.size;
                        reporter.record(&Record::new(&l.key, Outcome::Copy, "put", l.size));
                    }
                    Err(e) => fail_record(o, reporter, &l.key, l.size, &e),
                }
            }
            vol.state_member(Some(&mut state)).await?;
        }
        if let Some(w) = open.take() {
            w.out.into_inner().abort().await;
            return Err(ArchiveError::Input(format!(
                "{:?}: its last piece is missing",
                w.line.key
            )));
        }
        Ok::<(), ArchiveError>(())
    };
    let (read, ()) = tokio::join!(reader, async { writer.await.unwrap_or(()) });
    let s = exec.summary();
    o.puts += s.copied;
    o.put_bytes += s.copied_bytes;
    o.failed += s.failed;
    read?;
    if let Some(e) = exec.take_fatal() {
        return Err(e.into());
    }
    if let Some(why) = opts.cancel.reason() {
        return Err(ArchiveError::Interrupted(why));
    }

    // Moves (copies at the destination, then the old key goes), then deletes.
    let mut deletes = Vec::new();
    for l in ops.read_back().map_err(spill_err)? {
        let l = l.map_err(spill_err)?;
        // A key that cannot be a file was never written to a directory: nothing to delete.
        if l.op == Op::Delete && local && key_to_relpath(&l.key).is_err() {
            o.deletes += 1;
            continue;
        }
        if l.op == Op::Delete {
            deletes.push(l);
            continue;
        }
        let from = l.from.clone().unwrap_or_default();
        match apply_move(dest, &from, &l, cfg, journal, reporter).await {
            Ok(()) => {
                o.moves += 1;
                reporter.record(&Record::new(
                    &l.key,
                    Outcome::Copy,
                    format!("moved from {from}"),
                    0,
                ));
            }
            Err(e) => fail_record(o, reporter, &l.key, l.size, &e),
        }
    }
    for batch in deletes.chunks(1000) {
        let keys: Vec<String> = batch.iter().map(|l| dest.key(&l.key)).collect();
        let results = dest.store.delete_many(&keys).await?;
        for (l, r) in batch.iter().zip(results) {
            match r {
                Ok(()) => {
                    o.deletes += 1;
                    reporter.record(&Record::new(&l.key, Outcome::Delete, "deleted", l.size));
                }
                Err(e) if e.kind == ErrorKind::NotFound => o.deletes += 1,
                Err(e) => fail_record(o, reporter, &l.key, l.size, &e),
            }
        }
    }
    // The export's state, for the way back (`archive state`): only once everything is in.
    if o.failed == 0 && v.header.state_sha256.is_some() {
        use std::io::{Read, Seek};
        let mut data = Vec::new();
        state
            .seek(std::io::SeekFrom::Start(0))
            .and_then(|_| state.read_to_end(&mut data))
            .map_err(|e| ArchiveError::Input(format!("temp file: {e}")))?;
        dest.store
            .put(
                &dest.key(STATE_OBJECT),
                Bytes::from(data),
                PutOptions::new().content_type(Some("application/gzip".into())),
            )
            .await?;
    }
    Ok(())
}

/// Copy `from` to the line's key at the destination (server-side where the store can),
/// then delete `from`. Done already (the new key there, the old gone) counts as done.
async fn apply_move(
    dest: &Dir,
    from: &str,
    l: &Line,
    cfg: &TransferConfig,
    journal: &Arc<Journal>,
    reporter: &Arc<dyn Reporter>,
) -> Result<(), StoreError> {
    let (fk, tk) = (dest.key(from), dest.key(&l.key));
    let Some(meta) = move_source(dest, l).await? else {
        return Ok(()); // done already
    };
    // Sides whose prefixes are the whole keys: the copy's relative key is empty.
    let src = Side::new(dest.store.clone(), fk.clone());
    let dst = Side::new(dest.store.clone(), tk);
    let entry = Entry {
        rel: String::new(),
        meta,
    };
    copy_object(&src, &dst, &entry, cfg, journal, reporter).await?;
    dest.store.delete(&fk).await
}

/// A move's source at the destination (`None`: the move was done already), or why the move
/// cannot be made there.
async fn move_source(
    dest: &Dir,
    l: &Line,
) -> Result<Option<s3ferry_store::ObjectMeta>, StoreError> {
    let from = l.from.as_deref().unwrap_or_default();
    match dest.store.head(&dest.key(from)).await {
        Ok(m) if m.size == l.size => Ok(Some(m)),
        Ok(m) => Err(StoreError::new(
            ErrorKind::PreconditionFailed,
            "move",
            format!("its source {from:?} has {} bytes at the destination, not {}", m.size, l.size),
        )
        .with_key(&l.key)),
        Err(e) if e.kind == ErrorKind::NotFound => match dest.store.head(&dest.key(&l.key)).await {
            Ok(m) if m.size == l.size => Ok(None),
            _ => Err(StoreError::new(
                ErrorKind::NotFound,
                "move",
                format!("its source {from:?} is not at the destination (it diverged from the source's sequence)"),
            )
            .with_key(&l.key)),
        },
        Err(e) => Err(e),
    }
}

/// Write the state the destination's last applied archive carried to `out`, for the export
/// side's next `--since-state` (when its own copy is lost, or exports run elsewhere).
pub async fn carry_back(
    dest: &Dir,
    out: &Path,
) -> Result<super::format::StateHeader, ArchiveError> {
    let got = match dest
        .store
        .get(&dest.key(STATE_OBJECT), GetOptions::new())
        .await
    {
        Ok(g) => g.bytes().await?,
        Err(e) if e.kind == ErrorKind::NotFound => {
            return Err(ArchiveError::Input(format!(
                "{}: no archive with a state was imported here",
                dest.uri_of(STATE_OBJECT)
            )))
        }
        Err(e) => return Err(e.into()),
    };
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".s3ferry-tmp.")
        .permissions(super::io::readable())
        .tempfile_in(&dir)
        .map_err(|e| bad(&dir, e))?;
    tmp.write_all(&got).map_err(|e| bad(out, e))?;
    tmp.as_file().sync_all().map_err(|e| bad(out, e))?;
    let (header, _) = super::io::read_state(tmp.path())?;
    tmp.persist(out).map_err(|e| bad(out, e.error))?;
    Ok(header)
}
