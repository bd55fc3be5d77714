//! S3 Inventory reports as input (batch manifests, bundle grouping): the `manifest.json` and its
//! gzipped CSV data files, streamed row by row (memory flat in the inventory's size), each data
//! file checked against the MD5 the manifest lists for it.

use std::io::Write as _;
use std::time::SystemTime;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use md5::{Digest as _, Md5};
use s3ferry_store::{DynStore, ErrorKind, GetOptions, Result, StoreError};
use serde::Deserialize;

use super::csv::{decode_key, split_line};

/// `manifest.json` of an S3 Inventory report (the fields we use).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct InventoryManifest {
    pub source_bucket: String,
    /// `arn:aws:s3:::bucket` where the report lives.
    pub destination_bucket: String,
    pub file_format: String,
    /// Column names, comma-separated (`Bucket, Key, VersionId, Size, ...`).
    pub file_schema: String,
    pub files: Vec<InventoryFile>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct InventoryFile {
    pub key: String,
    pub size: u64,
    #[serde(rename = "MD5checksum")]
    pub md5_checksum: String,
}

/// One object of an inventory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InventoryRow {
    pub bucket: String,
    pub key: String,
    pub version_id: Option<String>,
    pub is_latest: bool,
    pub is_delete_marker: bool,
    pub size: u64,
    pub last_modified: Option<SystemTime>,
    pub etag: Option<String>,
    pub storage_class: Option<String>,
}

fn bad(what: &str, msg: impl std::fmt::Display) -> StoreError {
    StoreError::new(
        ErrorKind::InvalidInput,
        "inventory",
        format!("{what}: {msg}"),
    )
}

impl InventoryManifest {
    pub fn parse(data: &[u8], what: &str) -> Result<Self> {
        let m: Self = serde_json::from_slice(data).map_err(|e| bad(what, e))?;
        if m.file_format != "CSV" {
            return Err(bad(
                what,
                format!("fileFormat {:?} is not supported (CSV only)", m.file_format),
            ));
        }
        let cols = m.columns();
        for need in ["Bucket", "Key"] {
            if !cols.iter().any(|c| c == need) {
                return Err(bad(what, format!("fileSchema has no {need} column")));
            }
        }
        Ok(m)
    }

    pub fn columns(&self) -> Vec<String> {
        self.file_schema
            .split(',')
            .map(|c| c.trim().to_string())
            .collect()
    }

    /// The bucket holding the data files (from `destinationBucket`'s ARN).
    pub fn data_bucket(&self) -> &str {
        self.destination_bucket
            .rsplit(":::")
            .next()
            .unwrap_or(&self.destination_bucket)
    }

    /// Every row of every data file, in file order. `store` reads the data files' bucket.
    pub fn rows(&self, store: DynStore) -> BoxStream<'static, Result<InventoryRow>> {
        let cols = self.columns();
        let files = self.files.clone();
        stream::iter(files)
            .map(move |f| data_file_rows(store.clone(), f, cols.clone()))
            .flatten()
            .boxed()
    }
}

fn parse_row(cols: &[String], line: &str, file: &str, n: u64) -> Result<InventoryRow> {
    let what = || format!("{file} line {n}");
    let f = split_line(line).map_err(|e| bad(&what(), e))?;
    if f.len() != cols.len() {
        return Err(bad(
            &what(),
            format!("{} fields, the schema has {}", f.len(), cols.len()),
        ));
    }
    let mut r = InventoryRow {
        is_latest: true,
        ..Default::default()
    };
    for (c, v) in cols.iter().zip(f) {
        match c.as_str() {
            "Bucket" => r.bucket = v,
            "Key" => r.key = decode_key(&v).map_err(|e| bad(&what(), e))?,
            "VersionId" => r.version_id = (!v.is_empty()).then_some(v),
            "IsLatest" => r.is_latest = v != "false",
            "IsDeleteMarker" => r.is_delete_marker = v == "true",
            "Size" => {
                r.size = if v.is_empty() {
                    0
                } else {
                    v.parse()
                        .map_err(|_| bad(&what(), format!("bad Size {v:?}")))?
                }
            }
            "LastModifiedDate" => {
                r.last_modified = chrono::DateTime::parse_from_rfc3339(&v)
                    .ok()
                    .map(|t| t.with_timezone(&chrono::Utc).into())
            }
            "ETag" => r.etag = (!v.is_empty()).then(|| v.trim_matches('"').to_string()),
            "StorageClass" => r.storage_class = (!v.is_empty()).then_some(v),
            _ => {}
        }
    }
    if r.bucket.is_empty() || r.key.is_empty() {
        return Err(bad(&what(), "empty bucket or key"));
    }
    Ok(r)
}

struct FileState {
    store: DynStore,
    file: InventoryFile,
    cols: Vec<String>,
    body: Option<s3ferry_store::ByteStream>,
    gz: flate2::write::MultiGzDecoder<Vec<u8>>,
    md5: Md5,
    pending: Vec<u8>,
    rows: std::collections::VecDeque<Result<InventoryRow>>,
    line: u64,
    done: bool,
}

fn data_file_rows(
    store: DynStore,
    file: InventoryFile,
    cols: Vec<String>,
) -> BoxStream<'static, Result<InventoryRow>> {
    let st = FileState {
        store,
        file,
        cols,
        body: None,
        gz: flate2::write::MultiGzDecoder::new(Vec::new()),
        md5: Md5::new(),
        pending: Vec::new(),
        rows: Default::default(),
        line: 0,
        done: false,
    };
    stream::unfold(Some(st), |st| async move {
        let mut st = st?;
        loop {
            if let Some(r) = st.rows.pop_front() {
                let stop = r.is_err();
                return Some((r, if stop { None } else { Some(st) }));
            }
            if st.done {
                return None;
            }
            if let Err(e) = st.step().await {
                return Some((Err(e), None));
            }
        }
    })
    .boxed()
}

