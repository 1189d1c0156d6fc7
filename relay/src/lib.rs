//! An ATProto relay.
//!
//! Stages, one module each: `ingest` (upstream subscriptions), `validate` (the Sync 1.1
//! verdict and its worker pool), `sequence` (seq assignment and the durable event log),
//! `fanout` (the firehose for consumers), `xrpc` and `admin` (HTTP APIs), `identity`
//! (DID resolution), `storage` (SQL metadata), `collections` (the listReposByCollection
//! directory on RocksDB), `coverage` (comparing relays; the relay's own coverage check).
//! `atproto` holds the protocol building blocks; `app` ties the stages together.

pub mod admin;
pub mod admin_cli;
pub mod app;
/// The protocol core (the `relay-atproto` crate), under the name the daemon's modules use.
pub mod atproto {
    pub use relay_atproto::{car, cbor, commit, crypto, frame, mst, repo, syntax};
}
pub mod cache;
pub mod collections;
pub mod config;
pub mod coverage;
pub mod disk;
pub mod fanout;
pub mod identity;
pub mod ingest;
pub mod metrics;
pub mod sequence;
pub mod server;
pub mod simulate;
pub mod storage;
pub mod validate;
pub mod xrpc;
