//! Sync on in-memory and local stores (fast), across backend pairs and under injected faults.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use s3ferry_engine::events::{NullReporter, Summary};
use s3ferry_engine::journal::Journal;
use s3ferry_engine::transfer::TransferConfig;
use s3ferry_engine::walk::Side;
use s3ferry_jobs::sync::{self, MaxDelete, SyncError, SyncOptions};
use s3ferry_store::layer::{FaultStore, RetryPolicy, RetryStore};
use s3ferry_store::local::LocalStore;
use s3ferry_store::memory::MemoryStore;
use s3ferry_store::{DynStore, PutOptions, Store, StoreExt};

const MIB: usize = 1024 * 1024;

fn opts() -> SyncOptions {
    let mut t = TransferConfig::new(256 * MIB as u64);
    t.part_size = 5 * MIB as u64;
    SyncOptions::new(t)
}

fn fast_retry(inner: DynStore) -> DynStore {
    let p = RetryPolicy {
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
        ..RetryPolicy::default()
    };
    Arc::new(RetryStore::with_policy(inner, p))
}

async fn run(
    src: &Side,
    dst: &Side,
    o: SyncOptions,
    j: &Arc<Journal>,
) -> Result<Summary, SyncError> {
    sync::run(
        src.clone(),
        dst.clone(),
        o,
        j.clone(),
        Arc::new(NullReporter),
    )
    .await
}

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

/// Everything under `prefix` of a store, as key -> bytes.
async fn contents(s: &dyn Store, prefix: &str) -> BTreeMap<String, Bytes> {
    let mut out = BTreeMap::new();
    for m in s.list_all(prefix).await.unwrap() {
        out.insert(
            m.key[prefix.len()..].to_string(),
            s.get_bytes(&m.key).await.unwrap(),
        );
    }
    out
}

fn write_tree(root: &std::path::Path, files: &[(&str, Vec<u8>)]) {
    for (k, v) in files {
        let p = root.join(k);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, v).unwrap();
    }
}

#[tokio::test]
async fn local_to_memory_and_back_is_exact_and_resync_is_free() {
    let dir = tempfile::tempdir().unwrap();
    let src_dir = dir.path().join("src");
    let files = vec![
        ("a.txt", b"alpha".to_vec()),
        ("a-b", b"dash".to_vec()),
        ("a/x", b"nested".to_vec()),
        ("empty", vec![]),
        ("d/e/f g+%.bin", data(70_000, 1)),
        ("big.bin", data(12 * MIB + 3, 2)),
    ];
    write_tree(&src_dir, &files);
    let mem = MemoryStore::new();
    let src = Side::new(Arc::new(LocalStore::new(&src_dir)), "");
    let dst = Side::new(Arc::new(mem.clone()), "p/");
    let j = Arc::new(Journal::in_memory().unwrap());

    let s = run(&src, &dst, opts(), &j).await.unwrap();
    assert_eq!((s.copied, s.failed), (files.len() as u64, 0));
    let got = contents(&mem, "p/").await;
    assert_eq!(got.len(), files.len());
    for (k, v) in &files {
        assert_eq!(got[*k].as_ref(), v.as_slice(), "{k}");
    }
    assert_eq!(mem.pending_uploads(), 0);
    // The big file went up in parts, and the object carries its mtime.
    assert!(mem.op_count("upload_part") >= 3);
    let head = mem.head("p/big.bin").await.unwrap();
    assert_eq!(
        head.mtime,
        std::fs::metadata(src_dir.join("big.bin"))
            .unwrap()
            .modified()
            .ok()
    );

    // Re-sync: nothing transferred, nothing read from the destination but the listing.
    mem.reset_counts();
    let s = run(&src, &dst, opts(), &j).await.unwrap();
    assert_eq!((s.copied, s.skipped), (0, files.len() as u64));
    assert_eq!(mem.total_ops(), mem.op_count("list"));

    // Down again into a fresh directory: exact bytes and exact mtimes.
    let back = dir.path().join("back");
    let local_back = LocalStore::new(&back);
    local_back.create_root().unwrap();
    let back_side = Side::new(Arc::new(local_back), "");
    let s = run(&dst, &back_side, opts(), &j).await.unwrap();
    assert_eq!(s.copied, files.len() as u64);
    for (k, v) in &files {
        assert_eq!(&std::fs::read(back.join(k)).unwrap(), v, "{k}");
        assert_eq!(
            std::fs::metadata(back.join(k)).unwrap().modified().unwrap(),
            std::fs::metadata(src_dir.join(k))
                .unwrap()
                .modified()
                .unwrap(),
            "mtime of {k}"
        );
    }
    // And without state, a second download compares content and copies nothing.
    let fresh = Arc::new(Journal::in_memory().unwrap());
    let s = run(&dst, &back_side, opts(), &fresh).await.unwrap();
    assert_eq!((s.copied, s.failed), (0, 0));
}

