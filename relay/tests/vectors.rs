//! Every public ATProto interop vector (copied under tests/vectors/interop, CC0),
//! run against the validation core. Each test counts what it checked so a vector
//! file that silently stops loading cannot make the suite pass.

use base64::Engine;
use cid::Cid;
use relay::atproto::cbor;
use relay::atproto::crypto::{Curve, PublicKey, SigningKey};
use relay::atproto::mst::{self, Mst, RecordingSource};
use relay::atproto::syntax;
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;

fn vector_path(rel: &str) -> PathBuf {
    manifest_dir().join("tests/vectors/interop").join(rel)
}

fn json(rel: &str) -> Value {
    let bytes = std::fs::read(vector_path(rel)).expect("vector file exists");
    serde_json::from_slice(&bytes).expect("vector file is JSON")
}

/// Test lines of a syntax file: comments and empty lines skipped, nothing trimmed.
fn lines(rel: &str) -> Vec<String> {
    let text = std::fs::read_to_string(vector_path(rel)).expect("vector file exists");
    text.split('\n').filter(|line| !line.starts_with('#') && !line.is_empty()).map(str::to_string).collect()
}

type Check = fn(&str) -> bool;

fn run_syntax(name: &str, check: Check, parse_invalid: Option<Check>) -> usize {
    let valid = lines(&format!("syntax/{name}_syntax_valid.txt"));
    let invalid = lines(&format!("syntax/{name}_syntax_invalid.txt"));
    assert!(!valid.is_empty() && !invalid.is_empty(), "{name}: vectors loaded");
    for line in &valid {
        assert!(check(line), "{name}: valid vector rejected: {line:?}");
    }
    for line in &invalid {
        assert!(!check(line), "{name}: invalid vector accepted: {line:?}");
    }
    let mut count = valid.len() + invalid.len();
    if let Some(parse) = parse_invalid {
        let parse_invalid = lines(&format!("syntax/{name}_parse_invalid.txt"));
        for line in &parse_invalid {
            assert!(check(line), "{name}: parse-invalid vector fails syntax: {line:?}");
            assert!(!parse(line), "{name}: parse-invalid vector parsed: {line:?}");
        }
        count += parse_invalid.len();
    }
    count
}

#[test]
fn syntax_vectors() {
    let mut total = 0;
    total += run_syntax("did", |s| syntax::validate_did(s).is_ok(), None);
    total += run_syntax("handle", |s| syntax::validate_handle(s).is_ok(), None);
    total += run_syntax("atidentifier", |s| syntax::validate_at_identifier(s).is_ok(), None);
    total += run_syntax("nsid", |s| syntax::validate_nsid(s).is_ok(), None);
    total += run_syntax("tid", |s| syntax::validate_tid(s).is_ok(), None);
    total += run_syntax("recordkey", |s| syntax::validate_record_key(s).is_ok(), None);
    total += run_syntax("aturi", |s| syntax::validate_at_uri(s).is_ok(), None);
    total += run_syntax("cid", |s| syntax::validate_cid_syntax(s).is_ok(), None);
    total += run_syntax("uri", |s| syntax::validate_uri(s).is_ok(), None);
    total += run_syntax(
        "datetime",
        |s| syntax::validate_datetime_syntax(s).is_ok(),
        Some(|s| syntax::parse_datetime(s).is_ok()),
    );
    total += run_syntax(
        "language",
        |s| syntax::validate_language_syntax(s).is_ok(),
        Some(|s| syntax::parse_language(s).is_ok()),
    );
    println!("syntax vectors passed: {total}");
    assert_eq!(total, 536, "every syntax vector line was checked");
}

fn b64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(text.trim_end_matches('='))
        .expect("vector base64")
}

