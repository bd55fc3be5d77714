//! The one conformance suite every [`Store`] runs (memory, local, S3 on the local server).
//!
//! Each behaviour is a `pub async fn(store, prefix)`; it writes only under `prefix` and selects
//! itself (or parts of itself) by [`Store::capabilities`]. [`run_all`] runs them all under a
//! fresh prefix and finally checks that deleting everything leaves nothing behind.
//!
//! Not covered on purpose: keys with empty segments (`a//b`) — SeaweedFS stores `a//b` as
//! `a/b`, local stores refuse them; see DESIGN.md.
//! Failures panic with a message naming the behaviour (this is test support code).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use s3ferry_store::checksum::{crc64nvme, crc64nvme_combine, etag_shape, md5_hex, EtagShape, MIB};
use s3ferry_store::{
    Capabilities, CopyOptions, CopySource, ErrorKind, GetOptions, ListOptions, ObjectMeta,
    PartInfo, PartLayout, PutMode, PutOptions, Result, Store, StoreError, StoreExt,
};

/// Run every behaviour under a fresh prefix, then delete everything it wrote.
pub async fn run_all(store: &dyn Store) {
    let base = crate::unique_prefix("conformance");
    let p = |name: &str| format!("{base}{name}/");
    put_get_roundtrip(store, &p("roundtrip")).await;
    head_fields(store, &p("head")).await;
    list_sorted(store, &p("list")).await;
    list_pagination(store, &p("pages")).await;
    ranged_get(store, &p("range")).await;
    get_if_match(store, &p("ifmatch")).await;
    get_missing(store, &p("missing")).await;
    conditional_put(store, &p("cond")).await;
    multipart_upload(store, &p("mpu")).await;
    multipart_abort_and_invisible(store, &p("mpu-abort")).await;
    multipart_bad_checksums(store, &p("mpu-badcrc")).await;
    multipart_growing_streamed_parts(store, &p("mpu-grow")).await;
    multipart_conditional_complete(store, &p("mpu-cond")).await;
    copy_object(store, &p("copy")).await;
    copy_if_match(store, &p("copy-ifmatch")).await;
    upload_part_copy(store, &p("upc")).await;
    delete_many(store, &p("delete")).await;
    crc64_in_head(store, &p("crc")).await;
    tags_roundtrip(store, &p("tags")).await;
    delete_everything(store, &base).await;
}

// ---------------------------------------------------------------------------------------------
// helpers

fn ok<T>(r: Result<T>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: unexpected error: {e} [kind {:?}]", e.kind),
    }
}

fn expect_kind<T>(r: Result<T>, kinds: &[ErrorKind], what: &str) -> StoreError {
    match r {
        Ok(_) => panic!("{what}: expected an error of kind {kinds:?}, got success"),
        Err(e) if kinds.contains(&e.kind) => e,
        Err(e) => panic!("{what}: expected kind {kinds:?}, got {:?}: {e}", e.kind),
    }
}

/// Deterministic non-repeating-ish content.
pub fn ramp(len: usize, seed: u8) -> Bytes {
    let mut x: u32 = 0x9e37_79b9 ^ seed as u32;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

fn bucket_of(store: &dyn Store) -> String {
    store.bucket().unwrap_or_default().to_string()
}

async fn list_keys(store: &dyn Store, opts: ListOptions) -> Vec<String> {
    let metas: Vec<ObjectMeta> = ok(store.list(opts).try_collect().await, "list");
    metas.into_iter().map(|m| m.key).collect()
}

fn list_opts(prefix: &str, start_after: Option<String>) -> ListOptions {
    let mut o = ListOptions::prefix(prefix);
    o.start_after = start_after;
    o
}

fn sorted(mut v: Vec<(String, String)>) -> Vec<(String, String)> {
    v.sort();
    v
}

/// An mtime with nanoseconds, to check it survives exactly.
fn test_mtime() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::new(1_700_000_123, 123_456_789)
}

fn caps(store: &dyn Store) -> Capabilities {
    store.capabilities()
}

// ---------------------------------------------------------------------------------------------
// behaviours

/// Put then get returns the same bytes, for plain, empty and awkward keys.
pub async fn put_get_roundtrip(store: &dyn Store, prefix: &str) {
    // A 900-byte key made of segments local file systems accept (<= 255 bytes each).
    let mut long = format!("{prefix}long");
    while long.len() + 201 <= 900 {
        long.push('/');
        long.push_str(&"k".repeat(200));
    }
    match 900 - long.len() {
        0 => {}
        1 => long.push('k'),
        r => {
            long.push('/');
            long.push_str(&"k".repeat(r - 1));
        }
    }
    assert_eq!(long.len(), 900);
    let keys = [
        format!("{prefix}plain.txt"),
        format!("{prefix}with space/a b.txt"),
        format!("{prefix}unicode/ü日本語 é.txt"),
        format!("{prefix}plus+sign+"),
        format!("{prefix}percent%20literal%"),
        format!("{prefix}amp&eq=semi;comma,q?hash#"),
        format!("{prefix}tilde~star*paren(1)'quote'"),
        long,
    ];
    for (i, k) in keys.iter().enumerate() {
        let data = ramp(100 + i * 37, i as u8);
        ok(
            store.put(k, data.clone(), PutOptions::new()).await,
            &format!("put {k:?}"),
        );
        let got = ok(store.get_bytes(k).await, &format!("get {k:?}"));
        assert!(
            got == data,
            "roundtrip {k:?}: bytes differ ({} vs {} bytes)",
            got.len(),
            data.len()
        );
        let h = ok(store.head(k).await, &format!("head {k:?}"));
        assert_eq!(h.key, *k, "head key");
        assert_eq!(h.size, data.len() as u64, "head size of {k:?}");
    }
    // Every key lists back exactly, in byte order.
    let mut want: Vec<String> = keys.to_vec();
    want.sort();
    assert_eq!(
        list_keys(store, ListOptions::prefix(prefix)).await,
        want,
        "awkward keys list back exactly"
    );

    // Empty object.
    let empty = format!("{prefix}empty");
    ok(
        store.put(&empty, Bytes::new(), PutOptions::new()).await,
        "put empty",
    );
    let got = ok(store.get_bytes(&empty).await, "get empty");
    assert!(
        got.is_empty(),
        "empty object came back with {} bytes",
        got.len()
    );
    assert_eq!(ok(store.head(&empty).await, "head empty").size, 0);
    if caps(store).md5_etags {
        let h = ok(store.head(&empty).await, "head empty");
        assert_eq!(
            h.etag.as_deref(),
            Some(md5_hex(b"").as_str()),
            "etag of the empty object"
        );
    }

    // Overwrite replaces.
    let k = &keys[0];
    ok(
        store
            .put(k, Bytes::from_static(b"second"), PutOptions::new())
            .await,
        "overwrite",
    );
    assert_eq!(
        ok(store.get_bytes(k).await, "get overwritten"),
        Bytes::from_static(b"second")
    );
}

