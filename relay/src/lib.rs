//! An ATProto relay.
//!
//! Stages, one module each: `ingest` (upstream subscriptions), `validate` (the Sync 1.1
//! verdict and its worker pool), `sequence` (seq assignment and the durable event log),
//! `fanout` (the firehose for consumers), `xrpc` and `admin` (HTTP APIs), `identity`
//! (DID resolution), `storage` (SQL metadata), `collections` (the listReposByCollection
//! directory on RocksDB), `coverage` (comparing relays; the relay's own coverage check).
//! `atproto` holds the protocol building blocks (the `relay-atproto` crate).
//!
//! `wiring` builds every stage with the handles it uses and owns their tasks (start-up and
//! the ordered shutdown); `app` is the façade the HTTP handlers hold. Stage modules import
//! neither (CI checks it). `progress`, `accounts`, `clock` and `http` are the small shared
//! pieces stages hand each other.

pub mod accounts;
pub mod admin;
pub mod admin_cli;
pub mod app;
/// The protocol core (the `relay-atproto` crate), under the name the daemon's modules use.
pub mod atproto {
    pub use relay_atproto::{car, cbor, commit, crypto, frame, mst, repo, syntax};
}
pub mod cache;
pub mod clock;
pub mod collections;
pub mod config;
pub mod coverage;
pub mod disk;
pub mod fanout;
pub mod http;
pub mod identity;
pub mod ingest;
pub mod metrics;
pub mod progress;
pub mod sequence;
pub mod server;
pub mod simulate;
pub mod storage;
pub mod summary;
pub mod validate;
pub mod wiring;
pub mod xrpc;
