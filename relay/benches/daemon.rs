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
//! Phase 3, catch-up (`BENCH_PHASES=catchup`): the fleet keeps writing BENCH_RATE commits/s
//! while the relay is stopped for BENCH_DOWNTIME_SECONDS (default 600); reports the seconds
//! from its restart until it is live again and its peak RSS meanwhile.
//! `BENCH_P256_PERCENT` (default 50) sets the share of accounts signing with P-256.
//! Needs a high open-file limit (`ulimit -n 65536`) for thousands of hosts.
//!
//! `BENCH_RELAY=both` runs every phase against ours and then indigo in one invocation and
//! prints ours ÷ indigo ratios (events/s, CPU µs/event, peak RSS, p99, seconds to live).
//! `BENCH_RELAY=indigo` runs the same phases against Bluesky's Go relay (indigo
//! `cmd/relay`, built by `scripts/indigo-relay.sh`; `BENCH_INDIGO_BIN` to point elsewhere)
//! with the same settings through its own variables: a side-by-side baseline. Events out
//! and latency are measured on the firehose, the same way for both.

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

/// Which relay runs under the load: ours, or Bluesky's Go relay for a side-by-side figure
/// (`BENCH_RELAY=indigo`, binary from `BENCH_INDIGO_BIN`, see `scripts/indigo-relay.sh`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Ours,
    Indigo,
}

impl Flavor {
    /// `BENCH_RELAY`: `ours` (default), `indigo`, or `both` (each phase runs against ours,
    /// then indigo, and a ratio row follows: a figure that does not depend on the machine).
    fn from_env() -> Vec<Flavor> {
        match std::env::var("BENCH_RELAY").as_deref() {
            Ok("indigo") => vec![Flavor::Indigo],
            Ok("both") => vec![Flavor::Ours, Flavor::Indigo],
            Ok("" | "ours") | Err(_) => vec![Flavor::Ours],
            Ok(other) => panic!("BENCH_RELAY={other}: expected `ours`, `indigo` or `both`"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Flavor::Ours => "ours",
            Flavor::Indigo => "indigo",
        }
    }
}

struct RelayProcess {
    child: Child,
    flavor: Flavor,
    public: u16,
    internal: u16,
    dir: std::path::PathBuf,
    /// Set when the process was stopped for a restart on the same data.
    keep_dir: bool,
}

impl RelayProcess {
    /// Stops the relay with SIGTERM (as an operator would) and keeps its data for a restart.
    fn stop_keeping_data(mut self) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        self.keep_dir = true;
    }

    /// Where `/admin/*` is served: our internal listener, indigo's public one.
    fn admin_url(&self) -> String {
        let port = if self.flavor == Flavor::Ours { self.internal } else { self.public };
        format!("http://127.0.0.1:{port}")
    }

    fn firehose_url(&self) -> String {
        format!("ws://127.0.0.1:{}/xrpc/com.atproto.sync.subscribeRepos", self.public)
    }

