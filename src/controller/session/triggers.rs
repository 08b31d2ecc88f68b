//! Which Sessions a change to a Grant, Gateway or SecurityPolicy affects, so
//! exactly those are reconciled (no full resync).

use std::collections::HashMap;
use std::sync::Mutex;

use kube::core::DeserializeGuard;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use crate::api::{DEFAULT_POLICY_NAME, Gateway, Grant, SecurityPolicy, Session};

/// A reference to a Session as the controller's queue knows it.
pub type SessionRef = ObjectRef<DeserializeGuard<Session>>;

/// Remembers which Session each Grant or Gateway named last, so a change of
/// subject (or an object becoming unreadable) also reconciles the Session it
/// named before.
#[derive(Default)]
pub struct SubjectIndex(Mutex<HashMap<(String, String), String>>);

impl SubjectIndex {
    /// Records that the object `namespace/name` now names `subject` (or
    /// nothing) and returns the Sessions to reconcile: the previous subject
    /// and the current one.
    pub fn update(&self, namespace: &str, name: &str, subject: Option<&str>) -> Vec<SessionRef> {
        let key = (namespace.to_owned(), name.to_owned());
        let mut index = self
            .0
            .lock()
            .expect("the subject index lock is never poisoned");
        let previous = match subject {
            Some(subject) => index.insert(key, subject.to_owned()),
            None => index.remove(&key),
        };
        let mut sessions: Vec<String> = previous
            .into_iter()
            .chain(subject.map(str::to_owned))
            .collect();
        sessions.dedup();
        sessions
            .into_iter()
            .map(|session| ObjectRef::new(&session).within(namespace))
            .collect()
    }
}

/// The Sessions a Grant change affects: the session it names, and the one
/// it named before (peer grants change no session's context).
pub fn grant_sessions(index: &SubjectIndex, grant: &DeserializeGuard<Grant>) -> Vec<SessionRef> {
    let subject = grant
        .0
        .as_ref()
        .ok()
        .and_then(|grant| grant.spec.subject.session.as_deref());
    match grant.namespace() {
        Some(namespace) => index.update(&namespace, &grant.name_any(), subject),
        None => Vec::new(),
    }
}

/// The Sessions a Gateway change affects: the session it names.
pub fn gateway_sessions(
    index: &SubjectIndex,
    gateway: &DeserializeGuard<Gateway>,
) -> Vec<SessionRef> {
    let subject = gateway
        .0
        .as_ref()
        .ok()
        .map(|gateway| gateway.spec.session.as_str());
    match gateway.namespace() {
        Some(namespace) => index.update(&namespace, &gateway.name_any(), subject),
        None => Vec::new(),
    }
}

/// The Sessions a SecurityPolicy change affects: every Session of its
/// namespace when it is the `default` one, none otherwise.
pub fn policy_sessions(
    sessions: &Store<DeserializeGuard<Session>>,
    policy: &DeserializeGuard<SecurityPolicy>,
) -> Vec<SessionRef> {
    let namespace = policy.namespace();
    if policy.name_any() != DEFAULT_POLICY_NAME || namespace.is_none() {
        return Vec::new();
    }
    sessions
        .state_filter(|session| session.meta().namespace == namespace)
        .iter()
        .map(|session| ObjectRef::from_obj(session.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(refs: Vec<SessionRef>) -> Vec<String> {
        refs.into_iter().map(|r| r.name).collect()
    }

    #[test]
    fn a_subject_change_reconciles_old_and_new() {
        let index = SubjectIndex::default();
        assert_eq!(names(index.update("ns", "g", Some("a"))), ["a"]);
        assert_eq!(names(index.update("ns", "g", Some("a"))), ["a"]);
        assert_eq!(names(index.update("ns", "g", Some("b"))), ["a", "b"]);
        // Unreadable now: the last known subject is reconciled.
        assert_eq!(names(index.update("ns", "g", None)), ["b"]);
        assert!(index.update("ns", "other", None).is_empty());
        assert_eq!(
            index.update("ns", "g", Some("c"))[0].namespace.as_deref(),
            Some("ns")
        );
    }
}
