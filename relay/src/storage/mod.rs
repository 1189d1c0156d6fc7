//! Relay metadata in SQL: hosts, accounts (status and last repo state), domain bans and
//! takedown purges. Embedded SQLite by default; PostgreSQL when `DATABASE_URL` says so.
//! Both run the same queries through sqlx's `Any` driver, with a migration set per backend.

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL {0:?} (use sqlite:// or postgres://)")]
    UnsupportedUrl(String),
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// A host row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Host {
    pub id: i64,
    pub hostname: String,
    pub status: String,
    pub last_seq: i64,
    pub account_limit: i64,
    pub trusted: bool,
    pub ssl: bool,
    pub created_at: i64,
}

/// An account row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Account {
    pub did: String,
    pub host_id: Option<i64>,
    pub local_status: String,
    pub upstream_status: String,
    pub rev: Option<String>,
    pub data_cid: Option<String>,
    pub commit_cid: Option<String>,
}

impl crate::cache::Weigh for Account {
    fn weigh(&self) -> usize {
        std::mem::size_of::<Account>()
            + self.did.len()
            + self.local_status.len()
            + self.upstream_status.len()
            + [&self.rev, &self.data_cid, &self.commit_cid]
                .iter()
                .map(|s| s.as_ref().map_or(0, String::len))
                .sum::<usize>()
    }
}

impl Account {
    /// Active when neither the relay nor the upstream says otherwise.
    pub fn is_active(&self) -> bool {
        self.local_status == "active" && self.upstream_status == "active"
    }

    /// The status to report: a local override wins over the upstream's.
    pub fn effective_status(&self) -> &str {
        if self.local_status != "active" {
            &self.local_status
        } else {
            &self.upstream_status
        }
    }
}

/// One account's repo state as set by a durable event.
#[derive(Debug, Clone, Copy)]
pub struct RepoStateUpdate<'a> {
    pub did: &'a str,
    pub rev: &'a str,
    pub data_cid: &'a str,
    pub commit_cid: Option<&'a str>,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// Accounts per host, counted once per host and then kept by the writes below: the
    /// account limit is checked on every new account, and counting a host with hundreds of
    /// thousands of accounts each time made a cold start against the network quadratic.
    /// Valid because this relay is the only writer of its accounts table.
    host_account_counts: Arc<Mutex<HashMap<i64, HostAccountCount>>>,
}

#[derive(Default)]
struct HostAccountCount {
    /// `None` until counted.
    count: Option<i64>,
    /// Account writes seen for the host, to tell whether one raced with a count.
    writes: u64,
}

fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn host_from_row(row: &AnyRow) -> Result<Host, sqlx::Error> {
    Ok(Host {
        id: row.try_get("id")?,
        hostname: row.try_get("hostname")?,
        status: row.try_get("status")?,
        last_seq: row.try_get("last_seq")?,
        account_limit: row.try_get("account_limit")?,
        trusted: row.try_get::<i64, _>("trusted")? != 0,
        ssl: row.try_get::<i64, _>("ssl")? != 0,
        created_at: row.try_get("created_at")?,
    })
}

fn account_from_row(row: &AnyRow) -> Result<Account, sqlx::Error> {
    Ok(Account {
        did: row.try_get("did")?,
        host_id: row.try_get("host_id")?,
        local_status: row.try_get("local_status")?,
        upstream_status: row.try_get("upstream_status")?,
        rev: row.try_get("rev")?,
        data_cid: row.try_get("data_cid")?,
        commit_cid: row.try_get("commit_cid")?,
    })
}

const HOST_COLUMNS: &str = "id, hostname, status, last_seq, account_limit, trusted, ssl, created_at";
const ACCOUNT_COLUMNS: &str = "did, host_id, local_status, upstream_status, rev, data_cid, commit_cid";

