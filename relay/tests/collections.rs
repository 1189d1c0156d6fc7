//! The collection directory end to end: a simulated PDS fleet → the relay (in process) →
//! `listReposByCollection`; backfill by crawl (with a host that answers 429 for a while)
//! and by import from a simulated upstream directory (with ghosts that must not be listed).

mod common;

use common::eventually;

use common::{start_relay, stop_relay, Running};
use relay::atproto::repo::{sample_post, Write};
use relay::simulate::upstream::{self, SimUpstream, SyntheticCollection};
use relay::simulate::{SimulateConfig, Simulation};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const TOKEN: &str = "test-token";

fn sim_config(hosts: usize, accounts: usize) -> SimulateConfig {
    SimulateConfig {
        hosts,
        accounts_per_host: accounts,
        rate: 1.0,
        max_commits: 0,
        bind: "127.0.0.1".into(),
        relay_admin_url: None,
        relay_admin_token: None,
        hostile: Vec::new(),
        seed: 11,
        backlog_on_connect: false,
        history_events: 0,
        advertise_name: None,
    }
}

fn config(dir: &std::path::Path, plc: String) -> relay::config::ServeConfig {
    let mut config = common::relay_config(dir, plc);
    config.admin_tokens = vec![TOKEN.into()];
    config.backfill_host_requests_per_second = 200.0;
    config.max_backoff = Duration::from_secs(2);
    config
}

fn create(path: &str) -> Write {
    Write::Create { path: path.to_string(), record: sample_post(path, "2026-11-26T00:00:00.000Z") }
}

fn delete(path: &str) -> Write {
    Write::Delete { path: path.to_string() }
}

/// Every DID listed for a collection, paging with `limit`; panics on a repeated DID.
async fn listed(running: &Running, collection: &str, limit: usize) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!(
            "http://{}/xrpc/com.atproto.sync.listReposByCollection?collection={collection}&limit={limit}",
            running.public
        );
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let page: serde_json::Value = client.get(&url).send().await.expect("GET").json().await.expect("JSON");
        for repo in page["repos"].as_array().expect("repos array") {
            out.push(repo["did"].as_str().expect("did").to_string());
        }
        match page["cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    let unique: BTreeSet<&String> = out.iter().collect();
    assert_eq!(unique.len(), out.len(), "a DID was listed twice for {collection}");
    out
}

/// What the simulated repos hold: collection → DIDs of active accounts.
fn truth(
    sim: &Simulation,
    hosts: usize,
    accounts: usize,
    inactive: &BTreeSet<(usize, usize)>,
) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for h in 0..hosts {
        let dids = sim.hosts[h].dids();
        for (a, did) in dids.iter().enumerate().take(accounts) {
            if inactive.contains(&(h, a)) {
                continue;
            }
            for collection in sim.collections_of(h, a) {
                out.entry(collection).or_default().push(did.clone());
            }
        }
    }
    for dids in out.values_mut() {
        dids.sort();
    }
    out
}

async fn matches_truth(
    running: &Running,
    expected: &BTreeMap<String, Vec<String>>,
    all: &[&str],
) -> Result<(), String> {
    for collection in all {
        let got = listed(running, collection, 2).await;
        let want = expected.get(*collection).cloned().unwrap_or_default();
        if got != want {
            return Err(format!("{collection}: listed {got:?}, repos hold {want:?}"));
        }
    }
    Ok(())
}

async fn admin(running: &Running, method: reqwest::Method, path: &str) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .request(method, format!("http://{}{path}", running.internal))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("admin request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(serde_json::Value::Null))
}