    /// Hosts with an open upstream subscription (indigo's admin route, which ours serves too).
    async fn connected_hosts(&self) -> usize {
        let request = reqwest::Client::new()
            .get(format!("{}/admin/subs/getUpstreamConns", self.admin_url()))
            .basic_auth("admin", Some("bench"));
        match request.send().await {
            Ok(response) => response.json::<Vec<serde_json::Value>>().await.map_or(0, |hosts| hosts.len()),
            Err(_) => 0,
        }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn indigo_binary() -> std::path::PathBuf {
    match std::env::var_os("BENCH_INDIGO_BIN") {
        Some(path) => path.into(),
        None => std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default())
            .join(".cache/atproto-relay/indigo/bin/relay"),
    }
}

/// Everything one start of a relay process needs (a restart reuses it).
struct RelaySetup {
    flavor: Flavor,
    dir: std::path::PathBuf,
    database: String,
    public: u16,
    internal: u16,
    plc: String,
}

fn relay_command(setup: &RelaySetup) -> Command {
    let RelaySetup { flavor, dir, database, public, internal, plc } = setup;
    let (public, internal, plc) = (*public, *internal, plc.as_str());
    match flavor {
        Flavor::Ours => {
            let mut command = Command::new(env!("CARGO_BIN_EXE_relay"));
            command
                .args(["serve", "--allow-insecure-hosts", "--upstream", "", "--admin-password", "bench"])
                .arg("--data-dir")
                .arg(dir)
                .args([
                    "--bind",
                    &format!("127.0.0.1:{public}"),
                    "--metrics-listen",
                    &format!("127.0.0.1:{internal}"),
                ])
                .args(["--plc-host", plc, "--connect-stagger", "1ms", "--default-account-limit", "1000000"])
                .args(["--host-events-per-second", "100000"])
                // Every bench consumer connects from 127.0.0.1: lift the per-address cap
                // (100 by default), or all but 100 of them are refused with 429.
                .env("RELAY_MAX_CONSUMERS_PER_IP", "100000")
                .env("DATABASE_URL", database)
                .env("RELAY_LOG_LEVEL", "warn");
            command
        }
        Flavor::Indigo => {
            // The same settings through indigo's own variables; an account limit of 1M
            // also lifts its per-host event limit (50 + limit/1000 per second) out of the way.
            let binary = indigo_binary();
            assert!(binary.exists(), "no indigo relay at {} (run scripts/indigo-relay.sh)", binary.display());
            let mut command = Command::new(binary);
            command
                .arg("serve")
                .current_dir(dir)
                .env("RELAY_ADMIN_PASSWORD", "bench")
                .env("RELAY_PLC_HOST", plc)
                .env("DATABASE_URL", database)
                .env("RELAY_PERSIST_DIR", dir.join("persist"))
                .env("RELAY_API_BIND", format!("127.0.0.1:{public}"))
                .env("RELAY_METRICS_LISTEN", format!("127.0.0.1:{internal}"))
                .env("RELAY_ALLOW_INSECURE_HOSTS", "true")
                .env("RELAY_DEFAULT_ACCOUNT_LIMIT", "1000000")
                .env("RELAY_LOG_LEVEL", "warn");
            command
        }
    }
}

/// Starts the relay with the simulated hosts registered: ours through admin
/// `requestCrawl`; indigo's through its host table, since its `requestCrawl` probes
/// `describeServer` through an SSRF guard that refuses loopback addresses (its own
/// `pull-hosts` command writes the same rows). Returns the process and the seconds from
/// its (last) start to answering `/_health`, and the moment of that start.
async fn start_relay(flavor: Flavor, name: &str, sim: &Simulation) -> (RelayProcess, Duration, Instant) {
    let (process, serving, launched, _) = start_relay_keeping_setup(flavor, name, sim).await;
    (process, serving, launched)
}

/// [`start_relay`], also returning what a restart on the same data needs.
async fn start_relay_keeping_setup(
    flavor: Flavor,
    name: &str,
    sim: &Simulation,
) -> (RelayProcess, Duration, Instant, RelaySetup) {
    let dir = std::env::temp_dir().join(format!("relay-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench data dir");
    let database = bench_database(name, &dir).await;
    let setup =
        RelaySetup { flavor, dir, database, public: free_port(), internal: free_port(), plc: sim.plc_url() };
    let mut launched = Instant::now();
    let (mut process, mut serving) = launch(&setup).await;
    match flavor {
        Flavor::Ours => {
            sim.register_with_relay(&process.admin_url(), "bench").await.expect("crawl");
        }
        Flavor::Indigo => {
            // First start created the schema; add the hosts while it is stopped.
            process.stop_keeping_data();
            insert_indigo_hosts(&setup.database, sim).await;
            launched = Instant::now();
            (process, serving) = launch(&setup).await;
        }
    }
    (process, serving, launched, setup)
}

/// The relay's database: SQLite in its data dir, or with `BENCH_POSTGRES_URL` (a server URL
/// such as `postgres://postgres@127.0.0.1:5432`) a fresh PostgreSQL database for this run
/// (indigo's production setup; ours takes either).
async fn bench_database(name: &str, dir: &std::path::Path) -> String {
    let Ok(server) = std::env::var("BENCH_POSTGRES_URL") else {
        return format!("sqlite://{}/relay.sqlite", dir.display());
    };
    let server = server.trim_end_matches('/');
    let database = format!("bench_{name}_{}", std::process::id());
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&format!("{server}/postgres"))
        .await
        .expect("BENCH_POSTGRES_URL");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {database}")).execute(&admin).await.expect("drop");
    sqlx::query(&format!("CREATE DATABASE {database}")).execute(&admin).await.expect("create");
    admin.close().await;
    format!("{server}/{database}")
}

async fn insert_indigo_hosts(database: &str, sim: &Simulation) {
    sqlx::any::install_default_drivers();
    let pool =
        sqlx::any::AnyPoolOptions::new().max_connections(1).connect(database).await.expect("indigo db");
    let mut tx = pool.begin().await.expect("tx");
    for host in &sim.hosts {
        sqlx::query(
            "INSERT INTO host (created_at, updated_at, hostname, no_ssl, account_limit, trusted, status, last_seq, account_count) \
             VALUES (CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, $1, true, 1000000, true, 'active', -1, 0)",
        )
        .bind(host.hostname())
        .execute(&mut *tx)
        .await
        .expect("insert host");
    }
    tx.commit().await.expect("commit");
    pool.close().await;
}

async fn launch(setup: &RelaySetup) -> (RelayProcess, Duration) {
    let started = Instant::now();
    let mut command = relay_command(setup);
    // SAFETY: prctl is async-signal-safe; between fork and exec it only sets a flag on the child.
    unsafe {
        use std::os::unix::process::CommandExt;
        // The relay dies with the bench, even when the bench is killed or panics.
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    // The relay's own log, kept beside its data (appended across restarts) for a failed run.
    let log_path = setup.dir.join("relay-stderr.log");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).expect("relay log file");
    let child = command.stdout(Stdio::null()).stderr(log).spawn().expect("relay binary");
    let RelaySetup { flavor, public, internal, .. } = *setup;
    let process = RelayProcess { child, flavor, public, internal, dir: setup.dir.clone(), keep_dir: false };
    // Both relays answer `/_health` once their database is open and they listen.
    let health_port = if flavor == Flavor::Ours { internal } else { public };
    loop {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{health_port}/_health")).await {
            if r.status().is_success() {
                break;
            }
        }
        // A restart on a big data dir may take a while (indigo's does): BENCH_START_TIMEOUT_SECONDS.
        if started.elapsed() > Duration::from_secs(env_num("BENCH_START_TIMEOUT_SECONDS", 300u64)) {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            panic!(
                "relay did not start; the end of its log ({}):\n{}",
                log_path.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (process, started.elapsed())
}

/// A firehose consumer that costs the bench as little as one can: the WebSocket handshake,
/// then frames counted by their headers and their payloads discarded unread.
async fn drain_consumer(port: u16, stop_at: Instant, received: Arc<AtomicU64>) {
    use tokio::io::AsyncReadExt;
    // A refused upgrade is reported (and retried): a consumer that silently never connects
    // would make a relay look better than it is.
    let mut attempt = 0;
    let (mut stream, mut buffer, body) = loop {
        attempt += 1;
        match drain_handshake(port).await {
            Ok(connected) => break connected,
            Err(why) if attempt < 10 => {
                eprintln!("drain consumer: {why}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(why) => {
                eprintln!("drain consumer: {why}; giving up");
                return;
            }
        }
    };
    let mut frames = FrameCounter::default();
    frames.feed(&body, &received);
    while Instant::now() < stop_at {
        match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(n)) => frames.feed(&buffer[..n], &received),
            Err(_) => {}
        }
    }
}

/// Opens a firehose WebSocket by hand; returns the stream, a read buffer and the bytes that
/// came after the response headers. The key must be base64 of 16 bytes (RFC 6455; indigo's
/// WebSocket library checks it).
async fn drain_handshake(port: u16) -> Result<(tokio::net::TcpStream, Vec<u8>, Vec<u8>), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
    let request = format!(
        "GET /xrpc/com.atproto.sync.subscribeRepos HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ZHJhaW4tY29uc3VtZXIhIQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut buffer = vec![0u8; 256 * 1024];
    let mut filled = 0;
    loop {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer[filled..])).await;
        let n = read.map_err(|_| "no upgrade response in 10 s".to_string())?.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed during the upgrade".into());
        }
        filled += n;
        if let Some(end) = buffer[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            if !buffer.starts_with(b"HTTP/1.1 101") {
                let head = String::from_utf8_lossy(&buffer[..filled.min(200)]).into_owned();
                return Err(format!("upgrade refused: {head}"));
            }
            let body = buffer[end + 4..filled].to_vec();
            return Ok((stream, buffer, body));
        }
    }
}

