//! Streaming PAX tar: written straight into a multipart upload part by part (bundle shards,
//! archive volumes), read back member by member with the safety checks extraction needs.
//!
//! Writing: every member is a ustar header, preceded by a PAX extended header when the name does
//! not fit ustar, is not ASCII, the size needs more than 11 octal digits, or the member carries
//! extra records (object metadata, checksums). The writer records where each member's header
//! and data start, so one member can later be read back with a single ranged GET.
//!
//! Reading ([`TarReader`]): regular files only; a member whose name is absolute, has `..`/`.`
//! or empty segments, or that is a link, device or FIFO is refused; a PAX `size` that
//! disagrees with a non-zero ustar size is refused (CVE-2025-62518); a truncated archive is an
//! error, never a short member.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use s3ferry_store::{ByteStream, ErrorKind, Result, StoreError};

use crate::transfer::{MultipartWriter, PartBody};

pub const BLOCK: u64 = 512;

/// One member to write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Member {
    /// The path in the archive (an object key, exactly).
    pub name: String,
    pub size: u64,
    /// Seconds since the epoch.
    pub mtime: i64,
    /// Extra PAX records (`S3FERRY.meta.<k>`, `S3FERRY.etag`, …), written in order.
    pub records: Vec<(String, String)>,
}

/// Where a member landed in the archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placed {
    /// Offset of the member's first header block (its PAX header, if it has one).
    pub header_offset: u64,
    /// Offset of the member's data.
    pub data_offset: u64,
    pub data_len: u64,
}

/// Where the tar bytes go, a part at a time.
#[async_trait::async_trait]
pub trait PartSink: Send {
    /// The size the next part must have (unless it is the last).
    fn next_part_len(&self) -> u64;
    async fn push_part(&mut self, data: Bytes) -> Result<()>;
}

#[async_trait::async_trait]
impl PartSink for MultipartWriter {
    fn next_part_len(&self) -> u64 {
        MultipartWriter::next_part_len(self)
    }
    async fn push_part(&mut self, data: Bytes) -> Result<()> {
        self.push(PartBody::Bytes(data, None)).await
    }
}

/// A sink that keeps everything in memory (tests, small archives).
#[derive(Default)]
pub struct VecSink {
    pub data: Vec<u8>,
    pub part_len: u64,
}

#[async_trait::async_trait]
impl PartSink for VecSink {
    fn next_part_len(&self) -> u64 {
        self.part_len.max(BLOCK)
    }
    async fn push_part(&mut self, data: Bytes) -> Result<()> {
        self.data.extend_from_slice(&data);
        Ok(())
    }
}

/// Cuts a byte stream into the parts a [`PartSink`] asks for, holding at most one part in
/// memory: the tar writer's output, and any stream written into a multipart upload whose
/// chunks do not fall on part boundaries.
pub struct PartBuffer<S: PartSink> {
    sink: S,
    buf: BytesMut,
    pos: u64,
}

impl<S: PartSink> PartBuffer<S> {
    pub fn new(sink: S) -> Self {
        Self {
            sink,
            buf: BytesMut::new(),
            pos: 0,
        }
    }

    /// Bytes written so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    pub async fn write(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let want = self.sink.next_part_len() as usize;
            if self.buf.capacity() < want {
                self.buf.reserve(want - self.buf.len());
            }
            let n = (want - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            self.pos += n as u64;
            if self.buf.len() == want {
                let part = self.buf.split().freeze();
                self.sink.push_part(part).await?;
            }
        }
        Ok(())
    }

    /// The sink, dropping what is buffered (to abandon the stream, e.g. abort an upload).
    pub fn into_inner(self) -> S {
        self.sink
    }

    /// Push what is buffered as the last part. Returns the sink and the bytes written.
    pub async fn finish(mut self) -> Result<(S, u64)> {
        if !self.buf.is_empty() {
            let part = self.buf.split().freeze();
            self.sink.push_part(part).await?;
        }
        Ok((self.sink, self.pos))
    }
}