#[tokio::test]
async fn same_size_edit_with_old_mtime_is_detected_by_etag() {
    let dir = tempfile::tempdir().unwrap();
    write_tree(dir.path(), &[("f", b"version-1".to_vec())]);
    let mem = MemoryStore::new();
    let src = Side::new(Arc::new(LocalStore::new(dir.path())), "");
    let dst = Side::new(Arc::new(mem.clone()), "");
    let j = Arc::new(Journal::in_memory().unwrap());
    run(&src, &dst, opts(), &j).await.unwrap();
    let old = std::fs::metadata(dir.path().join("f"))
        .unwrap()
        .modified()
        .unwrap();
    std::fs::write(dir.path().join("f"), b"version-2").unwrap();
    filetime::set_file_mtime(
        dir.path().join("f"),
        filetime::FileTime::from_system_time(old - Duration::from_secs(3600)),
    )
    .unwrap();
    let s = run(&src, &dst, opts(), &j).await.unwrap();
    assert_eq!(s.copied, 1);
    assert_eq!(mem.get_bytes("f").await.unwrap().as_ref(), b"version-2");
}

#[tokio::test]
async fn server_side_copy_within_a_copy_domain_keeps_metadata_and_tags() {
    let mem = MemoryStore::new();
    let mut meta = BTreeMap::new();
    meta.insert("owner".to_string(), "ops".to_string());
    let po = PutOptions::new()
        .metadata(meta.clone())
        .tags(vec![("team".into(), "blue".into())])
        .content_type(Some("text/plain".into()));
    mem.put("src/a", Bytes::from_static(b"hello"), po.clone())
        .await
        .unwrap();
    mem.put("src/big", Bytes::from(data(11 * MIB, 3)), po)
        .await
        .unwrap();
    let src = Side::new(Arc::new(mem.clone()), "src/");
    let dst = Side::new(Arc::new(mem.clone()), "dst/");
    let j = Arc::new(Journal::in_memory().unwrap());
    let mut o = opts();
    o.transfer.max_single_copy = 6 * MIB as u64; // the big one goes through UploadPartCopy
    let s = run(&src, &dst, o, &j).await.unwrap();
    assert_eq!((s.copied, s.failed), (2, 0));
    assert_eq!(mem.op_count("copy"), 1);
    assert!(mem.op_count("upload_part_copy") >= 2);
    assert_eq!(mem.op_count("get"), 0, "server-side copies read nothing");
    for k in ["dst/a", "dst/big"] {
        let h = mem.head(k).await.unwrap();
        assert_eq!(
            h.metadata.unwrap().get("owner"),
            Some(&"ops".to_string()),
            "{k}"
        );
        assert_eq!(h.content_type.as_deref(), Some("text/plain"));
        assert_eq!(
            mem.get_tags(k).await.unwrap(),
            vec![("team".to_string(), "blue".to_string())]
        );
    }
    assert_eq!(
        mem.get_bytes("dst/big").await.unwrap(),
        mem.get_bytes("src/big").await.unwrap()
    );

    // Streamed through when server-side copies are off: tags and metadata still carried.
    let dst2 = Side::new(Arc::new(mem.clone()), "dst2/");
    let mut o = opts();
    o.transfer.server_side = false;
    mem.reset_counts();
    run(&src, &dst2, o, &j).await.unwrap();
    assert_eq!(mem.op_count("copy") + mem.op_count("upload_part_copy"), 0);
    assert_eq!(
        mem.get_tags("dst2/a").await.unwrap(),
        vec![("team".to_string(), "blue".to_string())]
    );
    assert_eq!(
        mem.head("dst2/big")
            .await
            .unwrap()
            .metadata
            .unwrap()
            .get("owner"),
        Some(&"ops".to_string())
    );
}

