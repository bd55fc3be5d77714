//! Local file system backend. Keys map to paths only through [`key_to_relpath`]; writes go to a
//! temp file in the target's directory and are renamed into place once complete and verified,
//! so a partial file never appears under its final name. Symlinks are not followed unless asked
//! ([`LocalStore::with_follow_symlinks`], for reading only): the walk skips them and a write
//! refuses a path with a symlinked directory in it.
//!
//! Multipart uploads are temp files written at part offsets (`(n-1) * part_size`); the upload
//! id names the temp file, so an upload left by a killed process is found by
//! [`Store::list_multipart`] and removed by [`Store::abort_multipart`].

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, FileType, OpenOptions};
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream, StreamExt};

use crate::checksum::{crc64nvme, crc64nvme_combine};
use crate::key::{key_to_relpath, UnsafeKey};
use crate::{
    Capabilities, CopyOptions, CopySource, ErrorKind, GetOptions, GetResult, ListOptions,
    MultipartUpload, ObjectMeta, PartInfo, PartLayout, PutMode, PutOptions, PutResult, Result,
    Store, StoreError,
};

/// Names starting with this are ours (in-flight writes); listings skip them.
pub const TEMP_PREFIX: &str = ".s3ferry-tmp.";
const READ_CHUNK: u64 = 8 * 1024 * 1024;
/// Bytes of a streamed part written per blocking call.
const STREAM_BATCH: u64 = 1024 * 1024;

#[derive(Clone, Debug)]
pub struct LocalStore {
    root: PathBuf,
    fsync: bool,
    /// Read through symlinks (a source's `--follow-symlinks`); directory loops are reported.
    follow_symlinks: bool,
    /// The file system folds case (`A.txt` and `a.txt` are one file): writes check for twins.
    case_insensitive: Option<CaseFolding>,
    /// Held, when case folds, from a write's twin check to its rename (and while directories
    /// are made), so two twins written at once cannot both pass the check.
    fold_lock: Arc<Mutex<()>>,
    uploads: Arc<Mutex<HashMap<String, PutOptions>>>,
}

/// How a case-insensitive root was recognised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CaseFolding {
    /// Probed: the file system itself folds names, so a twin exists only if the exact name
    /// does (one stat before the directory scan).
    Probed,
    /// Declared (tests: a model of a folding file system on one that does not fold); every
    /// write scans its directories.
    Declared,
}

fn err(kind: ErrorKind, op: &'static str, key: &str, msg: impl Into<String>) -> StoreError {
    StoreError::new(kind, op, msg).with_key(key)
}

/// An I/O error reading one file or directory of the tree (list, get, head). Permission denied
/// there is that entry's problem, not the job's: it is not the fatal `PermissionDenied` kind
/// (which stops a job, as bad credentials do) but a per-object failure; the message says
/// "permission denied". The root itself (empty key) stays fatal.
fn read_io(op: &'static str, key: &str, e: std::io::Error) -> StoreError {
    let mut se = StoreError::io(op, key, e);
    if se.kind == ErrorKind::PermissionDenied && !key.is_empty() {
        se.kind = ErrorKind::Other;
        se.message = format!("permission denied: {}", se.message);
    }
    se
}

/// An I/O error while writing `key` through its temp file `tmp`. A full disk names the file
/// being written (the final path), since that error stops the job: `writing /dst/a.bin: No space
/// left on device (os error 28)`.
fn write_io(op: &'static str, key: &str, tmp: &Path, e: std::io::Error) -> StoreError {
    let mut se = StoreError::io(op, key, e);
    if se.kind == ErrorKind::StorageFull {
        let name = key.rsplit('/').next().unwrap_or(key);
        se.message = format!(
            "writing {}: {}",
            tmp.with_file_name(name).display(),
            se.message
        );
    }
    se
}

fn unsafe_key(op: &'static str, key: &str, why: UnsafeKey) -> StoreError {
    err(
        ErrorKind::InvalidInput,
        op,
        key,
        format!("unsafe key: {why}"),
    )
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(StoreError::new(
            ErrorKind::Other,
            "local",
            format!("worker task failed: {e}"),
        ))
    })
}

