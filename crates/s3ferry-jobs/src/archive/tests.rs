//! Archive export → import on local directories (the S3 side runs in the e2e tests).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use s3ferry_engine::events::{Outcome, Record, Reporter};
use s3ferry_engine::filter::Filters;
use s3ferry_engine::journal::Journal;
use s3ferry_engine::plan::MaxDelete;
use s3ferry_engine::transfer::TransferConfig;
use s3ferry_engine::walk::Side;
use s3ferry_store::local::LocalStore;

use super::format::is_reserved;
use super::*;
use crate::places::Dir;

#[derive(Default)]
struct Seen(Mutex<Vec<Record>>);

impl Reporter for Seen {
    fn record(&self, r: &Record) {
        self.0.lock().unwrap().push(r.clone());
    }
}

impl Seen {
    fn keys(&self, action: Outcome) -> Vec<String> {
        let mut k: Vec<String> = self
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.action == action)
            .map(|r| r.key.clone())
            .collect();
        k.sort();
        k
    }
}

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// Every file under `root` (but the import marker) with its bytes.
fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                if !is_reserved(&rel) {
                    out.insert(rel, std::fs::read(&p).unwrap());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    if root.exists() {
        walk(root, root, &mut out);
    }
    out
}

struct Fx {
    _tmp: tempfile::TempDir,
    src: PathBuf,
    dst: PathBuf,
    out: PathBuf,
    journal: Arc<Journal>,
}

impl Fx {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst, out) = (
            tmp.path().join("src"),
            tmp.path().join("dst"),
            tmp.path().join("out"),
        );
        for d in [&src, &dst, &out] {
            std::fs::create_dir_all(d).unwrap();
        }
        Self {
            _tmp: tmp,
            src,
            dst,
            out,
            journal: Arc::new(Journal::in_memory().unwrap()),
        }
    }

    fn side(&self) -> Side {
        Side::new(Arc::new(LocalStore::new(self.src.clone())), "")
    }

    fn dest(&self) -> Dir {
        Dir {
            store: Arc::new(LocalStore::new(self.dst.clone())),
            prefix: String::new(),
            uri: format!("{}/", self.dst.display()),
        }
    }

    fn opts(&self, base: Option<&str>) -> ExportOptions {
        ExportOptions {
            filters: Filters::default(),
            since: None,
            since_state: base.map(PathBuf::from),
            compress: false,
            volume_size: None,
            concurrency: 4,
            tags: false,
            source_id: None,
            transfer: TransferConfig::new(64 << 20),
        }
    }

    fn import_opts(&self) -> ImportOptions {
        ImportOptions {
            force: false,
            dry_run: false,
            max_delete: MaxDelete::Percent(50.0),
            concurrency: 4,
            transfer: TransferConfig::new(64 << 20),
            cancel: s3ferry_engine::exec::Cancel::new(),
        }
    }

    async fn export(&self, name: &str, opts: &ExportOptions) -> (ExportSummary, Arc<Seen>) {
        let seen = Arc::new(Seen::default());
        let r: Arc<dyn Reporter> = seen.clone();
        let s = export(
            &self.side(),
            &Output::Path(self.out.join(name)),
            None,
            opts,
            &r,
        )
        .await
        .unwrap();
        (s, seen)
    }

    async fn import(&self, files: &[String]) -> Result<ImportSummary, ArchiveError> {
        let r: Arc<dyn Reporter> = Arc::new(Seen::default());
        let paths: Vec<PathBuf> = files.iter().map(PathBuf::from).collect();
        import(&paths, &self.dest(), &self.import_opts(), &self.journal, &r).await
    }
}