#[test]
fn crypto_signature_vectors() {
    let fixtures = json("crypto/signature-fixtures.json");
    let fixtures = fixtures.as_array().expect("array");
    assert_eq!(fixtures.len(), 6);
    for fixture in fixtures {
        let message = b64(fixture["messageBase64"].as_str().expect("message"));
        let signature = b64(fixture["signatureBase64"].as_str().expect("signature"));
        let expected = fixture["validSignature"].as_bool().expect("verdict");
        let key =
            PublicKey::from_did_key(fixture["publicKeyDid"].as_str().expect("did")).expect("did:key parses");
        let legacy = PublicKey::from_legacy(
            fixture["didDocSuite"].as_str().expect("suite"),
            fixture["publicKeyMultibase"].as_str().expect("multibase"),
        )
        .expect("legacy multibase parses");
        assert_eq!(key, legacy, "did:key and legacy forms are the same key");
        let verdict = key.verify(&message, &signature).is_ok();
        assert_eq!(verdict, expected, "{}", fixture["comment"]);
    }
    println!("signature vectors passed: {}", fixtures.len());
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex")).collect()
}

#[test]
fn crypto_did_key_vectors() {
    let mut count = 0;
    for (file, curve) in
        [("crypto/w3c_didkey_K256.json", Curve::K256), ("crypto/w3c_didkey_P256.json", Curve::P256)]
    {
        for fixture in json(file).as_array().expect("array") {
            let secret = match fixture.get("privateKeyBytesHex") {
                Some(h) => hex(h.as_str().expect("hex")),
                None => bs58::decode(fixture["privateKeyBytesBase58"].as_str().expect("b58"))
                    .into_vec()
                    .expect("base58"),
            };
            let key = SigningKey::from_bytes(curve, &secret).expect("secret key");
            let expected = fixture["publicDidKey"].as_str().expect("did");
            assert_eq!(key.public_key().to_did_key(), expected);
            assert_eq!(PublicKey::from_did_key(expected).expect("parses"), key.public_key());
            count += 1;
        }
    }
    println!("did:key vectors passed: {count}");
    assert_eq!(count, 6);
}

#[test]
fn data_model_fixtures() {
    let fixtures = json("data-model/data-model-fixtures.json");
    let fixtures = fixtures.as_array().expect("array");
    for fixture in fixtures {
        let ipld = cbor::json_to_ipld(&fixture["json"]).expect("json converts");
        let encoded = cbor::encode(&ipld).expect("encodes");
        let expected = b64(fixture["cbor_base64"].as_str().expect("cbor"));
        assert_eq!(encoded, expected, "canonical encoding");
        cbor::check(&encoded, cbor::Limits::default()).expect("strict check accepts canonical CBOR");
        assert_eq!(cbor::cid_for_cbor(&encoded).to_string(), fixture["cid"].as_str().expect("cid"));
        let decoded: ipld_core::ipld::Ipld = cbor::decode(&expected).expect("decodes");
        assert_eq!(cbor::ipld_to_json(&decoded).expect("to json"), fixture["json"]);
    }
    println!("data-model round trips passed: {}", fixtures.len());
    assert_eq!(fixtures.len(), 3);
}

#[test]
fn data_model_valid_and_invalid() {
    let accepts =
        |value: &Value| cbor::json_to_ipld(value).and_then(|ipld| cbor::validate_data_model(&ipld)).is_ok();
    let valid = json("data-model/data-model-valid.json");
    let invalid = json("data-model/data-model-invalid.json");
    for case in valid.as_array().expect("array") {
        assert!(accepts(&case["json"]), "valid rejected: {}", case["note"]);
    }
    for case in invalid.as_array().expect("array") {
        assert!(!accepts(&case["json"]), "invalid accepted: {}", case["note"]);
    }
    let total = valid.as_array().map_or(0, Vec::len) + invalid.as_array().map_or(0, Vec::len);
    println!("data-model validity vectors passed: {total}");
    assert_eq!(total, 17);
}

#[test]
fn mst_key_height_and_prefix_vectors() {
    let heights = json("mst/key_heights.json");
    for case in heights.as_array().expect("array") {
        let key = case["key"].as_str().expect("key");
        assert_eq!(u64::from(mst::key_height(key.as_bytes())), case["height"].as_u64().expect("h"), "{key}");
    }
    let prefixes = json("mst/common_prefix.json");
    for case in prefixes.as_array().expect("array") {
        let (left, right) = (case["left"].as_str().expect("l"), case["right"].as_str().expect("r"));
        assert_eq!(
            mst::common_prefix_len(left.as_bytes(), right.as_bytes()) as u64,
            case["len"].as_u64().expect("len")
        );
    }
    let keys = lines("mst/example_keys.txt");
    for key in &keys {
        let expected: u8 = key[1..2].parse().expect("height digit");
        assert_eq!(mst::key_height(key.as_bytes()), expected, "{key}");
    }
    let total = heights.as_array().map_or(0, Vec::len) + prefixes.as_array().map_or(0, Vec::len) + keys.len();
    println!("mst vectors passed: {total}");
    assert_eq!(total, 9 + 13 + 156);
}

