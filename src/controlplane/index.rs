//! The policies the control plane serves: each watched session's effective
//! context, recomputed from the controller's caches when they change (and
//! every second, so grant expiry reaches sidecars promptly).

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::jiff::Timestamp;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::watch;

use crate::api::Session;
use crate::controller::context::Stores;
use crate::proto::v1alpha1 as pb;
use crate::wire::encode;

/// What a sidecar is told about its session's policy.
#[derive(Clone, Debug, PartialEq)]
pub enum Snapshot {
    /// The policy in force.
    Context(Box<pb::SecurityContext>),
    /// No policy can be served (missing or invalid session): deny everything.
    Unavailable(String),
}

impl Snapshot {
    /// The wire form.
    pub fn to_update(&self) -> pb::PolicyUpdate {
        let update = match self {
            Snapshot::Context(context) => pb::policy_update::Update::Context((**context).clone()),
            Snapshot::Unavailable(reason) => pb::policy_update::Update::Unavailable(reason.clone()),
        };
        pb::PolicyUpdate {
            update: Some(update),
        }
    }
}

/// Watched sessions and their current snapshots.
pub struct ContextIndex {
    sessions: Store<DeserializeGuard<Session>>,
    stores: Stores,
    clock: fn() -> Timestamp,
    watchers: Mutex<HashMap<(String, String), watch::Sender<Snapshot>>>,
}

impl ContextIndex {
    /// An index over the controller's caches.
    pub fn new(
        sessions: Store<DeserializeGuard<Session>>,
        stores: Stores,
        clock: fn() -> Timestamp,
    ) -> ContextIndex {
        ContextIndex {
            sessions,
            stores,
            clock,
            watchers: Mutex::default(),
        }
    }

    /// Watches the policy of `namespace/session`: the receiver holds the
    /// current snapshot and sees every change.
    pub fn subscribe(&self, namespace: &str, session: &str) -> watch::Receiver<Snapshot> {
        let key = (namespace.to_owned(), session.to_owned());
        let mut watchers = self
            .watchers
            .lock()
            .expect("the index lock is never poisoned");
        if let Some(sender) = watchers.get(&key) {
            return sender.subscribe();
        }
        let (sender, receiver) = watch::channel(self.snapshot(namespace, session));
        watchers.insert(key, sender);
        receiver
    }

    /// Recomputes the watched sessions of `namespace`, notifying watchers of changes.
    pub fn refresh(&self, namespace: &str) {
        self.refresh_where(|watched_namespace| watched_namespace == namespace);
    }

    /// Recomputes every watched session.
    pub fn refresh_all(&self) {
        self.refresh_where(|_| true);
    }

    fn refresh_where(&self, selected: impl Fn(&str) -> bool) {
        let mut watchers = self
            .watchers
            .lock()
            .expect("the index lock is never poisoned");
        watchers.retain(|_, sender| sender.receiver_count() > 0);
        for ((namespace, session), sender) in watchers.iter() {
            if selected(namespace) {
                let snapshot = self.snapshot(namespace, session);
                sender.send_if_modified(|current| {
                    let changed = *current != snapshot;
                    if changed {
                        *current = snapshot;
                    }
                    changed
                });
            }
        }
    }

    /// The snapshot of `namespace/session` now.
    fn snapshot(&self, namespace: &str, session: &str) -> Snapshot {
        let key = ObjectRef::new(session).within(namespace);
        let Some(object) = self.sessions.get(&key) else {
            return Snapshot::Unavailable(format!("Session {namespace}/{session} does not exist"));
        };
        let session_object = match &object.0 {
            Ok(session) => session,
            Err(invalid) => {
                return Snapshot::Unavailable(format!(
                    "Session {namespace}/{session} cannot be read: {}",
                    invalid.error
                ));
            }
        };
        let resolved = self.stores.resolve(session_object, (self.clock)());
        match resolved {
            Ok(context) => {
                let provider = session_object
                    .spec
                    .provider
                    .as_ref()
                    .map(|provider| pb::Provider {
                        name: provider.name.clone(),
                        model: provider.model.clone().unwrap_or_default(),
                    });
                Snapshot::Context(Box::new(encode(&context, provider)))
            }
            Err(error) => Snapshot::Unavailable(error.to_string()),
        }
    }
}