/// Writes a tar into a [`PartSink`], holding at most one part in memory.
pub struct TarWriter<S: PartSink> {
    out: PartBuffer<S>,
}

fn octal(field: &mut [u8], v: u64) -> bool {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    if s.len() > digits {
        return false;
    }
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
    true
}

fn pax_record(k: &str, v: &str) -> Vec<u8> {
    // "<len> <k>=<v>\n" where len counts itself.
    let body = k.len() + v.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len.to_string().len() + body != len {
        len = len.to_string().len() + body;
    }
    format!("{len} {k}={v}\n").into_bytes()
}

fn header(name: &[u8], size: u64, mtime: i64, kind: u8) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    if !octal(&mut h[124..136], size) {
        octal(&mut h[124..136], 0); // the PAX header carries the size
    }
    octal(&mut h[136..148], mtime.max(0) as u64);
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|b| *b as u64).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

impl<S: PartSink> TarWriter<S> {
    pub fn new(sink: S) -> Self {
        Self {
            out: PartBuffer::new(sink),
        }
    }

    /// Bytes written so far (the offset of the next member).
    pub fn position(&self) -> u64 {
        self.out.position()
    }

    async fn write(&mut self, data: &[u8]) -> Result<()> {
        self.out.write(data).await
    }

    async fn pad(&mut self) -> Result<()> {
        let rem = (self.position() % BLOCK) as usize;
        if rem != 0 {
            self.write(&[0u8; 512][..512 - rem]).await?;
        }
        Ok(())
    }

    /// Append one member whose data is `body` (exactly `m.size` bytes, else `Corrupt` and the
    /// archive must be abandoned).
    pub async fn append(&mut self, m: &Member, mut body: ByteStream) -> Result<Placed> {
        let header_offset = self.position();
        let name = m.name.as_bytes();
        let needs_pax = name.len() > 100
            || !m.name.is_ascii()
            || m.size >= 8 * 1024 * 1024 * 1024
            || !m.records.is_empty();
        if needs_pax {
            let mut recs = Vec::new();
            recs.extend(pax_record("path", &m.name));
            recs.extend(pax_record("size", &m.size.to_string()));
            for (k, v) in &m.records {
                recs.extend(pax_record(k, v));
            }
            let h = header(b"././@PaxHeader", recs.len() as u64, m.mtime, b'x');
            self.write(&h).await?;
            self.write(&recs).await?;
            self.pad().await?;
        }
        // The ustar name: the key's bytes (truncated; the PAX path is the real one).
        let h = header(name, m.size, m.mtime, b'0');
        self.write(&h).await?;
        let data_offset = self.position();
        let mut n = 0u64;
        while let Some(c) = body.next().await {
            let c = c?;
            n += c.len() as u64;
            if n > m.size {
                return Err(StoreError::new(
                    ErrorKind::Corrupt,
                    "tar",
                    format!("body longer than {} bytes", m.size),
                )
                .with_key(&m.name));
            }
            self.write(&c).await?;
        }
        if n != m.size {
            return Err(StoreError::new(
                ErrorKind::Corrupt,
                "tar",
                format!("body ended at {n} of {} bytes", m.size),
            )
            .with_key(&m.name));
        }
        self.pad().await?;
        Ok(Placed {
            header_offset,
            data_offset,
            data_len: m.size,
        })
    }

    /// Write the end-of-archive blocks and the last part. Returns the sink and the total size.
    pub async fn finish(mut self) -> Result<(S, u64)> {
        self.write(&[0u8; 1024]).await?;
        self.out.finish().await
    }
}

/// A member read back: its name, size, mtime, PAX records and where its data is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadMember {
    pub name: String,
    pub size: u64,
    pub mtime: i64,
    pub records: BTreeMap<String, String>,
    pub data_offset: u64,
}

/// Reads a tar from a byte stream, member by member, refusing anything unsafe.
pub struct TarReader {
    body: ByteStream,
    buf: BytesMut,
    pos: u64,
    ended: bool,
    /// Data of the current member not consumed yet (skipped by the next `next_member`).
    pending: u64,
    /// The current member's padding after its data.
    pad: u64,
}

