//! The state database (SQLite), shared by every job: typed records namespaced by job and scope
//! (sync's and bisync's base records per pair, other jobs' entries), a hash cache for local
//! files, the runs in progress and the multipart uploads they have open (so a killed run's
//! successor can abort them).
//!
//! - **Off the async threads.** One owner thread holds the connection; callers send it closures
//!   over a channel and await the answer. Record, forget and hash-cache writes are buffered
//!   there and committed in batches (one transaction per [`FLUSH_EVERY`] records, at
//!   [`Journal::flush`] and when the journal is dropped); a batch whose commit fails is kept and
//!   tried again, never dropped.
//! - **Versioned.** `PRAGMA user_version` numbers the schema; opening an older database migrates
//!   it (v0 — the first sync's tables — keeps its base records; caches start afresh).
//! - **Byte order.** Keys compare with SQLite's BINARY collation (memcmp of UTF-8), the order of
//!   S3 listings, so a scope's records stream in key order ([`Journal::base_stream`]) and can
//!   be merge-joined with listings.
//! - **Runs.** Each process is one run with an id ([`s3ferry_store::run_id`]) that also names
//!   its local temp files. A run holds an exclusive lock on `<db>.runs/<run id>.lock` while it
//!   lives; another process treats a run as dead only when it can take that lock, and only a
//!   dead run's uploads and temp files are cleaned up. Two processes on one database never
//!   abort each other's uploads, and never wait on each other longer than one small
//!   transaction.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use futures::stream::{self, BoxStream, StreamExt};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::plan::BaseRecord;

/// Buffered records per committed batch.
const FLUSH_EVERY: usize = 512;
/// Records fetched per page of a range scan.
const PAGE: usize = 1000;
/// The schema this code writes.
const SCHEMA_VERSION: i64 = 2;
/// How long one transaction waits for another process's.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Record kind of a pair's base record (both sides' signatures after the last sync of a key).
pub const BASE: &str = "base";

#[derive(Clone, Debug, thiserror::Error)]
#[error("state database {path}: {msg}")]
pub struct JournalError {
    path: String,
    msg: String,
}

impl JournalError {
    /// SQLite found the database file damaged ("malformed", "not a database").
    pub fn is_corrupt(&self) -> bool {
        self.msg.contains("database disk image is malformed")
            || self.msg.contains("file is not a database")
    }
}

pub type JResult<T> = Result<T, JournalError>;

/// A cached content hash of a local file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileId {
    pub path: String,
    pub size: u64,
    pub mtime_ns: i64,
    pub inode: u64,
    pub ctime_ns: i64,
}

/// A multipart upload recorded by a run that is no longer alive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrphanUpload {
    pub key: String,
    pub upload_id: String,
    /// When it was recorded.
    pub started: SystemTime,
}

#[derive(Debug)]
enum Pending {
    Put {
        job: String,
        scope: String,
        kind: String,
        key: String,
        value: String,
    },
    Delete {
        job: String,
        scope: String,
        kind: String,
        key: String,
    },
    Hash {
        id: FileId,
        algo: String,
        value: String,
    },
    Upload {
        store: String,
        key: String,
        upload_id: String,
        run_id: String,
        started: i64,
    },
}

/// Commands taken from the queue before the durable writes among them are committed together.
const MAX_DRAIN: usize = 1024;

/// The owner thread's side.
struct Db {
    conn: Connection,
    path: String,
    /// Where run lock files live (`None` for an in-memory database).
    runs_dir: Option<PathBuf>,
    run_id: String,
    /// Our own run's lock, held for the life of the journal.
    _run_lock: Option<File>,
    /// Dead runs whose records this process removed: still provably dead (their temp files
    /// are swept after their scope was).
    buried: HashSet<String>,
    pending: Vec<Pending>,
    /// Callers waiting for the next commit (durable writes: group commit).
    waiters: Vec<tokio::sync::oneshot::Sender<JResult<()>>>,
    /// Transactions committed (for tests of batching).
    commits: u64,
}

type Cmd = Box<dyn FnOnce(&mut Db) + Send>;

/// The state database. Cheap to share behind an `Arc`; every call goes to one owner thread.
#[derive(Debug)]
pub struct Journal {
    tx: mpsc::Sender<Cmd>,
    path: String,
    run_id: String,
}

fn secs(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn at(secs: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64)
}

fn encode_base(r: &BaseRecord) -> String {
    format!("{}\n{}", r.src_sig, r.dst_sig)
}

fn decode_base(v: &str) -> BaseRecord {
    let (a, b) = v.split_once('\n').unwrap_or((v, ""));
    BaseRecord {
        src_sig: a.to_string(),
        dst_sig: b.to_string(),
    }
}

impl Db {
    fn err(&self, e: impl std::fmt::Display) -> JournalError {
        JournalError {
            path: self.path.clone(),
            msg: e.to_string(),
        }
    }

