//! `bundle get` (one object back via the index, one ranged GET) and `bundle extract` (a whole
//! tar back into a directory or bucket).

use std::sync::Arc;

use futures::stream::{self, StreamExt};
use md5::{Digest as _, Md5};
use s3ferry_engine::events::{Outcome, Record, Reporter};
use s3ferry_engine::exec::{Cancel, Done, Executor};
use s3ferry_engine::formats::tar::TarReader;
use s3ferry_store::checksum::{crc64_to_b64, crc64nvme};
use s3ferry_store::{ByteStream, ErrorKind, GetOptions, PutOptions, StoreError};
use serde::Serialize;

use super::format::{decode_pairs, IndexRow, INDEX_HEADER, RECORD};
use super::{csv_rows, BundleError, Dir, Place};

/// One object found through an index.
pub struct Fetched {
    pub row: IndexRow,
    /// Its bytes (verified against the index's MD5 and CRC64NVME for packed objects).
    pub body: ByteStream,
}

/// The index, the receipt name and the folder (with trailing `/`) of an index, tar or receipt
/// key.
fn names(key: &str) -> Result<(String, String, String), BundleError> {
    let (dir, base) = match key.rfind('/') {
        Some(i) => (&key[..=i], &key[i + 1..]),
        None => ("", key),
    };
    let stem = base
        .strip_suffix(".index.csv")
        .or_else(|| base.strip_suffix(".tar"))
        .or_else(|| base.strip_suffix(".json"))
        .ok_or_else(|| {
            BundleError::Input(format!(
                "{key}: not a shard's index (.index.csv), tar (.tar) or receipt (.json)"
            ))
        })?;
    Ok((
        format!("{dir}{stem}.index.csv"),
        format!("{dir}{stem}.json"),
        dir.to_string(),
    ))
}

fn corrupt(key: &str, msg: String) -> StoreError {
    StoreError::new(ErrorKind::Corrupt, "get", msg).with_key(key)
}

/// Fetch `key` back through the index next to `at` (an index, tar or receipt): one ranged GET
/// of the tar pinned to the receipt's ETag for a packed object, one GET of the copy for a big
/// one.
pub async fn get(at: &Place, key: &str) -> Result<Fetched, BundleError> {
    let (index_key, receipt_key, dir) = names(&at.key)?;
    let index = Place {
        store: at.store.clone(),
        key: index_key.clone(),
        uri: at.uri.replace(&at.key, &index_key),
    };
    let mut rows = csv_rows(&index, INDEX_HEADER).await?;
    let mut found = None;
    while let Some(r) = rows.next().await {
        let (n, line) = r?;
        let row = IndexRow::parse_row(&line)
            .map_err(|e| BundleError::Input(format!("{} line {n}: {e}", index.uri)))?;
        if row.key == key {
            found = Some(row);
            break;
        }
    }
    let row =
        found.ok_or_else(|| BundleError::Input(format!("{key:?} is not in {}", index.uri)))?;
    let location = format!("{dir}{}", row.location);
    let Some(offset) = row.data_offset else {
        let got = at
            .store
            .get(&location, GetOptions::new().if_match(row.etag.clone()))
            .await?;
        return Ok(Fetched {
            row,
            body: got.body,
        });
    };
    let pin = match at.store.get(&receipt_key, GetOptions::new()).await {
        Ok(g) => g
            .bytes()
            .await
            .ok()
            .and_then(|b| serde_json::from_slice::<super::format::Receipt>(&b).ok())
            .and_then(|r| r.tar_etag),
        Err(_) => None,
    };
    let got = at
        .store
        .get(
            &location,
            GetOptions::new()
                .range(offset..offset + row.data_length)
                .if_match(pin),
        )
        .await
        .map_err(|e| {
            if e.kind == ErrorKind::PreconditionFailed {
                BundleError::Input(format!(
                    "{location}: the tar was replaced after its receipt was written (rerun the shard)"
                ))
            } else {
                e.into()
            }
        })?;
    let data = s3ferry_store::collect_body(got.body, row.data_length, key).await?;
    if let Some(want) = &row.md5 {
        let md5 = hex::encode(Md5::digest(&data));
        if &md5 != want {
            return Err(corrupt(key, format!("MD5 {md5} differs from the index's {want}")).into());
        }
    }
    if let Some(want) = &row.crc64nvme {
        let crc = crc64_to_b64(crc64nvme(&data));
        if &crc != want {
            return Err(corrupt(
                key,
                format!("CRC64NVME {crc} differs from the index's {want}"),
            )
            .into());
        }
    }
    Ok(Fetched {
        row,
        body: stream::once(std::future::ready(Ok(data))).boxed(),
    })
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ExtractSummary {
    pub members: u64,
    pub bytes: u64,
    pub failed: u64,
    /// Stopped by a request (a signal) before the last member.
    pub interrupted: bool,
}

/// The put options a member's PAX records ask for: Content-Type, user metadata, tags, and
/// (`local`: a file's) the modification time. An object gets no mtime: it would add metadata
/// the original did not have.
fn restore_options(
    m: &s3ferry_engine::formats::tar::ReadMember,
    local: bool,
) -> Result<PutOptions, String> {
    let rec = |k: &str| m.records.get(&format!("{RECORD}{k}")).cloned();
    let meta = format!("{RECORD}meta.");
    let metadata = m
        .records
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(meta.as_str())
                .map(|k| (k.to_string(), v.clone()))
        })
        .collect();
    let tags = match rec("tags") {
        Some(t) => decode_pairs(&t)?,
        None => vec![],
    };
    let mtime = rec("last-modified")
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&chrono::Utc).into())
        .or_else(|| {
            (m.mtime > 0)
                .then(|| std::time::UNIX_EPOCH + std::time::Duration::from_secs(m.mtime as u64))
        });
    Ok(PutOptions::new()
        .content_type(rec("content-type"))
        .metadata(metadata)
        .tags(tags)
        .mtime(mtime.filter(|_| local)))
}