/// The largest PAX extended header read (real ones are a few KiB; a huge one is an attack on
/// memory, not an archive).
const MAX_PAX_HEADER: u64 = 1 << 20;

fn bad(msg: impl Into<String>) -> StoreError {
    StoreError::new(ErrorKind::InvalidInput, "tar", msg)
}

fn parse_octal(f: &[u8]) -> Option<u64> {
    let s: String = f
        .iter()
        .take_while(|b| **b != 0)
        .map(|b| *b as char)
        .collect();
    let s = s.trim();
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

/// A member name that is safe to write under a destination: relative, no `.`/`..`/empty
/// segments, no NUL or control characters.
pub fn safe_member_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.starts_with('/') {
        return Err(format!("{name:?} is absolute or empty"));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(format!("{name:?} has control characters"));
    }
    if name
        .trim_end_matches('/')
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(format!("{name:?} has empty, '.' or '..' segments"));
    }
    Ok(())
}

impl TarReader {
    pub fn new(body: ByteStream) -> Self {
        Self {
            body,
            buf: BytesMut::new(),
            pos: 0,
            ended: false,
            pending: 0,
            pad: 0,
        }
    }

    async fn fill(&mut self, n: usize) -> Result<bool> {
        while self.buf.len() < n && !self.ended {
            match self.body.next().await {
                Some(c) => self.buf.extend_from_slice(&c?),
                None => self.ended = true,
            }
        }
        Ok(self.buf.len() >= n)
    }

    async fn take(&mut self, n: usize) -> Result<Bytes> {
        if !self.fill(n).await? {
            return Err(StoreError::new(
                ErrorKind::Corrupt,
                "tar",
                format!(
                    "archive truncated at byte {}",
                    self.pos + self.buf.len() as u64
                ),
            ));
        }
        self.pos += n as u64;
        Ok(self.buf.split_to(n).freeze())
    }

    async fn skip(&mut self, mut n: u64) -> Result<()> {
        while n > 0 {
            let k = n.min(1 << 20) as usize;
            let k = if self.fill(1).await? {
                k.min(self.buf.len())
            } else {
                return Err(StoreError::new(
                    ErrorKind::Corrupt,
                    "tar",
                    "archive truncated",
                ));
            };
            self.take(k).await?;
            n -= k as u64;
        }
        Ok(())
    }

