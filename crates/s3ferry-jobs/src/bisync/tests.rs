//! Rounds on a local directory and an in-memory remote (the S3 behaviour itself is covered by
//! the end-to-end tests against the local S3 server).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use s3ferry_engine::events::{NullReporter, Reporter};
use s3ferry_engine::filter::Filters;
use s3ferry_engine::journal::Journal;
use s3ferry_engine::lease::LeaseConfig;
use s3ferry_engine::transfer::TransferConfig;
use s3ferry_engine::walk::Side;
use s3ferry_store::local::LocalStore;
use s3ferry_store::memory::MemoryStore;
use s3ferry_store::{DynStore, Store, StoreExt};

use super::*;
use s3ferry_engine::exec::Cancel;

const ALL: Directions = Directions {
    up: true,
    down: true,
    up_delete: true,
    down_delete: true,
};

fn opts(node: &str) -> BisyncOptions {
    BisyncOptions {
        directions: ALL,
        filters: Filters::default(),
        up_exclude: Filters::default(),
        down_exclude: Filters::default(),
        conflict: ConflictPolicy::KeepBoth,
        node: node.into(),
        max_delete: MaxDelete::Percent(100.0),
        concurrency: 4,
        transfer: TransferConfig::new(64 << 20),
        dry_run: false,
        cancel: Cancel::new(),
    }
}

struct Node {
    dir: tempfile::TempDir,
    local: Side,
    journal: Arc<Journal>,
    _state: tempfile::TempDir,
}

impl Node {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let local = Side::new(Arc::new(LocalStore::new(dir.path())), "");
        let journal = Arc::new(Journal::open(&state.path().join("state.db")).unwrap());
        Self {
            dir,
            local,
            journal,
            _state: state,
        }
    }

    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, data: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }

    fn read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.path(rel)).ok()
    }

    async fn round(&self, remote: &Side, o: &BisyncOptions) -> Result<RoundSummary, BisyncError> {
        let rep: Arc<dyn Reporter> = Arc::new(NullReporter);
        round(&self.local, remote, o, Init::None, &self.journal, &rep).await
    }
}

fn remote() -> (MemoryStore, Side) {
    let m = MemoryStore::named("remote");
    let s: DynStore = Arc::new(m.clone());
    (m, Side::new(s, "p/"))
}

async fn get(m: &MemoryStore, key: &str) -> Option<String> {
    m.get_bytes(key)
        .await
        .ok()
        .map(|b| String::from_utf8(b.to_vec()).unwrap())
}

