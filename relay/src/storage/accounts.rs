//! The `accounts` table: each account's host, local and upstream status and last repo
//! state, and the checkpoint up to which repo state from the event log is applied.

use super::{AccountStatus, Store, StoreError};
use sqlx::any::AnyRow;
use sqlx::Row;
use std::collections::HashMap;

/// An account row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Account {
    pub did: String,
    pub host_id: Option<i64>,
    pub local_status: AccountStatus,
    pub upstream_status: AccountStatus,
    pub rev: Option<String>,
    pub data_cid: Option<String>,
    pub commit_cid: Option<String>,
}

impl crate::cache::Weigh for Account {
    fn weigh(&self) -> usize {
        std::mem::size_of::<Account>()
            + self.did.len()
            + self.local_status.as_str().len()
            + self.upstream_status.as_str().len()
            + [&self.rev, &self.data_cid, &self.commit_cid]
                .iter()
                .map(|s| s.as_ref().map_or(0, String::len))
                .sum::<usize>()
    }
}

impl Account {
    /// Active when neither the relay nor the upstream says otherwise.
    pub fn is_active(&self) -> bool {
        self.local_status.is_active() && self.upstream_status.is_active()
    }

    /// The status to report: a local override wins over the upstream's.
    pub fn effective_status(&self) -> &AccountStatus {
        if !self.local_status.is_active() {
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

fn account_from_row(row: &AnyRow) -> Result<Account, sqlx::Error> {
    Ok(Account {
        did: row.try_get("did")?,
        host_id: row.try_get("host_id")?,
        local_status: AccountStatus::from_token(&row.try_get::<String, _>("local_status")?),
        upstream_status: AccountStatus::from_token(&row.try_get::<String, _>("upstream_status")?),
        rev: row.try_get("rev")?,
        data_cid: row.try_get("data_cid")?,
        commit_cid: row.try_get("commit_cid")?,
    })
}

const ACCOUNT_COLUMNS: &str = "did, host_id, local_status, upstream_status, rev, data_cid, commit_cid";

impl Store {
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
        .bind(super::now_seconds())
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
            .bind(super::now_seconds())
            .bind(did)
            .execute(&self.pool)
            .await?;
        if updated.rows_affected() > 0 && previous != Some(host_id) {
            self.adjust_host_count(previous, -1);
            self.adjust_host_count(Some(host_id), 1);
        }
        Ok(())
    }

    pub async fn set_upstream_status(&self, did: &str, status: &AccountStatus) -> Result<(), StoreError> {
        sqlx::query("UPDATE accounts SET upstream_status = $1, updated_at = $2 WHERE did = $3")
            .bind(status.as_str())
            .bind(super::now_seconds())
            .bind(did)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_local_status(&self, did: &str, status: &AccountStatus) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE accounts SET local_status = $1, updated_at = $2 WHERE did = $3")
            .bind(status.as_str())
            .bind(super::now_seconds())
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
        let now = super::now_seconds();
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

    /// The effective status of those of `dids` the relay knows as not active.
    pub async fn inactive_statuses(
        &self,
        dids: &[&str],
    ) -> Result<HashMap<String, AccountStatus>, StoreError> {
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
                let status = if local != AccountStatus::Active.as_str() { local } else { upstream };
                out.insert(did, AccountStatus::from_token(&status));
            }
        }
        Ok(out)
    }
}