#[tokio::test]
async fn full_then_deltas_with_changes_moves_and_deletes_keep_the_destination_equal() {
    let fx = Fx::new();
    write(&fx.src, "a.txt", b"alpha");
    write(&fx.src, "keep/b.bin", &vec![7u8; 300_000]);
    write(&fx.src, "modify.txt", b"11111");
    write(&fx.src, "gone.txt", b"to be deleted");
    write(&fx.src, "old/name.dat", b"moving content, unique");
    write(&fx.src, "empty", b"");

    let (full, _) = fx.export("one.tar", &fx.opts(None)).await;
    assert_eq!((full.kind.as_str(), full.seq, full.puts), ("full", 1, 6));
    let i1 = fx.import(&full.volumes).await.unwrap();
    assert_eq!(i1.archives[0].outcome, "applied");
    assert_eq!(tree(&fx.dst), tree(&fx.src));

    // Add, same-size modify, delete, move.
    write(&fx.src, "new/c.txt", b"brand new");
    write(&fx.src, "modify.txt", b"22222");
    std::fs::remove_file(fx.src.join("gone.txt")).unwrap();
    std::fs::create_dir_all(fx.src.join("new")).unwrap();
    std::fs::rename(fx.src.join("old/name.dat"), fx.src.join("new/name.dat")).unwrap();

    let (delta, seen) = fx.export("two.tar", &fx.opts(Some(&full.state))).await;
    assert_eq!((delta.kind.as_str(), delta.seq), ("delta", 2));
    assert_eq!(delta.base.as_deref(), Some(full.archive.as_str()));
    assert_eq!(
        (delta.puts, delta.moves, delta.deletes, delta.unchanged),
        (2, 1, 1, 3)
    );
    assert_eq!(seen.keys(Outcome::Delete), vec!["gone.txt"]);
    let copies = seen.keys(Outcome::Copy);
    assert_eq!(copies, vec!["modify.txt", "new/c.txt", "new/name.dat"]);

    // The delta's manifest holds exactly those entries.
    let v = verify(&[PathBuf::from(&delta.volumes[0])]).await.unwrap();
    assert_eq!((v[0].puts, v[0].moves, v[0].deletes), (2, 1, 1));

    let i2 = fx.import(&delta.volumes).await.unwrap();
    assert_eq!(i2.archives[0].outcome, "applied");
    assert_eq!(i2.seq, Some(2));
    assert_eq!(tree(&fx.dst), tree(&fx.src));

    // Importing again changes nothing.
    let before = tree(&fx.dst);
    let again = fx.import(&delta.volumes).await.unwrap();
    assert_eq!(again.archives[0].outcome, "already-applied");
    assert_eq!(tree(&fx.dst), before);

    // No change: an empty delta.
    let (empty, _) = fx.export("three.tar", &fx.opts(Some(&delta.state))).await;
    assert_eq!(
        (empty.puts, empty.moves, empty.deletes, empty.unchanged),
        (0, 0, 0, 6)
    );
}

#[tokio::test]
async fn a_skipped_archive_is_refused_and_nothing_applied() {
    let fx = Fx::new();
    write(&fx.src, "a", b"1");
    let (one, _) = fx.export("1.tar", &fx.opts(None)).await;
    write(&fx.src, "b", b"2");
    let (two, _) = fx.export("2.tar", &fx.opts(Some(&one.state))).await;
    write(&fx.src, "c", b"3");
    let (three, _) = fx.export("3.tar", &fx.opts(Some(&two.state))).await;
    fx.import(&one.volumes).await.unwrap();
    let err = fx.import(&three.volumes).await.unwrap_err().to_string();
    assert!(err.contains("missing archive"), "{err}");
    assert!(!fx.dst.join("c").exists());
    // In one run, in any order given: applied in sequence.
    let both = [three.volumes[0].clone(), two.volumes[0].clone()];
    let s = fx.import(&both).await.unwrap();
    assert_eq!(s.seq, Some(3));
    assert_eq!(tree(&fx.dst), tree(&fx.src));
}

#[tokio::test]
async fn volumes_split_objects_verify_alone_and_reassemble() {
    let fx = Fx::new();
    let big: Vec<u8> = (0..2_500_000u32).map(|i| (i * 31 % 251) as u8).collect();
    write(&fx.src, "big.bin", &big);
    for i in 0..20 {
        write(&fx.src, &format!("small/{i:02}"), &vec![i as u8; 50_000]);
    }
    let mut o = fx.opts(None);
    o.volume_size = Some(1 << 20);
    o.compress = true;
    let (s, _) = fx.export("vols.tar", &o).await;
    assert!(s.volumes.len() >= 3, "{:?}", s.volumes);
    assert!(s.volumes.iter().all(|v| v.ends_with(".tar.zst")));
    for v in &s.volumes {
        let got = verify(&[PathBuf::from(v)]).await.unwrap();
        assert_eq!(got[0].missing.len(), s.volumes.len() - 1);
    }
    // A missing volume: refused before anything is written.
    let some: Vec<String> = s.volumes.iter().skip(1).cloned().collect();
    let err = fx.import(&some).await.unwrap_err().to_string();
    assert!(err.contains("missing: volume 1"), "{err}");
    assert!(tree(&fx.dst).is_empty());
    fx.import(&s.volumes).await.unwrap();
    assert_eq!(tree(&fx.dst), tree(&fx.src));
}