fn files(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    fn walk(root: &Path, d: &Path, out: &mut Vec<(String, String)>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
                out.push((rel, std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[tokio::test]
async fn changes_and_deletions_propagate_both_ways_and_nothing_comes_back() {
    let (m, r) = remote();
    let n = Node::new();
    let o = opts("a");
    n.write("l.txt", "local");
    m.put_bytes("p/sub/r.txt", "remote").await.unwrap();
    let s = n.round(&r, &o).await.unwrap();
    assert_eq!((s.up, s.down), (1, 1), "{s:?}");
    assert_eq!(get(&m, "p/l.txt").await.as_deref(), Some("local"));
    assert_eq!(n.read("sub/r.txt").as_deref(), Some("remote"));
    // Idle round: nothing.
    let s = n.round(&r, &o).await.unwrap();
    assert!(!s.changed_anything(), "{s:?}");
    // Edits each way.
    n.write("l.txt", "local v2");
    m.put_bytes("p/sub/r.txt", "remote v2").await.unwrap();
    let s = n.round(&r, &o).await.unwrap();
    assert_eq!((s.up, s.down), (1, 1), "{s:?}");
    assert_eq!(get(&m, "p/l.txt").await.as_deref(), Some("local v2"));
    assert_eq!(n.read("sub/r.txt").as_deref(), Some("remote v2"));
    assert_eq!(s.remote_changed, vec!["p/l.txt".to_string()]);
    // Deletions each way.
    std::fs::remove_file(n.path("l.txt")).unwrap();
    m.delete_many(&["p/sub/r.txt".into()]).await.unwrap();
    let s = n.round(&r, &o).await.unwrap();
    assert_eq!((s.deleted_remote, s.deleted_local), (1, 1), "{s:?}");
    assert_eq!(get(&m, "p/l.txt").await, None);
    assert_eq!(n.read("sub/r.txt"), None);
    // And nothing is resurrected by later rounds.
    let s = n.round(&r, &o).await.unwrap();
    assert!(!s.changed_anything(), "{s:?}");
    assert_eq!(get(&m, "p/l.txt").await, None);
}

#[tokio::test]
async fn deletes_off_one_way_keep_the_other_side_and_never_copy_back() {
    let (m, r) = remote();
    let n = Node::new();
    let mut o = opts("a");
    n.write("k", "x");
    n.round(&r, &o).await.unwrap();
    o.directions.up_delete = false;
    std::fs::remove_file(n.path("k")).unwrap();
    for _ in 0..2 {
        let s = n.round(&r, &o).await.unwrap();
        assert!(!s.changed_anything(), "{s:?}");
    }
    assert_eq!(get(&m, "p/k").await.as_deref(), Some("x"), "remote kept");
    assert_eq!(n.read("k"), None, "not copied back");
}

/// An edit that keeps the size and the mtime second (even the exact mtime) is still seen.
#[tokio::test]
async fn same_size_same_second_edit_propagates() {
    let (m, r) = remote();
    let n = Node::new();
    let o = opts("a");
    n.write("f", "aaaa");
    let t = SystemTime::now();
    let set = |p: &Path| {
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(t)
            .unwrap()
    };
    set(&n.path("f"));
    n.round(&r, &o).await.unwrap();
    std::fs::write(n.path("f"), "bbbb").unwrap();
    set(&n.path("f"));
    let s = n.round(&r, &o).await.unwrap();
    assert_eq!(s.up, 1, "{s:?}");
    assert_eq!(get(&m, "p/f").await.as_deref(), Some("bbbb"));
}

#[tokio::test]
async fn an_edit_on_both_sides_keeps_both_versions() {
    let (m, r) = remote();
    let n = Node::new();
    let o = opts("node1");
    n.write("doc.txt", "base");
    n.round(&r, &o).await.unwrap();
    n.write("doc.txt", "local edit");
    m.put_bytes("p/doc.txt", "remote edit!").await.unwrap();
    let s = n.round(&r, &o).await.unwrap();
    assert_eq!(s.conflicts, 1, "{s:?}");
    assert_eq!(n.read("doc.txt").as_deref(), Some("remote edit!"));
    let local = files(n.dir.path());
    let aside: Vec<_> = local
        .iter()
        .filter(|(k, _)| k.starts_with("doc.txt.conflict-node1-"))
        .collect();
    assert_eq!(aside.len(), 1, "{local:?}");
    assert_eq!(aside[0].1, "local edit");
    assert_eq!(
        get(&m, &format!("p/{}", aside[0].0)).await.as_deref(),
        Some("local edit"),
        "the conflict copy goes up too"
    );
    // Settled: the next round is idle.
    let s = n.round(&r, &o).await.unwrap();
    assert!(!s.changed_anything(), "{s:?}");
}

#[tokio::test]
async fn same_content_on_both_sides_is_not_a_conflict_and_newer_policy_picks_the_newer() {
    let (m, r) = remote();
    let n = Node::new();
    let mut o = opts("a");
    n.write("same", "identical");
    m.put_bytes("p/same", "identical").await.unwrap();
    let s = n.round(&r, &o).await.unwrap();
    assert_eq!((s.conflicts, s.up, s.down), (0, 0, 0), "{s:?}");
    // Both edited: local older than the remote write → remote wins under --conflict newer.
    n.write("same", "old local edit");
    std::fs::File::options()
        .write(true)
        .open(n.path("same"))
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    m.put_bytes("p/same", "new remote edit").await.unwrap();
    o.conflict = ConflictPolicy::Newer;
    let s = n.round(&r, &o).await.unwrap();
    assert_eq!((s.conflicts, s.down), (1, 1), "{s:?}");
    assert_eq!(n.read("same").as_deref(), Some("new remote edit"));
}

#[tokio::test]
async fn too_many_deletes_change_nothing() {
    let (m, r) = remote();
    let n = Node::new();
    let mut o = opts("a");
    for i in 0..4 {
        n.write(&format!("f{i}"), "x");
    }
    n.round(&r, &o).await.unwrap();
    for i in 0..3 {
        std::fs::remove_file(n.path(&format!("f{i}"))).unwrap();
    }
    n.write("new", "y");
    o.max_delete = MaxDelete::Percent(50.0);
    let e = n.round(&r, &o).await.unwrap_err();
    assert!(
        matches!(e, BisyncError::DeleteLimit { count: 3, .. }),
        "{e}"
    );
    assert_eq!(m.list_all("p/").await.unwrap().len(), 4, "nothing deleted");
    assert_eq!(get(&m, "p/new").await, None, "nothing copied either");
}

#[tokio::test]
async fn init_up_makes_the_remote_match_the_local_side() {
    let (m, r) = remote();
    let n = Node::new();
    let o = opts("a");
    n.write("a", "local a");
    n.write("same", "s");
    m.put_bytes("p/a", "remote a").await.unwrap();
    m.put_bytes("p/same", "s").await.unwrap();
    m.put_bytes("p/extra", "remote only").await.unwrap();
    let rep: Arc<dyn Reporter> = Arc::new(NullReporter);
    let s = round(&n.local, &r, &o, Init::Up, &n.journal, &rep)
        .await
        .unwrap();
    assert_eq!((s.up, s.deleted_remote, s.down), (1, 1, 0), "{s:?}");
    assert_eq!(get(&m, "p/a").await.as_deref(), Some("local a"));
    assert_eq!(get(&m, "p/extra").await, None);
    let s = n.round(&r, &o).await.unwrap();
    assert!(!s.changed_anything(), "{s:?}");
}

/// Two nodes sharing one prefix under the lease, each editing its own files and one shared
/// file between rounds, concurrently: in the end both directories and the remote agree and no
/// edit is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_with_a_lease_converge_without_losing_edits() {
    let (m, r) = remote();
    let nodes = [Arc::new(Node::new()), Arc::new(Node::new())];
    let lease = |node: &str| LeaseConfig {
        key: format!("p/{LOCK_NAME}"),
        node: node.into(),
        timeout: Duration::from_secs(30),
        wait: Duration::from_secs(30),
        poll: Duration::from_millis(5),
    };
    let mut tasks = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let (n, r) = (n.clone(), r.clone());
        let lo = LoopOptions {
            poll: None,
            init: Init::None,
            max_failures: 0,
            lock: Some(lease(&format!("node{i}"))),
            invalidator: None,
            cf_paths: None,
        };
        tasks.push(tokio::spawn(async move {
            let o = opts(&format!("node{i}"));
            let rep: Arc<dyn Reporter> = Arc::new(NullReporter);
            for round_no in 0..6 {
                n.write(&format!("n{i}/r{round_no}"), &format!("{i}:{round_no}"));
                let ended = run(&n.local, &r, &o, &lo, &n.journal, &rep, &|_| {}, &|_, e| {
                    panic!("{e}")
                })
                .await
                .unwrap();
                assert_eq!(ended, Ended::Once { failures: false });
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // One more round each so both have seen everything.
    let o = opts("x");
    for n in &nodes {
        n.round(&r, &o).await.unwrap();
    }
    nodes[0].round(&r, &o).await.unwrap();
    let (a, b) = (files(nodes[0].dir.path()), files(nodes[1].dir.path()));
    assert_eq!(a, b);
    assert_eq!(a.len(), 12, "{a:?}");
    let remote: Vec<String> = m
        .list_all("p/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .filter(|k| !k.ends_with(LOCK_NAME))
        .collect();
    assert_eq!(remote.len(), 12, "{remote:?}");
}

/// F21: the remote object changes between the listing and the upload of a local edit: the
/// upload is conditional (If-Match on the listed ETag), so the other writer's version is not
/// overwritten; the next round sees both edits and keeps both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_change_during_the_round_is_never_overwritten() {
    use s3ferry_store::layer::FaultStore;
    let m = MemoryStore::named("remote");
    let faults = Arc::new(FaultStore::new(
        Arc::new(m.clone()),
        "put:latency=200ms".parse().unwrap(),
    ));
    let r = Side::new(faults.clone() as DynStore, "p/");
    let n = Node::new();
    let o = opts("n1");
    n.write("f", "v1");
    n.round(&r, &o).await.unwrap();
    assert_eq!(faults.calls("put"), 1);
    n.write("f", "v2 local");
    let m2 = m.clone();
    let f2 = faults.clone();
    let other_writer = tokio::spawn(async move {
        // The round's upload has been issued (it waits out its latency): write meanwhile.
        while f2.calls("put") < 2 {
            tokio::task::yield_now().await;
        }
        m2.put_bytes("p/f", "someone else").await.unwrap();
    });
    let s = n.round(&r, &o).await.unwrap();
    other_writer.await.unwrap();
    assert_eq!(s.up, 0, "the upload was refused: {s:?}");
    assert_eq!(get(&m, "p/f").await.as_deref(), Some("someone else"));
    // Next round: both sides changed since the base → a conflict, both versions kept.
    let s = n.round(&r, &o).await.unwrap();
    assert_eq!(s.conflicts, 1, "{s:?}");
    assert_eq!(n.read("f").as_deref(), Some("someone else"));
    let aside: Vec<_> = files(n.dir.path())
        .into_iter()
        .filter(|(k, _)| k.starts_with("f.conflict-n1-"))
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(aside[0].1, "v2 local");
}

/// F27: a side that lists empty (a missing mount) never deletes the other side, whatever the
/// percentage limit; an explicit count allows it.
#[tokio::test]
async fn an_empty_side_never_deletes_everything() {
    let (m, r) = remote();
    let n = Node::new();
    let mut o = opts("a");
    for i in 0..3 {
        n.write(&format!("f{i}"), "x");
    }
    n.round(&r, &o).await.unwrap();
    for i in 0..3 {
        std::fs::remove_file(n.path(&format!("f{i}"))).unwrap();
    }
    o.max_delete = MaxDelete::Percent(100.0);
    let e = n.round(&r, &o).await.unwrap_err();
    assert!(matches!(e, BisyncError::EmptySide { count: 3, .. }), "{e}");
    assert_eq!(m.list_all("p/").await.unwrap().len(), 3);
    o.max_delete = MaxDelete::Count(3);
    let s = n.round(&r, &o).await.unwrap();
    assert_eq!(s.deleted_remote, 3);
}

/// A stop (SIGTERM) in the middle of a round under `--lock`: the upload in flight finishes
/// (nothing is left open or half-written), nothing new starts, the partial round is reported
/// as interrupted, and the lease is released so another node can go on at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_a_round_finishes_the_upload_in_flight_and_releases_the_lease() {
    use s3ferry_store::layer::FaultStore;
    let m = MemoryStore::named("remote");
    // put 1 is the lease, put 2 the first file: held up for a while.
    let faults = Arc::new(FaultStore::new(
        Arc::new(m.clone()),
        "put:latency=1s@2".parse().unwrap(),
    ));
    let r = Side::new(faults.clone() as DynStore, "p/");
    let n = Node::new();
    n.write("slow", "held up for a second");
    n.write("zz-later", "never started");
    let lo = LoopOptions {
        poll: Some(Duration::from_secs(3600)),
        init: Init::None,
        max_failures: 0,
        lock: Some(LeaseConfig {
            key: format!("p/{LOCK_NAME}"),
            node: "n1".into(),
            timeout: Duration::from_secs(60),
            wait: Duration::from_secs(5),
            poll: Duration::from_millis(10),
        }),
        invalidator: None,
        cf_paths: None,
    };
    let rep: Arc<dyn Reporter> = Arc::new(NullReporter);
    let o = BisyncOptions {
        concurrency: 1,
        ..opts("n1")
    };
    let (f2, cancel) = (faults.clone(), o.cancel.clone());
    // Stop once the round's upload is under way.
    tokio::spawn(async move {
        while f2.calls("put") < 2 {
            tokio::task::yield_now().await;
        }
        cancel.request("SIGTERM");
    });
    let rounds = std::sync::Mutex::new(Vec::new());
    let ended = run(
        &n.local,
        &r,
        &o,
        &lo,
        &n.journal,
        &rep,
        &|s| rounds.lock().unwrap().push(s.clone()),
        &|_, e| panic!("{e}"),
    )
    .await
    .unwrap();
    assert_eq!(ended, Ended::Stopped);
    let rounds = rounds.into_inner().unwrap();
    assert_eq!(rounds.len(), 1, "the partial round is reported");
    assert!(rounds[0].interrupted);
    assert_eq!(rounds[0].up, 1, "{:?}", rounds[0]);
    assert_eq!(
        m.get_bytes("p/slow").await.unwrap(),
        "held up for a second".as_bytes(),
        "the upload in flight finished"
    );
    assert!(
        m.get_bytes("p/zz-later").await.is_err(),
        "nothing new started"
    );
    let lease: serde_json::Value =
        serde_json::from_slice(&m.get_bytes(&format!("p/{LOCK_NAME}")).await.unwrap()).unwrap();
    assert_eq!(lease["held"], false, "{lease}");
}

/// F23: a lock holder paused past the lease timeout (as by SIGSTOP: its thread does nothing,
/// no timer fires, no renewal is sent) while another node takes the lease over. Once it runs
/// again, it writes nothing more: the overdue renewal is tried before the work's next step, is
/// refused, and the work is dropped. (Repeated: a select that polled the work first would let a
/// write through only some of the time.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_paused_past_its_lease_writes_nothing_after_the_takeover() {
    for round in 0..12 {
        assert_eq!(
            paused_holder_writes().await,
            ["w0", "w1", "w2"],
            "round {round}"
        );
    }
}

/// One pause and takeover; the keys the paused holder wrote.
async fn paused_holder_writes() -> Vec<String> {
    use s3ferry_engine::lease::{Lease, LeaseError};
    let store: DynStore = Arc::new(MemoryStore::named("remote"));
    let cfg = |node: &str| LeaseConfig {
        key: "lock".into(),
        node: node.into(),
        timeout: Duration::from_millis(150),
        wait: Duration::from_secs(20),
        poll: Duration::from_millis(10),
    };
    let lease = Lease::acquire(store.clone(), cfg("a")).await.unwrap();
    let (took_over, paused) = std::sync::mpsc::channel::<()>();
    let other = store.clone();
    let b_cfg = cfg("b");
    // Node b, on its own thread and runtime: waits for a's lease to go stale, takes it over.
    let b = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let lease = rt.block_on(Lease::acquire(other, b_cfg)).unwrap();
        took_over.send(()).unwrap();
        lease
    });
    let data = store.clone();
    let work = async move {
        for i in 0..20 {
            if i == 3 {
                // The pause: this thread is frozen until b holds the lease.
                paused.recv().unwrap();
            }
            tokio::task::yield_now().await;
            data.put_bytes(&format!("w{i}"), "x").await.unwrap();
        }
        Ok::<(), BisyncError>(())
    };
    let r = with_lease(Some(lease), work).await;
    assert!(
        matches!(r, Err(BisyncError::Lease(LeaseError::Lost { .. }))),
        "{r:?}"
    );
    let _b = b.join().unwrap();
    let mut written: Vec<String> = store
        .list_all("w")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    written.sort();
    written
}

/// A remote key that cannot be a file here (`../x`) is refused and listed as such, as sync
/// refuses it (it was a failed `put "../x"`); its neighbour arrives, and nothing is written
/// outside the directory.
#[tokio::test]
async fn an_unsafe_remote_key_is_refused_not_failed() {
    let (m, r) = remote();
    let n = Node::new();
    m.put_bytes("p/../x", "escape").await.unwrap();
    m.put_bytes("p/ok.txt", "fine").await.unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    struct Rec(Arc<std::sync::Mutex<Vec<Record>>>);
    impl Reporter for Rec {
        fn record(&self, r: &Record) {
            self.0.lock().unwrap().push(r.clone());
        }
    }
    let rep: Arc<dyn Reporter> = Arc::new(Rec(seen.clone()));
    let s = round(&n.local, &r, &opts("a"), Init::None, &n.journal, &rep)
        .await
        .unwrap();
    assert_eq!((s.down, s.failed, s.refused), (1, 0, 1), "{s:?}");
    let seen = seen.lock().unwrap();
    let refused: Vec<&Record> = seen
        .iter()
        .filter(|r| r.action == Outcome::Refuse)
        .collect();
    assert_eq!(refused.len(), 1, "{seen:?}");
    assert_eq!(refused[0].key, "../x");
    assert!(
        refused[0].reason.starts_with("unsafe key"),
        "{:?}",
        refused[0]
    );
    assert_eq!(n.read("ok.txt").as_deref(), Some("fine"));
    assert!(!n.dir.path().parent().unwrap().join("x").exists());
}
