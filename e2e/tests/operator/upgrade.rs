//! The upgrade step: a firehose consumer reads the relay through its Service while the
//! Relay's image changes, and keeps its place. The consumer finds the relay the way a Service
//! proxy would, among the Service's ready, non-terminating pods, so the pod's readiness
//! probe decides when it gets traffic; on any disconnect it reconnects with its last seq as
//! the cursor. Afterwards the relay's own log, replayed from before the first event the
//! consumer saw, must equal what the consumer got: no gap, no duplicate. The seconds without
//! service are measured and printed, with the time from the new pod's start to serving.
//!
//! The new image is another tag of the same repository, which the test node agent maps to
//! the same image archive (or binary): the StatefulSet's template changes, so the pod is
//! really replaced (new uid, new IP, SIGTERM to the old relay), which is what an upgrade
//! does to consumers. Also checked: the grace period, preStop and `RELAY_SHUTDOWN_TIMEOUT`
//! agree, and the old relay ended on SIGTERM with exit code 0 within its shutdown bound,
//! and the new one found no torn write at the end of its log.

use super::*;
use futures_util::StreamExt;
use relay::atproto::frame;
use std::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

/// The tag the Relay is upgraded to (the node agent runs every `ghcr.io/atrelay/relay:` tag
/// from the same archive).
const UPGRADED_IMAGE: &str = "ghcr.io/atrelay/relay:0.1.0-upgrade";
/// The issue's bound on the time from pod start to serving.
const START_TO_SERVING_LIMIT: Duration = Duration::from_secs(10);
/// How often a disconnected consumer looks for a ready endpoint again.
const RECONNECT_DELAY: Duration = Duration::from_millis(100);

/// What the consumer saw.
#[derive(Default)]
struct Seen {
    seqs: Vec<i64>,
    /// Per connection: the endpoint and when it was established.
    connections: Vec<(String, Instant)>,
    /// Per lost connection: when it was lost, when the next one was established, and when
    /// the next event arrived.
    outages: Vec<Outage>,
    errors: Vec<String>,
}

#[derive(Clone, Copy)]
struct Outage {
    lost: Instant,
    reconnected: Option<Instant>,
    first_event: Option<Instant>,
}

/// The address of a ready endpoint of the relay's public Service, as a Service proxy would
/// pick it: a pod the Service selects that passes its readiness probe and is not terminating
/// (what the endpoints controller publishes; read from the pods directly, so the test does
/// not also depend on that controller's timing).
async fn ready_endpoint(client: &Client) -> anyhow::Result<Option<String>> {
    let service = Api::<Service>::namespaced(client.clone(), NS).get(RELAY).await?;
    let selector =
        service.spec.and_then(|s| s.selector).ok_or_else(|| anyhow!("the Service has no selector"))?;
    let labels: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let pods = Api::<Pod>::namespaced(client.clone(), NS)
        .list(&ListParams::default().labels(&labels.join(",")))
        .await?;
    Ok(pods.items.into_iter().find_map(|pod| {
        if pod.metadata.deletion_timestamp.is_some() {
            return None;
        }
        let status = pod.status?;
        let ready = status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
        ready.then_some(status.pod_ip).flatten()
    }))
}

