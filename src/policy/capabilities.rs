//! A set of capabilities, stored as a bit set so checks cost one AND.

use std::fmt;

use serde::{Serialize, Serializer};

use crate::api::Capability;

/// A set of [`Capability`]s. Holding [`Capability::All`] means holding every capability.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CapabilitySet(u16);

const fn bit(capability: Capability) -> u16 {
    1 << capability as u16
}

impl CapabilitySet {
    /// No capability.
    pub const EMPTY: CapabilitySet = CapabilitySet(0);

    /// Whether `capability` is held, directly or through `*`.
    #[inline]
    pub fn has(self, capability: Capability) -> bool {
        self.0 & (bit(capability) | bit(Capability::All)) != 0
    }

    /// Whether `*` is held.
    pub fn has_wildcard(self) -> bool {
        self.0 & bit(Capability::All) != 0
    }

    /// Adds a capability.
    pub fn insert(&mut self, capability: Capability) {
        self.0 |= bit(capability);
    }

    /// Every capability of either set.
    pub fn union(self, other: CapabilitySet) -> CapabilitySet {
        CapabilitySet(self.0 | other.0)
    }

    /// The same set without `*` (its other members stay).
    pub fn without_wildcard(self) -> CapabilitySet {
        CapabilitySet(self.0 & !bit(Capability::All))
    }

    /// Whether every capability `self` holds is held by `other`.
    pub fn is_subset_of(self, other: CapabilitySet) -> bool {
        other.has_wildcard() || self.0 & !other.0 == 0
    }

    /// The members, in the order of [`Capability::ALL`].
    pub fn iter(self) -> impl Iterator<Item = Capability> {
        Capability::ALL
            .into_iter()
            .filter(move |capability| self.0 & bit(*capability) != 0)
    }
}

impl FromIterator<Capability> for CapabilitySet {
    fn from_iter<I: IntoIterator<Item = Capability>>(iter: I) -> Self {
        let mut set = CapabilitySet::EMPTY;
        for capability in iter {
            set.insert(capability);
        }
        set
    }
}

impl<'a> FromIterator<&'a Capability> for CapabilitySet {
    fn from_iter<I: IntoIterator<Item = &'a Capability>>(iter: I) -> Self {
        iter.into_iter().copied().collect()
    }
}

impl fmt::Debug for CapabilitySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl Serialize for CapabilitySet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_holds_everything() {
        let set: CapabilitySet = [Capability::All].into_iter().collect();
        assert!(Capability::ALL.into_iter().all(|c| set.has(c)));
        assert!(!set.without_wildcard().has(Capability::Inject));
    }

    #[test]
    fn membership_and_subset() {
        let small: CapabilitySet = [Capability::Inject].into_iter().collect();
        let big: CapabilitySet = [Capability::Inject, Capability::InjectTools]
            .into_iter()
            .collect();
        assert!(small.is_subset_of(big));
        assert!(!big.is_subset_of(small));
        assert!(big.has(Capability::InjectTools));
        assert!(!big.has(Capability::InjectExec));
        assert_eq!(
            big.iter().collect::<Vec<_>>(),
            vec![Capability::Inject, Capability::InjectTools]
        );
    }
}
