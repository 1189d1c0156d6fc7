//! Public keys and signature checks for the two atproto curves.
//!
//! Backends were chosen by benchmark on the hot path (see docs/validation.md):
//! k256 verifies with libsecp256k1 (the `secp256k1` crate), p256 with `ring`.
//! Both demand the 64-byte compact `r‖s` form with a low S; DER is refused.

use sha2::{Digest, Sha256};

const MULTICODEC_K256: [u8; 2] = [0xe7, 0x01];
const MULTICODEC_P256: [u8; 2] = [0x80, 0x24];

/// n/2 for secp256k1: an S above this is the malleable twin of a low-S signature.
const K256_HALF_ORDER: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x5d,
    0x57, 0x6e, 0x73, 0x57, 0xa4, 0x50, 0x1d, 0xdf, 0xe9, 0x2f, 0x46, 0x68, 0x1b, 0x20, 0xa0,
];
/// n/2 for P-256.
const P256_HALF_ORDER: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xde,
    0x73, 0x7d, 0x56, 0xd3, 0x8b, 0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31, 0x92, 0xa8,
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not a did:key")]
    NotDidKey,
    #[error("multibase must be base58btc ('z' prefix)")]
    NotBase58btc,
    #[error("bad base58: {0}")]
    BadBase58(String),
    #[error("unsupported key type (multicodec or suite)")]
    UnsupportedType,
    #[error("not a valid point on the curve")]
    BadPoint,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signature must be 64 bytes r||s (got {0}; DER is not accepted)")]
    BadLength(usize),
    #[error("signature S is not low (malleable form)")]
    HighS,
    #[error("signature does not verify")]
    Invalid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    K256,
    P256,
}

/// A parsed, ready-to-verify public key.
#[derive(Clone, PartialEq, Eq)]
pub enum PublicKey {
    K256(secp256k1::PublicKey),
    /// Uncompressed SEC1 point, the form `ring` takes.
    P256([u8; 65]),
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.to_did_key())
    }
}

impl PublicKey {
    pub fn curve(&self) -> Curve {
        match self {
            PublicKey::K256(_) => Curve::K256,
            PublicKey::P256(_) => Curve::P256,
        }
    }

    /// Parses a SEC1 point (compressed or uncompressed).
    pub fn from_sec1(curve: Curve, bytes: &[u8]) -> Result<PublicKey, KeyError> {
        match curve {
            Curve::K256 => {
                secp256k1::PublicKey::from_slice(bytes).map(PublicKey::K256).map_err(|_| KeyError::BadPoint)
            }
            Curve::P256 => {
                let point = p256::PublicKey::from_sec1_bytes(bytes).map_err(|_| KeyError::BadPoint)?;
                use p256::elliptic_curve::sec1::ToEncodedPoint;
                let encoded = point.to_encoded_point(false);
                let mut out = [0u8; 65];
                out.copy_from_slice(encoded.as_bytes());
                Ok(PublicKey::P256(out))
            }
        }
    }

    /// Parses a Multikey `publicKeyMultibase` (`z` + base58btc(multicodec ‖ compressed point)).
    pub fn from_multikey(multibase: &str) -> Result<PublicKey, KeyError> {
        let bytes = decode_base58btc(multibase)?;
        if let Some(point) = bytes.strip_prefix(&MULTICODEC_K256) {
            return PublicKey::from_sec1(Curve::K256, point);
        }
        if let Some(point) = bytes.strip_prefix(&MULTICODEC_P256) {
            return PublicKey::from_sec1(Curve::P256, point);
        }
        Err(KeyError::UnsupportedType)
    }

    pub fn from_did_key(did: &str) -> Result<PublicKey, KeyError> {
        let multibase = did.strip_prefix("did:key:").ok_or(KeyError::NotDidKey)?;
        PublicKey::from_multikey(multibase)
    }

    /// Parses a legacy DID-document key: `EcdsaSecp256{k,r}1VerificationKey2019`
    /// with a multibase of the raw (usually uncompressed) point and no multicodec.
    pub fn from_legacy(suite: &str, multibase: &str) -> Result<PublicKey, KeyError> {
        let curve = match suite {
            "EcdsaSecp256k1VerificationKey2019" => Curve::K256,
            "EcdsaSecp256r1VerificationKey2019" => Curve::P256,
            _ => return Err(KeyError::UnsupportedType),
        };
        PublicKey::from_sec1(curve, &decode_base58btc(multibase)?)
    }

    fn compressed(&self) -> Vec<u8> {
        match self {
            PublicKey::K256(key) => key.serialize().to_vec(),
            PublicKey::P256(point) => {
                let mut out = Vec::with_capacity(33);
                out.push(if point[64] & 1 == 1 { 0x03 } else { 0x02 });
                out.extend_from_slice(&point[1..33]);
                out
            }
        }
    }

