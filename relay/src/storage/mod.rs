//! Relay metadata in SQL: hosts, accounts (status and last repo state), domain bans and
//! takedown purges. Embedded SQLite by default; PostgreSQL when `DATABASE_URL` says so.
//! Both run the same queries through sqlx's `Any` driver, with a migration set per backend.
//!
//! One file per table family: `hosts`, `accounts` (with repo state and the state
//! checkpoint), `bans` (domain bans and takedown purges), `backfill` (collection backfill
//! progress); `status` holds the host and account status values.

mod accounts;
mod backfill;
mod bans;
mod hosts;
mod status;

pub use accounts::{Account, RepoStateUpdate};
pub use backfill::{CrawlProgress, ImportProgress};
pub use hosts::Host;
pub use status::{AccountStatus, HostStatus};

use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;
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
}