fn metric(running: &Running, name: &str) -> f64 {
    let text = running.relay.metrics.render();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_index_follows_creates_deletes_and_account_status() {
    let (hosts, accounts) = (2, 3);
    let sim = Simulation::start(sim_config(hosts, accounts)).await.expect("simulation");
    let dir = tempdir("live");
    let running = start_relay(config(&dir, sim.plc_url())).await;
    sim.register_with_relay(&format!("http://{}", running.internal), TOKEN).await.expect("register");
    wait_connected(&running, hosts).await;
    sim.create_accounts();
    let all = ["com.example.a", "com.example.b", "com.example.c"];
    let mut inactive = BTreeSet::new();

    sim.write(0, 0, &[create("com.example.a/1"), create("com.example.b/1")]).unwrap();
    sim.write(0, 1, &[create("com.example.a/2")]).unwrap();
    sim.write(1, 0, &[create("com.example.c/1"), create("com.example.a/9")]).unwrap();
    let expected = truth(&sim, hosts, accounts, &inactive);
    eventually("creates are listed", Duration::from_secs(20), || matches_truth(&running, &expected, &all))
        .await;

    // Deletes: the last record of b goes (the pair goes); a keeps a record (the pair stays).
    // Both are decided from the commit's MST proof, with no describeRepo call.
    // The baseline is read once the indexer has applied everything the relay has sequenced and
    // nothing new arrives: account-creation events of other hosts (whose #sync events queue
    // describeRepo checks) can be sequenced after the writes above.
    let mut settled = (0.0, Instant::now());
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        let head = metric(&running, "relay_seq_head");
        if head != settled.0 {
            settled = (head, Instant::now());
        } else if metric(&running, "relay_collections_indexed_seq") >= head
            && settled.1.elapsed() > Duration::from_millis(500)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fallbacks = metric(&running, "relay_collections_describe_fallbacks_total");
    sim.write(0, 0, &[delete("com.example.b/1")]).unwrap();
    sim.write(0, 0, &[create("com.example.a/3")]).unwrap();
    sim.write(0, 0, &[delete("com.example.a/1")]).unwrap();
    sim.write(1, 0, &[delete("com.example.c/1"), delete("com.example.a/9"), create("com.example.b/7")])
        .unwrap();
    let expected = truth(&sim, hosts, accounts, &inactive);
    assert!(!expected.contains_key("com.example.c"));
    eventually("deletes are reflected", Duration::from_secs(20), || matches_truth(&running, &expected, &all))
        .await;
    assert_eq!(
        metric(&running, "relay_collections_describe_fallbacks_total"),
        fallbacks,
        "emptied collections were decided from the proofs"
    );

    // Deactivation hides, reactivation restores; deletion drops.
    sim.set_status(0, 1, Some("deactivated")).unwrap();
    inactive.insert((0, 1));
    let expected = truth(&sim, hosts, accounts, &inactive);
    eventually("deactivated account hidden", Duration::from_secs(20), || {
        matches_truth(&running, &expected, &all)
    })
    .await;
    sim.set_status(0, 1, None).unwrap();
    inactive.remove(&(0, 1));
    let expected = truth(&sim, hosts, accounts, &inactive);
    eventually("reactivated account back", Duration::from_secs(20), || {
        matches_truth(&running, &expected, &all)
    })
    .await;
    sim.set_status(1, 0, Some("deleted")).unwrap();
    inactive.insert((1, 0));
    let expected = truth(&sim, hosts, accounts, &inactive);
    eventually("deleted account dropped", Duration::from_secs(20), || {
        matches_truth(&running, &expected, &all)
    })
    .await;

    // A local takedown hides the account; reversing it restores it.
    let did = sim.hosts[0].dids()[0].clone();
    let client = reqwest::Client::new();
    let takedown = |path: &'static str| {
        let client = client.clone();
        let url = format!("http://{}/admin/repo/{path}", running.internal);
        let did = did.clone();
        async move {
            let response =
                client.post(url).bearer_auth(TOKEN).json(&serde_json::json!({ "did": did })).send().await;
            assert!(response.expect("takedown").status().is_success());
        }
    };
    takedown("takeDown").await;
    inactive.insert((0, 0));
    let expected = truth(&sim, hosts, accounts, &inactive);
    eventually("taken-down account hidden", Duration::from_secs(20), || {
        matches_truth(&running, &expected, &all)
    })
    .await;
    takedown("reverseTakedown").await;
    inactive.remove(&(0, 0));
    let expected = truth(&sim, hosts, accounts, &inactive);
    eventually("takedown reversed", Duration::from_secs(20), || matches_truth(&running, &expected, &all))
        .await;

    // Per-collection counts agree with the listings.
    let (status, counts) = admin(&running, reqwest::Method::GET, "/admin/collections").await;
    assert_eq!(status, 200);
    for entry in counts["collections"].as_array().unwrap() {
        let collection = entry["collection"].as_str().unwrap();
        let want = expected.get(collection).map_or(0, Vec::len);
        assert_eq!(entry["dids"].as_u64(), Some(want as u64), "count of {collection}");
    }

    // Lexicon errors.
    let client = reqwest::Client::new();
    for query in [
        "collection=not-an-nsid",
        "",
        "collection=com.example.a&limit=0",
        "collection=com.example.a&limit=2001",
        "collection=com.example.a&cursor=%21%21",
    ] {
        let url = format!("http://{}/xrpc/com.atproto.sync.listReposByCollection?{query}", running.public);
        let response = client.get(url).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 400, "{query}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "InvalidRequest", "{query}");
    }
    stop_relay(running).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crawl_backfills_what_was_written_before_and_waits_out_a_throttling_host() {
    let (hosts, accounts) = (3, 4);
    let sim = Simulation::start(sim_config(hosts, accounts)).await.expect("simulation");
    sim.create_accounts();
    // Written before the relay exists: only a crawl can find these.
    for h in 0..hosts {
        for a in 0..accounts {
            let mut writes = vec![create(&format!("org.example.h{h}/{a}"))];
            if a % 2 == 0 {
                writes.push(create(&format!("org.example.even/{h}{a}")));
            }
            sim.write(h, a, &writes).unwrap();
        }
    }
    sim.set_status(1, 3, Some("deactivated")).unwrap();
    let inactive: BTreeSet<(usize, usize)> = [(1, 3)].into();
    let expected = truth(&sim, hosts, accounts, &inactive);
    let all = ["org.example.h0", "org.example.h1", "org.example.h2", "org.example.even"];

    let dir = tempdir("crawl");
    let running = start_relay(config(&dir, sim.plc_url())).await;
    sim.register_with_relay(&format!("http://{}", running.internal), TOKEN).await.expect("register");
    wait_connected(&running, hosts).await;
    // Nothing was written since the relay subscribed: the index knows nothing yet.
    assert!(listed(&running, "org.example.even", 100).await.is_empty());

    // Host 2 refuses everything with 429 + Retry-After for a while.
    let throttle = Duration::from_secs(6);
    sim.hosts[2].throttle_for(throttle, 2);
    let throttled_at = Instant::now();
    let (status, _) = admin(&running, reqwest::Method::POST, "/admin/backfill-crawl").await;
    assert_eq!(status, 202);
    let (status, body) = admin(&running, reqwest::Method::POST, "/admin/backfill-crawl").await;
    assert_eq!(status, 409, "a second start while running is refused: {body}");

    // The other hosts finish while host 2 still refuses.
    let others: BTreeMap<String, Vec<String>> =
        truth(&sim, 2, accounts, &inactive).into_iter().filter(|(c, _)| c != "org.example.even").collect();
    eventually("unthrottled hosts crawled", Duration::from_secs(20), || {
        matches_truth(&running, &others, &["org.example.h0", "org.example.h1"])
    })
    .await;
    assert!(throttled_at.elapsed() < throttle, "the other hosts had to wait for the throttled one");
    assert!(listed(&running, "org.example.h2", 100).await.is_empty());

    eventually("throttled host crawled later", Duration::from_secs(40), || {
        matches_truth(&running, &expected, &all)
    })
    .await;
    assert!(sim.hosts[2].refused.load(std::sync::atomic::Ordering::Relaxed) > 0);
    assert!(metric(&running, "relay_backfill_rate_limited_total") > 0.0);
    let (status, progress) = admin(&running, reqwest::Method::GET, "/admin/backfill-crawl").await;
    assert_eq!(status, 200);
    assert_eq!(progress["hostsDone"].as_u64(), Some(hosts as u64), "{progress}");

    // Pruning: once host 0 is banned, a pass hides its accounts (their PDS is gone).
    let host0 = sim.hosts[0].hostname();
    let (status, _) = admin(&running, reqwest::Method::POST, &format!("/admin/pds/block?host={host0}")).await;
    assert_eq!(status, 200);
    let (status, _) = admin(&running, reqwest::Method::POST, "/admin/collections/prune").await;
    assert_eq!(status, 202);
    let remaining: BTreeMap<String, Vec<String>> = {
        let gone: BTreeSet<String> = sim.hosts[0].dids().into_iter().collect();
        expected
            .iter()
            .map(|(c, dids)| (c.clone(), dids.iter().filter(|d| !gone.contains(*d)).cloned().collect()))
            .filter(|(_, dids): &(String, Vec<String>)| !dids.is_empty())
            .collect()
    };
    eventually("banned host's accounts pruned", Duration::from_secs(30), || {
        matches_truth(&running, &remaining, &all)
    })
    .await;
    assert!(metric(&running, "relay_collections_pruned_total") >= accounts as f64);
    stop_relay(running).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_lists_verified_dids_and_drops_ghosts() {
    let sim = Simulation::start(sim_config(1, 1)).await.expect("simulation");
    let collections = vec![
        SyntheticCollection { nsid: "app.example.alpha".into(), count: 700, stride: 1 },
        SyntheticCollection { nsid: "app.example.beta".into(), count: 450, stride: 3 },
    ];
    let upstream = SimUpstream::start("127.0.0.1", collections, 7).await.expect("upstream");
    // Synthetic DIDs live on the simulated host 0, except the ghosts (PLC does not know them).
    sim.plc.serve_synthetic(&format!("http://{}", sim.hosts[0].hostname()));

    let dir = tempdir("import");
    let mut config = config(&dir, sim.plc_url());
    config.backfill_page_size = 100;
    let running = start_relay(config).await;
    sim.register_with_relay(&format!("http://{}", running.internal), TOKEN).await.expect("register");

    let body = serde_json::json!({ "collections": ["app.example.alpha", "app.example.beta"] });
    let response = reqwest::Client::new()
        .post(format!("http://{}/admin/backfill-collections?source={}", running.internal, upstream.url()))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let source = upstream.url();
    eventually("import done", Duration::from_secs(60), || {
        let running = &running;
        let source = source.clone();
        async move {
            let (_, status) =
                admin(running, reqwest::Method::GET, &format!("/admin/backfill-collections?source={source}"))
                    .await;
            if status["collectionsDone"] == 2 && status["running"] == false {
                Ok(())
            } else {
                Err(status.to_string())
            }
        }
    })
    .await;
    for nsid in ["app.example.alpha", "app.example.beta"] {
        let want: Vec<String> = upstream
            .dids(nsid)
            .into_iter()
            .filter(|did| !upstream::is_ghost(upstream::synthetic_index(did).unwrap()))
            .collect();
        eventually(&format!("{nsid} verified"), Duration::from_secs(60), || {
            let want = want.clone();
            let running = &running;
            async move {
                let got = listed(running, nsid, 1000).await;
                if got == want {
                    Ok(())
                } else {
                    Err(format!("{} listed, {} expected", got.len(), want.len()))
                }
            }
        })
        .await;
    }
    assert!(upstream.refused.load(std::sync::atomic::Ordering::Relaxed) > 0, "the upstream sent 429s");
    assert!(metric(&running, "relay_collections_verified_total{result=\"unresolvable\"}") > 0.0);
    assert!(upstream.repeated_pages().is_empty(), "no page fetched twice: {:?}", upstream.repeated_pages());
    stop_relay(running).await;
    let _ = std::fs::remove_dir_all(&dir);
}

async fn wait_connected(running: &Running, hosts: usize) {
    let relay = running.relay.clone();
    eventually("hosts connected", Duration::from_secs(20), || {
        let relay = relay.clone();
        async move {
            let connected = relay.hosts.connected();
            if connected >= hosts {
                Ok(())
            } else {
                Err(format!("{connected} connected"))
            }
        }
    })
    .await;
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("relay-collections-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
