//! Arbitrary bytes as DAG-CBOR: the strict checker and the decoder never panic, and
//! anything the checker accepts decodes and re-encodes to the same bytes (canonical).
#![no_main]
use libfuzzer_sys::fuzz_target;
use relay_atproto::cbor;

fuzz_target!(|data: &[u8]| {
    if cbor::check(data, cbor::Limits::default()).is_ok() {
        let value: ipld_core::ipld::Ipld = cbor::decode(data).expect("checked CBOR decodes");
        assert_eq!(cbor::encode(&value).expect("re-encodes"), data, "strict CBOR is canonical");
    }
    let _ = cbor::check(data, cbor::Limits::lenient());
});
