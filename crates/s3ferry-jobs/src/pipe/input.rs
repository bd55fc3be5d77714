//! Reading the input stream in parts: into memory under the shared budget, or staged in files.

use std::io::{Read, Write};
use std::path::PathBuf;

use bytes::Bytes;
use s3ferry_engine::transfer::{PartBody, Reservation, TransferConfig};
use s3ferry_store::checksum::{crc64nvme_combine, Crc64};
use s3ferry_store::FileRange;

use super::PipeError;

/// Staged parts: bytes read from the stream at once go through a buffer of this size.
const STAGE_BUF: usize = 1024 * 1024;

/// One part of the stream.
pub(super) struct Chunk {
    pub len: u64,
    pub crc: u64,
    data: ChunkData,
}

enum ChunkData {
    Mem(Bytes, Reservation),
    /// A staged file (removed when the part body is dropped after its upload).
    File(FileRange),
}

impl Chunk {
    /// The chunk as a part body for a multipart upload.
    pub fn into_body(self) -> PartBody {
        match self.data {
            ChunkData::Mem(b, r) => PartBody::Bytes(b, Some(r)),
            ChunkData::File(f) => PartBody::TempFile(f),
        }
    }

    /// The chunk's bytes in memory (for a single PutObject).
    pub async fn into_bytes(self) -> Result<Bytes, PipeError> {
        match self.data {
            ChunkData::Mem(b, _) => Ok(b),
            ChunkData::File(f) => {
                let r = tokio::task::spawn_blocking(move || {
                    let r = f.read();
                    let _ = fs_err::remove_file(&f.path);
                    r.map_err(|e| format!("reading staged part {}: {e}", f.path.display()))
                })
                .await
                .map_err(|e| PipeError::Failed(e.to_string()))?;
                r.map_err(PipeError::Failed)
            }
        }
    }
}

/// The input stream, read one part at a time on a blocking thread.
pub(super) struct Input {
    reader: Option<Box<dyn Read + Send>>,
    staging: Option<PathBuf>,
    cfg: TransferConfig,
    eof: bool,
    /// Bytes read so far and their CRC64NVME.
    pub total: u64,
    pub crc: u64,
    parts: u64,
}

impl Input {
    /// `staging`: a directory (created, owned by this run) for staged parts.
    pub fn new(
        reader: Box<dyn Read + Send>,
        staging: Option<PathBuf>,
        cfg: &TransferConfig,
    ) -> Self {
        Self {
            reader: Some(reader),
            staging,
            cfg: cfg.clone(),
            eof: false,
            total: 0,
            crc: 0,
            parts: 0,
        }
    }

    /// The next up to `len` bytes (fewer only at the end of the stream); `None` at the end.
    pub async fn next(&mut self, len: u64) -> Result<Option<Chunk>, PipeError> {
        if self.eof || len == 0 {
            return Ok(None);
        }
        let Some(mut reader) = self.reader.take() else {
            return Err(PipeError::Failed("input already failed".into()));
        };
        self.parts += 1;
        let chunk = match &self.staging {
            None => {
                let mem = self
                    .cfg
                    .reserve(len)
                    .await
                    .map_err(|e| PipeError::Failed(e.to_string()))?;
                let (reader_back, r) = tokio::task::spawn_blocking(move || {
                    let mut buf = Vec::with_capacity(len as usize);
                    let r = (&mut reader).take(len).read_to_end(&mut buf);
                    (reader, r.map(|_| buf))
                })
                .await
                .map_err(|e| PipeError::Failed(format!("input reader: {e}")))?;
                reader = reader_back;
                let buf = r.map_err(|e| PipeError::Failed(format!("reading the input: {e}")))?;
                let crc = s3ferry_store::checksum::crc64nvme(&buf);
                Chunk {
                    len: buf.len() as u64,
                    crc,
                    data: ChunkData::Mem(Bytes::from(buf), mem),
                }
            }
            Some(dir) => {
                let path = dir.join(format!("part-{:06}", self.parts));
                let _mem = self
                    .cfg
                    .reserve(STAGE_BUF as u64)
                    .await
                    .map_err(|e| PipeError::Failed(e.to_string()))?;
                let (reader_back, r) = tokio::task::spawn_blocking(move || {
                    let r = stage(&mut reader, &path, len);
                    (reader, r.map(|(n, crc)| (path, n, crc)))
                })
                .await
                .map_err(|e| PipeError::Failed(format!("input reader: {e}")))?;
                reader = reader_back;
                let (path, n, crc) = r.map_err(PipeError::Failed)?;
                Chunk {
                    len: n,
                    crc,
                    data: ChunkData::File(FileRange {
                        path,
                        offset: 0,
                        len: n,
                    }),
                }
            }
        };
        self.reader = Some(reader);
        if chunk.len < len {
            self.eof = true;
        }
        if chunk.len == 0 {
            if let ChunkData::File(f) = &chunk.data {
                let _ = fs_err::remove_file(&f.path);
            }
            return Ok(None);
        }
        self.crc = crc64nvme_combine(self.crc, chunk.crc, chunk.len);
        self.total += chunk.len;
        Ok(Some(chunk))
    }
}

/// Copy up to `len` bytes of `reader` into a new file at `path`; (bytes, CRC64NVME).
fn stage(reader: &mut dyn Read, path: &std::path::Path, len: u64) -> Result<(u64, u64), String> {
    let err = |what: &str, e: std::io::Error| format!("{what} {}: {e}", path.display());
    let mut f = fs_err::File::create(path).map_err(|e| err("creating staged part", e))?;
    let mut buf = vec![0u8; STAGE_BUF.min(len as usize).max(1)];
    let mut crc = Crc64::default();
    let mut n = 0u64;
    while n < len {
        let want = ((len - n) as usize).min(buf.len());
        let got = match reader.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(g) => g,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = fs_err::remove_file(path);
                return Err(format!("reading the input: {e}"));
            }
        };
        if let Err(e) = f.write_all(&buf[..got]) {
            let _ = fs_err::remove_file(path);
            return Err(err("writing staged part", e));
        }
        crc.update(&buf[..got]);
        n += got as u64;
    }
    Ok((n, crc.finish()))
}
