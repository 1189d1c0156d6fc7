//! `relay admin ...` end to end: a relay runs in this process (real sockets, SQLite in a temp
//! dir) and the built `relay` binary is run against its internal listener, as an operator would.

mod common;

use common::{start_relay, stop_relay, Running};
use relay::simulate::{SimulateConfig, Simulation};
use std::process::Output;

const TOKEN: &str = "test-token";

async fn relay_for(name: &str, plc: String) -> (Running, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("relay-admin-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = common::relay_config(&dir, plc);
    config.admin_tokens = vec![TOKEN.into()];
    (start_relay(config).await, dir)
}

/// Runs `relay admin <args>` with the URL and token in the environment (as operators set them).
async fn admin(running: &Running, token: &str, args: &[&str]) -> Output {
    admin_at(&format!("http://{}", running.internal), token, args).await
}

async fn admin_at(url: &str, token: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_relay"))
        .arg("admin")
        .args(args)
        .env("RELAY_ADMIN_URL", url)
        .env("RELAY_ADMIN_TOKEN", token)
        .output()
        .await
        .expect("the relay binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts success and returns stdout.
fn ok(output: Output, what: &str) -> String {
    assert!(output.status.success(), "{what} failed: {:?}\n{}", output.status, stderr(&output));
    stdout(&output)
}

fn sim_config() -> SimulateConfig {
    SimulateConfig { rate: 10.0, seed: 5, ..SimulateConfig::loopback(1, 1) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_are_crawled_listed_and_banned() {
    let sim = Simulation::start(sim_config()).await.expect("simulator");
    let (running, dir) = relay_for("hosts", sim.plc_url()).await;
    let hostname = sim.hosts[0].hostname();

    let out = ok(
        admin(&running, TOKEN, &["hosts", "request-crawl", &format!("http://{hostname}")]).await,
        "request-crawl",
    );
    assert_eq!(out, format!("crawl of http://{hostname} requested\n"));

    let json: serde_json::Value = serde_json::from_str(&ok(
        admin(&running, TOKEN, &["hosts", "list", "--json"]).await,
        "hosts list --json",
    ))
    .expect("--json prints JSON");
    let hosts = json.as_array().expect("an array of hosts");
    assert_eq!(hosts.len(), 1, "{json}");
    assert_eq!(hosts[0]["Host"], hostname.as_str());
    assert_eq!(hosts[0]["Blocked"], false);

    // Table output: the header, then the host's row with its columns aligned under it.
    let table = ok(admin(&running, TOKEN, &["hosts", "list"]).await, "hosts list");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[0].starts_with("ID  HOST"), "{table}");
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row[1], hostname, "{table}");
    assert_eq!(lines[0].find("STATUS"), lines[1].find(row[2]), "STATUS column aligned:\n{table}");

    let out = ok(admin(&running, TOKEN, &["hosts", "ban", &hostname]).await, "hosts ban");
    assert_eq!(out, format!("host {hostname} banned\n"));
    let table = ok(admin(&running, TOKEN, &["hosts", "list"]).await, "hosts list");
    assert!(table.lines().nth(1).is_some_and(|l| l.contains("banned")), "{table}");

    stop_relay(running).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domains_and_crawl_switch_round_trip() {
    let (running, dir) = relay_for("domains", "http://127.0.0.1:9".into()).await;

    assert_eq!(ok(admin(&running, TOKEN, &["domains", "list"]).await, "domains list"), "DOMAIN\n(none)\n");
    let out = ok(admin(&running, TOKEN, &["domains", "ban", "example.com"]).await, "domains ban");
    assert_eq!(out, "domain example.com banned\n");
    assert_eq!(
        ok(admin(&running, TOKEN, &["domains", "list"]).await, "domains list"),
        "DOMAIN\nexample.com\n"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(admin(&running, TOKEN, &["domains", "list", "--json"]).await, "--json"))
            .expect("JSON");
    assert_eq!(json, serde_json::json!({ "banned_domains": ["example.com"] }));
    ok(admin(&running, TOKEN, &["domains", "unban", "example.com"]).await, "domains unban");
    assert_eq!(ok(admin(&running, TOKEN, &["domains", "list"]).await, "domains list"), "DOMAIN\n(none)\n");

    ok(admin(&running, TOKEN, &["crawl", "disable"]).await, "crawl disable");
    let out = ok(admin(&running, TOKEN, &["crawl", "enabled"]).await, "crawl enabled");
    assert_eq!(out, "public requestCrawl is disabled\n");

    stop_relay(running).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_exit_2_with_a_clear_message() {
    let (running, dir) = relay_for("errors", "http://127.0.0.1:9".into()).await;

    // Unknown account: the server's error and message, exit status 2.
    let out = admin(&running, TOKEN, &["repo", "takedown", "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("RepoNotFound: unknown account"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());

    // Wrong token (given as --token, which overrides the environment); it is never echoed.
    let out = admin(&running, TOKEN, &["hosts", "list", "--token", "not-the-token"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).to_lowercase().contains("unauthorized"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("not-the-token"), "the token leaked: {}", stderr(&out));

    // Nothing listening: the message names the URL.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let url = format!("http://127.0.0.1:{port}");
    let out = admin_at(&url, TOKEN, &["consumers"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("{url}/admin/consumers/list")), "{}", stderr(&out));

    // No token at all: refused before any request.
    let out = admin(&running, "", &["consumers"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("RELAY_ADMIN_TOKEN"), "{}", stderr(&out));

    stop_relay(running).await;
    let _ = std::fs::remove_dir_all(&dir);
}