/// HEAD reports size, ETag, mtime (exact to the nanosecond), content type and user metadata.
pub async fn head_fields(store: &dyn Store, prefix: &str) {
    let c = caps(store);
    let k = format!("{prefix}obj.txt");
    let data = ramp(4321, 7);
    let mut md = BTreeMap::new();
    md.insert("color".to_string(), "blue".to_string());
    md.insert("x-custom".to_string(), "v 1".to_string());
    let opts = PutOptions::new()
        .content_type(Some("text/x-s3ferry".into()))
        .metadata(md.clone())
        .mtime(Some(test_mtime()));
    let before = SystemTime::now() - Duration::from_secs(300);
    let put = ok(store.put(&k, data.clone(), opts).await, "put");
    let h = ok(store.head(&k).await, "head");
    assert_eq!(h.key, k);
    assert_eq!(h.size, data.len() as u64, "size");
    assert_eq!(
        h.mtime,
        Some(test_mtime()),
        "mtime from PutOptions.mtime round-trips exactly"
    );
    if !c.local {
        let lm = h.last_modified.unwrap_or(SystemTime::UNIX_EPOCH);
        assert!(lm > before, "last_modified {lm:?} is recent");
    }
    if c.md5_etags {
        assert_eq!(
            h.etag.as_deref(),
            Some(md5_hex(&data).as_str()),
            "single-part ETag is the MD5"
        );
        assert_eq!(put.etag, h.etag, "put returns the ETag head reports");
    }
    if !c.local {
        assert_eq!(
            h.content_type.as_deref(),
            Some("text/x-s3ferry"),
            "content type"
        );
        let got = h.metadata.clone().unwrap_or_default();
        for (mk, mv) in &md {
            assert_eq!(got.get(mk), Some(mv), "metadata {mk:?} (have {got:?})");
        }
    }
    // GET reports the same object fields.
    let g = ok(store.get(&k, GetOptions::new()).await, "get");
    assert_eq!(g.meta.size, data.len() as u64, "get meta size");
    assert_eq!(g.range, 0..data.len() as u64, "get range");
    assert_eq!(g.meta.mtime, Some(test_mtime()), "get meta mtime");
    if c.md5_etags {
        assert_eq!(g.meta.etag, h.etag, "get etag");
    }
    assert!(ok(g.bytes().await, "get body") == data);
}

/// Listings are sorted in byte order (`a-b` < `a.txt` < `a/x`), honour prefix and start_after.
pub async fn list_sorted(store: &dyn Store, prefix: &str) {
    let names = ["b", "a/y/z", "é", "a.txt", "Z", "ab", "a/x", "a-b"];
    for (i, n) in names.iter().enumerate() {
        ok(
            store
                .put(
                    &format!("{prefix}{n}"),
                    ramp(10 + i, i as u8),
                    PutOptions::new(),
                )
                .await,
            "put",
        );
    }
    let full = |v: &[&str]| v.iter().map(|n| format!("{prefix}{n}")).collect::<Vec<_>>();
    let all = full(&["Z", "a-b", "a.txt", "a/x", "a/y/z", "ab", "b", "é"]);
    assert_eq!(
        list_keys(store, ListOptions::prefix(prefix)).await,
        all,
        "whole listing in byte order"
    );
    assert_eq!(
        list_keys(store, ListOptions::prefix(format!("{prefix}a"))).await,
        full(&["a-b", "a.txt", "a/x", "a/y/z", "ab"]),
        "prefix 'a'"
    );
    assert_eq!(
        list_keys(store, ListOptions::prefix(format!("{prefix}a/"))).await,
        full(&["a/x", "a/y/z"]),
        "prefix 'a/'"
    );
    assert_eq!(
        list_keys(store, list_opts(prefix, Some(format!("{prefix}a.txt")))).await,
        full(&["a/x", "a/y/z", "ab", "b", "é"]),
        "start_after an existing key"
    );
    assert_eq!(
        list_keys(store, list_opts(prefix, Some(format!("{prefix}a0")))).await,
        full(&["ab", "b", "é"]),
        "start_after a key that does not exist"
    );
    assert_eq!(
        list_keys(
            store,
            list_opts(&format!("{prefix}a/"), Some(format!("{prefix}a/x")))
        )
        .await,
        full(&["a/y/z"]),
        "prefix and start_after together"
    );
    assert!(
        list_keys(store, list_opts(prefix, Some(format!("{prefix}z"))))
            .await
            .len()
            == 1,
        "only 'é' after 'z'"
    );
    assert!(
        list_keys(store, ListOptions::prefix(format!("{prefix}nothing-here/")))
            .await
            .is_empty(),
        "empty prefix"
    );

    // Listing entries carry size (and the ETag where it is an MD5).
    let metas: Vec<ObjectMeta> = ok(
        store.list(ListOptions::prefix(prefix)).try_collect().await,
        "list",
    );
    let c = caps(store);
    for m in &metas {
        let i = names
            .iter()
            .position(|n| format!("{prefix}{n}") == m.key)
            .unwrap_or(0);
        assert_eq!(m.size, 10 + i as u64, "listed size of {:?}", m.key);
        if c.md5_etags {
            assert_eq!(
                m.etag.as_deref(),
                Some(md5_hex(&ramp(10 + i, i as u8)).as_str()),
                "listed etag of {:?}",
                m.key
            );
        }
        if !c.local {
            assert!(
                m.last_modified.is_some(),
                "listed last_modified of {:?}",
                m.key
            );
        }
    }
}

