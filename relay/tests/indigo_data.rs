//! indigo's relay test data (tests/vectors/indigo, MIT/Apache-2.0): the seven
//! end-to-end scenarios with pass/drop verdicts, real `#commit` bodies, DID documents.

use relay::atproto::cbor;
use relay::atproto::crypto::PublicKey;
use relay::atproto::frame::Event;
use relay::identity::parse_document;
use relay::validate::scenario::Scenario;
use std::path::PathBuf;

fn path(rel: &str) -> PathBuf {
    manifest_dir().join("tests/vectors/indigo").join(rel)
}

fn run_scenario(name: &str) -> (usize, usize) {
    let bytes =
        std::fs::read(path(&format!("cmd/relay/testing/testdata/{name}.json"))).expect("scenario file");
    let scenario = Scenario::parse(&bytes).expect("scenario parses");
    let results = scenario.run().expect("scenario runs");
    assert_eq!(results.len(), scenario.messages.len());
    let mut dropped = 0;
    for result in &results {
        assert!(
            result.as_expected(),
            "{name}: message {} ({}) expected drop={:?}, got {:?}",
            result.index,
            result.kind,
            result.expected_drop,
            result.outcome
        );
        dropped += usize::from(result.dropped());
    }
    (results.len(), dropped)
}

#[test]
fn account_lifecycle() {
    assert_eq!(run_scenario("account_lifecycle"), (4, 0));
}

#[test]
fn deactivation() {
    assert_eq!(run_scenario("deactivation"), (8, 1));
}

#[test]
fn legacy() {
    assert_eq!(run_scenario("legacy"), (3, 0));
}

#[test]
fn post_lifecycle() {
    assert_eq!(run_scenario("post_lifecycle"), (6, 0));
}

#[test]
fn post_lifecycle_legacy() {
    assert_eq!(run_scenario("post_lifecycle_legacy"), (6, 0));
}

#[test]
fn rev_ordering() {
    assert_eq!(run_scenario("rev_ordering"), (4, 2));
}

#[test]
fn seq_ordering() {
    assert_eq!(run_scenario("seq_ordering"), (4, 2));
}

/// Strict mode must refuse the legacy history that lenient mode accepts.
#[test]
fn legacy_history_is_rejected_in_strict_mode() {
    let bytes = std::fs::read(path("cmd/relay/testing/testdata/post_lifecycle_legacy.json")).expect("file");
    let mut scenario = Scenario::parse(&bytes).expect("parses");
    scenario.lenient = false;
    let results = scenario.run().expect("runs");
    let commits: Vec<_> = results.iter().filter(|r| r.kind == "#commit").collect();
    assert!(!commits.is_empty());
    for result in commits {
        let reason = result.outcome.as_ref().err().map(|d| d.reason());
        assert!(matches!(reason, Some("missing_prev_data") | Some("bad_op")), "{reason:?}");
    }
}

/// A tampered commit (one byte of its signature flipped) must be dropped.
#[test]
fn tampered_signature_is_dropped() {
    let bytes = std::fs::read(path("cmd/relay/testing/testdata/post_lifecycle.json")).expect("file");
    let mut value: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    // Point the account at a different key: every commit's signature is now wrong.
    value["accounts"][0]["identity"]["keys"]["atproto"]["publicKeyMultibase"] =
        serde_json::json!("zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme");
    let scenario = Scenario::parse(&serde_json::to_vec(&value).expect("json")).expect("parses");
    for result in scenario.run().expect("runs") {
        if result.kind == "#commit" {
            assert_eq!(result.outcome.as_ref().err().map(|d| d.reason()), Some("bad_signature"));
        }
    }
}

#[test]
fn real_commit_bodies_decode() {
    let mut count = 0;
    for seq in ["4621332152", "4623075231", "4621317030", "4621317332"] {
        let bytes =
            std::fs::read(path(&format!("atproto/repo/testdata/firehose_commit_{seq}.json"))).expect("file");
        let body: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        let header = serde_json::json!({"op": 1, "t": "#commit"});
        let event = relay::atproto::frame::event_from_json(&header, &body).expect("decodes");
        let Event::Commit(commit) = event else { panic!("not a commit") };
        assert_eq!(commit.seq.to_string(), seq);
        let car = relay::atproto::car::read(&commit.blocks, 2_000_000).expect("CAR parses");
        assert_eq!(car.roots[0], commit.commit);
        let signed =
            relay::atproto::commit::SignedCommit::decode(car.get(&commit.commit).expect("commit block"))
                .expect("commit object");
        assert_eq!(signed.did, commit.repo);
        assert_eq!(signed.rev, commit.rev);
        // The re-encoded frame decodes to the same event.
        let reencoded = relay::atproto::frame::encode(&Event::Commit(commit.clone())).expect("encodes");
        assert_eq!(relay::atproto::frame::decode(&reencoded).expect("decodes"), Event::Commit(commit));
        count += 1;
    }
    assert_eq!(count, 4);
}

