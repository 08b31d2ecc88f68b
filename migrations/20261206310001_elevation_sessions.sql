-- One row per session that asked for elevation, locked by each of its
-- requests, so that the cap on a session's open requests and the answer
-- to a request it already made hold for concurrent calls on any replica.
-- Portable SQL, as the audit migration.

CREATE TABLE elevation_sessions (
    namespace TEXT   NOT NULL,
    session   TEXT   NOT NULL,
    requests  BIGINT NOT NULL,
    PRIMARY KEY (namespace, session)
);

CREATE INDEX elevations_by_session ON elevations (namespace, session, state);
