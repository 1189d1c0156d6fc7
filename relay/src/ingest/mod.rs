//! Ingest stage: one `subscribeRepos` WebSocket per upstream host.
//!
//! Each subscription resumes from the host's persisted cursor, enforces the 5 MB frame
//! limit and strictly increasing upstream seq, and hands events to the validation stage,
//! waiting for queue budget (backpressure slows a host down; nothing is dropped). On
//! failure it reconnects with exponential backoff and jitter; a host that keeps failing
//! is marked `offline` and retried on a slow schedule, never given up.

pub mod bootstrap;
pub mod crawl;
pub mod registry;

pub use crate::progress::{HostProgress, InFlight};
pub use registry::HostRegistry;

use crate::atproto::frame::{self, Event, MAX_FRAME_BYTES};
use crate::identity::ssrf::SsrfPolicy;
use crate::storage::{Host, HostStatus};
use futures_util::StreamExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Read buffer per upstream socket.
const UPSTREAM_READ_BUFFER: usize = 16 * 1024;

/// Longest piece of upstream text (an `#info` message, an `#error` name) put in a log line.
const MAX_LOGGED_UPSTREAM_CHARS: usize = 256;

/// Log lines about one host's frames per minute; the rest are counted, not written.
const UPSTREAM_LOG_LINES_PER_MINUTE: f64 = 10.0;

/// Failures in a row before a host is marked offline.
const OFFLINE_AFTER_FAILURES: u32 = 8;

/// A running subscription.
pub struct HostHandle {
    stop: watch::Sender<bool>,
    /// The subscription task; it saves the host's cursor as it ends.
    task: tokio::task::JoinHandle<()>,
    connected: Arc<AtomicBool>,
    pub hostname: String,
    pub progress: Arc<HostProgress>,
}

impl HostHandle {
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Stops the subscription and waits until its task has ended (and saved its cursor).
    pub async fn stop_and_wait(self) {
        self.stop();
        let _ = self.task.await;
    }
}

pub(crate) fn spawn_subscription(hosts: Arc<HostRegistry>, host: Host) -> HostHandle {
    let (stop, stop_rx) = watch::channel(false);
    let connected = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(HostProgress::new(host.last_seq));
    let hostname = host.hostname.clone();
    let task = tokio::spawn(run(hosts, host, stop_rx, connected.clone(), progress.clone()));
    HostHandle { stop, task, connected, hostname, progress }
}

fn backoff(failures: u32, max: Duration) -> Duration {
    let base = Duration::from_millis(500).saturating_mul(1u32 << failures.min(16));
    let capped = base.min(max);
    // Jitter in [0.5, 1.5) so thousands of hosts do not reconnect in lockstep.
    capped.mul_f64(0.5 + fastrand::f64())
}

async fn run(
    hosts: Arc<HostRegistry>,
    host: Host,
    mut stop: watch::Receiver<bool>,
    connected: Arc<AtomicBool>,
    progress: Arc<HostProgress>,
) {
    let mut failures = 0u32;
    let mut use_cursor = true;
    loop {
        if *stop.borrow() {
            break;
        }
        // Not raced against `stop`: the subscription watches it itself, at points where no
        // event is half handed over (dropping it while it waits to queue an event would mark
        // that event done without it ever reaching the log).
        let outcome = subscribe_once(&hosts, &host, &connected, &progress, use_cursor, &mut stop).await;
        connected.store(false, Ordering::Relaxed);
        hosts.metrics.hosts_connected.set(count_connected(&hosts));
        save_cursor(&hosts, &host, &progress).await;
        match outcome {
            Ended::FutureCursor => {
                // The upstream's sequence is behind our cursor (it was reset): start live.
                tracing::warn!(host = %host.hostname, "upstream says our cursor is in the future; reconnecting without a cursor");
                progress.reset(0);
                use_cursor = false;
                failures = 0;
            }
            Ended::Clean => failures = 0,
            Ended::Stopped => break,
            Ended::Failed(error) => {
                failures += 1;
                tracing::info!(host = %host.hostname, failures, %error, "upstream subscription ended");
                if failures == OFFLINE_AFTER_FAILURES {
                    let _ = hosts.store.set_host_status(host.id, HostStatus::Offline).await;
                    hosts.refresh_host_metrics().await;
                }
            }
        }
        let delay = backoff(failures, hosts.config.max_backoff);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => break,
        }
    }
    connected.store(false, Ordering::Relaxed);
    save_cursor(&hosts, &host, &progress).await;
}