/// Restore every member of a tar under `dest`, with its key, Content-Type, metadata and tags,
/// each checked against its recorded MD5. A member that would escape (absolute, `..`, a link,
/// a device) stops the extraction with an error before it is written; members before it were
/// written inside `dest`. The members are written by the engine's executor, `concurrency` at a
/// time, as they are read.
pub async fn extract(
    archive: &Place,
    dest: &Dir,
    concurrency: usize,
    cancel: &Cancel,
    reporter: &Arc<dyn Reporter>,
) -> Result<ExtractSummary, BundleError> {
    let body = archive
        .store
        .get(&archive.key, GetOptions::new())
        .await
        .map_err(|e| BundleError::Input(format!("{}: {e}", archive.uri)))?
        .body;
    let reader = TarReader::new(body);
    let uri = archive.uri.clone();
    // The members, in tar order; a bad one ends the stream with the extraction's error.
    let members = stream::unfold(Some(reader), move |reader| {
        let uri = uri.clone();
        async move {
            let mut reader = reader?;
            let m = match reader.next_member().await {
                Ok(Some(m)) => m,
                Ok(None) => return None,
                Err(e) => return Some((Err(BundleError::Input(format!("{uri}: {e}"))), None)),
            };
            match reader.read_data().await {
                Ok(data) => Some((Ok((m, data)), Some(reader))),
                Err(e) => Some((
                    Err(BundleError::Input(format!("{uri}: {}: {e}", m.name))),
                    None,
                )),
            }
        }
    });
    let exec = Arc::new(Executor::new(concurrency, cancel.clone(), reporter.clone()));
    let local = dest.store.capabilities().local;
    let outcome = exec
        .run_once(members, |(m, data), _| {
            let opts = restore_options(&m, local);
            let want_md5 = m.records.get(&format!("{RECORD}md5")).cloned();
            let (store, dkey, key) = (dest.store.clone(), dest.key(&m.name), m.name.clone());
            async move {
                let n = data.len() as u64;
                let r = async {
                    let opts = opts.map_err(|e| {
                        StoreError::new(ErrorKind::Corrupt, "extract", format!("bad records: {e}"))
                    })?;
                    if let Some(want) = want_md5 {
                        let md5 = hex::encode(Md5::digest(&data));
                        if md5 != want {
                            return Err(corrupt(
                                &dkey,
                                format!("MD5 {md5} differs from the recorded {want}"),
                            ));
                        }
                    }
                    store.put(&dkey, data, opts).await.map(|_| ())
                }
                .await;
                match r {
                    Ok(()) => Done::Record(Record::new(key, Outcome::Copy, "extracted", n)),
                    Err(e) => Done::failed(key, n, e),
                }
            }
        })
        .await;
    // Members in flight are finished even when a bad one stopped the extraction.
    let s = exec.summary();
    outcome?;
    if let Some(e) = exec.take_fatal() {
        return Err(e.into());
    }
    Ok(ExtractSummary {
        members: s.copied,
        bytes: s.copied_bytes,
        failed: s.failed,
        interrupted: s.interrupted,
    })
}
