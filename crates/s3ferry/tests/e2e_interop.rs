//! Interop (issue 23) against the local S3 server: objects other tools wrote (no mtime of ours)
//! round-trip without being sent again, manifests saved by spreadsheets (a byte order mark), and
//! aws-cli's spellings of options.

mod common;

use std::collections::BTreeMap;

use common::*;

/// aws-cli, s5cmd and the console store no mtime: a download takes the object's LastModified (as
/// aws-cli and rclone do), so syncing the files straight back up sends nothing.
#[test]
fn objects_without_our_mtime_download_with_last_modified_and_sync_back_as_a_no_op() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("interop-mtime");
    let files: BTreeMap<String, Vec<u8>> = [
        ("a.txt".to_string(), b"written by another tool".to_vec()),
        ("d/b.bin".to_string(), random_bytes(100_000, 3)),
        // multipart at the default part size: its ETag is not an MD5
        ("big.bin".to_string(), random_bytes(9 << 20, 4)),
    ]
    .into_iter()
    .collect();
    b.put_all("p/", &files);
    for k in files.keys() {
        assert!(
            b.head(&format!("p/{k}")).mtime.is_none(),
            "the object carries no mtime of ours"
        );
    }
    // Downloaded later than written (as in life): a file stamped with the download time would
    // then be newer than its object.
    let newest = files
        .keys()
        .filter_map(|k| b.head(&format!("p/{k}")).last_modified)
        .max()
        .unwrap();
    wait_until(
        "the clock two seconds past the objects' LastModified",
        || std::time::SystemTime::now() >= newest + std::time::Duration::from_secs(2),
    );
    let dir = cx.path("down");
    let r = cx.sync(&[&b.uri("p"), s(&dir)]);
    r.assert_ok();
    assert_eq!(r.n("copied"), 3);
    for k in files.keys() {
        let lm = b.head(&format!("p/{k}")).last_modified.unwrap();
        let lm = lm.duration_since(std::time::UNIX_EPOCH).unwrap();
        let got = mtime_ns(&dir.join(k));
        // LastModified has whole seconds on S3.
        assert_eq!(
            got.div_euclid(1_000_000_000),
            lm.as_secs() as i128,
            "{k}: the file's mtime is LastModified"
        );
    }
    // Straight back up (another state database, as on another machine): nothing is sent.
    let r = cx.sync_env(
        &[s(&dir), &b.uri("p")],
        &[("S3FERRY_STATE_DIR", s(&cx.path("other-state")))],
    );
    r.assert_ok();
    assert_eq!(r.n("copied"), 0, "{r}");
    assert_eq!(r.n("skipped"), 3, "{r}");
}

/// `--no-sign-request` (public buckets) sends unsigned requests and looks for no credentials:
/// it works where no credentials exist at all (the local server lets anyone in).
#[test]
fn no_sign_request_needs_no_credentials() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("interop-anon");
    b.put("pub/a.txt", b"public");
    let home = cx.path("empty-home");
    std::fs::create_dir_all(&home).unwrap();
    let run = |extra: &[&str]| {
        let mut c = cx.cmd();
        c.env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN")
            .env("HOME", &home)
            .env("AWS_CONFIG_FILE", home.join("none"))
            .env("AWS_SHARED_CREDENTIALS_FILE", home.join("none"))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .args(extra)
            .args(["ls", &b.uri("pub/")]);
        run_cmd(c, std::time::Duration::from_secs(60))
    };
    let r = run(&[]);
    assert_eq!(r.code, 2, "without credentials: {r}");
    let r = run(&["--no-sign-request"]);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("a.txt"), "{r}");
}

