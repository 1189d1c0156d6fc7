//! `relay admin ...`: a command-line client for the relay's admin HTTP API (the routes in
//! `admin/mod.rs` and `admin/collections.rs`), so operators never need curl.
//!
//! Every subcommand is one HTTP request with `Authorization: Bearer <token>`. The response is
//! printed as a human-readable table or sentence, or with `--json` as the server's JSON,
//! pretty-printed. A non-2xx answer or an unreachable relay is an error (exit status 2 via
//! `main`); the token is never printed.

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

/// Options shared by every `relay admin` subcommand.
#[derive(Args)]
pub struct AdminArgs {
    /// Base URL of the relay's internal listener (where the admin API is served).
    #[arg(long, env = "RELAY_ADMIN_URL", default_value = "http://127.0.0.1:2471", global = true)]
    pub url: String,
    /// Admin token (one of the relay's RELAY_ADMIN_PASSWORD values). Required.
    // Global so it can follow the subcommand; clap forbids required globals, so `run` checks it.
    #[arg(long, env = "RELAY_ADMIN_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print the server's JSON response, pretty-printed, instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Upstream PDS hosts: list, ban, limits, crawl, disconnect.
    #[command(subcommand)]
    Hosts(HostsCommand),
    /// Account takedowns.
    #[command(subcommand)]
    Repo(RepoCommand),
    /// List connected firehose consumers.
    Consumers,
    /// Banned domains (hosts under a banned domain are refused).
    #[command(subcommand)]
    Domains(DomainsCommand),
    /// Whether public requestCrawl is accepted.
    #[command(subcommand)]
    Crawl(CrawlCommand),
    /// Collection-directory backfill: imports from another relay, and crawls of hosts.
    #[command(subcommand)]
    Backfill(BackfillCommand),
    /// The collection directory: per-collection counts and pruning.
    #[command(subcommand)]
    Collections(CollectionsCommand),
}

#[derive(Subcommand)]
pub enum HostsCommand {
    /// List known hosts with status, cursor and limits.
    List,
    /// List hosts with a live upstream connection.
    Connected,
    /// Ban a host: disconnect it and refuse it from now on.
    Ban {
        /// Host name, e.g. pds.example.com.
        host: String,
    },
    /// Lift a host's ban.
    Unban {
        /// Host name, e.g. pds.example.com.
        host: String,
    },
    /// Change a host's limits (the route accepts only the account limit).
    Limits {
        /// Host name, e.g. pds.example.com.
        host: String,
        /// Maximum number of accounts accepted from the host.
        #[arg(long, value_parser = clap::value_parser!(i64).range(0..))]
        repo_limit: i64,
    },
    /// Restart a host's subscription from another upstream cursor (0: live only).
    ResetCursor {
        /// Host name, e.g. pds.example.com.
        host: String,
        /// The host's seq to resume after.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
        cursor: i64,
    },
    /// Ask the relay to crawl (subscribe to) a host, bypassing the public requestCrawl checks.
    RequestCrawl {
        /// Host name or URL (http:// only where the relay allows insecure hosts).
        host: String,
    },
    /// Drop the live connection to a host.
    Kill {
        /// Host name, e.g. pds.example.com.
        host: String,
        /// Also ban the host, so it does not reconnect.
        #[arg(long)]
        ban: bool,
    },
}

