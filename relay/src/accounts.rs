//! The account directory: stored account rows behind a cache bounded by bytes. The
//! validation stage reads and creates accounts through it; an operator's takedown drops
//! the cached row so the next event sees the new status.

use crate::cache::ByteLru;
use crate::storage::{Account, Store, StoreError};
use std::sync::Mutex;

pub struct Accounts {
    store: Store,
    cache: Mutex<ByteLru<Account>>,
}

impl Accounts {
    pub fn new(store: Store, cache_bytes: usize) -> Accounts {
        Accounts { store, cache: Mutex::new(ByteLru::new(cache_bytes, usize::MAX)) }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, ByteLru<Account>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stored account row, through the cache. Never creates one: rows are created only
    /// for events that passed validation (`create`).
    pub async fn known(&self, did: &str) -> Result<Option<Account>, StoreError> {
        if let Some(account) = self.cache().get(did) {
            return Ok(Some(account.clone()));
        }
        let account = self.store.account(did).await?;
        if let Some(account) = &account {
            self.remember(account.clone());
        }
        Ok(account)
    }

    /// Stores a new account served by `host_id`, unless the host is at its account limit
    /// (`Ok(None)`).
    pub async fn create(&self, did: &str, host_id: i64) -> Result<Option<Account>, StoreError> {
        if !self.host_has_room(host_id).await? {
            return Ok(None);
        }
        let account = self.store.ensure_account(did, Some(host_id)).await?;
        self.remember(account.clone());
        Ok(Some(account))
    }

    /// Whether a host may bring one more account (its account limit).
    pub async fn host_has_room(&self, host_id: i64) -> Result<bool, StoreError> {
        let Some(host) = self.store.host_by_id(host_id).await? else {
            return Ok(false);
        };
        Ok(self.store.count_host_accounts(host_id).await? < host.account_limit)
    }

    /// Caches a row as it is now (after the validation stage changed it).
    pub fn remember(&self, account: Account) {
        self.cache().put(account.did.clone(), account);
    }

    /// Sets the local (takedown) status of a cached row after it was stored. The row is
    /// updated in place rather than dropped and re-read: its repo state may be newer than
    /// SQL's, which the state writer stores only after the event is durable.
    pub fn set_local_status(&self, did: &str, status: crate::storage::AccountStatus) {
        let mut cache = self.cache();
        if let Some(mut account) = cache.pop(did) {
            account.local_status = status;
            cache.put(did.to_string(), account);
        }
    }
}
