//! Archive files on disk: volumes written through a [`PartSink`] (plain or zstd), read back
//! as byte streams (zstd and gzip recognised by their magic bytes), and the state file.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use s3ferry_engine::formats::tar::PartSink;
use s3ferry_store::{ByteStream, ErrorKind, Result, StoreError};

use super::format::{StateHeader, StateRec, STATE_FORMAT, VERSION};
use super::ArchiveError;

/// How much a volume file is written (and read) at a time.
pub(super) const CHUNK: usize = 1 << 20;
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

fn io_err(op: &'static str, path: &Path, e: std::io::Error) -> StoreError {
    let kind = if e.kind() == std::io::ErrorKind::StorageFull {
        ErrorKind::StorageFull
    } else {
        ErrorKind::Other
    };
    StoreError::new(kind, op, format!("{}: {e}", path.display()))
}

/// Temp files of an export start with this, then the exporting process's id.
const TEMP: &str = ".s3ferry-tmp.archive-";

/// Files made as `open(2)` makes them (0666 less the umask), not a temp file's 0600: an
/// archive is a file to hand on.
pub(super) fn readable() -> std::fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    std::fs::Permissions::from_mode(0o666)
}

fn temp_prefix() -> String {
    format!("{TEMP}{}-", std::process::id())
}

/// Remove the temp files a killed export left in `dir`: those whose process is gone (a live
/// export's are never touched). Returns how many were removed.
pub(super) fn sweep_dead_temps(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(TEMP))
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() && std::fs::remove_file(e.path()).is_ok() {
            n += 1;
        }
    }
    n
}

/// Where the bytes of a volume go.
enum Out {
    Plain(Box<dyn Write + Send>),
    Zstd(zstd::stream::write::Encoder<'static, Box<dyn Write + Send>>),
}

impl Out {
    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Plain(w) => w.write_all(data),
            Self::Zstd(w) => w.write_all(data),
        }
    }

    fn finish(self) -> std::io::Result<()> {
        match self {
            Self::Plain(mut w) => w.flush(),
            Self::Zstd(w) => w.finish()?.flush(),
        }
    }
}

/// A volume being written: a temp file beside its final name (renamed into place when it is
/// complete, so a partial archive never appears under its name), or standard output.
pub(super) struct VolumeSink {
    out: Option<Out>,
    tmp: Option<tempfile::NamedTempFile>,
    path: PathBuf,
}

impl VolumeSink {
    pub(super) fn create(path: &Path, compress: bool) -> Result<Self> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(&temp_prefix())
            .permissions(readable())
            .tempfile_in(&dir)
            .map_err(|e| io_err("create", path, e))?;
        let file = tmp
            .as_file()
            .try_clone()
            .map_err(|e| io_err("create", path, e))?;
        let w: Box<dyn Write + Send> = Box::new(BufWriter::with_capacity(CHUNK, file));
        Ok(Self {
            out: Some(Self::wrap(w, compress, path)?),
            tmp: Some(tmp),
            path: path.to_path_buf(),
        })
    }

    pub(super) fn stdout(compress: bool) -> Result<Self> {
        let w: Box<dyn Write + Send> = Box::new(BufWriter::with_capacity(CHUNK, std::io::stdout()));
        Ok(Self {
            out: Some(Self::wrap(w, compress, Path::new("-"))?),
            tmp: None,
            path: PathBuf::from("-"),
        })
    }

    fn wrap(w: Box<dyn Write + Send>, compress: bool, path: &Path) -> Result<Out> {
        Ok(if compress {
            Out::Zstd({
                let mut z =
                    zstd::stream::write::Encoder::new(w, 3).map_err(|e| io_err("zstd", path, e))?;
                // A frame checksum: a damaged volume fails to decode instead of reading as
                // other bytes.
                z.include_checksum(true)
                    .map_err(|e| io_err("zstd", path, e))?;
                z
            })
        } else {
            Out::Plain(w)
        })
    }

    /// Flush, sync to disk and give the volume its name.
    pub(super) async fn close(mut self) -> Result<()> {
        let out = self.out.take();
        let tmp = self.tmp.take();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            if let Some(out) = out {
                out.finish().map_err(|e| io_err("write", &path, e))?;
            }
            if let Some(tmp) = tmp {
                tmp.as_file()
                    .sync_all()
                    .map_err(|e| io_err("fsync", &path, e))?;
                tmp.persist(&path)
                    .map_err(|e| io_err("rename", &path, e.error))?;
            }
            Ok(())
        })
        .await
        .map_err(|e| StoreError::new(ErrorKind::Other, "write", e.to_string()))?
    }
}

