//! Stores for tests: SQLite in a temporary directory, and a fresh database
//! on the PostgreSQL server named by `WOPR_TEST_POSTGRES_URL` (hack/test.sh
//! starts one). Without that variable the PostgreSQL tests fail: they never
//! skip silently.

use k8s_openapi::jiff::SignedDuration;
use sqlx::{AnyPool, Executor};
use wopr_operator::api::{Enforcement, SourceRef, TrustLevel};
use wopr_operator::audit::{AuditEvent, EventType};
use wopr_operator::policy::Outcome;
use wopr_operator::store::{AuditQuery, InboxLimits, Store};

/// Inbox limits no test of the store reaches unless it means to.
pub const ROOMY: InboxLimits = InboxLimits {
    max_message_bytes: 64 * 1024,
    max_messages: 1000,
    max_bytes: 1024 * 1024,
};

/// A store and its URL (for a second connection that tampers with it).
pub struct TestStore {
    pub store: Store,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestStore {
    /// Runs `statement` on the same database, past the store: what
    /// someone with the database's credentials could do.
    pub async fn tamper(&self, statement: &str) {
        tamper(&self.url, statement).await;
    }
}

/// Runs `statement` on the database at `url`, past any store.
pub async fn tamper(url: &str, statement: &str) {
    sqlx::any::install_default_drivers();
    let raw = AnyPool::connect(url).await.unwrap();
    raw.execute(sqlx::AssertSqlSafe(statement.to_owned()))
        .await
        .unwrap();
    raw.close().await;
}

pub async fn sqlite() -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/wopr.db", dir.path().display());
    TestStore {
        store: Store::open(&url).await.unwrap(),
        url,
        _dir: Some(dir),
    }
}

/// The PostgreSQL server for the tests (its `postgres` database).
pub fn postgres_server() -> String {
    std::env::var("WOPR_TEST_POSTGRES_URL").expect(
        "WOPR_TEST_POSTGRES_URL is not set: run the tests with hack/test.sh, which starts PostgreSQL",
    )
}

/// A database of its own on the test server.
pub async fn postgres_url() -> String {
    let server = postgres_server();
    sqlx::any::install_default_drivers();
    let admin = AnyPool::connect(&server)
        .await
        .expect("reaching WOPR_TEST_POSTGRES_URL");
    let name = format!("wopr_test_{}", ulid::Ulid::new().to_string().to_lowercase());
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .unwrap();
    admin.close().await;
    let (base, _) = server.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}

pub async fn postgres() -> TestStore {
    let url = postgres_url().await;
    TestStore {
        store: Store::open(&url).await.unwrap(),
        url,
        _dir: None,
    }
}

/// An event at `seconds` after 2026-11-24T12:00:00Z.
pub fn event(namespace: &str, session: &str, decision: Outcome, seconds: i64) -> AuditEvent {
    AuditEvent::new(
        super::now() + SignedDuration::from_secs(seconds),
        EventType::ToolCall,
        namespace,
        session,
        SourceRef {
            source_type: "session".into(),
            identity: session.into(),
            trust_level: TrustLevel::SemiTrusted,
        },
        decision,
        Enforcement::Enforce,
        format!("event at {seconds} s"),
    )
}

/// Every event of `store` (up to a page of 1,000), newest first.
pub async fn all_events(store: &Store) -> Vec<AuditEvent> {
    let everything = AuditQuery {
        limit: 1000,
        ..AuditQuery::default()
    };
    store.query_events(&everything).await.unwrap().events
}

/// Every event of `store`, newest first, page by page.
pub async fn every_event(store: &Store) -> Vec<AuditEvent> {
    let mut query = AuditQuery {
        limit: 1000,
        ..AuditQuery::default()
    };
    let mut events = Vec::new();
    loop {
        let page = store.query_events(&query).await.unwrap();
        events.extend(page.events);
        match page.next {
            Some(next) => query.after = Some(next),
            None => return events,
        }
    }
}

/// Every case, as a test on each backend.
#[allow(unused_macros)] // each test crate uses a different subset
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $case() {
                super::$case(crate::common::store::sqlite().await).await;
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $case() {
                super::$case(crate::common::store::postgres().await).await;
            })*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use on_both_backends;