/// Is `rest` (a name after [`TEMP_PREFIX`]) one of our temp ids: `<run>_<random>[.<layout>]`, or
/// an earlier version's `<32 hex>[.<part size>]`?
fn is_temp_id(rest: &str) -> bool {
    let base = rest.split_once('.').map_or(rest, |(b, _)| b);
    crate::run_of_upload_id(base).is_some()
        || (base.len() == 32 && base.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A fresh temp/upload id: `<run id>_<random>` (see [`crate::run_id`]).
fn temp_id() -> String {
    let r = uuid::Uuid::new_v4().simple().to_string();
    format!("{}_{}", crate::run_id(), &r[..16])
}

/// The metadata of the file at `path`: of a symlink itself unless links are followed.
fn stat(follow: bool, path: &Path) -> std::io::Result<std::fs::Metadata> {
    if follow {
        std::fs::metadata(path)
    } else {
        std::fs::symlink_metadata(path)
    }
}

/// An entry of `dir` whose name equals `name` but for case (on a folding file system, the same
/// file under another name), if there is one.
fn case_twin(dir: &Path, name: &std::ffi::OsStr, how: CaseFolding) -> Option<String> {
    if how == CaseFolding::Probed && std::fs::symlink_metadata(dir.join(name)).is_err() {
        return None;
    }
    let name = name.to_str()?;
    let folded = name.to_lowercase();
    std::fs::read_dir(dir).ok()?.find_map(|e| {
        let n = e.ok()?.file_name().into_string().ok()?;
        (n != name && !n.starts_with(TEMP_PREFIX) && n.to_lowercase() == folded).then_some(n)
    })
}

fn parent_key(key: &str) -> &str {
    key.rsplit_once('/').map_or("", |(p, _)| p)
}

fn meta_of(key: String, md: &std::fs::Metadata) -> ObjectMeta {
    let mtime = md.modified().ok();
    ObjectMeta {
        key,
        size: md.len(),
        last_modified: mtime,
        mtime,
        inode: Some(md.ino()),
        ctime: SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::new(
            md.ctime().max(0) as u64,
            md.ctime_nsec().clamp(0, 999_999_999) as u32,
        )),
        metadata: Some(BTreeMap::new()),
        ..Default::default()
    }
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            fsync: true,
            follow_symlinks: false,
            case_insensitive: None,
            fold_lock: Arc::default(),
            uploads: Arc::default(),
        }
    }

    /// Probe whether the root's file system folds case (macOS, vfat/exFAT, ext4 casefold
    /// directories): a temp file is created and looked up by its upper-case name. On such a
    /// file system a write whose name (or a directory on its way) differs only by case from an
    /// existing entry fails alone (`AlreadyExists`) instead of overwriting the other file. A
    /// root that does not exist yet, or cannot be probed, is taken as case-sensitive.
    pub fn detect_case_folding(mut self) -> Self {
        let probe = self.root.join(format!("{TEMP_PREFIX}{}", temp_id()));
        if File::create(&probe).is_ok() {
            let upper = self.root.join(format!(
                "{}{}",
                TEMP_PREFIX.to_ascii_uppercase(),
                probe
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_prefix(TEMP_PREFIX))
                    .unwrap_or_default()
                    .to_ascii_uppercase()
            ));
            if std::fs::symlink_metadata(&upper).is_ok() {
                tracing::info!(
                    "{} folds case: names differing only by case are one file",
                    self.root.display()
                );
                self.case_insensitive = Some(CaseFolding::Probed);
            }
            let _ = std::fs::remove_file(&probe);
        }
        self
    }

    /// Treat the root as case-insensitive without probing: a model of a folding file system
    /// for tests on ones that do not fold.
    pub fn with_case_insensitive_names(mut self) -> Self {
        self.case_insensitive = Some(CaseFolding::Declared);
        self
    }

    /// Whether writes treat names differing only by case as one.
    pub fn folds_case(&self) -> bool {
        self.case_insensitive.is_some()
    }

    /// The lock of [`LocalStore::fold_lock`], when case folds.
    fn fold_guard(&self) -> Option<std::sync::MutexGuard<'_, ()>> {
        self.case_insensitive
            .map(|_| self.fold_lock.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// [`LocalStore::prepare_write`] under the fold lock.
    fn prepare(&self, op: &'static str, key: &str) -> Result<(PathBuf, PathBuf)> {
        let _g = self.fold_guard();
        Self::prepare_write(&self.root, self.case_insensitive, op, key)
    }

    /// List and read through symlinks, as if each were the file or directory it points to
    /// (writes still never go through one). A link to one of its own parent directories is
    /// reported as a loop and not entered; a dangling link is reported and skipped.
    pub fn with_follow_symlinks(mut self, follow: bool) -> Self {
        self.follow_symlinks = follow;
        self
    }

    /// Skip fsync of files and directories (faster; a power loss may then lose recent writes).
    pub fn with_fsync(mut self, fsync: bool) -> Self {
        self.fsync = fsync;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Create the root directory if missing.
    pub fn create_root(&self) -> Result<()> {
        fs_err::create_dir_all(&self.root)
            .map_err(|e| StoreError::io("create directory", &self.root.display().to_string(), e))
    }

    fn path_for(&self, op: &'static str, key: &str) -> Result<PathBuf> {
        key_to_relpath(key)
            .map(|rel| self.root.join(rel))
            .map_err(|w| unsafe_key(op, key, w))
    }

    /// Create the directories above `key`, refusing symlinks and files in the way.
    /// Returns the parent directory and the final path.
    fn prepare_write(
        root: &Path,
        fold: Option<CaseFolding>,
        op: &'static str,
        key: &str,
    ) -> Result<(PathBuf, PathBuf)> {
        let rel = key_to_relpath(key).map_err(|w| unsafe_key(op, key, w))?;
        let mut dir = root.to_path_buf();
        let comps: Vec<_> = rel.iter().collect();
        let twin_check = |dir: &Path, name: &std::ffi::OsStr| {
            match fold.and_then(|f| case_twin(dir, name, f)) {
            Some(twin) => Err(err(
                ErrorKind::AlreadyExists,
                op,
                key,
                format!(
                    "{} and {} differ only by case, which this file system folds into one name; not overwritten",
                    dir.join(name).display(),
                    dir.join(&twin).display()
                ),
            )),
            None => Ok(()),
        }
        };
        for c in &comps[..comps.len().saturating_sub(1)] {
            twin_check(&dir, c)?;
            dir.push(c);
            match std::fs::symlink_metadata(&dir) {
                Ok(md) if md.file_type().is_symlink() => {
                    return Err(err(
                        ErrorKind::InvalidInput,
                        op,
                        key,
                        format!("{} is a symlink; not followed", dir.display()),
                    ))
                }
                Ok(md) if md.is_dir() => {}
                Ok(_) => {
                    // A file and a directory of the same name: AlreadyExists, so a sync can try
                    // again once its deletes have run.
                    return Err(err(
                        ErrorKind::AlreadyExists,
                        op,
                        key,
                        format!("{} is a file, so it cannot hold {key:?}", dir.display()),
                    ));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    match std::fs::create_dir(&dir) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {
                        }
                        Err(e) => return Err(StoreError::io(op, key, e)),
                    }
                }
                Err(e) => return Err(StoreError::io(op, key, e)),
            }
        }
        if let Some(name) = comps.last() {
            twin_check(&dir, name)?;
        }
        let path = root.join(&rel);
        if let Ok(md) = std::fs::symlink_metadata(&path) {
            if md.file_type().is_symlink() {
                return Err(err(
                    ErrorKind::InvalidInput,
                    op,
                    key,
                    format!("{} is a symlink; not replaced", path.display()),
                ));
            }
            if md.is_dir() {
                return Err(err(
                    ErrorKind::AlreadyExists,
                    op,
                    key,
                    format!("{} is a directory", path.display()),
                ));
            }
        }
        Ok((dir, path))
    }

    /// Move a finished temp file into place: mtime, fsync, mode check, rename, fsync the directory.
    fn finish_staged(
        &self,
        op: &'static str,
        key: &str,
        file: &File,
        tmp: &Path,
        dst: &Path,
        opts: &PutOptions,
    ) -> Result<()> {
        let io = |e| write_io(op, key, tmp, e);
        if let Some(t) = opts.mtime {
            filetime::set_file_handle_times(
                file,
                None,
                Some(filetime::FileTime::from_system_time(t)),
            )
            .map_err(io)?;
        }
        if self.fsync {
            file.sync_all().map_err(io)?;
        }
        match &opts.mode {
            PutMode::Overwrite => {}
            PutMode::Create => {
                // link() fails if the name exists: an atomic create-only commit.
                std::fs::hard_link(tmp, dst).map_err(|e| match e.kind() {
                    std::io::ErrorKind::AlreadyExists => {
                        err(ErrorKind::AlreadyExists, op, key, "file already exists")
                    }
                    _ => io(e),
                })?;
                let _ = std::fs::remove_file(tmp);
                return self.sync_dir(op, key, dst);
            }
            PutMode::Update { .. } => {
                return Err(err(
                    ErrorKind::Unsupported,
                    op,
                    key,
                    "local files have no ETag for If-Match",
                ));
            }
        }
        {
            // A twin written since this write's first check must not be replaced.
            let _g = self.fold_guard();
            if _g.is_some() {
                Self::prepare_write(&self.root, self.case_insensitive, op, key)?;
            }
            std::fs::rename(tmp, dst).map_err(io)?;
        }
        self.sync_dir(op, key, dst)
    }

    fn sync_dir(&self, op: &'static str, key: &str, path: &Path) -> Result<()> {
        if self.fsync {
            if let Some(dir) = path.parent() {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| StoreError::io(op, key, e))?;
            }
        }
        Ok(())
    }

    fn temp_path(dir: &Path, upload_id: &str) -> PathBuf {
        dir.join(format!("{TEMP_PREFIX}{upload_id}"))
    }

    /// The temp file of an upload (or of a single write: the same namespace).
    fn temp_of(&self, op: &'static str, key: &str, upload_id: &str) -> Result<PathBuf> {
        if upload_id.is_empty() || upload_id.contains('/') || upload_id.contains("..") {
            return Err(err(ErrorKind::InvalidInput, op, key, "bad upload id"));
        }
        let dir = match parent_key(key) {
            "" => self.root.clone(),
            p => self.path_for(op, p)?,
        };
        Ok(Self::temp_path(&dir, upload_id))
    }

    /// The temp file of an upload and the part layout its id carries.
    fn upload_paths(
        &self,
        op: &'static str,
        key: &str,
        upload_id: &str,
    ) -> Result<(PathBuf, PartLayout)> {
        // Ids of earlier versions end in a plain part size.
        let layout = upload_id.rsplit_once('.').and_then(|(_, l)| {
            PartLayout::decode(l)
                .or_else(|| l.parse().ok().filter(|v| *v > 0).map(PartLayout::Uniform))
        });
        let Some(layout) = layout else {
            return Err(err(ErrorKind::InvalidInput, op, key, "bad upload id"));
        };
        Ok((self.temp_of(op, key, upload_id)?, layout))
    }

    /// Check a part's number and length against the upload's layout (only the last part may be
    /// shorter; which one is last is only known at completion, which checks the rest).
    fn check_part(
        op: &'static str,
        key: &str,
        layout: &PartLayout,
        n: u32,
        len: u64,
    ) -> Result<()> {
        if n == 0 || len > layout.len(n) {
            return Err(err(
                ErrorKind::InvalidInput,
                op,
                key,
                format!("part {n} of {len} bytes does not fit the upload's part layout"),
            ));
        }
        Ok(())
    }
}