fn count_connected(hosts: &HostRegistry) -> i64 {
    hosts.connected() as i64
}

async fn save_cursor(hosts: &HostRegistry, host: &Host, progress: &HostProgress) {
    let seq = progress.durable_cursor();
    if seq > 0 {
        match hosts.store.save_host_cursors(&[(host.id, seq)]).await {
            Ok(()) => {
                progress.saved.fetch_max(seq, Ordering::Relaxed);
            }
            Err(error) => tracing::warn!(host = %host.hostname, %error, "saving upstream cursor"),
        }
    }
}

/// How soon a host's first cursor is saved.
const FIRST_SAVE_PERIOD: Duration = Duration::from_millis(50);

/// Saves every host's durable cursor that moved, all in one transaction per round: with
/// thousands of hosts, one write per host per second would keep SQLite's single writer
/// busy with little else. A host with no saved cursor yet is saved within
/// `FIRST_SAVE_PERIOD`: until then a restart would subscribe to it live-only and miss what
/// it sent meanwhile.
pub(crate) async fn flush_cursors(hosts: Arc<HostRegistry>) {
    let interval = hosts.config.cursor_flush_interval.max(FIRST_SAVE_PERIOD);
    let mut ticker = tokio::time::interval(FIRST_SAVE_PERIOD);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_full = tokio::time::Instant::now();
    loop {
        ticker.tick().await;
        let full = last_full.elapsed() >= interval;
        if full {
            last_full = tokio::time::Instant::now();
        }
        let moved = hosts.progress_of_all().into_iter().filter(|(_, progress)| full || progress.saved() == 0);
        save_moved_cursors(&hosts, moved.collect()).await;
    }
}

/// Saves, in one transaction, the durable cursor of each host whose cursor moved since it
/// was last saved.
pub(crate) async fn save_moved_cursors(hosts: &HostRegistry, progress: Vec<(i64, Arc<HostProgress>)>) {
    let moved: Vec<(i64, i64, Arc<HostProgress>)> = progress
        .into_iter()
        .filter_map(|(id, progress)| {
            let durable = progress.durable_cursor();
            (durable > progress.saved()).then_some((id, durable, progress))
        })
        .collect();
    if moved.is_empty() {
        return;
    }
    let cursors: Vec<(i64, i64)> = moved.iter().map(|(id, seq, _)| (*id, *seq)).collect();
    match hosts.store.save_host_cursors(&cursors).await {
        Ok(()) => {
            for (_, seq, progress) in &moved {
                progress.saved.fetch_max(*seq, Ordering::Relaxed);
            }
            hosts.metrics.cursor_flushes.inc();
        }
        Err(error) => tracing::warn!(%error, hosts = cursors.len(), "saving upstream cursors"),
    }
}

enum Ended {
    Clean,
    /// The registry stopped this subscription (unsubscribed, or the relay is shutting down).
    Stopped,
    FutureCursor,
    Failed(String),
}

