//! Reading the input stream in parts: into memory under the shared budget, or staged in files.
//!
//! A thread of its own reads the input (a blocking read of stdin cannot be interrupted) and
//! hands what each read returned to the async side through a short queue (at most
//! [`QUEUE`] blocks of at most [`BLOCK`] bytes: about 1 MiB beyond the parts themselves). The
//! async side cuts the blocks into parts, which lets a segmented upload publish a segment when
//! its time is up ([`Input::begin_segment`]) even though the input is quiet: a blocking read
//! of exactly one part could not.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use s3ferry_engine::transfer::{PartBody, Reservation, TransferConfig};
use s3ferry_store::checksum::{crc64nvme_combine, Crc64};
use s3ferry_store::FileRange;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::PipeError;

/// Largest block one read of the input hands over.
const BLOCK: usize = 256 * 1024;
/// Blocks read ahead of the parts being filled.
const QUEUE: usize = 4;

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

/// Where the bytes of the part being filled go.
enum Sink {
    Mem(Vec<u8>, Reservation),
    /// A staged file being written (about one block of memory reserved while it is).
    File {
        path: PathBuf,
        file: tokio::fs::File,
        _mem: Reservation,
    },
}

/// The input stream, cut into parts.
pub(super) struct Input {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    /// The rest of a block that did not fit the previous part.
    carry: Option<Bytes>,
    staging: Option<PathBuf>,
    cfg: TransferConfig,
    /// The reader saw the end of the input (the queue is closed).
    eof: bool,
    /// Bytes read so far and their CRC64NVME.
    pub total: u64,
    pub crc: u64,
    parts: u64,
    /// Time cuts: a segment ends `interval` after its first byte was read.
    interval: Option<Duration>,
    cut_at: Option<Instant>,
    /// The segment's time is up: [`Input::next`] gives nothing more until
    /// [`Input::begin_segment`].
    cut: bool,
}

