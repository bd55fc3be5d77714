//! The bundle job on in-memory buckets and an in-memory queue: grouping bounds, packing,
//! getting and extracting back, dead letters, idempotent reruns and workers sharing a queue.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use s3ferry_engine::events::{NullReporter, Reporter};
use s3ferry_engine::exec::Cancel;
use s3ferry_engine::journal::Journal;
use s3ferry_engine::ports::{MemoryQueue, Queue};
use s3ferry_engine::transfer::TransferConfig;
use s3ferry_store::memory::MemoryStore;
use s3ferry_store::{DynStore, PutOptions, Store, StoreError, StoreExt};

use super::format::{DeadRow, IndexRow, ShardRow, DEAD_HEADER, INDEX_HEADER};
use super::*;
use crate::Buckets;

struct Mem(HashMap<String, MemoryStore>);

#[async_trait]
impl Buckets for Mem {
    async fn open(&self, bucket: &str, _source: bool) -> Result<DynStore, StoreError> {
        self.0
            .get(bucket)
            .map(|s| Arc::new(s.clone()) as DynStore)
            .ok_or_else(|| {
                StoreError::new(s3ferry_store::ErrorKind::BucketNotFound, "open", bucket)
            })
    }
}

struct World {
    src: MemoryStore,
    out: MemoryStore,
    buckets: Arc<dyn Buckets>,
    journal: Arc<Journal>,
    reporter: Arc<dyn Reporter>,
    transfer: TransferConfig,
}

fn data(i: usize) -> Vec<u8> {
    (0..(100 + i * 7))
        .map(|j| ((i * 31 + j) % 251) as u8)
        .collect()
}

async fn world(n: usize, big: usize) -> World {
    let src = MemoryStore::named("src");
    let out = MemoryStore::named("out");
    for i in 0..n {
        let mut meta = std::collections::BTreeMap::new();
        meta.insert("n".to_string(), i.to_string());
        src.put(
            &format!("d{}/obj {i:05}.txt", i % 3),
            Bytes::from(data(i)),
            PutOptions::new()
                .content_type(Some("text/plain".into()))
                .metadata(meta)
                .tags(vec![
                    ("i".into(), i.to_string()),
                    ("k&=".into(), "v w".into()),
                ]),
        )
        .await
        .unwrap();
    }
    for i in 0..big {
        src.put(
            &format!("big/{i}"),
            Bytes::from(vec![i as u8; 5000]),
            PutOptions::new(),
        )
        .await
        .unwrap();
    }
    let buckets: Arc<dyn Buckets> = Arc::new(Mem([
        ("src".to_string(), src.clone()),
        ("out".to_string(), out.clone()),
    ]
    .into()));
    World {
        src,
        out,
        buckets,
        journal: Arc::new(Journal::in_memory().unwrap()),
        reporter: Arc::new(NullReporter),
        transfer: TransferConfig::new(64 << 20),
    }
}

impl World {
    fn cx(&self) -> PackContext {
        PackContext {
            to: self.dir("archive/"),
            buckets: self.buckets.clone(),
            transfer: self.transfer.clone(),
            journal: self.journal.clone(),
            reporter: self.reporter.clone(),
        }
    }

    fn dir(&self, prefix: &str) -> Dir {
        Dir {
            store: Arc::new(self.out.clone()),
            prefix: prefix.to_string(),
            uri: format!("s3://out/{prefix}"),
        }
    }

    async fn group(&self, max_objects: u64, max_bytes: u64, big: u64) -> GroupSummary {
        let opts = GroupOptions {
            max_objects,
            max_bytes,
            big_object: big,
            ..Default::default()
        };
        let input = GroupInput::Listing {
            store: Arc::new(self.src.clone()),
            bucket: "src".into(),
            prefix: String::new(),
        };
        group(input, &opts, &self.dir("shards/"), None, &self.reporter)
            .await
            .unwrap()
    }

    async fn shard(&self, name: &str) -> Place {
        open_place(
            &format!("s3://out/shards/{name}"),
            self.buckets.as_ref(),
            true,
        )
        .await
        .unwrap()
    }

