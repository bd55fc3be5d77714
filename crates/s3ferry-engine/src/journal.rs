//! The state database (SQLite): what each sync pair looked like after its last successful
//! transfer of a key (so an unchanged tree re-syncs without reading anything), a hash cache
//! for local files, and the multipart uploads in flight (so a killed job can abort them).
//!
//! Records of finished objects are buffered and written in batches; a kill loses at most the
//! last batch, and those objects are then re-checked (by content), not re-transferred.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use std::time::SystemTime;

use rusqlite::{params, Connection, OptionalExtension};

use crate::plan::BaseRecord;

const FLUSH_EVERY: usize = 512;

#[derive(Debug, thiserror::Error)]
#[error("state database {path}: {source}")]
pub struct JournalError {
    path: String,
    #[source]
    source: rusqlite::Error,
}

pub type JResult<T> = Result<T, JournalError>;

#[derive(Debug)]
pub struct Journal {
    conn: Mutex<Connection>,
    pending: Mutex<Vec<Pending>>,
    path: String,
}

#[derive(Debug)]
enum Pending {
    Synced {
        pair: String,
        key: String,
        rec: BaseRecord,
    },
    Forget {
        pair: String,
        key: String,
    },
}

/// A cached content hash of a local file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileId {
    pub path: String,
    pub size: u64,
    pub mtime_ns: i64,
    pub inode: u64,
    pub ctime_ns: i64,
}

impl Journal {
    /// Open (or create) the state database at `path`.
    pub fn open(path: &Path) -> JResult<Self> {
        let p = path.display().to_string();
        if let Some(dir) = path.parent() {
            let _ = fs_err::create_dir_all(dir);
        }
        let conn = Connection::open(path).map_err(|source| JournalError {
            path: p.clone(),
            source,
        })?;
        Self::init(conn, p)
    }

    /// A throwaway in-memory state (`--no-state`).
    pub fn in_memory() -> JResult<Self> {
        let conn = Connection::open_in_memory().map_err(|source| JournalError {
            path: ":memory:".into(),
            source,
        })?;
        Self::init(conn, ":memory:".into())
    }

