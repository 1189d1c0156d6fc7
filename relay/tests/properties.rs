//! Property tests: random repos are built, changed, diffed and inverted; frames and
//! CARs round-trip; the verdict accepts honest commits and refuses damaged ones.

use proptest::prelude::*;
use relay::atproto::car;
use relay::atproto::cbor;
use relay::atproto::crypto::{Curve, SigningKey};
use relay::atproto::frame::{self, Account, Event, IdentityEvent};
use relay::atproto::mst::{Mst, NoBlocks, RecordingSource};
use relay::atproto::repo::{sample_post, Repo, Write};
use relay::identity::Identity;
use relay::validate::{verify_event, AccountView, Policy, RepoState};
use std::collections::BTreeMap;

const NOW: u64 = 1_750_000_000_000_000;

fn key_strategy() -> impl Strategy<Value = String> {
    (0u8..3, 0u32..5000).prop_map(|(c, n)| format!("com.example.c{c}/{n:05}"))
}

fn build(keys: &[String]) -> Mst {
    let value = cbor::cid_for_cbor(&cbor::encode(&1u8).expect("encode"));
    let mut tree = Mst::empty();
    for key in keys {
        tree.insert(key.as_bytes(), value, &NoBlocks).expect("insert");
    }
    tree
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The MST is canonical: the root depends on the key set, not the insertion order,
    /// and removing keys gives the tree built without them.
    #[test]
    fn mst_is_canonical(keys in prop::collection::btree_set(key_strategy(), 0..300), seed in any::<u64>()) {
        let sorted: Vec<String> = keys.iter().cloned().collect();
        let mut shuffled = sorted.clone();
        let mut state = seed | 1;
        for i in (1..shuffled.len()).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            shuffled.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let root = build(&sorted).root_cid();
        prop_assert_eq!(build(&shuffled).root_cid(), root);
        let (kept, removed): (Vec<String>, Vec<String>) =
            sorted.iter().cloned().partition(|k| k.len() % 2 == 0 || k.ends_with('7'));
        let mut tree = build(&sorted);
        for key in &removed {
            prop_assert!(tree.remove(key.as_bytes(), &NoBlocks).expect("remove").is_some());
        }
        prop_assert_eq!(tree.root_cid(), build(&kept).root_cid());
        let mut all = build(&sorted);
        let entries = all.entries(&NoBlocks).expect("entries");
        prop_assert_eq!(entries.into_iter().map(|(k, _)| String::from_utf8(k).expect("utf8")).collect::<Vec<_>>(), sorted);
    }

    /// Honest commits from a random history validate, one after another, with no chain break;
    /// removing any MST node from a commit's CAR makes it fail.
    #[test]
    fn random_histories_validate(
        steps in prop::collection::vec(prop::collection::vec((0u8..3, 0u32..40), 1..4), 1..12),
        p256 in any::<bool>(),
    ) {
        let curve = if p256 { Curve::P256 } else { Curve::K256 };
        let key = SigningKey::from_seed(curve, b"prop");
        let did = "did:plc:proptestaccount0000000";
        let mut repo = Repo::new(did, key);
        let identity =
            Identity::new(did.into(), None, Some(repo.key.public_key()), Some("https://pds.example".into()));
        let view = AccountView { identity: Some(&identity), active: true, source_host: Some("pds.example"), known_on_source: false };
        let policy = Policy::default();
        let mut present: BTreeMap<String, u32> = BTreeMap::new();
        let mut last: Option<RepoState> = None;
        for (seq, step) in steps.into_iter().enumerate() {
            let mut writes = Vec::new();
            let mut touched = std::collections::HashSet::new();
            for (kind, n) in step {
                let path = format!("app.bsky.feed.post/{n:04}");
                if !touched.insert(path.clone()) { continue; }
                let record = sample_post(&format!("post {n} {seq}"), "2025-01-01T00:00:00.000Z");
                match (kind, present.contains_key(&path)) {
                    (_, false) => { present.insert(path.clone(), n); writes.push(Write::Create { path, record }); }
                    (0, true) => { present.remove(&path); writes.push(Write::Delete { path }); }
                    (_, true) => writes.push(Write::Update { path, record }),
                }
            }
            let commit = repo.commit(&writes, seq as i64 + 1, NOW + seq as u64).expect("commit");
            let event = Event::Commit(commit.clone());
            let accepted = verify_event(&event, &view, last.as_ref(), &policy, NOW + 1_000_000)
                .map_err(|e| TestCaseError::fail(format!("honest commit rejected: {e}")))?;
            prop_assert_eq!(accepted.chain_break, None);
            // Damage: drop, one at a time, each block that inverting the commit needs.
            let parsed = car::read(&commit.blocks, 2_000_000).expect("car");
            let needed = blocks_needed(&parsed, &commit);
            prop_assert!(!needed.is_empty());
            for cid in needed.iter().chain([&commit.commit]) {
                let kept = parsed.blocks.iter().filter(|(c, _)| *c != cid).map(|(c, b)| (c, *b));
                let mut damaged = commit.clone();
                damaged.blocks = car::write(&parsed.roots, kept);
                let verdict = verify_event(&Event::Commit(damaged), &view, last.as_ref(), &policy, NOW + 1_000_000);
                prop_assert!(verdict.is_err(), "commit without node {} accepted", cid);
            }
            last = accepted.new_state;
        }
    }

    /// Frames survive encode → decode unchanged.
    #[test]
    fn frames_round_trip(seq in 1i64..(1 << 53), active in any::<bool>(), handle in "[a-z]{1,10}\\.test", status in prop::option::of("[a-z]{4,12}")) {
        let events = vec![
            Event::Identity(IdentityEvent { seq, did: "did:plc:abc".into(), time: "2025-01-01T00:00:00.000Z".into(), handle: Some(handle) }),
            Event::Account(Account { seq, did: "did:plc:abc".into(), time: "2025-01-01T00:00:00.000Z".into(), active, status }),
        ];
        for event in events {
            let bytes = frame::encode(&event).expect("encode");
            prop_assert_eq!(frame::decode(&bytes).expect("decode"), event);
        }
    }

    /// CARs survive write → read; any truncation is an error, never a panic.
    #[test]
    fn car_round_trip(payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..8), cut in any::<prop::sample::Index>()) {
        let blocks: Vec<_> = payloads.iter().map(|p| {
            let bytes = cbor::encode(&serde_bytes::Bytes::new(p)).expect("encode");
            (cbor::cid_for_cbor(&bytes), bytes)
        }).collect();
        let roots = [blocks[0].0];
        let bytes = car::write(&roots, blocks.iter().map(|(c, b)| (c, b.as_slice())));
        let parsed = car::read(&bytes, 1 << 20).expect("read");
        prop_assert_eq!(&parsed.roots, &roots.to_vec());
        for (cid, data) in &blocks {
            prop_assert_eq!(parsed.get(cid), Some(data.as_slice()));
        }
        let at = cut.index(bytes.len());
        if at > 0 {
            let _ = car::read(&bytes[..at], 1 << 20);
        }
    }

    /// The strict CBOR checker and the frame decoder never panic on arbitrary input.
    #[test]
    fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = cbor::check(&bytes, cbor::Limits::default());
        let _ = frame::decode(&bytes);
        let _ = car::read(&bytes, 1 << 20);
    }
}