    async fn run(&self, name: &str, opts: &PackOptions) -> ShardSummary {
        run_shard(&self.shard(name).await, &self.cx(), opts, &Cancel::new())
            .await
            .unwrap()
    }

    async fn text(&self, key: &str) -> String {
        String::from_utf8(self.out.get_bytes(key).await.unwrap().to_vec()).unwrap()
    }

    async fn index(&self, name: &str) -> Vec<IndexRow> {
        let t = self.text(&format!("archive/{name}.index.csv")).await;
        let mut lines = t.lines();
        assert_eq!(lines.next(), Some(INDEX_HEADER));
        lines.map(|l| IndexRow::parse_row(l).unwrap()).collect()
    }
}

async fn shard_rows(w: &World, name: &str) -> Vec<ShardRow> {
    let t = w.text(&format!("shards/{name}")).await;
    t.lines()
        .skip(1)
        .map(|l| ShardRow::parse_row(l).unwrap())
        .collect()
}

#[tokio::test]
async fn groups_respect_both_bounds_and_big_objects_go_to_their_own_shards() {
    let w = world(50, 3).await;
    // 50 objects of 100..443 bytes; at most 12 objects or 2,000 bytes per shard.
    let s = w.group(12, 2000, 4096).await;
    assert_eq!(s.objects, 53);
    assert_eq!(s.direct_objects, 3);
    assert_eq!(
        s.direct_shards, 3,
        "5,000-byte big objects, 2,000 bytes per shard: one each"
    );
    let mut seen = 0;
    for i in 1..=s.shards {
        let rows = shard_rows(&w, &format!("shard-{i:06}.csv")).await;
        assert!(
            !rows.is_empty() && rows.len() <= 12,
            "shard {i}: {} rows",
            rows.len()
        );
        let direct = rows[0].direct;
        assert!(
            rows.iter().all(|r| r.direct == direct),
            "one kind per shard"
        );
        if !direct {
            let bytes: u64 = rows.iter().map(|r| r.size).sum();
            assert!(bytes <= 2000 || rows.len() == 1, "shard {i}: {bytes} bytes");
        }
        assert!(rows.iter().all(|r| r.etag.is_some() && r.bucket == "src"));
        seen += rows.len();
    }
    assert_eq!(seen, 53, "every object in exactly one shard");
    assert!(
        s.shards > 53 / 12,
        "the byte bound split further: {} shards",
        s.shards
    );
}

#[tokio::test]
async fn a_shard_packs_and_every_object_comes_back_exactly() {
    let w = world(40, 2).await;
    let g = w.group(1000, 1 << 30, 4096).await;
    assert_eq!(g.shards, 2);
    let s = w.run("shard-000001.csv", &PackOptions::default()).await;
    assert_eq!((s.objects, s.packed, s.failed), (40, 40, 0));
    let index = w.index("shard-000001").await;
    assert_eq!(index.len(), 40);
    let archive = w.dir("archive/");
    let at = open_place(
        "s3://out/archive/shard-000001.tar",
        w.buckets.as_ref(),
        true,
    )
    .await
    .unwrap();
    w.out.reset_counts();
    for (i, row) in index.iter().enumerate().step_by(7) {
        let f = get(&at, &row.key).await.unwrap();
        let got: Vec<u8> = f.body.map(|c| c.unwrap().to_vec()).concat().await;
        assert_eq!(
            got,
            w.src.get_bytes(&row.key).await.unwrap().to_vec(),
            "{i}"
        );
        assert_eq!(f.row.tags.len(), 2);
        assert_eq!(f.row.content_type.as_deref(), Some("text/plain"));
    }
    assert_eq!(
        w.out.op_count("get"),
        3 * 6,
        "per object: the index, the receipt and one ranged GET of the tar"
    );
    // The big objects' shard: copied directly under bigobjects/, indexed, and got back.
    let b = w.run("shard-000002.csv", &PackOptions::default()).await;
    assert_eq!((b.direct, b.packed, b.tar.as_str()), (2, 0, ""));
    assert_eq!(
        w.out
            .get_bytes("archive/bigobjects/big/1")
            .await
            .unwrap()
            .len(),
        5000
    );
    let at = open_place(
        "s3://out/archive/shard-000002.index.csv",
        w.buckets.as_ref(),
        true,
    )
    .await
    .unwrap();
    let f = get(&at, "big/1").await.unwrap();
    assert_eq!(f.body.map(|c| c.unwrap().len()).concat_len().await, 5000);

    // extract restores keys, bytes, Content-Type, metadata and tags.
    let dest = MemoryStore::named("restored");
    let ddir = Dir {
        store: Arc::new(dest.clone()),
        prefix: "r/".into(),
        uri: "s3://restored/r/".into(),
    };
    let tar = open_place(
        "s3://out/archive/shard-000001.tar",
        w.buckets.as_ref(),
        true,
    )
    .await
    .unwrap();
    let x = extract(
        &tar,
        &ddir,
        4,
        &s3ferry_engine::exec::Cancel::new(),
        &w.reporter,
    )
    .await
    .unwrap();
    assert_eq!((x.members, x.failed), (40, 0));
    for row in &index {
        let k = format!("r/{}", row.key);
        assert_eq!(
            dest.get_bytes(&k).await.unwrap(),
            w.src.get_bytes(&row.key).await.unwrap()
        );
        let (a, b) = (
            dest.head(&k).await.unwrap(),
            w.src.head(&row.key).await.unwrap(),
        );
        assert_eq!(a.content_type, b.content_type);
        assert_eq!(a.metadata, b.metadata);
        let mut ta = dest.get_tags(&k).await.unwrap();
        let mut tb = w.src.get_tags(&row.key).await.unwrap();
        ta.sort();
        tb.sort();
        assert_eq!(ta, tb);
    }
    let _ = archive;
}

