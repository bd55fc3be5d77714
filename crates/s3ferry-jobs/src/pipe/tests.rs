//! Pipe jobs on the in-memory store (the end-to-end tests run them against S3).

use std::io::{Cursor, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use s3ferry_engine::transfer::TransferConfig;
use s3ferry_store::checksum::crc64nvme;
use s3ferry_store::memory::MemoryStore;
use s3ferry_store::{DynStore, PutOptions, Store, StoreExt};

use super::*;

const MIB: usize = 1024 * 1024;

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| {
            (i as u64)
                .wrapping_mul(2654435761)
                .wrapping_add(seed as u64) as u8
                ^ (i >> 13) as u8
        })
        .collect()
}

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn cfg() -> TransferConfig {
    let mut t = TransferConfig::new(64 << 20);
    t.part_size = 5 << 20;
    t.part_concurrency = 3;
    t
}

fn up_opts(segmented: Option<u64>) -> UpOptions {
    UpOptions {
        transfer: cfg(),
        put: PutOptions::new(),
        staging_dir: None,
        segmented: segmented.map(|s| SegmentOptions {
            segment_size: s,
            interval: None,
            heartbeat: Duration::from_secs(30),
            append: false,
            writer_timeout: None,
        }),
    }
}

fn down_opts() -> DownOptions {
    DownOptions {
        transfer: cfg(),
        follow: false,
        from_end: false,
        poll_interval: Duration::from_millis(10),
        writer_timeout: Duration::from_secs(5),
    }
}

async fn read_back(store: &DynStore, key: &str) -> (DownReport, Vec<u8>) {
    let buf = Shared::default();
    let mut out = Output::new(Box::new(buf.clone()));
    let rep = down(Target::new(store.clone(), key), &mut out, down_opts())
        .await
        .unwrap();
    let got = buf.0.lock().unwrap().clone();
    (rep, got)
}

#[tokio::test]
async fn round_trips_in_both_modes() {
    let mem = MemoryStore::new();
    let store: DynStore = Arc::new(mem.clone());
    let journal = Arc::new(s3ferry_engine::journal::Journal::in_memory().unwrap());
    for (i, n) in [0, 1, 5 * MIB, 5 * MIB + 1, 17 * MIB + 3]
        .into_iter()
        .enumerate()
    {
        let d = data(n, i as u8);
        for seg in [None, Some(5 * MIB as u64)] {
            let key = format!("k{n}-{}", seg.is_some());
            let rep = up(
                Target::new(store.clone(), key.as_str()),
                Box::new(Cursor::new(d.clone())),
                up_opts(seg),
                &journal,
                std::future::pending(),
            )
            .await
            .unwrap();
            assert_eq!(rep.bytes, n as u64);
            assert_eq!(rep.crc64nvme, crc_hex(crc64nvme(&d)));
            if seg.is_none() {
                // At most one part: one PUT; more: multipart.
                assert_eq!(rep.parts, (n.div_ceil(5 * MIB)).max(1) as u64, "{n}");
            } else {
                assert_eq!(rep.segments, Some(n.div_ceil(5 * MIB) as u64), "{n}");
            }
            let (drep, got) = read_back(&store, &key).await;
            assert!(got == d, "{key}: bytes differ");
            assert!(drep.verified || seg.is_none());
        }
    }
    assert!(store.list_multipart("").await.unwrap().is_empty());
}

/// A stream that never ends, slowly.
struct Endless;
impl Read for Endless {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        std::thread::sleep(Duration::from_millis(1));
        let n = b.len().min(1 << 20);
        b[..n].fill(7);
        Ok(n)
    }
}