/// The blocks a validator reads to check and invert `commit`.
fn blocks_needed(parsed: &car::Car, commit: &relay::atproto::frame::Commit) -> Vec<cid::Cid> {
    let signed = relay::atproto::commit::SignedCommit::decode(parsed.get(&commit.commit).expect("commit"))
        .expect("commit object");
    let recorder = RecordingSource::new(parsed);
    let mut tree = Mst::from_root(signed.data);
    for op in &commit.ops {
        tree.get(op.path.as_bytes(), &recorder).expect("get");
    }
    for op in commit.ops.iter().rev() {
        match op.prev {
            None => {
                tree.remove(op.path.as_bytes(), &recorder).expect("remove");
            }
            Some(prev) => {
                tree.insert(op.path.as_bytes(), prev, &recorder).expect("insert");
            }
        }
    }
    let read = recorder.read.borrow();
    read.iter().copied().collect()
}

/// A #sync event from an honest repo validates; one for an older rev is refused.
#[test]
fn sync_events() {
    let mut repo = Repo::new("did:plc:syncaccount", SigningKey::from_seed(Curve::K256, b"sync"));
    let identity = identity_of(&repo);
    let view =
        AccountView { identity: Some(&identity), active: true, source_host: None, known_on_source: false };
    let writes = [Write::Create { path: "app.bsky.feed.post/a".into(), record: sample_post("a", "x") }];
    let commit = repo.commit(&writes, 1, NOW).expect("commit");
    let first = verify_event(&Event::Commit(commit), &view, None, &Policy::default(), NOW).expect("valid");
    let sync = repo.sync_event(2, NOW + 10);
    let state = first.new_state.expect("state");
    let accepted =
        verify_event(&Event::Sync(sync.clone()), &view, Some(&state), &Policy::default(), NOW + 10)
            .expect("sync accepted");
    let newer = accepted.new_state.expect("state");
    let replay = verify_event(&Event::Sync(sync), &view, Some(&newer), &Policy::default(), NOW + 10);
    assert_eq!(replay.err().map(|e| e.reason()), Some("rev_not_newer"));
}

