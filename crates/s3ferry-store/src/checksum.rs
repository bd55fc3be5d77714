//! Content identity: full-object CRC64NVME (what new S3 objects carry) and the multipart-aware
//! MD5 ETag (what S3 reports for single-part and multipart uploads without KMS).

use base64::Engine as _;
use crc_fast::CrcAlgorithm;
use md5::{Digest as _, Md5};

pub const MIB: u64 = 1024 * 1024;
/// Smallest part S3 accepts (except the last).
pub const MIN_PART_SIZE: u64 = 5 * MIB;
/// Our default part size and single-PUT threshold.
pub const DEFAULT_PART_SIZE: u64 = 8 * MIB;
pub const MAX_PARTS: u64 = 10_000;

/// Part size rule: max(8 MiB, ceil(size / 10000)), never below 5 MiB.
pub fn part_size_for(size: u64, configured: u64) -> u64 {
    configured.max(MIN_PART_SIZE).max(size.div_ceil(MAX_PARTS))
}

/// Objects of at most one part go up in one PUT.
pub fn is_multipart(size: u64, part_size: u64) -> bool {
    size > part_size
}

/// Largest part S3 accepts.
pub const MAX_PART_SIZE: u64 = 5 * 1024 * MIB;

/// How the parts of a multipart upload are sized. Every part but the last has exactly the size
/// the layout gives its number, so a store can place part `n` at a known offset before the parts
/// before it have arrived (the local store writes parts in place), and a stream of unknown length
/// can still reach S3's 5 TiB within 10,000 parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartLayout {
    /// Every part the same size (known-length objects: [`part_size_for`]).
    Uniform(u64),
    /// `base` bytes, doubling every `every` parts, never above [`MAX_PART_SIZE`] (streams of
    /// unknown length; from 8 MiB every 1,000 parts: 8 GiB in the first 1,000 parts, about
    /// 8 TiB within 10,000).
    Doubling { base: u64, every: u32 },
}

impl PartLayout {
    /// The layout for a stream of unknown length starting at `base`-byte parts.
    pub fn for_stream(base: u64) -> Self {
        Self::Doubling {
            base: base.max(MIN_PART_SIZE),
            every: 1000,
        }
    }

    /// Size of part `n` (1-based) unless it is the last.
    pub fn len(&self, n: u32) -> u64 {
        match *self {
            Self::Uniform(s) => s,
            Self::Doubling { base, every } => {
                let step = (n.max(1) - 1) / every.max(1);
                let mut len = base;
                for _ in 0..step {
                    if len * 2 > MAX_PART_SIZE {
                        break;
                    }
                    len *= 2;
                }
                len
            }
        }
    }

    /// Byte offset of part `n` (1-based) in the object.
    pub fn offset(&self, n: u32) -> u64 {
        match *self {
            Self::Uniform(s) => (n.max(1) as u64 - 1) * s,
            Self::Doubling { every, .. } => {
                let every = every.max(1);
                let before = n.max(1) - 1;
                let (groups, rest) = (before / every, before % every);
                let full: u64 = (0..groups)
                    .map(|g| self.len(g * every + 1) * every as u64)
                    .sum();
                full + rest as u64 * self.len(before + 1)
            }
        }
    }

    /// The parts of an object of `size` bytes: (part number, byte range). An empty object has
    /// no parts.
    pub fn ranges(&self, size: u64) -> impl Iterator<Item = (u32, std::ops::Range<u64>)> + '_ {
        let mut n = 0u32;
        let mut pos = 0u64;
        std::iter::from_fn(move || {
            if pos >= size {
                return None;
            }
            n += 1;
            let end = (pos + self.len(n)).min(size);
            let r = (n, pos..end);
            pos = end;
            Some(r)
        })
    }

    /// A compact text form (`u8388608`, `d8388608x1000`) for names that must carry the layout.
    pub fn encode(&self) -> String {
        match *self {
            Self::Uniform(s) => format!("u{s}"),
            Self::Doubling { base, every } => format!("d{base}x{every}"),
        }
    }

    pub fn decode(s: &str) -> Option<Self> {
        if let Some(u) = s.strip_prefix('u') {
            return u.parse().ok().filter(|v| *v > 0).map(Self::Uniform);
        }
        let (base, every) = s.strip_prefix('d')?.split_once('x')?;
        let (base, every) = (base.parse().ok()?, every.parse().ok()?);
        (base > 0 && every > 0).then_some(Self::Doubling { base, every })
    }
}

