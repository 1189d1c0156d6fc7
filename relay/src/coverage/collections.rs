//! `relay coverage collections`: compare the relays' collection directories NSID by NSID.
//!
//! For every NSID of the list, each relay's `com.atproto.sync.listReposByCollection` is paged
//! to the end with limit 1000 (the largest every known implementation accepts). Reported per
//! NSID: each relay's DID count, the leader, the relays with none, and for every ordered pair
//! of relays a bounded sample of DIDs one lists and the other lacks. NSIDs are checked a few
//! at a time; each relay has its own budget of requests in flight, and a 429 pauses only that
//! relay for its `Retry-After`.
//!
//! Memory: counts are exact at any size, but a relay's DID list for one NSID is kept for the
//! comparison only up to `--compare-max-dids` (above it, that NSID reports counts only); at
//! most `--concurrency` NSIDs are held at once.

use super::http::{self, FetchError, Pacer};
use super::report::{CollectionsRelay, CollectionsReport, MissingDids, NsidCount, NsidResult};
use super::{CoverageError, Progress, RelayEndpoint, PROGRESS_INTERVAL};
use crate::atproto::syntax;
use crate::config::parse_duration;
use clap::Args;
use futures_util::StreamExt;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct CollectionsArgs {
    /// A relay to query (repeat, or comma-separated in the env). The first is the reference.
    #[arg(long = "relay", env = "RELAY_COVERAGE_RELAYS", value_delimiter = ',', required = true)]
    pub relays: Vec<String>,
    /// The NSIDs: a file, an http(s) URL of a newline list (llms.txt style: the first NSID
    /// on each line counts), comma-separated names, or `relays:first` (every NSID the first
    /// relay's collection index knows; needs --admin-token, see docs/coverage.md).
    #[arg(long, env = "RELAY_COVERAGE_NSIDS")]
    pub nsids: String,
    /// DIDs per page (1–1000).
    #[arg(long, env = "RELAY_COVERAGE_PAGE_LIMIT", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub page_limit: u64,
    /// NSIDs checked at once.
    #[arg(long, env = "RELAY_COVERAGE_CONCURRENCY", default_value_t = 4)]
    pub concurrency: usize,
    /// Requests in flight to one relay.
    #[arg(long, env = "RELAY_COVERAGE_PER_RELAY_CONCURRENCY", default_value_t = 2)]
    pub per_relay_concurrency: usize,
    /// DIDs kept per NSID and relay for the missing-DID comparison (about 100 bytes each);
    /// an NSID with more reports counts only.
    #[arg(long, env = "RELAY_COVERAGE_COMPARE_MAX_DIDS", default_value_t = 100_000)]
    pub compare_max_dids: usize,
    /// DIDs listed per missing-DID sample.
    #[arg(long, env = "RELAY_COVERAGE_MISSING_SAMPLE", default_value_t = 20)]
    pub missing_sample: usize,
    /// Admin URL of the first relay, for `--nsids relays:first` (for this project's relays,
    /// the internal listener). Default: the first relay's URL.
    #[arg(long, env = "RELAY_COVERAGE_ADMIN_URL")]
    pub admin_url: Option<String>,
    /// Admin token of the first relay, for `--nsids relays:first`.
    #[arg(long, env = "RELAY_COVERAGE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Time limit of one request.
    #[arg(long, env = "RELAY_COVERAGE_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
}

/// Most NSIDs in one run.
pub const MAX_NSIDS: usize = 100_000;
/// Most pages read for one NSID from one relay (200 M DIDs at limit 1000): a relay whose
/// cursor never ends cannot keep a run going forever.
pub const MAX_PAGES_PER_NSID: u64 = 200_000;
/// Largest NSID list file or download.
pub const MAX_LIST_BYTES: usize = 16 << 20;
/// NSIDs per page of `GET /admin/collections`.
const ADMIN_PAGE: u32 = 1000;
const FIRST_RELAY_SOURCE: &str = "relays:first";

/// Where the NSIDs come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NsidSource {
    File(std::path::PathBuf),
    Url(String),
    Inline(Vec<String>),
    FirstRelay,
}