impl Input {
    /// `staging`: a directory (created, owned by this run) for staged parts. `interval`: cut
    /// segments by time as well as by size (see [`Input::begin_segment`]).
    pub fn new(
        reader: Box<dyn Read + Send>,
        staging: Option<PathBuf>,
        cfg: &TransferConfig,
        interval: Option<Duration>,
    ) -> Result<Self, PipeError> {
        let (tx, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("s3ferry-input".into())
            .spawn(move || read_blocks(reader, tx))
            .map_err(|e| PipeError::Failed(format!("starting the input reader: {e}")))?;
        Ok(Self {
            rx,
            carry: None,
            staging,
            cfg: cfg.clone(),
            eof: false,
            total: 0,
            crc: 0,
            parts: 0,
            interval: interval.filter(|d| !d.is_zero()),
            cut_at: None,
            cut: false,
        })
    }

    /// Continue a stream that already has `total` bytes with this CRC64NVME (an append).
    pub fn resume_at(&mut self, total: u64, crc: u64) {
        self.total = total;
        self.crc = crc;
    }

    /// A new segment starts: with a time cut, it ends `interval` after its first byte.
    pub fn begin_segment(&mut self) {
        self.cut_at = None;
        self.cut = false;
    }

    /// The input has ended and every byte of it was handed out.
    pub fn ended(&self) -> bool {
        self.eof && self.carry.is_none()
    }

    /// Is the segment's time up? (Then it is cut: no more of it.)
    fn time_up(&mut self) -> bool {
        if self.cut_at.is_some_and(|at| at <= Instant::now()) {
            self.cut = true;
        }
        self.cut
    }

    /// The next block of input; `None` at the end of the input or when the segment's time is
    /// up (a segment's clock starts at its first byte, so a cut never makes an empty part).
    async fn block(&mut self) -> Result<Option<Bytes>, PipeError> {
        if self.time_up() {
            return Ok(None);
        }
        if let Some(b) = self.carry.take() {
            return Ok(Some(b));
        }
        if self.eof {
            return Ok(None);
        }
        let got = match self.cut_at {
            Some(at) => match tokio::time::timeout_at(at, self.rx.recv()).await {
                Ok(got) => got,
                Err(_) => {
                    self.cut = true;
                    return Ok(None);
                }
            },
            None => self.rx.recv().await,
        };
        match got {
            Some(Ok(b)) => Ok(Some(b)),
            Some(Err(e)) => {
                self.eof = true;
                Err(PipeError::Failed(format!("reading the input: {e}")))
            }
            None => {
                self.eof = true;
                Ok(None)
            }
        }
    }

    /// The next up to `len` bytes: fewer at the end of the input or when the segment's time is
    /// up. `None` when there is nothing more (then see [`Input::ended`] and [`Input::cut`]).
    pub async fn next(&mut self, len: u64) -> Result<Option<Chunk>, PipeError> {
        if self.time_up() || self.ended() || len == 0 {
            return Ok(None);
        }
        self.parts += 1;
        let mut sink = match &self.staging {
            None => {
                let mem = self
                    .cfg
                    .reserve(len)
                    .await
                    .map_err(|e| PipeError::Failed(e.to_string()))?;
                Sink::Mem(Vec::with_capacity(len as usize), mem)
            }
            Some(dir) => {
                let path = dir.join(format!("part-{:06}", self.parts));
                let mem = self
                    .cfg
                    .reserve(BLOCK as u64)
                    .await
                    .map_err(|e| PipeError::Failed(e.to_string()))?;
                let f = tokio::fs::File::create(&path).await.map_err(|e| {
                    PipeError::Failed(format!("creating staged part {}: {e}", path.display()))
                })?;
                Sink::File {
                    path,
                    file: f,
                    _mem: mem,
                }
            }
        };
        let mut crc = Crc64::default();
        let mut n = 0u64;
        let filled = async {
            while n < len {
                let Some(mut b) = self.block().await? else {
                    break;
                };
                if b.len() as u64 > len - n {
                    self.carry = Some(b.split_off((len - n) as usize));
                }
                if let (Some(every), None) = (self.interval, self.cut_at) {
                    self.cut_at = Some(Instant::now() + every);
                }
                crc.update(&b);
                n += b.len() as u64;
                match &mut sink {
                    Sink::Mem(v, _) => v.extend_from_slice(&b),
                    Sink::File { path, file, .. } => file.write_all(&b).await.map_err(|e| {
                        PipeError::Failed(format!("writing staged part {}: {e}", path.display()))
                    })?,
                }
            }
            Ok::<_, PipeError>(())
        }
        .await;
        let data = match sink {
            Sink::Mem(v, mem) => ChunkData::Mem(Bytes::from(v), mem),
            Sink::File { path, mut file, .. } => {
                let flushed = file.flush().await;
                drop(file);
                if filled.is_err() || flushed.is_err() {
                    let _ = fs_err::remove_file(&path);
                }
                if let (Ok(()), Err(e)) = (&filled, flushed) {
                    return Err(PipeError::Failed(format!(
                        "writing staged part {}: {e}",
                        path.display()
                    )));
                }
                ChunkData::File(FileRange {
                    path,
                    offset: 0,
                    len: n,
                })
            }
        };
        filled?;
        let chunk = Chunk {
            len: n,
            crc: crc.finish(),
            data,
        };
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

/// The reader thread: hand over what each read returns until the end of the input, an error,
/// or the other side going away.
fn read_blocks(mut reader: Box<dyn Read + Send>, tx: mpsc::Sender<std::io::Result<Bytes>>) {
    // Reads land in a shared buffer that is handed over piece by piece without a copy; a new
    // one (fresh zero pages) is taken when little of it is left.
    let mut buf = BytesMut::zeroed(BLOCK);
    loop {
        if buf.len() < BLOCK / 4 {
            buf = BytesMut::zeroed(BLOCK);
        }
        let got = match reader.read(&mut buf[..]) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        if tx.blocking_send(Ok(buf.split_to(got).freeze())).is_err() {
            return;
        }
    }
}