pub fn crc64nvme(data: &[u8]) -> u64 {
    crc_fast::checksum(CrcAlgorithm::Crc64Nvme, data)
}

/// CRC64NVME of `a ++ b` from the CRCs of `a` and `b` and the length of `b`.
pub fn crc64nvme_combine(a: u64, b: u64, b_len: u64) -> u64 {
    if b_len == 0 {
        return a;
    }
    crc_fast::checksum_combine(CrcAlgorithm::Crc64Nvme, a, b, b_len)
}

/// Incremental CRC64NVME.
#[derive(Clone)]
pub struct Crc64 {
    digest: crc_fast::Digest,
}

impl Default for Crc64 {
    fn default() -> Self {
        Self {
            digest: crc_fast::Digest::new(CrcAlgorithm::Crc64Nvme),
        }
    }
}

impl Crc64 {
    pub fn update(&mut self, data: &[u8]) {
        self.digest.update(data);
    }
    pub fn finish(&self) -> u64 {
        self.digest.finalize()
    }
}

/// S3's header form of a CRC64: base64 of the 8 big-endian bytes.
pub fn crc64_to_b64(v: u64) -> String {
    base64::engine::general_purpose::STANDARD.encode(v.to_be_bytes())
}

pub fn crc64_from_b64(s: &str) -> Option<u64> {
    let b = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()?;
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

pub fn md5_hex(data: &[u8]) -> String {
    hex::encode(Md5::digest(data))
}

pub fn md5_b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Md5::digest(data))
}

/// Strip the quotes S3 puts around ETags.
pub fn clean_etag(e: &str) -> String {
    e.trim().trim_matches('"').to_string()
}

/// What an ETag says about how to recompute it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EtagShape {
    /// 32 hex digits: MD5 of the whole content (single-part upload, no KMS).
    Md5,
    /// `<32 hex>-N`: MD5 of the concatenated part MD5s of N parts.
    Multipart(u64),
    /// Anything else (SSE-KMS, SSE-C, other servers): not a content hash we can recompute.
    Opaque,
}

pub fn etag_shape(etag: &str) -> EtagShape {
    let is_hex32 = |s: &str| s.len() == 32 && s.bytes().all(|c| c.is_ascii_hexdigit());
    match etag.split_once('-') {
        None if is_hex32(etag) => EtagShape::Md5,
        Some((h, n)) if is_hex32(h) => match n.parse::<u64>() {
            Ok(n) if n >= 1 => EtagShape::Multipart(n),
            _ => EtagShape::Opaque,
        },
        _ => EtagShape::Opaque,
    }
}

/// Candidate part sizes for recomputing a foreign multipart ETag with `parts` parts over
/// `size` bytes: our own rule first, then the sizes common tools use. Only sizes that give
/// exactly `parts` parts are returned.
pub fn candidate_part_sizes(size: u64, parts: u64, ours: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut push = |p: u64| {
        if p > 0 && size.div_ceil(p) == parts && !out.contains(&p) {
            out.push(p);
        }
    };
    push(part_size_for(size, ours));
    for m in [8u64, 5, 16, 15, 32, 50, 64, 100, 128, 256, 512] {
        push(m * MIB);
    }
    if parts == 1 {
        push(size.max(1));
    }
    out
}

/// Computes the ETag an upload with part size `part_size` would get, from a byte stream fed
/// in order. `multipart` must say whether the uploader would use multipart for this size.
pub struct EtagBuilder {
    part_size: u64,
    multipart: bool,
    in_part: u64,
    cur: Md5,
    part_digests: Vec<u8>,
    parts: u64,
}

