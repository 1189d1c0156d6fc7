//! The ATProto data model on the wire: strict DAG-CBOR (DRISL) checks with the
//! recommended decoder limits, conversion between atproto JSON and IPLD values,
//! and CID helpers.
//!
//! Decoding into typed structs and `Ipld` values is done by `serde_ipld_dagcbor`.
//! That crate does not enforce the atproto limits (nesting, container sizes,
//! JS-safe integers, no floats, canonical key order), so [`check`] walks the raw
//! bytes first; it is a small, allocation-free pass that also tells where an item
//! ends (needed to split a firehose frame into header and body).

use base64::Engine;
use cid::Cid;
use ipld_core::ipld::Ipld;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Multicodec for DAG-CBOR.
pub const DAG_CBOR: u64 = 0x71;
/// Multicodec for raw bytes (blobs).
pub const RAW: u64 = 0x55;
/// Multihash code for SHA2-256.
pub const SHA2_256: u64 = 0x12;
/// Largest integer a JavaScript number holds exactly.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Decoder limits (atproto "Recommended Data Limits").
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_depth: usize,
    pub max_container_len: u64,
    pub max_key_len: u64,
    pub max_cid_len: u64,
    /// Reject floats and non-canonical map key order (strict data model).
    /// Records from the network are checked with `strict: false` because relays
    /// must not judge record contents beyond well-formedness.
    pub strict: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 32,
            max_container_len: 131_072,
            max_key_len: 8192,
            max_cid_len: 100,
            strict: true,
        }
    }
}

