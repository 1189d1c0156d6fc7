//! Firehose-mode counting throughput, one core: `cargo bench -p relay --bench coverage`.
//!
//! Records a realistic stream first (accounts with repos of a few hundred records, commits of
//! 1–3 ops with real MST proofs and signatures, plus `#identity`/`#account` events at about
//! the network's share), then times, over the recorded frames on one thread: the counting
//! decoder alone, the firehose mode's whole per-frame work (decode + the relay's DID and
//! commit sets), and for comparison the full frame decoder; once over the whole recording
//! (frames come from memory) and once over a few frames that stay in cache (as a frame just
//! read from a socket does). Prints a table.
//! Environment: BENCH_ACCOUNTS (default 100), BENCH_RECORDS (records per account before the
//! stream, default 300), BENCH_FRAMES (default 20000), BENCH_PASSES (default 10).

use relay::atproto::crypto::{Curve, SigningKey};
use relay::atproto::frame::{self, Account, Event, IdentityEvent};
use relay::atproto::repo::{sample_post, Repo, Write};
use relay::coverage::firehose::{Phase, Tally};
use std::time::Instant;

// The relay binary runs on mimalloc; measure with the same allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NOW: u64 = 1_750_000_000_000_000;
/// One frame in this many is an `#identity` or `#account` (the rest are commits).
const ACCOUNT_EVENT_EVERY: usize = 40;
/// Frames of the in-cache measurement (about 1 MB).
const HOT_FRAMES: usize = 256;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn did(i: usize) -> String {
    format!("did:plc:bench{i:019}")
}

fn seeded_repo(index: usize, records: usize, clock: &mut u64) -> Repo {
    let curve = if index % 2 == 0 { Curve::K256 } else { Curve::P256 };
    let mut repo = Repo::new(&did(index), SigningKey::from_seed(curve, did(index).as_bytes()));
    for chunk in 0..records.div_ceil(200) {
        let writes: Vec<Write> = (0..200.min(records - chunk * 200))
            .map(|_| {
                *clock += 1;
                Write::Create {
                    path: format!("app.bsky.feed.post/{}", relay::atproto::syntax::tid_from_parts(*clock, 3)),
                    record: sample_post("seed", "2025-01-01T00:00:00.000Z"),
                }
            })
            .collect();
        repo.commit(&writes, 0, *clock).expect("seed commit");
    }
    repo
}

fn record_stream(accounts: usize, records: usize, frames: usize) -> Vec<Vec<u8>> {
    let mut clock = NOW;
    let mut repos: Vec<Repo> = (0..accounts).map(|i| seeded_repo(i, records, &mut clock)).collect();
    let mut out = Vec::with_capacity(frames);
    for n in 0..frames {
        clock += 1_000;
        let index = (n * 7919) % accounts;
        let event = if n % ACCOUNT_EVENT_EVERY == 0 {
            identity_or_account(n, index)
        } else {
            let ops = 1 + n % 3;
            let writes: Vec<Write> = (0..ops)
                .map(|op| Write::Create {
                    path: format!(
                        "app.bsky.feed.like/{}",
                        relay::atproto::syntax::tid_from_parts(clock + op as u64, 5)
                    ),
                    record: sample_post("a like, roughly", "2025-06-01T12:00:00.000Z"),
                })
                .collect();
            Event::Commit(repos[index].commit(&writes, n as i64 + 1, clock).expect("commit"))
        };
        let mut event = event;
        event.set_seq(n as i64 + 1);
        out.push(frame::encode(&event).expect("encode"));
    }
    out
}

fn identity_or_account(n: usize, index: usize) -> Event {
    let time = "2025-06-01T12:00:00.000Z".to_string();
    if n % (2 * ACCOUNT_EVENT_EVERY) == 0 {
        Event::Identity(IdentityEvent {
            seq: 0,
            did: did(index),
            time,
            handle: Some(format!("u{index}.test")),
        })
    } else {
        Event::Account(Account { seq: 0, did: did(index), time, active: true, status: None })
    }
}