impl EtagBuilder {
    pub fn new(part_size: u64, multipart: bool) -> Self {
        Self {
            part_size,
            multipart,
            in_part: 0,
            cur: Md5::new(),
            part_digests: Vec::new(),
            parts: 0,
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        if !self.multipart {
            self.cur.update(data);
            return;
        }
        while !data.is_empty() {
            let room = (self.part_size - self.in_part) as usize;
            let n = room.min(data.len());
            self.cur.update(&data[..n]);
            self.in_part += n as u64;
            data = &data[n..];
            if self.in_part == self.part_size {
                self.close_part();
            }
        }
    }

    fn close_part(&mut self) {
        let d = std::mem::take(&mut self.cur).finalize();
        self.part_digests.extend_from_slice(&d);
        self.parts += 1;
        self.in_part = 0;
    }

    pub fn finish(mut self) -> String {
        if !self.multipart {
            return hex::encode(self.cur.finalize());
        }
        if self.in_part > 0 || self.parts == 0 {
            self.close_part();
        }
        format!(
            "{}-{}",
            hex::encode(Md5::digest(&self.part_digests)),
            self.parts
        )
    }
}

/// ETag of a multipart upload from its parts' MD5 digests (hex).
pub fn multipart_etag(part_md5_hex: &[String]) -> String {
    let mut all = Vec::with_capacity(part_md5_hex.len() * 16);
    for h in part_md5_hex {
        all.extend(hex::decode(h).unwrap_or_default());
    }
    format!("{}-{}", hex::encode(Md5::digest(&all)), part_md5_hex.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_combine_matches_whole() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (a, b) = data.split_at(33_333);
        assert_eq!(
            crc64nvme_combine(crc64nvme(a), crc64nvme(b), b.len() as u64),
            crc64nvme(&data)
        );
        assert_eq!(
            crc64_from_b64(&crc64_to_b64(0xdead_beef_0123_4567)),
            Some(0xdead_beef_0123_4567)
        );
    }

    #[test]
    fn etag_builder_matches_definition() {
        let data: Vec<u8> = (0..25u32 * 1024).map(|i| (i % 253) as u8).collect();
        let mut b = EtagBuilder::new(10 * 1024, true);
        for chunk in data.chunks(777) {
            b.update(chunk);
        }
        let parts: Vec<String> = data.chunks(10 * 1024).map(md5_hex).collect();
        assert_eq!(b.finish(), multipart_etag(&parts));
        let mut s = EtagBuilder::new(10 * 1024, false);
        s.update(&data);
        assert_eq!(s.finish(), md5_hex(&data));
    }

    #[test]
    fn shapes_and_part_sizes() {
        assert_eq!(
            etag_shape("d41d8cd98f00b204e9800998ecf8427e"),
            EtagShape::Md5
        );
        assert_eq!(
            etag_shape("d41d8cd98f00b204e9800998ecf8427e-12"),
            EtagShape::Multipart(12)
        );
        assert_eq!(etag_shape("W/xyz"), EtagShape::Opaque);
        assert_eq!(part_size_for(1, DEFAULT_PART_SIZE), 8 * MIB);
        assert_eq!(part_size_for(200_000 * MIB, DEFAULT_PART_SIZE), 20 * MIB);
        assert_eq!(
            part_size_for(200_001 * MIB, DEFAULT_PART_SIZE),
            (200_001 * MIB).div_ceil(10_000)
        );
        let c = candidate_part_sizes(20 * MIB, 3, DEFAULT_PART_SIZE);
        assert_eq!(c[0], 8 * MIB);
        assert!(c.contains(&(8 * MIB)));
        assert!(!c.contains(&(5 * MIB)));
    }

    #[test]
    fn part_layouts() {
        let u = PartLayout::Uniform(10);
        assert_eq!(
            u.ranges(25).collect::<Vec<_>>(),
            vec![(1, 0..10), (2, 10..20), (3, 20..25)]
        );
        assert_eq!(u.ranges(0).count(), 0);
        assert_eq!(u.offset(3), 20);
        let d = PartLayout::Doubling { base: 4, every: 2 };
        let lens: Vec<u64> = (1..=7).map(|n| d.len(n)).collect();
        assert_eq!(lens, vec![4, 4, 8, 8, 16, 16, 32]);
        // Offsets are the running sums of the lengths.
        let mut sum = 0;
        for n in 1..=7 {
            assert_eq!(d.offset(n), sum, "offset of part {n}");
            sum += d.len(n);
        }
        let r: Vec<_> = d.ranges(30).collect();
        assert_eq!(
            r,
            vec![(1, 0..4), (2, 4..8), (3, 8..16), (4, 16..24), (5, 24..30)]
        );
        // The stream layout reaches S3's 5 TiB object limit within 10,000 parts and never
        // makes a part bigger than 5 GiB.
        let s = PartLayout::for_stream(DEFAULT_PART_SIZE);
        assert!(s.offset(10_001) >= 5 * 1024 * 1024 * MIB);
        assert!((1..=10_000).all(|n| s.len(n) <= MAX_PART_SIZE));
        for l in [u, d, s] {
            assert_eq!(PartLayout::decode(&l.encode()), Some(l));
        }
        assert_eq!(PartLayout::decode("x1"), None);
        assert_eq!(PartLayout::decode("u0"), None);
    }
}