/// More than one page (1000 keys on S3): nothing missed or doubled, start_after mid-way works.
pub async fn list_pagination(store: &dyn Store, prefix: &str) {
    const N: usize = 1005;
    let keys: Vec<String> = (0..N).map(|i| format!("{prefix}k{i:05}")).collect();
    let results: Vec<Result<_>> = futures::stream::iter(keys.iter().cloned())
        .map(|k| async move {
            store
                .put(&k, Bytes::from(k.clone().into_bytes()), PutOptions::new())
                .await
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for r in results {
        ok(r, "put for pagination");
    }
    assert_eq!(
        list_keys(store, ListOptions::prefix(prefix)).await,
        keys,
        "all {N} keys, in order"
    );
    let after = list_keys(store, list_opts(prefix, Some(keys[2].clone()))).await;
    assert_eq!(after, keys[3..].to_vec(), "start_after the 3rd key");
    let after = list_keys(store, list_opts(prefix, Some(keys[999].clone()))).await;
    assert_eq!(after, keys[1000..].to_vec(), "start_after the 1000th key");
}

/// Ranged GETs return exactly the bytes asked for and say which they cover.
pub async fn ranged_get(store: &dyn Store, prefix: &str) {
    let k = format!("{prefix}ranged");
    let data = ramp(1000, 3);
    ok(store.put(&k, data.clone(), PutOptions::new()).await, "put");
    for r in [0..10u64, 400..600, 990..1000, 999..1000, 0..1000] {
        let g = ok(
            store.get(&k, GetOptions::new().range(r.clone())).await,
            &format!("get {r:?}"),
        );
        assert_eq!(g.range, r, "range covered");
        assert_eq!(
            g.meta.size, 1000,
            "size of the whole object in a ranged get of {r:?}"
        );
        let b = ok(g.bytes().await, "ranged body");
        assert!(
            b == data.slice(r.start as usize..r.end as usize),
            "bytes of range {r:?}"
        );
    }
    // The contract of `covered_range`: a range extending past the end is clamped, and the
    // answer says what it covers.
    for (r, covered) in [
        (990..1010u64, 990..1000u64),
        (0..5000, 0..1000),
        (999..u64::MAX, 999..1000),
    ] {
        let g = ok(
            store.get(&k, GetOptions::new().range(r.clone())).await,
            &format!("get {r:?} (past the end)"),
        );
        assert_eq!(g.range, covered, "range covered by a get of {r:?}");
        assert_eq!(g.meta.size, 1000, "size in a get of {r:?}");
        let b = ok(g.bytes().await, "clamped body");
        assert!(
            b == data.slice(covered.start as usize..covered.end as usize),
            "bytes of range {r:?}"
        );
    }
    // An empty range inside (or at the end of) the object is an empty body.
    for r in [500..500u64, 1000..1000] {
        let g = ok(
            store.get(&k, GetOptions::new().range(r.clone())).await,
            &format!("get empty {r:?}"),
        );
        assert_eq!(g.range, r);
        assert!(ok(g.bytes().await, "empty body").is_empty());
    }
    // Starting at or beyond the end is an error (S3: 416 InvalidRange), not an empty body.
    for r in [1000..1010u64, 1001..1010, 5000..6000, 1001..1001] {
        expect_kind(
            store.get(&k, GetOptions::new().range(r.clone())).await,
            &[ErrorKind::InvalidInput],
            &format!("range {r:?} starting past the end"),
        );
    }
    // An empty object has no byte to start at.
    let empty = format!("{prefix}empty");
    ok(
        store.put(&empty, Bytes::new(), PutOptions::new()).await,
        "put empty",
    );
    expect_kind(
        store.get(&empty, GetOptions::new().range(0..10)).await,
        &[ErrorKind::InvalidInput],
        "range of an empty object",
    );
    let g = ok(
        store.get(&empty, GetOptions::new()).await,
        "get empty object",
    );
    assert_eq!(g.range, 0..0);
}

/// GET pinned with If-Match: the right ETag reads, a wrong one is PreconditionFailed.
pub async fn get_if_match(store: &dyn Store, prefix: &str) {
    if !caps(store).conditional_writes {
        return;
    }
    let k = format!("{prefix}pinned");
    let data = ramp(2000, 4);
    ok(store.put(&k, data.clone(), PutOptions::new()).await, "put");
    let etag = ok(store.head(&k).await, "head").etag.unwrap_or_default();
    assert!(!etag.is_empty(), "head has an ETag");
    let g = ok(
        store
            .get(&k, GetOptions::new().if_match(Some(etag.clone())))
            .await,
        "get with right etag",
    );
    assert!(ok(g.bytes().await, "body") == data);
    let g = ok(
        store
            .get(
                &k,
                GetOptions::new().range(10..20).if_match(Some(etag.clone())),
            )
            .await,
        "ranged get pinned",
    );
    assert!(ok(g.bytes().await, "body") == data.slice(10..20));
    let wrong = "0123456789abcdef0123456789abcdef".to_string();
    expect_kind(
        store
            .get(&k, GetOptions::new().if_match(Some(wrong.clone())))
            .await,
        &[ErrorKind::PreconditionFailed],
        "get with wrong etag",
    );
    expect_kind(
        store
            .get(&k, GetOptions::new().range(0..5).if_match(Some(wrong)))
            .await,
        &[ErrorKind::PreconditionFailed],
        "ranged get with wrong etag",
    );
    // The object changed: the old ETag no longer reads.
    ok(
        store.put(&k, ramp(2000, 5), PutOptions::new()).await,
        "overwrite",
    );
    expect_kind(
        store
            .get(&k, GetOptions::new().range(0..5).if_match(Some(etag)))
            .await,
        &[ErrorKind::PreconditionFailed],
        "get pinned to a replaced version",
    );
}

/// Missing objects are NotFound for get and head.
pub async fn get_missing(store: &dyn Store, prefix: &str) {
    let k = format!("{prefix}does-not-exist");
    let e = expect_kind(
        store.get(&k, GetOptions::new()).await,
        &[ErrorKind::NotFound],
        "get missing",
    );
    assert_eq!(e.key.as_deref(), Some(k.as_str()), "error names the key");
    expect_kind(store.head(&k).await, &[ErrorKind::NotFound], "head missing");
    expect_kind(
        store.get(&k, GetOptions::new().range(0..10)).await,
        &[ErrorKind::NotFound],
        "ranged get missing",
    );
}

/// PutMode::Create and PutMode::Update (compare-and-swap).
pub async fn conditional_put(store: &dyn Store, prefix: &str) {
    if !caps(store).conditional_writes {
        return;
    }
    let k = format!("{prefix}cas");
    let r1 = ok(
        store
            .put(
                &k,
                Bytes::from_static(b"v1"),
                PutOptions::new().mode(PutMode::Create),
            )
            .await,
        "create new",
    );
    expect_kind(
        store
            .put(
                &k,
                Bytes::from_static(b"v2"),
                PutOptions::new().mode(PutMode::Create),
            )
            .await,
        &[ErrorKind::AlreadyExists],
        "create over existing",
    );
    assert_eq!(
        ok(store.get_bytes(&k).await, "get"),
        Bytes::from_static(b"v1"),
        "failed create changed nothing"
    );
    let etag = r1
        .etag
        .clone()
        .or(ok(store.head(&k).await, "head").etag)
        .unwrap_or_default();
    expect_kind(
        store
            .put(
                &k,
                Bytes::from_static(b"v3"),
                PutOptions::new().mode(PutMode::Update {
                    etag: "0".repeat(32),
                }),
            )
            .await,
        &[ErrorKind::PreconditionFailed],
        "update with wrong etag",
    );
    assert_eq!(
        ok(store.get_bytes(&k).await, "get"),
        Bytes::from_static(b"v1"),
        "failed update changed nothing"
    );
    let r2 = ok(
        store
            .put(
                &k,
                Bytes::from_static(b"v4"),
                PutOptions::new().mode(PutMode::Update { etag: etag.clone() }),
            )
            .await,
        "update with right etag",
    );
    assert_eq!(
        ok(store.get_bytes(&k).await, "get"),
        Bytes::from_static(b"v4")
    );
    assert_ne!(r2.etag, r1.etag, "new content, new etag");
    // The old etag is now stale.
    expect_kind(
        store
            .put(
                &k,
                Bytes::from_static(b"v5"),
                PutOptions::new().mode(PutMode::Update { etag }),
            )
            .await,
        &[ErrorKind::PreconditionFailed],
        "update with a stale etag",
    );
    // Update of a missing object: S3 says 404, others 412; both refuse.
    expect_kind(
        store
            .put(
                &format!("{prefix}cas-missing"),
                Bytes::from_static(b"x"),
                PutOptions::new().mode(PutMode::Update {
                    etag: "0".repeat(32),
                }),
            )
            .await,
        &[ErrorKind::PreconditionFailed, ErrorKind::NotFound],
        "update of a missing object",
    );
}

/// Three parts (5 MiB, 5 MiB, 1 KiB) with part and full-object CRC64NVME.
pub async fn multipart_upload(store: &dyn Store, prefix: &str) {
    let c = caps(store);
    let k = format!("{prefix}big.bin");
    let part = 5 * MIB;
    let parts_data = [
        ramp(part as usize, 1),
        ramp(part as usize, 2),
        ramp(1024, 3),
    ];
    let mut whole = Vec::new();
    for p in &parts_data {
        whole.extend_from_slice(p);
    }
    let whole_crc = crc64nvme(&whole);
    let opts = PutOptions::new()
        .content_type(Some("application/x-test".into()))
        .mtime(Some(test_mtime()));
    let id = ok(
        store
            .create_multipart(&k, opts, PartLayout::Uniform(part))
            .await,
        "create_multipart",
    );
    let mut infos = Vec::new();
    for (i, d) in parts_data.iter().enumerate() {
        let n = i as u32 + 1;
        let info = ok(
            store
                .upload_part(&k, &id, n, d.clone(), Some(crc64nvme(d)))
                .await,
            &format!("upload part {n}"),
        );
        assert_eq!(info.part_number, n);
        if let Some(pc) = info.crc64nvme {
            assert_eq!(pc, crc64nvme(d), "part {n} CRC echoed");
        }
        infos.push(info);
    }
    let res = ok(
        store
            .complete_multipart(&k, &id, infos, Some(whole_crc), PutMode::Overwrite)
            .await,
        "complete_multipart",
    );
    if let Some(rc) = res.crc64nvme {
        assert_eq!(rc, whole_crc, "complete returns the full-object CRC");
    }
    let got = ok(store.get_bytes(&k).await, "get");
    assert!(
        got.len() == whole.len() && got[..] == whole[..],
        "multipart content ({} vs {} bytes)",
        got.len(),
        whole.len()
    );
    let h = ok(store.head(&k).await, "head");
    assert_eq!(h.size, whole.len() as u64);
    assert_eq!(h.mtime, Some(test_mtime()), "mtime set at create_multipart");
    if c.md5_etags {
        let e = h.etag.clone().unwrap_or_default();
        assert_eq!(
            etag_shape(&e),
            EtagShape::Multipart(3),
            "multipart etag shape of {e:?}"
        );
        let md5s: Vec<String> = parts_data.iter().map(|d| md5_hex(d)).collect();
        assert_eq!(
            e,
            s3ferry_store::checksum::multipart_etag(&md5s),
            "multipart etag value"
        );
    }
    if c.crc64nvme {
        assert_eq!(
            h.crc64nvme,
            Some(whole_crc),
            "head reports the full-object CRC64NVME of a multipart object"
        );
    }
    if !c.local {
        assert_eq!(h.content_type.as_deref(), Some("application/x-test"));
    }
    let pending = ok(store.list_multipart(prefix).await, "list_multipart");
    assert!(
        !pending.iter().any(|u| u.upload_id == id),
        "completed upload no longer listed"
    );
}

/// A part with a wrong CRC64NVME is refused; a wrong full-object CRC fails the completion and
/// leaves no object.
pub async fn multipart_bad_checksums(store: &dyn Store, prefix: &str) {
    let k = format!("{prefix}bad.bin");
    let part = 5 * MIB;
    let d1 = ramp(part as usize, 51);
    let d2 = ramp(2048, 52);
    let id = ok(
        store
            .create_multipart(&k, PutOptions::new(), PartLayout::Uniform(part))
            .await,
        "create_multipart",
    );
    expect_kind(
        store
            .upload_part(&k, &id, 1, d1.clone(), Some(crc64nvme(&d1) ^ 1))
            .await,
        &[ErrorKind::Corrupt, ErrorKind::InvalidInput],
        "upload_part with a wrong CRC64NVME",
    );
    let p1 = ok(
        store
            .upload_part(&k, &id, 1, d1.clone(), Some(crc64nvme(&d1)))
            .await,
        "part 1",
    );
    let p2 = ok(
        store
            .upload_part(&k, &id, 2, d2.clone(), Some(crc64nvme(&d2)))
            .await,
        "part 2",
    );
    let whole = crc64nvme_combine(crc64nvme(&d1), crc64nvme(&d2), d2.len() as u64);
    expect_kind(
        store
            .complete_multipart(
                &k,
                &id,
                vec![p1.clone(), p2.clone()],
                Some(whole ^ 1),
                PutMode::Overwrite,
            )
            .await,
        &[ErrorKind::Corrupt, ErrorKind::InvalidInput],
        "complete with a wrong full-object CRC64NVME",
    );
    expect_kind(
        store.head(&k).await,
        &[ErrorKind::NotFound],
        "no object after a failed completion",
    );
    // The upload may or may not survive a refused completion; clean it up either way.
    ok(store.abort_multipart(&k, &id).await, "abort");
}

/// An upload with parts but not completed is invisible; abort removes it from list_multipart.
pub async fn multipart_abort_and_invisible(store: &dyn Store, prefix: &str) {
    let k = format!("{prefix}unfinished.bin");
    let part = 5 * MIB;
    let id = ok(
        store
            .create_multipart(&k, PutOptions::new(), PartLayout::Uniform(part))
            .await,
        "create_multipart",
    );
    let d = ramp(part as usize, 9);
    ok(
        store
            .upload_part(&k, &id, 1, d.clone(), Some(crc64nvme(&d)))
            .await,
        "upload part",
    );
    expect_kind(
        store.head(&k).await,
        &[ErrorKind::NotFound],
        "head of an unfinished upload",
    );
    expect_kind(
        store.get(&k, GetOptions::new()).await,
        &[ErrorKind::NotFound],
        "get of an unfinished upload",
    );
    assert!(
        list_keys(store, ListOptions::prefix(prefix))
            .await
            .is_empty(),
        "unfinished upload not listed"
    );
    let pending = ok(store.list_multipart(prefix).await, "list_multipart");
    assert!(
        pending.iter().any(|u| u.upload_id == id),
        "unfinished upload is in list_multipart ({pending:?})"
    );
    ok(store.abort_multipart(&k, &id).await, "abort");
    let pending = ok(
        store.list_multipart(prefix).await,
        "list_multipart after abort",
    );
    assert!(
        !pending.iter().any(|u| u.upload_id == id),
        "aborted upload gone from list_multipart"
    );
    assert!(
        list_keys(store, ListOptions::prefix(prefix))
            .await
            .is_empty(),
        "nothing visible after abort"
    );
    expect_kind(
        store.head(&k).await,
        &[ErrorKind::NotFound],
        "head after abort",
    );
}

/// Parts that grow (a stream of unknown length), sent out of order and partly as streams of
/// small chunks, make the object in part order; only the last part may be short.
pub async fn multipart_growing_streamed_parts(store: &dyn Store, prefix: &str) {
    let k = format!("{prefix}grown.bin");
    let layout = PartLayout::Doubling {
        base: 5 * MIB,
        every: 1,
    };
    let data = [
        ramp(5 * MIB as usize, 21),
        ramp(10 * MIB as usize, 22),
        ramp(3 * MIB as usize + 7, 23),
    ];
    let id = ok(
        store.create_multipart(&k, PutOptions::new(), layout).await,
        "create_multipart",
    );
    let mut infos = Vec::new();
    // Part 3 first, then 1, then 2 as a stream of 64 KiB chunks.
    for n in [3u32, 1, 2] {
        let d = data[n as usize - 1].clone();
        let info = if n == 2 {
            let chunks: Vec<Result<Bytes>> = d
                .chunks(64 * 1024)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            store
                .upload_part_stream(
                    &k,
                    &id,
                    n,
                    d.len() as u64,
                    futures::stream::iter(chunks).boxed(),
                )
                .await
        } else {
            store
                .upload_part(&k, &id, n, d.clone(), Some(crc64nvme(&d)))
                .await
        };
        let info = ok(info, &format!("upload part {n}"));
        if let Some(c) = info.crc64nvme {
            assert_eq!(c, crc64nvme(&d), "part {n} CRC");
        }
        infos.push(info);
    }
    infos.sort_by_key(|p| p.part_number);
    let whole: Vec<u8> = data.iter().flat_map(|d| d.iter().copied()).collect();
    ok(
        store
            .complete_multipart(&k, &id, infos, Some(crc64nvme(&whole)), PutMode::Overwrite)
            .await,
        "complete",
    );
    let got = ok(store.get_bytes(&k).await, "get");
    assert!(got[..] == whole[..], "grown multipart content");
    // A streamed part whose body is shorter than announced is refused.
    let id = ok(
        store
            .create_multipart(&k, PutOptions::new(), PartLayout::Uniform(5 * MIB))
            .await,
        "create_multipart",
    );
    let short: Vec<Result<Bytes>> = vec![Ok(ramp(1000, 1))];
    expect_kind(
        store
            .upload_part_stream(&k, &id, 1, 5 * MIB, futures::stream::iter(short).boxed())
            .await,
        &[ErrorKind::Corrupt, ErrorKind::InvalidInput],
        "short streamed part",
    );
    ok(store.abort_multipart(&k, &id).await, "abort");
    assert_eq!(ok(store.get_bytes(&k).await, "get").len(), whole.len());
}

/// A create-only multipart upload fails at completion when the key exists meanwhile, and
/// leaves the existing object as it was.
pub async fn multipart_conditional_complete(store: &dyn Store, prefix: &str) {
    let k = format!("{prefix}cond.bin");
    let id = ok(
        store
            .create_multipart(&k, PutOptions::new(), PartLayout::Uniform(5 * MIB))
            .await,
        "create_multipart",
    );
    let d = ramp(1000, 31);
    let p = ok(
        store
            .upload_part(&k, &id, 1, d.clone(), Some(crc64nvme(&d)))
            .await,
        "upload part",
    );
    ok(store.put_bytes(&k, "someone else").await, "foreign put");
    let c = caps(store);
    let r = store
        .complete_multipart(&k, &id, vec![p], None, PutMode::Create)
        .await;
    if c.conditional_writes || c.local {
        expect_kind(
            r,
            &[ErrorKind::AlreadyExists, ErrorKind::PreconditionFailed],
            "create-only complete over an existing key",
        );
        assert_eq!(
            ok(store.get_bytes(&k).await, "get").as_ref(),
            b"someone else",
            "existing object untouched"
        );
        let _ = store.abort_multipart(&k, &id).await;
    }
}

/// Server-side copy: metadata and tags kept with `replace: None`, replaced with `Some`.
pub async fn copy_object(store: &dyn Store, prefix: &str) {
    let c = caps(store);
    let src = format!("{prefix}src.txt");
    let data = ramp(3000, 11);
    let mut md = BTreeMap::new();
    md.insert("origin".to_string(), "src".to_string());
    let tags = vec![
        ("t1".to_string(), "one".to_string()),
        ("t 2".to_string(), "a&b=c".to_string()),
    ];
    let opts = PutOptions::new()
        .content_type(Some("text/x-src".into()))
        .metadata(md)
        .tags(if c.tags { tags.clone() } else { vec![] })
        .mtime(Some(test_mtime()));
    let put = ok(store.put(&src, data.clone(), opts).await, "put source");
    let cs = CopySource {
        bucket: bucket_of(store),
        key: src.clone(),
        if_match: None,
        version_id: None,
    };

    let kept = format!("{prefix}kept.txt");
    ok(
        store.copy(&cs, &kept, CopyOptions::default()).await,
        "copy keeping metadata",
    );
    assert!(
        ok(store.get_bytes(&kept).await, "get copy") == data,
        "copied bytes"
    );
    let h = ok(store.head(&kept).await, "head copy");
    assert_eq!(h.size, data.len() as u64);
    assert_eq!(h.mtime, Some(test_mtime()), "mtime travels with the copy");
    if c.md5_etags {
        assert_eq!(
            h.etag,
            put.etag.clone().or(Some(md5_hex(&data))),
            "copy of a single-part object keeps the MD5 etag"
        );
    }
    if !c.local {
        assert_eq!(
            h.content_type.as_deref(),
            Some("text/x-src"),
            "content type kept"
        );
        assert_eq!(
            h.metadata
                .unwrap_or_default()
                .get("origin")
                .map(String::as_str),
            Some("src"),
            "metadata kept"
        );
    }
    if c.tags {
        assert_eq!(
            sorted(ok(store.get_tags(&kept).await, "tags of copy")),
            sorted(tags.clone()),
            "tags kept"
        );
    }

    let replaced = format!("{prefix}replaced.txt");
    let mut md2 = BTreeMap::new();
    md2.insert("origin".to_string(), "replaced".to_string());
    md2.insert("extra".to_string(), "1".to_string());
    let new_tags = vec![("fresh".to_string(), "yes".to_string())];
    let new_mtime = test_mtime() + Duration::from_secs(3600);
    let mut copts = CopyOptions::default();
    copts.replace = Some(
        PutOptions::new()
            .content_type(Some("text/x-new".into()))
            .metadata(md2)
            .tags(if c.tags { new_tags.clone() } else { vec![] })
            .mtime(Some(new_mtime)),
    );
    ok(
        store.copy(&cs, &replaced, copts).await,
        "copy replacing metadata",
    );
    assert!(ok(store.get_bytes(&replaced).await, "get replaced") == data);
    let h = ok(store.head(&replaced).await, "head replaced");
    assert_eq!(h.mtime, Some(new_mtime), "mtime replaced");
    if !c.local {
        assert_eq!(
            h.content_type.as_deref(),
            Some("text/x-new"),
            "content type replaced"
        );
        let m = h.metadata.unwrap_or_default();
        assert_eq!(
            m.get("origin").map(String::as_str),
            Some("replaced"),
            "metadata replaced ({m:?})"
        );
        assert_eq!(m.get("extra").map(String::as_str), Some("1"));
    }
    if c.tags {
        assert_eq!(
            sorted(ok(store.get_tags(&replaced).await, "tags of replaced")),
            new_tags,
            "tags replaced"
        );
    }
    // The source is untouched.
    assert!(ok(store.get_bytes(&src).await, "get source") == data);
    // Copying a missing source is NotFound.
    let missing = CopySource {
        bucket: bucket_of(store),
        key: format!("{prefix}nope"),
        if_match: None,
        version_id: None,
    };
    expect_kind(
        store
            .copy(&missing, &format!("{prefix}x"), CopyOptions::default())
            .await,
        &[ErrorKind::NotFound],
        "copy of a missing source",
    );
}

/// Copy pinned to the source ETag.
pub async fn copy_if_match(store: &dyn Store, prefix: &str) {
    if !caps(store).conditional_writes {
        return;
    }
    let src = format!("{prefix}src");
    let data = ramp(500, 12);
    ok(
        store.put(&src, data.clone(), PutOptions::new()).await,
        "put source",
    );
    let etag = ok(store.head(&src).await, "head").etag;
    let good = CopySource {
        bucket: bucket_of(store),
        key: src.clone(),
        if_match: etag,
        version_id: None,
    };
    ok(
        store
            .copy(&good, &format!("{prefix}dst-ok"), CopyOptions::default())
            .await,
        "copy with right if_match",
    );
    assert!(ok(store.get_bytes(&format!("{prefix}dst-ok")).await, "get") == data);
    let bad = CopySource {
        bucket: bucket_of(store),
        key: src,
        if_match: Some("0".repeat(32)),
        version_id: None,
    };
    expect_kind(
        store
            .copy(&bad, &format!("{prefix}dst-bad"), CopyOptions::default())
            .await,
        &[ErrorKind::PreconditionFailed],
        "copy with wrong if_match",
    );
    expect_kind(
        store.head(&format!("{prefix}dst-bad")).await,
        &[ErrorKind::NotFound],
        "failed copy wrote nothing",
    );
}

/// A multipart upload whose first part is copied server-side from another object.
pub async fn upload_part_copy(store: &dyn Store, prefix: &str) {
    if !caps(store).upload_part_copy {
        return;
    }
    let part = 5 * MIB;
    let src = format!("{prefix}src.bin");
    let src_data = ramp(part as usize + 100, 21);
    ok(
        store.put(&src, src_data.clone(), PutOptions::new()).await,
        "put source",
    );
    let etag = ok(store.head(&src).await, "head source").etag;
    let k = format!("{prefix}dst.bin");
    let id = ok(
        store
            .create_multipart(&k, PutOptions::new(), PartLayout::Uniform(part))
            .await,
        "create_multipart",
    );
    let cs = CopySource {
        bucket: bucket_of(store),
        key: src.clone(),
        if_match: etag,
        version_id: None,
    };
    let p1 = ok(
        store.upload_part_copy(&k, &id, 1, &cs, 0..part).await,
        "upload_part_copy",
    );
    assert_eq!(p1.part_number, 1);
    let tail = ramp(777, 22);
    let p2 = ok(
        store
            .upload_part(&k, &id, 2, tail.clone(), Some(crc64nvme(&tail)))
            .await,
        "upload part 2",
    );
    let mut whole = src_data[..part as usize].to_vec();
    whole.extend_from_slice(&tail);
    let crc = crc64nvme_combine(
        crc64nvme(&src_data[..part as usize]),
        crc64nvme(&tail),
        tail.len() as u64,
    );
    assert_eq!(crc, crc64nvme(&whole));
    // Wrong source ETag on a part copy: 412.
    let bad = CopySource {
        if_match: Some("0".repeat(32)),
        version_id: None,
        ..cs.clone()
    };
    expect_kind(
        store.upload_part_copy(&k, &id, 3, &bad, 0..part).await,
        &[ErrorKind::PreconditionFailed],
        "upload_part_copy with wrong if_match",
    );
    let parts: Vec<PartInfo> = vec![p1, p2];
    ok(
        store
            .complete_multipart(&k, &id, parts, Some(crc), PutMode::Overwrite)
            .await,
        "complete",
    );
    let got = ok(store.get_bytes(&k).await, "get");
    assert!(got[..] == whole[..], "content of a part-copied object");
    if caps(store).crc64nvme {
        assert_eq!(
            ok(store.head(&k).await, "head").crc64nvme,
            Some(crc),
            "full-object CRC of a part-copied object"
        );
    }
}

/// DeleteObjects of existing and missing keys: all Ok, in order, all gone.
pub async fn delete_many(store: &dyn Store, prefix: &str) {
    let keys: Vec<String> = (0..3).map(|i| format!("{prefix}d{i}")).collect();
    for k in &keys {
        ok(
            store
                .put(k, Bytes::from_static(b"x"), PutOptions::new())
                .await,
            "put",
        );
    }
    let req = vec![
        keys[0].clone(),
        format!("{prefix}missing"),
        keys[1].clone(),
        keys[2].clone(),
    ];
    let res = ok(store.delete_many(&req).await, "delete_many");
    assert_eq!(res.len(), req.len(), "one result per key");
    for (k, r) in req.iter().zip(res) {
        ok(r, &format!("delete {k:?}"));
    }
    for k in &req {
        expect_kind(
            store.head(k).await,
            &[ErrorKind::NotFound],
            "head after delete",
        );
    }
    let left = list_keys(store, ListOptions::prefix(prefix)).await;
    assert!(
        left.is_empty(),
        "nothing listed after delete, have {left:?}"
    );
    assert!(ok(store.delete_many(&[]).await, "delete nothing").is_empty());
}

/// Where the store keeps CRC64NVME, HEAD reports the full-object value.
pub async fn crc64_in_head(store: &dyn Store, prefix: &str) {
    if !caps(store).crc64nvme {
        return;
    }
    for (name, data, given) in [
        ("given", ramp(10_000, 31), true),
        ("computed", ramp(10_001, 32), false),
    ] {
        let k = format!("{prefix}{name}");
        let want = crc64nvme(&data);
        let r = ok(
            store
                .put(
                    &k,
                    data.clone(),
                    PutOptions::new().crc64nvme(given.then_some(want)),
                )
                .await,
            "put",
        );
        if let Some(c) = r.crc64nvme {
            assert_eq!(c, want, "put returns the CRC");
        }
        assert_eq!(
            ok(store.head(&k).await, "head").crc64nvme,
            Some(want),
            "head CRC64NVME ({name})"
        );
        let g = ok(store.get(&k, GetOptions::new()).await, "get");
        assert_eq!(
            g.meta.crc64nvme,
            Some(want),
            "whole-object get CRC64NVME ({name})"
        );
    }
    // A wrong CRC is refused and nothing is written.
    let k = format!("{prefix}wrong");
    let data = ramp(1000, 33);
    expect_kind(
        store
            .put(
                &k,
                data.clone(),
                PutOptions::new().crc64nvme(Some(crc64nvme(&data) ^ 1)),
            )
            .await,
        &[ErrorKind::Corrupt, ErrorKind::InvalidInput],
        "put with a wrong CRC64NVME",
    );
    expect_kind(
        store.head(&k).await,
        &[ErrorKind::NotFound],
        "nothing written after a CRC mismatch",
    );
}

/// Tags round-trip, for single and multipart uploads.
pub async fn tags_roundtrip(store: &dyn Store, prefix: &str) {
    if !caps(store).tags {
        return;
    }
    let tags = vec![
        ("a".to_string(), "1".to_string()),
        ("b c".to_string(), "d&e=f".to_string()),
        ("ü".to_string(), "ñ +".to_string()),
    ];
    let k = format!("{prefix}tagged");
    ok(
        store
            .put(
                &k,
                Bytes::from_static(b"t"),
                PutOptions::new().tags(tags.clone()),
            )
            .await,
        "put",
    );
    assert_eq!(
        sorted(ok(store.get_tags(&k).await, "get_tags")),
        sorted(tags.clone())
    );
    let untagged = format!("{prefix}untagged");
    ok(
        store
            .put(&untagged, Bytes::from_static(b"u"), PutOptions::new())
            .await,
        "put",
    );
    assert!(ok(store.get_tags(&untagged).await, "get_tags").is_empty());
    expect_kind(
        store.get_tags(&format!("{prefix}missing")).await,
        &[ErrorKind::NotFound],
        "tags of a missing object",
    );

    let mk = format!("{prefix}tagged-mpu");
    let id = ok(
        store
            .create_multipart(
                &mk,
                PutOptions::new().tags(tags.clone()),
                PartLayout::Uniform(5 * MIB),
            )
            .await,
        "create",
    );
    let d = ramp(100, 41);
    let p = ok(
        store.upload_part(&mk, &id, 1, d.clone(), None).await,
        "part",
    );
    ok(
        store
            .complete_multipart(&mk, &id, vec![p], None, PutMode::Overwrite)
            .await,
        "complete",
    );
    assert_eq!(
        sorted(ok(store.get_tags(&mk).await, "get_tags mpu")),
        sorted(tags)
    );
}

/// Delete everything under `prefix` and check nothing is left (also cleans up after a run).
pub async fn delete_everything(store: &dyn Store, prefix: &str) {
    let keys = list_keys(store, ListOptions::prefix(prefix)).await;
    for chunk in keys.chunks(1000) {
        for r in ok(store.delete_many(chunk).await, "delete_many") {
            ok(r, "delete");
        }
    }
    assert!(
        list_keys(store, ListOptions::prefix(prefix))
            .await
            .is_empty(),
        "everything deleted"
    );
    for u in ok(store.list_multipart(prefix).await, "list_multipart") {
        ok(
            store.abort_multipart(&u.key, &u.upload_id).await,
            "abort leftover upload",
        );
    }
}