impl NsidSource {
    pub fn classify(text: &str) -> Result<NsidSource, CoverageError> {
        let text = text.trim();
        if text == FIRST_RELAY_SOURCE {
            return Ok(NsidSource::FirstRelay);
        }
        if text.starts_with("http://") || text.starts_with("https://") {
            return Ok(NsidSource::Url(text.to_string()));
        }
        let path = std::path::Path::new(text);
        if path.is_file() {
            return Ok(NsidSource::File(path.to_path_buf()));
        }
        let names: Vec<String> =
            text.split(',').map(str::trim).filter(|n| !n.is_empty()).map(String::from).collect();
        match names.iter().find(|n| syntax::validate_nsid(n).is_err()) {
            None if !names.is_empty() => Ok(NsidSource::Inline(names)),
            _ => Err(CoverageError::Arguments(format!(
                "--nsids {text:?} is neither a file, an http(s) URL, {FIRST_RELAY_SOURCE}, nor comma-separated NSIDs"
            ))),
        }
    }
}

/// The NSIDs of a newline list, in order, once each: the first NSID-shaped word of each line
/// (markdown bullets, links and backticks around it are fine), so an llms.txt-style page with
/// descriptions beside the names reads as its names.
pub fn parse_nsid_list(text: &str) -> Vec<String> {
    let separators = |c: char| c.is_whitespace() || "`*,:;()[]|<>\"'".contains(c);
    let mut seen = HashSet::new();
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| {
            line.split(separators)
                .map(|token| token.trim_start_matches('-').trim_end_matches('.'))
                .find(|token| syntax::validate_nsid(token).is_ok())
        })
        .filter(|nsid| seen.insert(nsid.to_string()))
        .map(String::from)
        .collect()
}

/// Loads the NSID list from its source.
pub async fn load_nsids(
    args: &CollectionsArgs,
    relays: &[RelayEndpoint],
    client: &reqwest::Client,
) -> Result<Vec<String>, CoverageError> {
    let source_error = |reason: String| CoverageError::NsidSource { source_name: args.nsids.clone(), reason };
    let nsids = match NsidSource::classify(&args.nsids)? {
        NsidSource::Inline(names) => names,
        NsidSource::File(path) => {
            let bytes = std::fs::read(&path).map_err(|e| source_error(e.to_string()))?;
            if bytes.len() > MAX_LIST_BYTES {
                return Err(source_error(format!("larger than {MAX_LIST_BYTES} bytes")));
            }
            parse_nsid_list(&String::from_utf8_lossy(&bytes))
        }
        NsidSource::Url(url) => parse_nsid_list(&download_list(client, &url).await.map_err(source_error)?),
        NsidSource::FirstRelay => first_relay_nsids(args, relays, client).await.map_err(source_error)?,
    };
    if nsids.is_empty() {
        return Err(source_error("no NSIDs in it".into()));
    }
    if nsids.len() > MAX_NSIDS {
        return Err(source_error(format!("{} NSIDs, more than the {MAX_NSIDS} one run takes", nsids.len())));
    }
    Ok(nsids)
}

async fn download_list(client: &reqwest::Client, url: &str) -> Result<String, String> {
    let mut response = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_LIST_BYTES {
            return Err(format!("larger than {MAX_LIST_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Every NSID of the first relay's collection index. No XRPC method lists a relay's
/// collections, so this reads this project's admin route `GET /admin/collections` (other
/// implementations have no equivalent: give them a list instead).
async fn first_relay_nsids(
    args: &CollectionsArgs,
    relays: &[RelayEndpoint],
    client: &reqwest::Client,
) -> Result<Vec<String>, String> {
    let token = args.admin_token.as_deref().filter(|t| !t.is_empty()).ok_or_else(|| {
        format!("{FIRST_RELAY_SOURCE} needs --admin-token: no public route lists a relay's collections")
    })?;
    let base = match &args.admin_url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => relays.first().map(|r| r.http_base.clone()).ok_or("no relay given")?,
    };
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let limit = ADMIN_PAGE.to_string();
        let mut params = vec![("limit", limit.as_str())];
        if let Some(cursor) = &cursor {
            params.push(("cursor", cursor.as_str()));
        }
        let url = http::with_query(&base, "/admin/collections", &params);
        let response = client.get(&url).bearer_auth(token).send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("GET {base}/admin/collections: HTTP {}", response.status()));
        }
        let page: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
        let names =
            page["collections"].as_array().into_iter().flatten().filter_map(|c| c["collection"].as_str());
        out.extend(names.filter(|n| syntax::validate_nsid(n).is_ok()).map(String::from));
        match page["cursor"].as_str() {
            Some(next) if Some(next) != cursor.as_deref() => cursor = Some(next.to_string()),
            _ => break,
        }
    }
    Ok(out)
}

