//! A map that an adversary cannot grow: at most a fixed number of
//! entries, and when it is full the quiet ones are forgotten to make room
//! for a new key. What "quiet" means (no denial for two windows, a budget's
//! window over, a review expired) is each user's, given as a closure at the
//! call; so is what to do when nothing is quiet (refuse the new key, or
//! forget the least useful entry with [`BoundedMap::forget_least`]).
//!
//! The control plane keys these by what callers and agents choose (a
//! session, a username, a token), so without the cap any caller could fill
//! its memory.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

/// At most `cap` entries of `V` by `K`.
pub struct BoundedMap<K, V> {
    entries: HashMap<K, V>,
    cap: usize,
}

impl<K: Hash + Eq, V> BoundedMap<K, V> {
    /// An empty map that holds at most `cap` entries.
    pub fn new(cap: usize) -> Self {
        BoundedMap {
            entries: HashMap::new(),
            cap,
        }
    }

    /// The entry of `key`, if it is kept.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.get(key)
    }

    /// The entry of `key`, `make`'s if the key is new. A new key in a full
    /// map first forgets the entries that are `quiet`; if none was, there
    /// is no room: `None`, and nothing changes.
    pub fn entry(
        &mut self,
        key: K,
        quiet: impl FnMut(&V) -> bool,
        make: impl FnOnce() -> V,
    ) -> Option<&mut V> {
        self.has_room(&key, quiet)
            .then(|| self.entries.entry(key).or_insert_with(make))
    }

    /// Keeps `value` as the entry of `key` (replacing the one kept). A new
    /// key in a full map first forgets the entries that are `quiet`; if
    /// none was, there is no room: `value` comes back, nothing changes.
    pub fn insert(&mut self, key: K, value: V, quiet: impl FnMut(&V) -> bool) -> Result<(), V> {
        if !self.has_room(&key, quiet) {
            return Err(value);
        }
        self.entries.insert(key, value);
        Ok(())
    }

    /// Whether `key` has a place: it is kept, or the map is not full, or it
    /// was full and forgot the entries that are `quiet`, and some were.
    fn has_room(&mut self, key: &K, quiet: impl FnMut(&V) -> bool) -> bool {
        if self.entries.contains_key(key) || self.entries.len() < self.cap {
            return true;
        }
        self.sweep(quiet);
        self.entries.len() < self.cap
    }

    /// Forgets every entry that is `quiet`.
    pub fn sweep(&mut self, mut quiet: impl FnMut(&V) -> bool) {
        self.entries.retain(|_, value| !quiet(value));
    }

    /// Forgets the entry `rank` puts first (the lowest), if any: room for
    /// a user that would rather evict than refuse.
    pub fn forget_least<R: Ord>(&mut self, mut rank: impl FnMut(&V) -> R)
    where
        K: Clone,
    {
        let least = self
            .entries
            .iter()
            .min_by_key(|(_, value)| rank(value))
            .map(|(key, _)| key.clone());
        if let Some(least) = least {
            self.entries.remove(&least);
        }
    }

    /// How many entries are kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries are their last-seen time; quiet means seen before `cutoff`.
    fn quiet_before(cutoff: u32) -> impl FnMut(&u32) -> bool {
        move |seen| *seen < cutoff
    }

    #[test]
    fn a_full_map_forgets_the_quiet_ones_for_a_new_key() {
        let mut map = BoundedMap::new(3);
        for (key, seen) in [("a", 1), ("b", 5), ("c", 2)] {
            map.entry(key, quiet_before(0), || seen);
        }
        assert_eq!(map.len(), 3);
        assert_eq!(map.entry("d", quiet_before(3), || 9), Some(&mut 9));
        assert_eq!(map.len(), 2, "a and c were quiet");
        assert_eq!(map.get("a"), None);
        assert_eq!(map.get("b"), Some(&5));
    }

    #[test]
    fn a_full_map_with_nothing_quiet_has_no_room_and_changes_nothing() {
        let mut map = BoundedMap::new(2);
        map.entry("a", quiet_before(0), || 1);
        map.entry("b", quiet_before(0), || 2);
        assert_eq!(map.entry("c", quiet_before(0), || 3), None);
        assert_eq!(map.len(), 2);
        assert_eq!(map.get("c"), None);
    }

    #[test]
    fn a_kept_key_is_found_even_when_full_and_never_remade() {
        let mut map = BoundedMap::new(1);
        map.entry("a", quiet_before(0), || 1);
        let entry = map
            .entry("a", |_| panic!("no sweep for a kept key"), || 2)
            .unwrap();
        assert_eq!(*entry, 1);
        *entry = 7;
        assert_eq!(map.get("a"), Some(&7));
    }

    #[test]
    fn insert_replaces_a_kept_entry_and_gives_back_what_finds_no_room() {
        let mut map = BoundedMap::new(1);
        assert_eq!(map.insert("a", 1, quiet_before(0)), Ok(()));
        assert_eq!(map.insert("a", 2, |_| panic!("no sweep")), Ok(()));
        assert_eq!(map.get("a"), Some(&2));
        assert_eq!(map.insert("b", 3, quiet_before(0)), Err(3));
        assert_eq!(map.insert("b", 3, quiet_before(5)), Ok(()), "a was quiet");
        assert_eq!(map.get("a"), None);
    }

    #[test]
    fn sweep_and_forget_least() {
        let mut map = BoundedMap::new(10);
        for (key, seen) in [("a", 4), ("b", 1), ("c", 3)] {
            map.entry(key, quiet_before(0), || seen);
        }
        map.forget_least(|seen| *seen);
        assert_eq!(map.get("b"), None, "the lowest goes");
        assert_eq!(map.len(), 2);
        map.sweep(quiet_before(4));
        assert_eq!(map.get("c"), None);
        assert_eq!(map.get("a"), Some(&4));
        map.sweep(|_| true);
        assert!(map.is_empty());
        map.forget_least(|seen| *seen); // nothing to forget: no panic
    }
}