#[async_trait::async_trait]
impl PartSink for VolumeSink {
    fn next_part_len(&self) -> u64 {
        CHUNK as u64
    }

    async fn push_part(&mut self, data: Bytes) -> Result<()> {
        let mut out = self
            .out
            .take()
            .ok_or_else(|| StoreError::new(ErrorKind::Other, "write", "volume already closed"))?;
        let path = self.path.clone();
        let (out, r) = tokio::task::spawn_blocking(move || {
            let r = out.write_all(&data);
            (out, r)
        })
        .await
        .map_err(|e| StoreError::new(ErrorKind::Other, "write", e.to_string()))?;
        self.out = Some(out);
        r.map_err(|e| io_err("write", &path, e))
    }
}

/// A file's bytes as a stream, decompressed when it starts with zstd's or gzip's magic bytes.
/// Read on a thread of its own, a chunk ahead.
pub(super) fn read_file(path: &Path) -> std::result::Result<ByteStream, ArchiveError> {
    read_file_as(path, true)
}

/// A file's bytes exactly as they are on disk.
pub(super) fn read_file_raw(path: &Path) -> std::result::Result<ByteStream, ArchiveError> {
    read_file_as(path, false)
}

fn read_file_as(path: &Path, decompress: bool) -> std::result::Result<ByteStream, ArchiveError> {
    let mut f = std::fs::File::open(path)
        .map_err(|e| ArchiveError::Input(format!("{}: {e}", path.display())))?;
    let mut magic = [0u8; 4];
    let n = read_up_to(&mut f, &mut magic)
        .map_err(|e| ArchiveError::Input(format!("{}: {e}", path.display())))?;
    let head = std::io::Cursor::new(magic[..n].to_vec());
    let raw = BufReader::with_capacity(CHUNK, head.chain(f));
    let codec = match () {
        _ if !decompress => None,
        _ if magic[..n] == ZSTD_MAGIC => Some("zstd"),
        _ if n >= 2 && magic[..2] == GZIP_MAGIC => Some("gzip"),
        _ => None,
    };
    let mut reader: Box<dyn Read + Send> = if !decompress {
        Box::new(raw)
    } else if magic[..n] == ZSTD_MAGIC {
        Box::new(
            zstd::stream::read::Decoder::with_buffer(raw)
                .map_err(|e| ArchiveError::Input(format!("{}: {e}", path.display())))?,
        )
    } else if n >= 2 && magic[..2] == GZIP_MAGIC {
        Box::new(flate2::bufread::MultiGzDecoder::new(raw))
    } else {
        Box::new(raw)
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes>>(2);
    let shown = path.display().to_string();
    std::thread::spawn(move || loop {
        let mut buf = vec![0u8; CHUNK];
        match read_up_to(&mut reader, &mut buf) {
            Ok(0) => return,
            Ok(n) => {
                buf.truncate(n);
                if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                    return;
                }
            }
            Err(e) => {
                let msg = match codec {
                    Some(c) => format!(
                        "{shown}: damaged volume: its {c} data does not decode ({e}); copy it \
                         again from the export"
                    ),
                    None => format!("{shown}: {e}"),
                };
                let _ = tx.blocking_send(Err(StoreError::new(ErrorKind::Corrupt, "read", msg)));
                return;
            }
        }
    });
    Ok(stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) }).boxed())
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Writes a state file: gzipped JSON Lines into a temp file, renamed into place by `finish`.
pub(super) struct StateWriter {
    out: flate2::write::GzEncoder<BufWriter<std::fs::File>>,
    tmp: tempfile::TempPath,
    path: PathBuf,
}