    fn migrate(&mut self) -> JResult<()> {
        let v: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if v > SCHEMA_VERSION {
            return Err(self.err(format!(
                "schema version {v} is newer than this s3ferry understands ({SCHEMA_VERSION}); use a newer s3ferry or another --state-dir"
            )));
        }
        if v == SCHEMA_VERSION {
            return Ok(());
        }
        let old_v0 = self
            .conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'synced'",
                [],
                |_| Ok(()),
            )
            .optional()
            .map_err(|e| self.err(e))?
            .is_some();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| JournalError {
                path: self.path.clone(),
                msg: e.to_string(),
            })?;
        let r = (|| -> rusqlite::Result<()> {
            tx.execute_batch(
                "CREATE TABLE IF NOT EXISTS records (
                    job TEXT NOT NULL, scope TEXT NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL,
                    value TEXT NOT NULL, PRIMARY KEY (job, scope, kind, key)) WITHOUT ROWID;
                 CREATE TABLE IF NOT EXISTS hashes (
                    path TEXT NOT NULL, algo TEXT NOT NULL, size INTEGER NOT NULL,
                    mtime_ns INTEGER NOT NULL, inode INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
                    value TEXT NOT NULL, seen INTEGER NOT NULL DEFAULT 0,
                    PRIMARY KEY (path, algo)) WITHOUT ROWID;
                 CREATE TABLE IF NOT EXISTS scope_seen (
                    job TEXT NOT NULL, scope TEXT NOT NULL, seen INTEGER NOT NULL,
                    PRIMARY KEY (job, scope)) WITHOUT ROWID;
                 CREATE TABLE IF NOT EXISTS run_scopes (
                    job TEXT NOT NULL, scope TEXT NOT NULL, run_id TEXT NOT NULL,
                    started INTEGER NOT NULL, PRIMARY KEY (job, scope, run_id)) WITHOUT ROWID;",
            )?;
            if old_v0 {
                // The first sync's tables: keep its base records, start the caches afresh.
                tx.execute(
                    "INSERT OR REPLACE INTO records (job, scope, kind, key, value)
                     SELECT 'sync', pair, 'base', key, src_sig || char(10) || dst_sig FROM synced",
                    [],
                )?;
                // Its unfinished uploads and runs belong to a process that is gone: carry them
                // as a dead run's, so the next run aborts the uploads and sweeps the pair.
                tx.execute_batch(
                    "DROP TABLE synced; DROP TABLE IF EXISTS hashes_v2;
                     CREATE TABLE IF NOT EXISTS runs (pair TEXT NOT NULL PRIMARY KEY, started INTEGER NOT NULL);
                     CREATE TABLE IF NOT EXISTS uploads (store TEXT NOT NULL, key TEXT NOT NULL,
                        upload_id TEXT NOT NULL, started INTEGER NOT NULL);
                     ALTER TABLE uploads RENAME TO uploads_v0;",
                )?;
            }
            tx.execute_batch(
                "CREATE TABLE IF NOT EXISTS uploads (
                    store TEXT NOT NULL, key TEXT NOT NULL, upload_id TEXT NOT NULL,
                    run_id TEXT NOT NULL, started INTEGER NOT NULL,
                    PRIMARY KEY (store, key, upload_id)) WITHOUT ROWID;",
            )?;
            if old_v0 {
                tx.execute(
                    "INSERT OR IGNORE INTO uploads (store, key, upload_id, run_id, started)
                     SELECT store, key, upload_id, ?1, started FROM uploads_v0",
                    params![V0_RUN],
                )?;
                tx.execute(
                    "INSERT OR IGNORE INTO run_scopes (job, scope, run_id, started)
                     SELECT 'sync', pair, ?1, started FROM runs",
                    params![V0_RUN],
                )?;
                tx.execute_batch("DROP TABLE uploads_v0; DROP TABLE runs;")?;
            }
            // Schema 2: when each cached hash and each scope was last used, for pruning. What
            // an older schema holds counts as used now.
            let has_seen = tx
                .prepare("SELECT 1 FROM pragma_table_info('hashes') WHERE name = 'seen'")?
                .exists([])?;
            if !has_seen {
                tx.execute_batch("ALTER TABLE hashes ADD COLUMN seen INTEGER NOT NULL DEFAULT 0")?;
            }
            let now = secs(SystemTime::now());
            tx.execute("UPDATE hashes SET seen = ?1 WHERE seen = 0", params![now])?;
            tx.execute(
                "INSERT OR IGNORE INTO scope_seen (job, scope, seen)
                 SELECT DISTINCT job, scope, ?1 FROM records",
                params![now],
            )?;
            tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))?;
            Ok(())
        })();
        match r {
            Ok(()) => tx.commit().map_err(|e| JournalError {
                path: self.path.clone(),
                msg: e.to_string(),
            }),
            Err(e) => Err(JournalError {
                path: self.path.clone(),
                msg: format!("migrating from schema {v}: {e}"),
            }),
        }
    }

    /// Commit the buffered records. On failure the batch stays buffered.
    fn flush(&mut self) -> JResult<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let path = self.path.clone();
        let err = |e: rusqlite::Error| JournalError {
            path: path.clone(),
            msg: e.to_string(),
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        {
            let mut put = tx
                .prepare_cached("INSERT OR REPLACE INTO records (job, scope, kind, key, value) VALUES (?1, ?2, ?3, ?4, ?5)")
                .map_err(err)?;
            let mut del = tx
                .prepare_cached(
                    "DELETE FROM records WHERE job = ?1 AND scope = ?2 AND kind = ?3 AND key = ?4",
                )
                .map_err(err)?;
            let mut hash = tx
                .prepare_cached("INSERT OR REPLACE INTO hashes (path, algo, size, mtime_ns, inode, ctime_ns, value, seen) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)")
                .map_err(err)?;
            let mut upload = tx
                .prepare_cached("INSERT OR REPLACE INTO uploads (store, key, upload_id, run_id, started) VALUES (?1, ?2, ?3, ?4, ?5)")
                .map_err(err)?;
            for p in &self.pending {
                match p {
                    Pending::Put {
                        job,
                        scope,
                        kind,
                        key,
                        value,
                    } => put.execute(params![job, scope, kind, key, value]),
                    Pending::Delete {
                        job,
                        scope,
                        kind,
                        key,
                    } => del.execute(params![job, scope, kind, key]),
                    Pending::Hash { id, algo, value } => hash.execute(params![
                        id.path,
                        algo,
                        id.size as i64,
                        id.mtime_ns,
                        id.inode as i64,
                        id.ctime_ns,
                        value,
                        secs(SystemTime::now())
                    ]),
                    Pending::Upload {
                        store,
                        key,
                        upload_id,
                        run_id,
                        started,
                    } => upload.execute(params![store, key, upload_id, run_id, started]),
                }
                .map_err(err)?;
            }
        }
        tx.commit().map_err(err)?;
        self.pending.clear();
        self.commits += 1;
        Ok(())
    }

    /// Commit, and answer every caller waiting for a commit (with the same outcome). On failure
    /// the batch stays queued, and each waiter gets the error.
    fn flush_for_waiters(&mut self) -> JResult<()> {
        let r = self.flush();
        for w in self.waiters.drain(..) {
            let _ = w.send(r.clone());
        }
        r
    }

    fn push(&mut self, p: Pending) {
        self.pending.push(p);
        if self.pending.len() >= FLUSH_EVERY {
            if let Err(e) = self.flush() {
                // Kept; the next flush tries again and reports.
                tracing::warn!("{e}");
            }
        }
    }

    /// Is `run` alive? Ours is; another is alive while its lock file is locked. A run this
    /// database recorded whose lock file is gone is dead (it was buried); see [`Db::run_state`]
    /// for runs the database does not know.
    fn run_alive(&self, run: &str) -> bool {
        self.run_state(run) == RunState::Alive
    }

    /// What is provably known about `run`. Alive: ours, or its lock file is locked. Dead: its
    /// lock file is free, or this database recorded the run and its lock file is gone. Unknown:
    /// no lock file here and no record of it — a run on another state database, or one with
    /// `--no-state`, whose temp files must be left alone.
    fn run_state(&self, run: &str) -> RunState {
        if run == self.run_id {
            return RunState::Alive;
        }
        if self.buried.contains(run) {
            return RunState::Dead;
        }
        let Some(dir) = &self.runs_dir else {
            return if self.knows_run(run) {
                RunState::Dead
            } else {
                RunState::Unknown
            };
        };
        let p = dir.join(format!("{run}.lock"));
        let Ok(f) = File::options().write(true).open(&p) else {
            return if self.knows_run(run) {
                RunState::Dead
            } else {
                RunState::Unknown
            };
        };
        match f.try_lock() {
            Ok(()) => {
                let _ = f.unlock();
                RunState::Dead
            }
            Err(_) => RunState::Alive,
        }
    }

    /// Whether this database recorded `run` (an upload or a scope of it).
    fn knows_run(&self, run: &str) -> bool {
        self.conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM uploads WHERE run_id = ?1)
                     OR EXISTS (SELECT 1 FROM run_scopes WHERE run_id = ?1)",
                params![run],
                |r| r.get::<_, bool>(0),
            )
            .unwrap_or(false)
    }

    /// Forget a dead run: its scope markers stay (they say "unfinished"), its lock file goes.
    fn bury(&mut self, run: &str) {
        self.buried.insert(run.to_string());
        if let Some(dir) = &self.runs_dir {
            let _ = std::fs::remove_file(dir.join(format!("{run}.lock")));
        }
    }
}