#[tokio::test]
async fn damaged_archives_are_refused_with_the_destination_untouched() {
    let fx = Fx::new();
    write(&fx.src, "a.txt", &vec![b'a'; 10_000]);
    write(&fx.src, "b.txt", &vec![b'b'; 10_000]);
    let (s, _) = fx.export("x.tar", &fx.opts(None)).await;
    let good = std::fs::read(&s.volumes[0]).unwrap();

    // One byte of b.txt's data changed.
    let mut flipped = good.clone();
    let at = good
        .windows(100)
        .rposition(|w| w.iter().all(|b| *b == b'b'))
        .unwrap();
    flipped[at] ^= 1;
    let f = fx.out.join("flipped.tar");
    std::fs::write(&f, &flipped).unwrap();
    let err = fx
        .import(&[f.display().to_string()])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("SHA-256"), "{err}");
    assert!(tree(&fx.dst).is_empty(), "nothing applied, not even a.txt");
    assert!(verify(&[f]).await.is_err());

    // Truncated.
    let t = fx.out.join("truncated.tar");
    std::fs::write(&t, &good[..good.len() - 3000]).unwrap();
    let err = fx
        .import(&[t.display().to_string()])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("truncated"), "{err}");
    assert!(tree(&fx.dst).is_empty());

    // A compressed volume with a byte changed near its start (the manifest) and in its
    // middle (the data): "damaged", naming the volume, never a parse error of the garbage.
    let mut o = fx.opts(None);
    o.compress = true;
    let (z, _) = fx.export("z.tar", &o).await;
    let good = std::fs::read(&z.volumes[0]).unwrap();
    for at in [good.len() / 5, good.len() / 2] {
        let mut bad = good.clone();
        bad[at] ^= 0x55;
        let f = fx.out.join(format!("damaged-{at}.tar.zst"));
        std::fs::write(&f, &bad).unwrap();
        let err = fx
            .import(&[f.display().to_string()])
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("damaged") && err.contains(&format!("damaged-{at}.tar.zst")),
            "byte {at}: {err}"
        );
        assert!(tree(&fx.dst).is_empty(), "byte {at}");
    }

    // Not an archive at all.
    let n = fx.out.join("not.tar");
    std::fs::write(&n, b"hello").unwrap();
    assert!(fx.import(&[n.display().to_string()]).await.is_err());
    assert!(tree(&fx.dst).is_empty());
}

#[tokio::test]
async fn an_archive_of_another_source_is_refused() {
    let fx = Fx::new();
    write(&fx.src, "a", b"1");
    let (one, _) = fx.export("1.tar", &fx.opts(None)).await;
    fx.import(&one.volumes).await.unwrap();
    let mut o = fx.opts(None);
    o.source_id = Some("s3://elsewhere/data/".into());
    let (other, _) = fx.export("other.tar", &o).await;
    let err = fx.import(&other.volumes).await.unwrap_err().to_string();
    assert!(err.contains("s3://elsewhere/data/"), "{err}");
    // A state of another source is refused at export too.
    let mut o = fx.opts(Some(&one.state));
    o.source_id = Some("s3://elsewhere/data/".into());
    let r: Arc<dyn Reporter> = Arc::new(Seen::default());
    let err = export(
        &fx.side(),
        &Output::Path(fx.out.join("z.tar")),
        None,
        &o,
        &r,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("not of s3://elsewhere/data/"), "{err}");
}

#[tokio::test]
async fn deletes_beyond_the_limit_are_refused_before_any_change() {
    let fx = Fx::new();
    for i in 0..10 {
        write(&fx.src, &format!("f{i}"), format!("{i}").as_bytes());
    }
    let (one, _) = fx.export("1.tar", &fx.opts(None)).await;
    fx.import(&one.volumes).await.unwrap();
    for i in 0..8 {
        std::fs::remove_file(fx.src.join(format!("f{i}"))).unwrap();
    }
    write(&fx.src, "added", b"new");
    let (two, _) = fx.export("2.tar", &fx.opts(Some(&one.state))).await;
    assert_eq!(two.deletes, 8);
    let err = fx.import(&two.volumes).await.unwrap_err().to_string();
    assert!(err.contains("refusing to delete 8"), "{err}");
    assert!(!fx.dst.join("added").exists() && fx.dst.join("f0").exists());
}

