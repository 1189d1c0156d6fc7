//! The relay's protocol core: ATProto syntax, the DAG-CBOR data model, CAR files, the Merkle
//! Search Tree, signing keys, commit objects, firehose frames, DID documents, and the Sync 1.1
//! verdict on an event. Pure code: no I/O, no async runtime, no storage. The daemon (`relay`),
//! the fuzz targets and `relay verify` all judge events with this same code.

pub mod car;
pub mod cbor;
pub mod commit;
pub mod commit_frame;
pub mod crypto;
pub mod frame;
pub mod identity;
pub mod mst;
pub mod repo;
pub mod syntax;
pub mod validate;