fn lock(seen: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn consume(client: Client, seen: Arc<Mutex<Seen>>, stop: Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::Ordering;
    while !stop.load(Ordering::Relaxed) {
        let endpoint = match ready_endpoint(&client).await {
            Ok(Some(ip)) => ip,
            Ok(None) => {
                tokio::time::sleep(RECONNECT_DELAY).await;
                continue;
            }
            Err(error) => {
                lock(&seen).errors.push(format!("endpoints: {error}"));
                tokio::time::sleep(RECONNECT_DELAY).await;
                continue;
            }
        };
        let cursor = lock(&seen).seqs.last().copied();
        let mut url = format!("ws://{endpoint}:2470/xrpc/com.atproto.sync.subscribeRepos");
        if let Some(cursor) = cursor {
            url.push_str(&format!("?cursor={cursor}"));
        }
        let dial = tokio::time::timeout(Duration::from_secs(2), tokio_tungstenite::connect_async(url)).await;
        let mut socket = match dial {
            Ok(Ok((socket, _))) => socket,
            Ok(Err(error)) => {
                lock(&seen).errors.push(format!("connect {endpoint}: {error}"));
                tokio::time::sleep(RECONNECT_DELAY).await;
                continue;
            }
            Err(_) => {
                lock(&seen).errors.push(format!("connect {endpoint}: timed out"));
                continue;
            }
        };
        {
            let mut seen = lock(&seen);
            let now = Instant::now();
            seen.connections.push((endpoint.clone(), now));
            if let Some(outage) = seen.outages.last_mut().filter(|o| o.reconnected.is_none()) {
                outage.reconnected = Some(now);
            }
        }
        while !stop.load(Ordering::Relaxed) {
            let message = match tokio::time::timeout(Duration::from_millis(500), socket.next()).await {
                Err(_) => continue,
                Ok(message) => message,
            };
            let bytes = match message {
                Some(Ok(Message::Binary(bytes))) => bytes,
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => continue,
                Some(Err(error)) => {
                    lock(&seen).errors.push(format!("read from {endpoint}: {error}"));
                    break;
                }
            };
            let seq = match frame::decode(&bytes) {
                Ok(event) => event.seq(),
                Err(error) => {
                    lock(&seen).errors.push(format!("frame from {endpoint}: {error}"));
                    None
                }
            };
            if let Some(seq) = seq {
                let mut seen = lock(&seen);
                seen.seqs.push(seq);
                let now = Instant::now();
                if let Some(outage) = seen.outages.last_mut().filter(|o| o.first_event.is_none()) {
                    outage.first_event = Some(now);
                }
            }
        }
        if !stop.load(Ordering::Relaxed) {
            lock(&seen).outages.push(Outage { lost: Instant::now(), reconnected: None, first_event: None });
        }
    }
}

/// Every seq in the relay's log after `cursor` up to `last`, read by a fresh replay.
async fn replay(endpoint: &str, cursor: i64, last: i64) -> anyhow::Result<Vec<i64>> {
    let url = format!("ws://{endpoint}:2470/xrpc/com.atproto.sync.subscribeRepos?cursor={cursor}");
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.context("replay connection")?;
    let mut seqs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seqs.last().is_none_or(|seq| *seq < last) {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(left, socket.next())
            .await
            .map_err(|_| anyhow!("the replay reached seq {:?}, not {last}, within 60 s", seqs.last()))?;
        match message {
            Some(Ok(Message::Binary(bytes))) => {
                if let Some(seq) = frame::decode(&bytes)?.seq() {
                    seqs.push(seq);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => bail!("replay read: {error}"),
            None => bail!("the replay connection closed at seq {:?}", seqs.last()),
        }
    }
    seqs.retain(|seq| *seq <= last);
    Ok(seqs)
}

/// The grace period, preStop and the relay's shutdown bound agree: SIGTERM comes after
/// preStop, and the relay's ordered shutdown ends before the kubelet's SIGKILL.
fn shutdown_bounds(sts: &StatefulSet) -> anyhow::Result<(i64, Duration)> {
    let pod = sts.spec.template.spec.clone().ok_or_else(|| anyhow!("no pod spec"))?;
    let grace =
        pod.termination_grace_period_seconds.ok_or_else(|| anyhow!("no terminationGracePeriodSeconds"))?;
    let container = pod.containers.first().ok_or_else(|| anyhow!("no container"))?;
    let timeout = container
        .env
        .iter()
        .flatten()
        .find(|v| v.name == "RELAY_SHUTDOWN_TIMEOUT")
        .and_then(|v| v.value.clone())
        .ok_or_else(|| anyhow!("no RELAY_SHUTDOWN_TIMEOUT in the relay container"))?;
    let seconds: i64 = timeout
        .strip_suffix('s')
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("RELAY_SHUTDOWN_TIMEOUT={timeout} is not whole seconds"))?;
    // A preStop hook runs before SIGTERM and counts against the same grace period.
    let pre_stop = match container.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) {
        None => 0,
        Some(hook) => match &hook.sleep {
            Some(sleep) => sleep.seconds,
            None => bail!("a preStop hook other than sleep: its duration cannot be checked"),
        },
    };
    if pre_stop + seconds >= grace {
        bail!("preStop {pre_stop}s + RELAY_SHUTDOWN_TIMEOUT {seconds}s does not end before the grace period {grace}s");
    }
    println!("   grace period {grace}s, preStop {pre_stop}s, RELAY_SHUTDOWN_TIMEOUT {seconds}s");
    Ok((grace, Duration::from_secs(seconds as u64)))
}

pub(super) async fn upgrade_keeps_consumers_place(env: &mut Env) -> anyhow::Result<()> {
    let (_, shutdown_timeout) = shutdown_bounds(&env.statefulset().await?)?;
    let old_pod = env.pod("relay-0", NS).await?.ok_or_else(|| anyhow!("no relay-0"))?;
    let old_uid = old_pod.uid().ok_or_else(|| anyhow!("relay-0 has no uid"))?;
    let old_ip = old_pod.status.and_then(|s| s.pod_ip).unwrap_or_default();

    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let consumer = tokio::spawn(consume(env.client.clone(), seen.clone(), stop.clone()));
    let count = |seen: &Arc<Mutex<Seen>>| seen.lock().map(|s| s.seqs.len()).unwrap_or(0);
    eventually("the consumer to read 20 events through the Service", Duration::from_secs(60), || async {
        if count(&seen) >= 20 {
            return Ok(Some(()));
        }
        let seen = lock(&seen);
        Err(anyhow!(
            "{} events, connections {:?}, last errors {:?}",
            seen.seqs.len(),
            seen.connections.iter().map(|c| &c.0).collect::<Vec<_>>(),
            seen.errors.iter().rev().take(3).collect::<Vec<_>>()
        ))
    })
    .await?;

    patch_relay(env, format!(r#"{{"spec":{{"image":"{UPGRADED_IMAGE}"}}}}"#)).await?;
    let new_pod = eventually("a new relay-0 running the new image", Duration::from_secs(120), || async {
        let Some(pod) = env.pod("relay-0", NS).await? else { return Ok(None) };
        let fresh = pod.uid().as_deref() != Some(old_uid.as_str());
        let image = pod.spec.as_ref().and_then(|s| s.containers.first()).and_then(|c| c.image.clone());
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        Ok((fresh && ready && image.as_deref() == Some(UPGRADED_IMAGE)).then_some(pod))
    })
    .await?;
    let new_ip = new_pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default();
    // Events from the new relay, read over a connection to it.
    let after = count(&seen) + 20;
    eventually("the consumer to read 20 more events from the new pod", Duration::from_secs(60), || async {
        let on_new = seen.lock().map(|s| s.connections.iter().any(|(ip, _)| *ip == new_ip)).unwrap_or(false);
        Ok((on_new && count(&seen) >= after).then_some(()))
    })
    .await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    consumer.await?;

    // The consumer has stopped: its record is taken out of the lock (the checks below await).
    let seen = std::mem::take(&mut *lock(&seen));
    let seqs = &seen.seqs;
    if let Some(pair) = seqs.windows(2).find(|pair| pair[1] <= pair[0]) {
        bail!("the consumer saw seq {} after {}: a duplicate or out of order", pair[1], pair[0]);
    }
    let (first, last) = (seqs[0], seqs[seqs.len() - 1]);
    let log = replay(&new_ip, first - 1, last).await?;
    if log != *seqs {
        let missing: Vec<i64> =
            log.iter().filter(|seq| seqs.binary_search(seq).is_err()).take(10).copied().collect();
        bail!(
            "the consumer's {} events differ from the relay's log over {first}..={last} ({} events); missing e.g. {missing:?}",
            seqs.len(),
            log.len()
        );
    }
    let outage = seen.outages.iter().find(|o| o.reconnected.is_some()).copied().ok_or_else(|| {
        anyhow!("the consumer was never disconnected: was the pod replaced? ({:?})", seen.errors)
    })?;
    let reconnected = outage.reconnected.map(|at| at - outage.lost).unwrap_or_default();
    let first_event = outage.first_event.map(|at| at - outage.lost).unwrap_or_default();

    // The new pod: from its container's start to Ready (its readiness probe, /_serving).
    let status = new_pod.status.clone().unwrap_or_default();
    let started = status
        .container_statuses
        .iter()
        .flatten()
        .find_map(|c| c.state.as_ref()?.running.as_ref()?.started_at.clone())
        .ok_or_else(|| anyhow!("the new pod's container has no start time"))?;
    let ready_at = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .and_then(|c| c.last_transition_time.clone())
        .ok_or_else(|| anyhow!("the new pod has no Ready time"))?;
    let start_to_serving = Duration::try_from(ready_at.0.duration_since(started.0)).unwrap_or_default();

    // The old relay: ended by SIGTERM with exit code 0, inside its shutdown bound.
    let exit_file = env.work.join("node/pods").join(&old_uid).join("relay.exit");
    let ended: Value = serde_json::from_str(&std::fs::read_to_string(&exit_file).with_context(|| {
        format!("{} (the node agent writes how a stopped container ended)", exit_file.display())
    })?)?;
    if ended["code"] != 0 {
        bail!("the old relay did not exit 0 on SIGTERM: {ended}");
    }
    let shutdown = ended["secondsAfterSigterm"].as_f64().unwrap_or(f64::MAX);
    if shutdown >= shutdown_timeout.as_secs_f64() {
        bail!("the old relay took {shutdown:.1}s to stop, beyond RELAY_SHUTDOWN_TIMEOUT");
    }
    let new_log = env.work.join("node/pods").join(new_pod.uid().unwrap_or_default()).join("relay.log");
    let new_log = std::fs::read_to_string(&new_log).unwrap_or_default();
    if new_log.contains("torn tail") {
        bail!("the new relay found a torn write at the end of the event log: SIGTERM cut a write");
    }
    println!(
        "   pod {old_ip} -> {new_ip}; {} events, seq {first}..={last}, equal to the relay's log (no gap, no duplicate)",
        seqs.len()
    );
    println!(
        "   without service: {:.2}s until reconnected, {:.2}s until the next event; old relay exited 0 {shutdown:.2}s after SIGTERM; new pod start to serving {:.1}s",
        reconnected.as_secs_f64(),
        first_event.as_secs_f64(),
        start_to_serving.as_secs_f64()
    );
    if start_to_serving > START_TO_SERVING_LIMIT {
        bail!(
            "the new pod took {start_to_serving:?} from start to serving (limit {START_TO_SERVING_LIMIT:?})"
        );
    }
    Ok(())
}