#[tokio::test]
async fn delete_limit_refuses_before_any_change() {
    let mem = MemoryStore::new();
    for i in 0..10 {
        mem.put_bytes(&format!("d/k{i}"), "x").await.unwrap();
    }
    let srcm = MemoryStore::named("src");
    for i in 0..3 {
        srcm.put_bytes(&format!("k{i}"), "x").await.unwrap();
    }
    srcm.put_bytes("new", "n").await.unwrap();
    let src = Side::new(Arc::new(srcm.clone()), "");
    let dst = Side::new(Arc::new(mem.clone()), "d/");
    let j = Arc::new(Journal::in_memory().unwrap());
    let mut o = opts();
    o.plan.delete = true;
    let before = mem.keys();
    let err = run(&src, &dst, o.clone(), &j).await.unwrap_err();
    assert!(
        matches!(
            err,
            SyncError::DeleteLimit {
                count: 7,
                total: 10,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        mem.keys(),
        before,
        "nothing changed, not even the copy of 'new'"
    );
    o.max_delete = MaxDelete::Count(7);
    let s = run(&src, &dst, o, &j).await.unwrap();
    assert_eq!((s.deleted, s.copied), (7, 1));
    assert_eq!(mem.keys(), vec!["d/k0", "d/k1", "d/k2", "d/new"]);

    // An empty source never empties the destination without an explicit limit.
    let empty = Side::new(Arc::new(MemoryStore::named("empty")), "");
    let mut o = opts();
    o.plan.delete = true;
    o.max_delete = MaxDelete::Percent(100.0);
    assert!(matches!(
        run(&empty, &dst, o.clone(), &j).await.unwrap_err(),
        SyncError::EmptySource { .. }
    ));
    o.max_delete_explicit = true;
    assert_eq!(run(&empty, &dst, o, &j).await.unwrap().deleted, 4);
}

#[tokio::test]
async fn unsafe_keys_are_refused_and_nothing_escapes_the_destination() {
    let mem = MemoryStore::new();
    for k in [
        "ok.txt",
        "../escape",
        "a/../../b",
        "/abs",
        "x//y",
        "nul\0z",
        "dir/",
        "full/",
    ] {
        mem.put_bytes(k, if k == "dir/" { "" } else { "data" })
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest");
    let ls = LocalStore::new(&dest);
    ls.create_root().unwrap();
    let src = Side::new(Arc::new(mem), "");
    let dst = Side::new(Arc::new(ls), "");
    let j = Arc::new(Journal::in_memory().unwrap());
    let s = run(&src, &dst, opts(), &j).await.unwrap();
    assert_eq!(s.copied, 1);
    assert_eq!(s.refused, 6, "{s:?}"); // all but ok.txt and the empty dir/ marker
    assert_eq!(s.exit_code(), 1);
    let outside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(outside, vec![std::ffi::OsString::from("dest")]);
    assert_eq!(std::fs::read(dest.join("ok.txt")).unwrap(), b"data");
}

#[tokio::test]
async fn file_and_directory_with_the_same_name_fail_one_and_continue() {
    let mem = MemoryStore::new();
    mem.put_bytes("foo", "file").await.unwrap();
    mem.put_bytes("foo/bar", "child").await.unwrap();
    mem.put_bytes("zzz", "last").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ls = LocalStore::new(dir.path());
    let j = Arc::new(Journal::in_memory().unwrap());
    let mut o = opts();
    o.retry_failed = false;
    let s = run(
        &Side::new(Arc::new(mem), ""),
        &Side::new(Arc::new(ls), ""),
        o,
        &j,
    )
    .await
    .unwrap();
    assert_eq!((s.copied, s.failed), (2, 1));
    assert_eq!(std::fs::read(dir.path().join("zzz")).unwrap(), b"last");
}

async fn faulty_round(spec: &str, src_faults: bool) -> (Summary, MemoryStore, MemoryStore) {
    let srcm = MemoryStore::named("s");
    for i in 0..30 {
        srcm.put_bytes(&format!("small/{i:02}"), data(1000 + i, i as u8))
            .await
            .unwrap();
    }
    srcm.put_bytes("big", data(11 * MIB + 7, 9)).await.unwrap();
    let dstm = MemoryStore::named("d");
    let wrap = |m: &MemoryStore, f: bool| -> DynStore {
        let base: DynStore = Arc::new(m.clone());
        if f {
            fast_retry(Arc::new(FaultStore::new(base, spec.parse().unwrap())))
        } else {
            base
        }
    };
    let src = Side::new(wrap(&srcm, src_faults), "");
    let dst = Side::new(wrap(&dstm, !src_faults), "");
    let j = Arc::new(Journal::in_memory().unwrap());
    let mut o = opts();
    o.transfer.server_side = false;
    o.concurrency = 4;
    let s = run(&src, &dst, o, &j).await.unwrap();
    (s, srcm, dstm)
}

#[tokio::test]
async fn faults_still_give_an_exact_result() {
    for (spec, on_src) in [
        ("get:reset=500@1x5", true),
        ("get:truncate=300@2x4", true),
        ("get:flip=10@3", true),
        ("list:transient=5@1", true),
        (
            "put:throttle@1x6; upload_part:transient@2x2; complete_multipart:500@1",
            false,
        ),
        ("put:lost@3", false),
        ("create_multipart:lost@1", false),
    ] {
        let (s, srcm, dstm) = faulty_round(spec, on_src).await;
        assert_eq!(s.failed, 0, "{spec}: {s:?}");
        assert_eq!(
            contents(&srcm, "").await,
            contents(&dstm, "").await,
            "{spec}"
        );
        assert_eq!(dstm.pending_uploads(), 0, "{spec}");
    }
}

#[tokio::test]
async fn persistent_failure_is_reported_and_the_partial_upload_aborted() {
    let (s, _srcm, dstm) = faulty_round("upload_part:corrupt@3+", false).await;
    assert!(s.failed >= 1);
    assert_eq!(s.exit_code(), 1);
    assert!(
        dstm.head("big").await.is_err(),
        "no partial object under the final key"
    );
    assert_eq!(
        dstm.pending_uploads(),
        0,
        "the multipart upload was aborted"
    );
    assert_eq!(dstm.keys().len(), 30);
}

#[tokio::test]
async fn since_copies_only_recent_and_never_deletes_older() {
    let srcm = MemoryStore::named("s");
    let old = SystemTime::now() - Duration::from_secs(86400 * 10);
    srcm.insert_at("old", "o", old);
    srcm.put_bytes("new", "n").await.unwrap();
    let dstm = MemoryStore::named("d");
    dstm.insert_at("old", "previous", old);
    let mut o = opts();
    o.plan.delete = true;
    o.filters = s3ferry_engine::filter::Filters::new(
        &[],
        Some(SystemTime::now() - Duration::from_secs(86400)),
    )
    .unwrap();
    let j = Arc::new(Journal::in_memory().unwrap());
    let s = run(
        &Side::new(Arc::new(srcm), ""),
        &Side::new(Arc::new(dstm.clone()), ""),
        o,
        &j,
    )
    .await
    .unwrap();
    assert_eq!((s.copied, s.deleted), (1, 0));
    assert_eq!(dstm.get_bytes("old").await.unwrap().as_ref(), b"previous");
}

mod model {
    //! Property test: random trees and random edits between syncs; after every sync the
    //! destination equals the source (the model is the source tree itself).
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Edit {
        Write(u8, u16, u8),
        Delete(u8),
        SameSizeRewrite(u8, u8),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            (0u8..12, 0u16..3000, any::<u8>()).prop_map(|(k, n, s)| Edit::Write(k, n, s)),
            (0u8..12).prop_map(Edit::Delete),
            (0u8..12, any::<u8>()).prop_map(|(k, s)| Edit::SameSizeRewrite(k, s)),
        ]
    }

    fn key(k: u8) -> String {
        [
            "a", "a-b", "a.txt", "a/x", "a/y/z", "b c", "ü", "d/e", "d/f", "e+f", "g%h", "h",
        ][k as usize]
            .to_string()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        #[test]
        fn destination_converges_to_source(rounds in proptest::collection::vec(proptest::collection::vec(edit(), 1..6), 1..4)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let srcm = MemoryStore::named("s");
                let local = LocalStore::new(dir.path()).with_fsync(false);
                let j = Arc::new(Journal::in_memory().unwrap());
                for edits in rounds {
                    for e in edits {
                        match e {
                            Edit::Write(k, n, s) => { let _ = srcm.put_bytes(&key(k), data(n as usize, s)).await; }
                            Edit::Delete(k) => { srcm.delete(&key(k)).await.unwrap(); }
                            Edit::SameSizeRewrite(k, s) => {
                                if let Ok(b) = srcm.get_bytes(&key(k)).await {
                                    let v: Vec<u8> = b.iter().map(|x| x ^ s.max(1)).collect();
                                    srcm.put_bytes(&key(k), v).await.unwrap();
                                }
                            }
                        }
                    }
                    // A file and a directory of the same name cannot both exist locally.
                    let keys = srcm.keys();
                    if keys.iter().any(|k| keys.iter().any(|o| o.starts_with(&format!("{k}/")))) { continue; }
                    let mut o = opts();
                    o.plan.delete = true;
                    o.max_delete = MaxDelete::Percent(100.0);
                    o.max_delete_explicit = true;
                    let s = run(&Side::new(Arc::new(srcm.clone()), ""), &Side::new(Arc::new(local.clone()), ""), o, &j).await.unwrap();
                    assert_eq!(s.failed, 0);
                    assert_eq!(contents(&srcm, "").await, contents(&local, "").await);
                }
            });
        }
    }
}

