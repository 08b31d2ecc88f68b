-- The peer ingress (issue 27): what makes its replay guard, its limits and
-- its bans exact across replicas, and each invite usable once. Portable
-- SQL, as the audit migration. Times are microseconds since the Unix epoch.

-- One row per peer (its public key), locked by each of its messages so
-- their counts see each other; its ban, while one lasts.
CREATE TABLE peer_heads (
    peer            TEXT   NOT NULL PRIMARY KEY,
    messages        BIGINT NOT NULL,
    banned_until_us BIGINT,
    ban_reason      TEXT
);

-- The nonces of a peer's messages, kept while a message carrying them
-- could still be inside the replay window (ts within ±5 min: 10 min
-- after it was seen). Never forgotten sooner: a full cache refuses.
CREATE TABLE peer_nonces (
    peer    TEXT   NOT NULL,
    nonce   TEXT   NOT NULL,
    seen_us BIGINT NOT NULL,
    PRIMARY KEY (peer, nonce)
);
CREATE INDEX peer_nonces_by_time ON peer_nonces (seen_us);

-- Each message a peer sent that a limit counts: its action (inject,
-- claim, key-rotation, outbox, invalid) and the namespace it named.
CREATE TABLE peer_attempts (
    peer      TEXT   NOT NULL,
    action    TEXT   NOT NULL,
    namespace TEXT   NOT NULL,
    at_us     BIGINT NOT NULL
);
CREATE INDEX peer_attempts_by_action ON peer_attempts (peer, action, at_us);
CREATE INDEX peer_attempts_by_namespace ON peer_attempts (peer, namespace, at_us);

-- Each peer message delivered to a session (its p2p.rateLimits.perSession),
-- counted under the lock of the session's inbox head.
CREATE TABLE peer_deliveries (
    namespace TEXT   NOT NULL,
    session   TEXT   NOT NULL,
    at_us     BIGINT NOT NULL
);
CREATE INDEX peer_deliveries_by_session ON peer_deliveries (namespace, session, at_us);

-- Each invite claimed, once: by its nonce, as its issuer signed it.
CREATE TABLE peer_invites (
    nonce      TEXT   NOT NULL PRIMARY KEY,
    issuer     TEXT   NOT NULL,
    namespace  TEXT   NOT NULL,
    claimed_by TEXT   NOT NULL,
    grant_name TEXT   NOT NULL,
    claimed_us BIGINT NOT NULL,
    expires_us BIGINT NOT NULL
);