impl FileState {
    /// Read one more chunk of the data file and turn the complete lines into rows.
    async fn step(&mut self) -> Result<()> {
        let name = self.file.key.clone();
        if self.body.is_none() {
            let got = self.store.get(&name, GetOptions::new()).await?;
            self.body = Some(got.body);
        }
        let chunk: Option<Bytes> = match self.body.as_mut() {
            Some(b) => b.next().await.transpose()?,
            None => None,
        };
        match chunk {
            Some(c) => {
                self.md5.update(&c);
                self.gz
                    .write_all(&c)
                    .map_err(|e| bad(&name, format!("not gzip: {e}")))?;
            }
            None => {
                self.gz
                    .try_finish()
                    .map_err(|e| bad(&name, format!("truncated gzip: {e}")))?;
                let md5 = hex::encode(self.md5.clone().finalize());
                if !md5.eq_ignore_ascii_case(&self.file.md5_checksum) {
                    return Err(StoreError::new(
                        ErrorKind::Corrupt,
                        "inventory",
                        format!(
                            "{name}: MD5 {md5} does not match the manifest's {}",
                            self.file.md5_checksum
                        ),
                    ));
                }
                self.done = true;
            }
        }
        let out = std::mem::take(self.gz.get_mut());
        self.pending.extend_from_slice(&out);
        let mut start = 0;
        while let Some(i) = self.pending[start..].iter().position(|b| *b == b'\n') {
            let line = &self.pending[start..start + i];
            start += i + 1;
            self.line += 1;
            let text = std::str::from_utf8(line)
                .map_err(|_| bad(&name, format!("line {} is not UTF-8", self.line)))?;
            let text = text.strip_suffix('\r').unwrap_or(text);
            if !text.is_empty() {
                self.rows
                    .push_back(parse_row(&self.cols, text, &name, self.line));
            }
        }
        self.pending.drain(..start);
        if self.done && !self.pending.is_empty() {
            self.line += 1;
            let text = String::from_utf8(std::mem::take(&mut self.pending))
                .map_err(|_| bad(&name, "last line is not UTF-8"))?;
            self.rows
                .push_back(parse_row(&self.cols, &text, &name, self.line));
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use futures::TryStreamExt;
    use s3ferry_store::memory::MemoryStore;
    use s3ferry_store::StoreExt;
    use std::sync::Arc;

    pub fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn manifest_json(files: &[(&str, &[u8])]) -> String {
        let files: Vec<String> = files
            .iter()
            .map(|(k, d)| {
                format!(
                    r#"{{"key":"{k}","size":{},"MD5checksum":"{}"}}"#,
                    d.len(),
                    hex::encode(Md5::digest(d))
                )
            })
            .collect();
        format!(
            r#"{{"sourceBucket":"src","destinationBucket":"arn:aws:s3:::inv","version":"2016-11-30","creationTimestamp":"1","fileFormat":"CSV","fileSchema":"Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, LastModifiedDate, ETag, StorageClass","files":[{}]}}"#,
            files.join(",")
        )
    }

    #[tokio::test]
    async fn rows_stream_from_gzipped_data_files() {
        let f1 = gz(b"\"src\",\"a+b%2Fc\",\"\",\"true\",\"false\",\"5\",\"2024-05-01T10:00:00.000Z\",\"0cc175b9c0f1b6a831c399e269772661\",\"STANDARD\"\n\"src\",\"d\",\"\",\"true\",\"false\",\"0\",\"2024-05-01T10:00:00.000Z\",\"x\",\"STANDARD\"\n");
        let f2 = gz(b"\"src\",\"%C3%A9\",\"v1\",\"false\",\"false\",\"7\",\"\",\"\",\"GLACIER\"");
        let mem = MemoryStore::new();
        mem.put_bytes("data/1.csv.gz", f1.clone()).await.unwrap();
        mem.put_bytes("data/2.csv.gz", f2.clone()).await.unwrap();
        let m = InventoryManifest::parse(
            manifest_json(&[("data/1.csv.gz", &f1), ("data/2.csv.gz", &f2)]).as_bytes(),
            "manifest.json",
        )
        .unwrap();
        assert_eq!(m.data_bucket(), "inv");
        let rows: Vec<InventoryRow> = m.rows(Arc::new(mem)).try_collect().await.unwrap();
        let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, vec!["a b/c", "d", "é"]);
        assert_eq!(rows[0].size, 5);
        assert_eq!(rows[2].version_id.as_deref(), Some("v1"));
        assert!(!rows[2].is_latest);
        assert_eq!(rows[2].storage_class.as_deref(), Some("GLACIER"));
    }

    #[tokio::test]
    async fn a_truncated_or_altered_data_file_is_an_error() {
        let f1 = gz(b"\"src\",\"k\",\"\",\"true\",\"false\",\"1\",\"\",\"\",\"\"\n");
        let mem = MemoryStore::new();
        mem.put_bytes("d.gz", f1[..f1.len() - 6].to_vec())
            .await
            .unwrap();
        let m = InventoryManifest::parse(manifest_json(&[("d.gz", &f1)]).as_bytes(), "m").unwrap();
        let r: Result<Vec<InventoryRow>> = m.rows(Arc::new(mem)).try_collect().await;
        assert!(r.is_err());
        assert!(InventoryManifest::parse(b"{}", "m").is_err());
        let parquet = manifest_json(&[]).replace("\"CSV\"", "\"Parquet\"");
        let e = InventoryManifest::parse(parquet.as_bytes(), "m").unwrap_err();
        assert!(e.to_string().contains("Parquet"), "{e}");
    }
}