/// One relay's answer for one NSID.
struct Listing {
    count: u64,
    /// The DIDs, while within the comparison cap.
    dids: Option<Vec<String>>,
    error: Option<String>,
}

struct Context<'a> {
    args: &'a CollectionsArgs,
    relays: &'a [RelayEndpoint],
    pacers: &'a [Pacer],
    client: &'a reqwest::Client,
}

/// Runs the collections comparison.
pub async fn run(args: &CollectionsArgs, progress: Progress) -> Result<CollectionsReport, CoverageError> {
    let relays = RelayEndpoint::parse_all(&args.relays, 1)?;
    if args.concurrency == 0 || args.per_relay_concurrency == 0 {
        return Err(CoverageError::Arguments("concurrency settings must be at least 1".into()));
    }
    let client = http::relay_client(args.request_timeout);
    let nsids = load_nsids(args, &relays, &client).await?;
    let pacers: Vec<Pacer> = relays.iter().map(|_| Pacer::new(args.per_relay_concurrency)).collect();
    let context = Context { args, relays: &relays, pacers: &pacers, client: &client };
    progress.line(&format!("collections: {} NSIDs, {} relays", nsids.len(), relays.len()));
    let mut results: Vec<(usize, NsidResult)> = Vec::with_capacity(nsids.len());
    let mut checks = futures_util::stream::iter(nsids.iter().enumerate())
        .map(|(i, nsid)| {
            let context = &context;
            async move { (i, check_nsid(context, nsid).await) }
        })
        .buffer_unordered(args.concurrency);
    let mut last_line = Instant::now();
    while let Some(result) = checks.next().await {
        results.push(result);
        if last_line.elapsed() >= PROGRESS_INTERVAL || results.len() == nsids.len() {
            last_line = Instant::now();
            progress.line(&progress_line(results.len(), nsids.len(), &relays, &pacers));
        }
    }
    drop(checks);
    results.sort_by_key(|(i, _)| *i);
    let results: Vec<NsidResult> = results.into_iter().map(|(_, r)| r).collect();
    let answered_any = |i: usize| results.iter().any(|r| r.counts[i].dids.is_some());
    if !(0..relays.len()).any(answered_any) {
        let first_error = results.first().and_then(|r| r.counts.iter().find_map(|c| c.error.clone()));
        return Err(CoverageError::NoRelayReachable(first_error.unwrap_or_else(|| "no answers".into())));
    }
    Ok(CollectionsReport {
        nsid_source: args.nsids.clone(),
        nsids: nsids.len() as u64,
        page_limit: args.page_limit,
        compare_max_dids: args.compare_max_dids as u64,
        relays: relay_summaries(&relays, &pacers, &results),
        results,
    })
}

fn progress_line(done: usize, total: usize, relays: &[RelayEndpoint], pacers: &[Pacer]) -> String {
    let per_relay: Vec<String> = relays
        .iter()
        .zip(pacers)
        .map(|(relay, pacer)| {
            let (requests, throttled) =
                (pacer.requests.load(Ordering::Relaxed), pacer.throttled.load(Ordering::Relaxed));
            format!("{} {requests} requests ({throttled} throttled)", relay.label)
        })
        .collect();
    format!("collections: {done}/{total} NSIDs done; {}", per_relay.join(", "))
}

async fn check_nsid(context: &Context<'_>, nsid: &str) -> NsidResult {
    let listings: Vec<Listing> = futures_util::future::join_all(
        context.relays.iter().zip(context.pacers).map(|(relay, pacer)| list_all(context, relay, pacer, nsid)),
    )
    .await;
    let counts: Vec<NsidCount> = context
        .relays
        .iter()
        .zip(&listings)
        .map(|(relay, listing)| NsidCount {
            relay: relay.label.clone(),
            dids: listing.error.is_none().then_some(listing.count),
            error: listing.error.clone(),
            compared: listing.error.is_none() && listing.dids.is_some(),
        })
        .collect();
    let leader = leader(&counts);
    let zero = counts.iter().filter(|c| c.dids == Some(0)).map(|c| c.relay.clone()).collect();
    let missing = missing_dids(context.relays, &listings, context.args.missing_sample);
    NsidResult { nsid: nsid.to_string(), leader, counts, zero, missing }
}

