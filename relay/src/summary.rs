//! `GET /_summary` on the internal listener: the relay's state in one small JSON document of
//! integers — hosts, events, coverage per reference, the collection directory, backfill
//! progress, readiness — so the operator's runtime status costs one request per relay and
//! needs neither the admin token nor a `/metrics` parser.

use crate::app::Relay;
use crate::storage::HostStatus;
use serde_json::{json, Value};

/// The document (see docs/relay.md for the fields).
pub async fn summary(relay: &Relay) -> Value {
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "hosts": hosts(relay).await,
        "events": {
            "sequencedTotal": relay.metrics.events_out.get(),
            "lastSeq": relay.sequencer.current_head(),
        },
        "coverage": coverage(relay),
        "collections": collections(relay),
        "backfill": backfill(relay).await,
        "ready": match relay.readiness() {
            Ok(()) => json!({ "ready": true, "reason": null }),
            Err(reason) => json!({ "ready": false, "reason": reason }),
        },
    })
}

async fn hosts(relay: &Relay) -> Value {
    let counts = relay.store.count_hosts_by_status().await.unwrap_or_default();
    let by_status: serde_json::Map<String, Value> = HostStatus::ALL
        .into_iter()
        .map(|status| (status.as_str().to_string(), json!(counts.get(&status).copied().unwrap_or(0))))
        .collect();
    json!({
        "known": counts.values().sum::<i64>(),
        "subscribed": relay.hosts.running_count(),
        "connected": relay.hosts.connected(),
        "byStatus": by_status,
    })
}

fn coverage(relay: &Relay) -> Value {
    relay
        .coverage
        .snapshot()
        .into_iter()
        .map(|(reference, ratio, low_samples)| {
            let commits = relay.metrics.coverage_reference_commits.with_label_values(&[&reference]).get();
            json!({
                "reference": reference,
                "basisPoints": ratio.map(|r| (r.clamp(0.0, 1.0) * 10_000.0).round() as u32),
                "referenceCommits": commits,
                "lowSamples": low_samples,
            })
        })
        .collect()
}

fn collections(relay: &Relay) -> Value {
    let Some(directory) = &relay.collections else {
        return json!({ "enabled": false });
    };
    let metrics = &directory.metrics;
    json!({
        "enabled": true,
        "count": metrics.collections.get(),
        "pairs": metrics.pairs.get(),
        "pendingVerification": metrics.pending.get(),
        "indexedSeq": metrics.indexed_seq.get(),
    })
}

async fn backfill(relay: &Relay) -> Value {
    let Some(directory) = &relay.collections else {
        return Value::Null;
    };
    let running = |kind: &str| directory.running_jobs().iter().any(|job| job.kind == kind);
    let (mut done, mut total, mut imported) = (0u64, 0u64, 0i64);
    for (kind, source) in relay.store.running_backfills().await.unwrap_or_default() {
        if kind != "import" {
            continue;
        }
        for progress in relay.store.import_progress(&source).await.unwrap_or_default() {
            total += 1;
            done += u64::from(progress.done);
            imported += progress.imported;
        }
    }
    let crawl = relay.store.all_crawl_progress().await.unwrap_or_default();
    json!({
        "import": {
            "running": running("import"),
            "collectionsDone": done,
            "collectionsTotal": total,
            "imported": imported,
        },
        "crawl": {
            "running": running("crawl"),
            "hostsDone": crawl.iter().filter(|host| host.done).count(),
            "hostsTotal": crawl.len(),
            "reposFound": crawl.iter().map(|host| host.repos).sum::<i64>(),
        },
    })
}