#[test]
fn did_documents_parse() {
    let doc = std::fs::read(path("atproto/identity/testdata/did_plc_doc.json")).expect("file");
    let identity = parse_document("did:plc:ewvi7nxzyoun6zhxrhs64oiz", &doc).expect("parses");
    assert_eq!(identity.handle.as_deref(), Some("atproto.com"));
    assert_eq!(identity.pds_endpoint.as_deref(), Some("https://bsky.social"));
    assert_eq!(identity.pds_host(), Some("bsky.social"));
    let key = identity.signing_key.expect("key");

    let legacy = std::fs::read(path("atproto/identity/testdata/did_plc_doc_legacy.json")).expect("file");
    let legacy = parse_document("did:plc:ewvi7nxzyoun6zhxrhs64oiz", &legacy).expect("legacy parses");
    assert_eq!(legacy.signing_key.as_ref(), Some(&key), "legacy and Multikey forms are the same key");
    assert_eq!(
        key,
        PublicKey::from_multikey("zQ3shXjHeiBuRCKmM36cuYnm7YEMzhGnCmCyW92sRJ9pribSF").expect("key")
    );

    let web = std::fs::read(path("atproto/identity/testdata/did_web_doc.json")).expect("file");
    let web_doc: serde_json::Value = serde_json::from_slice(&web).expect("json");
    let did = web_doc["id"].as_str().expect("id");
    let web = parse_document(did, &serde_json::to_vec(&web_doc).expect("json")).expect("parses");
    assert!(web.signing_key.is_none() && web.pds_endpoint.is_none(), "no usable atproto identity");

    assert!(parse_document("did:plc:someoneelse", &doc).is_err(), "id must equal the DID");
}

#[test]
fn feed_post_record_decodes() {
    let bytes = std::fs::read(path("atproto/atdata/testdata/feedpost_record.cbor")).expect("file");
    cbor::check(&bytes, cbor::Limits::default()).expect("strict DAG-CBOR");
    let value: ipld_core::ipld::Ipld = cbor::decode(&bytes).expect("decodes");
    cbor::validate_data_model(&value).expect("valid data model");
    assert_eq!(cbor::encode(&value).expect("encodes"), bytes, "canonical round trip");
}

/// Writes real frames, CARs and CBOR values as fuzz seeds into `$FUZZ_SEED_DIR/<target>/`.
/// Run by scripts/test.sh before the fuzz smoke run: `cargo test --test indigo_data -- --ignored`.
#[test]
#[ignore = "writes files; run explicitly with FUZZ_SEED_DIR set"]
fn write_fuzz_seeds() {
    let Ok(dir) = std::env::var("FUZZ_SEED_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    for target in ["frame_decode", "car_read", "cbor_decode", "mst_ops"] {
        std::fs::create_dir_all(dir.join(target)).expect("seed dir");
    }
    let mut written = 0;
    for name in ["post_lifecycle", "account_lifecycle", "seq_ordering"] {
        let bytes = std::fs::read(path(&format!("cmd/relay/testing/testdata/{name}.json"))).expect("file");
        let scenario = Scenario::parse(&bytes).expect("parses");
        for (index, message) in scenario.messages.iter().enumerate() {
            let Ok(event) = relay::validate::scenario::decode_message(message) else {
                continue;
            };
            let frame = relay::atproto::frame::encode(&event).expect("encodes");
            std::fs::write(dir.join(format!("frame_decode/{name}-{index}")), &frame).expect("write");
            if let Event::Commit(commit) = event {
                for target in ["car_read", "mst_ops"] {
                    std::fs::write(dir.join(format!("{target}/{name}-{index}")), &commit.blocks)
                        .expect("write");
                }
            }
            written += 1;
        }
    }
    let record = std::fs::read(path("atproto/atdata/testdata/feedpost_record.cbor")).expect("file");
    std::fs::write(dir.join("cbor_decode/feedpost"), record).expect("write");
    assert!(written > 10);
}

/// The package directory: cargo sets it at run time too, which stays right when a
/// cached test binary was built from another checkout of the same sources.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
