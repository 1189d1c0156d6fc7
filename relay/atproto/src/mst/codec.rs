//! Hand-written DAG-CBOR codec for MST nodes.
//!
//! Nodes are the most frequently decoded and re-encoded objects on the validation
//! hot path (every commit loads and re-hashes several). The generic serde codec
//! buffers and sorts map keys on every encode and allocates per field on decode;
//! the node shape is fixed (`{e: [{k, p, t, v}], l}`), so writing it directly is
//! several times faster. Output is byte-identical to the canonical encoding (tested
//! against serde_ipld_dagcbor below and by the interop vectors' root CIDs).

use cid::Cid;

/// One entry as it appears on the wire (key suffix borrowed from the block).
pub(super) struct RawEntry<'a> {
    pub prefix: u64,
    pub suffix: &'a [u8],
    pub value: Cid,
    pub right: Option<Cid>,
}

pub(super) struct RawNode<'a> {
    pub left: Option<Cid>,
    pub entries: Vec<RawEntry<'a>>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

type Result<T> = std::result::Result<T, String>;

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8> {
        let b = *self.bytes.get(self.pos).ok_or("truncated")?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8]> {
        let len = usize::try_from(len).map_err(|_| "length overflow")?;
        let end = self.pos.checked_add(len).ok_or("length overflow")?;
        let slice = self.bytes.get(self.pos..end).ok_or("truncated")?;
        self.pos = end;
        Ok(slice)
    }

    /// Reads a head; returns (major type, argument). Rejects indefinite lengths.
    fn head(&mut self) -> Result<(u8, u64)> {
        let initial = self.byte()?;
        let major = initial >> 5;
        let info = initial & 0x1f;
        let arg = match info {
            0..=23 => u64::from(info),
            24 => u64::from(self.byte()?),
            25 => u64::from(u16::from_be_bytes(self.take(2)?.try_into().map_err(|_| "truncated")?)),
            26 => u64::from(u32::from_be_bytes(self.take(4)?.try_into().map_err(|_| "truncated")?)),
            27 => u64::from_be_bytes(self.take(8)?.try_into().map_err(|_| "truncated")?),
            _ => return Err("indefinite or reserved length".into()),
        };
        Ok((major, arg))
    }

    fn expect(&mut self, major: u8) -> Result<u64> {
        let (found, arg) = self.head()?;
        if found != major {
            return Err(format!("expected major type {major}, found {found}"));
        }
        Ok(arg)
    }

    fn key(&mut self) -> Result<&'a [u8]> {
        let len = self.expect(3)?;
        self.take(len)
    }

    fn cid(&mut self) -> Result<Cid> {
        let (major, tag) = self.head()?;
        if major != 6 || tag != 42 {
            return Err("expected a CID link (tag 42)".into());
        }
        let len = self.expect(2)?;
        match self.take(len)?.split_first() {
            Some((0, raw)) => crate::cbor::cid_from_bytes(raw).map_err(|e| e.to_string()),
            _ => Err("CID link without the 0x00 prefix".into()),
        }
    }

    fn nullable_cid(&mut self) -> Result<Option<Cid>> {
        if self.bytes.get(self.pos) == Some(&0xf6) {
            self.pos += 1;
            return Ok(None);
        }
        self.cid().map(Some)
    }

    fn entry(&mut self) -> Result<RawEntry<'a>> {
        let fields = self.expect(5)?;
        let (mut prefix, mut suffix, mut value, mut right) = (None, None, None, None);
        for _ in 0..fields {
            match self.key()? {
                b"k" => {
                    let len = self.expect(2)?;
                    set_once(&mut suffix, self.take(len)?)?;
                }
                b"p" => set_once(&mut prefix, self.expect(0)?)?,
                b"t" => set_once(&mut right, self.nullable_cid()?)?,
                b"v" => set_once(&mut value, self.cid()?)?,
                other => return Err(format!("unknown entry field {:?}", String::from_utf8_lossy(other))),
            }
        }
        Ok(RawEntry {
            prefix: prefix.ok_or("entry without p")?,
            suffix: suffix.ok_or("entry without k")?,
            value: value.ok_or("entry without v")?,
            right: right.ok_or("entry without t")?,
        })
    }
}

fn set_once<T>(slot: &mut Option<T>, value: T) -> Result<()> {
    if slot.is_some() {
        return Err("duplicate field".into());
    }
    *slot = Some(value);
    Ok(())
}

