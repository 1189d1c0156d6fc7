//! CAR v1 reader: a header with roots, then length-prefixed (CID, bytes) blocks.
//!
//! Every block's bytes are hashed and compared with its CID, so nothing later in
//! validation can be fooled by a block that does not match its address. Block
//! order is free; duplicates are tolerated (the same CID always has the same bytes
//! once verified); blocks nobody references are allowed.

use crate::cbor;
use cid::Cid;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// CIDs are already uniformly distributed hashes; a fast non-keyed hasher is enough.
pub type BlockMap<'a> = HashMap<Cid, &'a [u8], foldhash::fast::FixedState>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CarError {
    #[error("CAR is {0} bytes, over the {1}-byte limit")]
    TooLarge(usize, usize),
    #[error("truncated CAR")]
    Truncated,
    #[error("bad varint")]
    BadVarint,
    #[error("bad CAR header: {0}")]
    BadHeader(String),
    #[error("CAR has no roots")]
    NoRoots,
    #[error("bad block CID: {0}")]
    BadCid(String),
    #[error("block {0} is not a supported CID (v1, dag-cbor/raw, sha2-256)")]
    UnsupportedCid(String),
    #[error("block {0} bytes do not hash to its CID")]
    HashMismatch(String),
}

#[derive(serde::Deserialize)]
struct Header {
    roots: Vec<Cid>,
    version: u64,
}

/// Parsed CAR whose blocks borrow from the input bytes.
#[derive(Debug, Default)]
pub struct Car<'a> {
    pub roots: Vec<Cid>,
    pub blocks: BlockMap<'a>,
}

impl<'a> Car<'a> {
    pub fn get(&self, cid: &Cid) -> Option<&'a [u8]> {
        self.blocks.get(cid).copied()
    }
}

fn read_varint(bytes: &[u8], pos: &mut usize) -> Result<u64, CarError> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*pos).ok_or(CarError::Truncated)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(CarError::BadVarint)
}

fn write_varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn take<'a>(bytes: &'a [u8], pos: &mut usize, len: u64) -> Result<&'a [u8], CarError> {
    let len = usize::try_from(len).map_err(|_| CarError::Truncated)?;
    let end = pos.checked_add(len).ok_or(CarError::Truncated)?;
    let slice = bytes.get(*pos..end).ok_or(CarError::Truncated)?;
    *pos = end;
    Ok(slice)
}

/// Reads a CAR v1 of at most `max_len` bytes, verifying every block's hash.
pub fn read(bytes: &[u8], max_len: usize) -> Result<Car<'_>, CarError> {
    parse(bytes, max_len, Verify::Hashes)
}

/// Reads a CAR this relay verified before (an event from its own log, whose records carry a
/// CRC): the same parse without hashing every block again, which was most of the collection
/// indexer's work on a delete.
pub fn read_trusted(bytes: &[u8], max_len: usize) -> Result<Car<'_>, CarError> {
    parse(bytes, max_len, Verify::Nothing)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verify {
    Hashes,
    Nothing,
}

fn parse(bytes: &[u8], max_len: usize, verify: Verify) -> Result<Car<'_>, CarError> {
    if bytes.len() > max_len {
        return Err(CarError::TooLarge(bytes.len(), max_len));
    }
    let mut pos = 0;
    let header_len = read_varint(bytes, &mut pos)?;
    let header_bytes = take(bytes, &mut pos, header_len)?;
    let header: Header =
        cbor::decode_trusted_shape(header_bytes).map_err(|e| CarError::BadHeader(e.to_string()))?;
    if header.version != 1 {
        return Err(CarError::BadHeader(format!("version {} (only 1 is supported)", header.version)));
    }
    if header.roots.is_empty() {
        return Err(CarError::NoRoots);
    }
    let mut blocks = BlockMap::default();
    while pos < bytes.len() {
        let block_len = read_varint(bytes, &mut pos)?;
        let block = take(bytes, &mut pos, block_len)?;
        let (cid, data) = split_block(block)?;
        if verify == Verify::Hashes {
            verify_block(&cid, data)?;
        }
        blocks.insert(cid, data);
    }
    Ok(Car { roots: header.roots, blocks })
}

fn split_block(block: &[u8]) -> Result<(Cid, &[u8]), CarError> {
    // Nearly every block starts with a blessed 36-byte CID; parse that directly.
    let (cid, data) = match block.get(..36).map(cbor::cid_from_bytes) {
        Some(Ok(cid)) => (cid, &block[36..]),
        _ => {
            let mut cursor = std::io::Cursor::new(block);
            let cid = Cid::read_bytes(&mut cursor).map_err(|e| CarError::BadCid(e.to_string()))?;
            (cid, &block[cursor.position() as usize..])
        }
    };
    Ok((cid, data))
}

fn verify_block(cid: &Cid, data: &[u8]) -> Result<(), CarError> {
    if !cbor::is_blessed(cid) {
        return Err(CarError::UnsupportedCid(cid.to_string()));
    }
    let digest = Sha256::digest(data);
    if digest[..] != *cid.hash().digest() {
        return Err(CarError::HashMismatch(cid.to_string()));
    }
    Ok(())
}

/// Writes a CAR v1 with the given roots and blocks (in the order given).
pub fn write<'b>(roots: &[Cid], blocks: impl IntoIterator<Item = (&'b Cid, &'b [u8])>) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct HeaderOut<'r> {
        roots: &'r [Cid],
        version: u64,
    }
    let header = cbor::encode(&HeaderOut { roots, version: 1 }).expect("CAR header always encodes");
    let mut out = Vec::with_capacity(header.len() + 64);
    write_varint(header.len() as u64, &mut out);
    out.extend_from_slice(&header);
    for (cid, data) in blocks {
        let cid_bytes = cid.to_bytes();
        write_varint((cid_bytes.len() + data.len()) as u64, &mut out);
        out.extend_from_slice(&cid_bytes);
        out.extend_from_slice(data);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_duplicates() {
        let data = cbor::encode(&"hello").expect("encode");
        let cid = cbor::cid_for_cbor(&data);
        let car = write(&[cid], [(&cid, data.as_slice()), (&cid, data.as_slice())]);
        let parsed = read(&car, 1 << 20).expect("read");
        assert_eq!(parsed.roots, vec![cid]);
        assert_eq!(parsed.get(&cid), Some(data.as_slice()));
    }

    #[test]
    fn rejects_tampered_block_and_oversize() {
        let data = cbor::encode(&"hello").expect("encode");
        let cid = cbor::cid_for_cbor(&data);
        let tampered = cbor::encode(&"hellp").expect("encode");
        let car = write(&[cid], [(&cid, tampered.as_slice())]);
        assert!(matches!(read(&car, 1 << 20), Err(CarError::HashMismatch(_))));
        assert!(matches!(read(&car, 4), Err(CarError::TooLarge(_, 4))));
        assert!(matches!(read(&car[..car.len() - 1], 1 << 20), Err(CarError::Truncated)));
    }
}
