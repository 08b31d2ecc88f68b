-- Session inboxes: messages kept in arrival order until the agent
-- acknowledges them. Portable SQL, as the audit migration.

-- Each inbox's last position: locked by every append, so two writers never
-- take the same position or overfill the inbox.
CREATE TABLE inbox_heads (
    namespace TEXT   NOT NULL,
    session   TEXT   NOT NULL,
    last_seq  BIGINT NOT NULL,
    PRIMARY KEY (namespace, session)
);

CREATE TABLE inbox_messages (
    namespace TEXT   NOT NULL,
    session   TEXT   NOT NULL,
    -- Position in the inbox, from 1: the delivery order.
    seq       BIGINT NOT NULL,
    -- The message's ULID: what deduplicates a message sent twice.
    id        TEXT   NOT NULL UNIQUE,
    -- When it was sent and, once the agent acknowledged it, when that was
    -- (microseconds since the Unix epoch); pending while NULL.
    time_us   BIGINT NOT NULL,
    acked_us  BIGINT,
    -- The size of its payload's JSON, counted against the inbox's limit
    -- while pending.
    bytes     BIGINT NOT NULL,
    -- The message, JSON.
    message   TEXT   NOT NULL,
    PRIMARY KEY (namespace, session, seq)
);

CREATE INDEX inbox_messages_pending ON inbox_messages (namespace, session, seq) WHERE acked_us IS NULL;