#[derive(Subcommand)]
pub enum RepoCommand {
    /// Take an account down: its events stop and leave the replay window.
    Takedown {
        /// The account's DID.
        did: String,
    },
    /// Reverse a takedown.
    Reverse {
        /// The account's DID.
        did: String,
    },
    /// Re-sync accounts from their PDSes: the relay fetches each one's newest commit and
    /// relays it as a `#sync` (when it is newer than what the relay has).
    Resync {
        /// The accounts' DIDs (at most 100).
        #[arg(required = true)]
        dids: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum DomainsCommand {
    /// List banned domains.
    List,
    /// Ban a domain.
    Ban {
        /// e.g. example.com: hosts under it are refused.
        domain: String,
    },
    /// Lift a domain ban.
    Unban {
        /// A domain banned before.
        domain: String,
    },
}

#[derive(Subcommand)]
pub enum CrawlCommand {
    /// Show whether public requestCrawl is enabled.
    Enabled,
    /// Accept public requestCrawl.
    Enable,
    /// Refuse public requestCrawl (admin request-crawl still works).
    Disable,
}

#[derive(Subcommand)]
pub enum BackfillCommand {
    /// Start importing collection listings from another relay (zlay-compatible).
    Start {
        /// The relay to import from (default: the relay's configured backfill source).
        #[arg(long)]
        source: Option<String>,
        /// A collection (NSID) to import; repeat for several.
        #[arg(long = "collection", value_name = "NSID")]
        collections: Vec<String>,
        /// A URL listing NSIDs, one per line.
        #[arg(long)]
        collections_url: Option<String>,
        /// Also re-import every collection the directory already holds.
        #[arg(long)]
        include_indexed: bool,
    },
    /// Show running jobs, or the progress of the import from one source.
    Status {
        /// Show the per-collection progress of the import from this relay.
        #[arg(long)]
        source: Option<String>,
    },
    /// Stop the import from a source.
    Stop {
        /// The relay the import is from, as given to `start`.
        #[arg(long)]
        source: String,
    },
    /// Crawls: list every repo of known hosts (or one host) into the directory.
    #[command(subcommand)]
    Crawl(BackfillCrawlCommand),
}

#[derive(Subcommand)]
pub enum BackfillCrawlCommand {
    /// Start a crawl of every host, or of one.
    Start {
        /// Only this host (default: every host).
        #[arg(long)]
        host: Option<String>,
    },
    /// Show crawl progress per host.
    Status,
    /// Stop a crawl (of every host, or of one).
    Stop {
        /// Only this host (default: every host).
        #[arg(long)]
        host: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum CollectionsCommand {
    /// List collections with their number of listed DIDs.
    List {
        /// Continue after this collection (the cursor printed by the previous page).
        #[arg(long)]
        cursor: Option<String>,
        /// Page size (1..=10000; the server's default is 500).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Start a prune pass now (hides DIDs of deleted or gone accounts).
    Prune,
}

/// One admin API request: method, path, query parameters, JSON body.
struct Request {
    method: Method,
    path: &'static str,
    query: Vec<(&'static str, String)>,
    body: Option<Value>,
}

impl Request {
    fn get(path: &'static str) -> Request {
        Request { method: Method::GET, path, query: Vec::new(), body: None }
    }
    fn post(path: &'static str) -> Request {
        Request { method: Method::POST, path, ..Request::get(path) }
    }
    fn delete(path: &'static str) -> Request {
        Request { method: Method::DELETE, path, ..Request::get(path) }
    }
    fn query(mut self, name: &'static str, value: impl Into<String>) -> Request {
        self.query.push((name, value.into()));
        self
    }
    fn query_opt(self, name: &'static str, value: Option<String>) -> Request {
        match value {
            Some(value) => self.query(name, value),
            None => self,
        }
    }
    fn body(mut self, body: Value) -> Request {
        self.body = Some(body);
        self
    }
}

/// Runs `relay admin` on its own small runtime: no tracing output, so tables stay clean.
pub fn run_blocking(args: AdminArgs) -> anyhow::Result<bool> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(run(args))
}

/// Sends the request of `args.command` and prints the answer. `Ok(true)` on success; errors
/// (refused, unreachable, bad input) are `Err`, which `main` turns into exit status 2.
pub async fn run(args: AdminArgs) -> anyhow::Result<bool> {
    let token = args
        .token
        .as_deref()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| anyhow!("an admin token is required: pass --token or set RELAY_ADMIN_TOKEN"))?;
    let base = base_url(&args.url)?;
    let request = request_for(&args.command);
    let response = send(&base, token, request).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&response)?);
    } else {
        print!("{}", render(&args.command, &response));
    }
    Ok(true)
}

/// The base URL without a trailing slash, checked so a typo fails before any request.
fn base_url(raw: &str) -> anyhow::Result<String> {
    let parsed = url::Url::parse(raw).map_err(|e| anyhow!("invalid --url {raw:?}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        bail!("invalid --url {raw:?}: the scheme must be http or https");
    }
    Ok(raw.trim_end_matches('/').to_string())
}

fn request_for(command: &AdminCommand) -> Request {
    match command {
        AdminCommand::Hosts(hosts) => match hosts {
            HostsCommand::List => Request::get("/admin/pds/list"),
            HostsCommand::Connected => Request::get("/admin/subs/getUpstreamConns"),
            HostsCommand::Ban { host } => Request::post("/admin/pds/block").query("host", host),
            HostsCommand::Unban { host } => Request::post("/admin/pds/unblock").query("host", host),
            HostsCommand::Limits { host, repo_limit } => Request::post("/admin/pds/changeLimits")
                .body(json!({ "host": host, "repo_limit": repo_limit })),
            HostsCommand::ResetCursor { host, cursor } => {
                Request::post("/admin/pds/resetCursor").body(json!({ "host": host, "cursor": cursor }))
            }
            HostsCommand::RequestCrawl { host } => {
                Request::post("/admin/pds/requestCrawl").body(json!({ "hostname": host }))
            }
            HostsCommand::Kill { host, ban } => {
                let request = Request::post("/admin/subs/killUpstream").query("host", host);
                if *ban {
                    request.query("block", "true")
                } else {
                    request
                }
            }
        },
        AdminCommand::Repo(RepoCommand::Takedown { did }) => {
            Request::post("/admin/repo/takeDown").body(json!({ "did": did }))
        }
        AdminCommand::Repo(RepoCommand::Reverse { did }) => {
            Request::post("/admin/repo/reverseTakedown").body(json!({ "did": did }))
        }
        AdminCommand::Repo(RepoCommand::Resync { dids }) => {
            Request::post("/admin/repo/resync").body(json!({ "dids": dids }))
        }
        AdminCommand::Consumers => Request::get("/admin/consumers/list"),
        AdminCommand::Domains(DomainsCommand::List) => Request::get("/admin/subs/listDomainBans"),
        AdminCommand::Domains(DomainsCommand::Ban { domain }) => {
            Request::post("/admin/subs/banDomain").body(json!({ "domain": domain }))
        }
        AdminCommand::Domains(DomainsCommand::Unban { domain }) => {
            Request::post("/admin/subs/unbanDomain").body(json!({ "domain": domain }))
        }
        AdminCommand::Crawl(CrawlCommand::Enabled) => Request::get("/admin/subs/getEnabled"),
        AdminCommand::Crawl(CrawlCommand::Enable) => {
            Request::post("/admin/subs/setEnabled").query("enabled", "true")
        }
        AdminCommand::Crawl(CrawlCommand::Disable) => {
            Request::post("/admin/subs/setEnabled").query("enabled", "false")
        }
        AdminCommand::Backfill(backfill) => backfill_request(backfill),
        AdminCommand::Collections(CollectionsCommand::List { cursor, limit }) => {
            Request::get("/admin/collections")
                .query_opt("cursor", cursor.clone())
                .query_opt("limit", limit.map(|l| l.to_string()))
        }
        AdminCommand::Collections(CollectionsCommand::Prune) => Request::post("/admin/collections/prune"),
    }
}

fn backfill_request(command: &BackfillCommand) -> Request {
    const IMPORT: &str = "/admin/backfill-collections";
    const CRAWL: &str = "/admin/backfill-crawl";
    match command {
        BackfillCommand::Start { source, collections, collections_url, include_indexed } => {
            Request::post(IMPORT).query_opt("source", source.clone()).body(json!({
                "collections": collections,
                "collectionsUrl": collections_url,
                "includeIndexed": include_indexed,
            }))
        }
        BackfillCommand::Status { source } => Request::get(IMPORT).query_opt("source", source.clone()),
        BackfillCommand::Stop { source } => Request::delete(IMPORT).query("source", source),
        BackfillCommand::Crawl(BackfillCrawlCommand::Start { host }) => {
            Request::post(CRAWL).query_opt("host", host.clone())
        }
        BackfillCommand::Crawl(BackfillCrawlCommand::Status) => Request::get(CRAWL),
        BackfillCommand::Crawl(BackfillCrawlCommand::Stop { host }) => {
            Request::delete(CRAWL).query_opt("host", host.clone())
        }
    }
}

/// Sends one request; returns the JSON body of a 2xx answer (`null` when empty).
async fn send(base: &str, token: &str, request: Request) -> anyhow::Result<Value> {
    let url = format!("{base}{}", request.path);
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .build()
        .context("building the HTTP client")?;
    let mut builder = client.request(request.method, &url).bearer_auth(token).query(&request.query);
    if let Some(body) = &request.body {
        builder = builder.json(body);
    }
    let response = builder.send().await.map_err(|e| unreachable_error(&url, &e))?;
    let status = response.status();
    let text = response.text().await.with_context(|| format!("reading the answer of {url}"))?;
    if !status.is_success() {
        return Err(refusal_error(status, &text, &url));
    }
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text).with_context(|| format!("{url} answered {status} with a non-JSON body"))
}

/// A transport failure, naming the URL (reqwest's own message can omit why).
fn unreachable_error(url: &str, error: &reqwest::Error) -> anyhow::Error {
    let why = if error.is_timeout() {
        "timed out".to_string()
    } else if error.is_connect() {
        "connection failed".to_string()
    } else {
        "request failed".to_string()
    };
    let mut detail = String::new();
    let mut source: Option<&dyn std::error::Error> = Some(error);
    while let Some(cause) = source {
        detail = cause.to_string();
        source = cause.source();
    }
    anyhow!("cannot reach the relay admin API at {url}: {why} ({detail}); check --url / RELAY_ADMIN_URL")
}

/// A non-2xx answer: the server's `error`/`message` fields, with a hint for the common cases.
fn refusal_error(status: reqwest::StatusCode, text: &str, url: &str) -> anyhow::Error {
    let body: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let field = |name: &str| body.get(name).and_then(Value::as_str).map(str::to_string);
    let detail = match (field("error"), field("message")) {
        (Some(error), Some(message)) => format!("{error}: {message}"),
        (Some(one), None) | (None, Some(one)) => one,
        (None, None) if text.trim().is_empty() => "no details".to_string(),
        (None, None) => text.trim().chars().take(300).collect(),
    };
    let hint = match status.as_u16() {
        401 => " (check --token / RELAY_ADMIN_TOKEN)",
        404 if body.is_null() => " (no such route: is --url the relay's internal listener?)",
        _ => "",
    };
    anyhow!("{url} answered {status}: {detail}{hint}")
}

/// The human-readable form of a successful answer.
fn render(command: &AdminCommand, response: &Value) -> String {
    match command {
        AdminCommand::Hosts(hosts) => render_hosts(hosts, response),
        AdminCommand::Repo(RepoCommand::Takedown { did }) => format!("{did} taken down\n"),
        AdminCommand::Repo(RepoCommand::Reverse { did }) => format!("takedown of {did} reversed\n"),
        AdminCommand::Repo(RepoCommand::Resync { .. }) => table(
            &["DID", "RESULT", "REV", "ERROR"],
            rows(&response["results"], &["did", "result", "rev", "error"]),
        ),
        AdminCommand::Consumers => table(
            &["ID", "REMOTE", "USER AGENT", "EVENTS", "CONNECTED AT"],
            rows(response, &["id", "remote_addr", "user_agent", "events_consumed", "connected_at"]),
        ),
        AdminCommand::Domains(DomainsCommand::List) => {
            let domains = response["banned_domains"].as_array().cloned().unwrap_or_default();
            table(&["DOMAIN"], domains.iter().map(|d| vec![cell(d)]).collect())
        }
        AdminCommand::Domains(DomainsCommand::Ban { domain }) => format!("domain {domain} banned\n"),
        AdminCommand::Domains(DomainsCommand::Unban { domain }) => format!("domain {domain} unbanned\n"),
        AdminCommand::Crawl(CrawlCommand::Enabled) => {
            let state = if response["enabled"] == true { "enabled" } else { "disabled" };
            format!("public requestCrawl is {state}\n")
        }
        AdminCommand::Crawl(CrawlCommand::Enable) => "public requestCrawl enabled\n".to_string(),
        AdminCommand::Crawl(CrawlCommand::Disable) => "public requestCrawl disabled\n".to_string(),
        AdminCommand::Backfill(backfill) => render_backfill(backfill, response),
        AdminCommand::Collections(CollectionsCommand::List { .. }) => {
            let mut out =
                table(&["COLLECTION", "DIDS"], rows(&response["collections"], &["collection", "dids"]));
            if let Some(cursor) = response["cursor"].as_str() {
                out.push_str(&format!("more: --cursor {cursor}\n"));
            }
            out
        }
        AdminCommand::Collections(CollectionsCommand::Prune) => "prune pass started\n".to_string(),
    }
}

fn render_hosts(command: &HostsCommand, response: &Value) -> String {
    match command {
        HostsCommand::List => table(
            &["ID", "HOST", "STATUS", "CONNECTED", "CURSOR", "REPO LIMIT", "TRUSTED", "SSL"],
            rows(
                response,
                &["ID", "Host", "Status", "HasActiveConnection", "Cursor", "RepoLimit", "Trusted", "SSL"],
            ),
        ),
        HostsCommand::Connected => {
            let hosts = response.as_array().cloned().unwrap_or_default();
            table(&["HOST"], hosts.iter().map(|h| vec![cell(h)]).collect())
        }
        HostsCommand::Ban { host } => format!("host {host} banned\n"),
        HostsCommand::Unban { host } => format!("host {host} unbanned\n"),
        HostsCommand::Limits { host, repo_limit } => format!("host {host}: repo limit set to {repo_limit}\n"),
        HostsCommand::ResetCursor { host, cursor } => {
            format!("{host}: resubscribed after upstream seq {cursor}\n")
        }
        HostsCommand::RequestCrawl { host } => format!("crawl of {host} requested\n"),
        HostsCommand::Kill { host, ban: true } => format!("connection to {host} dropped; host banned\n"),
        HostsCommand::Kill { host, ban: false } => format!("connection to {host} dropped\n"),
    }
}

fn render_backfill(command: &BackfillCommand, response: &Value) -> String {
    let jobs = || {
        table(
            &["KIND", "SOURCE", "FOUND", "ELAPSED (s)"],
            rows(&response["jobs"], &["kind", "source", "found", "elapsedSeconds"]),
        )
    };
    let pending = || format!("pending verification: {}\n", cell(&response["pendingVerification"]));
    match command {
        BackfillCommand::Start { .. } => {
            let collections = response["collections"].as_array().cloned().unwrap_or_default();
            let names: Vec<String> = collections.iter().map(cell).collect();
            format!(
                "import from {} started; collections ({}):\n{}",
                cell(&response["source"]),
                names.len(),
                names.iter().map(|n| format!("  {n}\n")).collect::<String>()
            )
        }
        BackfillCommand::Status { source: None } => format!("{}{}", jobs(), pending()),
        BackfillCommand::Status { source: Some(_) } => {
            let summary = format!(
                "source: {}\nrunning: {}\nimported: {}\ncollections done: {}/{}\n{}",
                cell(&response["source"]),
                cell(&response["running"]),
                cell(&response["imported"]),
                cell(&response["collectionsDone"]),
                cell(&response["collectionsTotal"]),
                pending(),
            );
            let collections = table(
                &["COLLECTION", "IMPORTED", "PAGES", "DONE", "ERROR"],
                rows(&response["collections"], &["collection", "imported", "pages", "done", "error"]),
            );
            format!("{summary}\n{collections}")
        }
        BackfillCommand::Stop { .. } => format!("stopping the import from {}\n", cell(&response["source"])),
        BackfillCommand::Crawl(BackfillCrawlCommand::Stop { .. }) => {
            format!("stopping the crawl of {}\n", crawl_target(&response["source"]))
        }
        BackfillCommand::Crawl(BackfillCrawlCommand::Start { .. }) => {
            format!("crawl of {} started\n", crawl_target(&response["source"]))
        }
        BackfillCommand::Crawl(BackfillCrawlCommand::Status) => {
            let summary = format!(
                "running: {}\nhosts done: {}\nrepos found: {}\n{}",
                cell(&response["running"]),
                cell(&response["hostsDone"]),
                cell(&response["reposFound"]),
                pending(),
            );
            let hosts = table(
                &["HOST", "REPOS", "DONE", "ERROR"],
                rows(&response["hosts"], &["hostname", "repos", "done", "error"]),
            );
            format!("{summary}\n{}\n{hosts}", jobs())
        }
    }
}

/// The server names a crawl of every host `*`.
fn crawl_target(source: &Value) -> String {
    match source.as_str() {
        Some("*") => "every host".to_string(),
        _ => cell(source),
    }
}

/// A JSON value as a table cell: strings unquoted, missing/null as `-`.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The given fields of each object of a JSON array, as cells.
fn rows(array: &Value, fields: &[&str]) -> Vec<Vec<String>> {
    let items = array.as_array().map(Vec::as_slice).unwrap_or_default();
    items.iter().map(|item| fields.iter().map(|f| cell(&item[*f])).collect()).collect()
}

/// Left-aligned columns two spaces apart; `(none)` under the header when there are no rows.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> =
            cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}", w = *w)).collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(headers.to_vec());
    if rows.is_empty() {
        out.push_str("(none)\n");
    }
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_and_marks_empty() {
        let out = table(&["A", "LONG"], vec![vec!["xyz".into(), "1".into()], vec!["q".into(), "22".into()]]);
        assert_eq!(out, "A    LONG\nxyz  1\nq    22\n");
        assert_eq!(table(&["HOST"], Vec::new()), "HOST\n(none)\n");
    }

    #[test]
    fn refusals_show_the_server_fields() {
        let error = refusal_error(
            reqwest::StatusCode::NOT_FOUND,
            r#"{"error":"RepoNotFound","message":"unknown account"}"#,
            "http://x/admin/repo/takeDown",
        );
        assert_eq!(
            error.to_string(),
            "http://x/admin/repo/takeDown answered 404 Not Found: RepoNotFound: unknown account"
        );
    }

    #[test]
    fn bad_urls_are_refused_before_any_request() {
        assert!(base_url("127.0.0.1:2471").is_err());
        assert_eq!(base_url("http://127.0.0.1:2471/").ok().as_deref(), Some("http://127.0.0.1:2471"));
    }
}