/// Runs `work` over every frame `passes` times; returns events per second.
fn measure(frames: &[Vec<u8>], passes: usize, mut work: impl FnMut(&[u8], usize)) -> f64 {
    let started = Instant::now();
    for pass in 0..passes {
        for frame in frames {
            work(frame, pass);
        }
    }
    (frames.len() * passes) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let accounts = env_usize("BENCH_ACCOUNTS", 100);
    let records = env_usize("BENCH_RECORDS", 300);
    let frame_count = env_usize("BENCH_FRAMES", 20_000);
    let passes = env_usize("BENCH_PASSES", 10);
    let started = Instant::now();
    let frames = record_stream(accounts, records, frame_count);
    let bytes: usize = frames.iter().map(Vec::len).sum();
    println!(
        "recorded {} frames ({:.2} KB average, {accounts} accounts of ~{records} records) in {:.1}s",
        frames.len(),
        bytes as f64 / frames.len() as f64 / 1000.0,
        started.elapsed().as_secs_f64()
    );

    // Cold: the whole recording, far larger than the caches (each frame is read from memory,
    // as a burst of network frames is). Hot: a few frames over and over (a frame just read
    // from the socket is in cache).
    let hot = &frames[..HOT_FRAMES.min(frames.len())];
    let hot_passes = passes * frames.len() / hot.len();
    let mut sink = 0u64;
    let mut rows = Vec::new();
    for (set, passes) in [(&frames[..], passes), (hot, hot_passes)] {
        let light = measure(set, passes, |frame, _| {
            if let Ok(summary) = relay::coverage::wire::summarize(frame) {
                sink = sink.wrapping_add(summary.seq.unwrap_or(0) as u64);
            }
        });
        let counting = if set.len() == frames.len() {
            count_with_fresh_tallies(set, passes)
        } else {
            count_into_full_tally(set, passes, &frames)
        };
        let full = measure(set, passes.div_ceil(5).max(1), |frame, _| {
            if let Ok(event) = frame::decode(frame) {
                sink = sink.wrapping_add(event.seq().unwrap_or(0) as u64);
            }
        });
        rows.push([light, counting, full]);
    }

    println!();
    println!(
        "| work per frame, one core | events/s, frames from memory | events/s, {} frames in cache |",
        hot.len()
    );
    println!("|---|---:|---:|");
    let names = [
        "counting decoder (`coverage::wire::summarize`)",
        "firehose mode: decode + DID and commit sets (`Tally::observe`)",
        "full frame decode (`atproto::frame::decode`), for comparison",
    ];
    for (i, name) in names.iter().enumerate() {
        let (cold, warm) = (rows[0][i], rows[1][i]);
        println!(
            "| {name} | {} ({:.0} ns) | {} ({:.0} ns) |",
            thousands(cold as u64),
            1e9 / cold,
            thousands(warm as u64),
            1e9 / warm
        );
    }
    println!();
    println!("(checksum {sink})");
}

/// The firehose mode's per-frame work, with a fresh tally per pass: every pass inserts every
/// DID and commit anew, as a live window does.
fn count_with_fresh_tallies(frames: &[Vec<u8>], passes: usize) -> f64 {
    let mut tallies: Vec<Tally> = (0..passes).map(|_| Tally::new(2_000_000, 0)).collect();
    let rate = measure(frames, passes, |frame, pass| tallies[pass].observe(frame, Phase::Window));
    let counted: u64 = tallies.iter().map(Tally::events_in_window).sum();
    assert_eq!(counted as usize, frames.len() * passes, "every frame is counted");
    rate
}

/// The same work on frames in cache, into one tally already holding the whole recording (so
/// its sets are as large as in the cold case; the hot frames' keys are found, not inserted).
fn count_into_full_tally(frames: &[Vec<u8>], passes: usize, all: &[Vec<u8>]) -> f64 {
    let mut tally = Tally::new(2_000_000, 0);
    all.iter().for_each(|frame| tally.observe(frame, Phase::Window));
    measure(frames, passes, |frame, _| tally.observe(frame, Phase::Window))
}

fn thousands(n: u64) -> String {
    relay::coverage::report::thousands(n)
}
