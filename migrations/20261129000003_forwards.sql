-- Gateway forwards: each request a gateway session forwarded, from the
-- forward to the answer reaching its source. Every change of state is made
-- in one transaction with the inbox message it sends, so each message of a
-- forward is sent once. Portable SQL, as the audit migration.

CREATE TABLE forwards (
    namespace       TEXT   NOT NULL,
    -- The request id: a lowercase ULID, the name of its ApprovalRequest.
    id              TEXT   NOT NULL PRIMARY KEY,
    -- The Gateway whose rule it went under, and the session serving it.
    gateway         TEXT   NOT NULL,
    gateway_session TEXT   NOT NULL,
    -- The rule's position in the Gateway's forwardRules; NULL when warn
    -- mode let a forward through that no rule allows.
    rule_index      BIGINT,
    -- Who first sent it (JSON source), and the message of the gateway's
    -- inbox it came in.
    source          TEXT   NOT NULL,
    source_message  TEXT   NOT NULL,
    target          TEXT   NOT NULL,
    action          TEXT   NOT NULL,
    -- What is delivered to the target (JSON): kept here, not trusted from
    -- the ApprovalRequest, whose spec people could recreate.
    payload         TEXT   NOT NULL,
    -- awaiting_approval, delivered, answered, responded, denied, expired.
    state           TEXT   NOT NULL,
    -- Microseconds since the Unix epoch.
    created_us      BIGINT NOT NULL,
    expires_us      BIGINT,
    updated_us      BIGINT NOT NULL,
    -- When a person's decision (or the clock) settled a forward that
    -- waited for approval.
    decided_us      BIGINT
);

-- A rule's forwards in the last minute (its rate limit).
CREATE INDEX forwards_by_rule ON forwards (namespace, gateway, rule_index, created_us);
-- A gateway's requests waiting for approval (gateway_queue).
CREATE INDEX forwards_by_gateway ON forwards (namespace, gateway_session, state);

-- One row per rate-limited rule, locked by each forward under it, so
-- concurrent forwards count each other exactly.
CREATE TABLE forward_rule_heads (
    namespace  TEXT   NOT NULL,
    gateway    TEXT   NOT NULL,
    rule_index BIGINT NOT NULL,
    forwards   BIGINT NOT NULL,
    PRIMARY KEY (namespace, gateway, rule_index)
);
