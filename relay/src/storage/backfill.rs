//! Collection backfill progress: running jobs, per-collection import cursors and per-host
//! crawl cursors, so an interrupted backfill resumes where it stopped.

use super::{Store, StoreError};
use sqlx::Row;

impl Store {
    /// Marks a backfill job running (or stopped/done) and returns the previous state.
    pub async fn set_backfill_run(&self, kind: &str, source: &str, state: &str) -> Result<(), StoreError> {
        let now = super::now_seconds();
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
        let now = super::now_seconds();
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
        .bind(super::now_seconds())
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
        .bind(super::now_seconds())
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