#[tokio::test]
async fn unsafe_member_names_are_refused() {
    use s3ferry_engine::formats::tar::{Member, TarWriter, VecSink};
    let fx = Fx::new();
    write(&fx.src, "x", b"1");
    let (one, _) = fx.export("1.tar", &fx.opts(None)).await;
    // Rewrite the manifest to name "../evil", with a matching member.
    let v = std::fs::read(&one.volumes[0]).unwrap();
    let text = String::from_utf8_lossy(&v);
    let start = text.find("{\"format\"").unwrap();
    let end = start + text[start..].find('\0').unwrap();
    let manifest = text[start..end].replace("\"key\":\"x\"", "\"key\":\"../evil\"");
    let mut w = TarWriter::new(VecSink::default());
    let body = |b: Vec<u8>| futures::stream::iter([Ok(bytes::Bytes::from(b))]).boxed();
    use futures::StreamExt;
    w.append(
        &Member {
            name: super::format::MANIFEST.into(),
            size: manifest.len() as u64,
            ..Default::default()
        },
        body(manifest.clone().into_bytes()),
    )
    .await
    .unwrap();
    let (sink, _) = w.finish().await.unwrap();
    let f = fx.out.join("evil.tar");
    std::fs::write(&f, sink.data).unwrap();
    let err = fx
        .import(&[f.display().to_string()])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("unsafe key"), "{err}");
    assert!(!fx.dst.parent().unwrap().join("evil").exists());
}

#[tokio::test]
async fn temp_files_of_dead_exports_are_swept_and_live_ones_kept() {
    let fx = Fx::new();
    write(&fx.src, "a", b"1");
    let dead = fx.out.join(".s3ferry-tmp.archive-4000000000-x1");
    let live = fx
        .out
        .join(format!(".s3ferry-tmp.archive-{}-x2", std::process::id()));
    std::fs::write(&dead, b"partial").unwrap();
    std::fs::write(&live, b"in progress").unwrap();
    fx.export("one.tar", &fx.opts(None)).await;
    assert!(!dead.exists(), "a dead export's temp file is removed");
    assert!(live.exists(), "a live export's temp file is kept");
}

#[tokio::test]
async fn keys_a_tar_cannot_hold_fail_alone_and_folder_markers_become_directories() {
    use s3ferry_store::memory::MemoryStore;
    use s3ferry_store::StoreExt;
    let fx = Fx::new();
    let mem = MemoryStore::new();
    mem.put_bytes("p/ok.txt", "fine").await.unwrap();
    mem.put_bytes("p/a//b", "empty segment").await.unwrap();
    mem.put_bytes("p/folder/", "").await.unwrap();
    let side = Side::new(Arc::new(mem), "p/");
    let seen = Arc::new(Seen::default());
    let r: Arc<dyn Reporter> = seen.clone();
    let s = export(
        &side,
        &Output::Path(fx.out.join("m.tar")),
        None,
        &fx.opts(None),
        &r,
    )
    .await
    .unwrap();
    assert_eq!((s.puts, s.failed), (2, 1));
    assert_eq!(seen.keys(Outcome::Fail), vec!["a//b"]);
    fx.import(&s.volumes).await.unwrap();
    assert_eq!(tree(&fx.dst).keys().collect::<Vec<_>>(), vec!["ok.txt"]);
    assert!(fx.dst.join("folder").is_dir());

    // A delta still fails the key (it was never exported), and carries nothing else.
    let delta = fx.opts(Some(&s.state));
    let d = export(&side, &Output::Path(fx.out.join("n.tar")), None, &delta, &r)
        .await
        .unwrap();
    assert_eq!((d.puts, d.failed, d.unchanged), (0, 1, 2));
}

