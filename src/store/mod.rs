//! The operator's database: SQLite embedded by default (a file on a
//! volume, WAL mode), PostgreSQL for clusters that run more than one
//! controller replica. One schema and one set of versioned migrations
//! (`migrations/`, portable SQL) serve both, through sqlx's `Any` driver:
//! the queries are written once, and what differs between the two is
//! confined to [`Backend`]. The audit trail and the sessions' inboxes live
//! here.

mod audit;
mod elevations;
mod export;
mod forwards;
mod inbox;
mod peers;
mod spawns;

use std::str::FromStr;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, AssertSqlSafe, ConnectOptions, Executor, Transaction};

pub use audit::{
    AuditQuery, Cursor, DecisionFilter, Inserted, MAX_PAGE, Page, Prune, Pruned, QueryError,
    Verification,
};
pub use elevations::{Elevation, ElevationState, Opened};
pub use export::Chained;
pub use forwards::{Forward, ForwardState, GatewaySummary, RequestError, new_request_id};
pub use inbox::{Enqueued, InboxError, InboxLimits, MAX_READ, Queued};
pub use peers::{Attempt, Claim, MAX_NONCES_PER_PEER, NONCE_KEPT, PeerLimit, PeerRefusal};
pub use spawns::{Reservation, UNSEEN_FOR};

/// Which database a URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite://PATH` (`sqlite::memory:` in tests).
    Sqlite,
    /// `postgres://…` or `postgresql://…`.
    Postgres,
}

impl Backend {
    /// Rows per multi-row statement (14 parameters each). Measured
    /// (`benches/store.rs`): SQLite is fastest with small statements,
    /// PostgreSQL with few round trips.
    fn insert_chunk(self) -> usize {
        match self {
            Backend::Sqlite => 50,
            Backend::Postgres => 200,
        }
    }

    fn of(url: &str) -> Result<Backend, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(StoreError::UnsupportedUrl(redact(url)))
        }
    }
}