/// Walk `root` in S3 key byte order, sending entries whose key starts with `prefix` and sorts
/// after `start_after`. Directories sort as `name/`, which gives the global byte order.
fn walk(
    root: &Path,
    prefix: &str,
    start_after: Option<&str>,
    report_skipped: bool,
    follow: bool,
    tx: &tokio::sync::mpsc::Sender<Result<ObjectMeta>>,
) {
    struct Frame {
        dir: PathBuf,
        key_prefix: String,
        entries: std::vec::IntoIter<(String, FileType)>,
        /// (device, inode) of the directory, when links are followed (for loop detection).
        id: Option<(u64, u64)>,
    }
    let dir_id = |p: &Path| {
        follow
            .then(|| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino())))
            .flatten()
    };
    let read = |dir: &Path, key_prefix: &str| -> Result<Vec<(String, FileType)>> {
        let rd = std::fs::read_dir(dir).map_err(|e| read_io("list", key_prefix, e))?;
        let mut out = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| read_io("list", key_prefix, e))?;
            let Ok(ft) = ent.file_type() else { continue };
            let name = ent.file_name();
            let Some(name) = name.to_str() else {
                let _ = tx.blocking_send(Err(err(
                    ErrorKind::InvalidInput,
                    "list",
                    &format!("{key_prefix}{}", name.to_string_lossy()),
                    "file name is not UTF-8; cannot be an S3 key",
                )));
                continue;
            };
            if let Some(rest) = name.strip_prefix(TEMP_PREFIX) {
                if !is_temp_id(rest) {
                    // A user's file with our reserved name: say so, never sync it silently.
                    let _ = tx.blocking_send(Err(err(
                        ErrorKind::InvalidInput,
                        "list",
                        &format!("{key_prefix}{name}"),
                        format!("names starting with {TEMP_PREFIX:?} are reserved for s3ferry's temp files; not synced"),
                    )));
                }
                continue;
            }
            // Followed, a symlink is what it points to (a dangling one stays a symlink).
            let ft = match follow && ft.is_symlink() {
                true => std::fs::metadata(dir.join(name)).map_or(ft, |md| md.file_type()),
                false => ft,
            };
            // Symlinks and special files sort as files; the walk skips (and may report) them.
            out.push((name.to_string(), ft));
        }
        let sort_key = |(n, ft): &(String, FileType)| {
            if ft.is_dir() {
                format!("{n}/")
            } else {
                n.clone()
            }
        };
        out.sort_by_cached_key(sort_key);
        Ok(out)
    };
    // Start at the deepest directory the prefix names.
    let start_key = match prefix.rfind('/') {
        Some(i) => &prefix[..=i],
        None => "",
    };
    let start_dir = if start_key.is_empty() {
        root.to_path_buf()
    } else {
        match key_to_relpath(start_key.trim_end_matches('/')) {
            Ok(rel) => root.join(rel),
            Err(_) => return,
        }
    };
    let first = match read(&start_dir, start_key) {
        Ok(v) => v,
        Err(e) if e.kind == ErrorKind::NotFound => return,
        Err(mut e) if e.retryable() => {
            e.key = None; // retried by the retry layer, like any failed listing (see below)
            let _ = tx.blocking_send(Err(e));
            return;
        }
        Err(e) => {
            let _ = tx.blocking_send(Err(e));
            return;
        }
    };
    let mut stack = vec![Frame {
        id: dir_id(&start_dir),
        dir: start_dir,
        key_prefix: start_key.to_string(),
        entries: first.into_iter(),
    }];
    while let Some(top) = stack.last_mut() {
        let Some((name, ft)) = top.entries.next() else {
            stack.pop();
            continue;
        };
        let key = format!("{}{name}", top.key_prefix);
        let path = top.dir.join(&name);
        if ft.is_dir() {
            let dkey = format!("{key}/");
            let overlaps = dkey.starts_with(prefix) || prefix.starts_with(&dkey);
            let all_before =
                start_after.is_some_and(|s| s > dkey.as_str() && !s.starts_with(&dkey));
            if !overlaps || all_before {
                continue;
            }
            let id = dir_id(&path);
            if let Some(up) = id.and_then(|id| stack.iter().find(|f| f.id == Some(id))) {
                let target = if up.key_prefix.is_empty() {
                    "the top directory".to_string()
                } else {
                    up.key_prefix.clone()
                };
                let e = err(
                    ErrorKind::Unsupported,
                    "list",
                    &key,
                    format!("symlink loop: leads back to {target}; not followed"),
                );
                if tx.blocking_send(Err(e)).is_err() {
                    return;
                }
                continue;
            }
            match read(&path, &dkey) {
                Ok(v) => stack.push(Frame {
                    dir: path,
                    key_prefix: dkey,
                    entries: v.into_iter(),
                    id,
                }),
                Err(mut e) if e.retryable() => {
                    // Out of file descriptors: not this directory's fault. End the listing with
                    // an error that names no key, so the retry layer lists again after the last
                    // key it passed on, after a backoff.
                    e.key = None;
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
                Err(e) => {
                    if tx.blocking_send(Err(e.with_key(dkey))).is_err() {
                        return;
                    }
                }
            }
            continue;
        }
        if !key.starts_with(prefix) || start_after.is_some_and(|s| key.as_str() <= s) {
            continue;
        }
        if !ft.is_file() {
            let what = special_kind(&ft);
            tracing::debug!("skipping {what} {}", path.display());
            if report_skipped {
                let e = err(
                    ErrorKind::Unsupported,
                    "list",
                    &key,
                    if ft.is_symlink() && follow {
                        "symlink to nothing (dangling or unreadable target)".to_string()
                    } else if ft.is_symlink() {
                        "symlink, not followed".to_string()
                    } else {
                        format!("{what}, never opened")
                    },
                );
                if tx.blocking_send(Err(e)).is_err() {
                    return;
                }
            }
            continue;
        }
        let item = stat(follow, &path)
            .map(|md| meta_of(key.clone(), &md))
            .map_err(|e| read_io("list", &key, e));
        if tx.blocking_send(item).is_err() {
            return; // the consumer went away
        }
    }
}