/// The run id carried by uploads and runs migrated from schema 0 (which had no run ids).
const V0_RUN: &str = "000000000000";

/// What the database can prove about a run id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RunState {
    Alive,
    Dead,
    Unknown,
}

fn owner_thread(mut db: Db, rx: mpsc::Receiver<Cmd>) {
    while let Ok(cmd) = rx.recv() {
        cmd(&mut db);
        // Take what else is queued before committing, so one transaction serves every durable
        // write that arrived meanwhile (group commit).
        let mut n = 1;
        while n < MAX_DRAIN {
            let Ok(cmd) = rx.try_recv() else { break };
            cmd(&mut db);
            n += 1;
        }
        if !db.waiters.is_empty() {
            if let Err(e) = db.flush_for_waiters() {
                tracing::warn!("{e} (kept; will retry)");
            }
        }
    }
    if let Err(e) = db.flush_for_waiters() {
        tracing::warn!("{e}");
    }
    db.bury(&db.run_id.clone());
}

/// Why the database file at `path` is corrupt, or `None` when it is absent, sound, or cannot
/// be judged (locked, unreadable: those are not corruption and must not be moved aside).
fn corruption(path: &Path) -> Option<String> {
    use std::io::Read as _;
    let mut f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    if len == 0 {
        return None; // a new database SQLite has not written yet
    }
    let mut h = [0u8; 100];
    if len < 100 || f.read_exact(&mut h).is_err() || &h[..16] != b"SQLite format 3\0" {
        return Some("not an SQLite database".into());
    }
    let page_size = match u16::from_be_bytes([h[16], h[17]]) {
        1 => 65536,
        n => u64::from(n),
    };
    let pages = u64::from(u32::from_be_bytes([h[28], h[29], h[30], h[31]]));
    let counter_valid = h[24..28] == h[92..96];
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    let wal_empty = fs_err::metadata(&wal).map(|m| m.len() == 0).unwrap_or(true);
    if counter_valid && wal_empty && pages > 0 && len < pages.saturating_mul(page_size) {
        return Some(format!(
            "truncated: {len} bytes, its header says {pages} pages of {page_size}"
        ));
    }
    // What SQLite itself says (only when the cheap checks passed).
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .ok()?;
    let _ = conn.busy_timeout(BUSY_TIMEOUT);
    let corrupt_code = |e: &rusqlite::Error| {
        matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
        )
    };
    match conn.query_row("PRAGMA schema_version", [], |r| r.get::<_, i64>(0)) {
        Err(e) if corrupt_code(&e) => return Some(e.to_string()),
        Err(_) => return None,
        Ok(_) => {}
    }
    None
}

