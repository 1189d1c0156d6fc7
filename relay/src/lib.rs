//! An ATProto relay.
//!
//! Stages, one module each: `atproto` (protocol building blocks), `identity`
//! (DID resolution), `validate` (the Sync 1.1 verdict). Ingest, sequencing,
//! fan-out, XRPC, admin and collections arrive with the daemon.

pub mod atproto;
pub mod identity;
pub mod validate;