async fn subscribe_once(
    hosts: &Arc<HostRegistry>,
    host: &Host,
    connected: &AtomicBool,
    progress: &Arc<HostProgress>,
    use_cursor: bool,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    let scheme = if host.ssl { "wss" } else { "ws" };
    // Events still in the pipeline will be processed: resume after the last one received.
    let cursor = progress.received();
    let mut url = format!("{scheme}://{}/xrpc/com.atproto.sync.subscribeRepos", host.hostname);
    if use_cursor && cursor > 0 {
        url.push_str(&format!("?cursor={cursor}"));
    }
    let mut ws_config = WebSocketConfig::default();
    ws_config.max_message_size = Some(MAX_FRAME_BYTES);
    ws_config.max_frame_size = Some(MAX_FRAME_BYTES);
    // tungstenite zeroes a read chunk of this size for every read: its 128 KiB default costs
    // both CPU and, times thousands of hosts, hundreds of MiB.
    ws_config.read_buffer_size = UPSTREAM_READ_BUFFER;
    ws_config.write_buffer_size = 0;
    let connect_timeout = hosts.config.upstream_connect_timeout;
    let connect = async {
        // Through the SSRF guard: the address checked is the address dialled, whatever DNS
        // says by now (a name probed earlier may have been re-pointed at an internal one).
        let (name, port) = split_host_port(&host.hostname, host.ssl);
        let policy = SsrfPolicy { allow_loopback: hosts.config.allow_insecure_hosts };
        let stream = crate::identity::ssrf::connect_guarded(policy, name, port, connect_timeout)
            .await
            .map_err(|e| e.to_string())?;
        tokio_tungstenite::client_async_tls_with_config(url.as_str(), stream, Some(ws_config), None)
            .await
            .map_err(|e| e.to_string())
    };
    let connecting = tokio::select! {
        connecting = tokio::time::timeout(connect_timeout, connect) => connecting,
        _ = stop.changed() => return Ended::Stopped,
    };
    let (mut socket, _) = match connecting {
        Ok(Ok(pair)) => pair,
        Ok(Err(error)) => return Ended::Failed(format!("connect: {error}")),
        Err(_) => return Ended::Failed("connect timed out".into()),
    };
    connected.store(true, Ordering::Relaxed);
    hosts.metrics.hosts_connected.set(count_connected(hosts));
    if let Ok(Some(stored)) = hosts.store.host_by_id(host.id).await {
        if stored.status == HostStatus::Offline || stored.status == HostStatus::Idle {
            let _ = hosts.store.set_host_status(host.id, HostStatus::Active).await;
            hosts.refresh_host_metrics().await;
        }
    }
    let hostname: Arc<str> = Arc::from(host.hostname.as_str());
    let rate = if host.trusted {
        hosts.config.trusted_host_events_per_second
    } else {
        hosts.config.host_events_per_second
    };
    let mut limiter = RateLimiter::new(rate);
    let lookup_rate = if host.trusted {
        hosts.config.trusted_host_identity_lookups_per_second
    } else {
        hosts.config.host_identity_lookups_per_second
    };
    let mut lookups = RateLimiter::new(lookup_rate);
    let mut log_lines = LogLines::new();
    // An idle upstream is normal; a dead TCP connection is caught by this read timeout.
    let idle_timeout = hosts.config.upstream_read_timeout;
    let mut last_read = tokio::time::Instant::now();
    // Cursors are saved for all hosts together (`flush_cursors`); this timer only notices a
    // dead connection. One timer for the whole subscription, not a new one per event.
    let check_period = Duration::from_secs(10);
    let idle_check = tokio::time::sleep(check_period);
    tokio::pin!(idle_check);
    loop {
        let next = tokio::select! {
            next = socket.next() => next,
            _ = stop.changed() => return Ended::Stopped,
            _ = &mut idle_check => {
                idle_check.as_mut().reset(tokio::time::Instant::now() + check_period);
                if last_read.elapsed() > idle_timeout {
                    return Ended::Failed(format!("no data for {}s", idle_timeout.as_secs()));
                }
                continue;
            }
        };
        last_read = tokio::time::Instant::now();
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(error))) => {
                hosts.metrics.rejections.with_label_values(&["oversize_frame"]).inc();
                return Ended::Failed(format!("oversize frame: {error}"));
            }
            Some(Err(error)) => return Ended::Failed(format!("read: {error}")),
            None => return Ended::Clean,
        };
        let bytes = match message {
            Message::Binary(bytes) => bytes,
            Message::Close(_) => return Ended::Clean,
            _ => continue,
        };
        let event = match frame::decode(&bytes) {
            Ok(event) => event,
            Err(frame::FrameError::FieldLimit { seq: Some(seq), field, .. }) => {
                // Well framed, but one field over its lexicon limit: drop this event and
                // move past it. Dropping the connection would resume before it, and the
                // host would send the same event again forever.
                hosts.metrics.rejections.with_label_values(&["oversize"]).inc();
                if seq > progress.received() {
                    drop(progress.start(seq));
                }
                tracing::debug!(host = %host.hostname, seq, field, "dropped an event over a field limit");
                continue;
            }
            Err(frame::FrameError::UnknownOp(_)) => {
                // A frame kind this relay does not know: ignored like an unknown type.
                hosts.metrics.rejections.with_label_values(&["unknown_type"]).inc();
                continue;
            }
            Err(error) => {
                hosts.metrics.rejections.with_label_values(&["bad_frame"]).inc();
                // Invalid framing is a protocol error: drop the connection (event-stream spec).
                return Ended::Failed(format!("undecodable frame: {error}"));
            }
        };
        // Every frame, relayed or not, goes through the host's event rate: a flood of
        // `#info` or unknown frames slows the host down like any other.
        let throttled = tokio::select! {
            throttled = limiter.take() => throttled,
            _ = stop.changed() => return Ended::Stopped,
        };
        if throttled {
            hosts.metrics.host_throttled.inc();
        }
        let seq = match &event {
            Event::Error(body) if body.error == "FutureCursor" => return Ended::FutureCursor,
            Event::Error(body) => {
                hosts.metrics.rejections.with_label_values(&["upstream_error"]).inc();
                return Ended::Failed(format!("upstream error {}", clip(&body.error)));
            }
            Event::Info(info) => {
                hosts.metrics.rejections.with_label_values(&["upstream_info"]).inc();
                if log_lines.allow(hosts) {
                    let message = info.message.as_deref().map(clip).unwrap_or_default();
                    tracing::info!(host = %host.hostname, name = %clip(&info.name), %message, "upstream #info");
                }
                continue;
            }
            Event::Unknown { .. } => {
                hosts.metrics.rejections.with_label_values(&["unknown_type"]).inc();
                continue;
            }
            other => other.seq().unwrap_or(0),
        };
        hosts.metrics.events_in_by_type.inc(event.type_name());
        if seq <= progress.received() {
            hosts.metrics.rejections.with_label_values(&["seq_not_increasing"]).inc();
            continue;
        }
        if needs_identity_lookup(hosts, &event) {
            let throttled = tokio::select! {
                throttled = lookups.take() => throttled,
                _ = stop.changed() => return Ended::Stopped,
            };
            if throttled {
                hosts.metrics.host_identity_throttled.inc();
            }
        }
        // From here the event is in flight: nothing below returns before it is queued.
        let in_flight = progress.start(seq);
        if progress.idle.swap(false, Ordering::Relaxed) {
            let _ = hosts.store.set_host_status(host.id, HostStatus::Active).await;
            hosts.refresh_host_metrics().await;
        }
        if hosts.validation.submit(host.id, hostname.clone(), event, bytes.len(), in_flight).await.is_err() {
            // Shutting down: the event stays unconsumed (its seq is not durable), so the
            // host sends it again after the restart.
            return Ended::Clean;
        }
    }
}