/// The relay with the most DIDs (the earlier one on a tie); none when all failed or are empty.
fn leader(counts: &[NsidCount]) -> Option<String> {
    let mut best: Option<(&NsidCount, u64)> = None;
    for count in counts {
        if let Some(n) = count.dids {
            if n > 0 && best.is_none_or(|(_, top)| n > top) {
                best = Some((count, n));
            }
        }
    }
    best.map(|(count, _)| count.relay.clone())
}

/// For each ordered pair of compared relays: the DIDs one lists and the other lacks.
fn missing_dids(relays: &[RelayEndpoint], listings: &[Listing], sample: usize) -> Vec<MissingDids> {
    fn usable(listing: &Listing) -> Option<&Vec<String>> {
        listing.error.is_none().then_some(listing.dids.as_ref()).flatten()
    }
    let sets: Vec<Option<HashSet<&str>>> =
        listings.iter().map(|l| usable(l).map(|dids| dids.iter().map(String::as_str).collect())).collect();
    let mut out = Vec::new();
    for (lacking, lacking_set) in relays.iter().zip(&sets) {
        let Some(lacking_set) = lacking_set else { continue };
        for (listing_relay, listing) in relays.iter().zip(listings) {
            let Some(listed) = usable(listing) else { continue };
            if std::ptr::eq(lacking, listing_relay) {
                continue;
            }
            let mut absent: Vec<&String> =
                listed.iter().filter(|d| !lacking_set.contains(d.as_str())).collect();
            if absent.is_empty() {
                continue;
            }
            absent.sort();
            absent.dedup();
            out.push(MissingDids {
                relay: lacking.label.clone(),
                listed_by: listing_relay.label.clone(),
                count: absent.len() as u64,
                sample: absent.into_iter().take(sample).cloned().collect(),
            });
        }
    }
    out
}

