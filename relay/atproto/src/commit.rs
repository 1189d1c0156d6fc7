//! The signed repository commit object (version 3).

use crate::cbor::{self, CborError};
use crate::crypto::{PublicKey, SignatureError, SigningKey};
use cid::Cid;
use serde::{Deserialize, Serialize};

/// A signed commit. Field order is canonical DAG-CBOR order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCommit {
    pub did: String,
    pub rev: String,
    #[serde(with = "serde_bytes")]
    pub sig: Vec<u8>,
    pub data: Cid,
    /// Must be present in the encoding (usually null).
    pub prev: Option<Cid>,
    pub version: u64,
}

/// The same object without `sig`: the bytes that are signed.
#[derive(Serialize)]
struct UnsignedCommit<'a> {
    did: &'a str,
    rev: &'a str,
    data: &'a Cid,
    prev: &'a Option<Cid>,
    version: u64,
}

impl SignedCommit {
    pub fn decode(bytes: &[u8]) -> Result<SignedCommit, CborError> {
        cbor::decode_trusted_shape(bytes)
    }

    pub fn unsigned_bytes(&self) -> Vec<u8> {
        let unsigned = UnsignedCommit {
            did: &self.did,
            rev: &self.rev,
            data: &self.data,
            prev: &self.prev,
            version: self.version,
        };
        cbor::encode(&unsigned).expect("commit objects always encode")
    }

    pub fn verify(&self, key: &PublicKey) -> Result<(), SignatureError> {
        key.verify(&self.unsigned_bytes(), &self.sig)
    }

    /// Creates and signs a commit; returns it with its encoded bytes and CID.
    pub fn sign(did: &str, rev: &str, data: Cid, key: &SigningKey) -> (SignedCommit, Vec<u8>, Cid) {
        let mut commit = SignedCommit {
            did: did.to_string(),
            rev: rev.to_string(),
            sig: Vec::new(),
            data,
            prev: None,
            version: 3,
        };
        commit.sig = key.sign(&commit.unsigned_bytes()).to_vec();
        let bytes = cbor::encode(&commit).expect("commit objects always encode");
        let cid = cbor::cid_for_cbor(&bytes);
        (commit, bytes, cid)
    }
}