impl Store {
    /// Connects (creating an SQLite file if needed) and runs migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let is_sqlite = url.starts_with("sqlite:");
        let is_postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
        if !is_sqlite && !is_postgres {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        }
        let url = if is_sqlite && !url.contains("mode=") {
            format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
        } else {
            url.to_string()
        };
        // SQLite allows one writer; a small pool avoids lock contention.
        let connections = if is_sqlite { max_connections.min(4) } else { max_connections };
        let pool = AnyPoolOptions::new()
            .max_connections(connections.max(1))
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if is_sqlite {
                        sqlx::query("PRAGMA journal_mode = WAL").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA synchronous = NORMAL").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA busy_timeout = 10000").execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        if is_sqlite {
            SQLITE_MIGRATIONS.run(&pool).await?;
        } else {
            POSTGRES_MIGRATIONS.run(&pool).await?;
        }
        Ok(Store { pool, host_account_counts: Arc::default() })
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    // ---- hosts

    pub async fn host_by_name(&self, hostname: &str) -> Result<Option<Host>, StoreError> {
        let sql = format!("SELECT {HOST_COLUMNS} FROM hosts WHERE hostname = $1");
        let row = sqlx::query(&sql).bind(hostname).fetch_optional(&self.pool).await?;
        Ok(row.as_ref().map(host_from_row).transpose()?)
    }

    pub async fn host_by_id(&self, id: i64) -> Result<Option<Host>, StoreError> {
        let sql = format!("SELECT {HOST_COLUMNS} FROM hosts WHERE id = $1");
        let row = sqlx::query(&sql).bind(id).fetch_optional(&self.pool).await?;
        Ok(row.as_ref().map(host_from_row).transpose()?)
    }

    /// Inserts a host if new; returns the stored row either way.
    pub async fn upsert_host(
        &self,
        hostname: &str,
        ssl: bool,
        account_limit: i64,
        trusted: bool,
    ) -> Result<Host, StoreError> {
        let now = now_seconds();
        sqlx::query(
            "INSERT INTO hosts (hostname, status, last_seq, account_limit, trusted, ssl, created_at, updated_at) \
             VALUES ($1, 'active', 0, $2, $3, $4, $5, $5) ON CONFLICT (hostname) DO NOTHING",
        )
        .bind(hostname)
        .bind(account_limit)
        .bind(i64::from(trusted))
        .bind(i64::from(ssl))
        .bind(now)
        .execute(&self.pool)
        .await?;
        self.host_by_name(hostname).await?.ok_or(StoreError::Sql(sqlx::Error::RowNotFound))
    }