    fn init(conn: Connection, path: String) -> JResult<Self> {
        let e = |source| JournalError {
            path: path.clone(),
            source,
        };
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(e)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS synced (
                pair TEXT NOT NULL, key TEXT NOT NULL, src_sig TEXT NOT NULL, dst_sig TEXT NOT NULL,
                PRIMARY KEY (pair, key)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS hashes_v2 (
                path TEXT NOT NULL, algo TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
                inode INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, value TEXT NOT NULL,
                PRIMARY KEY (path, algo)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS runs (
                pair TEXT NOT NULL PRIMARY KEY, started INTEGER NOT NULL) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS uploads (
                store TEXT NOT NULL, key TEXT NOT NULL, upload_id TEXT NOT NULL,
                started INTEGER NOT NULL, PRIMARY KEY (store, key, upload_id)) WITHOUT ROWID;",
        )
        .map_err(e)?;
        Ok(Self {
            conn: Mutex::new(conn),
            pending: Mutex::new(Vec::new()),
            path,
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self, source: rusqlite::Error) -> JournalError {
        JournalError {
            path: self.path.clone(),
            source,
        }
    }

    pub fn base(&self, pair: &str, key: &str) -> JResult<Option<BaseRecord>> {
        self.conn()
            .prepare_cached("SELECT src_sig, dst_sig FROM synced WHERE pair = ?1 AND key = ?2")
            .and_then(|mut st| {
                st.query_row(params![pair, key], |r| {
                    Ok(BaseRecord {
                        src_sig: r.get(0)?,
                        dst_sig: r.get(1)?,
                    })
                })
                .optional()
            })
            .map_err(|e| self.err(e))
    }

    /// Remember that `key` was synced with these signatures (buffered).
    pub fn record_synced(&self, pair: &str, key: &str, rec: BaseRecord) -> JResult<()> {
        self.push(Pending::Synced {
            pair: pair.into(),
            key: key.into(),
            rec,
        })
    }

    /// Forget `key` (after a delete).
    pub fn forget(&self, pair: &str, key: &str) -> JResult<()> {
        self.push(Pending::Forget {
            pair: pair.into(),
            key: key.into(),
        })
    }

    fn push(&self, p: Pending) -> JResult<()> {
        let full = {
            let mut g = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            g.push(p);
            g.len() >= FLUSH_EVERY
        };
        if full {
            self.flush()?;
        }
        Ok(())
    }

    /// Write buffered records in one transaction.
    pub fn flush(&self) -> JResult<()> {
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if batch.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        {
            let mut ins = tx
                .prepare_cached("INSERT OR REPLACE INTO synced (pair, key, src_sig, dst_sig) VALUES (?1, ?2, ?3, ?4)")
                .map_err(|e| self.err(e))?;
            let mut del = tx
                .prepare_cached("DELETE FROM synced WHERE pair = ?1 AND key = ?2")
                .map_err(|e| self.err(e))?;
            for p in &batch {
                match p {
                    Pending::Synced { pair, key, rec } => {
                        ins.execute(params![pair, key, rec.src_sig, rec.dst_sig])
                    }
                    Pending::Forget { pair, key } => del.execute(params![pair, key]),
                }
                .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    pub fn cached_hash(&self, id: &FileId, algo: &str) -> JResult<Option<String>> {
        self.conn()
            .prepare_cached("SELECT value FROM hashes_v2 WHERE path = ?1 AND algo = ?2 AND size = ?3 AND mtime_ns = ?4 AND inode = ?5 AND ctime_ns = ?6")
            .and_then(|mut st| {
                st.query_row(params![id.path, algo, id.size as i64, id.mtime_ns, id.inode as i64, id.ctime_ns], |r| r.get(0)).optional()
            })
            .map_err(|e| self.err(e))
    }

    pub fn store_hash(&self, id: &FileId, algo: &str, value: &str) -> JResult<()> {
        self.conn()
            .prepare_cached(
                "INSERT OR REPLACE INTO hashes_v2 (path, algo, size, mtime_ns, inode, ctime_ns, value) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .and_then(|mut st| st.execute(params![id.path, algo, id.size as i64, id.mtime_ns, id.inode as i64, id.ctime_ns, value]))
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Mark a run of `pair` as in progress (written at once). Returns whether an earlier run
    /// of the pair never reached [`Journal::end_run`]: it was killed or failed, and may have
    /// left temp files behind.
    pub fn begin_run(&self, pair: &str) -> JResult<bool> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let conn = self.conn();
        let unfinished = conn
            .query_row("SELECT 1 FROM runs WHERE pair = ?1", params![pair], |_| {
                Ok(())
            })
            .optional()
            .map_err(|e| self.err(e))?
            .is_some();
        conn.execute(
            "INSERT OR REPLACE INTO runs (pair, started) VALUES (?1, ?2)",
            params![pair, now as i64],
        )
        .map_err(|e| self.err(e))?;
        Ok(unfinished)
    }

    /// The run of `pair` finished.
    pub fn end_run(&self, pair: &str) -> JResult<()> {
        self.conn()
            .execute("DELETE FROM runs WHERE pair = ?1", params![pair])
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Note a multipart upload as started (written at once: it must survive a kill).
    pub fn upload_started(&self, store: &str, key: &str, upload_id: &str) -> JResult<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO uploads (store, key, upload_id, started) VALUES (?1, ?2, ?3, ?4)",
                params![store, key, upload_id, now as i64],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    pub fn upload_ended(&self, store: &str, key: &str, upload_id: &str) -> JResult<()> {
        self.conn()
            .execute(
                "DELETE FROM uploads WHERE store = ?1 AND key = ?2 AND upload_id = ?3",
                params![store, key, upload_id],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Uploads a previous run left behind in `store` (key, upload id, when it was noted).
    pub fn orphan_uploads(&self, store: &str) -> JResult<Vec<(String, String, SystemTime)>> {
        let conn = self.conn();
        let mut st = conn
            .prepare("SELECT key, upload_id, started FROM uploads WHERE store = ?1")
            .map_err(|e| self.err(e))?;
        let at =
            |secs: i64| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
        let rows = st
            .query_map(params![store], |r| {
                Ok((r.get(0)?, r.get(1)?, at(r.get(2)?)))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.db");
        {
            let j = Journal::open(&p).unwrap();
            j.record_synced(
                "pair",
                "a",
                BaseRecord {
                    src_sig: "s".into(),
                    dst_sig: "d".into(),
                },
            )
            .unwrap();
            j.upload_started("s3://b", "big", "u1").unwrap();
            let id = FileId {
                path: "/x".into(),
                size: 3,
                mtime_ns: 5,
                inode: 9,
                ctime_ns: 4,
            };
            j.store_hash(&id, "etag:8", "abc").unwrap();
            assert_eq!(
                j.cached_hash(&id, "etag:8").unwrap().as_deref(),
                Some("abc")
            );
            assert_eq!(
                j.cached_hash(&FileId { mtime_ns: 6, ..id }, "etag:8")
                    .unwrap(),
                None
            );
        }
        let j = Journal::open(&p).unwrap();
        assert_eq!(
            j.base("pair", "a").unwrap(),
            Some(BaseRecord {
                src_sig: "s".into(),
                dst_sig: "d".into()
            })
        );
        let orphans = j.orphan_uploads("s3://b").unwrap();
        assert_eq!(
            orphans
                .iter()
                .map(|(k, u, _)| (k.as_str(), u.as_str()))
                .collect::<Vec<_>>(),
            vec![("big", "u1")]
        );
        assert!(!j.begin_run("pair").unwrap(), "first run");
        assert!(j.begin_run("pair").unwrap(), "the first never ended");
        j.end_run("pair").unwrap();
        assert!(!j.begin_run("pair").unwrap());
        j.forget("pair", "a").unwrap();
        j.flush().unwrap();
        assert_eq!(j.base("pair", "a").unwrap(), None);
    }
}
