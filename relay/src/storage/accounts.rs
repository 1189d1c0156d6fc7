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

/// Accounts per multi-row repo-state statement: 4 parameters each stays far below SQLite's
/// 32,766 and PostgreSQL's 65,535 bound parameters, and the SQL text stays small.
const REPO_STATE_ROWS_PER_STATEMENT: usize = 256;

/// One update per account with the effect of applying `states` in order: the last rev and
/// data CID, and the last commit CID given (a `#sync` carries none and keeps the stored one).
/// A multi-row `UPDATE … FROM` applies an unspecified one of several rows matching the same
/// account, so duplicates must not reach it.
fn merge_repo_states<'a>(states: &[RepoStateUpdate<'a>]) -> Vec<RepoStateUpdate<'a>> {
    let mut position: HashMap<&str, usize> = HashMap::with_capacity(states.len());
    let mut merged: Vec<RepoStateUpdate<'a>> = Vec::with_capacity(states.len());
    for state in states {
        match position.get(state.did) {
            Some(&index) => {
                let earlier_commit = merged[index].commit_cid;
                merged[index] = RepoStateUpdate { commit_cid: state.commit_cid.or(earlier_commit), ..*state };
            }
            None => {
                position.insert(state.did, merged.len());
                merged.push(*state);
            }
        }
    }
    merged
}

/// `UPDATE accounts … FROM (VALUES ($2,$3,$4,$5), …)` for `rows` accounts; `$1` is the time.
fn repo_state_update_sql(rows: usize) -> String {
    let mut sql = String::from(
        "UPDATE accounts SET rev = v.column2, data_cid = v.column3, \
         commit_cid = COALESCE(v.column4, accounts.commit_cid), updated_at = $1 FROM (VALUES ",
    );
    for row in 0..rows {
        let first = 2 + row * 4;
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("(${}, ${}, ${}, ${})", first, first + 1, first + 2, first + 3));
    }
    sql.push_str(") AS v WHERE accounts.did = v.column1");
    sql
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
        let merged = merge_repo_states(states);
        let mut tx = self.pool.begin().await?;
        let now = super::now_seconds();
        // One multi-row statement per chunk, not one per account: each statement is a round
        // trip to SQLite's worker thread (two futex hand-offs), which at saturation cost more
        // CPU than the SQL itself. `UPDATE … FROM (VALUES …)` is understood by SQLite ≥ 3.33
        // and PostgreSQL alike; both name a VALUES list's columns column1, column2, ….
        for chunk in merged.chunks(REPO_STATE_ROWS_PER_STATEMENT) {
            let sql = repo_state_update_sql(chunk.len());
            let mut query = sqlx::query(&sql).bind(now);
            for state in chunk {
                query = query.bind(state.did).bind(state.rev).bind(state.data_cid).bind(state.commit_cid);
            }
            query.execute(&mut *tx).await?;
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