#[tokio::test]
async fn cancel_aborts_the_upload_and_leaves_a_segmented_one_open_for_append() {
    let mem = MemoryStore::new();
    let store: DynStore = Arc::new(mem.clone());
    let journal = Arc::new(s3ferry_engine::journal::Journal::in_memory().unwrap());
    for seg in [None, Some(5 * MIB as u64)] {
        let key = format!("c{}", seg.is_some());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let store2 = store.clone();
        let key2 = key.clone();
        let watch = tokio::spawn(async move {
            // Cancel once the stream is well under way: a multipart upload is open, or (in
            // segmented mode, whose segments may each be one PUT) a segment was written.
            loop {
                let open = !store2.list_multipart("").await.unwrap().is_empty();
                let segments = store2.list_all(&format!("{key2}/")).await.unwrap();
                if open || segments.iter().any(|o| !o.key.ends_with("manifest.json")) {
                    break;
                }
                tokio::task::yield_now().await;
            }
            let _ = tx.send(());
        });
        let err = up(
            Target::new(store.clone(), key.as_str()),
            Box::new(Endless),
            up_opts(seg),
            &journal,
            async move {
                let _ = rx.await;
                "a test".to_string()
            },
        )
        .await
        .unwrap_err()
        .to_string();
        watch.await.unwrap();
        assert!(err.contains("interrupted by a test"), "{err}");
        assert!(store.list_multipart("").await.unwrap().is_empty());
        match seg {
            None => {
                assert!(err.contains("no object was written"), "{err}");
                assert!(store.head(&key).await.is_err());
            }
            Some(_) => {
                let m = store
                    .get_bytes(&format!("{key}/manifest.json"))
                    .await
                    .unwrap();
                let m = manifest::Manifest::parse(&m).unwrap();
                assert!(
                    m.stopped.as_deref().unwrap_or("").contains("a test"),
                    "{m:?}"
                );
                assert!(m.failed.is_none() && !m.complete, "{m:?}");
                assert!(err.contains("--append"), "{err}");
                // A follower waits for a writer to continue it, then says why it stopped.
                let mut o = down_opts();
                o.follow = true;
                o.writer_timeout = Duration::from_millis(200);
                let mut out = Output::new(Box::new(Shared::default()));
                let e = down(Target::new(store.clone(), key.as_str()), &mut out, o)
                    .await
                    .unwrap_err()
                    .to_string();
                assert!(
                    e.contains("was stopped (interrupted by a test)") && e.contains("--append"),
                    "{e}"
                );
                // A writer that failed (not stopped): its followers stop at once.
                let mut failed = m.clone();
                failed.stopped = None;
                failed.failed = Some("disk on fire".into());
                store
                    .put(
                        &format!("{key}/manifest.json"),
                        failed.to_json().into(),
                        PutOptions::new(),
                    )
                    .await
                    .unwrap();
                let mut o = down_opts();
                o.follow = true;
                o.writer_timeout = Duration::from_secs(60);
                let mut out = Output::new(Box::new(Shared::default()));
                let e = down(Target::new(store.clone(), key.as_str()), &mut out, o)
                    .await
                    .unwrap_err()
                    .to_string();
                assert!(e.contains("the writer gave up (disk on fire)"), "{e}");
            }
        }
    }
}

/// Cancelled while the upload is being completed (the input ended, `finish` owns the writer):
/// the upload is still aborted, nothing is left open and no object appears.
#[tokio::test]
async fn cancel_during_completion_still_aborts_the_upload() {
    use s3ferry_store::layer::{FaultSpec, FaultStore};
    let mem = MemoryStore::new();
    let spec: FaultSpec = "complete_multipart:latency=60s".parse().unwrap();
    let faults = Arc::new(FaultStore::new(Arc::new(mem.clone()), spec));
    let store: DynStore = faults.clone();
    let journal = Arc::new(s3ferry_engine::journal::Journal::in_memory().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let watch = tokio::spawn(async move {
        // Cancel once the completion was sent (it hangs): `finish` owns the writer.
        while faults.calls("complete_multipart") == 0 {
            tokio::task::yield_now().await;
        }
        let _ = tx.send(());
    });
    let err = up(
        Target::new(store.clone(), "fin"),
        Box::new(Cursor::new(data(11 * MIB, 9))),
        up_opts(None),
        &journal,
        async move {
            let _ = rx.await;
            "a test".to_string()
        },
    )
    .await
    .unwrap_err()
    .to_string();
    watch.await.unwrap();
    assert!(err.contains("interrupted by a test"), "{err}");
    assert!(
        mem.list_multipart("").await.unwrap().is_empty(),
        "upload left open"
    );
    assert!(mem.head("fin").await.is_err(), "no object");
}

/// `join`'s plan: segments of one size are one server-side copy each; segments cut by time are
/// joined in uniform parts, copied where a part lies in one segment and read through where it
/// spans several.
#[test]
fn join_copies_inside_segments_and_reads_through_across_them() {
    use super::download::{join_part_size, join_parts};
    use super::manifest::{segment_name, Manifest, Segment};
    use s3ferry_engine::transfer::PartBody;

    let manifest = |sizes: &[u64]| {
        let mut m = Manifest::new("w", 8 * MIB as u64);
        m.segments = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| Segment {
                key: segment_name(i),
                size,
                crc64nvme: "0000000000000000".into(),
                etag: Some(format!("e{i}")),
            })
            .collect();
        m
    };
    let plan = |m: &Manifest| {
        let total = m.segments.iter().map(|s| s.size).sum();
        let size = join_part_size(&m.segments, total);
        let src = Target::new(Arc::new(MemoryStore::new()) as DynStore, "s");
        let parts: Vec<String> = join_parts(&src, "b", "s", &m.segments, size)
            .map(|p| match p {
                PartBody::Copy(from, r) => format!("copy {} {}..{}", from.key, r.start, r.end),
                PartBody::Read(len, _) => format!("read {len}"),
                _ => "other".into(),
            })
            .collect();
        (size, parts)
    };
    let m5 = 5 * MIB as u64;
    // Cut by size: one copy per segment; the last, shorter than 5 MiB, is read through.
    let (size, parts) = plan(&manifest(&[m5, m5, 3]));
    assert_eq!(size, m5);
    assert_eq!(
        parts,
        [
            "copy s/000000000000 0..5242880",
            "copy s/000000000001 0..5242880",
            "read 3"
        ]
    );
    // Cut by time: three small segments, two large ones, a small last one.
    let mib = MIB as u64;
    let (size, parts) = plan(&manifest(&[mib, mib, mib, 6 * mib, 6 * mib, 2 * mib]));
    assert_eq!(size, m5);
    assert_eq!(
        parts,
        [
            // [0, 5M): segments 0-2 and 2 MiB of segment 3
            "read 5242880".to_string(),
            // [5M, 10M): the rest of segment 3 and 1 MiB of segment 4
            "read 5242880".to_string(),
            // [10M, 15M): inside segment 4
            format!("copy s/000000000004 {}..{}", mib, 6 * mib),
            // [15M, 17M): segment 5, under 5 MiB: read through (some servers refuse so
            // small an UploadPartCopy even as the last part)
            format!("read {}", 2 * mib),
        ]
    );
}