#[tokio::test]
async fn the_state_carried_back_from_the_destination_continues_the_sequence() {
    let fx = Fx::new();
    write(&fx.src, "a", b"1");
    write(&fx.src, "b", b"2");
    let (one, _) = fx.export("1.tar", &fx.opts(None)).await;
    fx.import(&one.volumes).await.unwrap();
    // The export side lost its state: the destination has it.
    std::fs::remove_file(&one.state).unwrap();
    let back = fx.out.join("back.state");
    let h = carry_back(&fx.dest(), &back).await.unwrap();
    assert_eq!((h.seq, h.archive.as_str()), (1, one.archive.as_str()));
    std::fs::remove_file(fx.src.join("a")).unwrap();
    write(&fx.src, "c", b"3");
    let (two, _) = fx
        .export("2.tar", &fx.opts(Some(back.to_str().unwrap())))
        .await;
    assert_eq!(
        (two.seq, two.puts, two.deletes, two.unchanged),
        (2, 1, 1, 1)
    );
    fx.import(&two.volumes).await.unwrap();
    assert_eq!(tree(&fx.dst), tree(&fx.src));
    // A damaged state member is caught by verification.
    let mut bytes = std::fs::read(&two.volumes[0]).unwrap();
    // The state member is the only gzip stream in the tar.
    let at = bytes
        .windows(3)
        .rposition(|w| w == [0x1f, 0x8b, 0x08])
        .unwrap();
    bytes[at + 20] ^= 0xff;
    let f = fx.out.join("bad-state.tar");
    std::fs::write(&f, &bytes).unwrap();
    let err = verify(&[f]).await.unwrap_err().to_string();
    assert!(err.contains("s3ferry-archive.state: SHA-256"), "{err}");
}

/// Rounds of random adds, same-size changes, deletes and moves, each carried by a delta (in
/// volumes, compressed or not): after every import the destination equals the source.
#[tokio::test]
async fn random_rounds_of_changes_keep_the_destination_equal() {
    let fx = Fx::new();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n.max(1)
    };
    let mut names: Vec<String> = Vec::new();
    let mut next = 0u32;
    let mut state: Option<String> = None;
    let mut seen = (0, 0, 0, 0); // puts, moves, deletes, split volumes
    for round in 0..8 {
        let changes = 1 + rnd(12);
        for _ in 0..changes {
            match (rnd(4), names.is_empty()) {
                (0, _) | (_, true) => {
                    let name = format!("d{}/n{next}", rnd(3));
                    next += 1;
                    let size = rnd(40_000) as usize;
                    write(&fx.src, &name, &vec![(next % 251) as u8; size]);
                    names.push(name);
                }
                (1, false) => {
                    let name = &names[rnd(names.len() as u64) as usize];
                    let mut data = std::fs::read(fx.src.join(name)).unwrap();
                    if let Some(b) = data.first_mut() {
                        *b = b.wrapping_add(1);
                    }
                    write(&fx.src, name, &data);
                }
                (2, false) => {
                    let name = names.swap_remove(rnd(names.len() as u64) as usize);
                    std::fs::remove_file(fx.src.join(name)).unwrap();
                }
                _ => {
                    let i = rnd(names.len() as u64) as usize;
                    let to = format!("moved/m{next}");
                    next += 1;
                    std::fs::create_dir_all(fx.src.join("moved")).unwrap();
                    std::fs::rename(fx.src.join(&names[i]), fx.src.join(&to)).unwrap();
                    names[i] = to;
                }
            }
        }
        let mut o = fx.opts(state.as_deref());
        o.volume_size = (rnd(2) == 0).then(|| 16_384 + rnd(60_000));
        o.compress = rnd(2) == 0;
        o.concurrency = 1 + rnd(6) as usize;
        let (s, _) = fx.export(&format!("r{round}.tar"), &o).await;
        let opts = ImportOptions {
            max_delete: MaxDelete::Percent(100.0),
            ..fx.import_opts()
        };
        let paths: Vec<PathBuf> = s.volumes.iter().map(PathBuf::from).collect();
        let r: Arc<dyn Reporter> = Arc::new(Seen::default());
        let got = import(&paths, &fx.dest(), &opts, &fx.journal, &r)
            .await
            .unwrap();
        assert_eq!(got.failed, 0, "round {round}");
        assert_eq!(tree(&fx.dst), tree(&fx.src), "round {round}: {s:?}");
        seen.0 += s.puts;
        seen.1 += s.moves;
        seen.2 += s.deletes;
        seen.3 += u64::from(s.volumes.len() > 1);
        state = Some(s.state);
    }
    assert!(
        seen.0 > 0 && seen.1 > 0 && seen.2 > 0 && seen.3 > 0,
        "{seen:?}"
    );
}
