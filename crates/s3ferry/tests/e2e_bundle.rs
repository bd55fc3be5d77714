//! `s3ferry bundle` end to end against the local S3 server, with SQS on moto: an inventory of
//! 20,000+ objects grouped within bounds, two workers draining one queue, every object back
//! byte-exact through `get` and `extract` with metadata and tags, dead letters for missing,
//! denied and changed objects, a worker killed with -9 whose shard another worker completes,
//! and hostile tars refused.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use md5::{Digest as _, Md5};
use serde_json::Value;

fn ok(r: Run) -> Run {
    assert_eq!(r.code, 0, "{r}");
    r
}

fn bundle(cx: &Ctx, env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut all = vec!["--json", "--no-progress", "bundle"];
    all.extend_from_slice(args);
    cx.run_env(&all, env)
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Form-encode a key as S3 Inventory does.
fn enc(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b'*' => {
                (b as char).to_string()
            }
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Write an S3 Inventory of `src` (two gzipped CSV data files) into `inv`; returns the
/// manifest's URI.
fn inventory(src: &Bucket, inv: &Bucket) -> String {
    let objects = src.list("");
    let mut files = Vec::new();
    for (n, chunk) in objects.chunks(objects.len().div_ceil(2)).enumerate() {
        let mut csv = String::new();
        for m in chunk {
            let t = chrono::DateTime::<chrono::Utc>::from(m.last_modified.unwrap())
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            csv += &format!(
                "\"{}\",\"{}\",\"{}\",\"{t}\",\"{}\",\"STANDARD\"\n",
                src.name,
                enc(&m.key),
                m.size,
                m.etag.as_deref().unwrap()
            );
        }
        let data = gz(csv.as_bytes());
        let key = format!("inv/data/part-{n}.csv.gz");
        inv.put(&key, &data);
        files.push(serde_json::json!({"key": key, "size": data.len(), "MD5checksum": hex::encode(Md5::digest(&data))}));
    }
    let manifest = serde_json::json!({
        "sourceBucket": src.name,
        "destinationBucket": format!("arn:aws:s3:::{}", inv.name),
        "version": "2016-11-30",
        "fileFormat": "CSV",
        "fileSchema": "Bucket, Key, Size, LastModifiedDate, ETag, StorageClass",
        "files": files,
    });
    inv.put("inv/manifest.json", manifest.to_string().as_bytes());
    inv.uri("inv/manifest.json")
}

fn csv_rows(b: &Bucket, key: &str) -> Vec<Vec<String>> {
    String::from_utf8(b.get(key))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

fn shard_lines(r: &Run) -> Vec<Value> {
    r.json()
        .into_iter()
        .filter(|v| v["type"] == "shard")
        .collect()
}

/// Spawn `s3ferry --json bundle worker ...`, its stdout collected by a thread.
fn spawn_worker(
    cx: &Ctx,
    env: &[(&str, &str)],
    args: &[&str],
) -> (std::process::Child, std::thread::JoinHandle<String>) {
    let mut c = cx.cmd();
    c.args(["--json", "--no-progress", "bundle", "worker"])
        .args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = c.spawn().expect("spawn worker");
    let mut out = child.stdout.take().unwrap();
    let h = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    (child, h)
}

/// 20,000 small objects and a few big ones, from an inventory, packed by two workers sharing
/// one queue: bounds respected, each shard packed once, every object back exactly.
#[test]
fn an_inventory_is_grouped_packed_by_two_workers_and_every_object_comes_back() {
    let Some(cx) = Ctx::new() else { return };
    let (src, work, arch) = (
        cx.bucket("bundle-src"),
        cx.bucket("bundle-work"),
        cx.bucket("bundle-arch"),
    );
    let Some((qurl, aws)) = sqs_queue(&work, "shards", Duration::from_secs(60)) else {
        return;
    };
    let n = 20_000;
    let dir = cx.path("src");
    let mut files: BTreeMap<String, Vec<u8>> = (0..n)
        .map(|i| {
            let len = 200 + (i * 37) % 1800;
            (
                format!("d{:02}/o {i:05}.dat", i % 50),
                random_bytes(len, i as u64),
            )
        })
        .collect();
    for i in 0..3 {
        files.insert(
            format!("big/b{i}.bin"),
            random_bytes(1_200_000 + i * 1000, 99 + i as u64),
        );
    }
    write_tree(&dir, &files);
    cx.sync(&["--no-state", s(&dir), &src.uri("")]).assert_ok();
    // A few objects with metadata and tags (and a long, awkward key).
    let long = format!("meta/{}/é, \"q\" +%.txt", "x".repeat(180));
    for (i, k) in ["meta/a.json", long.as_str()].iter().enumerate() {
        let mut md = BTreeMap::new();
        md.insert("owner".to_string(), format!("team-{i}"));
        src.put_with(
            k,
            format!("{{\"i\":{i}}}").as_bytes(),
            PutOptions::new()
                .content_type(Some("application/json".into()))
                .metadata(md)
                .tags(vec![
                    ("class".into(), "gold".into()),
                    ("n".into(), i.to_string()),
                ]),
        );
        files.insert(k.to_string(), format!("{{\"i\":{i}}}").into_bytes());
    }
    let manifest = inventory(&src, &work);
    let env = [("AWS_ENDPOINT_URL_SQS", aws.as_str())];
    let g = bundle(
        &cx,
        &env,
        &[
            "group",
            "--inventory",
            &manifest,
            "--out",
            &work.uri("shards/"),
            "--max-objects",
            "6000",
            "--max-bytes",
            "6MiB",
            "--big-object",
            "1MiB",
            "--queue",
            &qurl,
        ],
    );
    let g = ok(g);
    let sum = g.summary();
    assert_eq!(sum["objects"], files.len() as u64);
    assert_eq!(sum["direct_objects"], 3);
    let shards = sum["shards"].as_u64().unwrap();
    assert_eq!(sum["enqueued"], shards);
    // Bounds: every shard within 6,000 objects and 6 MiB (small ones), all objects once.
    let mut grouped = BTreeSet::new();
    for i in 1..=shards {
        let rows = csv_rows(&work, &format!("shards/shard-{i:06}.csv"));
        assert!(rows.len() <= 6000, "shard {i}: {} rows", rows.len());
        let direct = rows.iter().filter(|r| r[7] == "1").count();
        assert!(direct == 0 || direct == rows.len(), "shard {i} mixes kinds");
        if direct == 0 {
            let bytes: u64 = rows.iter().map(|r| r[3].parse::<u64>().unwrap()).sum();
            assert!(bytes <= 6 << 20, "shard {i}: {bytes} bytes");
        }
        for r in rows {
            assert!(grouped.insert(r[1].clone()), "{} in two shards", r[1]);
        }
    }
    assert_eq!(grouped.len(), files.len());
    assert!(shards >= 5, "{shards} shards");

    // Two workers drain the queue.
    let wargs = [
        "--queue",
        &qurl,
        "--to",
        &arch.uri("a/"),
        "--idle-exit",
        "3s",
        "--concurrency",
        "16",
    ];
    let (mut w1, o1) = spawn_worker(&cx, &env, &wargs);
    let (mut w2, o2) = spawn_worker(&cx, &env, &wargs);
    let t0 = Instant::now();
    for w in [&mut w1, &mut w2] {
        loop {
            if let Some(st) = w.try_wait().unwrap() {
                assert!(st.success(), "worker exit {st:?}");
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(300),
                "workers did not finish"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let outs = [o1.join().unwrap(), o2.join().unwrap()];
    let mut packed_by: BTreeMap<String, usize> = BTreeMap::new();
    for (w, out) in outs.iter().enumerate() {
        for v in parse_lines(out)
            .into_iter()
            .filter(|v| v["type"] == "shard")
        {
            assert_eq!(v["skipped"], false);
            assert_eq!(v["failed"], 0, "{v}");
            assert!(
                packed_by
                    .insert(v["shard"].as_str().unwrap().to_string(), w)
                    .is_none(),
                "packed twice: {v}"
            );
        }
    }
    assert_eq!(
        packed_by.len() as u64,
        shards,
        "every shard packed exactly once"
    );
    assert!(
        packed_by.values().collect::<BTreeSet<_>>().len() == 2,
        "both workers took shards: {packed_by:?}"
    );

    // Every object is in exactly one index; sample them back through `get`.
    let mut indexed = BTreeMap::new();
    for i in 1..=shards {
        for r in csv_rows(&arch, &format!("a/shard-{i:06}.index.csv")) {
            indexed.insert(r[1].clone(), i);
        }
    }
    assert_eq!(indexed.len(), files.len());
    let enc_of: BTreeMap<String, &String> = files.keys().map(|k| (enc(k), k)).collect();
    for (j, (ek, shard)) in indexed.iter().enumerate() {
        let key = enc_of[ek];
        if j % 997 != 0 && !key.starts_with("big/") && !key.starts_with("meta/") {
            continue;
        }
        let out = cx.path(&format!("got-{j}"));
        let r = cx.run(&[
            "bundle",
            "get",
            &arch.uri(&format!("a/shard-{shard:06}.index.csv")),
            key,
            "-o",
            s(&out),
        ]);
        ok(r);
        assert_eq!(std::fs::read(&out).unwrap(), files[key], "{key}");
    }

    // `extract` of the shard holding the metadata objects, into a bucket: exact keys, bytes,
    // Content-Type, metadata and tags.
    let shard = indexed[&enc(&long)];
    let x = bundle(
        &cx,
        &[],
        &[
            "extract",
            &arch.uri(&format!("a/shard-{shard:06}.tar")),
            &arch.uri("x/"),
        ],
    );
    ok(x);
    let restored = arch.objects("x/");
    assert!(restored.len() > 1000);
    for (k, v) in &restored {
        assert_eq!(&files[k], v, "{k}");
    }
    let h = arch.head(&format!("x/{long}"));
    assert_eq!(h.content_type.as_deref(), Some("application/json"));
    assert_eq!(h.metadata.unwrap()["owner"], "team-1");
    assert_eq!(
        arch.tags(&format!("x/{long}")),
        vec![
            ("class".to_string(), "gold".to_string()),
            ("n".into(), "1".into())
        ]
    );
    // And into a local directory.
    let local = cx.path("restored");
    ok(bundle(
        &cx,
        &[],
        &[
            "extract",
            &arch.uri(&format!("a/shard-{shard:06}.tar")),
            s(&local),
        ],
    ));
    let tree = read_tree(&local);
    assert_eq!(tree.len(), restored.len());
    assert!(tree.iter().all(|(k, v)| &files[k] == v));
}

/// Missing, denied and changed objects go to the dead-letter index with their reason; the shard
/// still completes, and everything else is packed.
#[cfg(feature = "fault")]
#[test]
fn missing_denied_and_changed_objects_become_dead_letters() {
    let Some(cx) = Ctx::new() else { return };
    let (src, arch) = (cx.bucket("bundle-dl-src"), cx.bucket("bundle-dl-arch"));
    for i in 0..40 {
        src.put(&format!("k{i:02}"), format!("value {i}").as_bytes());
    }
    let shards = cx.path("shards");
    ok(bundle(
        &cx,
        &[],
        &["group", "--source", &src.uri(""), "--out", s(&shards)],
    ));
    // After grouping: one object deleted, one rewritten.
    src.block_on(src.store.delete("k07")).unwrap();
    src.put("k11", b"rewritten after the listing");
    let shard = shards.join("shard-000001.csv");
    let r = bundle(
        &cx,
        &[("S3FERRY_FAULTS_SOURCE", "get:denied@20")],
        &[
            "run",
            s(&shard),
            "--to",
            &arch.uri("a/"),
            "--concurrency",
            "1",
        ],
    );
    assert_eq!(r.code, 1, "dead letters give exit 1: {r}");
    let sum = r.summary();
    assert_eq!(
        (sum["packed"].as_u64(), sum["failed"].as_u64()),
        (Some(37), Some(3))
    );
    let dead = csv_rows(&arch, "a/shard-000001.dead-letters.csv");
    let reasons: BTreeMap<String, String> =
        dead.iter().map(|r| (r[1].clone(), r[5].clone())).collect();
    assert_eq!(reasons.get("k07").map(String::as_str), Some("not-found"));
    assert_eq!(reasons.get("k11").map(String::as_str), Some("changed"));
    assert_eq!(
        reasons.values().filter(|r| *r == "access-denied").count(),
        1,
        "{reasons:?}"
    );
    let receipt: Value = serde_json::from_slice(&arch.get("a/shard-000001.json")).unwrap();
    assert_eq!(receipt["failed"], 3);
    assert_eq!(csv_rows(&arch, "a/shard-000001.index.csv").len(), 37);
    // A rerun finds the receipt and does nothing.
    let again = bundle(&cx, &[], &["run", s(&shard), "--to", &arch.uri("a/")]);
    assert_eq!(shard_lines(&again)[0]["skipped"], true);
}

/// A worker killed with -9 mid-shard: the message comes back after its visibility timeout,
/// another worker packs the shard from the start, aborts the dead worker's upload, and the
/// result is one complete tar.
#[cfg(feature = "fault")]
#[test]
fn a_killed_workers_shard_is_completed_by_another_worker() {
    let Some(cx) = Ctx::new() else { return };
    let (src, work, arch) = (
        cx.bucket("bundle-k-src"),
        cx.bucket("bundle-k-work"),
        cx.bucket("bundle-k-arch"),
    );
    let Some((qurl, aws)) = sqs_queue(&work, "kill", Duration::from_secs(2)) else {
        return;
    };
    let files: BTreeMap<String, Vec<u8>> = (0..300)
        .map(|i| (format!("f{i:03}"), random_bytes(20_000, i)))
        .collect();
    src.put_all("", &files);
    let env = [("AWS_ENDPOINT_URL_SQS", aws.as_str())];
    ok(bundle(
        &cx,
        &env,
        &[
            "group",
            "--source",
            &src.uri(""),
            "--out",
            &work.uri("s/"),
            "--queue",
            &qurl,
        ],
    ));
    // The first worker is slow (every GET waits) and uses 5 MiB parts so its upload opens early.
    let slow = [
        ("AWS_ENDPOINT_URL_SQS", aws.as_str()),
        ("S3FERRY_FAULTS_SOURCE", "get:latency=30ms"),
    ];
    let wargs = [
        "--queue",
        &qurl,
        "--to",
        &arch.uri("a/"),
        "--visibility-timeout",
        "2s",
        "--concurrency",
        "2",
        "--part-size",
        "5MiB",
    ];
    let (mut w1, _o1) = spawn_worker(&cx, &slow, &wargs);
    wait_until("the first worker's tar upload to open", || {
        !arch.uploads().is_empty()
    });
    kill9(&mut w1);
    assert!(
        !arch.keys("a/").iter().any(|k| k.ends_with(".json")),
        "killed before the end"
    );
    let mut args2 = wargs.to_vec();
    args2.extend(["--idle-exit", "6s"]);
    let (mut w2, o2) = spawn_worker(&cx, &env, &args2);
    let t0 = Instant::now();
    let st = loop {
        if let Some(st) = w2.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "second worker did not finish"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(st.success());
    let lines: Vec<Value> = parse_lines(&o2.join().unwrap())
        .into_iter()
        .filter(|v| v["type"] == "shard")
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["packed"], 300);
    assert!(
        arch.uploads().is_empty(),
        "the dead worker's upload was aborted"
    );
    assert_eq!(
        arch.keys("a/"),
        vec![
            "shard-000001.index.csv",
            "shard-000001.json",
            "shard-000001.tar"
        ]
    );
    let local = cx.path("x");
    ok(bundle(
        &cx,
        &[],
        &["extract", &arch.uri("a/shard-000001.tar"), s(&local)],
    ));
    assert_eq!(read_tree(&local), files);
}

/// `extract` refuses a tar whose members would escape the destination, with one error line.
#[test]
fn extract_refuses_members_that_escape() {
    let Some(cx) = Ctx::new() else { return };
    use s3ferry_engine::formats::tar::{Member, TarWriter, VecSink};
    for evil in ["../evil", "/etc/evil", "a/../../evil"] {
        let tar = cx.rt.block_on(async {
            let mut w = TarWriter::new(VecSink::default());
            for name in ["ok.txt", evil] {
                let m = Member {
                    name: name.into(),
                    size: 2,
                    mtime: 0,
                    records: vec![],
                };
                let body = futures::stream::once(async { Ok(bytes::Bytes::from_static(b"hi")) });
                w.append(&m, Box::pin(body)).await.unwrap();
            }
            w.finish().await.unwrap().0.data
        });
        let path = cx.path("evil.tar");
        std::fs::write(&path, tar).unwrap();
        let dest = cx.path("dest");
        let r = cx.run(&["bundle", "extract", s(&path), s(&dest)]);
        let line = r.assert_fatal();
        assert!(line.contains("evil"), "{line}");
        assert!(!cx.path("evil").exists() && !std::path::Path::new("/etc/evil").exists());
        assert!(!dest.join("..").join("evil").exists());
    }
}

/// Bad input: one line, exit 2, nothing written.
#[test]
fn bad_input_is_refused_with_one_line() {
    let Some(cx) = Ctx::new() else { return };
    let arch = cx.bucket("bundle-bad");
    let bad = cx.path("bad.csv");
    std::fs::write(
        &bad,
        "bucket,key,version_id,size,last_modified,etag,storage_class,direct\nb,k,,notanumber,,,,\n",
    )
    .unwrap();
    let r = cx.run(&["bundle", "run", s(&bad), "--to", &arch.uri("a/")]);
    assert!(r.assert_fatal().contains("line 2"), "{r}");
    let r = cx.run(&[
        "bundle",
        "run",
        s(&cx.path("nope.csv")),
        "--to",
        &arch.uri("a/"),
    ]);
    r.assert_fatal();
    let r = cx.run(&[
        "bundle",
        "group",
        "--source",
        "s3://no-such-bucket-s3ferry-x",
        "--out",
        s(&cx.path("o")),
    ]);
    r.assert_fatal();
    let r = cx.run(&[
        "bundle",
        "worker",
        "--queue",
        "not-a-url",
        "--to",
        &arch.uri("a/"),
    ]);
    assert!(r.assert_fatal().contains("queue URL"), "{r}");
    let r = cx.run(&[
        "bundle",
        "run",
        s(&bad),
        "--to",
        &arch.uri("a/"),
        "--concurrency",
        "0",
    ]);
    r.assert_fatal();
    assert!(arch.keys("").is_empty(), "nothing written");
}
