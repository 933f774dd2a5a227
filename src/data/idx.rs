//! The IDX format of the MNIST files (LeCun et al.): a 4-byte magic (two zero bytes, a dtype
//! byte, the number of dimensions), one big-endian u32 per dimension, then the values.
//! Files may be raw or gzip-compressed; gzip is recognised by its magic bytes, not by the name.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use flate2::read::GzDecoder;
use md5::{Digest, Md5};

use crate::error::{Error, Result};

pub(crate) const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const DTYPE_U8: u8 = 0x08;

/// An IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxBytes {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
    /// Hex MD5 of the whole decompressed content, header included: what the datasets'
    /// published checksums are of.
    pub md5: String,
}

/// Reads an IDX file of unsigned bytes, checking the header against the data that follows.
pub fn read_idx_u8(path: &Path) -> Result<IdxBytes> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    read_idx_u8_from(path, BufReader::new(file))
}

/// Reads an IDX u8 array from any reader; `path` only names the source in errors.
pub fn read_idx_u8_from(path: &Path, mut reader: impl Read) -> Result<IdxBytes> {
    let mut start = [0u8; 2];
    let got = read_up_to(&mut reader, &mut start).map_err(|e| Error::io(path, e))?;
    let head = std::io::Cursor::new(start[..got].to_vec());
    if got == 2 && start == GZIP_MAGIC {
        parse(path, GzDecoder::new(head.chain(reader)))
    } else {
        parse(path, head.chain(reader))
    }
}

fn parse(path: &Path, reader: impl Read) -> Result<IdxBytes> {
    // Every byte parsed passes through the digest; a file is accepted only when read to its end.
    let mut reader = Digesting {
        inner: reader,
        md5: Md5::new(),
    };
    let malformed = |problem: String| Error::MalformedIdx {
        path: path.to_path_buf(),
        problem,
    };
    // Raw reads end quietly at end of file; only the gzip decoder reports these kinds.
    let read_err = |what: &str, e: std::io::Error| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            malformed(format!("truncated gzip stream while reading {what}: {e}"))
        }
        std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData => {
            malformed(format!("corrupted gzip data while reading {what}: {e}"))
        }
        _ => Error::io(path, e),
    };

    let mut magic = [0u8; 4];
    let got = read_up_to(&mut reader, &mut magic).map_err(|e| read_err("the header", e))?;
    if got == 0 {
        return Err(malformed("the file is empty".into()));
    }
    if got < 4 {
        return Err(malformed(format!(
            "truncated: {got} bytes, too short for the 4-byte IDX magic"
        )));
    }
    if magic[0] != 0 || magic[1] != 0 {
        return Err(malformed(format!(
            "not an IDX file: the magic starts {:02x} {:02x}, expected 00 00",
            magic[0], magic[1]
        )));
    }
    if magic[2] != DTYPE_U8 {
        return Err(malformed(format!(
            "IDX dtype byte is 0x{:02x}; only 0x08 (unsigned bytes) is supported",
            magic[2]
        )));
    }
    let ndims = magic[3] as usize;
    if ndims == 0 {
        return Err(malformed("the IDX header declares 0 dimensions".into()));
    }

    let mut dims = Vec::with_capacity(ndims);
    for i in 0..ndims {
        let mut word = [0u8; 4];
        let got = read_up_to(&mut reader, &mut word).map_err(|e| read_err("the header", e))?;
        if got < 4 {
            return Err(malformed(format!(
                "truncated header: it declares {ndims} dimensions but ends inside dimension {i}"
            )));
        }
        dims.push(u32::from_be_bytes(word) as usize);
    }
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| malformed(format!("dimensions {dims:?} overflow")))?;

    // Read at most one byte past what the header promises: enough to detect trailing data, and
    // memory follows the bytes really present, not the header's claim.
    // Reserve what the header promises up to a bound, so a truthful MNIST header costs one
    // allocation and a lying one cannot reserve more than the bound.
    let mut data = Vec::with_capacity(expected.min(64 << 20) + 1);
    (&mut reader)
        .take(expected as u64 + 1)
        .read_to_end(&mut data)
        .map_err(|e| read_err("the data", e))?;
    if data.len() < expected {
        return Err(malformed(format!(
            "truncated: the header {dims:?} promises {expected} bytes of data, the file holds {}",
            data.len()
        )));
    }
    if data.len() > expected {
        return Err(malformed(format!(
            "trailing data after the {expected} bytes the header {dims:?} describes"
        )));
    }
    Ok(IdxBytes {
        dims,
        data,
        md5: hex(&reader.md5.finalize()),
    })
}

/// A reader that hashes what it passes on.
struct Digesting<R> {
    inner: R,
    md5: Md5,
}

impl<R: Read> Read for Digesting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.md5.update(&buf[..n]);
        Ok(n)
    }
}

/// Lower-case hex, as checksum lists write digests.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Fills as much of `buf` as the reader has; returns how much (less only at end of stream).
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Serialises an IDX u8 array (raw, uncompressed): used to write test fixtures.
pub fn encode_idx_u8(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, DTYPE_U8, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}