/// Decodes a node block. Every field must be present (`l` and `t` may be null).
pub(super) fn decode(bytes: &[u8]) -> Result<RawNode<'_>> {
    let mut reader = Reader { bytes, pos: 0 };
    let fields = reader.expect(5)?;
    let (mut left, mut entries) = (None, None);
    for _ in 0..fields {
        match reader.key()? {
            b"e" => {
                let count = reader.expect(4)?;
                // Bound the up-front allocation by what the block could hold.
                let mut list = Vec::with_capacity((count as usize).min(bytes.len() / 8));
                for _ in 0..count {
                    list.push(reader.entry()?);
                }
                set_once(&mut entries, list)?;
            }
            b"l" => set_once(&mut left, reader.nullable_cid()?)?,
            other => return Err(format!("unknown node field {:?}", String::from_utf8_lossy(other))),
        }
    }
    if reader.pos != bytes.len() {
        return Err("trailing bytes after the node".into());
    }
    Ok(RawNode { left: left.ok_or("node without l")?, entries: entries.ok_or("node without e")? })
}

fn write_head(out: &mut Vec<u8>, major: u8, arg: u64) {
    let major = major << 5;
    if arg < 24 {
        out.push(major | arg as u8);
    } else if arg <= 0xff {
        out.extend_from_slice(&[major | 24, arg as u8]);
    } else if arg <= 0xffff {
        out.push(major | 25);
        out.extend_from_slice(&(arg as u16).to_be_bytes());
    } else if arg <= 0xffff_ffff {
        out.push(major | 26);
        out.extend_from_slice(&(arg as u32).to_be_bytes());
    } else {
        out.push(major | 27);
        out.extend_from_slice(&arg.to_be_bytes());
    }
}

fn write_cid(out: &mut Vec<u8>, cid: &Cid) {
    out.extend_from_slice(&[0xd8, 0x2a]);
    write_head(out, 2, cid.encoded_len() as u64 + 1);
    out.push(0);
    cid.write_bytes(&mut *out).expect("writing to a Vec cannot fail");
}

fn write_nullable_cid(out: &mut Vec<u8>, cid: Option<&Cid>) {
    match cid {
        Some(cid) => write_cid(out, cid),
        None => out.push(0xf6),
    }
}

/// Encodes a node canonically: map keys in DAG-CBOR order (`e` < `l`; `k` < `p` < `t` < `v`).
pub(super) fn encode(left: Option<&Cid>, entries: &[RawEntry<'_>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + entries.len() * 96);
    out.extend_from_slice(&[0xa2, 0x61, b'e']);
    write_head(&mut out, 4, entries.len() as u64);
    for entry in entries {
        out.extend_from_slice(&[0xa4, 0x61, b'k']);
        write_head(&mut out, 2, entry.suffix.len() as u64);
        out.extend_from_slice(entry.suffix);
        out.extend_from_slice(&[0x61, b'p']);
        write_head(&mut out, 0, entry.prefix);
        out.extend_from_slice(&[0x61, b't']);
        write_nullable_cid(&mut out, entry.right.as_ref());
        out.extend_from_slice(&[0x61, b'v']);
        write_cid(&mut out, &entry.value);
    }
    out.extend_from_slice(&[0x61, b'l']);
    write_nullable_cid(&mut out, left);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cbor;

    #[derive(serde::Serialize)]
    struct SerdeNode {
        e: Vec<SerdeEntry>,
        l: Option<Cid>,
    }

    #[derive(serde::Serialize)]
    struct SerdeEntry {
        #[serde(with = "serde_bytes")]
        k: Vec<u8>,
        p: u64,
        t: Option<Cid>,
        v: Cid,
    }

    #[test]
    fn matches_the_generic_encoder_and_round_trips() {
        let a = cbor::cid_for_cbor(b"\x01");
        let b = cbor::cid_for_cbor(b"\x02");
        let long_key = vec![b'x'; 300];
        let raw = vec![
            RawEntry { prefix: 0, suffix: b"app.bsky.feed.post/abc", value: a, right: Some(b) },
            RawEntry { prefix: 19, suffix: &long_key, value: b, right: None },
        ];
        let ours = encode(Some(&a), &raw);
        let reference = cbor::encode(&SerdeNode {
            e: vec![
                SerdeEntry { k: b"app.bsky.feed.post/abc".to_vec(), p: 0, t: Some(b), v: a },
                SerdeEntry { k: long_key.clone(), p: 19, t: None, v: b },
            ],
            l: Some(a),
        })
        .expect("encode");
        assert_eq!(ours, reference);
        let back = decode(&ours).expect("decode");
        assert_eq!(back.left, Some(a));
        assert_eq!(back.entries.len(), 2);
        assert_eq!(back.entries[1].suffix, long_key.as_slice());
        assert_eq!(encode(back.left.as_ref(), &back.entries), ours);
    }

    #[test]
    fn rejects_malformed_nodes() {
        let good = encode(None, &[]);
        assert!(decode(&good).is_ok());
        assert!(decode(&good[..good.len() - 1]).is_err());
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(decode(&trailing).is_err());
        assert!(decode(&[0xa1, 0x61, b'e', 0x80]).is_err(), "missing l");
    }
}