impl StateWriter {
    pub(super) fn create(
        path: &Path,
        header: &StateHeader,
    ) -> std::result::Result<Self, ArchiveError> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let bad = |e: std::io::Error| ArchiveError::Input(format!("{}: {e}", path.display()));
        let tmp = tempfile::Builder::new()
            .prefix(&temp_prefix())
            .permissions(readable())
            .tempfile_in(&dir)
            .map_err(bad)?;
        let (file, tmp) = tmp.into_parts();
        let mut w = Self {
            out: flate2::write::GzEncoder::new(BufWriter::new(file), flate2::Compression::fast()),
            tmp,
            path: path.to_path_buf(),
        };
        w.line(header)?;
        Ok(w)
    }

    pub(super) fn line<T: serde::Serialize>(
        &mut self,
        v: &T,
    ) -> std::result::Result<(), ArchiveError> {
        serde_json::to_writer(&mut self.out, v)
            .map_err(|e| ArchiveError::Input(format!("{}: {e}", self.path.display())))?;
        self.out
            .write_all(b"\n")
            .map_err(|e| ArchiveError::Input(format!("{}: {e}", self.path.display())))
    }

    /// Complete the file (synced to disk) but leave it under its temp name: `persist` gives it
    /// its name later.
    pub(super) fn finish_temp(self) -> std::result::Result<FinishedState, ArchiveError> {
        let bad = |e: std::io::Error| ArchiveError::Input(format!("{}: {e}", self.path.display()));
        let file = self
            .out
            .finish()
            .map_err(bad)?
            .into_inner()
            .map_err(|e| bad(e.into_error()))?;
        file.sync_all().map_err(bad)?;
        Ok(FinishedState {
            tmp: self.tmp,
            path: self.path,
        })
    }
}

/// A state file written in full, not yet under its name.
pub(super) struct FinishedState {
    pub(super) tmp: tempfile::TempPath,
    pub(super) path: PathBuf,
}

impl FinishedState {
    pub(super) fn persist(self) -> std::result::Result<(), ArchiveError> {
        let path = self.path;
        self.tmp
            .persist(&path)
            .map_err(|e| ArchiveError::Input(format!("{}: {}", path.display(), e.error)))?;
        Ok(())
    }
}

/// A state file's records: `(key, json line)` in key order.
pub(super) type StateRecords = BoxStream<'static, Result<(String, String)>>;

/// A state file: its header, and its records as a sorted `(key, json)` stream (one line in
/// memory at a time).
pub(super) fn read_state(
    path: &Path,
) -> std::result::Result<(StateHeader, StateRecords), ArchiveError> {
    let bad = |m: String| ArchiveError::Input(format!("{}: {m}", path.display()));
    let f = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let mut lines = BufReader::new(flate2::read::MultiGzDecoder::new(f)).lines();
    let first = lines
        .next()
        .ok_or_else(|| bad("empty: not a state file".into()))?
        .map_err(|e| bad(format!("not a state file ({e})")))?;
    let header: StateHeader =
        serde_json::from_str(&first).map_err(|e| bad(format!("not a state file ({e})")))?;
    if header.format != STATE_FORMAT || header.version != VERSION {
        return Err(bad(format!(
            "format {:?} version {} is not {STATE_FORMAT} version {VERSION}",
            header.format, header.version
        )));
    }
    let shown = path.display().to_string();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<(String, String)>>(256);
    std::thread::spawn(move || {
        for (i, l) in lines.enumerate() {
            let item = l
                .map_err(|e| e.to_string())
                .and_then(|l| {
                    serde_json::from_str::<StateRec>(&l)
                        .map(|r| (r.key, l))
                        .map_err(|e| e.to_string())
                })
                .map_err(|e| {
                    StoreError::new(
                        ErrorKind::InvalidInput,
                        "state",
                        format!("{shown} line {}: {e}", i + 2),
                    )
                });
            let end = item.is_err();
            if tx.blocking_send(item).is_err() || end {
                return;
            }
        }
    });
    Ok((
        header,
        stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) }).boxed(),
    ))
}
