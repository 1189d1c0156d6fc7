//! The fake's state: servers, actions, SSH keys, firewalls and networks, the behaviour
//! knobs (slow or failing actions, a server that never runs), queued faults, the fake's
//! own rate bucket and the per-route request counters.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A server the fake holds.
#[derive(Debug, Clone)]
pub struct ServerRecord {
    pub id: i64,
    pub name: String,
    pub server_type: String,
    pub location: Value,
    pub labels: BTreeMap<String, String>,
    pub created: String,
    pub network: Option<i64>,
    pub firewalls: Vec<i64>,
    pub user_data: Option<String>,
    pub create_action: Option<i64>,
    /// Set by `DELETE`: the server disappears when this action finishes.
    pub delete_action: Option<i64>,
}

/// An action; its status is computed from the clock when read.
#[derive(Debug, Clone)]
pub struct Action {
    pub id: i64,
    pub command: String,
    pub resource: i64,
    pub started: String,
    pub started_at: Instant,
    pub duration: Duration,
    /// `Some((code, message))`: the action ends in `error`.
    pub error: Option<(String, String)>,
}

impl Action {
    pub fn is_done(&self, now: Instant) -> bool {
        now.duration_since(self.started_at) >= self.duration
    }
}

#[derive(Debug, Clone)]
pub struct FirewallRecord {
    pub id: i64,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub rules: Vec<Value>,
    pub created: String,
}

#[derive(Debug, Clone)]
pub struct SshKeyRecord {
    pub id: i64,
    pub name: String,
    pub fingerprint: String,
    pub public_key: String,
    pub created: String,
}

#[derive(Debug, Clone)]
pub struct NetworkRecord {
    pub id: i64,
    pub name: String,
    pub ip_range: String,
    pub servers: Vec<i64>,
    pub created: String,
}

/// A failure the fake answers with instead of doing the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 429 `rate_limit_exceeded` with `RateLimit-*` headers saying 0 remain.
    RateLimited,
    /// 503 `unavailable`.
    ServerError,
    /// 401 `unauthorized`.
    Unauthorized,
    /// 409 `uniqueness_error` (as if the name were taken).
    UniquenessError,
    /// 412 `resource_unavailable` (no capacity in this location).
    ResourceUnavailable,
    /// The connection is reset (RST) after the request is read: no response at all.
    ConnectionReset,
    /// The request is carried out, then the answer is held back this many milliseconds
    /// (a create that succeeded while its caller was killed before it read the answer).
    SlowReply { millis: u64 },
}

/// `count` faults for requests matching `route` (None: any route).
#[derive(Debug, Clone)]
pub struct FaultRule {
    pub route: Option<&'static str>,
    pub fault: Fault,
    pub remaining: usize,
}

/// How actions and servers behave.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// How long every new action runs (0: done at the first poll).
    pub action_duration: Duration,
    /// Create actions end in `error` (`action_failed`).
    pub fail_create_actions: bool,
    /// Servers stay `starting` forever.
    pub never_running: bool,
    /// Deleted servers stay visible (`deleting`) until the delete action finishes;
    /// when false they 404 at once, as the real API does.
    pub delete_lingers: bool,
    /// Requests an hour for the fake's own bucket (refill 1/s is scaled from it).
    pub rate_limit: u32,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            action_duration: Duration::ZERO,
            fail_create_actions: false,
            never_running: false,
            delete_lingers: false,
            rate_limit: 3600,
        }
    }
}

/// The fake's own budget: Hetzner's limit, refilled per second, reported in headers.
#[derive(Debug)]
pub struct Bucket {
    pub remaining: f64,
    pub refilled_at: Instant,
}

#[derive(Debug)]
pub struct State {
    pub token: String,
    pub next_id: i64,
    pub servers: BTreeMap<i64, ServerRecord>,
    pub actions: BTreeMap<i64, Action>,
    pub firewalls: BTreeMap<i64, FirewallRecord>,
    pub ssh_keys: BTreeMap<i64, SshKeyRecord>,
    pub networks: BTreeMap<i64, NetworkRecord>,
    pub behaviour: Behaviour,
    pub faults: VecDeque<FaultRule>,
    pub requests: BTreeMap<String, u64>,
    pub bucket: Bucket,
    /// Every server ever created through the API (for duplicate and leak checks).
    pub created_names: Vec<String>,
}

impl State {
    pub fn new(token: &str) -> State {
        State {
            token: token.to_string(),
            next_id: 1000,
            servers: BTreeMap::new(),
            actions: BTreeMap::new(),
            firewalls: BTreeMap::new(),
            ssh_keys: BTreeMap::new(),
            networks: BTreeMap::new(),
            behaviour: Behaviour::default(),
            faults: VecDeque::new(),
            requests: BTreeMap::new(),
            bucket: Bucket { remaining: 3600.0, refilled_at: Instant::now() },
            created_names: Vec::new(),
        }
    }

    pub fn id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    /// Takes the next fault queued for `route`, if any.
    pub fn take_fault(&mut self, route: &str) -> Option<Fault> {
        let index = self.faults.iter().position(|rule| rule.route.is_none_or(|r| r == route))?;
        let rule = &mut self.faults[index];
        rule.remaining -= 1;
        let fault = rule.fault;
        if rule.remaining == 0 {
            self.faults.remove(index);
        }
        Some(fault)
    }

    /// Takes one request from the fake's bucket; false when it is empty (a real 429).
    pub fn take_token(&mut self, now: Instant) -> bool {
        let limit = f64::from(self.behaviour.rate_limit);
        let per_second = limit / 3600.0;
        let elapsed = now.duration_since(self.bucket.refilled_at).as_secs_f64();
        self.bucket.remaining = (self.bucket.remaining + elapsed * per_second).min(limit);
        self.bucket.refilled_at = now;
        if self.bucket.remaining >= 1.0 {
            self.bucket.remaining -= 1.0;
            true
        } else {
            false
        }
    }

    pub fn new_action(&mut self, command: &str, resource: i64, error: Option<(String, String)>) -> i64 {
        let id = self.id();
        let action = Action {
            id,
            command: command.into(),
            resource,
            started: now_rfc3339(),
            started_at: Instant::now(),
            duration: self.behaviour.action_duration,
            error,
        };
        self.actions.insert(id, action);
        id
    }

    /// Removes servers whose delete action has finished.
    pub fn collect_deleted(&mut self, now: Instant) {
        let actions = &self.actions;
        self.servers.retain(|_, server| match server.delete_action.and_then(|id| actions.get(&id)) {
            Some(action) => !action.is_done(now),
            None => true,
        });
    }

    /// A server's status: `initializing` while its create action runs, then `running`
    /// (or `starting` forever, or `off` after a failed create), `deleting` once deleted.
    pub fn server_status(&self, server: &ServerRecord, now: Instant) -> &'static str {
        if server.delete_action.is_some() {
            return "deleting";
        }
        let Some(action) = server.create_action.and_then(|id| self.actions.get(&id)) else {
            return if self.behaviour.never_running { "starting" } else { "running" };
        };
        match (action.is_done(now), action.error.is_some(), self.behaviour.never_running) {
            (false, _, _) => "initializing",
            (true, true, _) => "off",
            (true, false, true) => "starting",
            (true, false, false) => "running",
        }
    }
}

pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| "2025-01-01T00:00:00Z".into())
}