/// What went wrong with the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported store URL {0}: use sqlite:///PATH (embedded) or postgres://USER@HOST/DB")]
    UnsupportedUrl(String),
    #[error("cannot open the store at {url}: {error}")]
    Open { url: String, error: sqlx::Error },
    #[error("cannot migrate the store's schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("store error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    InvalidQuery(#[from] QueryError),
    #[error("the store holds an event it cannot read (id {id}): {error}")]
    Corrupt { id: String, error: String },
    #[error(transparent)]
    Inbox(#[from] InboxError),
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Peer(#[from] PeerRefusal),
}

/// The operator's database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

/// Per SQLite connection: wait up to 10 s for the write lock instead of
/// failing; fsync at checkpoints, not at every commit (in WAL mode a
/// committed transaction survives a crash of the process; a power loss may
/// lose the last ones, which the sidecars still hold and ship again).
const SQLITE_CONNECTION_PRAGMAS: &str =
    "PRAGMA busy_timeout = 10000; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON";

impl Store {
    /// Opens the database at `url` (creating a SQLite file if missing) and
    /// brings its schema up to date.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of(url)?;
        let open_error = |error| StoreError::Open {
            url: redact(url),
            error,
        };
        let options = AnyConnectOptions::from_str(&with_sqlite_defaults(url, backend))
            .map_err(open_error)?
            .disable_statement_logging();
        let mut pool = AnyPoolOptions::new().max_connections(match backend {
            // One writer at a time anyway; a few readers beside it.
            Backend::Sqlite => 4,
            Backend::Postgres => 8,
        });
        if backend == Backend::Sqlite {
            pool = pool.after_connect(|connection, _| {
                Box::pin(async move {
                    connection.execute(SQLITE_CONNECTION_PRAGMAS).await?;
                    Ok(())
                })
            });
        }
        let pool = pool.connect_with(options).await.map_err(open_error)?;
        if backend == Backend::Sqlite {
            // Persistent in the file: readers never block the writer.
            pool.execute("PRAGMA journal_mode = WAL").await?;
        }
        sqlx::migrate!().run(&pool).await?;
        Ok(Store { pool, backend })
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes every connection (waiting for the ones in use).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A table of one row per session that each transaction about the
/// session updates first, so that concurrent ones, on any replica, wait
/// for each other (spawns of a parent, elevation requests of a session):
/// its name, the column naming the session, and the column counting them.
struct SessionLock {
    table: &'static str,
    session: &'static str,
    counter: &'static str,
}

/// Locks the row of `namespace/session` in `lock`'s table (adding it when
/// missing) until `transaction` ends. The update takes the row lock on
/// both backends (SQLite has no FOR UPDATE; its writers are serialized
/// anyway).
async fn lock_session(
    transaction: &mut Transaction<'_, Any>,
    lock: &SessionLock,
    (namespace, session): (&str, &str),
) -> Result<(), StoreError> {
    let SessionLock {
        table,
        session: column,
        counter,
    } = lock;
    // Only the constant names above are formatted in; values are bound.
    let add = format!(
        "INSERT INTO {table} (namespace, {column}, {counter}) VALUES ($1, $2, 0) \
         ON CONFLICT (namespace, {column}) DO NOTHING"
    );
    let take = format!(
        "UPDATE {table} SET {counter} = {counter} + 1 WHERE namespace = $1 AND {column} = $2"
    );
    for sql in [add, take] {
        sqlx::query(AssertSqlSafe(sql))
            .bind(namespace)
            .bind(session)
            .execute(&mut **transaction)
            .await?;
    }
    Ok(())
}

/// How long audit events are kept.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    /// Events older than this go.
    pub max_age: std::time::Duration,
    /// Beyond this many per namespace, the oldest go...
    pub max_per_namespace: u64,
    /// ...but that count never takes one younger than this (see
    /// [`Prune::keep_since`]).
    pub min_age: std::time::Duration,
}

impl Retention {
    /// The pass of retention due at `now`.
    pub fn at(&self, now: Timestamp) -> Prune {
        let ago = |age: std::time::Duration| {
            SignedDuration::try_from(age)
                .ok()
                .and_then(|age| now.checked_sub(age).ok())
                .unwrap_or(Timestamp::MIN)
        };
        Prune {
            older_than: ago(self.max_age),
            max_per_namespace: self.max_per_namespace,
            keep_since: ago(self.min_age),
        }
    }
}

/// How often retention runs.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

impl Store {
    /// Enforces `retention` now and every hour while `may_write` says so
    /// (the Lease holder), until the future is dropped.
    pub async fn prune_forever(self, retention: Retention, may_write: impl Fn() -> bool) {
        let mut every = tokio::time::interval(PRUNE_EVERY);
        loop {
            every.tick().await;
            if !may_write() {
                continue;
            }
            let prune = retention.at(Timestamp::now());
            let cut_off = prune.older_than;
            match self.prune_events(prune).await {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(deleted, "audit retention deleted old events"),
                Err(error) => {
                    tracing::error!(%error, "audit retention failed; retrying in an hour")
                }
            }
            match self.prune_acked_messages(cut_off).await {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(deleted, "retention deleted acknowledged messages"),
                Err(error) => {
                    tracing::error!(%error, "inbox retention failed; retrying in an hour")
                }
            }
            match self.prune_peers(Timestamp::now()).await {
                Ok(0) => {}
                Ok(deleted) => {
                    tracing::info!(deleted, "retention deleted the peer ingress's old counts")
                }
                Err(error) => {
                    tracing::error!(%error, "peer retention failed; retrying in an hour")
                }
            }
            match self.prune_requests(cut_off).await {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(deleted, "retention deleted settled requests"),
                Err(error) => {
                    tracing::error!(%error, "request retention failed; retrying in an hour")
                }
            }
        }
    }
}

/// A SQLite URL creates its file when missing (`mode=rwc`), unless it says
/// otherwise.
fn with_sqlite_defaults(url: &str, backend: Backend) -> String {
    if backend != Backend::Sqlite || url.contains("mode=") || url.contains(":memory:") {
        return url.to_owned();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}mode=rwc")
}

/// `url` without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_backend_and_never_show_a_password() {
        assert_eq!(
            Backend::of("sqlite:///var/lib/wopr/wopr.db").unwrap(),
            Backend::Sqlite
        );
        assert_eq!(
            Backend::of("postgres://u:p@db/wopr").unwrap(),
            Backend::Postgres
        );
        let error = Backend::of("mysql://u:secret@db/wopr")
            .unwrap_err()
            .to_string();
        assert!(error.contains("mysql://u:***@db/wopr"), "{error}");
        assert!(!error.contains("secret"));
        assert_eq!(redact("postgres://db/wopr"), "postgres://db/wopr");
    }

    #[test]
    fn a_sqlite_file_is_created_when_missing() {
        assert_eq!(
            with_sqlite_defaults("sqlite:///data/wopr.db", Backend::Sqlite),
            "sqlite:///data/wopr.db?mode=rwc"
        );
        assert_eq!(
            with_sqlite_defaults("sqlite:///data/wopr.db?mode=ro", Backend::Sqlite),
            "sqlite:///data/wopr.db?mode=ro"
        );
    }
}
