//! An LRU cache bounded by the bytes its entries hold, not by their number.
//!
//! Entry counts say nothing about memory when entries come from the network: one hostile
//! host can fill an entry-bounded cache with large values. Each value reports its own
//! approximate size ([`Weigh`]) and the least recently used entries go until the total fits.

/// Approximate heap and inline bytes of a cached value (keys are counted by the cache).
pub trait Weigh {
    fn weigh(&self) -> usize;
}

/// Bookkeeping bytes per entry beyond key and value (the LRU's node and hash slot).
const ENTRY_OVERHEAD: usize = 64;

pub struct ByteLru<V> {
    entries: lru::LruCache<String, V>,
    bytes: usize,
    budget: usize,
    max_entries: usize,
}

impl<V: Weigh> ByteLru<V> {
    /// A cache holding at most `budget` bytes (and at most `max_entries` entries).
    pub fn new(budget: usize, max_entries: usize) -> ByteLru<V> {
        // Unbounded underneath (an entry-bounded LruCache allocates its whole table up
        // front); both bounds are enforced in `put`.
        ByteLru { entries: lru::LruCache::unbounded(), bytes: 0, budget, max_entries: max_entries.max(1) }
    }

    fn cost(key: &str, value: &V) -> usize {
        key.len() + value.weigh() + ENTRY_OVERHEAD
    }

    pub fn get(&mut self, key: &str) -> Option<&V> {
        self.entries.get(key)
    }

    /// Inserts (or replaces) and evicts least recently used entries until within budget.
    /// A value larger than the whole budget is not kept at all.
    pub fn put(&mut self, key: String, value: V) {
        let cost = Self::cost(&key, &value);
        self.pop(&key);
        if cost > self.budget {
            return;
        }
        self.entries.put(key, value);
        self.bytes += cost;
        while self.bytes > self.budget || self.entries.len() > self.max_entries {
            match self.entries.pop_lru() {
                Some((old_key, old)) => self.bytes = self.bytes.saturating_sub(Self::cost(&old_key, &old)),
                None => break,
            }
        }
    }

    pub fn pop(&mut self, key: &str) -> Option<V> {
        let value = self.entries.pop(key)?;
        self.bytes = self.bytes.saturating_sub(Self::cost(key, &value));
        Some(value)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes currently accounted to entries.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// A set: the key is all there is.
impl Weigh for () {
    fn weigh(&self) -> usize {
        0
    }
}

impl Weigh for String {
    fn weigh(&self) -> usize {
        std::mem::size_of::<String>() + self.len()
    }
}

impl<T: Weigh> Weigh for Option<T> {
    fn weigh(&self) -> usize {
        self.as_ref().map_or(std::mem::size_of::<Self>(), Weigh::weigh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_by_bytes_not_entries() {
        let mut cache = ByteLru::new(1_000, 1_000_000);
        for i in 0..100 {
            cache.put(format!("k{i}"), "x".repeat(100));
        }
        assert!(cache.bytes() <= 1_000, "{} bytes", cache.bytes());
        assert!(cache.len() < 10, "{} entries", cache.len());
        // The newest entry survives, the oldest went first.
        assert!(cache.contains("k99"));
        assert!(!cache.contains("k0"));
    }

    #[test]
    fn an_oversized_value_is_not_kept_and_replacing_keeps_the_count_right() {
        let mut cache = ByteLru::new(500, 100);
        cache.put("big".into(), "x".repeat(10_000));
        assert!(cache.is_empty());
        assert_eq!(cache.bytes(), 0);
        cache.put("a".into(), "1".into());
        let one = cache.bytes();
        cache.put("a".into(), "1".into());
        assert_eq!(cache.bytes(), one, "replacing a key does not count it twice");
        assert_eq!(cache.pop("a").as_deref(), Some("1"));
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn entry_capacity_still_applies() {
        let mut cache = ByteLru::new(1 << 20, 3);
        for i in 0..10 {
            cache.put(format!("k{i}"), String::new());
        }
        assert_eq!(cache.len(), 3);
        let expected: usize =
            (7..10).map(|i| ByteLru::<String>::cost(&format!("k{i}"), &String::new())).sum();
        assert_eq!(cache.bytes(), expected);
    }
}
