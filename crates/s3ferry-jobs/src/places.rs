//! Places named by URIs: an object (`s3://bucket/key` or a file) and a folder
//! (`s3://bucket/prefix/` or a directory), opened through the CLI's [`Buckets`]; shared by the
//! jobs whose inputs and outputs are named that way (bundle, archive).

use s3ferry_store::local::LocalStore;
use s3ferry_store::{DynStore, Location, StoreError};

use crate::Buckets;

#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// A URI that names no object or folder.
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An object named by a URI (`s3://bucket/key` or a local file path).
#[derive(Clone)]
pub struct Place {
    pub store: DynStore,
    pub key: String,
    pub uri: String,
}

/// A folder named by a URI (`s3://bucket/prefix/` or a local directory): a store and a key
/// prefix (empty or ending in `/`).
#[derive(Clone)]
pub struct Dir {
    pub store: DynStore,
    pub prefix: String,
    /// The URI, ending in `/` (messages and receipts name shards by it).
    pub uri: String,
}

impl Dir {
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub fn uri_of(&self, name: &str) -> String {
        format!("{}{name}", self.uri)
    }
}

/// Open the object a URI names; `source`: it is read (the source endpoint and credentials).
pub async fn open_place(
    uri: &str,
    buckets: &dyn Buckets,
    source: bool,
) -> Result<Place, PlaceError> {
    if let Some(rest) = uri.strip_prefix("s3://") {
        let (bucket, key) = rest
            .split_once('/')
            .filter(|(_, k)| !k.is_empty() && !k.ends_with('/'))
            .ok_or_else(|| PlaceError::Input(format!("{uri}: names no object")))?;
        let store = buckets.open(bucket, source).await?;
        return Ok(Place {
            store,
            key: key.to_string(),
            uri: uri.to_string(),
        });
    }
    let path = std::path::Path::new(uri);
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| PlaceError::Input(format!("{uri}: names no file")))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    Ok(Place {
        store: std::sync::Arc::new(LocalStore::new(parent)),
        key: name.to_string(),
        uri: uri.to_string(),
    })
}

/// Open the folder a URI names; `create`: make a local directory if it is missing.
pub async fn open_dir(
    uri: &str,
    buckets: &dyn Buckets,
    source: bool,
    create: bool,
) -> Result<Dir, PlaceError> {
    match Location::parse(uri).map_err(PlaceError::Input)? {
        Location::S3 { bucket, prefix } => Ok(Dir {
            store: buckets.open(&bucket, source).await?,
            uri: format!("s3://{bucket}/{prefix}"),
            prefix,
        }),
        Location::Local(p) => {
            let s = LocalStore::new(p.clone());
            if create {
                s.create_root()?;
            }
            let mut uri = p.to_string_lossy().into_owned();
            if !uri.ends_with('/') {
                uri.push('/');
            }
            Ok(Dir {
                store: std::sync::Arc::new(s),
                prefix: String::new(),
                uri,
            })
        }
    }
}
