//! A fake Hetzner Cloud API: a real HTTP server on 127.0.0.1:0 that keeps servers,
//! actions, SSH keys, firewalls and networks, answers the routes the operator's client
//! calls with bodies shaped by the OpenAPI document the `hcloud` crate was generated
//! from (tests/hcloud_contract.rs checks every one), and injects faults per test: 429s
//! with rate headers, 5xx, 401, `uniqueness_error`, `resource_unavailable`, connection
//! resets, slow or failing actions, a server that never reaches `running`.
//!
//! It is plain hyper, not a framework, because a reset has to reach the socket: the
//! connection task owns the stream and can close it with SO_LINGER 0 (an RST).

mod json;
mod routes;
mod state;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;

pub use routes::selector_matches;
pub use state::{Behaviour, Fault};
use state::{FaultRule, NetworkRecord, ServerRecord, SshKeyRecord, State};

/// The token the fake accepts; any other gets 401 `unauthorized`.
pub const TOKEN: &str = "fake-hcloud-token";

/// A server as a test inspects it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeServer {
    pub id: i64,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub status: String,
    pub user_data: Option<String>,
}

/// The running fake. Dropping it stops the listener.
pub struct FakeHetzner {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeHetzner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeHetzner {
    /// Binds 127.0.0.1:0 and serves until dropped.
    pub async fn start() -> std::io::Result<FakeHetzner> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::new(TOKEN)));
        let task = tokio::spawn(accept_loop(listener, state.clone()));
        Ok(FakeHetzner { addr, state, task })
    }

    /// The base URL to give the client (`.../v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Answers the next `count` requests to `route` (e.g. `"POST /servers"`, None for
    /// any) with `fault`. Rules apply in the order they were added.
    pub fn inject(&self, route: Option<&'static str>, fault: Fault, count: usize) {
        if count > 0 {
            self.lock().faults.push_back(FaultRule { route, fault, remaining: count });
        }
    }

    /// Changes how actions and servers behave from now on.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.lock().behaviour = behaviour;
    }

    /// Adds a server directly (as if created by someone else), returning its id.
    pub fn add_server(&self, name: &str, labels: &[(&str, &str)]) -> i64 {
        let mut state = self.lock();
        let id = state.id();
        let record = ServerRecord {
            id,
            name: name.into(),
            server_type: "cpx41".into(),
            location: json::location("fsn1").unwrap_or_default(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            created: state::now_rfc3339(),
            network: None,
            firewalls: vec![],
            user_data: None,
            create_action: None,
            delete_action: None,
        };
        state.servers.insert(id, record);
        id
    }

    pub fn add_ssh_key(&self, name: &str) -> i64 {
        let mut state = self.lock();
        let id = state.id();
        let fingerprint = format!("b7:2f:30:a0:2f:6c:58:6c:21:04:58:61:ba:06:3b:{:02x}", id & 0xff);
        let key = SshKeyRecord {
            id,
            name: name.into(),
            fingerprint,
            public_key: format!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKey{id} {name}"),
            created: state::now_rfc3339(),
        };
        state.ssh_keys.insert(id, key);
        id
    }

    pub fn add_network(&self, name: &str, ip_range: &str) -> i64 {
        let mut state = self.lock();
        let id = state.id();
        let network = NetworkRecord {
            id,
            name: name.into(),
            ip_range: ip_range.into(),
            servers: vec![],
            created: state::now_rfc3339(),
        };
        state.networks.insert(id, network);
        id
    }

    /// The servers that exist now (deleted ones whose action finished are gone).
    pub fn servers(&self) -> Vec<FakeServer> {
        let mut state = self.lock();
        let now = Instant::now();
        state.collect_deleted(now);
        state
            .servers
            .values()
            .map(|s| FakeServer {
                id: s.id,
                name: s.name.clone(),
                labels: s.labels.clone(),
                status: state.server_status(s, now).to_string(),
                user_data: s.user_data.clone(),
            })
            .collect()
    }

    /// The firewalls that exist now: (id, name, labels).
    pub fn firewalls(&self) -> Vec<(i64, String, BTreeMap<String, String>)> {
        self.lock().firewalls.values().map(|f| (f.id, f.name.clone(), f.labels.clone())).collect()
    }

    /// How many servers were ever created through `POST /servers`.
    pub fn servers_created(&self) -> usize {
        self.lock().created_names.len()
    }

    /// Requests per route (`"GET /servers/{id}"` ...), counted before faults apply.
    pub fn requests(&self) -> BTreeMap<String, u64> {
        self.lock().requests.clone()
    }

    pub fn total_requests(&self) -> u64 {
        self.lock().requests.values().sum()
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // Every mutation is completed under the lock before a panic could happen, so a
    // poisoned state is still consistent enough for a test double.
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn accept_loop(listener: TcpListener, state: Arc<Mutex<State>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(serve_connection(stream, state.clone()));
    }
}

/// Serves one connection; a `ConnectionReset` fault ends it with an RST.
async fn serve_connection(stream: tokio::net::TcpStream, state: Arc<Mutex<State>>) {
    let fd = stream.as_raw_fd();
    let reset = Arc::new(Notify::new());
    let handler_reset = reset.clone();
    let service =
        hyper::service::service_fn(move |request| handle(state.clone(), handler_reset.clone(), request));
    let connection =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = &mut connection => {}
        _ = reset.notified() => {
            // The stream is still owned by `connection`, alive until the end of scope.
            set_linger_zero(fd);
        }
    }
}

