//! The `hosts` table: upstream PDS hosts, their status, cursor and account limit, and the
//! per-host account counts the account limit is checked against.

use super::{HostAccountCount, HostStatus, Store, StoreError};
use sqlx::any::AnyRow;
use sqlx::Row;
use std::collections::HashMap;

/// A host row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Host {
    pub id: i64,
    pub hostname: String,
    pub status: HostStatus,
    pub last_seq: i64,
    pub account_limit: i64,
    pub trusted: bool,
    pub ssl: bool,
    pub created_at: i64,
}

/// A stored status this relay does not write is a corrupt row, not a guess.
fn host_status(text: &str) -> Result<HostStatus, sqlx::Error> {
    HostStatus::parse(text).ok_or_else(|| sqlx::Error::Decode(format!("unknown host status {text:?}").into()))
}

fn host_from_row(row: &AnyRow) -> Result<Host, sqlx::Error> {
    Ok(Host {
        id: row.try_get("id")?,
        hostname: row.try_get("hostname")?,
        status: host_status(&row.try_get::<String, _>("status")?)?,
        last_seq: row.try_get("last_seq")?,
        account_limit: row.try_get("account_limit")?,
        trusted: row.try_get::<i64, _>("trusted")? != 0,
        ssl: row.try_get::<i64, _>("ssl")? != 0,
        created_at: row.try_get("created_at")?,
    })
}

const HOST_COLUMNS: &str = "id, hostname, status, last_seq, account_limit, trusted, ssl, created_at";

impl Store {
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
        let now = super::now_seconds();
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

    pub async fn set_host_status(&self, id: i64, status: HostStatus) -> Result<(), StoreError> {
        sqlx::query("UPDATE hosts SET status = $1, updated_at = $2 WHERE id = $3")
            .bind(status.as_str())
            .bind(super::now_seconds())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_host_account_limit(&self, id: i64, limit: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE hosts SET account_limit = $1, updated_at = $2 WHERE id = $3")
            .bind(limit)
            .bind(super::now_seconds())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// How many hosts have each status (one grouped query; the host gauges are refreshed
    /// after every admin or crawl change, so this must not read every host row).
    pub async fn count_hosts_by_status(&self) -> Result<HashMap<HostStatus, i64>, StoreError> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM hosts GROUP BY status")
            .fetch_all(&self.pool)
            .await?;
        let mut counts = HashMap::new();
        for row in rows {
            counts.insert(host_status(&row.try_get::<String, _>("status")?)?, row.try_get::<i64, _>("n")?);
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
    pub(super) fn adjust_host_count(&self, id: Option<i64>, delta: i64) {
        let Some(id) = id else { return };
        let mut counts = self.counts();
        let entry = counts.entry(id).or_default();
        entry.writes += 1;
        if let Some(count) = entry.count.as_mut() {
            *count += delta;
        }
    }
}