trait ConcatLen {
    async fn concat_len(self) -> usize;
}
impl<S: futures::Stream<Item = usize> + Unpin> ConcatLen for S {
    async fn concat_len(mut self) -> usize {
        let mut n = 0;
        while let Some(x) = self.next().await {
            n += x;
        }
        n
    }
}

#[tokio::test]
async fn missing_changed_and_denied_objects_become_dead_letters_and_the_shard_completes() {
    let w = world(20, 0).await;
    w.group(1000, 1 << 30, 4096).await;
    let rows = shard_rows(&w, "shard-000001.csv").await;
    // After grouping: one object deleted, one rewritten (its listed ETag is stale).
    w.src.delete(&rows[3].key).await.unwrap();
    w.src
        .put(
            &rows[5].key,
            Bytes::from_static(b"changed"),
            PutOptions::new(),
        )
        .await
        .unwrap();
    let s = w.run("shard-000001.csv", &PackOptions::default()).await;
    assert_eq!((s.objects, s.packed, s.failed), (20, 18, 2));
    let t = w.text("archive/shard-000001.dead-letters.csv").await;
    let mut lines = t.lines();
    assert_eq!(lines.next(), Some(DEAD_HEADER));
    let dead: Vec<DeadRow> = lines.map(|l| DeadRow::parse_row(l).unwrap()).collect();
    let reasons: Vec<(&str, &str)> = dead
        .iter()
        .map(|d| (d.key.as_str(), d.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            (rows[3].key.as_str(), "not-found"),
            (rows[5].key.as_str(), "changed")
        ]
    );
    assert_eq!(w.index("shard-000001").await.len(), 18);
    // Once both are fixed (the object restored, the shard regrouped), a forced rerun takes
    // all and leaves no stale dead letters.
    w.src
        .put(&rows[3].key, Bytes::from(data(3)), PutOptions::new())
        .await
        .unwrap();
    w.group(1000, 1 << 30, 4096).await;
    let s = w
        .run(
            "shard-000001.csv",
            &PackOptions {
                force: true,
                ..Default::default()
            },
        )
        .await;
    assert_eq!(s.failed, 0);
    assert!(w
        .out
        .head("archive/shard-000001.dead-letters.csv")
        .await
        .is_err());
}

