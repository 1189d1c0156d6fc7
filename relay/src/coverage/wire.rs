//! A counting decoder for firehose frames: reads only the header's `op`/`t` and the body's
//! `seq`, `repo`/`did` and `rev`, skipping every other value by its length without looking
//! inside it (no CID parsing, no UTF-8 checks of skipped text, no allocation).
//!
//! Coverage counting never validates what it watches (that is the watched relay's job), and
//! a full decode (`atproto::frame::decode`, which also checks the strict DAG-CBOR rules and
//! copies the blocks) costs several times more per event; `benches/coverage.rs` measures
//! both. The decoder is iterative, so hostile nesting cannot exhaust the stack, and it never
//! reads past the frame.

/// Event kinds the counts are kept by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Commit,
    Sync,
    Identity,
    Account,
    Info,
    /// An error frame (`op: -1`).
    Error,
    /// A message type this decoder does not know.
    Other,
}

impl EventKind {
    /// Every kind, in report order.
    pub const ALL: [EventKind; 7] = [
        EventKind::Commit,
        EventKind::Sync,
        EventKind::Identity,
        EventKind::Account,
        EventKind::Info,
        EventKind::Error,
        EventKind::Other,
    ];

    /// The name used in reports (the frame header's `t`, `error`, or `other`).
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Commit => "#commit",
            EventKind::Sync => "#sync",
            EventKind::Identity => "#identity",
            EventKind::Account => "#account",
            EventKind::Info => "#info",
            EventKind::Error => "error",
            EventKind::Other => "other",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    fn from_type(t: &[u8]) -> EventKind {
        match t {
            b"#commit" => EventKind::Commit,
            b"#sync" => EventKind::Sync,
            b"#identity" => EventKind::Identity,
            b"#account" => EventKind::Account,
            b"#info" => EventKind::Info,
            _ => EventKind::Other,
        }
    }
}

/// What coverage counting needs from one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary<'a> {
    pub kind: EventKind,
    pub seq: Option<i64>,
    /// `repo` of a `#commit`, `did` of the other account events.
    pub did: Option<&'a str>,
    pub rev: Option<&'a str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame ends inside a value")]
    Truncated,
    #[error("header is not a map")]
    HeaderNotMap,
    #[error("body is not a map")]
    BodyNotMap,
    #[error("unsupported CBOR encoding (indefinite length or reserved value)")]
    Unsupported,
    #[error("unknown op {0}")]
    UnknownOp(i64),
}

/// Reads one frame's summary. Fields absent or of an unexpected type are `None`.
pub fn summarize(frame: &[u8]) -> Result<Summary<'_>, WireError> {
    let mut reader = Reader { bytes: frame, pos: 0 };
    let (op, t) = reader.header()?;
    let kind = match op {
        -1 => return Ok(Summary { kind: EventKind::Error, seq: None, did: None, rev: None }),
        1 => t.map_or(EventKind::Other, EventKind::from_type),
        other => return Err(WireError::UnknownOp(other)),
    };
    if matches!(kind, EventKind::Info | EventKind::Other) {
        return Ok(Summary { kind, seq: None, did: None, rev: None });
    }
    let did_key: &[u8] = if kind == EventKind::Commit { b"repo" } else { b"did" };
    let mut summary = Summary { kind, seq: None, did: None, rev: None };
    let entries = reader.map_len().ok_or(WireError::BodyNotMap)??;
    for _ in 0..entries {
        let key = reader.text()?;
        match key {
            b"seq" => summary.seq = reader.integer()?,
            b"rev" => summary.rev = reader.optional_text()?,
            key if key == did_key => summary.did = reader.optional_text()?,
            _ => reader.skip()?,
        }
    }
    Ok(summary)
}

