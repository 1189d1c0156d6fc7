//! Arbitrary bytes as a CAR file: never panic; every block returned hashes to its CID.
#![no_main]
use libfuzzer_sys::fuzz_target;
use relay_atproto::{car, cbor};

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = car::read(data, 2_000_000) {
        assert!(!parsed.roots.is_empty());
        for (cid, bytes) in &parsed.blocks {
            assert_eq!(cbor::cid_with_codec(cid.codec(), bytes), *cid);
        }
    }
});