/// A manifest and a pairs file saved by a spreadsheet start with a UTF-8 byte order mark.
#[test]
fn a_manifest_with_a_byte_order_mark_runs() {
    let Some(cx) = Ctx::new() else { return };
    let (a, b) = (cx.bucket("interop-bom-src"), cx.bucket("interop-bom-dst"));
    a.put("x.txt", b"x");
    a.put("y.txt", b"y");
    let m = cx.path("m.csv");
    std::fs::write(&m, format!("\u{feff}{0},x.txt\r\n{0},y.txt\r\n", a.name)).unwrap();
    let r = cx.run(&[
        "--json",
        "batch",
        "run",
        "--manifest",
        s(&m),
        "--to",
        &b.uri("c/"),
    ]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(b.keys("c/"), vec!["x.txt", "y.txt"]);

    // A pairs file whose first line, after the mark, is a comment.
    let p = cx.path("pairs.csv");
    std::fs::write(
        &p,
        format!(
            "\u{feff}# source,destination,prefix\r\n{},{},d\r\n",
            a.name, b.name
        ),
    )
    .unwrap();
    let r = cx.run(&["--json", "batch", "run", "--pairs", s(&p)]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(b.keys("d/"), vec!["x.txt", "y.txt"]);

    // A command file (`s3ferry run FILE`) that starts with the mark.
    let f = cx.path("cmds.txt");
    std::fs::write(
        &f,
        format!("\u{feff}cp {} {}\n", a.uri("x.txt"), b.uri("e/x.txt")),
    )
    .unwrap();
    let r = cx.run(&["run", s(&f)]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(b.keys("e/"), vec!["x.txt"]);
}

/// aws-cli's `--dryrun` and `--only-show-errors` are accepted as they are typed there.
#[test]
fn aws_cli_spellings_of_dry_run_and_quiet_work() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("interop-alias");
    let src = cx.path("src");
    write_tree(&src, &tree(&[("a.txt", b"a")]));
    let r = cx.run(&["sync", "--dryrun", s(&src), &b.uri("p")]);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("would-copy"), "{r}");
    assert!(b.keys("p/").is_empty(), "a dry run writes nothing");
    let r = cx.run(&["--only-show-errors", "sync", s(&src), &b.uri("p")]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(b.keys("p/"), vec!["a.txt"]);
    assert!(r.stdout.is_empty() && r.stderr.is_empty(), "{r}");
}

/// A server without object tagging (Garage answers GetObjectTagging with 501 NotImplemented, as
/// an S3 Express directory bucket has none either) means "no tags": one warning, no failed
/// object, in bundle and in archive export alike.
#[cfg(feature = "fault")]
#[test]
fn a_server_without_tagging_means_no_tags_not_failed_objects() {
    let Some(cx) = Ctx::new() else { return };
    let (src, arch) = (
        cx.bucket("interop-tags-src"),
        cx.bucket("interop-tags-arch"),
    );
    for i in 0..12 {
        src.put(&format!("k{i:02}"), format!("value {i}").as_bytes());
    }
    let no_tags = [("S3FERRY_FAULTS_SOURCE", "get_tags:unsupported")];
    let shards = cx.path("shards");
    let r = cx.run(&[
        "--json",
        "bundle",
        "group",
        "--source",
        &src.uri(""),
        "--out",
        s(&shards),
    ]);
    assert_eq!(r.code, 0, "{r}");
    let r = cx.run_env(
        &[
            "--json",
            "bundle",
            "run",
            s(&shards.join("shard-000001.csv")),
            "--to",
            &arch.uri("a/"),
        ],
        &no_tags,
    );
    assert_eq!(r.code, 0, "{r}");
    let sum = r.summary();
    assert_eq!(
        (sum["packed"].as_u64(), sum["failed"].as_u64()),
        (Some(12), Some(0)),
        "{r}"
    );
    let warnings = r
        .stderr
        .lines()
        .filter(|l| l.contains("does not implement object tags"))
        .count();
    assert_eq!(warnings, 1, "said once: {r}");

    let out = cx.path("a.tar");
    let r = cx.run_env(
        &[
            "--json",
            "archive",
            "export",
            &src.uri(""),
            "--out",
            s(&out),
        ],
        &no_tags,
    );
    assert_eq!(r.code, 0, "{r}");
    assert_eq!((r.n("puts"), r.n("failed")), (12, 0), "{r}");
}

/// Upload `data` as `key` in parts of `part` bytes with the SDK, as another tool would (no
/// metadata of ours; `meta` as given).
fn multipart_as_another_tool(
    b: &Bucket,
    key: &str,
    data: &[u8],
    part: usize,
    meta: &[(&str, &str)],
) {
    use aws_sdk_s3::primitives::ByteStream;
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
    b.block_on(async {
        let c = b.store.client();
        let mut req = c.create_multipart_upload().bucket(&b.name).key(key);
        for (k, v) in meta {
            req = req.metadata(*k, *v);
        }
        let id = req
            .send()
            .await
            .expect("create")
            .upload_id()
            .unwrap()
            .to_string();
        let mut parts = Vec::new();
        for (i, chunk) in data.chunks(part).enumerate() {
            let n = i as i32 + 1;
            let out = c
                .upload_part()
                .bucket(&b.name)
                .key(key)
                .upload_id(&id)
                .part_number(n)
                .body(ByteStream::from(chunk.to_vec()))
                .send()
                .await
                .expect("part");
            parts.push(
                CompletedPart::builder()
                    .part_number(n)
                    .e_tag(out.e_tag().unwrap())
                    .build(),
            );
        }
        c.complete_multipart_upload()
            .bucket(&b.name)
            .key(key)
            .upload_id(&id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .expect("complete");
    });
}

/// A multipart object whose part size is none s3ferry guesses (rclone `--s3-chunk-size 6M`,
/// aws-cli `multipart_chunksize = 6MB`): rclone's whole-object MD5 (`md5chksum`) decides where
/// it is stored; otherwise the uploader's part size, learnt with a HEAD of part 1, recomputes
/// the ETag, which says "same" for the same bytes and "differs" for other bytes of the same
/// size. (A server that does not say part sizes: `content not comparable`, in
/// e2e_standins.rs.)
#[test]
fn a_multipart_object_of_an_unknown_part_size_is_compared_by_whole_object_hashes() {
    use base64::Engine as _;
    use md5::{Digest as _, Md5};
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("interop-parts");
    let dir = cx.path("src");
    std::fs::create_dir_all(&dir).unwrap();
    let (one, two) = (random_bytes(13 << 20, 5), random_bytes(13 << 20, 6));
    let mut other = two.clone();
    other[7 << 20] ^= 1;
    std::fs::write(dir.join("rclone.bin"), &one).unwrap();
    std::fs::write(dir.join("plain.bin"), &two).unwrap();
    std::fs::write(dir.join("changed.bin"), &other).unwrap();
    let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(&one));
    multipart_as_another_tool(&b, "p/rclone.bin", &one, 6 << 20, &[("md5chksum", &md5)]);
    multipart_as_another_tool(&b, "p/plain.bin", &two, 6 << 20, &[]);
    multipart_as_another_tool(&b, "p/changed.bin", &two, 6 << 20, &[]);
    for k in ["p/rclone.bin", "p/plain.bin", "p/changed.bin"] {
        let etag = b.head(k).etag.unwrap();
        assert!(etag.ends_with("-3"), "three parts of 6 MiB: {etag}");
    }
    // The files are older than the objects: only content can decide.
    let old = now_secs() - 3600;
    for f in ["rclone.bin", "plain.bin", "changed.bin"] {
        set_mtime(&dir.join(f), old, 0);
    }
    let r = cx.sync(&["-v", s(&dir), &b.uri("p")]);
    r.assert_ok();
    let skips = r.skips();
    for k in ["rclone.bin", "plain.bin"] {
        assert!(
            skips
                .iter()
                .any(|(s, why)| s == k && why.contains("same content")),
            "{k}: {r}"
        );
    }
    let copies = r.records("copy");
    assert_eq!(copies.len(), 1, "{r}");
    assert_eq!(copies[0]["key"], "changed.bin");
    let why = copies[0]["reason"].as_str().unwrap();
    assert!(why.starts_with("content differs"), "{why}");
    assert!(b.get("p/changed.bin") == other);
}

// ---- a private CA in front of the server ---------------------------------------------------

/// An HTTPS endpoint whose certificate a private CA signed: a TLS proxy (tokio-rustls) on
/// `localhost` in front of the local server. Returns the endpoint URL and the CA's PEM; the
/// proxy runs until the test process ends.
fn tls_endpoint(upstream: &str) -> (String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("CA cert");
    let key = KeyPair::generate().expect("server key");
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .expect("server params")
        .signed_by(&key, &ca_cert, &ca_key)
        .expect("server cert");
    let upstream = upstream
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                });
            }
        });
    });
    (format!("https://localhost:{port}"), ca_cert.pem())
}

