//! A full disk under the event log: intake stops (no upstream cursor moves past an event
//! that is not written), health says why, the relay resumes by itself when space returns,
//! and no commit is missing afterwards. A restart on a full disk refuses with a clear
//! message instead of aborting. The log lives on a small tmpfs mounted for the test
//! (needs root, as CI runs; elsewhere the test says it skipped).

mod common;

use common::{start_relay, stop_relay, wait_connected, wait_for};
use futures_util::StreamExt;
use relay::atproto::frame::{self, Event};
use relay::simulate::{SimulateConfig, Simulation};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// A tmpfs mounted for the test's lifetime.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    fn mount(path: &Path, bytes: u64) -> Option<SmallDisk> {
        std::fs::create_dir_all(path).ok()?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(path)
            .status()
            .ok()?;
        status.success().then(|| SmallDisk { path: path.to_path_buf() })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazy: files the relay still holds open must not keep the mount (or fail the test).
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Fills the filesystem at `dir` until only about `leave` bytes are free.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    let free = relay::disk::free_bytes(dir).expect("statvfs");
    let filler = dir.join("filler");
    let size = free.saturating_sub(leave) as usize;
    std::fs::write(&filler, vec![0u8; size]).expect("filler");
    filler
}

fn sim_config() -> SimulateConfig {
    SimulateConfig { seed: 21, ..SimulateConfig::loopback(2, 3) }
}

/// Every event from cursor 0 (the whole log), read until `quiet` passes without one.
async fn read_log(firehose: &str, quiet: Duration) -> Vec<Event> {
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("{firehose}?cursor=0")).await.expect("connect");
    let mut events = Vec::new();
    while let Ok(Some(Ok(message))) = tokio::time::timeout(quiet, socket.next()).await {
        if let Message::Binary(bytes) = message {
            events.push(frame::decode(&bytes).expect("decode"));
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_log_disk_stops_intake_reports_it_and_loses_nothing() {
    let dir = std::env::temp_dir().join(format!("relay-diskfull-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let log_dir = dir.join("log");
    let Some(disk) = SmallDisk::mount(&log_dir, 4 << 20) else {
        assert!(std::env::var("CI").is_err(), "CI runs as root and must be able to mount a tmpfs");
        eprintln!("cannot mount a tmpfs (not root?): skipping the disk-full test");
        return;
    };
    let sim = Simulation::start(sim_config()).await.expect("simulator");
    let mut config = common::relay_config(&dir, sim.plc_url());
    config.admin_tokens = vec!["test-token".into()];
    config.persist_dir = Some(log_dir.clone());
    config.log_segment_bytes = 64 << 10;
    config.min_free_disk_bytes = 64 << 10;
    config.collections_disabled = true;
    let running = start_relay(config.clone()).await;
    let relay = running.relay.clone();
    sim.register_with_relay(&format!("http://{}", running.internal), "test-token").await.expect("crawl");
    wait_connected(&relay, 2).await;
    let firehose = format!("ws://{}/xrpc/com.atproto.sync.subscribeRepos", running.public);
    sim.create_accounts();
    wait_for("account creation", Duration::from_secs(20), || relay.sequencer.current_head() >= 18).await;

    let filler = fill(&log_dir, 96 << 10);
    let mut rng = fastrand::Rng::with_seed(9);
    let mut commits = 0;
    while relay.sequencer.write_failure().is_none() {
        assert!(commits < 5_000, "the log never filled up");
        for _ in 0..20 {
            sim.step(&mut rng);
            commits += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // While the disk is full: health fails with the reason, and more commits arrive.
    let health = reqwest::get(format!("http://{}/_health", running.internal)).await.expect("health");
    assert_eq!(health.status().as_u16(), 503);
    let body: serde_json::Value = health.json().await.expect("json");
    assert!(body["msg"].as_str().unwrap_or("").contains("event log write failed"), "{body}");
    assert_eq!(relay.metrics.intake_stopped.get(), 1);
    let head_while_full = relay.sequencer.current_head();
    for _ in 0..200 {
        sim.step(&mut rng);
        commits += 1;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(relay.sequencer.current_head(), head_while_full, "nothing is sequenced while the log is full");

    // Space returns: the relay resumes by itself and every commit arrives, none twice.
    std::fs::remove_file(&filler).expect("free space");
    wait_for("intake to resume", Duration::from_secs(20), || relay.sequencer.write_failure().is_none()).await;
    let total = 18 + commits;
    wait_for("every commit", Duration::from_secs(60), || relay.sequencer.current_head() as usize >= total)
        .await;
    assert_eq!(relay.metrics.intake_stopped.get(), 0);
    let health = reqwest::get(format!("http://{}/_health", running.internal)).await.expect("health");
    assert_eq!(health.status().as_u16(), 200);
    let events = read_log(&firehose, Duration::from_secs(2)).await;
    assert_eq!(events.len(), total, "the log holds every event exactly once");
    let seqs: Vec<i64> = events.iter().filter_map(Event::seq).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "no seq gap");
    // Each account's chain is unbroken: every commit's `since` is the previous rev.
    let mut last_rev: HashMap<String, String> = HashMap::new();
    for event in &events {
        match event {
            Event::Sync(sync) => {
                last_rev.insert(sync.did.clone(), sync.rev.clone());
            }
            Event::Commit(commit) => {
                let previous = last_rev.insert(commit.repo.clone(), commit.rev.clone());
                assert_eq!(commit.since, previous, "gap in {}'s chain", commit.repo);
            }
            _ => {}
        }
    }
    assert_eq!(relay.metrics.chain_breaks.get(), 0);
    assert!(relay.metrics.log_write_failures.get() > 0);
    stop_relay(running).await;

    // A restart with the disk full refuses with a clear message (and does not abort).
    let _filler = fill(&log_dir, 0);
    let refused = relay::wiring::start(config).await.err().expect("a full disk refuses to start");
    let message = format!("{refused:#}");
    assert!(message.contains("RELAY_MIN_FREE_DISK_BYTES"), "{message}");
    drop(disk);
    let _ = std::fs::remove_dir_all(&dir);
}
