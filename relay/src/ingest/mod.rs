//! Ingest stage: one `subscribeRepos` WebSocket per upstream host.
//!
//! Each subscription resumes from the host's persisted cursor, enforces the 5 MB frame
//! limit and strictly increasing upstream seq, and hands events to the validation stage,
//! waiting for queue budget (backpressure slows a host down; nothing is dropped). On
//! failure it reconnects with exponential backoff and jitter; a host that keeps failing
//! is marked `offline` and retried on a slow schedule, never given up.

pub mod crawl;

use crate::app::Relay;
use crate::atproto::frame::{self, Event, MAX_FRAME_BYTES};
use crate::storage::Host;
use futures_util::StreamExt;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Failures in a row before a host is marked offline.
const OFFLINE_AFTER_FAILURES: u32 = 8;

/// A running subscription.
pub struct HostHandle {
    stop: watch::Sender<bool>,
    connected: Arc<AtomicBool>,
    pub hostname: String,
    pub last_seq: Arc<AtomicI64>,
}

impl HostHandle {
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

pub fn spawn_subscription(relay: Arc<Relay>, host: Host) -> HostHandle {
    let (stop, stop_rx) = watch::channel(false);
    let connected = Arc::new(AtomicBool::new(false));
    let last_seq = Arc::new(AtomicI64::new(host.last_seq));
    let handle = HostHandle {
        stop,
        connected: connected.clone(),
        hostname: host.hostname.clone(),
        last_seq: last_seq.clone(),
    };
    tokio::spawn(run(relay, host, stop_rx, connected, last_seq));
    handle
}

fn backoff(failures: u32, max: Duration) -> Duration {
    let base = Duration::from_millis(500).saturating_mul(1u32 << failures.min(16));
    let capped = base.min(max);
    // Jitter in [0.5, 1.5) so thousands of hosts do not reconnect in lockstep.
    capped.mul_f64(0.5 + fastrand::f64())
}

async fn run(
    relay: Arc<Relay>,
    host: Host,
    mut stop: watch::Receiver<bool>,
    connected: Arc<AtomicBool>,
    last_seq: Arc<AtomicI64>,
) {
    let mut failures = 0u32;
    let mut use_cursor = true;
    loop {
        if *stop.borrow() {
            break;
        }
        let outcome = tokio::select! {
            outcome = subscribe_once(&relay, &host, &connected, &last_seq, use_cursor) => outcome,
            _ = stop.changed() => break,
        };
        connected.store(false, Ordering::Relaxed);
        relay.metrics.hosts_connected.set(count_connected(&relay));
        save_cursor(&relay, &host, &last_seq).await;
        match outcome {
            Ended::FutureCursor => {
                // The upstream's sequence is behind our cursor (it was reset): start live.
                tracing::warn!(host = %host.hostname, "upstream says our cursor is in the future; reconnecting without a cursor");
                last_seq.store(0, Ordering::Relaxed);
                use_cursor = false;
                failures = 0;
            }
            Ended::Clean => failures = 0,
            Ended::Failed(error) => {
                failures += 1;
                tracing::info!(host = %host.hostname, failures, %error, "upstream subscription ended");
                if failures == OFFLINE_AFTER_FAILURES {
                    let _ = relay.store.set_host_status(host.id, "offline").await;
                    relay.refresh_host_metrics().await;
                }
            }
        }
        let delay = backoff(failures, relay.config.max_backoff);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => break,
        }
    }
    connected.store(false, Ordering::Relaxed);
    save_cursor(&relay, &host, &last_seq).await;
}

fn count_connected(relay: &Relay) -> i64 {
    relay
        .hosts
        .lock()
        .map(|h| h.values().filter(|h| h.is_connected()).count() as i64)
        .unwrap_or(0)
}

async fn save_cursor(relay: &Relay, host: &Host, last_seq: &AtomicI64) {
    let seq = last_seq.load(Ordering::Relaxed);
    if seq > 0 {
        if let Err(error) = relay.store.save_host_cursor(host.id, seq).await {
            tracing::warn!(host = %host.hostname, %error, "saving upstream cursor");
        }
    }
}

