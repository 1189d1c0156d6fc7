//! The rules that keep one server per Relay, written against `HetznerApi`: find (status
//! id → UID label selector), create, adopt after `uniqueness_error` only with our UID
//! label, delete only what carries it and wait until the API says it is gone, and poll
//! actions with a bounded wait.

use std::time::{Duration, Instant};

use super::api::{ActionInfo, ActionStatus, HetznerApi, ServerInfo, ServerSpec, ServerStatus};
use super::error::CloudError;
use super::naming::{is_owned_by, owner_selector};

/// How often and how long to poll. The interval doubles up to `max_interval`.
#[derive(Debug, Clone, Copy)]
pub struct PollPolicy {
    pub interval: Duration,
    pub max_interval: Duration,
    pub max_wait: Duration,
}

impl Default for PollPolicy {
    fn default() -> Self {
        // A server from a system image is created in ~10 s (CAPH's measurement); the
        // interval grows so a slow action does not eat the rate budget.
        PollPolicy {
            interval: Duration::from_secs(2),
            max_interval: Duration::from_secs(30),
            max_wait: Duration::from_secs(360),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Api(#[from] CloudError),
    /// A server with our name exists but does not carry our UID label: not ours, never
    /// adopted, never deleted.
    #[error("a server named {name:?} (id {id}) exists but is not owned by this Relay")]
    NameConflict { name: String, id: i64 },
    /// The id in the status names a server without our UID label.
    #[error("server {id} from the status is not owned by this Relay")]
    NotOwned { id: i64 },
    /// More than one server carries our UID label.
    #[error("{} servers carry this Relay's UID label: {ids:?}", ids.len())]
    Ambiguous { ids: Vec<i64> },
    #[error("action {id} ({command}) failed: {code}: {message}")]
    ActionFailed { id: i64, command: String, code: String, message: String },
    #[error("action {id} still running after {}s", waited.as_secs())]
    ActionTimeout { id: i64, waited: Duration },
    #[error("server {id} is {status:?}, not running, after {}s", waited.as_secs())]
    NotRunning { id: i64, status: ServerStatus, waited: Duration },
    #[error("server {id} still exists {}s after its deletion", waited.as_secs())]
    StillPresent { id: i64, waited: Duration },
}

/// How `ensure_server` came by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Found by status id or UID label: nothing created.
    Found,
    /// Created by this call.
    Created,
    /// The create met `uniqueness_error` and the server by that name carries our UID
    /// label (a crash between create and the status write): adopted.
    Adopted,
}

#[derive(Debug, Clone)]
pub struct Ensured {
    pub server: ServerInfo,
    pub origin: Origin,
    /// The create action to poll (only when created here).
    pub action: Option<ActionInfo>,
}

/// Every server that carries `uid`'s label: the status id first (one call in steady
/// state), then the label selector. Servers the selector returns are re-checked here:
/// ownership is never taken on trust.
pub async fn owned_servers<A: HetznerApi>(
    api: &A,
    uid: &str,
    known_id: Option<i64>,
) -> Result<Vec<ServerInfo>, LifecycleError> {
    if let Some(id) = known_id {
        match api.get_server(id).await? {
            Some(server) if is_owned_by(&server, uid) => return Ok(vec![server]),
            Some(_) => return Err(LifecycleError::NotOwned { id }),
            // Gone (deleted by hand?): the label lookup decides.
            None => {}
        }
    }
    let mut servers = api.list_servers(&owner_selector(uid)).await?;
    servers.retain(|server| is_owned_by(server, uid));
    Ok(servers)
}

/// The Relay's server, if there is exactly one.
pub async fn find_server<A: HetznerApi>(
    api: &A,
    uid: &str,
    known_id: Option<i64>,
) -> Result<Option<ServerInfo>, LifecycleError> {
    let mut servers = owned_servers(api, uid, known_id).await?;
    match servers.len() {
        0 | 1 => Ok(servers.pop()),
        _ => Err(LifecycleError::Ambiguous { ids: servers.iter().map(|s| s.id).collect() }),
    }
}

/// Finds or creates the Relay's server. `spec.labels` must carry the UID label for
/// `uid` (`naming::ownership_labels`), or the server could never be found again.
pub async fn ensure_server<A: HetznerApi>(
    api: &A,
    uid: &str,
    known_id: Option<i64>,
    spec: &ServerSpec,
) -> Result<Ensured, LifecycleError> {
    if let Some(server) = find_server(api, uid, known_id).await? {
        return Ok(Ensured { server, origin: Origin::Found, action: None });
    }
    match api.create_server(spec).await {
        Ok(created) => {
            Ok(Ensured { server: created.server, origin: Origin::Created, action: Some(created.action) })
        }
        Err(CloudError::UniquenessError { .. }) => adopt_by_name(api, uid, &spec.name).await,
        Err(error) => Err(error.into()),
    }
}

/// After `uniqueness_error`: the server with that name is adopted only if it is ours.
async fn adopt_by_name<A: HetznerApi>(api: &A, uid: &str, name: &str) -> Result<Ensured, LifecycleError> {
    match api.server_by_name(name).await? {
        Some(server) if is_owned_by(&server, uid) => {
            Ok(Ensured { server, origin: Origin::Adopted, action: None })
        }
        Some(server) => Err(LifecycleError::NameConflict { name: name.into(), id: server.id }),
        // Deleted between the two calls: the next reconcile creates it.
        None => Err(CloudError::Transient(format!("name {name:?} was taken, then not found")).into()),
    }
}

/// Polls an action until it succeeds (Ok), fails (`ActionFailed`) or `max_wait` passes.
pub async fn wait_for_action<A: HetznerApi>(
    api: &A,
    id: i64,
    poll: PollPolicy,
) -> Result<ActionInfo, LifecycleError> {
    let mut waiter = Waiter::new(poll);
    loop {
        let action = api.get_action(id).await?;
        match &action.status {
            ActionStatus::Success => return Ok(action),
            ActionStatus::Error { code, message } => {
                return Err(LifecycleError::ActionFailed {
                    id,
                    command: action.command.clone(),
                    code: code.clone(),
                    message: message.clone(),
                })
            }
            ActionStatus::Running => {}
        }
        if !waiter.wait().await {
            return Err(LifecycleError::ActionTimeout { id, waited: waiter.elapsed() });
        }
    }
}

/// Polls a server until it is `running`, bounded (a server stuck in `starting` or `off`
/// ends in `NotRunning` instead of a wait forever).
pub async fn wait_until_running<A: HetznerApi>(
    api: &A,
    id: i64,
    poll: PollPolicy,
) -> Result<ServerInfo, LifecycleError> {
    let mut waiter = Waiter::new(poll);
    loop {
        let server = api.get_server(id).await?.ok_or_else(|| CloudError::NotFound(format!("server {id}")))?;
        if server.status == ServerStatus::Running {
            return Ok(server);
        }
        if !waiter.wait().await {
            return Err(LifecycleError::NotRunning { id, status: server.status, waited: waiter.elapsed() });
        }
    }
}

/// What a deletion did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Deleted {
    /// Ids deleted by this call; empty when nothing owned was left (already gone).
    pub ids: Vec<i64>,
}

/// Deletes every server carrying `uid`'s label (normally one), waits for each delete
/// action and then until `GET` says 404. Servers without the label are never touched.
pub async fn delete_owned_servers<A: HetznerApi>(
    api: &A,
    uid: &str,
    known_id: Option<i64>,
    poll: PollPolicy,
) -> Result<Deleted, LifecycleError> {
    let mut deleted = Deleted::default();
    for server in owned_servers(api, uid, known_id).await? {
        match api.delete_server(server.id).await {
            Ok(Some(action)) => {
                wait_for_action(api, action.id, poll).await?;
            }
            Ok(None) => {}
            // Someone else deleted it first: fine.
            Err(CloudError::NotFound(_)) => continue,
            Err(error) => return Err(error.into()),
        }
        wait_until_gone(api, server.id, poll).await?;
        deleted.ids.push(server.id);
    }
    Ok(deleted)
}

/// Polls `GET /servers/{id}` until it is a 404, bounded.
pub async fn wait_until_gone<A: HetznerApi>(
    api: &A,
    id: i64,
    poll: PollPolicy,
) -> Result<(), LifecycleError> {
    let mut waiter = Waiter::new(poll);
    while api.get_server(id).await?.is_some() {
        if !waiter.wait().await {
            return Err(LifecycleError::StillPresent { id, waited: waiter.elapsed() });
        }
    }
    Ok(())
}

/// The bounded, growing sleep between polls.
struct Waiter {
    poll: PollPolicy,
    next: Duration,
    started: Instant,
}

impl Waiter {
    fn new(poll: PollPolicy) -> Waiter {
        Waiter { poll, next: poll.interval, started: Instant::now() }
    }

    fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Sleeps before the next poll; false when that would pass `max_wait`.
    async fn wait(&mut self) -> bool {
        if self.elapsed() + self.next > self.poll.max_wait {
            return false;
        }
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(self.poll.max_interval);
        true
    }
}
