//! ATProto protocol building blocks: syntax, data model, CAR, MST, crypto,
//! commit objects and firehose frames. Pure code: no I/O.

pub mod car;
pub mod cbor;
pub mod commit;
pub mod crypto;
pub mod frame;
pub mod mst;
pub mod repo;
pub mod syntax;