impl Journal {
    /// Open (or create, or migrate) the state database at `path`, and register this run.
    pub fn open(path: &Path) -> JResult<Self> {
        let p = path.display().to_string();
        let err = |msg: String| JournalError {
            path: p.clone(),
            msg,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs_err::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        let runs_dir = PathBuf::from(format!("{}.runs", path.display()));
        fs_err::create_dir_all(&runs_dir).map_err(|e| err(e.to_string()))?;
        let run_id = s3ferry_store::run_id().to_string();
        let lock_path = runs_dir.join(format!("{run_id}.lock"));
        let lock =
            File::create(&lock_path).map_err(|e| err(format!("{}: {e}", lock_path.display())))?;
        lock.lock()
            .map_err(|e| err(format!("{}: {e}", lock_path.display())))?;
        let conn = Connection::open(path).map_err(|e| err(e.to_string()))?;
        Self::start(conn, p, Some(runs_dir), run_id, Some(lock))
    }

    /// [`Journal::open`], and when the database is corrupt or truncated (not an SQLite file,
    /// a header that promises more pages than the file has, or SQLite calls it malformed):
    /// move it (and its WAL) aside to `<path>.corrupt-<UTC time>`, start a new one, and return
    /// the moved file's path with why, for the caller to report. Other errors (locked,
    /// permission denied, newer schema) are returned as they are: only corruption is rebuilt.
    pub fn open_or_rebuild(path: &Path) -> JResult<(Self, Option<(PathBuf, String)>)> {
        if corruption(path).is_none() {
            match Self::open(path) {
                Ok(j) => return Ok((j, None)),
                Err(e) if !e.is_corrupt() => return Err(e),
                Err(_) => {}
            }
        }
        let p = path.display().to_string();
        let err = |msg: String| JournalError {
            path: p.clone(),
            msg,
        };
        // One process rebuilds; others wait here and then find a sound database.
        let lock_path = PathBuf::from(format!("{}.rebuild.lock", path.display()));
        let lock =
            File::create(&lock_path).map_err(|e| err(format!("{}: {e}", lock_path.display())))?;
        lock.lock()
            .map_err(|e| err(format!("{}: {e}", lock_path.display())))?;
        let why = match corruption(path) {
            Some(why) => why,
            None => match Self::open(path) {
                // Rebuilt by another run meanwhile.
                Ok(j) => return Ok((j, None)),
                Err(e) if !e.is_corrupt() => return Err(e),
                Err(e) => e.msg,
            },
        };
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        let mut aside = PathBuf::from(format!("{}.corrupt-{stamp}", path.display()));
        let mut n = 1;
        while aside.exists() {
            n += 1;
            aside = PathBuf::from(format!("{}.corrupt-{stamp}-{n}", path.display()));
        }
        fs_err::rename(path, &aside).map_err(|e| err(e.to_string()))?;
        for (ext, keep) in [("-wal", true), ("-shm", false), ("-journal", true)] {
            let side = PathBuf::from(format!("{}{ext}", path.display()));
            if side.exists() {
                let r = if keep {
                    fs_err::rename(&side, format!("{}{ext}", aside.display()))
                } else {
                    fs_err::remove_file(&side)
                };
                r.map_err(|e| err(e.to_string()))?;
            }
        }
        let j = Self::open(path)?;
        drop(lock);
        Ok((j, Some((aside, why))))
    }

    /// A throwaway in-memory state (`--no-state`).
    pub fn in_memory() -> JResult<Self> {
        let conn = Connection::open_in_memory().map_err(|e| JournalError {
            path: ":memory:".into(),
            msg: e.to_string(),
        })?;
        Self::start(
            conn,
            ":memory:".into(),
            None,
            s3ferry_store::run_id().to_string(),
            None,
        )
    }

    fn start(
        conn: Connection,
        path: String,
        runs_dir: Option<PathBuf>,
        run_id: String,
        lock: Option<File>,
    ) -> JResult<Self> {
        let mut db = Db {
            conn,
            path: path.clone(),
            runs_dir,
            run_id: run_id.clone(),
            _run_lock: lock,
            buried: HashSet::new(),
            pending: Vec::new(),
            waiters: Vec::new(),
            commits: 0,
        };
        db.conn
            .busy_timeout(BUSY_TIMEOUT)
            .and_then(|_| {
                db.conn
                    .execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
            })
            .map_err(|e| db.err(e))?;
        db.migrate()?;
        let (tx, rx) = mpsc::channel::<Cmd>();
        std::thread::Builder::new()
            .name("s3ferry-state".into())
            .spawn(move || owner_thread(db, rx))
            .map_err(|e| JournalError {
                path: path.clone(),
                msg: format!("cannot start the state thread: {e}"),
            })?;
        Ok(Self { tx, path, run_id })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// This process's run id.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    fn gone(&self) -> JournalError {
        JournalError {
            path: self.path.clone(),
            msg: "the state thread has stopped".into(),
        }
    }

    /// Run `f` on the owner thread and wait for its answer.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Db) -> JResult<T> + Send + 'static,
    ) -> JResult<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Box::new(move |db| {
                let _ = tx.send(f(db));
            }))
            .map_err(|_| self.gone())?;
        rx.await.map_err(|_| self.gone())?
    }

    /// Queue `f` on the owner thread without waiting.
    fn cast(&self, f: impl FnOnce(&mut Db) + Send + 'static) {
        if self.tx.send(Box::new(f)).is_err() {
            tracing::warn!("{}", self.gone());
        }
    }

    // ---- records --------------------------------------------------------------------------

    /// Store a record (buffered).
    pub fn put_record(&self, job: &str, scope: &str, kind: &str, key: &str, value: String) {
        let p = Pending::Put {
            job: job.into(),
            scope: scope.into(),
            kind: kind.into(),
            key: key.into(),
            value,
        };
        self.cast(move |db| db.push(p));
    }

    /// Delete a record (buffered).
    pub fn delete_record(&self, job: &str, scope: &str, kind: &str, key: &str) {
        let p = Pending::Delete {
            job: job.into(),
            scope: scope.into(),
            kind: kind.into(),
            key: key.into(),
        };
        self.cast(move |db| db.push(p));
    }

    /// One record, after committing what is buffered.
    pub async fn get_record(
        &self,
        job: &str,
        scope: &str,
        kind: &str,
        key: &str,
    ) -> JResult<Option<String>> {
        let (job, scope, kind, key) = (
            job.to_string(),
            scope.to_string(),
            kind.to_string(),
            key.to_string(),
        );
        self.call(move |db| {
            db.flush()?;
            db.conn
                .prepare_cached("SELECT value FROM records WHERE job = ?1 AND scope = ?2 AND kind = ?3 AND key = ?4")
                .and_then(|mut st| st.query_row(params![job, scope, kind, key], |r| r.get(0)).optional())
                .map_err(|e| db.err(e))
        })
        .await
    }

    /// The records of one kind in a scope, in key byte order, fetched a page at a time (after
    /// committing what is buffered when the scan starts).
    pub fn scan(
        &self,
        job: &str,
        scope: &str,
        kind: &str,
    ) -> BoxStream<'static, JResult<(String, String)>> {
        let tx = self.tx.clone();
        let path = self.path.clone();
        let (job, scope, kind) = (job.to_string(), scope.to_string(), kind.to_string());
        let gone = move || JournalError {
            path: path.clone(),
            msg: "the state thread has stopped".into(),
        };
        stream::unfold(
            (Some(String::new()), true),
            move |(after, first)| {
                let (tx, job, scope, kind, gone) =
                    (tx.clone(), job.clone(), scope.clone(), kind.clone(), gone.clone());
                async move {
                    let after = after?;
                    let (otx, orx) = tokio::sync::oneshot::channel();
                    let cmd: Cmd = Box::new(move |db: &mut Db| {
                        let r = (|| {
                            if first {
                                db.flush()?;
                            }
                            let mut st = db
                                .conn
                                .prepare_cached("SELECT key, value FROM records WHERE job = ?1 AND scope = ?2 AND kind = ?3 AND key > ?4 ORDER BY key LIMIT ?5")
                                .map_err(|e| db.err(e))?;
                            let rows = st
                                .query_map(params![job, scope, kind, after, PAGE as i64], |r| {
                                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                                })
                                .map_err(|e| db.err(e))?;
                            rows.collect::<Result<Vec<_>, _>>().map_err(|e| db.err(e))
                        })();
                        let _ = otx.send(r);
                    });
                    if tx.send(cmd).is_err() {
                        return Some((vec![Err(gone())], (None, false)));
                    }
                    match orx.await {
                        Ok(Ok(rows)) if rows.is_empty() => None,
                        Ok(Ok(rows)) => {
                            let next = (rows.len() == PAGE).then(|| rows[rows.len() - 1].0.clone());
                            Some((rows.into_iter().map(Ok).collect::<Vec<_>>(), (next, false)))
                        }
                        Ok(Err(e)) => Some((vec![Err(e)], (None, false))),
                        Err(_) => Some((vec![Err(gone())], (None, false))),
                    }
                }
            },
        )
        .flat_map(stream::iter)
        .boxed()
    }

    /// Remember that `key` was synced with these signatures (buffered).
    pub fn record_synced(&self, job: &str, pair: &str, key: &str, rec: &BaseRecord) {
        self.put_record(job, pair, BASE, key, encode_base(rec));
    }

    /// Forget `key`'s base record (after a delete; buffered).
    pub fn forget(&self, job: &str, pair: &str, key: &str) {
        self.delete_record(job, pair, BASE, key);
    }

    /// One base record.
    pub async fn base(&self, job: &str, pair: &str, key: &str) -> JResult<Option<BaseRecord>> {
        Ok(self
            .get_record(job, pair, BASE, key)
            .await?
            .map(|v| decode_base(&v)))
    }

    /// A pair's base records in key byte order, to be joined with the listings.
    pub fn base_stream(
        &self,
        job: &str,
        pair: &str,
    ) -> BoxStream<'static, JResult<(String, BaseRecord)>> {
        self.scan(job, pair, BASE)
            .map(|r| r.map(|(k, v)| (k, decode_base(&v))))
            .boxed()
    }

    /// Commit everything buffered; a failed commit keeps the batch for the next try.
    pub async fn flush(&self) -> JResult<()> {
        self.call(|db| db.flush()).await
    }

    // ---- hash cache -----------------------------------------------------------------------

    pub async fn cached_hash(&self, id: &FileId, algo: &str) -> JResult<Option<String>> {
        let (id, algo) = (id.clone(), algo.to_string());
        self.call(move |db| {
            // A hash stored moments ago may still be buffered.
            for p in db.pending.iter().rev() {
                if let Pending::Hash { id: i, algo: a, value } = p {
                    if *i == id && *a == algo {
                        return Ok(Some(value.clone()));
                    }
                }
            }
            db.conn
                .prepare_cached("SELECT value FROM hashes WHERE path = ?1 AND algo = ?2 AND size = ?3 AND mtime_ns = ?4 AND inode = ?5 AND ctime_ns = ?6")
                .and_then(|mut st| {
                    st.query_row(params![id.path, algo, id.size as i64, id.mtime_ns, id.inode as i64, id.ctime_ns], |r| r.get(0)).optional()
                })
                .map_err(|e| db.err(e))
        })
        .await
    }

    /// Cache a hash (buffered).
    pub fn store_hash(&self, id: &FileId, algo: &str, value: &str) {
        let p = Pending::Hash {
            id: id.clone(),
            algo: algo.into(),
            value: value.into(),
        };
        self.cast(move |db| db.push(p));
    }

    // ---- runs -----------------------------------------------------------------------------

    /// Mark a run of `job` on `scope` as in progress (committed at once). Returns whether an
    /// earlier run of the scope never ended *and is dead* (killed or crashed: it may have left
    /// temp files behind). A run of the scope that is still going (another process) is not
    /// "unfinished".
    pub async fn begin_run(&self, job: &str, scope: &str) -> JResult<bool> {
        let (job, scope) = (job.to_string(), scope.to_string());
        self.call(move |db| {
            let runs: Vec<String> = {
                let mut st = db
                    .conn
                    .prepare("SELECT run_id FROM run_scopes WHERE job = ?1 AND scope = ?2")
                    .map_err(|e| db.err(e))?;
                let rows = st
                    .query_map(params![job, scope], |r| r.get(0))
                    .map_err(|e| db.err(e))?;
                rows.collect::<Result<Vec<_>, _>>().map_err(|e| db.err(e))?
            };
            let mut unfinished = false;
            for r in runs {
                if db.run_alive(&r) && r != db.run_id {
                    continue;
                }
                unfinished |= r != db.run_id;
                db.conn
                    .execute(
                        "DELETE FROM run_scopes WHERE job = ?1 AND scope = ?2 AND run_id = ?3",
                        params![job, scope, r],
                    )
                    .map_err(|e| db.err(e))?;
                if r != db.run_id {
                    db.bury(&r);
                }
            }
            let now = secs(SystemTime::now());
            db.conn
                .execute(
                    "INSERT OR REPLACE INTO run_scopes (job, scope, run_id, started) VALUES (?1, ?2, ?3, ?4)",
                    params![job, scope, db.run_id, now],
                )
                .map_err(|e| db.err(e))?;
            db.conn
                .execute(
                    "INSERT OR REPLACE INTO scope_seen (job, scope, seen) VALUES (?1, ?2, ?3)",
                    params![job, scope, now],
                )
                .map_err(|e| db.err(e))?;
            Ok(unfinished)
        })
        .await
    }

    /// Forget what is older than `max_age`: the records of every scope of `job` that no run has
    /// used since (a sync pair not synced for that long), and cached hashes stored before then
    /// (recomputed when next needed). Scopes with a run in progress are kept. Returns (records,
    /// hashes) removed.
    pub async fn prune(&self, job: &str, max_age: Duration) -> JResult<(u64, u64)> {
        let job = job.to_string();
        self.call(move |db| {
            db.flush()?;
            let cutoff = secs(SystemTime::now()) - max_age.as_secs().min(i64::MAX as u64) as i64;
            let tx = db
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| JournalError {
                    path: db.path.clone(),
                    msg: e.to_string(),
                })?;
            let r = (|| -> rusqlite::Result<(u64, u64)> {
                let stale = "SELECT scope FROM scope_seen WHERE job = ?1 AND seen < ?2
                             AND scope NOT IN (SELECT scope FROM run_scopes WHERE job = ?1)";
                let records = tx.execute(
                    &format!("DELETE FROM records WHERE job = ?1 AND scope IN ({stale})"),
                    params![job, cutoff],
                )?;
                tx.execute(
                    &format!("DELETE FROM scope_seen WHERE job = ?1 AND scope IN ({stale})"),
                    params![job, cutoff],
                )?;
                let hashes = tx.execute("DELETE FROM hashes WHERE seen < ?1", params![cutoff])?;
                Ok((records as u64, hashes as u64))
            })();
            match r {
                Ok(n) => tx.commit().map(|_| n).map_err(|e| JournalError {
                    path: db.path.clone(),
                    msg: e.to_string(),
                }),
                Err(e) => Err(JournalError {
                    path: db.path.clone(),
                    msg: format!("pruning: {e}"),
                }),
            }
        })
        .await
    }

    /// The run of `job` on `scope` finished (commits what is buffered first).
    pub async fn end_run(&self, job: &str, scope: &str) -> JResult<()> {
        let (job, scope) = (job.to_string(), scope.to_string());
        self.call(move |db| {
            db.flush()?;
            db.conn
                .execute(
                    "DELETE FROM run_scopes WHERE job = ?1 AND scope = ?2 AND run_id = ?3",
                    params![job, scope, db.run_id],
                )
                .map(|_| ())
                .map_err(|e| db.err(e))
        })
        .await
    }

    /// Which of `runs` are alive now (this run always is; another while it holds its lock).
    pub async fn alive(&self, runs: Vec<String>) -> JResult<HashSet<String>> {
        self.call(move |db| Ok(runs.into_iter().filter(|r| db.run_alive(r)).collect()))
            .await
    }

    /// Which of `runs` are provably dead: their lock file is free, or this database recorded
    /// them and their lock is gone. Runs this database never saw (another state database,
    /// `--no-state`) are not in the answer even when no lock file exists here.
    pub async fn dead(&self, runs: Vec<String>) -> JResult<HashSet<String>> {
        self.call(move |db| {
            Ok(runs
                .into_iter()
                .filter(|r| db.run_state(r) == RunState::Dead)
                .collect())
        })
        .await
    }

    // ---- uploads --------------------------------------------------------------------------

    /// Note a multipart upload (or the intent to create one) as started by this run. Committed
    /// before it returns: it must survive a kill. Uploads started at the same time share one
    /// commit (with whatever else is buffered): the owner thread takes every command queued
    /// before it commits.
    pub async fn upload_started(&self, store: &str, key: &str, upload_id: &str) -> JResult<()> {
        let w = Pending::Upload {
            store: store.to_string(),
            key: key.to_string(),
            upload_id: upload_id.to_string(),
            run_id: self.run_id.clone(),
            started: secs(SystemTime::now()),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Box::new(move |db| {
                db.pending.push(w);
                db.waiters.push(tx);
            }))
            .map_err(|_| self.gone())?;
        rx.await.map_err(|_| self.gone())?
    }

    /// The upload ended (completed or aborted). Queued: if it is lost, the next run finds the
    /// upload gone and drops the record.
    pub fn upload_ended(&self, store: &str, key: &str, upload_id: &str) {
        let (store, key, id) = (store.to_string(), key.to_string(), upload_id.to_string());
        self.cast(move |db| {
            // Possibly not committed yet (a failed batch is kept): drop it from the batch too.
            db.pending.retain(|p| {
                !matches!(p, Pending::Upload { store: s, key: k, upload_id: u, .. }
                    if *s == store && *k == key && *u == id)
            });
            if let Err(e) = db.conn.execute(
                "DELETE FROM uploads WHERE store = ?1 AND key = ?2 AND upload_id = ?3",
                params![store, key, id],
            ) {
                tracing::warn!("{}", db.err(e));
            }
        });
    }

    /// Uploads in `store` recorded by runs that are dead: a killed run's leftovers, safe to
    /// abort. Uploads of live runs (this one, or another process) are never listed.
    pub async fn orphan_uploads(&self, store: &str) -> JResult<Vec<OrphanUpload>> {
        let store = store.to_string();
        self.call(move |db| {
            let rows: Vec<(String, String, String, i64)> = {
                let mut st = db
                    .conn
                    .prepare("SELECT key, upload_id, run_id, started FROM uploads WHERE store = ?1 ORDER BY key, upload_id")
                    .map_err(|e| db.err(e))?;
                let rows = st
                    .query_map(params![store], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                    .map_err(|e| db.err(e))?;
                rows.collect::<Result<Vec<_>, _>>().map_err(|e| db.err(e))?
            };
            let mut alive: std::collections::HashMap<String, bool> = Default::default();
            let mut out = Vec::new();
            for (key, upload_id, run, started) in rows {
                let live = *alive.entry(run.clone()).or_insert_with(|| db.run_alive(&run));
                if !live {
                    out.push(OrphanUpload {
                        key,
                        upload_id,
                        started: at(started),
                    });
                }
            }
            Ok(out)
        })
        .await
    }

    /// Whether a run other than this one that is alive has an upload (or the intent of one) of
    /// `key` in `store` recorded: then a stray upload of that key may be its, not ours.
    pub async fn others_uploading(&self, store: &str, key: &str) -> JResult<bool> {
        let (store, key) = (store.to_string(), key.to_string());
        self.call(move |db| {
            let runs: Vec<String> = {
                let mut st = db
                    .conn
                    .prepare("SELECT DISTINCT run_id FROM uploads WHERE store = ?1 AND key = ?2 AND run_id != ?3")
                    .map_err(|e| db.err(e))?;
                let rows = st
                    .query_map(params![store, key, db.run_id], |r| r.get(0))
                    .map_err(|e| db.err(e))?;
                rows.collect::<Result<Vec<_>, _>>().map_err(|e| db.err(e))?
            };
            Ok(runs.iter().any(|r| db.run_alive(r)))
        })
        .await
    }

    /// The stores that have uploads recorded (by any run).
    pub async fn stores_with_uploads(&self) -> JResult<Vec<String>> {
        self.call(|db| {
            let mut st = db
                .conn
                .prepare("SELECT DISTINCT store FROM uploads ORDER BY store")
                .map_err(|e| db.err(e))?;
            let rows = st.query_map([], |r| r.get(0)).map_err(|e| db.err(e))?;
            rows.collect::<Result<Vec<_>, _>>().map_err(|e| db.err(e))
        })
        .await
    }
}

