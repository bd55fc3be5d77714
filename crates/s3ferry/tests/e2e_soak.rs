//! Soak: sync a 2,000-file tree with a few multipart files up and down while the process is
//! killed (SIGKILL) at random points and the fault layer throttles and resets requests; after
//! the last rerun the two sides must be identical with nothing left behind. Short in the test
//! suite; `scripts/soak` runs it long (S3FERRY_SOAK_KILLS, S3FERRY_SOAK_SEED).
#![allow(clippy::print_stderr)]

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// A small deterministic RNG (xorshift) so a failing soak can be replayed from its seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

#[derive(Default, Debug)]
struct Counts {
    kills: u32,
    finished_under_faults: u32,
    injected_failures: usize,
}

/// Run `sync ARGS` under faults `kills` times, killing each run at a random moment (or letting
/// it finish when it is quicker), then once without faults: that last run must succeed.
fn soak(cx: &Ctx, args: &[&str], kills: u32, rng: &mut Rng, c: &mut Counts) {
    let mut done = 0;
    while done < kills {
        let seed = rng.next() % 1_000_000;
        let mut cmd = cx.cmd();
        cmd.args(["--json", "--no-progress", "sync", "--part-size", "5MiB"])
            .args(args)
            .env(
                "S3FERRY_FAULTS",
                format!("chaos=0.3,seed={seed}; get:reset=3000@5x3"),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn");
        let deadline = Instant::now() + Duration::from_millis(rng.range(150, 2500));
        let finished = loop {
            if let Some(_st) = child.try_wait().expect("wait") {
                break true;
            }
            if Instant::now() >= deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if finished {
            let mut out = String::new();
            if let Some(mut o) = child.stdout.take() {
                use std::io::Read;
                let _ = o.read_to_string(&mut out);
            }
            c.finished_under_faults += 1;
            c.injected_failures += out.matches("injected").count();
        } else {
            kill9(&mut child);
            c.kills += 1;
        }
        done += 1;
    }
    let r = cx.sync(args);
    r.assert_ok();
}

#[cfg(feature = "fault")]
#[test]
fn sync_survives_kills_and_faults_in_both_directions() {
    let Some(cx) = Ctx::new() else { return };
    let kills: u32 = std::env::var("S3FERRY_SOAK_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let seed: u64 = std::env::var("S3FERRY_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_1234);
    let mut rng = Rng(seed | 1);
    let b = cx.bucket("soak");
    let src = cx.path("src");
    let mut files: BTreeMap<String, Vec<u8>> = (0..2000)
        .map(|i| {
            (
                format!("d{:02}/f{i:04}.dat", i % 20),
                format!("file {i}").into_bytes(),
            )
        })
        .collect();
    for n in 0..3 {
        files.insert(
            format!("big/m{n}.bin"),
            random_bytes(11 * 1024 * 1024, n + 1),
        );
    }
    write_tree(&src, &files);
    let mut c = Counts::default();

    // Up.
    soak(&cx, &[s(&src), &b.uri("p")], kills, &mut rng, &mut c);
    assert_eq!(
        b.objects("p/"),
        files,
        "destination identical to the source"
    );
    assert!(
        b.uploads().is_empty(),
        "no multipart upload left open: {:?}",
        b.uploads()
    );
    let again = cx.sync(&[s(&src), &b.uri("p")]);
    again.assert_ok();
    assert_eq!(again.n("copied"), 0, "nothing copied twice: {again}");

    // Down.
    let dst = cx.path("dst");
    soak(&cx, &[&b.uri("p"), s(&dst)], kills, &mut rng, &mut c);
    assert_eq!(read_tree(&dst), files, "download identical to the source");
    let leftovers: Vec<String> = all_entries(&dst)
        .into_iter()
        .filter(|p| p.contains(".s3ferry-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");

    eprintln!(
        "soak (seed {seed:#x}): {} kills survived, {} runs finished under faults with {} injected failures reported, {} objects verified each way",
        c.kills,
        c.finished_under_faults,
        c.injected_failures,
        files.len()
    );
    assert!(c.kills + c.finished_under_faults >= 2 * kills);
}
