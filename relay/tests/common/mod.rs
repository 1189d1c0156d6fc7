//! Test helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The PostgreSQL server for tests (`RELAY_TEST_POSTGRES_URL`, started by scripts/test.sh).
/// Under CI its absence is an error, so the Postgres tests can never be skipped silently there.
pub fn postgres_server() -> Option<String> {
    match std::env::var("RELAY_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok() => panic!("RELAY_TEST_POSTGRES_URL must be set in CI"),
        _ => {
            eprintln!("RELAY_TEST_POSTGRES_URL not set: skipping the PostgreSQL variant");
            None
        }
    }
}

/// A fresh, empty PostgreSQL database on the test server; returns its URL.
pub async fn fresh_postgres_database(server: &str) -> String {
    use sqlx::Connection;
    let name = format!("relay_test_{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
    let mut conn = sqlx::PgConnection::connect(server).await.expect("connect to the test PostgreSQL");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}")).execute(&mut conn).await.expect("drop");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create database");
    let base = server.rsplit_once('/').map_or(server, |(base, _)| base);
    format!("{base}/{name}")
}

/// A fresh SQLite database file URL.
pub fn fresh_sqlite_database() -> (String, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "relay-sqlite-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    (format!("sqlite://{}", dir.join("relay.sqlite").display()), dir)
}

/// A relay configuration for in-process tests: loopback listeners on free ports, data in
/// `dir`, the given PLC, insecure (loopback) hosts allowed, no bootstrap, no rate limits.
pub fn relay_config(dir: &std::path::Path, plc: String) -> relay::config::ServeConfig {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Wrapper {
        #[command(flatten)]
        config: relay::config::ServeConfig,
    }
    let mut config = Wrapper::parse_from(["relay"]).config;
    config.data_dir = dir.to_path_buf();
    config.api_bind = "127.0.0.1:0".into();
    config.internal_bind = "127.0.0.1:0".into();
    config.plc_url = plc;
    config.allow_insecure_hosts = true;
    config.upstream = String::new();
    config.connect_stagger = std::time::Duration::from_millis(1);
    config.max_backoff = std::time::Duration::from_secs(1);
    config.host_events_per_second = 100_000.0;
    config.host_identity_lookups_per_second = 100_000.0;
    config
}

/// A relay running in this process with both listeners on loopback.
pub struct Running {
    pub relay: std::sync::Arc<relay::app::Relay>,
    pub public: std::net::SocketAddr,
    pub internal: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    /// The started relay's tasks, for the ordered shutdown.
    wiring: relay::wiring::Running,
}

pub async fn start_relay(config: relay::config::ServeConfig) -> Running {
    let wiring = relay::wiring::start(config).await.expect("relay starts");
    let relay = wiring.relay.clone();
    let (public, internal) = relay::server::bind(&relay).await.expect("bind");
    let (public_addr, internal_addr) =
        (public.local_addr().expect("addr"), internal.local_addr().expect("addr"));
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = relay.clone();
    let task = tokio::spawn(async move {
        serving.hosts.resume_hosts().await.expect("resume");
        relay::server::serve(serving, public, internal, async {
            let _ = stop_rx.await;
        })
        .await
        .expect("serve");
    });
    Running { relay, public: public_addr, internal: internal_addr, stop, task, wiring }
}

pub async fn stop_relay(running: Running) {
    running.wiring.shutdown().await;
    let _ = running.stop.send(());
    let _ = running.task.await;
}

/// Polls `done` every 50 ms until it holds; panics naming `what` after `deadline`.
pub async fn wait_for(what: &str, deadline: std::time::Duration, mut done: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + deadline;
    while std::time::Instant::now() < until {
        if done() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Waits until the relay has an open subscription to at least `hosts` hosts.
pub async fn wait_connected(relay: &relay::app::Relay, hosts: usize) {
    let connected = || relay.hosts.connected();
    wait_for("hosts to connect", std::time::Duration::from_secs(20), || connected() >= hosts).await;
}

/// Polls the async `check` every 100 ms until it says `Ok`; panics with its last answer
/// (what the state was instead) after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: std::time::Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let until = std::time::Instant::now() + timeout;
    let mut last = String::new();
    while std::time::Instant::now() < until {
        match check().await {
            Ok(()) => return,
            Err(state) => last = state,
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{what}: not reached in {timeout:?}; last state: {last}");
}