/// A private-CA endpoint: refused without the CA (one line that points at --ca-bundle), used
/// with it from `--ca-bundle`, `AWS_CA_BUNDLE` or the profile's `ca_bundle` as aws-cli does; a
/// file that holds no certificate is one line naming it; `--no-verify-ssl` is refused with the
/// way to do it safely.
#[test]
fn a_private_ca_endpoint_is_trusted_through_the_ca_bundle_settings() {
    let Some(cx) = Ctx::new() else { return };
    let b = cx.bucket("interop-tls");
    let (endpoint, ca_pem) = tls_endpoint(&cx.endpoint);
    let ca = cx.path("ca.pem");
    std::fs::write(&ca, &ca_pem).expect("ca.pem");
    let src = cx.path("src");
    write_tree(&src, &tree(&[("a.txt", b"over TLS")]));
    let uri = format!("s3://{}/tls/", b.name);
    let at = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = vec!["--endpoint-url", endpoint.as_str()];
        all.extend_from_slice(args);
        cx.run_env(&all, env)
    };

    let r = at(&["ls", &uri], &[]);
    let line = r.assert_fatal();
    assert!(
        line.contains("certificate") && line.contains("--ca-bundle"),
        "{line}"
    );

    let r = at(
        &["--ca-bundle", s(&ca), "cp", "--recursive", s(&src), &uri],
        &[],
    );
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(b.get("tls/a.txt"), b"over TLS");
    let r = at(&["ls", &uri], &[("AWS_CA_BUNDLE", s(&ca))]);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("a.txt"), "{r}");
    let conf = cx.path("aws-config");
    std::fs::write(
        &conf,
        format!("[profile private]\nca_bundle = {}\n", s(&ca)),
    )
    .expect("config");
    let r = at(
        &["ls", &uri],
        &[("AWS_CONFIG_FILE", s(&conf)), ("AWS_PROFILE", "private")],
    );
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("a.txt"), "{r}");

    let junk = cx.path("junk.pem");
    std::fs::write(&junk, "not a certificate\n").expect("junk");
    let r = at(&["--ca-bundle", s(&junk), "ls", &uri], &[]);
    let line = r.assert_fatal();
    assert!(
        line.contains("junk.pem") && line.contains("no certificate"),
        "{line}"
    );

    let r = at(&["--no-verify-ssl", "ls", &uri], &[]);
    let line = r.assert_fatal();
    assert!(line.contains("--ca-bundle"), "{line}");
}