/// Splits a server's WebSocket byte stream into frames without looking at payloads.
#[derive(Default)]
struct FrameCounter {
    header: Vec<u8>,
    payload_left: u64,
}

impl FrameCounter {
    fn feed(&mut self, mut data: &[u8], binary_frames: &AtomicU64) {
        while !data.is_empty() {
            if self.payload_left > 0 {
                let skip = self.payload_left.min(data.len() as u64);
                self.payload_left -= skip;
                data = &data[skip as usize..];
                continue;
            }
            self.header.push(data[0]);
            data = &data[1..];
            if let Some((opcode, payload)) = Self::complete_header(&self.header) {
                if opcode == 2 {
                    binary_frames.fetch_add(1, Ordering::Relaxed);
                }
                self.payload_left = payload;
                self.header.clear();
            }
        }
    }

    /// The opcode and payload length once `header` holds a whole frame header.
    fn complete_header(header: &[u8]) -> Option<(u8, u64)> {
        let (&first, &second) = (header.first()?, header.get(1)?);
        let short = second & 0x7f;
        let extended = match short {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if second & 0x80 != 0 { 4 } else { 0 };
        if header.len() < 2 + extended + mask {
            return None;
        }
        let payload = match short {
            126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
            127 => u64::from_be_bytes(header[2..10].try_into().ok()?),
            n => u64::from(n),
        };
        Some((first & 0x0f, payload))
    }
}

/// Counts frames on one firehose connection (the relay-neutral measure of events out).
fn count_frames(url: String, count: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Ok((mut socket, _)) = tokio_tungstenite::connect_async(url).await else { return };
        while let Some(Ok(message)) = socket.next().await {
            if matches!(message, Message::Binary(_)) {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
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
        .fold(0.0, |total, value| total + value)
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
        // keep every event it ever made (an hour at 2,000/s is ~50 GB of frames), and even
        // 1,024 per host came to ~17 GB over 2,800 hosts once repos (and proofs) had grown.
        history_events: if backlog { 0 } else { 256 },
        // indigo's relay takes loopback hosts only as `localhost:PORT`; both relays get the same.
        advertise_name: Some("localhost".into()),
    }
}

/// `BENCH_P256_PERCENT`: the share of simulated accounts signing with P-256 (default 50, as
/// in every earlier run; the network's PDSes sign with secp256k1, i.e. 0).
fn p256_percent() -> u8 {
    env_num("BENCH_P256_PERCENT", 50u8)
}

/// One relay's figures of one phase, for the side-by-side ratio rows.
#[derive(Clone, Copy, Default)]
struct Figures {
    events_per_second: f64,
    cpu_us_per_event: f64,
    peak_rss_mib: f64,
    p99_ms: f64,
    seconds_to_live: f64,
}

async fn saturation(flavor: Flavor) -> Figures {
    let hosts = env_num("BENCH_SAT_HOSTS", 50usize);
    let events = env_num("BENCH_SAT_EVENTS", 40_000u64);
    let sim = Simulation::start(sim_config(hosts, 4, 1.0, true)).await.expect("sim");
    sim.set_p256_percent(p256_percent());
    sim.create_accounts();
    let generating = Instant::now();
    let mut rng = fastrand::Rng::with_seed(1);
    while sim.commits.load(Ordering::Relaxed) < events {
        sim.step(&mut rng);
    }
    let total: usize = sim.hosts.iter().map(|h| h.events_emitted()).sum();
    eprintln!("generated {total} events in {:.1}s", generating.elapsed().as_secs_f64());
    // Hosts are registered by then and the relay is already taking their backlog: the clock
    // starts at the relay's (last) start, the same point for both relays.
    let (relay, _, launched) = start_relay(flavor, "sat", &sim).await;
    // From cursor 0, so frames the relay sent before this connection count too.
    let delivered = Arc::new(AtomicU64::new(0));
    let counter = count_frames(format!("{}?cursor=0", relay.firehose_url()), delivered.clone());
    let started = Instant::now();
    let mut peak_rss = 0.0f64;
    // Every pre-generated event is valid, so the run ends when all are out on the firehose
    // (or nothing more comes for 15 s: a relay that drops events is reported as such).
    let (mut last_count, mut last_change) = (0, Instant::now());
    loop {
        let done = delivered.load(Ordering::Relaxed);
        peak_rss = peak_rss.max(rss_mib(relay.child.id()));
        if done != last_count {
            (last_count, last_change) = (done, Instant::now());
        }
        if done >= total as u64 || last_change.elapsed() > Duration::from_secs(15) {
            break;
        }
        if started.elapsed() > Duration::from_secs(900) {
            eprintln!("saturation run timed out at {done} of {total}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = (last_change - launched).as_secs_f64().max(0.001);
    // The process's whole CPU time (start-up included, the same for both relays).
    let cpu = cpu_seconds(relay.child.id());
    counter.abort();
    let rejected = match flavor {
        Flavor::Ours => format!("{} rejected", metric(relay.internal, "relay_events_rejected_total").await),
        Flavor::Indigo => String::from("-"),
    };
    println!("| saturation ({}) | {hosts} hosts, {total} pre-generated events, {} % P-256 accounts | {:.0} validated events/s ({last_count} of {total} out) | relay CPU {:.2} cores, {:.0} µs CPU per event | {rejected} | peak RSS {peak_rss:.0} MiB |",
        flavor.name(), p256_percent(), last_count as f64 / elapsed, cpu / elapsed, cpu * 1e6 / last_count.max(1) as f64);
    Figures {
        events_per_second: last_count as f64 / elapsed,
        cpu_us_per_event: cpu * 1e6 / last_count.max(1) as f64,
        peak_rss_mib: peak_rss,
        ..Figures::default()
    }
}

async fn steady(flavor: Flavor) -> Figures {
    let hosts = env_num("BENCH_HOSTS", 2800usize);
    let rate = env_num("BENCH_RATE", 2000.0f64);
    let seconds = env_num("BENCH_SECONDS", 60u64);
    let consumers = env_num("BENCH_CONSUMERS", 100usize);
    let sim = Simulation::start(sim_config(hosts, 2, rate, false)).await.expect("sim");
    sim.set_p256_percent(p256_percent());
    let (relay, serving, _) = start_relay(flavor, "steady", &sim).await;
    let until = Instant::now() + Duration::from_secs(120);
    while relay.connected_hosts().await < hosts && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let connected = relay.connected_hosts().await;
    sim.create_accounts();
    let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
    let received = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + Duration::from_secs(seconds + 2);
    // Latency is steady-state latency: the burst of account creation at the start is excluded.
    let warmup = Duration::from_secs(env_num("BENCH_WARMUP_SECONDS", 20u64).min(seconds / 2));
    let measure_from = Instant::now() + warmup;
    let mut tasks = Vec::new();
    // Consumer 0 decodes every frame and measures latency; the others, unless
    // BENCH_FULL_CONSUMERS=1, only count frames by their headers (the relay does the same
    // work for them, and the bench's share of the two cores stays small).
    let full_consumers = std::env::var("BENCH_FULL_CONSUMERS").is_ok_and(|v| v == "1");
    for index in 0..consumers {
        let url = relay.firehose_url();
        let (latencies, received) = (latencies.clone(), received.clone());
        if index > 0 && !full_consumers {
            tasks.push(tokio::spawn(drain_consumer(relay.public, stop_at, received)));
            continue;
        }
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
            eprintln!(
                "{:>5}s: RSS {:.0} MiB, {} frames to consumers",
                started.elapsed().as_secs(),
                rss[rss.len() - 1],
                received.load(Ordering::Relaxed)
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
    let (accepted, stages) = match flavor {
        Flavor::Ours => {
            let lag = "relay_consumer_delivery_lag_seconds";
            let (p50, p99) = (
                histogram_quantile(relay.internal, lag, 0.5).await.unwrap_or(f64::NAN),
                histogram_quantile(relay.internal, lag, 0.99).await.unwrap_or(f64::NAN),
            );
            (
                format!("{} events accepted", metric(relay.internal, "relay_events_accepted_total").await),
                format!(
                    "{}; consumer writes flushed within (sequencing → socket, all consumers, whole run): p50 ≤ {} ms, p99 ≤ {} ms",
                    stage_latencies(relay.internal).await,
                    p50 * 1000.0,
                    p99 * 1000.0
                ),
            )
        }
        Flavor::Indigo => (String::from("-"), String::from("-")),
    };
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
        "| steady ({}) | {hosts} hosts ({connected} connected), {rate}/s target, {consumers} consumers, {seconds}s | {:.0} commits/s made, {accepted}, {} frames to consumers | latency after {}s warm-up: p50 {:.1} ms, p99 {:.1} ms | RSS {} MiB (max {:.0}) | serving after {:.2}s |",
        flavor.name(),
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
    let window_events = made as f64 / seconds as f64;
    Figures {
        events_per_second: window_events,
        cpu_us_per_event: relay_cores * 1e6 / window_events.max(1.0),
        peak_rss_mib: rss.iter().copied().fold(0.0, f64::max),
        p99_ms: pick(0.99),
        ..Figures::default()
    }
}

/// A quantile of one of the relay's histograms, read from its cumulative buckets (the
/// upper bound of the bucket the quantile falls in, as Prometheus' histogram_quantile
/// would bound it).
async fn histogram_quantile(internal: u16, name: &str, q: f64) -> Option<f64> {
    let text = reqwest::get(format!("http://127.0.0.1:{internal}/metrics")).await.ok()?.text().await.ok()?;
    let prefix = format!("{name}_bucket{{le=\"");
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (bound, count) = rest.split_once("\"} ")?;
            let bound = if bound == "+Inf" { f64::INFINITY } else { bound.parse().ok()? };
            Some((bound, count.trim().parse().ok()?))
        })
        .collect();
    let total = buckets.last()?.1;
    buckets.iter().find(|(_, count)| *count >= q * total).map(|(bound, _)| *bound)
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
    let flavors = Flavor::from_env();
    let mut ratios = Vec::new();
    if phases.contains("saturation") {
        let figures: Vec<Figures> = flavors.iter().map(|f| runtime.block_on(saturation(*f))).collect();
        ratios.push(("saturation", figures));
    }
    if phases.contains("steady") {
        let figures: Vec<Figures> = flavors.iter().map(|f| runtime.block_on(steady(*f))).collect();
        ratios.push(("steady", figures));
    }
    if phases.contains("catchup") {
        let figures: Vec<Figures> = flavors.iter().map(|f| runtime.block_on(catch_up(*f))).collect();
        ratios.push(("catch-up", figures));
    }
    if flavors.len() == 2 {
        print_ratios(&ratios);
    }
}

/// The side-by-side rows: ours ÷ indigo for each phase that ran against both, from the same
/// invocation (same machine, same minutes, same simulated fleet).
fn print_ratios(phases: &[(&str, Vec<Figures>)]) {
    println!();
    println!("| phase | events/s ours ÷ indigo | CPU µs/event indigo ÷ ours | peak RSS indigo ÷ ours | p99 latency indigo ÷ ours | seconds to live indigo ÷ ours |");
    println!("|---|---:|---:|---:|---:|---:|");
    let ratio = |a: f64, b: f64| {
        if a > 0.0 && b > 0.0 && a.is_finite() && b.is_finite() {
            format!("{:.2}×", a / b)
        } else {
            "–".into()
        }
    };
    for (phase, figures) in phases {
        let [ours, indigo] = [figures[0], figures[1]];
        println!(
            "| {phase} | {} | {} | {} | {} | {} |",
            ratio(ours.events_per_second, indigo.events_per_second),
            ratio(indigo.cpu_us_per_event, ours.cpu_us_per_event),
            ratio(indigo.peak_rss_mib, ours.peak_rss_mib),
            ratio(indigo.p99_ms, ours.p99_ms),
            ratio(indigo.seconds_to_live, ours.seconds_to_live),
        );
    }
}

/// What the catch-up phase's consumer has seen: the last seq (to resume from after the
/// restart), the distinct commits created while the relay was down, and the newest
/// commit's age on arrival.
#[derive(Default)]
struct CatchUpView {
    last_seq: i64,
    down_from_micros: i64,
    down_until_micros: i64,
    backlog: std::collections::HashSet<(String, String)>,
    newest_age_ms: f64,
    /// The newest rev delivered per account (TIDs sort as strings).
    newest_rev: std::collections::HashMap<String, String>,
}

/// Reads the firehose from `cursor` (or live) and records every commit into `view`.
fn follow_firehose(url: String, view: Arc<Mutex<CatchUpView>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Ok((mut socket, _)) = tokio_tungstenite::connect_async(url).await else { return };
        while let Some(Ok(message)) = socket.next().await {
            let Message::Binary(bytes) = message else { continue };
            let Ok(Event::Commit(commit)) = frame::decode(&bytes) else { continue };
            let Ok(made) = chrono::DateTime::parse_from_rfc3339(&commit.time) else { continue };
            let made_micros = made.timestamp_micros();
            let now_micros = chrono::Utc::now().timestamp_micros();
            let mut view = view.lock().expect("lock");
            view.last_seq = view.last_seq.max(commit.seq);
            let newest = view.newest_rev.entry(commit.repo.clone()).or_default();
            if commit.rev > *newest {
                newest.clone_from(&commit.rev);
            }
            view.newest_age_ms = (now_micros - made_micros) as f64 / 1000.0;
            // From the moment the stop begins (the relay may still deliver while it drains),
            // until the restart.
            let open_ended = view.down_until_micros == 0;
            if view.down_from_micros > 0
                && made_micros >= view.down_from_micros
                && (open_ended || made_micros < view.down_until_micros)
            {
                view.backlog.insert((commit.repo, commit.rev));
            }
        }
    })
}

/// Every account's newest rev right now, as its simulated PDS answers `getLatestCommit`.
async fn heads_now(sim: &Simulation) -> Vec<(String, String)> {
    let client = reqwest::Client::new();
    let mut heads = Vec::new();
    for host in &sim.hosts {
        for did in host.dids() {
            let url = format!("http://{}/xrpc/com.atproto.sync.getLatestCommit?did={did}", host.hostname());
            let Ok(response) = client.get(url).send().await else { continue };
            let Ok(body) = response.json::<serde_json::Value>().await else { continue };
            if let Some(rev) = body["rev"].as_str() {
                heads.push((did, rev.to_string()));
            }
        }
    }
    heads
}

/// Catch-up after downtime: the fleet writes BENCH_RATE commits/s; after a warm-up the relay is
/// stopped (SIGTERM) for BENCH_DOWNTIME_SECONDS (default 600) while the fleet keeps writing,
/// then started again on its data. Reports the seconds from the restart until it is live
/// again — every commit made during the downtime delivered on its firehose and the newest
/// commit under 1 s old on arrival — and the peak RSS while catching up.
async fn catch_up(flavor: Flavor) -> Figures {
    let hosts = env_num("BENCH_HOSTS", 2800usize);
    let rate = env_num("BENCH_RATE", 2000.0f64);
    let downtime = Duration::from_secs(env_num("BENCH_DOWNTIME_SECONDS", 600u64));
    let warmup = Duration::from_secs(env_num("BENCH_WARMUP_SECONDS", 30u64));
    let give_up = Duration::from_secs(env_num("BENCH_CATCHUP_TIMEOUT_SECONDS", 3600u64));
    // Each host must still hold its downtime's events when the relay asks for them again.
    let per_host = (rate * (downtime + warmup).as_secs_f64() / hosts as f64 * 1.5) as usize + 256;
    let sim =
        Simulation::start(SimulateConfig { history_events: per_host, ..sim_config(hosts, 2, rate, false) })
            .await
            .expect("sim");
    sim.set_p256_percent(p256_percent());
    let (relay, _, _, setup) = start_relay_keeping_setup(flavor, "catchup", &sim).await;
    let until = Instant::now() + Duration::from_secs(120);
    while relay.connected_hosts().await < hosts && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    sim.create_accounts();
    let generator = tokio::spawn(sim.clone().run());
    let view = Arc::new(Mutex::new(CatchUpView::default()));
    let consumer = follow_firehose(relay.firehose_url(), view.clone());
    tokio::time::sleep(warmup).await;

    // Down: SIGTERM, and the fleet keeps writing.
    let now_micros = || chrono::Utc::now().timestamp_micros();
    // The counter is read after the stamp: a commit counted here but stamped earlier would be
    // expected and never seen (its time is before the window).
    view.lock().expect("lock").down_from_micros = now_micros();
    let made_before = sim.commits.load(Ordering::Relaxed);
    relay.stop_keeping_data();
    consumer.abort();
    let down_since = Instant::now();
    while down_since.elapsed() < downtime {
        tokio::time::sleep(Duration::from_secs(60).min(downtime.saturating_sub(down_since.elapsed()))).await;
        eprintln!(
            "catch-up ({}): relay down for {:.0} s, {} commits made meanwhile",
            flavor.name(),
            down_since.elapsed().as_secs_f64(),
            sim.commits.load(Ordering::Relaxed) - made_before
        );
    }

    // Up again: resume the firehose where the consumer left off, and wait for the backlog.
    let made_while_down = sim.commits.load(Ordering::Relaxed) - made_before;
    let resume_from = {
        let mut view = view.lock().expect("lock");
        view.down_until_micros = now_micros();
        view.last_seq
    };
    let restarted = Instant::now();
    let (relay, serving) = launch(&setup).await;
    // Live means: every account's commit made before the restart delivered (checked by rev,
    // so no clock edge can hide or invent one) and the newest commit under a second old.
    let heads = heads_now(&sim).await;
    let consumer = follow_firehose(format!("{}?cursor={resume_from}", relay.firehose_url()), view.clone());
    let mut peak_rss = 0.0f64;
    let mut last_report = Instant::now();
    let live_after = loop {
        peak_rss = peak_rss.max(rss_mib(relay.child.id()));
        let (delivered, age, behind) = {
            let view = view.lock().expect("lock");
            let behind = heads
                .iter()
                .filter(|(did, rev)| view.newest_rev.get(did).is_none_or(|seen| seen < rev))
                .count();
            (view.backlog.len() as u64, view.newest_age_ms, behind)
        };
        if behind == 0 && age < 1000.0 {
            break Some(restarted.elapsed());
        }
        if restarted.elapsed() > give_up {
            eprintln!("catch-up ({}): not live after {give_up:?}: {delivered} of {made_while_down} downtime commits delivered, {behind} of {} accounts behind", flavor.name(), heads.len());
            break None;
        }
        if last_report.elapsed() > Duration::from_secs(30) {
            last_report = Instant::now();
            eprintln!(
                "catch-up ({}): {:.0} s after restart, {delivered} of {made_while_down} downtime commits delivered, {behind} of {} accounts behind, newest {age:.0} ms old, RSS {peak_rss:.0} MiB",
                flavor.name(),
                restarted.elapsed().as_secs_f64(),
                heads.len(),
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let delivered = view.lock().expect("lock").backlog.len() as u64;
    let seconds = live_after.map_or(f64::NAN, |d| d.as_secs_f64());
    let elapsed = live_after.unwrap_or_else(|| restarted.elapsed()).as_secs_f64().max(0.001);
    println!(
        "| catch-up ({}) | {hosts} hosts, {rate}/s, down {} s ({made_while_down} commits made meanwhile) | {} ({delivered} downtime commits delivered, {:.0}/s on average) | serving {:.2} s after the restart | peak RSS while catching up {peak_rss:.0} MiB | |",
        flavor.name(),
        downtime.as_secs(),
        live_after.map_or(format!("**not live after {} s**", give_up.as_secs()), |d| format!("**live again {:.1} s after the restart**", d.as_secs_f64())),
        delivered as f64 / elapsed,
        serving.as_secs_f64(),
    );
    consumer.abort();
    generator.abort();
    Figures {
        seconds_to_live: seconds,
        peak_rss_mib: peak_rss,
        events_per_second: delivered as f64 / elapsed,
        ..Figures::default()
    }
}