#[tokio::test]
async fn rerunning_a_complete_shard_does_nothing_and_forcing_it_replaces_the_same_keys() {
    let w = world(15, 0).await;
    w.group(1000, 1 << 30, 4096).await;
    let first = w.run("shard-000001.csv", &PackOptions::default()).await;
    let keys = w.out.keys();
    let tar1 = w.out.get_bytes("archive/shard-000001.tar").await.unwrap();
    w.src.reset_counts();
    let again = w.run("shard-000001.csv", &PackOptions::default()).await;
    assert!(again.skipped);
    assert_eq!(w.src.total_ops(), 0, "a complete shard reads no object");
    let forced = w
        .run(
            "shard-000001.csv",
            &PackOptions {
                force: true,
                ..Default::default()
            },
        )
        .await;
    assert!(!forced.skipped);
    assert_eq!(forced.packed, first.packed);
    assert_eq!(w.out.keys(), keys, "same output keys, nothing added");
    assert_eq!(
        w.out.get_bytes("archive/shard-000001.tar").await.unwrap(),
        tar1,
        "same bytes"
    );
    assert_eq!(w.out.pending_uploads(), 0);
}

#[tokio::test]
async fn two_workers_drain_one_queue_and_pack_each_shard_once() {
    let w = world(60, 0).await;
    let queue = MemoryQueue::new();
    let opts = GroupOptions {
        max_objects: 6,
        ..Default::default()
    };
    let input = GroupInput::Listing {
        store: Arc::new(w.src.clone()),
        bucket: "src".into(),
        prefix: String::new(),
    };
    let g = group(input, &opts, &w.dir("shards/"), Some(&queue), &w.reporter)
        .await
        .unwrap();
    assert_eq!((g.shards, g.enqueued), (10, 10));
    let done = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let rx = Cancel::new();
    let wopts = WorkerOptions {
        visibility: Duration::from_secs(30),
        wait: Duration::from_millis(50),
        idle_exit: Some(Duration::from_millis(100)),
        ..Default::default()
    };
    let q: Arc<dyn Queue> = Arc::new(queue.clone());
    let runs = (0..2).map(|_| {
        let (q, cx, done, rx, wopts) = (q.clone(), w.cx(), done.clone(), rx.clone(), wopts.clone());
        async move {
            let on = move |s: &ShardSummary| done.lock().unwrap().push(s.shard.clone());
            work(q, &cx, &wopts, &on, rx).await.unwrap()
        }
    });
    let sums = futures::future::join_all(runs).await;
    assert_eq!(sums.iter().map(|s| s.shards).sum::<u64>(), 10);
    assert!(sums
        .iter()
        .all(|s| s.failed_shards == 0 && s.skipped_shards == 0));
    let mut shards = done.lock().unwrap().clone();
    shards.sort();
    shards.dedup();
    assert_eq!(shards.len(), 10, "each shard packed exactly once");
    assert!(queue.is_empty() && queue.deleted() == 10);
    let packed: usize = futures::future::join_all((1..=10).map(|i| {
        let w = &w;
        async move { w.index(&format!("shard-{i:06}")).await.len() }
    }))
    .await
    .into_iter()
    .sum();
    assert_eq!(packed, 60);
}

