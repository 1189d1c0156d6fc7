//! Arbitrary bytes as a CAR of MST nodes: loading a partial tree from it and running
//! lookups, inserts and removals (what commit inversion does) never panics.
//! (The full verdict checks the signature before the MST, so random input would
//! never reach the tree; this target feeds the tree directly.)
#![no_main]
use libfuzzer_sys::fuzz_target;
use relay_atproto::{car, cbor, mst::Mst};

fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = car::read(data, 2_000_000) else { return };
    let value = cbor::cid_for_cbor(b"\xf6");
    let mut tree = Mst::from_root(parsed.roots[0]);
    for key in ["app.bsky.feed.post/3lmxjza3nva27", "app.bsky.feed.like/a", "z/z"] {
        if tree.get(key.as_bytes(), &parsed).is_err() {
            return;
        }
        let _ = tree.insert(key.as_bytes(), value, &parsed);
        let _ = tree.remove(key.as_bytes(), &parsed);
    }
    let _ = tree.root_cid();
});