#[tokio::test]
async fn dry_run_into_a_missing_directory_plans_everything_and_creates_nothing() {
    let srcm = MemoryStore::named("s");
    srcm.put_bytes("a", "1").await.unwrap();
    srcm.put_bytes("b/c", "2").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("not-yet");
    let mut o = opts();
    o.dry_run = true;
    let j = Arc::new(Journal::in_memory().unwrap());
    let s = run(
        &Side::new(Arc::new(srcm), ""),
        &Side::new(Arc::new(LocalStore::new(&missing)), ""),
        o,
        &j,
    )
    .await
    .unwrap();
    assert_eq!((s.copied, s.failed, s.dry_run), (2, 0, true));
    assert!(!missing.exists());
}

#[tokio::test]
async fn a_fatal_error_stops_the_job_with_that_error() {
    let srcm = MemoryStore::named("s");
    for i in 0..200 {
        srcm.put_bytes(&format!("k{i:03}"), "x").await.unwrap();
    }
    let dstm = MemoryStore::named("d");
    let faulty: DynStore = Arc::new(FaultStore::new(
        Arc::new(dstm.clone()),
        "put:denied@3+".parse().unwrap(),
    ));
    let mut o = opts();
    o.concurrency = 2;
    let j = Arc::new(Journal::in_memory().unwrap());
    let err = run(
        &Side::new(Arc::new(srcm), ""),
        &Side::new(faulty, ""),
        o,
        &j,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, SyncError::Store(e) if e.kind == s3ferry_store::ErrorKind::PermissionDenied),
        "{err}"
    );
    assert!(
        dstm.keys().len() < 10,
        "the job stopped instead of failing 200 times"
    );
}

