//! Settings aws-cli honours and the Rust SDK does not read by itself: the CA bundle
//! (`--ca-bundle`, `AWS_CA_BUNDLE`, the profile's `ca_bundle`) and the profile's checksum
//! settings (`request_checksum_calculation`, `response_checksum_validation`). Every client
//! s3ferry builds (S3, SQS, CloudFront, S3 Control, IAM) goes through [`configure`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use aws_config::profile::ProfileSet;
use aws_config::ConfigLoader;
use aws_runtime::env_config::file::EnvConfigFiles;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use aws_types::os_shim_internal::{Env, Fs};
use s3ferry_store::{ErrorKind, Result, StoreError};

/// `--ca-bundle`: set once by the command line, before any client is built.
static CA_BUNDLE: OnceLock<PathBuf> = OnceLock::new();

/// Trust the certificates in `path` (PEM) for every endpoint, besides the system's roots (as
/// aws-cli's `--ca-bundle`; it wins over `AWS_CA_BUNDLE` and the profile's `ca_bundle`).
pub fn set_ca_bundle(path: PathBuf) {
    let _ = CA_BUNDLE.set(path);
}

/// The selected profile's settings (`profile` or `AWS_PROFILE` or `default`); `None` when no
/// config file can be read (no profile: nothing to apply).
pub async fn profile(profile: Option<&str>) -> Option<ProfileSet> {
    aws_config::profile::load(
        &Fs::real(),
        &Env::real(),
        &EnvConfigFiles::default(),
        profile.map(|p| Cow::Owned(p.to_string())),
    )
    .await
    .ok()
}

/// A setting from the environment variable `env` or, failing that, the profile's `key`
/// (lower-cased, trimmed; empty counts as unset).
pub fn setting(set: Option<&ProfileSet>, env: &str, key: &str) -> Option<String> {
    std::env::var(env)
        .ok()
        .or_else(|| set.and_then(|p| p.get(key)).map(str::to_string))
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty())
}

/// The CA bundle in force: `--ca-bundle`, else `AWS_CA_BUNDLE`, else the profile's `ca_bundle`.
fn ca_bundle(set: Option<&ProfileSet>) -> Option<PathBuf> {
    if let Some(p) = CA_BUNDLE.get() {
        return Some(p.clone());
    }
    std::env::var_os("AWS_CA_BUNDLE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            set.and_then(|p| p.get("ca_bundle"))
                .map(|v| expand_home(v.trim()))
        })
}

fn expand_home(p: &str) -> PathBuf {
    match (p.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => Path::new(&home).join(rest),
        _ => PathBuf::from(p),
    }
}

/// Apply the CA bundle (if one is set anywhere) to a client's loader.
pub async fn configure(loader: ConfigLoader, profile_name: Option<&str>) -> Result<ConfigLoader> {
    configure_with(loader, profile(profile_name).await.as_ref())
}

/// [`configure`] with the profile already read (the S3 client reads it for its checksum
/// settings too).
pub fn configure_with(loader: ConfigLoader, set: Option<&ProfileSet>) -> Result<ConfigLoader> {
    match ca_bundle(set) {
        Some(path) => Ok(loader.http_client(https_client(&path)?)),
        None => Ok(loader),
    }
}

/// An HTTPS client that trusts the bundle at `path` besides the system's roots. A client of its
/// own per store, as the SDK's default is (a client's pooled connections belong to the runtime
/// that made them); the bundle is read and checked once per process.
fn https_client(path: &Path) -> Result<SharedHttpClient> {
    static BUNDLES: OnceLock<Mutex<HashMap<PathBuf, Vec<u8>>>> = OnceLock::new();
    let bundles = BUNDLES.get_or_init(Default::default);
    let cached = bundles.lock().ok().and_then(|m| m.get(path).cloned());
    let pem = match cached {
        Some(p) => p,
        None => {
            let p = read_bundle(path)?;
            if let Ok(mut m) = bundles.lock() {
                m.insert(path.to_path_buf(), p.clone());
            }
            p
        }
    };
    let ctx = TlsContext::builder()
        .with_trust_store(TrustStore::default().with_pem_certificate(pem))
        .build()
        .map_err(|e| bad_bundle(path, &e.to_string()))?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
        .tls_context(ctx)
        .build_https())
}

fn bad_bundle(path: &Path, why: &str) -> StoreError {
    StoreError::new(
        ErrorKind::InvalidInput,
        "connect",
        format!("CA bundle {}: {why}", path.display()),
    )
}

/// The bundle's bytes, once every certificate in it is known to be usable as a trust anchor
/// (the HTTP client would panic on one that is not).
fn read_bundle(path: &Path) -> Result<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let pem = std::fs::read(path).map_err(|e| bad_bundle(path, &e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad_bundle(path, &format!("not a PEM file ({e})")))?;
    if certs.is_empty() {
        return Err(bad_bundle(
            path,
            "no certificate in it (a PEM file of -----BEGIN CERTIFICATE----- blocks)",
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, c) in certs.into_iter().enumerate() {
        roots
            .add(c)
            .map_err(|e| bad_bundle(path, &format!("certificate {} is not usable: {e}", i + 1)))?;
    }
    Ok(pem)
}
