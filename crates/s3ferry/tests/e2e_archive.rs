//! `s3ferry archive` end to end against the local S3 server: a bucket prefix carried across an
//! "air gap" (archive files on disk) into another bucket, full then delta with an add, a
//! same-size change, a delete and a move; metadata, tags and a multipart-sized object kept;
//! re-import a no-op; skipped, truncated, damaged and incomplete archives refused with the
//! destination untouched; dry runs change nothing; bad input is one line and exit 2.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use s3ferry_store::{PutOptions, Store};

fn archive(cx: &Ctx, args: &[&str]) -> Run {
    let mut all = vec!["--json", "--no-progress", "archive"];
    all.extend_from_slice(args);
    cx.run(&all)
}

/// `archive export SRC --out OUT EXTRA...`.
fn export(cx: &Ctx, src: &str, out: &str, extra: &[&str]) -> Run {
    let mut args = vec!["export", src, "--out", out];
    args.extend_from_slice(extra);
    archive(cx, &args)
}

fn volumes(r: &Run) -> Vec<String> {
    r.summary()["volumes"]
        .as_array()
        .unwrap_or_else(|| panic!("no volumes: {r}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn state(r: &Run) -> String {
    r.summary()["state"].as_str().unwrap().to_string()
}

fn import(cx: &Ctx, files: &[String], dest: &str, extra: &[&str]) -> Run {
    let mut args: Vec<&str> = vec!["import"];
    args.extend(files.iter().map(String::as_str));
    args.push(dest);
    args.extend_from_slice(extra);
    archive(cx, &args)
}

/// The objects of `prefix` without the import's marker and state.
fn objects(b: &Bucket, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let mut o = b.objects(prefix);
    o.remove(".s3ferry-archive.json");
    o.remove(".s3ferry-archive.state");
    o
}

#[test]
fn a_bucket_prefix_crosses_the_gap_full_then_delta() {
    let Some(cx) = Ctx::new() else { return };
    let src = cx.bucket("arch-src");
    let dst = cx.bucket("arch-dst");
    let media = cx.path("media");
    std::fs::create_dir_all(&media).unwrap();
    let media_s = format!("{}/", media.display());

    src.put("data/plain.txt", b"plain");
    src.put("data/caf\u{e9} & co/?weird #key.txt", b"awkward key");
    src.put("data/modify.txt", b"version-1");
    src.put("data/gone.txt", b"will be deleted");
    src.put("data/old/place.bin", &random_bytes(70_000, 3));
    src.put("data/big.bin", &random_bytes(12 << 20, 7));
    let mut meta = BTreeMap::new();
    meta.insert("owner".to_string(), "team-a".to_string());
    src.put_with(
        "data/meta.json",
        b"{}",
        PutOptions::new()
            .content_type(Some("application/json".into()))
            .metadata(meta.clone())
            .tags(vec![("tier".into(), "gold".into())]),
    );
    src.put("elsewhere/not-exported", b"outside the prefix");

    let full = export(&cx, &src.uri("data"), &media_s, &["--compress"]);
    full.assert_ok();
    assert_eq!(full.n("puts"), 7, "{full}");
    assert_eq!(full.summary()["kind"], "full");
    let v1 = volumes(&full);
    assert!(v1[0].ends_with("-000001.tar.zst"), "{v1:?}");
    archive(&cx, &["verify", &v1[0]]).assert_ok_code();

    let imp = import(&cx, &v1, &dst.uri("mirror/"), &[]);
    assert_eq!(imp.code, 0, "{imp}");
    assert_eq!(objects(&dst, "mirror/"), src.objects("data/"));
    let m = dst.head("mirror/meta.json");
    assert_eq!(m.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        m.metadata
            .as_ref()
            .and_then(|m| m.get("owner"))
            .map(String::as_str),
        Some("team-a")
    );
    assert_eq!(
        dst.tags("mirror/meta.json"),
        vec![("tier".to_string(), "gold".to_string())]
    );
    assert!(dst.uploads().is_empty());

    // Add, same-size change, delete, move (copy + delete at the source).
    src.put("data/new/added.txt", b"added later");
    src.put("data/modify.txt", b"version-2");
    src.block_on(src.store.delete_many(&["data/gone.txt".to_string()]))
        .unwrap();
    let moved = src.get("data/old/place.bin");
    src.put("data/new/place.bin", &moved);
    src.block_on(src.store.delete_many(&["data/old/place.bin".to_string()]))
        .unwrap();

    // The state comes back from the import side (as if the export side had lost its own).
    let back = cx.path("back.state").display().to_string();
    let carried = archive(&cx, &["state", &dst.uri("mirror/"), "--out", &back]);
    assert_eq!(carried.code, 0, "{carried}");
    assert_eq!(carried.summary()["archive"], full.summary()["archive"]);
    std::fs::remove_file(state(&full)).unwrap();

    let plan = archive(&cx, &["plan", &src.uri("data"), "--since-state", &back]);
    assert_eq!(plan.code, 0, "{plan}");
    assert_eq!((plan.n("puts"), plan.n("deletes")), (3, 2), "{plan}");

    let delta = export(&cx, &src.uri("data"), &media_s, &["--since-state", &back]);
    delta.assert_ok();
    assert_eq!(
        (
            delta.n("puts"),
            delta.n("moves"),
            delta.n("deletes"),
            delta.n("seq")
        ),
        (2, 1, 1, 2),
        "{delta}"
    );
    let mut exported = delta.keys("copy");
    exported.sort();
    assert_eq!(
        exported,
        vec!["modify.txt", "new/added.txt", "new/place.bin"]
    );
    assert_eq!(delta.keys("delete"), vec!["gone.txt"]);

    let v2 = volumes(&delta);
    let dry = import(&cx, &v2, &dst.uri("mirror/"), &["--dry-run"]);
    assert_eq!(dry.code, 0, "{dry}");
    assert_eq!(dry.keys("would-delete"), vec!["gone.txt"]);
    assert_eq!(
        dst.get("mirror/modify.txt"),
        b"version-1",
        "a dry run changes nothing"
    );

    let imp2 = import(&cx, &v2, &dst.uri("mirror/"), &[]);
    assert_eq!(imp2.code, 0, "{imp2}");
    assert_eq!(imp2.n("seq"), 2, "{imp2}");
    assert_eq!(objects(&dst, "mirror/"), src.objects("data/"));

    // Again: a no-op.
    let before: Vec<_> = dst
        .list("mirror/")
        .into_iter()
        .map(|m| (m.key, m.etag))
        .collect();
    let again = import(&cx, &v2, &dst.uri("mirror/"), &[]);
    assert_eq!(again.code, 0, "{again}");
    assert_eq!(again.summary()["archives"][0]["outcome"], "already-applied");
    let after: Vec<_> = dst
        .list("mirror/")
        .into_iter()
        .map(|m| (m.key, m.etag))
        .collect();
    assert_eq!(before, after);
}

trait CodeOk {
    fn assert_ok_code(&self);
}

impl CodeOk for Run {
    #[track_caller]
    fn assert_ok_code(&self) {
        assert_eq!(self.code, 0, "{self}");
    }
}

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

#[test]
fn bad_archives_are_refused_and_the_destination_stays_untouched() {
    let Some(cx) = Ctx::new() else { return };
    let dst = cx.bucket("arch-bad");
    let src = cx.path("src");
    let out = cx.path("out");
    std::fs::create_dir_all(&out).unwrap();
    for i in 0..30 {
        write(&src, &format!("d{}/f{i}", i % 3), &random_bytes(40_000, i));
    }
    let s = src.display().to_string();
    let out_at = |name: &str| format!("{}/{name}", out.display());
    let one = export(&cx, &s, &out_at("one.tar"), &["--volume-size", "400KiB"]);
    one.assert_ok();
    let v1 = volumes(&one);
    assert!(v1.len() >= 3, "{v1:?}");
    write(&src, "d0/more", b"more");
    let two = export(
        &cx,
        &s,
        &out_at("two.tar"),
        &["--since-state", &state(&one)],
    );
    two.assert_ok();
    write(&src, "d0/even-more", b"even more");
    let three = export(
        &cx,
        &s,
        &out_at("three.tar"),
        &["--since-state", &state(&two)],
    );
    three.assert_ok();
    let dest = dst.uri("x/");

    // A missing volume.
    let e = import(&cx, &v1[1..], &dest, &[]).assert_fatal();
    assert!(e.contains("missing: volume 1"), "{e}");
    // Truncated.
    let cut = out.join("cut.tar");
    let bytes = std::fs::read(&v1[0]).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let mut files = vec![cut.display().to_string()];
    files.extend(v1[1..].iter().cloned());
    let e = import(&cx, &files, &dest, &[]).assert_fatal();
    assert!(e.contains("truncated"), "{e}");
    // One byte changed in the last volume's data.
    let last = v1.last().unwrap();
    let mut b = std::fs::read(last).unwrap();
    let at = b.len() - 2048;
    b[at] ^= 0x40;
    let flipped = out.join("flipped.tar");
    std::fs::write(&flipped, &b).unwrap();
    let mut files = v1[..v1.len() - 1].to_vec();
    files.push(flipped.display().to_string());
    let e = import(&cx, &files, &dest, &[]).assert_fatal();
    assert!(e.contains("SHA-256"), "{e}");
    assert!(
        dst.keys("x/").is_empty(),
        "nothing applied: {:?}",
        dst.keys("x/")
    );

    // The right volumes apply; then a skipped archive is refused.
    let ok = import(&cx, &v1, &dest, &[]);
    assert_eq!(ok.code, 0, "{ok}");
    let e = import(&cx, &volumes(&three), &dest, &[]).assert_fatal();
    assert!(e.contains("missing archive"), "{e}");
    assert!(!dst.keys("x/").contains(&"d0/even-more".to_string()));
    let ok = import(
        &cx,
        &[volumes(&three)[0].clone(), volumes(&two)[0].clone()],
        &dest,
        &[],
    );
    assert_eq!(ok.code, 0, "{ok}");
    assert_eq!(objects(&dst, "x/"), read_tree(&src));

    // Bad input: one line, exit 2.
    let e = import(&cx, &["/no/such/archive.tar".into()], &dest, &[]).assert_fatal();
    assert!(e.contains("/no/such/archive.tar"), "{e}");
    let not_state = out.join("not.state");
    std::fs::write(&not_state, b"garbage").unwrap();
    let not_state = not_state.display().to_string();
    let e = export(&cx, &s, &out_at(""), &["--since-state", &not_state]).assert_fatal();
    assert!(e.contains("not.state"), "{e}");
    let e = import(&cx, &v1, "s3://s3ferry-no-such-bucket-archive/x/", &[]).assert_fatal();
    assert!(e.contains("s3ferry-no-such-bucket-archive"), "{e}");
    let inside = format!("{}/inside.tar", src.display());
    let e = export(&cx, &s, &inside, &[]).assert_fatal();
    assert!(e.contains("inside the source"), "{e}");
    let e = export(&cx, &s, "-", &[]).assert_fatal();
    assert!(e.contains("--state-out"), "{e}");
    // A dry run into a directory that does not exist yet plans and creates nothing.
    let fresh = cx.path("fresh-dir").display().to_string();
    let dry = import(&cx, &v1, &fresh, &["--dry-run"]);
    assert_eq!(dry.code, 0, "{dry}");
    assert_eq!(dry.summary()["archives"][0]["outcome"], "would-apply");
    assert!(!std::path::Path::new(&fresh).exists());
}

/// An import killed with -9 in the middle of a multipart upload, then run again: the rerun
/// aborts the dead run's upload, applies everything, and records the archive once.
#[test]
fn a_killed_import_is_finished_by_the_next_run() {
    let Some(cx) = Ctx::new() else { return };
    let dst = cx.bucket("arch-kill");
    let src = cx.path("src");
    let mut files = BTreeMap::new();
    for i in 0..20 {
        files.insert(format!("a/f{i:02}"), random_bytes(1000 + i, i as u64));
    }
    files.insert("m/big.bin".to_string(), random_bytes(20 << 20, 99));
    write_tree(&src, &files);
    let out = format!("{}/k.tar", cx.path("").display());
    export(&cx, s(&src), &out, &[]).assert_ok();

    // Parts crawl (each takes 30 s), so the kill lands inside the big object's upload.
    let mut c = cx.cmd();
    c.args([
        "--json",
        "--no-progress",
        "archive",
        "import",
        &out,
        &dst.uri("k/"),
    ])
    .env("S3FERRY_FAULTS", "upload_part:latency=30s")
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    let mut child = c.spawn().expect("spawn");
    wait_until("the big object's multipart upload to open", || {
        dst.uploads().iter().any(|u| u.key == "k/m/big.bin")
    });
    kill9(&mut child);
    assert!(!dst.keys("k/").contains(&"m/big.bin".to_string()));
    assert!(
        !dst.keys("k/")
            .contains(&".s3ferry-archive.json".to_string()),
        "not recorded"
    );

    let again = archive(&cx, &["import", &out, &dst.uri("k/")]);
    assert_eq!(again.code, 0, "{again}");
    assert_eq!(again.summary()["archives"][0]["outcome"], "applied");
    assert_eq!(objects(&dst, "k/"), files);
    assert!(dst.uploads().is_empty(), "left open: {:?}", dst.uploads());
    let third = archive(&cx, &["import", &out, &dst.uri("k/")]);
    assert_eq!(
        third.summary()["archives"][0]["outcome"],
        "already-applied",
        "{third}"
    );
}

/// Issue 23, point 6: plain tools read archives right. `tar -x` of every volume of a split
/// export (GNU tar) never leaves a part of an object under its key: the pieces land under
/// `<key>.s3ferry-piece-<offset>` and `cat` joins them back; each member carries its exact
/// mtime as a PAX `mtime` (Python's tarfile reads it; GNU tar restores it to the nanosecond);
/// s3ferry imports the same volumes.
#[test]
fn plain_tar_never_extracts_a_piece_as_the_object_and_keeps_exact_mtimes() {
    let Some(cx) = Ctx::new() else { return };
    if std::process::Command::new("tar")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("GNU tar is needed for this test");
    }
    let src = cx.path("src");
    let big = random_bytes(3 << 20, 31);
    write(&src, "d/big.bin", &big);
    write(&src, "d/small.txt", b"exact time");
    set_mtime(&src.join("d/small.txt"), 1_700_000_000, 123_456_789);
    let media = cx.path("media");
    std::fs::create_dir_all(&media).unwrap();
    let r = export(
        &cx,
        s(&src),
        &format!("{}/", media.display()),
        &["--volume-size", "1MiB"],
    );
    r.assert_ok();
    let vols = volumes(&r);
    assert!(vols.len() >= 3, "{vols:?}");

    let out = cx.path("extracted");
    std::fs::create_dir_all(&out).unwrap();
    for v in &vols {
        let st = std::process::Command::new("tar")
            .args(["-xf", v, "-C", s(&out)])
            .status()
            .expect("tar");
        assert!(st.success(), "tar -xf {v}");
    }
    assert!(
        !out.join("d/big.bin").exists(),
        "a piece must not be extracted as the object"
    );
    let mut pieces: Vec<String> = std::fs::read_dir(out.join("d"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("big.bin.s3ferry-piece-"))
        .collect();
    pieces.sort();
    assert!(pieces.len() >= 2, "{pieces:?}");
    let joined: Vec<u8> = pieces
        .iter()
        .flat_map(|p| std::fs::read(out.join("d").join(p)).unwrap())
        .collect();
    assert!(joined == big, "the pieces in name order are the object");
    assert_eq!(
        std::fs::read(out.join("d/small.txt")).unwrap(),
        b"exact time"
    );
    assert_eq!(
        mtime_ns(&out.join("d/small.txt")),
        1_700_000_000_123_456_789,
        "GNU tar restores the PAX mtime"
    );
    let py = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, tarfile\nfor v in sys.argv[1:]:\n    for m in tarfile.open(v):\n        \
             if m.name == 'd/small.txt': print(m.pax_headers.get('mtime'))",
        ])
        .args(&vols)
        .output()
        .expect("python3");
    assert_eq!(
        String::from_utf8_lossy(&py.stdout).trim(),
        "1700000000.123456789",
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );

    let dst = cx.bucket("arch-plain");
    let imp = import(&cx, &vols, &dst.uri("m/"), &[]);
    assert_eq!(imp.code, 0, "{imp}");
    assert!(dst.get("m/d/big.bin") == big);
}