    pub fn to_multikey(&self) -> String {
        let prefix = match self {
            PublicKey::K256(_) => MULTICODEC_K256,
            PublicKey::P256(_) => MULTICODEC_P256,
        };
        let mut bytes = prefix.to_vec();
        bytes.extend(self.compressed());
        format!("z{}", bs58::encode(bytes).into_string())
    }

    pub fn to_did_key(&self) -> String {
        format!("did:key:{}", self.to_multikey())
    }

    /// Verifies a 64-byte low-S ECDSA signature over SHA-256(`message`).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), SignatureError> {
        let signature: &[u8; 64] =
            signature.try_into().map_err(|_| SignatureError::BadLength(signature.len()))?;
        let half_order = match self {
            PublicKey::K256(_) => &K256_HALF_ORDER,
            PublicKey::P256(_) => &P256_HALF_ORDER,
        };
        if signature[32..] > half_order[..] {
            return Err(SignatureError::HighS);
        }
        match self {
            PublicKey::K256(key) => {
                let digest: [u8; 32] = Sha256::digest(message).into();
                let sig = secp256k1::ecdsa::Signature::from_compact(signature)
                    .map_err(|_| SignatureError::Invalid)?;
                let msg = secp256k1::Message::from_digest(digest);
                secp256k1::SECP256K1.verify_ecdsa(&msg, &sig, key).map_err(|_| SignatureError::Invalid)
            }
            PublicKey::P256(point) => {
                let key =
                    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, point);
                key.verify(message, signature).map_err(|_| SignatureError::Invalid)
            }
        }
    }
}

fn decode_base58btc(multibase: &str) -> Result<Vec<u8>, KeyError> {
    let encoded = multibase.strip_prefix('z').ok_or(KeyError::NotBase58btc)?;
    bs58::decode(encoded).into_vec().map_err(|e| KeyError::BadBase58(e.to_string()))
}

/// A signing key, used by the simulator, tests and benchmarks to produce real commits.
pub enum SigningKey {
    K256(secp256k1::SecretKey),
    P256(p256::ecdsa::SigningKey),
}

impl SigningKey {
    pub fn from_bytes(curve: Curve, secret: &[u8]) -> Result<SigningKey, KeyError> {
        match curve {
            Curve::K256 => {
                secp256k1::SecretKey::from_slice(secret).map(SigningKey::K256).map_err(|_| KeyError::BadPoint)
            }
            Curve::P256 => p256::ecdsa::SigningKey::from_slice(secret)
                .map(SigningKey::P256)
                .map_err(|_| KeyError::BadPoint),
        }
    }

    /// A deterministic key derived from a seed (test fixtures and the simulator).
    pub fn from_seed(curve: Curve, seed: &[u8]) -> SigningKey {
        let mut counter = 0u32;
        loop {
            let mut hasher = Sha256::new();
            hasher.update(seed);
            hasher.update(counter.to_be_bytes());
            let secret: [u8; 32] = hasher.finalize().into();
            if let Ok(key) = SigningKey::from_bytes(curve, &secret) {
                return key;
            }
            counter += 1;
        }
    }

    pub fn public_key(&self) -> PublicKey {
        match self {
            SigningKey::K256(secret) => {
                PublicKey::K256(secp256k1::PublicKey::from_secret_key(secp256k1::SECP256K1, secret))
            }
            SigningKey::P256(key) => {
                let point = key.verifying_key().to_encoded_point(false);
                let mut out = [0u8; 65];
                out.copy_from_slice(point.as_bytes());
                PublicKey::P256(out)
            }
        }
    }

    /// Signs SHA-256(`message`), returning 64-byte low-S `r‖s`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        match self {
            SigningKey::K256(secret) => {
                let digest: [u8; 32] = Sha256::digest(message).into();
                let msg = secp256k1::Message::from_digest(digest);
                // libsecp256k1 always produces low-S signatures.
                secp256k1::SECP256K1.sign_ecdsa(&msg, secret).serialize_compact()
            }
            SigningKey::P256(key) => {
                use p256::ecdsa::signature::Signer;
                let sig: p256::ecdsa::Signature = key.sign(message);
                let sig = sig.normalize_s().unwrap_or(sig);
                sig.to_bytes().into()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_both_curves() {
        for curve in [Curve::K256, Curve::P256] {
            let key = SigningKey::from_seed(curve, b"test");
            let public = key.public_key();
            let sig = key.sign(b"hello");
            public.verify(b"hello", &sig).expect("valid signature");
            assert_eq!(public.verify(b"hellp", &sig), Err(SignatureError::Invalid));
            let round = PublicKey::from_did_key(&public.to_did_key()).expect("did:key parses");
            assert_eq!(round, public);
        }
    }
}