#[tokio::test]
async fn a_failing_shard_is_released_not_deleted_and_a_bad_message_is_not_lost() {
    let w = world(3, 0).await;
    let queue = MemoryQueue::new();
    queue
        .send(r#"{"shard":"s3://out/shards/missing.csv"}"#)
        .await
        .unwrap();
    queue.send("garbage").await.unwrap();
    let q: Arc<dyn Queue> = Arc::new(queue.clone());
    let rx = Cancel::new();
    let wopts = WorkerOptions {
        visibility: Duration::from_secs(60),
        wait: Duration::from_millis(20),
        max_messages: Some(2),
        ..Default::default()
    };
    let s = work(q, &w.cx(), &wopts, &|_| {}, rx).await.unwrap();
    assert_eq!((s.shards, s.failed_shards), (0, 2));
    assert_eq!(
        queue.len(),
        2,
        "both messages stay for another attempt or the DLQ"
    );
    assert_eq!(queue.deleted(), 0);
    // Each delivered once (a failed shard is not taken again at once by the same worker), and
    // held back for the retry delay rather than spinning.
    let mut counts = queue.receive_counts();
    counts.sort();
    assert_eq!(
        counts,
        vec![
            ("garbage".to_string(), 1),
            (r#"{"shard":"s3://out/shards/missing.csv"}"#.to_string(), 1)
        ]
    );
    assert!(queue
        .receive(10, Duration::ZERO, Duration::from_secs(1))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_stop_releases_the_shard_in_hand_and_aborts_its_upload() {
    let w = world(30, 0).await;
    let queue = MemoryQueue::new();
    let opts = GroupOptions::default();
    let input = GroupInput::Listing {
        store: Arc::new(w.src.clone()),
        bucket: "src".into(),
        prefix: String::new(),
    };
    group(input, &opts, &w.dir("shards/"), Some(&queue), &w.reporter)
        .await
        .unwrap();
    // A source so slow that the stop arrives mid-shard.
    let slow: DynStore = Arc::new(s3ferry_store::layer::FaultStore::new(
        Arc::new(w.src.clone()),
        "get:latency=200ms".parse().unwrap(),
    ));
    struct Slow(DynStore, MemoryStore);
    #[async_trait]
    impl Buckets for Slow {
        async fn open(&self, b: &str, _s: bool) -> Result<DynStore, StoreError> {
            Ok(if b == "src" {
                self.0.clone()
            } else {
                Arc::new(self.1.clone())
            })
        }
    }
    let buckets: Arc<dyn Buckets> = Arc::new(Slow(slow, w.out.clone()));
    let rx = Cancel::new();
    let tx = rx.clone();
    let q: Arc<dyn Queue> = Arc::new(queue.clone());
    let cx = PackContext { buckets, ..w.cx() };
    let wopts = WorkerOptions {
        wait: Duration::from_millis(20),
        pack: PackOptions {
            concurrency: 2,
            ..Default::default()
        },
        ..Default::default()
    };
    let out = w.out.clone();
    let worker = work(q, &cx, &wopts, &|_| {}, rx);
    let stopper = async {
        // Stop once the tar's upload is open.
        while out.pending_uploads() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tx.request("test");
    };
    let (s, ()) = tokio::join!(worker, stopper);
    let s = s.unwrap();
    assert!(s.interrupted);
    assert_eq!(s.shards, 0);
    assert_eq!(w.out.pending_uploads(), 0, "the upload was aborted");
    assert!(
        w.out.head("archive/shard-000001.json").await.is_err(),
        "no receipt"
    );
    let back = queue
        .receive(1, Duration::ZERO, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(back.len(), 1, "the message was released at once");
}

/// F43: an index row pointing at the wrong bytes (shifted) or past the end of the tar fails
/// that one restore on its checksum or its range; the other rows still come back.
#[tokio::test]
async fn a_bad_index_offset_fails_that_restore_only() {
    let w = world(10, 0).await;
    w.group(1000, 1 << 30, 4096).await;
    w.run("shard-000001.csv", &PackOptions::default()).await;
    let mut rows = w.index("shard-000001").await;
    let tar_len = w.out.head("archive/shard-000001.tar").await.unwrap().size;
    rows[2].data_offset = rows[2].data_offset.map(|o| o + 1);
    rows[5].data_offset = Some(tar_len + 512);
    let mut csv = format!("{INDEX_HEADER}\n");
    for r in &rows {
        csv.push_str(&r.to_row());
        csv.push('\n');
    }
    w.out
        .put_bytes("archive/shard-000001.index.csv", csv)
        .await
        .unwrap();
    let at = open_place(
        "s3://out/archive/shard-000001.index.csv",
        w.buckets.as_ref(),
        true,
    )
    .await
    .unwrap();
    let shifted = get(&at, &rows[2].key)
        .await
        .err()
        .expect("a shifted offset fails");
    assert!(shifted.to_string().contains("MD5"), "{shifted}");
    assert!(get(&at, &rows[5].key).await.is_err(), "past the end fails");
    for i in [0, 1, 3, 4, 6, 9] {
        let f = get(&at, &rows[i].key).await.unwrap();
        let got: Vec<u8> = f.body.map(|c| c.unwrap().to_vec()).concat().await;
        assert_eq!(got, w.src.get_bytes(&rows[i].key).await.unwrap().to_vec());
    }
}
