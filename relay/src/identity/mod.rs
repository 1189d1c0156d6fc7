//! Identity stage: DID documents, resolution of `did:plc` and `did:web`, a bounded
//! cache with negative entries, and the SSRF guard used for all untrusted hosts.

pub mod doc;
pub mod resolver;
pub mod ssrf;

pub use doc::{parse_document, Identity};
pub use resolver::{IdentityConfig, ResolveError, Resolver};