    /// The next member, or `None` at the end-of-archive marker. The member's data must be read
    /// with [`TarReader::read_data`] before the next call (else it is skipped).
    pub async fn next_member(&mut self) -> Result<Option<ReadMember>> {
        let rest = std::mem::take(&mut self.pending) + std::mem::take(&mut self.pad);
        if rest > 0 {
            self.skip(rest).await?;
        }
        let mut records: BTreeMap<String, String> = BTreeMap::new();
        loop {
            let h = self.take(BLOCK as usize).await?;
            if h.iter().all(|b| *b == 0) {
                return Ok(None);
            }
            let stored: u64 =
                parse_octal(&h[148..156]).ok_or_else(|| bad("bad header checksum field"))?;
            let sum: u64 = h
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    if (148..156).contains(&i) {
                        32
                    } else {
                        *b as u64
                    }
                })
                .sum();
            if sum != stored {
                return Err(StoreError::new(
                    ErrorKind::Corrupt,
                    "tar",
                    format!("header checksum mismatch at byte {}", self.pos - BLOCK),
                ));
            }
            let size = parse_octal(&h[124..136]).ok_or_else(|| bad("bad size field"))?;
            let mtime = parse_octal(&h[136..148]).unwrap_or(0) as i64;
            match h[156] {
                b'x' => {
                    if size > MAX_PAX_HEADER {
                        return Err(bad(format!(
                            "PAX header of {size} bytes (more than {MAX_PAX_HEADER})"
                        )));
                    }
                    let data = self.take(size as usize).await?;
                    self.skip(size.next_multiple_of(BLOCK) - size).await?;
                    parse_pax(&data, &mut records)?;
                }
                b'g' => {
                    self.skip(size.next_multiple_of(BLOCK)).await?;
                }
                b'0' | 0 => {
                    let mut name: String = String::from_utf8_lossy(
                        &h[..100]
                            .iter()
                            .copied()
                            .take_while(|b| *b != 0)
                            .collect::<Vec<_>>(),
                    )
                    .into_owned();
                    let prefix: Vec<u8> = h[345..500]
                        .iter()
                        .copied()
                        .take_while(|b| *b != 0)
                        .collect();
                    if !prefix.is_empty() && &h[257..262] == b"ustar" {
                        name = format!("{}/{name}", String::from_utf8_lossy(&prefix));
                    }
                    if let Some(p) = records.remove("path") {
                        name = p;
                    }
                    let size = match records.remove("size") {
                        Some(s) => {
                            let ps: u64 =
                                s.parse().map_err(|_| bad(format!("bad PAX size {s:?}")))?;
                            if size != 0 && ps != size {
                                return Err(bad(format!(
                                    "member {name:?}: PAX size {ps} disagrees with the header's {size}"
                                )));
                            }
                            ps
                        }
                        None => size,
                    };
                    safe_member_name(&name).map_err(bad)?;
                    self.pending = size;
                    self.pad = size.next_multiple_of(BLOCK) - size;
                    return Ok(Some(ReadMember {
                        name,
                        size,
                        mtime,
                        records,
                        data_offset: self.pos,
                    }));
                }
                t => {
                    return Err(bad(format!(
                    "member type {:?} is not a regular file (links, devices and FIFOs are refused)",
                    t as char
                )))
                }
            }
        }
    }

    /// The current member's data (exactly its size, then the padding is skipped).
    pub async fn read_data(&mut self) -> Result<Bytes> {
        let n = std::mem::take(&mut self.pending);
        let data = self.take(n as usize).await?;
        let pad = std::mem::take(&mut self.pad);
        self.skip(pad).await?;
        Ok(data)
    }

    /// The next piece (at most `max` bytes) of the current member's data, or `None` once all
    /// of it was read: a member of any size streams with bounded memory.
    pub async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>> {
        if self.pending == 0 {
            let pad = std::mem::take(&mut self.pad);
            self.skip(pad).await?;
            return Ok(None);
        }
        if !self.fill(1).await? {
            return Err(StoreError::new(
                ErrorKind::Corrupt,
                "tar",
                format!("archive truncated at byte {}", self.pos),
            ));
        }
        let n = (self.pending as usize).min(max.max(1)).min(self.buf.len());
        let chunk = self.take(n).await?;
        self.pending -= n as u64;
        Ok(Some(chunk))
    }
}