/// A stream of many small segments: the manifest seals the oldest into index objects, a reader
/// gets every byte through the indexes, and a writer that appends continues after them.
#[tokio::test]
async fn many_segments_are_sealed_into_indexes_and_read_back() {
    let mem = MemoryStore::new();
    let store: DynStore = Arc::new(mem.clone());
    let journal = Arc::new(s3ferry_engine::journal::Journal::in_memory().unwrap());
    let n = 2 * manifest::SEAL_EVERY + 100;
    let input = data(n * 16 + 5, 9);
    let rep = up(
        Target::new(store.clone(), "many"),
        Box::new(Cursor::new(input.clone())),
        up_opts(Some(16)),
        &journal,
        std::future::pending(),
    )
    .await
    .unwrap();
    assert_eq!(rep.segments, Some(n as u64 + 1));
    let m =
        manifest::Manifest::parse(&store.get_bytes("many/manifest.json").await.unwrap()).unwrap();
    assert_eq!(m.sealed.len(), 1, "{:?}", m.sealed);
    assert_eq!(m.first_segment, manifest::SEAL_EVERY);
    assert!(m.segments.len() < 2 * manifest::SEAL_EVERY);
    assert!(store.head("many/index-000000000000.json").await.is_ok());
    let (rep, got) = read_back(&store, "many").await;
    assert!(rep.verified);
    assert_eq!(got, input);

    // Appended to: the new segments follow the sealed and listed ones.
    let more = data(100, 10);
    let mut opts = up_opts(Some(16));
    if let Some(s) = opts.segmented.as_mut() {
        s.append = true;
    }
    let rep = up(
        Target::new(store.clone(), "many"),
        Box::new(Cursor::new(more.clone())),
        opts,
        &journal,
        std::future::pending(),
    )
    .await
    .unwrap();
    assert_eq!(rep.appended_to, Some(input.len() as u64));
    let (_, got) = read_back(&store, "many").await;
    assert_eq!(got, [input, more].concat());
}

struct Broken;
impl Read for Broken {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other("the input broke"))
    }
}

/// An append that fails before it adds a segment puts the stream back as it was: a finished
/// stream stays finished (readable, joinable), not failed.
#[tokio::test]
async fn an_append_that_adds_nothing_leaves_the_stream_as_it_was() {
    let store: DynStore = Arc::new(MemoryStore::new());
    let journal = Arc::new(s3ferry_engine::journal::Journal::in_memory().unwrap());
    let first = data(100, 3);
    up(
        Target::new(store.clone(), "s"),
        Box::new(Cursor::new(first.clone())),
        up_opts(Some(16)),
        &journal,
        std::future::pending(),
    )
    .await
    .unwrap();
    let before = store.get_bytes("s/manifest.json").await.unwrap();
    let mut opts = up_opts(Some(16));
    if let Some(s) = opts.segmented.as_mut() {
        s.append = true;
    }
    let err = up(
        Target::new(store.clone(), "s"),
        Box::new(Broken),
        opts,
        &journal,
        std::future::pending(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("the input broke") && err.contains("as it was"),
        "{err}"
    );
    let after =
        manifest::Manifest::parse(&store.get_bytes("s/manifest.json").await.unwrap()).unwrap();
    let was = manifest::Manifest::parse(&before).unwrap();
    assert!(after.complete && after.failed.is_none(), "{after:?}");
    assert_eq!(after.segments, was.segments);
    assert_eq!(after.appends, was.appends, "no append recorded");
    let (_, got) = read_back(&store, "s").await;
    assert_eq!(got, first);
}