/// Found by the model test: a directory `a/` whose last file went away is replaced by a file `a`.
#[tokio::test]
async fn a_file_replaces_a_directory_whose_contents_were_deleted() {
    let srcm = MemoryStore::named("s");
    srcm.put_bytes("a/y/z", "deep").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let local = LocalStore::new(dir.path());
    let j = Arc::new(Journal::in_memory().unwrap());
    let mut o = opts();
    o.plan.delete = true;
    o.max_delete = MaxDelete::Percent(100.0);
    o.max_delete_explicit = true;
    let (src, dst) = (
        Side::new(Arc::new(srcm.clone()), ""),
        Side::new(Arc::new(local.clone()), ""),
    );
    run(&src, &dst, o.clone(), &j).await.unwrap();
    srcm.delete("a/y/z").await.unwrap();
    srcm.put_bytes("a", "now a file").await.unwrap();
    let s = run(&src, &dst, o, &j).await.unwrap();
    assert_eq!((s.copied, s.deleted, s.failed), (1, 1, 0), "{s:?}");
    assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"now a file");
}

/// Temp files a killed download left are swept by the next run; after a run that ended, the
/// destination tree is not walked for them (a stray one is left alone); a temp file of a run
/// that is still alive (another process), or of a run this database does not know, is never
/// touched unless nobody wrote to it for a day.
#[tokio::test]
async fn temp_files_of_an_unfinished_run_are_swept() {
    let srcm = MemoryStore::named("s");
    srcm.put_bytes("d/f", "x").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ls = LocalStore::new(dir.path());
    let (src, dst) = (Side::new(Arc::new(srcm), ""), Side::new(Arc::new(ls), ""));
    let state = tempfile::tempdir().unwrap();
    let db = state.path().join("state.db");
    let j = Arc::new(Journal::open(&db).unwrap());
    std::fs::create_dir_all(dir.path().join("d")).unwrap();
    let stale = dir
        .path()
        .join("d")
        .join(".s3ferry-tmp.deadbeefdead_0123456789abcdef.u8388608");
    std::fs::write(&stale, "partial").unwrap();
    // Another process's run, alive (it holds its lock), writing into the same directory.
    let lock = std::fs::File::create(state.path().join("state.db.runs/aaaaaaaaaaaa.lock")).unwrap();
    lock.lock().unwrap();
    let theirs = dir
        .path()
        .join("d")
        .join(".s3ferry-tmp.aaaaaaaaaaaa_0123456789abcdef.u8388608");
    std::fs::write(&theirs, "in flight").unwrap();
    // A run on another state database (or with --no-state): no lock file here, no record.
    let unknown = dir
        .path()
        .join("d")
        .join(".s3ferry-tmp.cccccccccccc_0123456789abcdef.u8388608");
    std::fs::write(&unknown, "in flight elsewhere").unwrap();
    // The same, untouched for two days: nobody's any more.
    let abandoned = dir
        .path()
        .join("d")
        .join(".s3ferry-tmp.eeeeeeeeeeee_0123456789abcdef.u8388608");
    std::fs::write(&abandoned, "old").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&abandoned)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86400))
        .unwrap();
    // A clean history: no sweep.
    run(&src, &dst, opts(), &j).await.unwrap();
    assert!(stale.exists());
    // The previous run of this pair never ended and its process is gone: the next run sweeps.
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute(
        "INSERT INTO run_scopes (job, scope, run_id, started) VALUES ('sync', ?1, 'deadbeefdead', 0)",
        [sync::pair_id(&src, &dst)],
    )
    .unwrap();
    run(&src, &dst, opts(), &j).await.unwrap();
    assert!(!stale.exists(), "stale temp file removed");
    assert!(theirs.exists(), "a live run's temp file is left alone");
    assert!(
        unknown.exists(),
        "a run this state database does not know is left alone"
    );
    assert!(
        !abandoned.exists(),
        "a temp file untouched for a day is removed"
    );
    assert_eq!(std::fs::read(dir.path().join("d/f")).unwrap(), b"x");
}