/// Microseconds since the epoch in a TID (a rev), or `None` when it is not one. The
/// stale-rev check runs on every commit, so this avoids the regex of `syntax::validate_tid`.
pub fn tid_micros(tid: &str) -> Option<u64> {
    const TID_LEN: usize = 13;
    let bytes = tid.as_bytes();
    if bytes.len() != TID_LEN {
        return None;
    }
    let mut value: u64 = 0;
    for byte in bytes {
        let digit = match byte {
            b'2'..=b'7' => byte - b'2',
            b'a'..=b'z' => byte - b'a' + 6,
            _ => return None,
        };
        value = (value << 5) | u64::from(digit);
    }
    Some(value >> 10)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

/// One CBOR item head: major type and argument.
struct Head {
    major: u8,
    arg: u64,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8], WireError> {
        let n = usize::try_from(n).map_err(|_| WireError::Truncated)?;
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated)?;
        let slice = self.bytes.get(self.pos..end).ok_or(WireError::Truncated)?;
        self.pos = end;
        Ok(slice)
    }

    fn head(&mut self) -> Result<Head, WireError> {
        let first = self.take(1)?[0];
        let (major, info) = (first >> 5, first & 0x1f);
        let arg = match info {
            0..=23 => u64::from(info),
            24 => u64::from(self.take(1)?[0]),
            25 => self.take(2)?.iter().fold(0, |n, b| (n << 8) | u64::from(*b)),
            26 => self.take(4)?.iter().fold(0, |n, b| (n << 8) | u64::from(*b)),
            27 => self.take(8)?.iter().fold(0, |n, b| (n << 8) | u64::from(*b)),
            _ => return Err(WireError::Unsupported),
        };
        Ok(Head { major, arg })
    }

    /// `{op, t}`: the header map.
    fn header(&mut self) -> Result<(i64, Option<&'a [u8]>), WireError> {
        let entries = self.map_len().ok_or(WireError::HeaderNotMap)??;
        let (mut op, mut t) = (0, None);
        for _ in 0..entries {
            match self.text()? {
                b"op" => op = self.integer()?.unwrap_or(0),
                b"t" => t = self.optional_text()?.map(str::as_bytes),
                _ => self.skip()?,
            }
        }
        Ok((op, t))
    }

    /// The entry count if the next item is a map (`None` when it is something else).
    fn map_len(&mut self) -> Option<Result<u64, WireError>> {
        let first = *self.bytes.get(self.pos)?;
        if first >> 5 != 5 {
            return None;
        }
        Some(self.head().map(|head| head.arg))
    }

    /// A map key: text expected; anything else is skipped and yields an empty key.
    fn text(&mut self) -> Result<&'a [u8], WireError> {
        let head = self.head()?;
        match head.major {
            3 => self.take(head.arg),
            _ => {
                self.skip_after_head(head)?;
                Ok(b"")
            }
        }
    }

    fn optional_text(&mut self) -> Result<Option<&'a str>, WireError> {
        let head = self.head()?;
        match head.major {
            3 => Ok(std::str::from_utf8(self.take(head.arg)?).ok()),
            _ => self.skip_after_head(head).map(|()| None),
        }
    }

    fn integer(&mut self) -> Result<Option<i64>, WireError> {
        let head = self.head()?;
        let value = i64::try_from(head.arg).ok();
        match head.major {
            0 => Ok(value),
            1 => Ok(value.map(|v| -1 - v)),
            _ => self.skip_after_head(head).map(|()| None),
        }
    }

    fn skip(&mut self) -> Result<(), WireError> {
        let head = self.head()?;
        self.skip_after_head(head)
    }

    /// Skips the rest of an item whose head was read. Containers add their children to a
    /// pending count instead of recursing; every item takes at least one byte, so a count
    /// larger than the bytes left is a truncated frame, found without walking it.
    fn skip_after_head(&mut self, head: Head) -> Result<(), WireError> {
        let mut pending: u64 = 0;
        let mut current = head;
        loop {
            match current.major {
                0 | 1 | 7 => {}
                2 | 3 => {
                    self.take(current.arg)?;
                }
                4 => pending = pending.checked_add(current.arg).ok_or(WireError::Truncated)?,
                5 => {
                    let children = current.arg.checked_mul(2).ok_or(WireError::Truncated)?;
                    pending = pending.checked_add(children).ok_or(WireError::Truncated)?;
                }
                6 => pending = pending.checked_add(1).ok_or(WireError::Truncated)?,
                _ => return Err(WireError::Unsupported),
            }
            if pending == 0 {
                return Ok(());
            }
            if pending > (self.bytes.len() - self.pos) as u64 {
                return Err(WireError::Truncated);
            }
            pending -= 1;
            current = self.head()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::atproto::frame::{self, Account, Event, IdentityEvent, Info};

    fn commit_frame(seq: i64, repo: &str, rev: &str) -> Vec<u8> {
        let mut repo_state = crate::atproto::repo::Repo::new(
            repo,
            crate::atproto::crypto::SigningKey::from_seed(crate::atproto::crypto::Curve::K256, b"wire"),
        );
        let write = crate::atproto::repo::Write::Create {
            path: "app.bsky.feed.post/3l3qo2vutsw2b".into(),
            record: crate::atproto::repo::sample_post("hello", "2026-11-26T00:00:00.000Z"),
        };
        let mut commit = repo_state.commit(&[write], seq, 1_700_000_000_000_000).expect("commit");
        commit.rev = rev.to_string();
        frame::encode(&Event::Commit(commit)).expect("encode")
    }

    #[test]
    fn reads_what_the_counts_need_from_every_event_type() {
        let did = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa";
        let commit = commit_frame(42, did, "3l3qo2vutsw2b");
        assert_eq!(
            summarize(&commit),
            Ok(Summary {
                kind: EventKind::Commit,
                seq: Some(42),
                did: Some(did),
                rev: Some("3l3qo2vutsw2b")
            })
        );
        let identity = frame::encode(&Event::Identity(IdentityEvent {
            seq: 7,
            did: did.into(),
            time: "2026-11-26T00:00:00.000Z".into(),
            handle: Some("a.test".into()),
        }))
        .expect("encode");
        let summary = summarize(&identity).expect("identity");
        assert_eq!(
            (summary.kind, summary.seq, summary.did, summary.rev),
            (EventKind::Identity, Some(7), Some(did), None)
        );
        let account = frame::encode(&Event::Account(Account {
            seq: 8,
            did: did.into(),
            time: "2026-11-26T00:00:00.000Z".into(),
            active: false,
            status: Some("deactivated".into()),
        }))
        .expect("encode");
        assert_eq!(summarize(&account).map(|s| (s.kind, s.seq)), Ok((EventKind::Account, Some(8))));
        let info =
            frame::encode(&Event::Info(Info { name: "OutdatedCursor".into(), message: None })).expect("info");
        assert_eq!(summarize(&info).map(|s| s.kind), Ok(EventKind::Info));
        let error = frame::error_frame("FutureCursor", None);
        assert_eq!(summarize(&error).map(|s| s.kind), Ok(EventKind::Error));
    }

    #[test]
    fn agrees_with_the_full_decoder() {
        let frame_bytes = commit_frame(9, "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb", "3l3qo2vutsw2c");
        let Ok(Event::Commit(full)) = frame::decode(&frame_bytes) else { panic!("full decode") };
        let light = summarize(&frame_bytes).expect("light decode");
        assert_eq!(
            (light.seq, light.did, light.rev),
            (Some(full.seq), Some(full.repo.as_str()), Some(full.rev.as_str()))
        );
    }

    #[test]
    fn never_reads_past_the_frame_or_recurses() {
        let frame_bytes = commit_frame(9, "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb", "3l3qo2vutsw2c");
        for end in 0..frame_bytes.len() {
            // Every prefix is an error or a summary, never a panic.
            let _ = summarize(&frame_bytes[..end]);
        }
        // A header, then a body whose first value is nested a million arrays deep.
        let mut deep = vec![0xa2, 0x62, b'o', b'p', 0x01, 0x61, b't', 0x65, b'#', b's', b'y', b'n', b'c'];
        deep.extend([0xa1, 0x61, b'x']);
        deep.extend(std::iter::repeat_n(0x81, 1_000_000));
        deep.push(0x00);
        assert_eq!(summarize(&deep).map(|s| s.kind), Ok(EventKind::Sync));
        // An array claiming 2^60 items in a short frame is truncated, found at once.
        let mut huge = deep[..16].to_vec();
        huge.extend([0x9b, 0x10, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(summarize(&huge), Err(WireError::Truncated));
    }

    #[test]
    fn tid_times() {
        let tid = crate::atproto::syntax::tid_from_parts(1_700_000_000_123_456, 7);
        assert_eq!(tid_micros(&tid), Some(1_700_000_000_123_456));
        assert_eq!(tid_micros("not-a-tid"), None);
        assert_eq!(tid_micros("3l3qo2vutsw2!"), None);
    }
}