/// What a directory entry that is neither a regular file nor a directory is.
fn special_kind(ft: &FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    if ft.is_symlink() {
        "symlink"
    } else if ft.is_fifo() {
        "FIFO (named pipe)"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

fn read_range(file: &File, start: u64, len: u64) -> std::io::Result<Bytes> {
    let mut buf = BytesMut::zeroed(len as usize);
    file.read_exact_at(&mut buf, start)?;
    Ok(buf.freeze())
}

#[async_trait]
impl Store for LocalStore {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            conditional_writes: false,
            copy_domain: Some(format!("local:{}", self.root.display())),
            upload_part_copy: false,
            tags: false,
            versions: false,
            crc64nvme: false,
            md5_etags: false,
            max_single_put: u64::MAX,
            local: true,
        }
    }

    fn list(&self, opts: ListOptions) -> BoxStream<'static, Result<ObjectMeta>> {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let (root, follow) = (self.root.clone(), self.follow_symlinks);
        tokio::task::spawn_blocking(move || {
            walk(
                &root,
                &opts.prefix,
                opts.start_after.as_deref(),
                opts.report_skipped,
                follow,
                &tx,
            )
        });
        stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) }).boxed()
    }

    fn local_path(&self, key: &str) -> Option<PathBuf> {
        if key.is_empty() {
            return Some(self.root.clone());
        }
        self.path_for("read", key).ok()
    }

    async fn check(&self) -> Result<()> {
        let root = self.root.clone();
        blocking(move || {
            let r = root.display().to_string();
            match std::fs::metadata(&root) {
                Ok(md) if md.is_dir() => Ok(()),
                Ok(_) => Err(err(ErrorKind::InvalidInput, "check", &r, "not a directory")),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(err(
                    ErrorKind::BucketNotFound,
                    "check",
                    &r,
                    "directory does not exist",
                )),
                Err(e) => Err(StoreError::io("check", &r, e)),
            }
        })
        .await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let path = self.path_for("head", key)?;
        let key = key.to_string();
        let follow = self.follow_symlinks;
        blocking(move || {
            let md = stat(follow, &path).map_err(|e| read_io("head", &key, e))?;
            if !md.is_file() {
                return Err(err(ErrorKind::NotFound, "head", &key, "not a regular file"));
            }
            Ok(meta_of(key, &md))
        })
        .await
    }

    async fn get(&self, key: &str, opts: GetOptions) -> Result<GetResult> {
        if opts.if_match.is_some() {
            return Err(err(
                ErrorKind::Unsupported,
                "get",
                key,
                "local files have no ETag for If-Match",
            ));
        }
        let path = self.path_for("get", key)?;
        let k = key.to_string();
        let want = opts.range.clone();
        // Small reads happen in the same blocking call as the open, and the file is checked
        // again after the read: the bytes returned are the file `meta` describes.
        let follow = self.follow_symlinks;
        let (file, meta, range, small) = blocking(move || {
            let md = stat(follow, &path).map_err(|e| read_io("get", &k, e))?;
            if !md.is_file() {
                return Err(err(ErrorKind::NotFound, "get", &k, "not a regular file"));
            }
            let f = File::open(&path).map_err(|e| read_io("get", &k, e))?;
            let meta = meta_of(k.clone(), &md);
            let size = meta.size;
            let range = crate::covered_range(want, size)
                .map_err(|m| err(ErrorKind::InvalidInput, "get", &k, m))?;
            if range.end - range.start > READ_CHUNK {
                return Ok((f, meta, range, None));
            }
            let data = read_range(&f, range.start, range.end - range.start)
                .map_err(|e| read_io("get", &k, e))?;
            let after = f.metadata().map_err(|e| read_io("get", &k, e))?;
            if after.len() != md.len() || after.modified().ok() != meta.mtime {
                return Err(err(
                    ErrorKind::Transient,
                    "get",
                    &k,
                    "file changed while it was being read",
                ));
            }
            Ok((f, meta, range, Some(data)))
        })
        .await?;
        if let Some(data) = small {
            return Ok(GetResult {
                meta,
                range,
                body: stream::iter([Ok(data)]).boxed(),
            });
        }
        let file = Arc::new(file);
        let key = key.to_string();
        let (size0, mtime0) = (meta.size, meta.mtime);
        let end = range.end;
        let body = stream::unfold(Some(range.start), move |pos| {
            let file = file.clone();
            let key = key.clone();
            async move {
                let pos = pos?;
                if pos >= end {
                    // Last step: the file must still be the one that was opened.
                    let r = blocking(move || {
                        let md = file.metadata().map_err(|e| read_io("get", &key, e))?;
                        if md.len() != size0 || md.modified().ok() != mtime0 {
                            return Err(err(
                                ErrorKind::Transient,
                                "get",
                                &key,
                                "file changed while it was being read",
                            ));
                        }
                        Ok(())
                    })
                    .await;
                    return r.err().map(|e| (Err(e), None));
                }
                let n = (end - pos).min(READ_CHUNK);
                let r = blocking(move || {
                    read_range(&file, pos, n).map_err(|e| read_io("get", &key, e))
                })
                .await;
                Some((r, Some(pos + n)))
            }
        })
        .boxed();
        Ok(GetResult { meta, range, body })
    }

    async fn put(&self, key: &str, body: Bytes, opts: PutOptions) -> Result<PutResult> {
        let this = self.clone();
        let key = key.to_string();
        blocking(move || {
            let op = "put";
            if let Some(want) = opts.crc64nvme {
                if crc64nvme(&body) != want {
                    return Err(err(
                        ErrorKind::Corrupt,
                        op,
                        &key,
                        "CRC64NVME does not match the body",
                    ));
                }
            }
            let (dir, dst) = this.prepare(op, &key)?;
            let tmp = Self::temp_path(&dir, &temp_id());
            let res = (|| {
                let mut f = File::create(&tmp).map_err(|e| write_io(op, &key, &tmp, e))?;
                f.write_all(&body)
                    .map_err(|e| write_io(op, &key, &tmp, e))?;
                this.finish_staged(op, &key, &f, &tmp, &dst, &opts)
            })();
            if res.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            res?;
            Ok(PutResult {
                etag: None,
                version_id: None,
                crc64nvme: Some(crc64nvme(&body)),
            })
        })
        .await
    }

    async fn get_tags(&self, _key: &str) -> Result<Vec<(String, String)>> {
        Ok(Vec::new())
    }

    async fn create_multipart(
        &self,
        key: &str,
        opts: PutOptions,
        layout: PartLayout,
    ) -> Result<String> {
        if matches!(opts.mode, PutMode::Update { .. }) {
            return Err(err(
                ErrorKind::Unsupported,
                "create_multipart",
                key,
                "local files have no ETag for If-Match",
            ));
        }
        let this = self.clone();
        let k = key.to_string();
        let id = format!("{}.{}", temp_id(), layout.encode());
        let id2 = id.clone();
        let size = opts.size;
        blocking(move || {
            let (dir, _) = this.prepare("create_multipart", &k)?;
            let f = File::create(Self::temp_path(&dir, &id2))
                .map_err(|e| StoreError::io("create_multipart", &k, e))?;
            if let Some(n) = size {
                f.set_len(n)
                    .map_err(|e| StoreError::io("create_multipart", &k, e))?;
            }
            Ok(())
        })
        .await?;
        self.uploads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), opts);
        Ok(id)
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
        crc: Option<u64>,
    ) -> Result<PartInfo> {
        let op = "upload_part";
        let (tmp, layout) = self.upload_paths(op, key, upload_id)?;
        Self::check_part(op, key, &layout, part_number, body.len() as u64)?;
        let key = key.to_string();
        blocking(move || {
            let part_crc = crc64nvme(&body);
            if crc.is_some_and(|c| c != part_crc) {
                return Err(err(
                    ErrorKind::Corrupt,
                    op,
                    &key,
                    format!("part {part_number}: CRC64NVME mismatch"),
                ));
            }
            let f = OpenOptions::new()
                .write(true)
                .open(&tmp)
                .map_err(|e| write_io(op, &key, &tmp, e))?;
            f.write_all_at(&body, layout.offset(part_number))
                .map_err(|e| write_io(op, &key, &tmp, e))?;
            Ok(PartInfo {
                part_number,
                etag: format!("{part_crc:016x}-{}", body.len()),
                crc64nvme: Some(part_crc),
            })
        })
        .await
    }

    async fn upload_part_stream(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        len: u64,
        mut body: crate::ByteStream,
    ) -> Result<PartInfo> {
        let op = "upload_part";
        let (tmp, layout) = self.upload_paths(op, key, upload_id)?;
        Self::check_part(op, key, &layout, part_number, len)?;
        let k = key.to_string();
        let tmp = Arc::new(tmp);
        let t = tmp.clone();
        let file = blocking(move || {
            OpenOptions::new()
                .write(true)
                .open(&*t)
                .map_err(|e| write_io(op, &k, &t, e))
        })
        .await?;
        let file = Arc::new(file);
        // Chunks go to their place in the file as they come, up to STREAM_BATCH bytes per
        // blocking write: the part is never assembled in memory.
        let start = layout.offset(part_number);
        let mut pos = 0u64;
        let mut crc = 0u64;
        let mut batch: Vec<Bytes> = Vec::new();
        let mut batch_len = 0u64;
        let mut ended = false;
        while !ended {
            match body.next().await {
                Some(c) => {
                    let c = c?;
                    batch_len += c.len() as u64;
                    batch.push(c);
                }
                None => ended = true,
            }
            if batch_len >= STREAM_BATCH || (ended && batch_len > 0) {
                if pos + batch_len > len {
                    return Err(err(
                        ErrorKind::Corrupt,
                        op,
                        key,
                        format!("part {part_number}: body longer than {len} bytes"),
                    ));
                }
                let (f, k, chunks) = (file.clone(), key.to_string(), std::mem::take(&mut batch));
                let t = tmp.clone();
                let at = start + pos;
                crc = blocking(move || {
                    let mut off = at;
                    let mut crc = crc;
                    for c in &chunks {
                        f.write_all_at(c, off)
                            .map_err(|e| write_io(op, &k, &t, e))?;
                        crc = crc64nvme_combine(crc, crc64nvme(c), c.len() as u64);
                        off += c.len() as u64;
                    }
                    Ok(crc)
                })
                .await?;
                pos += batch_len;
                batch_len = 0;
            }
        }
        if pos != len {
            return Err(err(
                ErrorKind::Corrupt,
                op,
                key,
                format!("part {part_number}: body ended at {pos} of {len} bytes"),
            ));
        }
        Ok(PartInfo {
            part_number,
            etag: format!("{crc:016x}-{len}"),
            crc64nvme: Some(crc),
        })
    }

    async fn upload_part_copy(
        &self,
        key: &str,
        _: &str,
        _: u32,
        _: &CopySource,
        _: Range<u64>,
    ) -> Result<PartInfo> {
        Err(err(
            ErrorKind::Unsupported,
            "upload_part_copy",
            key,
            "not supported by local stores",
        ))
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        mut parts: Vec<PartInfo>,
        crc: Option<u64>,
        mode: PutMode,
    ) -> Result<PutResult> {
        let op = "complete_multipart";
        let (tmp, layout) = self.upload_paths(op, key, upload_id)?;
        let mut opts = self
            .uploads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(upload_id)
            .cloned()
            .unwrap_or_default();
        opts.mode = mode;
        let this = self.clone();
        let key = key.to_string();
        let res = blocking(move || {
            parts.sort_by_key(|p| p.part_number);
            let mut total = 0u64;
            // The whole file's CRC from the parts' CRCs, which upload_part computed from the
            // bytes it wrote (the part ETag is "<crc hex>-<len>"): no second read of the file.
            let mut whole = 0u64;
            for (i, p) in parts.iter().enumerate() {
                let (part_crc, len) = p
                    .etag
                    .split_once('-')
                    .and_then(|(c, l)| {
                        Some((u64::from_str_radix(c, 16).ok()?, l.parse::<u64>().ok()?))
                    })
                    .unwrap_or((0, u64::MAX));
                whole = crc64nvme_combine(whole, part_crc, len);
                if p.part_number as usize != i + 1
                    || (i + 1 < parts.len() && len != layout.len(p.part_number))
                    || len == u64::MAX
                {
                    return Err(err(
                        ErrorKind::InvalidInput,
                        op,
                        &key,
                        format!("part {} is out of order or the wrong size", p.part_number),
                    ));
                }
                total += len;
            }
            let (_, dst) = this.prepare(op, &key)?;
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&tmp)
                .map_err(|e| write_io(op, &key, &tmp, e))?;
            f.set_len(total).map_err(|e| write_io(op, &key, &tmp, e))?;
            let got = whole;
            if crc.is_some_and(|c| c != got) {
                return Err(err(
                    ErrorKind::Corrupt,
                    op,
                    &key,
                    "full-object CRC64NVME mismatch",
                ));
            }
            this.finish_staged(op, &key, &f, &tmp, &dst, &opts)?;
            Ok(PutResult {
                etag: None,
                version_id: None,
                crc64nvme: Some(got),
            })
        })
        .await;
        if res.is_ok() {
            self.uploads
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(upload_id);
        }
        res
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()> {
        let tmp = self.temp_of("abort_multipart", key, upload_id)?;
        self.uploads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(upload_id);
        match std::fs::remove_file(&tmp) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io("abort_multipart", key, e)),
        }
    }

    async fn list_multipart(&self, prefix: &str) -> Result<Vec<MultipartUpload>> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        blocking(move || {
            // Temp files anywhere under the root are in-flight or orphaned writes.
            let mut out = Vec::new();
            let mut stack = vec![(root, String::new())];
            while let Some((dir, kp)) = stack.pop() {
                let Ok(rd) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for ent in rd.flatten() {
                    let Ok(ft) = ent.file_type() else { continue };
                    let Some(name) = ent.file_name().to_str().map(str::to_string) else {
                        continue;
                    };
                    if ft.is_dir() {
                        stack.push((ent.path(), format!("{kp}{name}/")));
                    } else if let Some(id) = name.strip_prefix(TEMP_PREFIX) {
                        if kp.starts_with(&prefix) || prefix.starts_with(&kp) {
                            out.push(MultipartUpload {
                                key: kp.clone(),
                                upload_id: id.to_string(),
                                initiated: ent.metadata().ok().and_then(|m| m.modified().ok()),
                            });
                        }
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn copy(&self, src: &CopySource, dst_key: &str, opts: CopyOptions) -> Result<PutResult> {
        if src.if_match.is_some() {
            return Err(err(
                ErrorKind::Unsupported,
                "copy",
                &src.key,
                "local files have no ETag for If-Match",
            ));
        }
        let from = self.path_for("copy", &src.key)?;
        let this = self.clone();
        let dst_key = dst_key.to_string();
        let src_key = src.key.clone();
        blocking(move || {
            let op = "copy";
            let md =
                std::fs::symlink_metadata(&from).map_err(|e| StoreError::io(op, &src_key, e))?;
            if !md.is_file() {
                return Err(err(ErrorKind::NotFound, op, &src_key, "not a regular file"));
            }
            let (dir, dst) = this.prepare(op, &dst_key)?;
            let tmp = Self::temp_path(&dir, &temp_id());
            let res = (|| {
                std::fs::copy(&from, &tmp).map_err(|e| write_io(op, &dst_key, &tmp, e))?;
                let f = OpenOptions::new()
                    .write(true)
                    .open(&tmp)
                    .map_err(|e| write_io(op, &dst_key, &tmp, e))?;
                let put = opts
                    .replace
                    .clone()
                    .unwrap_or_else(|| PutOptions::new().mtime(md.modified().ok()));
                this.finish_staged(op, &dst_key, &f, &tmp, &dst, &put)
            })();
            if res.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            res.map(|_| PutResult::default())
        })
        .await
    }

    async fn delete_many(&self, keys: &[String]) -> Result<Vec<Result<()>>> {
        let paths: Vec<(String, Result<PathBuf>)> = keys
            .iter()
            .map(|k| (k.clone(), self.path_for("delete", k)))
            .collect();
        let root = self.root.clone();
        blocking(move || {
            Ok(paths
                .into_iter()
                .map(|(k, p)| {
                    let p = p?;
                    match std::fs::symlink_metadata(&p) {
                        Ok(md) if md.is_dir() => {
                            Err(err(ErrorKind::InvalidInput, "delete", &k, "is a directory"))
                        }
                        Ok(_) => {
                            std::fs::remove_file(&p)
                                .map_err(|e| StoreError::io("delete", &k, e))?;
                            prune_empty_dirs(&root, &p);
                            Ok(())
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                        Err(e) => Err(StoreError::io("delete", &k, e)),
                    }
                })
                .collect())
        })
        .await
    }
}

/// Remove the directories above `path` that became empty, up to (not including) `root`:
/// directories are implicit in S3, so a prefix whose last object went goes too.
fn prune_empty_dirs(root: &Path, path: &Path) {
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d == root || !d.starts_with(root) || std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}
