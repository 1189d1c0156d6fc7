//! Domain bans (hosts under a banned domain are refused) and takedown purges (events of a
//! taken-down DID below a seq are not replayed).

use super::{Store, StoreError};
use sqlx::Row;

impl Store {
    pub async fn ban_domain(&self, domain: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO domain_bans (domain, created_at) VALUES ($1, $2) ON CONFLICT (domain) DO NOTHING",
        )
        .bind(domain)
        .bind(super::now_seconds())
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
}