/// Is `rel` one of `reserved` (a key, or everything under a `dir/`)?
pub fn is_reserved(reserved: &[String], rel: &str) -> bool {
    reserved
        .iter()
        .any(|r| rel == r || (r.ends_with('/') && rel.starts_with(r.as_str())))
}

/// Keys under a local side that are the state database's own files (the database at
/// `db_path`, its WAL and lock files, its runs directory): never synced, listed or deleted by a
/// job whose tree holds the database.
pub fn reserved_keys(side: &crate::walk::Side, db_path: &str) -> Vec<String> {
    let Some(root) = side.store.local_path("") else {
        return Vec::new();
    };
    let (Ok(root), Some(dir), Some(name)) = (
        root.canonicalize(),
        Path::new(db_path).parent(),
        Path::new(db_path).file_name(),
    ) else {
        return Vec::new();
    };
    let Ok(dir) = dir.canonicalize() else {
        return Vec::new();
    };
    let Ok(rel) = dir.strip_prefix(&root) else {
        return Vec::new();
    };
    let name = name.to_string_lossy();
    let key = |p: PathBuf| {
        let s = p.to_string_lossy().replace('\\', "/");
        s.strip_prefix(side.prefix.as_str())
            .unwrap_or(&s)
            .to_string()
    };
    let mut out: Vec<String> = ["", "-wal", "-shm", "-journal", ".rebuild.lock"]
        .iter()
        .map(|sfx| key(rel.join(format!("{name}{sfx}"))))
        .collect();
    out.push(format!("{}/", key(rel.join(format!("{name}.runs")))));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    fn rec(a: &str, b: &str) -> BaseRecord {
        BaseRecord {
            src_sig: a.into(),
            dst_sig: b.into(),
        }
    }

    #[tokio::test]
    async fn records_survive_reopen_and_stream_in_byte_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.db");
        let keys = ["é", "a/x", "a.txt", "a-b", "b", "a"];
        {
            let j = Journal::open(&p).unwrap();
            for k in keys {
                j.record_synced("sync", "pair", k, &rec(k, "d"));
            }
            j.record_synced("bisync", "pair", "other-job", &rec("x", "y"));
            j.upload_started("s3://b", "big", "u1").await.unwrap();
            let id = FileId {
                path: "/x".into(),
                size: 3,
                mtime_ns: 5,
                inode: 9,
                ctime_ns: 4,
            };
            j.store_hash(&id, "etag:8", "abc");
            assert_eq!(
                j.cached_hash(&id, "etag:8").await.unwrap().as_deref(),
                Some("abc")
            );
            assert_eq!(
                j.cached_hash(&FileId { mtime_ns: 6, ..id }, "etag:8")
                    .await
                    .unwrap(),
                None
            );
        }
        let j = Journal::open(&p).unwrap();
        let got: Vec<(String, BaseRecord)> =
            j.base_stream("sync", "pair").try_collect().await.unwrap();
        let mut want: Vec<&str> = keys.to_vec();
        want.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        assert_eq!(
            got.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            want
        );
        assert_eq!(got[0].1, rec("a", "d"));
        assert_eq!(
            j.base("sync", "pair", "a/x").await.unwrap(),
            Some(rec("a/x", "d"))
        );
        assert_eq!(
            j.base("bisync", "pair", "a/x").await.unwrap(),
            None,
            "namespaced by job"
        );
        j.forget("sync", "pair", "a/x");
        assert_eq!(j.base("sync", "pair", "a/x").await.unwrap(), None);
    }

    #[tokio::test]
    async fn range_scans_page_through_many_records() {
        let j = Journal::in_memory().unwrap();
        for i in 0..2500 {
            j.record_synced("sync", "p", &format!("k{i:05}"), &rec("s", "d"));
        }
        let got: Vec<(String, BaseRecord)> =
            j.base_stream("sync", "p").try_collect().await.unwrap();
        assert_eq!(got.len(), 2500);
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[tokio::test]
    async fn pairs_and_hashes_unused_for_the_max_age_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.db");
        // A schema-1 database: hashes without a `seen` column, no scope_seen table.
        {
            let c = Connection::open(&p).unwrap();
            c.execute_batch(
                "CREATE TABLE records (job TEXT NOT NULL, scope TEXT NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (job, scope, kind, key)) WITHOUT ROWID;
                 CREATE TABLE hashes (path TEXT NOT NULL, algo TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, inode INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, value TEXT NOT NULL, PRIMARY KEY (path, algo)) WITHOUT ROWID;
                 CREATE TABLE run_scopes (job TEXT NOT NULL, scope TEXT NOT NULL, run_id TEXT NOT NULL, started INTEGER NOT NULL, PRIMARY KEY (job, scope, run_id)) WITHOUT ROWID;
                 CREATE TABLE uploads (store TEXT NOT NULL, key TEXT NOT NULL, upload_id TEXT NOT NULL, run_id TEXT NOT NULL, started INTEGER NOT NULL, PRIMARY KEY (store, key, upload_id)) WITHOUT ROWID;
                 INSERT INTO records VALUES ('sync', 'old', 'base', 'k', 'a
b');
                 INSERT INTO hashes VALUES ('/x', 'md5', 1, 2, 3, 4, 'h');
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let j = Journal::open(&p).unwrap();
        let id = FileId {
            path: "/x".into(),
            size: 1,
            mtime_ns: 2,
            inode: 3,
            ctime_ns: 4,
        };
        assert_eq!(
            j.cached_hash(&id, "md5").await.unwrap().as_deref(),
            Some("h")
        );
        for scope in ["fresh", "busy"] {
            j.begin_run("sync", scope).await.unwrap();
            j.record_synced("sync", scope, "k", &rec("a", "b"));
        }
        j.end_run("sync", "fresh").await.unwrap();
        j.record_synced("bisync", "pair", "k", &rec("a", "b"));
        j.flush().await.unwrap();
        // Nothing is older than 90 days yet: the migrated rows count as used now.
        assert_eq!(
            j.prune("sync", Duration::from_secs(90 * 86400))
                .await
                .unwrap(),
            (0, 0)
        );
        // Age everything by 100 days.
        {
            let c = Connection::open(&p).unwrap();
            c.execute_batch(
                "UPDATE scope_seen SET seen = seen - 8640000; UPDATE hashes SET seen = seen - 8640000;",
            )
            .unwrap();
        }
        let (records, hashes) = j
            .prune("sync", Duration::from_secs(90 * 86400))
            .await
            .unwrap();
        assert_eq!(
            (records, hashes),
            (2, 1),
            "old and fresh pairs, and the hash"
        );
        assert_eq!(j.base("sync", "old", "k").await.unwrap(), None);
        assert_eq!(j.base("sync", "fresh", "k").await.unwrap(), None);
        assert!(
            j.base("sync", "busy", "k").await.unwrap().is_some(),
            "a run is using it"
        );
        assert!(
            j.base("bisync", "pair", "k").await.unwrap().is_some(),
            "another job's"
        );
        assert_eq!(j.cached_hash(&id, "md5").await.unwrap(), None);
        // A pair synced again is young again.
        j.begin_run("sync", "fresh").await.unwrap();
        j.record_synced("sync", "fresh", "k", &rec("a", "b"));
        j.end_run("sync", "fresh").await.unwrap();
        assert_eq!(
            j.prune("sync", Duration::from_secs(90 * 86400))
                .await
                .unwrap(),
            (0, 0)
        );
    }

    #[tokio::test]
    async fn a_v0_database_is_migrated_keeping_its_base_records() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.db");
        {
            let c = Connection::open(&p).unwrap();
            c.execute_batch(
                "CREATE TABLE synced (pair TEXT NOT NULL, key TEXT NOT NULL, src_sig TEXT NOT NULL, dst_sig TEXT NOT NULL, PRIMARY KEY (pair, key)) WITHOUT ROWID;
                 CREATE TABLE hashes_v2 (path TEXT NOT NULL, algo TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, inode INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, value TEXT NOT NULL, PRIMARY KEY (path, algo)) WITHOUT ROWID;
                 CREATE TABLE runs (pair TEXT NOT NULL PRIMARY KEY, started INTEGER NOT NULL) WITHOUT ROWID;
                 CREATE TABLE uploads (store TEXT NOT NULL, key TEXT NOT NULL, upload_id TEXT NOT NULL, started INTEGER NOT NULL, PRIMARY KEY (store, key, upload_id)) WITHOUT ROWID;
                 INSERT INTO synced VALUES ('/src -> s3://b/', 'f.txt', 'L3:1:2:3', 'E3:abc');
                 INSERT INTO uploads VALUES ('s3://b', 'big.bin', 'up-1', 5);
                 INSERT INTO runs VALUES ('/src -> s3://b/', 5);",
            )
            .unwrap();
        }
        let j = Journal::open(&p).unwrap();
        assert_eq!(
            j.base("sync", "/src -> s3://b/", "f.txt").await.unwrap(),
            Some(rec("L3:1:2:3", "E3:abc"))
        );
        // Its unfinished upload is a dead run's orphan, its unfinished run an unfinished scope.
        let orphans = j.orphan_uploads("s3://b").await.unwrap();
        assert_eq!(
            orphans
                .iter()
                .map(|o| (o.key.as_str(), o.upload_id.as_str()))
                .collect::<Vec<_>>(),
            vec![("big.bin", "up-1")]
        );
        assert!(j.begin_run("sync", "/src -> s3://b/").await.unwrap());
        drop(j);
        let c = Connection::open(&p).unwrap();
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        // A newer schema is refused with a clear message.
        c.execute_batch("PRAGMA user_version = 99").unwrap();
        drop(c);
        let e = Journal::open(&p).unwrap_err();
        assert!(e.to_string().contains("newer"), "{e}");
    }

    #[tokio::test]
    async fn a_failed_flush_keeps_its_batch() {
        let j = Journal::in_memory().unwrap();
        j.record_synced("sync", "p", "a", &rec("s", "d"));
        // Make the commit fail: the records table is gone.
        j.call(|db| {
            db.conn
                .execute_batch("ALTER TABLE records RENAME TO records_away")
                .map_err(|e| db.err(e))
        })
        .await
        .unwrap();
        assert!(j.flush().await.is_err());
        j.call(|db| {
            db.conn
                .execute_batch("ALTER TABLE records_away RENAME TO records")
                .map_err(|e| db.err(e))
        })
        .await
        .unwrap();
        j.flush().await.unwrap();
        assert_eq!(j.base("sync", "p", "a").await.unwrap(), Some(rec("s", "d")));
    }

    /// A second process (a second journal on the same file, its run alive) neither sees our
    /// uploads as orphans nor makes us see its as ours; a dead run's uploads are orphans.
    #[tokio::test]
    async fn runs_do_not_take_each_others_uploads() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.db");
        let ours = Journal::open(&p).unwrap();
        ours.upload_started("s3://b", "k", "ours-1").await.unwrap();
        // Another live run, simulated: a row with a run id whose lock file is held.
        let runs = dir.path().join("state.db.runs");
        let other_lock = File::create(runs.join("other.lock")).unwrap();
        other_lock.lock().unwrap();
        ours.call(|db| {
            db.conn
                .execute_batch(
                    "INSERT INTO uploads VALUES ('s3://b', 'k', 'theirs-1', 'other', 0);
                     INSERT INTO uploads VALUES ('s3://b', 'k', 'dead-1', 'dead', 0);
                     INSERT INTO run_scopes VALUES ('sync', 'pair', 'other', 0);",
                )
                .map_err(|e| db.err(e))
        })
        .await
        .unwrap();
        let orphans = ours.orphan_uploads("s3://b").await.unwrap();
        assert_eq!(
            orphans
                .iter()
                .map(|o| o.upload_id.as_str())
                .collect::<Vec<_>>(),
            vec!["dead-1"]
        );
        assert!(ours.others_uploading("s3://b", "k").await.unwrap());
        // The other run is busy with the pair: that is not an unfinished earlier run.
        assert!(!ours.begin_run("sync", "pair").await.unwrap());
        // It dies (its lock is released): now its uploads are orphans and its scope unfinished.
        drop(other_lock);
        let orphans = ours.orphan_uploads("s3://b").await.unwrap();
        assert_eq!(orphans.len(), 2);
        assert!(!ours.others_uploading("s3://b", "k").await.unwrap());
        ours.end_run("sync", "pair").await.unwrap();
        ours.call(|db| {
            db.conn
                .execute_batch("INSERT INTO run_scopes VALUES ('sync', 'pair2', 'other', 0);")
                .map_err(|e| db.err(e))
        })
        .await
        .unwrap();
        assert!(
            ours.begin_run("sync", "pair2").await.unwrap(),
            "a dead run's scope is unfinished"
        );
        assert!(
            !ours.begin_run("sync", "pair2").await.unwrap(),
            "ours is not"
        );
    }

    /// Only provably dead runs are dead: a run id this database never saw and that has no lock
    /// file here (a run on another state database, or with `--no-state`) is not, so its temp
    /// files in a shared local directory are left alone; nor is a live one or ours.
    #[tokio::test]
    async fn runs_unknown_to_this_database_are_not_dead() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.db");
        let j = Journal::open(&p).unwrap();
        let runs = dir.path().join("state.db.runs");
        let live = File::create(runs.join("aaaaaaaaaaaa.lock")).unwrap();
        live.lock().unwrap();
        File::create(runs.join("bbbbbbbbbbbb.lock")).unwrap(); // lock free: it died
        j.call(|db| {
            db.conn
                .execute_batch(
                    "INSERT INTO uploads VALUES ('s3://b', 'k', 'u', 'cccccccccccc', 0);",
                )
                .map_err(|e| db.err(e))
        })
        .await
        .unwrap(); // recorded here, lock file gone (buried): dead
        let ours = j.call(|db| Ok(db.run_id.clone())).await.unwrap();
        let ids = [
            "aaaaaaaaaaaa",
            "bbbbbbbbbbbb",
            "cccccccccccc",
            "dddddddddddd",
            &ours,
        ];
        let dead = j
            .dead(ids.iter().map(|s| s.to_string()).collect())
            .await
            .unwrap();
        let mut dead: Vec<_> = dead.into_iter().collect();
        dead.sort();
        assert_eq!(dead, vec!["bbbbbbbbbbbb", "cccccccccccc"]);
        // The in-memory journal (`--no-state`) knows no other run: none is provably dead.
        let mem = Journal::in_memory().unwrap();
        assert!(mem
            .dead(vec!["bbbbbbbbbbbb".into()])
            .await
            .unwrap()
            .is_empty());
        drop(live);
    }

    /// Intents queued while the owner thread is busy are committed in one transaction, and
    /// every caller gets its answer only after that commit.
    #[tokio::test]
    async fn concurrent_upload_intents_share_one_commit() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("state.db")).unwrap();
        let before = j.call(|db| Ok(db.commits)).await.unwrap();
        // Hold the owner thread until every intent is queued.
        let (release, wait) = std::sync::mpsc::channel::<()>();
        j.cast(move |_| {
            let _ = wait.recv();
        });
        let keys: Vec<String> = (0..32).map(|i| format!("k{i}")).collect();
        let mut calls: Vec<_> = keys
            .iter()
            .map(|k| Box::pin(j.upload_started("s3://b", k, "(pending)")))
            .collect();
        for c in &mut calls {
            assert!(futures::poll!(c.as_mut()).is_pending(), "not committed yet");
        }
        release.send(()).unwrap();
        for c in calls {
            c.await.unwrap();
        }
        let after = j.call(|db| Ok(db.commits)).await.unwrap();
        assert_eq!(after - before, 1, "one commit for 32 intents");
        let n: i64 = j
            .call(|db| {
                db.conn
                    .query_row("SELECT count(*) FROM uploads", [], |r| r.get(0))
                    .map_err(|e| db.err(e))
            })
            .await
            .unwrap();
        assert_eq!(n, 32);
    }
}