impl Limits {
    pub fn lenient() -> Self {
        Limits { strict: false, ..Limits::default() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CborError {
    #[error("unexpected end of input")]
    Truncated,
    #[error("trailing bytes after the value")]
    TrailingBytes,
    #[error("nesting deeper than {0}")]
    TooDeep(usize),
    #[error("container of {0} items exceeds the limit")]
    ContainerTooLarge(u64),
    #[error("map key longer than the limit")]
    KeyTooLong,
    #[error("map key is not a text string")]
    NonStringKey,
    #[error("map keys not in canonical order or duplicated")]
    KeyOrder,
    #[error("indefinite-length items are not allowed")]
    Indefinite,
    #[error("integer not minimally encoded")]
    NonMinimal,
    #[error("integer outside the JavaScript-safe range")]
    UnsafeInteger,
    #[error("floats are not allowed in the atproto data model")]
    Float,
    #[error("unsupported simple value or reserved encoding")]
    BadSimple,
    #[error("tag {0} is not allowed (only 42 for CIDs)")]
    BadTag(u64),
    #[error("invalid CID link: {0}")]
    BadCid(String),
    #[error("text is not valid UTF-8")]
    BadUtf8,
    #[error("decode: {0}")]
    Decode(String),
    #[error("encode: {0}")]
    Encode(String),
    #[error("json: {0}")]
    Json(String),
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    limits: Limits,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8], CborError> {
        let n = usize::try_from(n).map_err(|_| CborError::Truncated)?;
        let end = self.pos.checked_add(n).ok_or(CborError::Truncated)?;
        let slice = self.bytes.get(self.pos..end).ok_or(CborError::Truncated)?;
        self.pos = end;
        Ok(slice)
    }

    fn byte(&mut self) -> Result<u8, CborError> {
        Ok(self.take(1)?[0])
    }

    /// Reads the argument of a head byte, enforcing minimal encoding.
    fn argument(&mut self, info: u8) -> Result<u64, CborError> {
        let value = match info {
            0..=23 => return Ok(u64::from(info)),
            24 => {
                let v = u64::from(self.byte()?);
                if v < 24 {
                    return Err(CborError::NonMinimal);
                }
                v
            }
            25 => {
                let b = self.take(2)?;
                let v = u64::from(u16::from_be_bytes([b[0], b[1]]));
                if v <= 0xff {
                    return Err(CborError::NonMinimal);
                }
                v
            }
            26 => {
                let b = self.take(4)?;
                let v = u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                if v <= 0xffff {
                    return Err(CborError::NonMinimal);
                }
                v
            }
            27 => {
                let b = self.take(8)?;
                let v = u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                if v <= 0xffff_ffff {
                    return Err(CborError::NonMinimal);
                }
                v
            }
            31 => return Err(CborError::Indefinite),
            _ => return Err(CborError::BadSimple),
        };
        Ok(value)
    }

    fn item(&mut self, depth: usize) -> Result<(), CborError> {
        if depth > self.limits.max_depth {
            return Err(CborError::TooDeep(self.limits.max_depth));
        }
        let head = self.byte()?;
        let major = head >> 5;
        let info = head & 0x1f;
        if major == 7 {
            return self.simple(info);
        }
        let arg = self.argument(info)?;
        match major {
            0 | 1 => {
                if arg > MAX_SAFE_INTEGER {
                    return Err(CborError::UnsafeInteger);
                }
            }
            2 => {
                self.take(arg)?;
            }
            3 => {
                let text = self.take(arg)?;
                std::str::from_utf8(text).map_err(|_| CborError::BadUtf8)?;
            }
            4 => {
                self.check_len(arg)?;
                for _ in 0..arg {
                    self.item(depth + 1)?;
                }
            }
            5 => self.map(arg, depth)?,
            6 => self.tag(arg)?,
            _ => return Err(CborError::BadSimple),
        }
        Ok(())
    }

    fn check_len(&self, len: u64) -> Result<(), CborError> {
        if len > self.limits.max_container_len {
            return Err(CborError::ContainerTooLarge(len));
        }
        Ok(())
    }

    fn map(&mut self, len: u64, depth: usize) -> Result<(), CborError> {
        self.check_len(len)?;
        let mut previous: Option<&[u8]> = None;
        for _ in 0..len {
            let head = self.byte()?;
            if head >> 5 != 3 {
                return Err(CborError::NonStringKey);
            }
            let key_len = self.argument(head & 0x1f)?;
            if key_len > self.limits.max_key_len {
                return Err(CborError::KeyTooLong);
            }
            let key = self.take(key_len)?;
            std::str::from_utf8(key).map_err(|_| CborError::BadUtf8)?;
            if self.limits.strict {
                if let Some(prev) = previous {
                    // Canonical DAG-CBOR order: shorter keys first, then bytewise.
                    if (prev.len(), prev) >= (key.len(), key) {
                        return Err(CborError::KeyOrder);
                    }
                }
            }
            previous = Some(key);
            self.item(depth + 1)?;
        }
        Ok(())
    }

    fn tag(&mut self, tag: u64) -> Result<(), CborError> {
        if tag != 42 {
            return Err(CborError::BadTag(tag));
        }
        let head = self.byte()?;
        if head >> 5 != 2 {
            return Err(CborError::BadCid("tag 42 must wrap a byte string".into()));
        }
        let len = self.argument(head & 0x1f)?;
        if len > self.limits.max_cid_len {
            return Err(CborError::BadCid("longer than the CID size limit".into()));
        }
        let raw = self.take(len)?;
        match raw.split_first() {
            Some((0, cid_bytes)) => {
                let cid = cid_from_bytes(cid_bytes)?;
                // Strict data: only blessed CIDs. (Found by fuzzing: a sha2-256 multihash with a
                // truncated digest parses, but does not survive a decode/encode round trip.)
                if self.limits.strict && !is_blessed(&cid) {
                    return Err(CborError::BadCid("not v1 dag-cbor/raw sha2-256".into()));
                }
                Ok(())
            }
            _ => Err(CborError::BadCid("missing 0x00 multibase prefix".into())),
        }
    }

    fn simple(&mut self, info: u8) -> Result<(), CborError> {
        match info {
            20..=22 => Ok(()), // false, true, null
            25..=27 => {
                if self.limits.strict {
                    return Err(CborError::Float);
                }
                let width = 1u64 << (info - 24);
                self.take(width)?;
                Ok(())
            }
            _ => Err(CborError::BadSimple),
        }
    }
}

/// Length in bytes of the first CBOR item in `bytes`, after checking it against `limits`.
pub fn item_len(bytes: &[u8], limits: Limits) -> Result<usize, CborError> {
    let mut reader = Reader { bytes, pos: 0, limits };
    reader.item(0)?;
    Ok(reader.pos)
}

/// Checks that `bytes` is exactly one well-formed DAG-CBOR item within `limits`.
pub fn check(bytes: &[u8], limits: Limits) -> Result<(), CborError> {
    if item_len(bytes, limits)? != bytes.len() {
        return Err(CborError::TrailingBytes);
    }
    Ok(())
}

/// Checks then decodes a DAG-CBOR value into a typed struct.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, CborError> {
    check(bytes, Limits::default())?;
    serde_ipld_dagcbor::from_slice(bytes).map_err(|e| CborError::Decode(e.to_string()))
}

/// Decodes without the strict pre-pass; for blocks whose CID is already verified
/// and whose shape is then checked field by field (MST nodes, commits on the hot path).
pub fn decode_trusted_shape<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, CborError> {
    serde_ipld_dagcbor::from_slice(bytes).map_err(|e| CborError::Decode(e.to_string()))
}

pub fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, CborError> {
    serde_ipld_dagcbor::to_vec(value).map_err(|e| CborError::Encode(e.to_string()))
}

/// CIDv1, dag-cbor, sha2-256 of `bytes`.
pub fn cid_for_cbor(bytes: &[u8]) -> Cid {
    cid_with_codec(DAG_CBOR, bytes)
}

pub fn cid_with_codec(codec: u64, bytes: &[u8]) -> Cid {
    let digest: [u8; 32] = Sha256::digest(bytes).into();
    let hash = cid::multihash::Multihash::<64>::wrap(SHA2_256, &digest)
        .expect("a 32-byte digest always fits a 64-byte multihash");
    Cid::new_v1(codec, hash)
}

/// Parses CID bytes, taking a fast path for the blessed 36-byte form
/// (`0x01 codec 0x12 0x20 <32-byte sha2-256>`) that nearly every atproto CID has;
/// anything else goes through the general parser. The whole slice must be the CID.
pub fn cid_from_bytes(raw: &[u8]) -> Result<Cid, CborError> {
    if let [0x01, codec @ (0x71 | 0x55), 0x12, 0x20, digest @ ..] = raw {
        if digest.len() == 32 {
            let hash = cid::multihash::Multihash::<64>::wrap(SHA2_256, digest)
                .map_err(|e| CborError::BadCid(e.to_string()))?;
            return Ok(Cid::new_v1(u64::from(*codec), hash));
        }
    }
    let cid = Cid::try_from(raw).map_err(|e| CborError::BadCid(e.to_string()))?;
    // `Cid::try_from` ignores trailing bytes (a fuzzing find): the slice must be one CID.
    if cid.encoded_len() != raw.len() {
        return Err(CborError::BadCid("trailing bytes after the CID".into()));
    }
    Ok(cid)
}

/// A "blessed" atproto CID: v1, dag-cbor or raw, sha2-256 with a 32-byte digest.
pub fn is_blessed(cid: &Cid) -> bool {
    cid.version() == cid::Version::V1
        && (cid.codec() == DAG_CBOR || cid.codec() == RAW)
        && cid.hash().code() == SHA2_256
        && cid.hash().size() == 32
}

/// Converts atproto JSON (with `$link`, `$bytes`) into an IPLD value.
pub fn json_to_ipld(value: &serde_json::Value) -> Result<Ipld, CborError> {
    use serde_json::Value;
    Ok(match value {
        Value::Null => Ipld::Null,
        Value::Bool(b) => Ipld::Bool(*b),
        Value::Number(n) => Ipld::Integer(json_integer(n)?),
        Value::String(s) => Ipld::String(s.clone()),
        Value::Array(items) => Ipld::List(items.iter().map(json_to_ipld).collect::<Result<_, _>>()?),
        Value::Object(map) => object_to_ipld(map)?,
    })
}

fn json_integer(n: &serde_json::Number) -> Result<i128, CborError> {
    if let Some(i) = n.as_i64() {
        return Ok(i128::from(i));
    }
    if let Some(u) = n.as_u64() {
        return Ok(i128::from(u));
    }
    match n.as_f64() {
        // "123.0" is an integer that a JSON encoder happened to print with a fraction.
        Some(f) if f.fract() == 0.0 && f.abs() <= MAX_SAFE_INTEGER as f64 => Ok(f as i128),
        _ => Err(CborError::Float),
    }
}

fn object_to_ipld(map: &serde_json::Map<String, serde_json::Value>) -> Result<Ipld, CborError> {
    if let Some(link) = map.get("$link") {
        let text = link.as_str().filter(|_| map.len() == 1);
        let text = text.ok_or_else(|| CborError::Json("$link must be the only key, a string".into()))?;
        let cid = Cid::try_from(text).map_err(|e| CborError::BadCid(e.to_string()))?;
        return Ok(Ipld::Link(cid));
    }
    if let Some(bytes) = map.get("$bytes") {
        let text = bytes.as_str().filter(|_| map.len() == 1);
        let text = text.ok_or_else(|| CborError::Json("$bytes must be the only key, a string".into()))?;
        let decoded = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(text.trim_end_matches('='))
            .map_err(|e| CborError::Json(format!("$bytes: {e}")))?;
        return Ok(Ipld::Bytes(decoded));
    }
    let mut out = BTreeMap::new();
    for (key, value) in map {
        out.insert(key.clone(), json_to_ipld(value)?);
    }
    Ok(Ipld::Map(out))
}

/// Converts an IPLD value back to atproto JSON.
pub fn ipld_to_json(value: &Ipld) -> Result<serde_json::Value, CborError> {
    use serde_json::Value;
    Ok(match value {
        Ipld::Null => Value::Null,
        Ipld::Bool(b) => Value::Bool(*b),
        Ipld::Integer(i) => {
            let i = i64::try_from(*i).map_err(|_| CborError::UnsafeInteger)?;
            Value::from(i)
        }
        Ipld::Float(_) => return Err(CborError::Float),
        Ipld::String(s) => Value::String(s.clone()),
        Ipld::Bytes(b) => serde_json::json!({
            "$bytes": base64::engine::general_purpose::STANDARD_NO_PAD.encode(b)
        }),
        Ipld::List(items) => Value::Array(items.iter().map(ipld_to_json).collect::<Result<_, _>>()?),
        Ipld::Map(map) => {
            let mut out = serde_json::Map::new();
            for (key, value) in map {
                out.insert(key.clone(), ipld_to_json(value)?);
            }
            Value::Object(out)
        }
        Ipld::Link(cid) => serde_json::json!({ "$link": cid.to_string() }),
    })
}

/// Atproto data-model rules beyond CBOR: top level is an object, `$type` is a
/// non-empty string, blobs have their required typed fields.
pub fn validate_data_model(value: &Ipld) -> Result<(), CborError> {
    if !matches!(value, Ipld::Map(_)) {
        return Err(CborError::Json("top-level value must be an object".into()));
    }
    validate_value(value)
}

fn validate_value(value: &Ipld) -> Result<(), CborError> {
    match value {
        Ipld::Float(_) => Err(CborError::Float),
        Ipld::List(items) => items.iter().try_for_each(validate_value),
        Ipld::Map(map) => {
            if let Some(kind) = map.get("$type") {
                match kind {
                    Ipld::String(s) if !s.is_empty() => {
                        if s == "blob" {
                            validate_blob(map)?;
                        }
                    }
                    _ => return Err(CborError::Json("$type must be a non-empty string".into())),
                }
            }
            map.values().try_for_each(validate_value)
        }
        _ => Ok(()),
    }
}

fn validate_blob(map: &BTreeMap<String, Ipld>) -> Result<(), CborError> {
    let has_ref = matches!(map.get("ref"), Some(Ipld::Link(_)));
    let has_mime = matches!(map.get("mimeType"), Some(Ipld::String(s)) if !s.is_empty());
    let has_size = matches!(map.get("size"), Some(Ipld::Integer(n)) if *n >= 0);
    if has_ref && has_mime && has_size {
        Ok(())
    } else {
        Err(CborError::Json("blob needs ref (link), mimeType (string) and size (integer)".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_minimal_and_indefinite() {
        assert_eq!(check(&[0x18, 0x05], Limits::default()), Err(CborError::NonMinimal));
        assert_eq!(check(&[0x9f, 0xff], Limits::default()), Err(CborError::Indefinite));
        assert_eq!(check(&[0xf9, 0x3c, 0x00], Limits::default()), Err(CborError::Float));
        assert_eq!(check(&[0x01, 0x01], Limits::default()), Err(CborError::TrailingBytes));
    }

    #[test]
    fn rejects_unblessed_cids_in_strict_mode() {
        // {"a": CID(v1, raw, sha2-256 with a 1-byte digest)}: from a fuzzing crash.
        let bytes = [0xa1, 0x61, b'a', 0xd8, 0x2a, 0x46, 0x00, 0x01, 0x55, 0x12, 0x01, 0x00];
        assert!(matches!(check(&bytes, Limits::default()), Err(CborError::BadCid(_))));
        assert!(check(&bytes, Limits::lenient()).is_ok());
        // A valid CID followed by extra bytes inside the tag-42 byte string.
        let cid = cid_for_cbor(b"x").to_bytes();
        let mut trailing = vec![0xd8, 0x2a, 0x58, (cid.len() + 3) as u8, 0x00];
        trailing.extend_from_slice(&cid);
        trailing.extend_from_slice(&[1, 2]);
        assert!(matches!(check(&trailing, Limits::lenient()), Err(CborError::BadCid(_))));
    }

    #[test]
    fn rejects_deep_nesting() {
        let mut bytes = vec![0x81; 40];
        bytes.push(0x01);
        assert_eq!(check(&bytes, Limits::default()), Err(CborError::TooDeep(32)));
        let mut ok = vec![0x81; 32];
        ok.push(0x01);
        assert!(check(&ok, Limits::default()).is_ok());
    }

    #[test]
    fn rejects_unsafe_integers_and_bad_key_order() {
        let big = [0x1b, 0, 0x20, 0, 0, 0, 0, 0, 0];
        assert_eq!(check(&big, Limits::default()), Err(CborError::UnsafeInteger));
        // {"b": 1, "a": 2}
        let unordered = [0xa2, 0x61, b'b', 0x01, 0x61, b'a', 0x02];
        assert_eq!(check(&unordered, Limits::default()), Err(CborError::KeyOrder));
        // {"aa": 1, "b": 2}: longer key first is not canonical
        let length_order = [0xa2, 0x62, b'a', b'a', 0x01, 0x61, b'b', 0x02];
        assert_eq!(check(&length_order, Limits::default()), Err(CborError::KeyOrder));
    }

    #[test]
    fn struct_fields_encode_in_canonical_order() {
        #[derive(serde::Serialize)]
        struct Out {
            version: u8,
            did: &'static str,
        }
        let bytes = encode(&Out { version: 3, did: "x" }).expect("encode");
        check(&bytes, Limits::default()).expect("encoder output is canonical");
    }
}