    /// Hosts with id > `after`, in id order.
    pub async fn list_hosts(&self, after: i64, limit: i64) -> Result<Vec<Host>, StoreError> {
        let sql = format!("SELECT {HOST_COLUMNS} FROM hosts WHERE id > $1 ORDER BY id LIMIT $2");
        let rows = sqlx::query(&sql).bind(after).bind(limit).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(host_from_row).collect::<Result<_, _>>()?)
    }

    pub async fn set_host_status(&self, id: i64, status: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE hosts SET status = $1, updated_at = $2 WHERE id = $3")
            .bind(status)
            .bind(now_seconds())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_host_account_limit(&self, id: i64, limit: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE hosts SET account_limit = $1, updated_at = $2 WHERE id = $3")
            .bind(limit)
            .bind(now_seconds())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// How many hosts have each status (one grouped query; the host gauges are refreshed
    /// after every admin or crawl change, so this must not read every host row).
    pub async fn count_hosts_by_status(&self) -> Result<HashMap<String, i64>, StoreError> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM hosts GROUP BY status")
            .fetch_all(&self.pool)
            .await?;
        let mut counts = HashMap::new();
        for row in rows {
            counts.insert(row.try_get::<String, _>("status")?, row.try_get::<i64, _>("n")?);
        }
        Ok(counts)
    }

    /// Sets a host's upstream cursor, backwards too (an operator's reset).
    pub async fn set_host_cursor(&self, id: i64, seq: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE hosts SET last_seq = $1 WHERE id = $2")
            .bind(seq)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Saves upstream cursors in one transaction, never moving one backwards (the relay
    /// flushes every host's moved cursor together instead of one write per host).
    pub async fn save_host_cursors(&self, cursors: &[(i64, i64)]) -> Result<(), StoreError> {
        if cursors.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for (id, seq) in cursors {
            sqlx::query("UPDATE hosts SET last_seq = $1 WHERE id = $2 AND last_seq < $1")
                .bind(seq)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Accounts whose current host is `id`.
    pub async fn count_host_accounts(&self, id: i64) -> Result<i64, StoreError> {
        let writes_before = {
            let mut counts = self.counts();
            let entry = counts.entry(id).or_default();
            if let Some(count) = entry.count {
                return Ok(count);
            }
            entry.writes
        };
        let row = sqlx::query("SELECT COUNT(*) AS n FROM accounts WHERE host_id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        let count: i64 = row.try_get("n")?;
        // Kept only if no account of this host came or went while counting (the count may or
        // may not include such a write); otherwise the next call counts again.
        let mut counts = self.counts();
        let entry = counts.entry(id).or_default();
        if entry.writes == writes_before {
            entry.count = Some(count);
        }
        Ok(count)
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<i64, HostAccountCount>> {
        self.host_account_counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps a host's cached count right after one of its accounts came (`+1`) or went (`-1`).
    fn adjust_host_count(&self, id: Option<i64>, delta: i64) {
        let Some(id) = id else { return };
        let mut counts = self.counts();
        let entry = counts.entry(id).or_default();
        entry.writes += 1;
        if let Some(count) = entry.count.as_mut() {
            *count += delta;
        }
    }

    // ---- accounts

    pub async fn account(&self, did: &str) -> Result<Option<Account>, StoreError> {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE did = $1");
        let row = sqlx::query(&sql).bind(did).fetch_optional(&self.pool).await?;
        Ok(row.as_ref().map(account_from_row).transpose()?)
    }

    /// Creates the account row if missing (first event seen for the DID).
    pub async fn ensure_account(&self, did: &str, host_id: Option<i64>) -> Result<Account, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO accounts (did, host_id, local_status, upstream_status, updated_at) \
             VALUES ($1, $2, 'active', 'active', $3) ON CONFLICT (did) DO NOTHING",
        )
        .bind(did)
        .bind(host_id)
        .bind(now_seconds())
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() > 0 {
            self.adjust_host_count(host_id, 1);
        }
        self.account(did).await?.ok_or(StoreError::Sql(sqlx::Error::RowNotFound))
    }

    /// Moves an account to another host (`previous` is the host it had, for the counts).
    pub async fn set_account_host(
        &self,
        did: &str,
        previous: Option<i64>,
        host_id: i64,
    ) -> Result<(), StoreError> {
        let updated = sqlx::query("UPDATE accounts SET host_id = $1, updated_at = $2 WHERE did = $3")
            .bind(host_id)
            .bind(now_seconds())
            .bind(did)
            .execute(&self.pool)
            .await?;
        if updated.rows_affected() > 0 && previous != Some(host_id) {
            self.adjust_host_count(previous, -1);
            self.adjust_host_count(Some(host_id), 1);
        }
        Ok(())
    }

    pub async fn set_upstream_status(&self, did: &str, status: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE accounts SET upstream_status = $1, updated_at = $2 WHERE did = $3")
            .bind(status)
            .bind(now_seconds())
            .bind(did)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_local_status(&self, did: &str, status: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE accounts SET local_status = $1, updated_at = $2 WHERE did = $3")
            .bind(status)
            .bind(now_seconds())
            .bind(did)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Stores the repo state of a run of durable events and moves the checkpoint up to
    /// `checkpoint` (never down), all in one transaction (one SQLite commit per run, not per event).
    pub async fn save_repo_states(
        &self,
        states: &[RepoStateUpdate<'_>],
        checkpoint: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let now = now_seconds();
        for state in states {
            sqlx::query("UPDATE accounts SET rev = $1, data_cid = $2, commit_cid = COALESCE($3, commit_cid), updated_at = $4 WHERE did = $5")
                .bind(state.rev)
                .bind(state.data_cid)
                .bind(state.commit_cid)
                .bind(now)
                .bind(state.did)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE state_checkpoint SET seq = $1 WHERE id = 1 AND seq < $1")
            .bind(checkpoint)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Active accounts with a stored repo state, DID-ordered after `after`.
    pub async fn list_repos(&self, after: &str, limit: i64) -> Result<Vec<Account>, StoreError> {
        let sql = format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE did > $1 AND rev IS NOT NULL \
             AND local_status = 'active' AND upstream_status = 'active' ORDER BY did LIMIT $2"
        );
        let rows = sqlx::query(&sql).bind(after).bind(limit).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(account_from_row).collect::<Result<_, _>>()?)
    }

    /// The relay seq up to which repo state from the log is applied.
    pub async fn state_checkpoint(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT seq FROM state_checkpoint WHERE id = 1").fetch_one(&self.pool).await?;
        Ok(row.try_get("seq")?)
    }

    // ---- bans and purges

    pub async fn ban_domain(&self, domain: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO domain_bans (domain, created_at) VALUES ($1, $2) ON CONFLICT (domain) DO NOTHING",
        )
        .bind(domain)
        .bind(now_seconds())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn unban_domain(&self, domain: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM domain_bans WHERE domain = $1").bind(domain).execute(&self.pool).await?;
        Ok(())
    }

    pub async fn domain_bans(&self) -> Result<Vec<String>, StoreError> {
        let rows =
            sqlx::query("SELECT domain FROM domain_bans ORDER BY domain").fetch_all(&self.pool).await?;
        Ok(rows.iter().map(|r| r.try_get("domain")).collect::<Result<_, _>>()?)
    }

    pub async fn save_purge(&self, did: &str, before_seq: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO purges (did, before_seq) VALUES ($1, $2) \
             ON CONFLICT (did) DO UPDATE SET before_seq = excluded.before_seq",
        )
        .bind(did)
        .bind(before_seq)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn purges(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT did, before_seq FROM purges").fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| Ok((r.try_get("did")?, r.try_get("before_seq")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// The effective status of those of `dids` the relay knows as not active.
    pub async fn inactive_statuses(&self, dids: &[&str]) -> Result<HashMap<String, String>, StoreError> {
        let mut out = HashMap::new();
        for chunk in dids.chunks(500) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT did, local_status, upstream_status FROM accounts WHERE did IN ({}) \
                 AND (local_status <> 'active' OR upstream_status <> 'active')",
                placeholders.join(",")
            );
            let mut query = sqlx::query(&sql);
            for did in chunk {
                query = query.bind(*did);
            }
            for row in query.fetch_all(&self.pool).await? {
                let (did, local, upstream): (String, String, String) =
                    (row.try_get("did")?, row.try_get("local_status")?, row.try_get("upstream_status")?);
                out.insert(did, if local != "active" { local } else { upstream });
            }
        }
        Ok(out)
    }

    // ---- collection backfill progress

    /// Marks a backfill job running (or stopped/done) and returns the previous state.
    pub async fn set_backfill_run(&self, kind: &str, source: &str, state: &str) -> Result<(), StoreError> {
        let now = now_seconds();
        sqlx::query(
            "INSERT INTO backfill_runs (kind, source, state, started_at, updated_at) VALUES ($1, $2, $3, $4, $4) \
             ON CONFLICT (kind, source) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
        )
        .bind(kind)
        .bind(source)
        .bind(state)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Jobs that were running when the relay stopped: (kind, source).
    pub async fn running_backfills(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT kind, source FROM backfill_runs WHERE state = 'running' ORDER BY kind, source",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("kind")?, r.try_get("source")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Adds collections to an import (existing rows keep their progress).
    pub async fn add_import_collections(
        &self,
        source: &str,
        collections: &[String],
    ) -> Result<(), StoreError> {
        let now = now_seconds();
        for collection in collections {
            sqlx::query(
                "INSERT INTO backfill_imports (source, collection, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (source, collection) DO NOTHING",
            )
            .bind(source)
            .bind(collection)
            .bind(now)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    /// Re-opens finished collections of an import so a new run fetches them again from the start.
    pub async fn restart_import_collections(
        &self,
        source: &str,
        collections: &[String],
    ) -> Result<(), StoreError> {
        for collection in collections {
            sqlx::query(
                "UPDATE backfill_imports SET cursor = NULL, done = 0, error = NULL \
                 WHERE source = $1 AND collection = $2 AND done = 1",
            )
            .bind(source)
            .bind(collection)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    pub async fn import_progress(&self, source: &str) -> Result<Vec<ImportProgress>, StoreError> {
        let rows = sqlx::query(
            "SELECT collection, cursor, imported, pages, done, error FROM backfill_imports \
             WHERE source = $1 ORDER BY collection",
        )
        .bind(source)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ImportProgress {
                    collection: r.try_get("collection")?,
                    cursor: r.try_get("cursor")?,
                    imported: r.try_get("imported")?,
                    pages: r.try_get("pages")?,
                    done: r.try_get::<i64, _>("done")? != 0,
                    error: r.try_get("error")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Records one imported page: the cursor to continue from (none = done).
    pub async fn save_import_page(
        &self,
        source: &str,
        collection: &str,
        cursor: Option<&str>,
        dids: i64,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE backfill_imports SET cursor = $3, imported = imported + $4, pages = pages + 1, \
             done = $5, error = $6, updated_at = $7 WHERE source = $1 AND collection = $2",
        )
        .bind(source)
        .bind(collection)
        .bind(cursor)
        .bind(dids)
        .bind(i64::from(cursor.is_none()))
        .bind(error)
        .bind(now_seconds())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn crawl_progress(&self, hostname: &str) -> Result<Option<CrawlProgress>, StoreError> {
        let row = sqlx::query(
            "SELECT hostname, cursor, repos, done, error FROM backfill_crawl WHERE hostname = $1",
        )
        .bind(hostname)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| crawl_from_row(&r)).transpose().map_err(StoreError::from)
    }

    pub async fn all_crawl_progress(&self) -> Result<Vec<CrawlProgress>, StoreError> {
        let rows =
            sqlx::query("SELECT hostname, cursor, repos, done, error FROM backfill_crawl ORDER BY hostname")
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(crawl_from_row).collect::<Result<_, sqlx::Error>>().map_err(StoreError::from)
    }

    /// Records one crawled listRepos page of a host (cursor none = done).
    pub async fn save_crawl_page(
        &self,
        hostname: &str,
        cursor: Option<&str>,
        repos: i64,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO backfill_crawl (hostname, cursor, repos, done, error, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (hostname) DO UPDATE SET cursor = excluded.cursor, \
             repos = backfill_crawl.repos + excluded.repos, done = excluded.done, error = excluded.error, \
             updated_at = excluded.updated_at",
        )
        .bind(hostname)
        .bind(cursor)
        .bind(repos)
        .bind(i64::from(cursor.is_none()))
        .bind(error)
        .bind(now_seconds())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets finished crawls so a new crawl run visits those hosts again.
    pub async fn reset_finished_crawls(&self) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM backfill_crawl WHERE done = 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// Progress of one collection of an import.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportProgress {
    pub collection: String,
    pub cursor: Option<String>,
    pub imported: i64,
    pub pages: i64,
    pub done: bool,
    pub error: Option<String>,
}

/// Progress of the crawl of one host.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CrawlProgress {
    pub hostname: String,
    pub cursor: Option<String>,
    pub repos: i64,
    pub done: bool,
    pub error: Option<String>,
}

fn crawl_from_row(r: &sqlx::any::AnyRow) -> Result<CrawlProgress, sqlx::Error> {
    Ok(CrawlProgress {
        hostname: r.try_get("hostname")?,
        cursor: r.try_get("cursor")?,
        repos: r.try_get("repos")?,
        done: r.try_get::<i64, _>("done")? != 0,
        error: r.try_get("error")?,
    })
}