/// Pages one relay's `listReposByCollection` for one NSID to the end.
async fn list_all(context: &Context<'_>, relay: &RelayEndpoint, pacer: &Pacer, nsid: &str) -> Listing {
    let limit = context.args.page_limit.to_string();
    let mut listing = Listing { count: 0, dids: Some(Vec::new()), error: None };
    let mut cursor: Option<String> = None;
    for page_number in 0.. {
        if page_number == MAX_PAGES_PER_NSID {
            return failed(listing, FetchError::BadBody(format!("more than {MAX_PAGES_PER_NSID} pages")));
        }
        let mut params = vec![("collection", nsid), ("limit", limit.as_str())];
        if let Some(cursor) = &cursor {
            params.push(("cursor", cursor.as_str()));
        }
        let url = http::with_query(&relay.http_base, "/xrpc/com.atproto.sync.listReposByCollection", &params);
        let page = match http::get_json(context.client, pacer, &url).await {
            Ok(page) => page,
            Err(error) => return failed(listing, error),
        };
        let Some(repos) = page["repos"].as_array() else {
            return failed(listing, FetchError::BadBody("no repos array".into()));
        };
        add_page(&mut listing, repos, context.args.compare_max_dids);
        match page["cursor"].as_str().filter(|c| !c.is_empty()) {
            Some(_) if repos.is_empty() => break,
            Some(next) if Some(next) == cursor.as_deref() => {
                return failed(listing, FetchError::BadBody("the cursor did not advance".into()))
            }
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    listing
}

fn add_page(listing: &mut Listing, repos: &[serde_json::Value], cap: usize) {
    listing.count += repos.len() as u64;
    if let Some(dids) = &mut listing.dids {
        if dids.len() + repos.len() > cap {
            listing.dids = None;
        } else {
            dids.extend(repos.iter().filter_map(|r| r["did"].as_str()).map(String::from));
        }
    }
}

fn failed(mut listing: Listing, error: FetchError) -> Listing {
    listing.error = Some(error.to_string());
    listing.dids = None;
    listing
}

fn relay_summaries(
    relays: &[RelayEndpoint],
    pacers: &[Pacer],
    results: &[NsidResult],
) -> Vec<CollectionsRelay> {
    relays
        .iter()
        .zip(pacers)
        .enumerate()
        .map(|(i, (relay, pacer))| {
            let counts = results.iter().map(|r| &r.counts[i]);
            CollectionsRelay {
                relay: relay.label.clone(),
                nsids_answered: counts.clone().filter(|c| c.dids.is_some()).count() as u64,
                nsids_failed: counts.clone().filter(|c| c.dids.is_none()).count() as u64,
                nsids_zero: counts.clone().filter(|c| c.dids == Some(0)).count() as u64,
                nsids_led: results
                    .iter()
                    .filter(|r| r.leader.as_deref() == Some(relay.label.as_str()))
                    .count() as u64,
                total_dids: counts.filter_map(|c| c.dids).sum(),
                requests: pacer.requests.load(Ordering::Relaxed),
                throttled: pacer.throttled.load(Ordering::Relaxed),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nsid_lists_in_llms_txt_style() {
        let text = "# Indie lexicons\n\n- [com.whtwnd.blog.entry](https://lexicon.garden/lexicon/com.whtwnd.blog.entry): blog posts\n\
                    * `fyi.unravel.frontpage.post` - link posts\nsh.tangled.repo\nsh.tangled.repo\n\
                    see https://www.example.com for more\nnot an nsid\napp.bsky.feed.post, the feed\n";
        assert_eq!(
            parse_nsid_list(text),
            ["com.whtwnd.blog.entry", "fyi.unravel.frontpage.post", "sh.tangled.repo", "app.bsky.feed.post"]
        );
    }

    #[test]
    fn sources() {
        assert_eq!(NsidSource::classify("relays:first").ok(), Some(NsidSource::FirstRelay));
        assert_eq!(
            NsidSource::classify("https://lexicon.garden/llms.txt").ok(),
            Some(NsidSource::Url("https://lexicon.garden/llms.txt".into()))
        );
        assert_eq!(
            NsidSource::classify("a.b.c, d.e.f").ok(),
            Some(NsidSource::Inline(vec!["a.b.c".into(), "d.e.f".into()]))
        );
        assert!(NsidSource::classify("/no/such/file.txt").is_err());
        let path = std::env::temp_dir().join(format!("coverage-nsids-{}.txt", std::process::id()));
        std::fs::write(&path, "a.b.c\n").expect("write");
        assert_eq!(
            NsidSource::classify(path.to_str().expect("utf8")).ok(),
            Some(NsidSource::File(path.clone()))
        );
        let _ = std::fs::remove_file(path);
    }

    fn listing(dids: &[&str]) -> Listing {
        Listing {
            count: dids.len() as u64,
            dids: Some(dids.iter().map(|d| d.to_string()).collect()),
            error: None,
        }
    }

    #[test]
    fn missing_pairs_and_leader() {
        let relays: Vec<RelayEndpoint> =
            ["a.example", "b.example"].iter().map(|r| RelayEndpoint::parse(r).expect("relay")).collect();
        let listings = [listing(&["did:x:3", "did:x:1", "did:x:2"]), listing(&["did:x:1", "did:x:9"])];
        let missing = missing_dids(&relays, &listings, 1);
        assert_eq!(missing.len(), 2);
        assert_eq!((missing[0].relay.as_str(), missing[0].listed_by.as_str()), ("a.example", "b.example"));
        assert_eq!((missing[0].count, missing[0].sample.clone()), (1, vec!["did:x:9".to_string()]));
        assert_eq!((missing[1].count, missing[1].sample.clone()), (2, vec!["did:x:2".to_string()]));
        let counts = |a, b| {
            vec![
                NsidCount { relay: "a".into(), dids: a, error: None, compared: true },
                NsidCount { relay: "b".into(), dids: b, error: None, compared: true },
            ]
        };
        assert_eq!(leader(&counts(Some(3), Some(3))), Some("a".into()));
        assert_eq!(leader(&counts(None, Some(4))), Some("b".into()));
        assert_eq!(leader(&counts(Some(0), Some(0))), None);
    }
}