fn cid(text: &Value) -> Cid {
    Cid::try_from(text.as_str().expect("cid string")).expect("cid parses")
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().expect("array").iter().map(|v| v.as_str().expect("string").to_string()).collect()
}

/// The four steps of the Sync 1.1 commit-proof fixtures (see the vectors' SOURCE.md).
#[test]
fn firehose_commit_proof_vectors() {
    let fixtures = json("firehose/commit-proof-fixtures.json");
    let fixtures = fixtures.as_array().expect("array");
    for fixture in fixtures {
        let name = fixture["comment"].as_str().unwrap_or("?");
        let leaf = cid(&fixture["leafValue"]);
        let (adds, dels) = (strings(&fixture["adds"]), strings(&fixture["dels"]));
        // 1. Build the tree from the keys.
        let mut store: HashMap<Cid, Vec<u8>> = HashMap::new();
        let mut tree = Mst::empty();
        for key in strings(&fixture["keys"]) {
            tree.insert(key.as_bytes(), leaf, &store).expect("insert");
        }
        let (before, blocks) = tree.root_and_new_blocks();
        store.extend(blocks);
        assert_eq!(before, cid(&fixture["rootBeforeCommit"]), "{name}: root before");
        // 2. Apply the ops on a lazily loaded copy.
        let forward = RecordingSource::new(&store);
        let mut after_tree = Mst::from_root(before);
        for key in &adds {
            after_tree.insert(key.as_bytes(), leaf, &forward).expect("add");
        }
        for key in &dels {
            assert_eq!(after_tree.remove(key.as_bytes(), &forward).expect("del"), Some(leaf));
        }
        let forward_reads: Vec<Cid> = forward.read.borrow().iter().copied().collect();
        drop(forward);
        let (after, new_blocks) = after_tree.root_and_new_blocks();
        assert_eq!(after, cid(&fixture["rootAfterCommit"]), "{name}: root after");
        store.extend(new_blocks.iter().cloned());
        // 3. The proof we would generate: new nodes, plus every existing node that the
        //    forward operations or the inversion read (what the reference includes).
        let recorder = RecordingSource::new(&store);
        let mut inverse = Mst::from_root(after);
        invert(&mut inverse, &adds, &dels, leaf, &recorder);
        assert_eq!(inverse.root_cid(), before, "{name}: inversion on the full tree");
        let mut proof: Vec<Cid> = recorder.read.borrow().iter().copied().collect();
        proof.extend(new_blocks.iter().map(|(c, _)| *c));
        proof.extend(forward_reads.iter().filter(|c| **c != before));
        for expected in fixture["blocksInProof"].as_array().expect("array") {
            assert!(proof.contains(&cid(expected)), "{name}: proof lacks {expected}");
        }
        // 4. Invert using only the fixture's proof blocks.
        let partial: HashMap<Cid, Vec<u8>> = fixture["blocksInProof"]
            .as_array()
            .expect("array")
            .iter()
            .map(|c| (cid(c), store[&cid(c)].clone()))
            .collect();
        let mut from_proof = Mst::from_root(after);
        invert(&mut from_proof, &adds, &dels, leaf, &partial);
        assert_eq!(from_proof.root_cid(), before, "{name}: inversion from proof blocks only");
    }
    println!("commit-proof vectors passed: {}", fixtures.len());
    assert_eq!(fixtures.len(), 6);
}

fn invert<S: mst::BlockSource>(tree: &mut Mst, adds: &[String], dels: &[String], leaf: Cid, store: &S) {
    for key in dels.iter().rev() {
        assert_eq!(tree.insert(key.as_bytes(), leaf, store).expect("re-insert"), None);
    }
    for key in adds.iter().rev() {
        assert_eq!(tree.remove(key.as_bytes(), store).expect("un-add"), Some(leaf));
    }
}

/// The package directory: cargo sets it at run time too, which stays right when a
/// cached test binary was built from another checkout of the same sources.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
