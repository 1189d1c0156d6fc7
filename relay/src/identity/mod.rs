//! Identity stage: DID documents, resolution of `did:plc` and `did:web`, a bounded
//! cache with negative entries, and the SSRF guard used for all untrusted hosts.

/// DID documents (in the protocol core crate).
pub use relay_atproto::identity as doc;
pub mod resolver;
pub mod ssrf;

pub use doc::{parse_document, Identity};
pub use resolver::{IdentityConfig, ResolveError, Resolver};

impl crate::cache::Weigh for Identity {
    fn weigh(&self) -> usize {
        // The key is a fixed-size parsed point; the strings are what varies.
        std::mem::size_of::<Identity>() + self.did.len() + self.handle.weigh() + self.pds_endpoint.weigh()
    }
}
