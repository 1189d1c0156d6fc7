//! Arbitrary bytes as a firehose frame: decode must never panic, and whatever
//! decodes must re-encode and decode to the same event.
#![no_main]
use libfuzzer_sys::fuzz_target;
use relay_atproto::frame::{self, Event};

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = frame::decode(data) {
        if !matches!(event, Event::Unknown { .. }) {
            let bytes = frame::encode(&event).expect("decoded events re-encode");
            assert_eq!(frame::decode(&bytes).expect("re-encoded frame decodes"), event);
        }
    }
});