fn parse_pax(data: &[u8], out: &mut BTreeMap<String, String>) -> Result<()> {
    let mut rest = data;
    while !rest.is_empty() {
        let sp = rest
            .iter()
            .position(|b| *b == b' ')
            .ok_or_else(|| bad("bad PAX record"))?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|l| *l > sp + 1 && *l <= rest.len())
            .ok_or_else(|| bad("bad PAX record length"))?;
        let rec = &rest[sp + 1..len - 1];
        let eq = rec
            .iter()
            .position(|b| *b == b'=')
            .ok_or_else(|| bad("PAX record without '='"))?;
        let k = String::from_utf8(rec[..eq].to_vec()).map_err(|_| bad("PAX key not UTF-8"))?;
        let v =
            String::from_utf8(rec[eq + 1..].to_vec()).map_err(|_| bad("PAX value not UTF-8"))?;
        out.insert(k, v);
        rest = &rest[len..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;

    fn body(data: &[u8]) -> ByteStream {
        let chunks: Vec<Result<Bytes>> = data
            .chunks(700)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        stream::iter(chunks).boxed()
    }

    fn member(name: &str, size: usize) -> Member {
        Member {
            name: name.into(),
            size: size as u64,
            mtime: 1_700_000_000,
            records: vec![],
        }
    }

    #[tokio::test]
    async fn members_round_trip_with_long_and_unicode_names_and_records() {
        let long = format!("{}/{}", "d".repeat(150), "é f+%.txt");
        let items: Vec<(Member, Vec<u8>)> = vec![
            (member("a.txt", 5), b"hello".to_vec()),
            (
                Member {
                    records: vec![("S3FERRY.meta.color".into(), "blue = yes\nno".into())],
                    ..member(&long, 1300)
                },
                (0..1300u32).map(|i| (i % 251) as u8).collect(),
            ),
            (member("empty", 0), vec![]),
        ];
        let mut w = TarWriter::new(VecSink {
            data: vec![],
            part_len: 1024,
        });
        let mut placed = Vec::new();
        for (m, d) in &items {
            placed.push(w.append(m, body(d)).await.unwrap());
        }
        let (sink, total) = w.finish().await.unwrap();
        assert_eq!(sink.data.len() as u64, total);
        assert_eq!(total % BLOCK, 0);
        // Each member's data is where the writer said.
        for ((_, d), p) in items.iter().zip(&placed) {
            let at = p.data_offset as usize;
            assert_eq!(&sink.data[at..at + d.len()], d.as_slice());
        }
        let mut r = TarReader::new(body(&sink.data));
        for ((m, d), p) in items.iter().zip(&placed) {
            let got = r.next_member().await.unwrap().unwrap();
            assert_eq!(got.name, m.name);
            assert_eq!(got.size, m.size);
            assert_eq!(got.data_offset, p.data_offset);
            for (k, v) in &m.records {
                assert_eq!(got.records.get(k), Some(v));
            }
            assert_eq!(r.read_data().await.unwrap().as_ref(), d.as_slice());
        }
        assert_eq!(r.next_member().await.unwrap(), None);
    }

    async fn one_member_tar(name: &str, kind: u8, pax: Option<Vec<u8>>) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(recs) = pax {
            out.extend_from_slice(&header(b"pax", recs.len() as u64, 0, b'x'));
            out.extend_from_slice(&recs);
            out.resize(out.len().next_multiple_of(512), 0);
        }
        out.extend_from_slice(&header(name.as_bytes(), 4, 0, kind));
        out.extend_from_slice(b"evil");
        out.resize(out.len().next_multiple_of(512), 0);
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    #[tokio::test]
    async fn unsafe_members_are_refused() {
        for name in ["../evil", "/etc/passwd", "a/../../x", "a//b", "./x"] {
            let t = one_member_tar(name, b'0', None).await;
            let e = TarReader::new(body(&t)).next_member().await.unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidInput, "{name}: {e}");
        }
        // Symlink, hard link, character device, FIFO members.
        for kind in [b'2', b'1', b'3', b'6'] {
            let t = one_member_tar("link", kind, None).await;
            let e = TarReader::new(body(&t)).next_member().await.unwrap_err();
            assert!(e.to_string().contains("not a regular file"), "{e}");
        }
        // A PAX header too big to be real (an attack on memory).
        let t = one_member_tar(
            "ok",
            b'0',
            Some(pax_record("comment", &"x".repeat(1 << 21))),
        )
        .await;
        let e = TarReader::new(body(&t)).next_member().await.unwrap_err();
        assert!(e.to_string().contains("PAX header of"), "{e}");
        // A PAX path that escapes, behind a harmless ustar name.
        let t = one_member_tar("ok", b'0', Some(pax_record("path", "../../x"))).await;
        assert!(TarReader::new(body(&t)).next_member().await.is_err());
        // PAX size disagreeing with the header's (CVE-2025-62518).
        let t = one_member_tar("ok", b'0', Some(pax_record("size", "2000"))).await;
        let e = TarReader::new(body(&t)).next_member().await.unwrap_err();
        assert!(e.to_string().contains("disagrees"), "{e}");
    }

    #[tokio::test]
    async fn a_truncated_archive_is_an_error_not_a_short_member() {
        let mut w = TarWriter::new(VecSink::default());
        w.append(&member("x", 2000), body(&[7u8; 2000]))
            .await
            .unwrap();
        let (sink, _) = w.finish().await.unwrap();
        let cut = &sink.data[..1500];
        let mut r = TarReader::new(body(cut));
        r.next_member().await.unwrap().unwrap();
        let e = r.read_data().await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Corrupt);
    }

    #[tokio::test]
    async fn members_stream_in_chunks_with_their_padding_skipped() {
        let mut w = TarWriter::new(VecSink::default());
        let a: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        w.append(&member("a", 5000), body(&a)).await.unwrap();
        w.append(&member("b", 3), body(b"xyz")).await.unwrap();
        let (sink, _) = w.finish().await.unwrap();
        let mut r = TarReader::new(body(&sink.data));
        assert_eq!(r.next_member().await.unwrap().unwrap().name, "a");
        let mut got = Vec::new();
        while let Some(c) = r.read_chunk(777).await.unwrap() {
            assert!(c.len() <= 777);
            got.extend_from_slice(&c);
        }
        assert_eq!(got, a);
        // Half-read members are skipped whole by the next call.
        let m = r.next_member().await.unwrap().unwrap();
        assert_eq!((m.name.as_str(), m.size), ("b", 3));
        assert_eq!(r.read_chunk(2).await.unwrap().as_deref(), Some(&b"xy"[..]));
        assert!(r.next_member().await.unwrap().is_none());
    }

    #[test]
    fn pax_record_lengths_count_themselves() {
        for v in ["", "x", &"y".repeat(95), &"z".repeat(990)] {
            let r = pax_record("k", v);
            let (len, _) = std::str::from_utf8(&r).unwrap().split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), r.len());
        }
    }

    /// The tar goes straight into a multipart upload: one part in memory at a time, and a
    /// member can be read back with one ranged GET at its recorded offset.
    #[tokio::test]
    async fn a_tar_streamed_into_a_multipart_upload() {
        use crate::journal::Journal;
        use crate::transfer::TransferConfig;
        use s3ferry_store::memory::MemoryStore;
        use s3ferry_store::{DynStore, GetOptions, PartLayout, PutOptions, Store, StoreExt};
        use std::sync::Arc;

        let mem = MemoryStore::new();
        let store: DynStore = Arc::new(mem.clone());
        let cfg = TransferConfig::new(64 << 20);
        let journal = Arc::new(Journal::in_memory().unwrap());
        let w = MultipartWriter::create(
            store.clone(),
            "shard.tar",
            PutOptions::new(),
            PartLayout::for_stream(5 << 20),
            &cfg,
            journal,
        )
        .await
        .unwrap();
        let mut tar = TarWriter::new(w);
        let objects: Vec<(String, Vec<u8>)> = (0..40)
            .map(|i| (format!("k/{i:03}"), vec![i as u8; 300_000 + i]))
            .collect();
        let mut placed = Vec::new();
        for (k, d) in &objects {
            placed.push(tar.append(&member(k, d.len()), body(d)).await.unwrap());
        }
        let (w, total) = tar.finish().await.unwrap();
        w.finish(None).await.unwrap();
        assert_eq!(mem.head("shard.tar").await.unwrap().size, total);
        assert!(mem.op_count("upload_part") >= 2, "several parts");
        let (k, d) = &objects[17];
        let p = placed[17];
        let got = store
            .get(
                "shard.tar",
                GetOptions::new().range(p.data_offset..p.data_offset + p.data_len),
            )
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(got.as_ref(), d.as_slice(), "{k} by one ranged GET");
        let all = mem.get_bytes("shard.tar").await.unwrap();
        let mut r = TarReader::new(body(&all));
        let mut n = 0;
        while let Some(m) = r.next_member().await.unwrap() {
            assert_eq!(
                r.read_data().await.unwrap().as_ref(),
                objects[n].1.as_slice(),
                "{}",
                m.name
            );
            n += 1;
        }
        assert_eq!(n, objects.len());
    }
}