/// A new repo's first commit carries no prevData (nothing to invert to): it is accepted
/// when the relay knows nothing of the repo and it has no `since`; the same commit
/// without prevData is refused once the relay has state for the repo, or with a `since`.
#[test]
fn genesis_commit_without_prev_data() {
    let mut repo = Repo::new("did:plc:genesisaccount", SigningKey::from_seed(Curve::K256, b"genesis"));
    let identity = identity_of(&repo);
    let view =
        AccountView { identity: Some(&identity), active: true, source_host: None, known_on_source: false };
    let mut genesis = repo.commit(&[], 1, NOW).expect("empty first commit");
    genesis.prev_data = None;
    genesis.since = None;
    let accepted = verify_event(&Event::Commit(genesis.clone()), &view, None, &Policy::default(), NOW)
        .expect("a first commit without prevData is accepted");
    let state = accepted.new_state.expect("state");

    let mut later = genesis.clone();
    later.since = Some("2222222222222".into());
    let refused = verify_event(&Event::Commit(later), &view, None, &Policy::default(), NOW);
    assert_eq!(refused.err().map(|e| e.reason()), Some("missing_prev_data"));

    let writes = [Write::Create { path: "app.bsky.feed.post/b".into(), record: sample_post("b", "x") }];
    let mut next = repo.commit(&writes, 2, NOW + 10).expect("commit");
    next.prev_data = None;
    next.since = None;
    let refused = verify_event(&Event::Commit(next), &view, Some(&state), &Policy::default(), NOW + 10);
    assert_eq!(refused.err().map(|e| e.reason()), Some("missing_prev_data"));
}

/// The identity a repo's own key signs for (no handle, no PDS: host authority is not under test).
fn identity_of(repo: &Repo) -> Identity {
    Identity::new(repo.did.clone(), None, Some(repo.key.public_key()), None)
}

/// A writer that runs for thousands of commits holds its repo, not its history: replaced
/// nodes and deleted records are dropped, every commit still validates against the last
/// (so compaction never removes a block a proof or the next commit needs), and the records
/// left are exactly the ones written and not deleted.
#[test]
fn long_running_writer_keeps_only_its_current_repo() {
    let mut repo = Repo::new("did:plc:longwriter", SigningKey::from_seed(Curve::K256, b"long"));
    let identity = identity_of(&repo);
    let view =
        AccountView { identity: Some(&identity), active: true, source_host: None, known_on_source: false };
    let mut rng = fastrand::Rng::with_seed(11);
    let mut present: Vec<String> = Vec::new();
    let mut last: Option<RepoState> = None;
    let mut most_blocks = 0;
    for step in 0..3_000u64 {
        let write = if present.len() >= 60 || (!present.is_empty() && rng.u8(..10) < 3) {
            Write::Delete { path: present.swap_remove(rng.usize(..present.len())) }
        } else {
            let path = format!("app.bsky.feed.post/{step:08}");
            present.push(path.clone());
            Write::Create { path, record: sample_post(&format!("post {step}"), "2025-01-01T00:00:00.000Z") }
        };
        let commit = repo.commit(&[write], step as i64 + 1, NOW + step).expect("commit");
        let accepted =
            verify_event(&Event::Commit(commit), &view, last.as_ref(), &Policy::default(), NOW + step)
                .unwrap_or_else(|e| panic!("commit {step} rejected: {e}"));
        last = accepted.new_state;
        most_blocks = most_blocks.max(repo.stored_blocks());
    }
    // 60 records and their nodes are under 150 blocks; without compaction 3,000 commits
    // leave several thousand.
    assert!(most_blocks < 400, "the repo held {most_blocks} blocks at its largest");
    present.sort();
    let collections = repo.collections().expect("collections");
    assert_eq!(collections, vec!["app.bsky.feed.post".to_string()]);
    for path in &present {
        assert!(repo.get(path).expect("get").is_some(), "{path} lost");
    }
}