/// SO_LINGER 0: closing the socket sends an RST instead of a FIN.
fn set_linger_zero(fd: RawFd) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: `fd` is an open socket (its owner has not been dropped yet) and the
    // pointer/length describe a valid `linger` value.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

type Body = Full<Bytes>;

async fn handle(
    state: Arc<Mutex<State>>,
    reset: Arc<Notify>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = request.method().as_str().to_string();
    let path = request.uri().path().to_string();
    let query: Vec<(String, String)> =
        form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes()).into_owned().collect();
    let auth = request.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let Some(api_path) = path.strip_prefix("/v1") else {
        return Ok(respond(routes::error(404, "not_found", "no such route"), None));
    };
    let route = routes::route_of(&method, api_path).unwrap_or("unknown");
    let outcome = {
        let mut state = lock(&state);
        *state.requests.entry(route.to_string()).or_default() += 1;
        decide(&mut state, route, api_path, &query, &body, auth.as_deref())
    };
    match outcome {
        Outcome::Reply(reply, headers) => Ok(respond(reply, Some(headers))),
        Outcome::Delayed(reply, headers, delay) => {
            tokio::time::sleep(delay).await;
            Ok(respond(reply, Some(headers)))
        }
        Outcome::Reset => {
            reset.notify_one();
            // Never answer: the connection task resets the socket.
            std::future::pending::<()>().await;
            Ok(respond(routes::error(500, "server_error", "unreachable"), None))
        }
    }
}

enum Outcome {
    Reply(routes::Reply, RateHeaders),
    /// Done, answered late (`Fault::SlowReply`).
    Delayed(routes::Reply, RateHeaders, std::time::Duration),
    Reset,
}

/// `RateLimit-*` values for a response.
struct RateHeaders {
    limit: u32,
    remaining: u32,
    reset: u64,
}

fn decide(
    state: &mut State,
    route: &str,
    path: &str,
    query: &[(String, String)],
    body: &[u8],
    auth: Option<&str>,
) -> Outcome {
    let fault = state.take_fault(route);
    if fault == Some(Fault::ConnectionReset) {
        return Outcome::Reset;
    }
    let has_token = state.take_token(Instant::now());
    let reply = match fault {
        _ if auth != Some(&format!("Bearer {}", state.token)) => routes::error(401, "unauthorized", "unable to authenticate"),
        Some(Fault::Unauthorized) => routes::error(401, "unauthorized", "unable to authenticate"),
        Some(Fault::RateLimited) => rate_limited(state),
        _ if !has_token => rate_limited(state),
        Some(Fault::ServerError) => routes::error(503, "unavailable", "service is temporarily unavailable"),
        Some(Fault::UniquenessError) => routes::error(409, "uniqueness_error", "server name is already used"),
        Some(Fault::ResourceUnavailable) => routes::error(
            412,
            "resource_unavailable",
            "we are unable to provision servers for this location, try with a different location or try later",
        ),
        Some(Fault::ConnectionReset | Fault::SlowReply { .. }) | None => {
            routes::handle(state, route, path, query, body)
        }
    };
    let mut headers = rate_headers(state);
    if reply.status == 429 {
        headers.remaining = 0;
    }
    match fault {
        Some(Fault::SlowReply { millis }) => {
            Outcome::Delayed(reply, headers, std::time::Duration::from_millis(millis))
        }
        _ => Outcome::Reply(reply, headers),
    }
}

fn rate_limited(_state: &mut State) -> routes::Reply {
    // An injected 429 leaves the fake's bucket alone (the test decides how many 429s);
    // its headers still say that nothing remains.
    routes::error(429, "rate_limit_exceeded", "limit of 3600 requests per hour reached")
}

fn rate_headers(state: &State) -> RateHeaders {
    let limit = state.behaviour.rate_limit;
    let remaining = state.bucket.remaining.floor().max(0.0) as u32;
    let per_second = f64::from(limit) / 3600.0;
    let seconds_to_full =
        (f64::from(limit.saturating_sub(remaining)) / per_second.max(f64::MIN_POSITIVE)).ceil() as u64;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    RateHeaders { limit, remaining, reset: now + seconds_to_full }
}

fn respond(reply: routes::Reply, rate: Option<RateHeaders>) -> Response<Body> {
    // 204 No Content has no body (DELETE /firewalls/{id}).
    let body = if reply.status == 204 { Bytes::new() } else { Bytes::from(reply.body.to_string()) };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() =
        hyper::StatusCode::from_u16(reply.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
    if let Some(rate) = rate {
        headers.insert("ratelimit-limit", rate.limit.into());
        headers.insert("ratelimit-remaining", rate.remaining.into());
        headers.insert("ratelimit-reset", rate.reset.into());
    }
    response
}
