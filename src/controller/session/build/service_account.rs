//! The per-session ServiceAccount: no RBAC, no automounted token. Its token
//! is projected (audience `wopr.dev`) into the sidecar container only.

use k8s_openapi::api::core::v1::ServiceAccount;

use super::meta::child_meta;
use crate::api::Session;

/// The ServiceAccount of `session`.
pub fn build_service_account(session: &Session) -> ServiceAccount {
    ServiceAccount {
        metadata: child_meta(session),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}
