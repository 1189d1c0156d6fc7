//! The relay daemon under load, measured from outside: `cargo bench -p relay --bench daemon`.
//!
//! The relay runs as its own process (the `relay` binary, fsync on, SQLite), so its RSS
//! is its own. This process runs the simulated PDS fleet, the PLC, and the consumers.
//!
//! Phase 1, saturation: BENCH_SAT_HOSTS hosts hold BENCH_SAT_EVENTS pre-generated events
//! (commits with real signatures and MST proofs) and send them as fast as the relay takes
//! them; reports validated events/s.
//! Phase 2, steady state: BENCH_HOSTS hosts (default 2,800) write BENCH_RATE commits/s
//! (default 2,000) for BENCH_SECONDS (default 60) to BENCH_CONSUMERS consumers (default
//! 100); reports relay-added latency (commit creation → consumer receipt) p50/p99, RSS over
//! time, and seconds from process start to serving.
//! Needs a high open-file limit (`ulimit -n 65536`) for thousands of hosts.

use futures_util::StreamExt;
use relay::atproto::frame::{self, Event};
use relay::simulate::{SimulateConfig, Simulation};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

struct RelayProcess {
    child: Child,
    public: u16,
    internal: u16,
    dir: std::path::PathBuf,
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start_relay(name: &str, plc: &str) -> (RelayProcess, Duration) {
    let dir = std::env::temp_dir().join(format!("relay-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (public, internal) = (free_port(), free_port());
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["serve", "--allow-insecure-hosts", "--upstream", "", "--admin-password", "bench"])
        .arg("--data-dir")
        .arg(&dir)
        .args([
            "--bind",
            &format!("127.0.0.1:{public}"),
            "--metrics-listen",
            &format!("127.0.0.1:{internal}"),
        ])
        .args(["--plc-host", plc, "--connect-stagger", "1ms", "--default-account-limit", "1000000"])
        .args(["--host-events-per-second", "100000"])
        .env("RELAY_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("relay binary");
    let process = RelayProcess { child, public, internal, dir };
    loop {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{internal}/_health")).await {
            if r.status().is_success() {
                break;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(60), "relay did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let serving = started.elapsed();
    (process, serving)
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat(5), i.e. 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

async fn metric(internal: u16, name: &str) -> f64 {
    let Ok(response) = reqwest::get(format!("http://127.0.0.1:{internal}/metrics")).await else { return 0.0 };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

fn sim_config(hosts: usize, accounts: usize, rate: f64, backlog: bool) -> SimulateConfig {
    SimulateConfig {
        hosts,
        accounts_per_host: accounts,
        rate,
        max_commits: 0,
        bind: "127.0.0.1".into(),
        relay_admin_url: None,
        relay_admin_token: None,
        hostile: vec![],
        seed: 42,
        backlog_on_connect: backlog,
        // The saturation phase replays all pre-generated events; a long steady run must not
        // keep every event it ever made (an hour at 2,000/s is ~50 GB of frames).
        history_events: if backlog { 0 } else { 1024 },
    }
}

async fn saturation() {
    let hosts = env_num("BENCH_SAT_HOSTS", 50usize);
    let events = env_num("BENCH_SAT_EVENTS", 40_000u64);
    let sim = Simulation::start(sim_config(hosts, 4, 1.0, true)).await.expect("sim");
    sim.create_accounts();
    let generating = Instant::now();
    let mut rng = fastrand::Rng::with_seed(1);
    while sim.commits.load(Ordering::Relaxed) < events {
        sim.step(&mut rng);
    }
    let total: usize = sim.hosts.iter().map(|h| h.events_emitted()).sum();
    eprintln!("generated {total} events in {:.1}s", generating.elapsed().as_secs_f64());
    let (relay, _) = start_relay("sat", &sim.plc_url()).await;
    let started = Instant::now();
    let cpu_before = cpu_seconds(relay.child.id());
    sim.register_with_relay(&format!("http://127.0.0.1:{}", relay.internal), "bench").await.expect("crawl");
    loop {
        let done = metric(relay.internal, "relay_events_sequenced_total").await;
        let dropped = metric(relay.internal, "relay_events_rejected_total").await;
        if done + dropped >= total as f64 {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            eprintln!("saturation run timed out at {done} of {total}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(relay.child.id()) - cpu_before;
    let rejected = metric(relay.internal, "relay_events_rejected_total").await;
    println!("| saturation | {hosts} hosts, {total} pre-generated events | {:.0} validated events/s | relay CPU {:.2} cores, {:.0} µs CPU per event | {rejected} rejected | peak RSS {:.0} MiB |",
        total as f64 / elapsed, cpu / elapsed, cpu * 1e6 / total as f64, rss_mib(relay.child.id()));
}

async fn steady() {
    let hosts = env_num("BENCH_HOSTS", 2800usize);
    let rate = env_num("BENCH_RATE", 2000.0f64);
    let seconds = env_num("BENCH_SECONDS", 60u64);
    let consumers = env_num("BENCH_CONSUMERS", 100usize);
    let sim = Simulation::start(sim_config(hosts, 2, rate, false)).await.expect("sim");
    let (relay, serving) = start_relay("steady", &sim.plc_url()).await;
    sim.register_with_relay(&format!("http://127.0.0.1:{}", relay.internal), "bench").await.expect("crawl");
    let until = Instant::now() + Duration::from_secs(120);
    while metric(relay.internal, "relay_hosts_connected").await < hosts as f64 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let connected = metric(relay.internal, "relay_hosts_connected").await;
    sim.create_accounts();
    let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
    let received = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + Duration::from_secs(seconds + 2);
    // Latency is steady-state latency: the burst of account creation at the start is excluded.
    let warmup = Duration::from_secs(env_num("BENCH_WARMUP_SECONDS", 20u64).min(seconds / 2));
    let measure_from = Instant::now() + warmup;
    let mut tasks = Vec::new();
    for index in 0..consumers {
        let url = format!("ws://127.0.0.1:{}/xrpc/com.atproto.sync.subscribeRepos", relay.public);
        let (latencies, received) = (latencies.clone(), received.clone());
        tasks.push(tokio::spawn(async move {
            let Ok((mut socket, _)) = tokio_tungstenite::connect_async(url).await else { return };
            while Instant::now() < stop_at {
                let Ok(Some(Ok(Message::Binary(bytes)))) =
                    tokio::time::timeout(Duration::from_millis(500), socket.next()).await
                else {
                    continue;
                };
                received.fetch_add(1, Ordering::Relaxed);
                if index == 0 && Instant::now() >= measure_from {
                    if let Ok(Event::Commit(commit)) = frame::decode(&bytes) {
                        if let Ok(made) = chrono::DateTime::parse_from_rfc3339(&commit.time) {
                            let ms =
                                (chrono::Utc::now() - made.with_timezone(&chrono::Utc)).num_microseconds();
                            let ms = ms.unwrap_or(0) as f64 / 1000.0;
                            if ms > 1000.0 && std::env::var("BENCH_DEBUG").is_ok() {
                                eprintln!(
                                    "late: {ms:.0} ms at {:.1}s: {} {} seq {}",
                                    measure_from.elapsed().as_secs_f64(),
                                    commit.repo,
                                    commit.rev,
                                    commit.seq
                                );
                            }
                            latencies.lock().expect("lock").push(ms);
                        }
                    }
                }
            }
        }));
    }
    let generator = tokio::spawn(sim.clone().run());
    let mut rss = Vec::new();
    let started = Instant::now();
    // CPU is measured after the warm-up too (the burst of new accounts at the start costs
    // SQL work per account that steady traffic does not).
    let mut cpu_from: Option<(Instant, f64, f64)> = None;
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        if cpu_from.is_none() && Instant::now() >= measure_from {
            cpu_from = Some((Instant::now(), cpu_seconds(relay.child.id()), cpu_seconds(std::process::id())));
        }
        rss.push(rss_mib(relay.child.id()));
        if rss.len() % 60 == 0 {
            // A progress line every 5 minutes, for long (soak) runs.
            let accepted = metric(relay.internal, "relay_events_accepted_total").await;
            eprintln!(
                "{:>5}s: RSS {:.0} MiB, {accepted} events accepted",
                started.elapsed().as_secs(),
                rss[rss.len() - 1]
            );
        }
    }
    // Long runs: one RSS figure per minute (the largest of its 5 s samples).
    if rss.len() > 120 {
        rss = rss.chunks(12).map(|minute| minute.iter().copied().fold(0.0, f64::max)).collect();
    }
    let (cpu_at, relay_cpu_before, bench_cpu_before) = cpu_from.unwrap_or((started, 0.0, 0.0));
    let window = cpu_at.elapsed().as_secs_f64().max(0.001);
    let relay_cores = (cpu_seconds(relay.child.id()) - relay_cpu_before) / window;
    let bench_cores = (cpu_seconds(std::process::id()) - bench_cpu_before) / window;
    generator.abort();
    let accepted = metric(relay.internal, "relay_events_accepted_total").await;
    let stages = stage_latencies(relay.internal).await;
    for task in tasks {
        let _ = task.await;
    }
    let mut values = latencies.lock().expect("lock").clone();
    values.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        values
            .get(((values.len() as f64 * q) as usize).min(values.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let made = sim.commits.load(Ordering::Relaxed);
    println!(
        "| steady | {hosts} hosts ({connected} connected), {rate}/s target, {consumers} consumers, {seconds}s | {:.0} commits/s made, {accepted} events accepted, {} frames to consumers | latency after {}s warm-up: p50 {:.1} ms, p99 {:.1} ms | RSS {} MiB (max {:.0}) | serving after {:.2}s |",
        made as f64 / seconds as f64,
        received.load(Ordering::Relaxed),
        warmup.as_secs(),
        pick(0.5),
        pick(0.99),
        rss.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join("→"),
        rss.iter().copied().fold(0.0, f64::max),
        serving.as_secs_f64(),
    );
    println!(
        "  CPU after the warm-up: relay {relay_cores:.2} cores, bench process (simulator + consumers) {bench_cores:.2} cores; relay stage means (whole run): {stages}"
    );
}

/// Mean seconds of the relay's per-stage histograms, as one line.
async fn stage_latencies(internal: u16) -> String {
    let mut out = Vec::new();
    let names: Vec<String> = ["validation", "log_write"]
        .iter()
        .map(|n| format!("relay_{n}_seconds"))
        .chain(
            ["account", "identity", "verify", "apply", "sequencer_queue"]
                .iter()
                .map(|step| format!("relay_validation_step_seconds{{step=\"{step}\"}}")),
        )
        .collect();
    for name in &names {
        let (base, labels) = name.split_once('{').map_or((name.as_str(), ""), |(b, l)| (b, l));
        let labels = if labels.is_empty() { String::new() } else { format!("{{{labels}") };
        let sum = metric(internal, &format!("{base}_sum{labels}")).await;
        let count = metric(internal, &format!("{base}_count{labels}")).await;
        if count > 0.0 {
            out.push(format!("{name} {:.2} ms", sum / count * 1000.0));
        }
    }
    let writes = metric(internal, "relay_log_write_seconds_count").await;
    if writes > 0.0 {
        let events = metric(internal, "relay_events_sequenced_total").await;
        out.push(format!("{:.1} events per log write", events / writes));
    }
    out.join(", ")
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    println!("| phase | setup | throughput | other | memory | start |");
    println!("|---|---|---|---|---|---|");
    let phases = std::env::var("BENCH_PHASES").unwrap_or_else(|_| "saturation,steady".into());
    if phases.contains("saturation") {
        runtime.block_on(saturation());
    }
    if phases.contains("steady") {
        runtime.block_on(steady());
    }
}
