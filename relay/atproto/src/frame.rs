//! `com.atproto.sync.subscribeRepos` frames: a DAG-CBOR header `{op, t}` followed
//! by a DAG-CBOR body. Decoding checks sizes before anything else and tolerates
//! message types it does not know.

use crate::cbor::{self, CborError, Limits};
use cid::Cid;
use serde::{Deserialize, Serialize};

/// Hard limit for one WebSocket frame (sync spec).
pub const MAX_FRAME_BYTES: usize = 5_000_000;
/// `#commit.blocks` limit (lexicon).
pub const MAX_COMMIT_BLOCKS_BYTES: usize = 2_000_000;
/// `#commit.ops` limit (lexicon).
pub const MAX_COMMIT_OPS: usize = 200;
/// `#sync.blocks` limit (lexicon).
pub const MAX_SYNC_BLOCKS_BYTES: usize = 10_000;
/// Per-record limit (sync spec).
pub const MAX_RECORD_BYTES: usize = 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame is {0} bytes, over the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("bad header: {0}")]
    Header(CborError),
    #[error("bad {kind} body: {error}")]
    Body { kind: String, error: CborError },
    #[error("message frame without a type")]
    MissingType,
    #[error("unknown op {0}")]
    UnknownOp(i64),
    /// A well-framed event with a field over its lexicon limit; `seq` lets a reader skip
    /// just this event instead of treating the stream as broken.
    #[error("{field} is {size}, over the limit of {limit}")]
    FieldLimit { field: &'static str, size: usize, limit: usize, seq: Option<i64> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub op: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoOp {
    pub action: String,
    pub path: String,
    pub cid: Option<Cid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<Cid>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    pub seq: i64,
    pub rebase: bool,
    #[serde(rename = "tooBig")]
    pub too_big: bool,
    pub repo: String,
    pub commit: Cid,
    pub rev: String,
    pub since: Option<String>,
    #[serde(with = "serde_bytes")]
    pub blocks: Vec<u8>,
    pub ops: Vec<RepoOp>,
    /// Deprecated; some producers send null.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub blobs: Vec<Cid>,
    #[serde(rename = "prevData", default, skip_serializing_if = "Option::is_none")]
    pub prev_data: Option<Cid>,
    pub time: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sync {
    pub seq: i64,
    pub did: String,
    #[serde(with = "serde_bytes")]
    pub blocks: Vec<u8>,
    pub rev: String,
    pub time: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityEvent {
    pub seq: i64,
    pub did: String,
    pub time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub seq: i64,
    pub did: String,
    pub time: String,
    pub active: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Cid>, D::Error> {
    Ok(Option::<Vec<Cid>>::deserialize(d)?.unwrap_or_default())
}

/// One decoded frame.
// Commits are nearly every event on the wire, so boxing the large variant would
// add an allocation to the common case to save memory in the rare one.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Commit(Commit),
    Sync(Sync),
    Identity(IdentityEvent),
    Account(Account),
    Info(Info),
    /// A message type this relay does not know; consumers must ignore it.
    Unknown {
        t: String,
    },
    Error(ErrorBody),
}

impl Event {
    pub fn type_name(&self) -> &str {
        match self {
            Event::Commit(_) => "#commit",
            Event::Sync(_) => "#sync",
            Event::Identity(_) => "#identity",
            Event::Account(_) => "#account",
            Event::Info(_) => "#info",
            Event::Unknown { t } => t,
            Event::Error(_) => "error",
        }
    }

    /// The upstream sequence number, for events that carry one.
    pub fn seq(&self) -> Option<i64> {
        match self {
            Event::Commit(c) => Some(c.seq),
            Event::Sync(s) => Some(s.seq),
            Event::Identity(i) => Some(i.seq),
            Event::Account(a) => Some(a.seq),
            _ => None,
        }
    }

    pub fn set_seq(&mut self, seq: i64) {
        match self {
            Event::Commit(c) => c.seq = seq,
            Event::Sync(s) => s.seq = seq,
            Event::Identity(i) => i.seq = seq,
            Event::Account(a) => a.seq = seq,
            _ => {}
        }
    }

    /// The account the event is about.
    pub fn did(&self) -> Option<&str> {
        match self {
            Event::Commit(c) => Some(&c.repo),
            Event::Sync(s) => Some(&s.did),
            Event::Identity(i) => Some(&i.did),
            Event::Account(a) => Some(&a.did),
            _ => None,
        }
    }
}

/// How much to trust a frame's encoding.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Strictness {
    /// From the network: the strict DAG-CBOR pass (canonical form, limits) runs first.
    Strict,
    /// From this relay's own log: it wrote the frame itself, in canonical form.
    Logged,
}

fn body<T: serde::de::DeserializeOwned>(
    kind: &str,
    bytes: &[u8],
    strictness: Strictness,
) -> Result<T, FrameError> {
    let decoded = match strictness {
        Strictness::Strict => cbor::decode(bytes),
        Strictness::Logged => cbor::decode_trusted_shape(bytes),
    };
    decoded.map_err(|error| FrameError::Body { kind: kind.to_string(), error })
}

/// Decodes a frame, enforcing the size limits of the sync spec and lexicon.
pub fn decode(frame: &[u8]) -> Result<Event, FrameError> {
    decode_with(frame, Strictness::Strict)
}

/// Decodes a frame this relay wrote to its own log (the collection indexer, the repo-state
/// replay at start): without the strict encoding pass, which only network input needs.
pub fn decode_logged(frame: &[u8]) -> Result<Event, FrameError> {
    decode_with(frame, Strictness::Logged)
}

fn decode_with(frame: &[u8], strictness: Strictness) -> Result<Event, FrameError> {
    if frame.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(frame.len()));
    }
    let header_len = cbor::item_len(frame, Limits::default()).map_err(FrameError::Header)?;
    let header: Header = cbor::decode(&frame[..header_len]).map_err(FrameError::Header)?;
    let rest = &frame[header_len..];
    match header.op {
        -1 => Ok(Event::Error(body("error", rest, strictness)?)),
        1 => {
            let t = header.t.ok_or(FrameError::MissingType)?;
            let event = match t.as_str() {
                "#commit" => Event::Commit(body(&t, rest, strictness)?),
                "#sync" => Event::Sync(body(&t, rest, strictness)?),
                "#identity" => Event::Identity(body(&t, rest, strictness)?),
                "#account" => Event::Account(body(&t, rest, strictness)?),
                "#info" => Event::Info(body(&t, rest, strictness)?),
                _ => Event::Unknown { t },
            };
            check_field_limits(&event)?;
            Ok(event)
        }
        other => Err(FrameError::UnknownOp(other)),
    }
}

