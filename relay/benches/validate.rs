//! Commit validation throughput, one core: `cargo bench -p relay --bench validate`.
//!
//! Builds a repository of realistic size with real signed commits (1–3 ops each:
//! creates, updates and deletes of small posts), then times the whole verdict —
//! CAR parse and hash checks, commit decode, signature, MST lookups and inversion
//! against prevData — and its parts, for k256 and p256 keys. Prints a table.
//! Environment: BENCH_RECORDS (existing records, default 10000), BENCH_COMMITS
//! (commits per curve, default 20000).

use relay::atproto::car;
use relay::atproto::commit::SignedCommit;
use relay::atproto::crypto::{Curve, SigningKey};
use relay::atproto::frame::{Commit, Event};
use relay::atproto::repo::{sample_post, Repo, Write};
use relay::identity::Identity;
use relay::validate::{verify_event, AccountView, Policy};
use std::time::Instant;

// The relay binary runs on mimalloc; measure with the same allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NOW: u64 = 1_750_000_000_000_000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Small deterministic PRNG (xorshift) so runs are comparable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn build_commits(curve: Curve, records: usize, commits: usize) -> (Repo, Vec<Commit>) {
    let mut repo = Repo::new("did:plc:benchaccount00000000000", SigningKey::from_seed(curve, b"bench"));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut live: Vec<String> = Vec::new();
    let mut next_id = 0u64;
    let mut new_path = |rng: &mut Rng| {
        next_id += 1;
        let collection =
            ["app.bsky.feed.post", "app.bsky.feed.like", "app.bsky.graph.follow"][(rng.next() % 3) as usize];
        format!("{collection}/{}", relay::atproto::syntax::tid_from_parts(NOW - 1_000_000_000 + next_id, 7))
    };
    // Seed the repo in large commits (not measured).
    for chunk in 0..records.div_ceil(200) {
        let writes: Vec<Write> = (0..200.min(records - chunk * 200))
            .map(|i| {
                let path = new_path(&mut rng);
                live.push(path.clone());
                Write::Create {
                    path,
                    record: sample_post(&format!("seed {chunk} {i}"), "2025-01-01T00:00:00.000Z"),
                }
            })
            .collect();
        repo.commit(&writes, 0, NOW).expect("seed commit");
    }
    let mut out = Vec::with_capacity(commits);
    for n in 0..commits {
        let ops = 1 + (rng.next() % 3) as usize;
        let mut writes = Vec::with_capacity(ops);
        for _ in 0..ops {
            let roll = rng.next() % 10;
            let record =
                sample_post(&format!("commit {n} with a sentence of text"), "2025-06-01T12:00:00.000Z");
            if roll < 6 || live.len() < 10 {
                let path = new_path(&mut rng);
                live.push(path.clone());
                writes.push(Write::Create { path, record });
            } else {
                let index = (rng.next() as usize) % live.len();
                let path = live.swap_remove(index);
                if writes.iter().any(|w: &Write| w.path() == path) {
                    continue;
                }
                if roll < 8 {
                    writes.push(Write::Delete { path });
                } else {
                    live.push(path.clone());
                    writes.push(Write::Update { path, record });
                }
            }
        }
        out.push(repo.commit(&writes, n as i64 + 1, NOW + n as u64).expect("commit"));
    }
    (repo, out)
}

fn rate(count: usize, start: Instant) -> f64 {
    count as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let records = env_usize("BENCH_RECORDS", 10_000);
    let commits = env_usize("BENCH_COMMITS", 20_000);
    println!(
        "commit validation, one thread; repo of {records} records, {commits} commits of 1-3 ops per curve"
    );
    println!();
    println!("| curve | full verdict (commits/s) | µs/commit | signature only (/s) | verdict minus signature (/s) | avg CAR bytes |");
    println!("|---|---:|---:|---:|---:|---:|");
    let only = std::env::var("BENCH_CURVE").unwrap_or_default().to_ascii_lowercase();
    for curve in [Curve::K256, Curve::P256] {
        if !only.is_empty() && format!("{curve:?}").to_ascii_lowercase() != only {
            continue;
        }
        let (repo, events) = build_commits(curve, records, commits);
        let identity = Identity::new(
            repo.did.clone(),
            None,
            Some(repo.key.public_key()),
            Some("https://pds.example.com".into()),
        );
        let view = AccountView {
            identity: Some(&identity),
            active: true,
            source_host: Some("pds.example.com"),
            known_on_source: false,
        };
        let policy = Policy::default();
        let events: Vec<Event> = events.into_iter().map(Event::Commit).collect();
        let car_bytes: usize =
            events.iter().map(|e| if let Event::Commit(c) = e { c.blocks.len() } else { 0 }).sum();

        // Warm up, and make sure every commit is valid: the bench measures acceptance.
        for event in events.iter().take(500) {
            verify_event(event, &view, None, &policy, NOW + 10_000_000_000).expect("honest commit validates");
        }
        let repeat = env_usize("BENCH_REPEAT", 1).max(1);
        let start = Instant::now();
        for _ in 0..repeat {
            for event in &events {
                verify_event(event, &view, None, &policy, NOW + 10_000_000_000)
                    .expect("honest commit validates");
            }
        }
        let full = rate(events.len() * repeat, start);

        let signed: Vec<SignedCommit> = events
            .iter()
            .map(|e| {
                let Event::Commit(c) = e else { unreachable!() };
                let parsed = car::read(&c.blocks, 2_000_000).expect("car");
                SignedCommit::decode(parsed.get(&c.commit).expect("commit block")).expect("decode")
            })
            .collect();
        let key = repo.key.public_key();
        let start = Instant::now();
        for commit in &signed {
            commit.verify(&key).expect("signature");
        }
        let signature = rate(signed.len(), start);
        let rest = 1.0 / (1.0 / full - 1.0 / signature);
        let start = Instant::now();
        for event in &events {
            let Event::Commit(c) = event else { unreachable!() };
            std::hint::black_box(car::read(&c.blocks, 2_000_000).expect("car"));
        }
        let car_rate = rate(events.len(), start);
        let start = Instant::now();
        for (event, commit) in events.iter().zip(&signed) {
            let Event::Commit(c) = event else { unreachable!() };
            let parsed = car::read(&c.blocks, 2_000_000).expect("car");
            let mut tree = relay::atproto::mst::Mst::from_root(commit.data);
            for op in &c.ops {
                tree.get(op.path.as_bytes(), &parsed).expect("get");
            }
            for op in c.ops.iter().rev() {
                match op.prev {
                    None => tree.remove(op.path.as_bytes(), &parsed).map(|_| ()),
                    Some(prev) => tree.insert(op.path.as_bytes(), prev, &parsed).map(|_| ()),
                }
                .expect("invert");
            }
            assert_eq!(Some(tree.root_cid()), c.prev_data);
        }
        let mst_rate = rate(events.len(), start);
        eprintln!("{curve:?}: CAR parse+hash {car_rate:.0}/s, CAR+MST check+inversion {mst_rate:.0}/s");
        println!(
            "| {curve:?} | {full:.0} | {:.1} | {signature:.0} | {rest:.0} | {} |",
            1e6 / full,
            car_bytes / events.len()
        );
    }
}
