//! Crash test: the relay binary is killed with SIGKILL at random moments while a
//! simulated fleet writes, and restarted. A consumer that reconnects with its last
//! cursor must see every relay seq exactly once, and every commit the fleet made must
//! arrive exactly once in the end (host cursors resume where the log ended).

use futures_util::StreamExt;
use relay::atproto::frame::{self, Event};
use relay::simulate::{SimulateConfig, Simulation};
use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn spawn_relay(dir: &std::path::Path, plc: &str, public: u16, internal: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["serve", "--allow-insecure-hosts", "--upstream", ""])
        .arg("--data-dir")
        .arg(dir)
        .args([
            "--bind",
            &format!("127.0.0.1:{public}"),
            "--metrics-listen",
            &format!("127.0.0.1:{internal}"),
        ])
        .args([
            "--plc-host",
            plc,
            "--admin-password",
            "crash-token",
            "--max-backoff",
            "1s",
            "--host-events-per-second",
            "100000",
        ])
        .env("RELAY_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("relay binary starts")
}

async fn wait_healthy(internal: u16) {
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        if let Ok(response) = reqwest::get(format!("http://127.0.0.1:{internal}/_health")).await {
            if response.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("relay did not become healthy");
}

#[derive(Default)]
struct Seen {
    last_seq: i64,
    seqs: Vec<i64>,
    commits: Vec<String>,
}

/// Reads until the connection drops or `until`; records seqs and commit CIDs.
async fn consume_from(port: u16, seen: &mut Seen, until: Instant) {
    let url = format!("ws://127.0.0.1:{port}/xrpc/com.atproto.sync.subscribeRepos?cursor={}", seen.last_seq);
    let Ok((mut socket, _)) = tokio_tungstenite::connect_async(url).await else { return };
    while Instant::now() < until {
        match tokio::time::timeout(Duration::from_millis(300), socket.next()).await {
            Ok(Some(Ok(Message::Binary(bytes)))) => {
                let event = frame::decode(&bytes).expect("frames decode");
                if let Some(seq) = event.seq() {
                    seen.seqs.push(seq);
                    seen.last_seq = seq;
                }
                if let Event::Commit(commit) = event {
                    seen.commits.push(commit.commit.to_string());
                }
            }
            Ok(Some(Ok(_))) | Err(_) => {}
            Ok(Some(Err(_))) | Ok(None) => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_under_load_loses_and_repeats_nothing() {
    let dir = std::env::temp_dir().join(format!("relay-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let sim = Simulation::start(SimulateConfig {
        hosts: 2,
        accounts_per_host: 3,
        rate: 100.0,
        max_commits: 0,
        bind: "127.0.0.1".into(),
        relay_admin_url: None,
        relay_admin_token: None,
        hostile: vec![],
        seed: 5,
        backlog_on_connect: false,
        history_events: 0,
        advertise_name: None,
    })
    .await
    .expect("simulator");
    let (public, internal) = (free_port(), free_port());
    let mut child = spawn_relay(&dir, &sim.plc_url(), public, internal);
    wait_healthy(internal).await;
    sim.register_with_relay(&format!("http://127.0.0.1:{internal}"), "crash-token").await.expect("crawl");
    tokio::time::sleep(Duration::from_millis(500)).await;
    sim.create_accounts();

    // The fleet writes continuously in the background.
    let writer = {
        let sim = sim.clone();
        tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(9);
            for _ in 0..300 {
                sim.step(&mut rng);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let mut seen = Seen::default();
    let mut rng = fastrand::Rng::with_seed(21);
    for round in 0..4 {
        // The first kill comes early, before a periodic (1 s) cursor save would have run: a
        // relay that restarts without a saved cursor subscribes live-only and loses what the
        // hosts sent meanwhile (a bug this caught).
        let run_for = Duration::from_millis(if round == 0 { 150 } else { 300 + rng.u64(..900) });
        consume_from(public, &mut seen, Instant::now() + run_for).await;
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        child = spawn_relay(&dir, &sim.plc_url(), public, internal);
        wait_healthy(internal).await;
    }
    writer.await.expect("writer");
    // Let the restarted relay catch up with the hosts, then drain the firehose.
    let until = Instant::now() + Duration::from_secs(20);
    let total_commits = sim.commits.load(std::sync::atomic::Ordering::Relaxed) as usize;
    while Instant::now() < until && seen.commits.len() < total_commits {
        consume_from(public, &mut seen, Instant::now() + Duration::from_secs(2)).await;
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();

    assert!(
        seen.seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "every seq exactly once, in order: {:?}",
        seen.seqs
    );
    let unique: HashSet<&String> = seen.commits.iter().collect();
    assert_eq!(unique.len(), seen.commits.len(), "no commit relayed twice");
    assert_eq!(seen.commits.len(), total_commits, "every commit arrived after the crashes");
    let _ = std::fs::remove_dir_all(&dir);
}
