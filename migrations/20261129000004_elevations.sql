-- Elevation requests (security_request): a session asks a person for more
-- capabilities for a while. What a Grant is made of comes from here, never
-- from the ApprovalRequest, which people could write by hand. Each change
-- of state is made in one transaction with the notice that tells the
-- session. Portable SQL, as the audit migration.

CREATE TABLE elevations (
    namespace    TEXT   NOT NULL,
    -- A lowercase ULID: the name of its ApprovalRequest.
    id           TEXT   NOT NULL PRIMARY KEY,
    session      TEXT   NOT NULL,
    -- JSON list of capabilities.
    capabilities TEXT   NOT NULL,
    duration_s   BIGINT NOT NULL,
    reason       TEXT   NOT NULL,
    -- awaiting_approval, granted, denied, expired.
    state        TEXT   NOT NULL,
    -- Microseconds since the Unix epoch; granted_us is when a person's
    -- approval was first carried out (the Grant runs from then).
    created_us   BIGINT NOT NULL,
    expires_us   BIGINT NOT NULL,
    granted_us   BIGINT
);