/// With --delete, each side is listed once (the plan is spilled, the limit checked, then the
/// work runs), and a refusal still changes nothing.
#[tokio::test]
async fn delete_runs_list_each_side_once() {
    let srcm = MemoryStore::named("s");
    let dstm = MemoryStore::named("d");
    for i in 0..50 {
        srcm.put_bytes(&format!("k{i:02}"), vec![i as u8; 10])
            .await
            .unwrap();
    }
    for i in 40..60 {
        dstm.put_bytes(&format!("k{i:02}"), "old").await.unwrap();
    }
    let (src, dst) = (
        Side::new(Arc::new(srcm.clone()), ""),
        Side::new(Arc::new(dstm.clone()), ""),
    );
    let j = Arc::new(Journal::in_memory().unwrap());
    let mut o = opts();
    o.plan.delete = true;
    o.max_delete = MaxDelete::Count(5);
    o.max_delete_explicit = true;
    let puts = dstm.op_count("put");
    let e = run(&src, &dst, o.clone(), &j).await.unwrap_err();
    assert!(matches!(e, SyncError::DeleteLimit { count: 10, .. }), "{e}");
    assert_eq!((srcm.op_count("list"), dstm.op_count("list")), (1, 1));
    assert_eq!(dstm.op_count("put"), puts, "refused before any change");
    assert_eq!(dstm.op_count("delete_many"), 0);
    o.max_delete = MaxDelete::Count(10);
    let s = run(&src, &dst, o, &j).await.unwrap();
    assert_eq!((s.copied, s.deleted), (50, 10), "{s:?}");
    assert_eq!((srcm.op_count("list"), dstm.op_count("list")), (2, 2));
    assert_eq!(contents(&dstm, "").await, contents(&srcm, "").await);
}