/// Host name and port of a stored hostname (`name`, `name:port`), with the scheme's default.
fn split_host_port(hostname: &str, ssl: bool) -> (&str, u16) {
    let default = if ssl { 443 } else { 80 };
    match hostname.rsplit_once(':') {
        Some((name, port)) if !name.ends_with(':') => (name, port.parse().unwrap_or(default)),
        _ => (hostname, default),
    }
}

/// Whether validating this event will make the relay ask the directory: a DID it has no
/// answer for, or an `#identity` (judged on a fresh document).
fn needs_identity_lookup(hosts: &HostRegistry, event: &Event) -> bool {
    match event {
        Event::Identity(_) => true,
        other => other.did().is_some_and(|did| !hosts.resolver.is_cached(did)),
    }
}

/// Upstream text cut to a length fit for one log line.
fn clip(text: &str) -> String {
    if text.len() <= MAX_LOGGED_UPSTREAM_CHARS {
        return text.to_string();
    }
    let cut: String = text.chars().take(MAX_LOGGED_UPSTREAM_CHARS).collect();
    format!("{cut}… ({} bytes)", text.len())
}

/// A per-host budget of log lines: what a host sends must not decide how much the relay logs.
struct LogLines {
    tokens: f64,
    last: tokio::time::Instant,
}

