-- The audit trail: one row per event, chained per namespace. Portable SQL:
-- the same migration runs on SQLite and PostgreSQL.

-- Each namespace's chain: its last event (head) and, after retention has
-- pruned the oldest rows, the last pruned one (verification starts there).
CREATE TABLE audit_chains (
    namespace   TEXT   NOT NULL PRIMARY KEY,
    head_seq    BIGINT NOT NULL,
    head_hash   TEXT   NOT NULL,
    pruned_seq  BIGINT NOT NULL,
    pruned_hash TEXT   NOT NULL
);

CREATE TABLE audit_events (
    namespace       TEXT     NOT NULL,
    -- Position in the namespace's chain, from 1.
    seq             BIGINT   NOT NULL,
    -- The event's ULID: what deduplicates a batch shipped twice.
    id              TEXT     NOT NULL UNIQUE,
    -- The event's time, in microseconds since the Unix epoch.
    time_us         BIGINT   NOT NULL,
    session         TEXT     NOT NULL,
    event_type      TEXT     NOT NULL,
    decision        TEXT     NOT NULL,
    -- 1 when the decision is denied or would_deny: `--denied` reads one index range.
    denied          SMALLINT NOT NULL,
    capability      TEXT,
    tool            TEXT,
    source_identity TEXT     NOT NULL,
    -- The event as stored, JSON; the columns above are derived from it.
    event           TEXT     NOT NULL,
    -- sha256 of prev_hash and event: the chain that makes edits visible.
    prev_hash       TEXT     NOT NULL,
    hash            TEXT     NOT NULL,
    PRIMARY KEY (namespace, seq)
);

CREATE INDEX audit_events_by_time ON audit_events (time_us, id);
CREATE INDEX audit_events_by_denied_time ON audit_events (denied, time_us, id);
CREATE INDEX audit_events_by_namespace_time ON audit_events (namespace, time_us, id);
CREATE INDEX audit_events_by_namespace_denied_time ON audit_events (namespace, denied, time_us, id);
CREATE INDEX audit_events_by_session_time ON audit_events (namespace, session, time_us, id);