fn check_field_limits(event: &Event) -> Result<(), FrameError> {
    let limit = |field, size, limit| {
        if size > limit {
            Err(FrameError::FieldLimit { field, size, limit, seq: event.seq() })
        } else {
            Ok(())
        }
    };
    match event {
        Event::Commit(c) => {
            limit("#commit.blocks", c.blocks.len(), MAX_COMMIT_BLOCKS_BYTES)?;
            limit("#commit.ops", c.ops.len(), MAX_COMMIT_OPS)
        }
        Event::Sync(s) => limit("#sync.blocks", s.blocks.len(), MAX_SYNC_BLOCKS_BYTES),
        _ => Ok(()),
    }
}

fn frame_of<T: Serialize>(header: &Header, body: &T) -> Result<Vec<u8>, CborError> {
    let mut out = cbor::encode(header)?;
    out.extend(cbor::encode(body)?);
    Ok(out)
}

/// Encodes an event as a frame. Unknown events cannot be re-encoded (their body was not kept).
pub fn encode(event: &Event) -> Result<Vec<u8>, CborError> {
    let message = |t: &str| Header { op: 1, t: Some(t.to_string()) };
    match event {
        Event::Commit(c) => Ok(crate::commit_frame::encode(c)),
        Event::Sync(s) => frame_of(&message("#sync"), s),
        Event::Identity(i) => frame_of(&message("#identity"), i),
        Event::Account(a) => frame_of(&message("#account"), a),
        Event::Info(i) => frame_of(&message("#info"), i),
        Event::Error(e) => frame_of(&Header { op: -1, t: None }, e),
        Event::Unknown { t } => Err(CborError::Encode(format!("cannot re-encode unknown type {t}"))),
    }
}

/// The frame for an error (`FutureCursor`, `ConsumerTooSlow`).
pub fn error_frame(error: &str, message: Option<&str>) -> Vec<u8> {
    let body = ErrorBody { error: error.to_string(), message: message.map(str::to_string) };
    encode(&Event::Error(body)).expect("error frames always encode")
}

/// Builds an event from atproto JSON `{header: {op, t}, body}` (test scenarios, tooling).
pub fn event_from_json(header: &serde_json::Value, body: &serde_json::Value) -> Result<Event, FrameError> {
    let header_ipld = cbor::json_to_ipld(header).map_err(FrameError::Header)?;
    let body_ipld =
        cbor::json_to_ipld(body).map_err(|error| FrameError::Body { kind: "json".into(), error })?;
    let mut frame = cbor::encode(&header_ipld).map_err(FrameError::Header)?;
    frame.extend(cbor::encode(&body_ipld).map_err(|error| FrameError::Body { kind: "json".into(), error })?);
    decode(&frame)
}