impl LogLines {
    fn new() -> LogLines {
        LogLines { tokens: UPSTREAM_LOG_LINES_PER_MINUTE, last: tokio::time::Instant::now() }
    }

    fn allow(&mut self, hosts: &HostRegistry) -> bool {
        let now = tokio::time::Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * UPSTREAM_LOG_LINES_PER_MINUTE / 60.0;
        self.tokens = (self.tokens + refill).min(UPSTREAM_LOG_LINES_PER_MINUTE);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            hosts.metrics.upstream_log_lines_suppressed.inc();
            false
        }
    }
}

/// A token bucket: `rate` events per second with a burst of one second's worth.
/// `take` waits for a token instead of refusing, which slows reading from the socket.
struct RateLimiter {
    rate: f64,
    tokens: f64,
    last: tokio::time::Instant,
}

impl RateLimiter {
    fn new(rate: f64) -> RateLimiter {
        let rate = rate.max(0.1);
        RateLimiter { rate, tokens: rate, last: tokio::time::Instant::now() }
    }

    /// Takes a token; returns whether it had to wait.
    async fn take(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return false;
        }
        let wait = Duration::from_secs_f64((1.0 - self.tokens) / self.rate);
        tokio::time::sleep(wait).await;
        self.last = tokio::time::Instant::now();
        self.tokens = 0.0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rate_limiter_slows_down_instead_of_dropping() {
        let mut limiter = RateLimiter::new(10.0);
        let start = tokio::time::Instant::now();
        let mut waited = 0;
        for _ in 0..30 {
            waited += usize::from(limiter.take().await);
        }
        // 10 from the burst, then 20 more at 10/s: about two seconds, and every event taken.
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(1900) && elapsed <= Duration::from_millis(2100),
            "{elapsed:?}"
        );
        assert_eq!(waited, 20);
    }

    #[test]
    fn upstream_text_is_clipped_for_logs() {
        assert_eq!(clip("FutureCursor"), "FutureCursor");
        let huge = "x".repeat(4_000_000);
        let clipped = clip(&huge);
        assert!(clipped.len() < 400, "{} bytes", clipped.len());
        assert!(clipped.ends_with("(4000000 bytes)"));
        // Multi-byte text is cut on a character boundary.
        assert!(clip(&"é".repeat(1000)).starts_with('é'));
    }

    #[test]
    fn host_ports() {
        assert_eq!(split_host_port("pds.example.com", true), ("pds.example.com", 443));
        assert_eq!(split_host_port("pds.example.com:8443", true), ("pds.example.com", 8443));
        assert_eq!(split_host_port("localhost:2583", false), ("localhost", 2583));
        assert_eq!(split_host_port("localhost", false), ("localhost", 80));
    }

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