enum Ended {
    Clean,
    FutureCursor,
    Failed(String),
}

async fn subscribe_once(
    relay: &Arc<Relay>,
    host: &Host,
    connected: &AtomicBool,
    last_seq: &AtomicI64,
    use_cursor: bool,
) -> Ended {
    let scheme = if host.ssl { "wss" } else { "ws" };
    let cursor = last_seq.load(Ordering::Relaxed);
    let mut url = format!(
        "{scheme}://{}/xrpc/com.atproto.sync.subscribeRepos",
        host.hostname
    );
    if use_cursor && cursor > 0 {
        url.push_str(&format!("?cursor={cursor}"));
    }
    let mut ws_config = WebSocketConfig::default();
    ws_config.max_message_size = Some(MAX_FRAME_BYTES);
    ws_config.max_frame_size = Some(MAX_FRAME_BYTES);
    let connect =
        tokio_tungstenite::connect_async_with_config(url.as_str(), Some(ws_config), false);
    let (mut socket, _) = match tokio::time::timeout(Duration::from_secs(30), connect).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(error)) => return Ended::Failed(format!("connect: {error}")),
        Err(_) => return Ended::Failed("connect timed out".into()),
    };
    connected.store(true, Ordering::Relaxed);
    relay.metrics.hosts_connected.set(count_connected(relay));
    if let Ok(Some(stored)) = relay.store.host_by_id(host.id).await {
        if stored.status == "offline" || stored.status == "idle" {
            let _ = relay.store.set_host_status(host.id, "active").await;
            relay.refresh_host_metrics().await;
        }
    }
    let hostname: Arc<str> = Arc::from(host.hostname.as_str());
    let mut last_save = std::time::Instant::now();
    // An idle upstream is normal; a dead TCP connection is caught by this read timeout.
    let idle_timeout = Duration::from_secs(600);
    loop {
        let message = match tokio::time::timeout(idle_timeout, socket.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(error))) => return Ended::Failed(format!("read: {error}")),
            Ok(None) => return Ended::Clean,
            Err(_) => return Ended::Failed("no data for 10 minutes".into()),
        };
        let bytes = match message {
            Message::Binary(bytes) => bytes,
            Message::Close(_) => return Ended::Clean,
            _ => continue,
        };
        let event = match frame::decode(&bytes) {
            Ok(event) => event,
            Err(error) => {
                relay
                    .metrics
                    .rejections
                    .with_label_values(&["bad_frame"])
                    .inc();
                // Invalid framing is a protocol error: drop the connection (event-stream spec).
                return Ended::Failed(format!("undecodable frame: {error}"));
            }
        };
        let seq = match &event {
            Event::Error(body) if body.error == "FutureCursor" => return Ended::FutureCursor,
            Event::Error(body) => return Ended::Failed(format!("upstream error {}", body.error)),
            Event::Info(info) => {
                tracing::info!(host = %host.hostname, name = %info.name, "upstream #info");
                continue;
            }
            Event::Unknown { .. } => continue,
            other => other.seq().unwrap_or(0),
        };
        relay
            .metrics
            .events_in
            .with_label_values(&[event.type_name()])
            .inc();
        let previous = last_seq.load(Ordering::Relaxed);
        if seq <= previous {
            relay
                .metrics
                .rejections
                .with_label_values(&["seq_not_increasing"])
                .inc();
            continue;
        }
        last_seq.store(seq, Ordering::Relaxed);
        relay
            .validation
            .submit(host.id, hostname.clone(), event, bytes.len())
            .await;
        if last_save.elapsed() > Duration::from_secs(5) {
            last_save = std::time::Instant::now();
            let _ = relay.store.save_host_cursor(host.id, seq).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let max = Duration::from_secs(300);
        assert!(backoff(0, max) < Duration::from_secs(1));
        assert!(backoff(3, max) >= Duration::from_secs(2));
        for _ in 0..100 {
            assert!(backoff(30, max) < Duration::from_secs(451));
        }
    }
}