/// The state database inside a synced directory is never uploaded (reported instead), and a
/// user's file with s3ferry's reserved temp name is reported, not silently skipped.
#[tokio::test]
async fn the_state_database_and_reserved_names_are_never_synced() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "a").unwrap();
    std::fs::write(dir.path().join(".s3ferry-tmp.mine"), "user data").unwrap();
    let j = Arc::new(Journal::open(&dir.path().join("state/state.db")).unwrap());
    let dstm = MemoryStore::named("d");
    let (src, dst) = (
        Side::new(Arc::new(LocalStore::new(dir.path())), ""),
        Side::new(Arc::new(dstm.clone()), ""),
    );
    let s = run(&src, &dst, opts(), &j).await.unwrap();
    let keys: Vec<String> = contents(&dstm, "").await.into_keys().collect();
    assert_eq!(keys, vec!["a.txt"]);
    // state.db (and its WAL files, run locks) plus the reserved name: each refused, listed.
    assert!(s.refused >= 2, "{s:?}");
    assert_eq!(s.exit_code(), 1, "refusals are reported in the exit code");
}

/// F34: keys that differ only by case, downloaded to a file system that folds case (modelled:
/// the local store told its directory folds names, on one that does not). The first of each
/// pair written first stays; the other fails alone naming both, and never overwrites it — this
/// run or the next. A directory twin (`D/x` then `d/y`) is caught the same way. The probe says this
/// machine's temp directory does not fold.
#[tokio::test]
async fn case_twins_on_a_case_insensitive_destination_fail_alone_and_overwrite_nothing() {
    let mem = MemoryStore::new();
    for (k, v) in [
        ("A.txt", "upper"),
        ("D/x", "in D"),
        ("a.txt", "lower"),
        ("b.txt", "alone"),
        ("d/y", "in d"),
    ] {
        mem.put_bytes(k, v).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    assert!(
        !LocalStore::new(dir.path())
            .detect_case_folding()
            .folds_case(),
        "the temp directory here is case-sensitive"
    );
    let src = Side::new(Arc::new(mem), "");
    let j = Arc::new(Journal::in_memory().unwrap());
    // Transfers run at once: which twin lands first is not fixed, but only one ever does.
    let mut winner = None;
    for round in 0..2 {
        let ls = LocalStore::new(dir.path()).with_case_insensitive_names();
        let mut o = opts();
        o.retry_failed = false;
        let dst = Side::new(Arc::new(ls), "");
        let s = run(&src, &dst, o, &j).await.unwrap();
        assert_eq!(s.failed, 2, "round {round}: a.txt and d/y fail");
        let want_copied = if round == 0 { 3 } else { 0 };
        assert_eq!(s.copied, want_copied, "round {round}");
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        // Each pair has one name on disk, with its own content, and keeps it in the next run.
        let on_disk = |a: &str| names.iter().find(|n| n.eq_ignore_ascii_case(a)).cloned();
        let file = on_disk("a.txt").expect("one of A.txt and a.txt");
        let folder = on_disk("d").expect("one of D and d");
        let want = if file == "A.txt" { "upper" } else { "lower" };
        assert_eq!(
            std::fs::read(dir.path().join(&file)).unwrap(),
            want.as_bytes()
        );
        let (child, want) = if folder == "D" {
            ("x", "in D")
        } else {
            ("y", "in d")
        };
        assert_eq!(
            std::fs::read(dir.path().join(&folder).join(child)).unwrap(),
            want.as_bytes()
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join(&folder)).unwrap().count(),
            1,
            "nothing went into the twin directory"
        );
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(
            *winner.get_or_insert((file.clone(), folder.clone())),
            (file, folder),
            "round {round} replaced nothing"
        );
    }
}
