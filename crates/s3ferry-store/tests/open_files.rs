//! The local store out of file descriptors (EMFILE): every operation fails as `Throttled` —
//! retryable, so the retry layer backs off and the adaptive limit lowers the number in flight —
//! never as a final per-file error; a listing's error names no key, so the retry layer lists
//! again after the last key instead of reporting a directory as unreadable. Once descriptors
//! are free again the same calls succeed.
//!
//! Its own test binary: it lowers this process's open-files limit and uses it all up.

use std::fs::File;

use futures::StreamExt;
use s3ferry_store::local::LocalStore;
use s3ferry_store::{ErrorKind, ListOptions, Store, StoreExt};

#[tokio::test(flavor = "current_thread")]
async fn out_of_descriptors_is_throttled_and_passes() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path());
    store.put_bytes("d/a.txt", "a").await.unwrap();
    store.put_bytes("d/b.txt", "b").await.unwrap();

    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let old = getrlimit(Resource::Nofile);
    let low = Rlimit {
        current: Some(256),
        maximum: old.maximum,
    };
    setrlimit(Resource::Nofile, low).unwrap();
    // Use up every descriptor.
    let mut held = Vec::new();
    loop {
        match File::open("/dev/null") {
            Ok(f) => held.push(f),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
            Err(e) => panic!("open: {e}"),
        }
    }

    let e = store.get_bytes("d/a.txt").await.unwrap_err();
    assert_eq!((e.kind, e.retryable()), (ErrorKind::Throttled, true), "{e}");
    assert!(e.to_string().contains("ulimit -n"), "{e}");
    let e = store.put_bytes("d/c.txt", "c").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Throttled, "{e}");
    for prefix in ["", "d/"] {
        let items: Vec<_> = store.list(ListOptions::prefix(prefix)).collect().await;
        assert_eq!(items.len(), 1, "{items:?}");
        let e = items[0].as_ref().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Throttled, "{e}");
        assert_eq!(
            e.key, None,
            "a listing out of descriptors is retried whole: {e}"
        );
    }

    drop(held);
    setrlimit(Resource::Nofile, old).unwrap();
    assert_eq!(&store.get_bytes("d/a.txt").await.unwrap()[..], b"a");
    store.put_bytes("d/c.txt", "c").await.unwrap();
    let keys: Vec<String> = store
        .list(ListOptions::prefix(""))
        .map(|r| r.unwrap().key)
        .collect()
        .await;
    assert_eq!(keys, ["d/a.txt", "d/b.txt", "d/c.txt"]);
}
