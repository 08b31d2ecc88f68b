-- Children agents spawned (sessions_spawn), so that a parent's limit
-- (SecurityPolicy spec.spawn.maxChildren) holds for concurrent calls on
-- any replica: each spawn locks its parent's row, then counts the children
-- the caches see together with those spawned too recently to be seen yet.
-- Portable SQL, as the audit migration.

CREATE TABLE spawned_children (
    namespace  TEXT   NOT NULL,
    child      TEXT   NOT NULL,
    parent     TEXT   NOT NULL,
    -- Microseconds since the Unix epoch.
    created_us BIGINT NOT NULL,
    PRIMARY KEY (namespace, child)
);

CREATE INDEX spawned_children_by_parent ON spawned_children (namespace, parent, created_us);

-- One row per parent, locked by each of its spawns.
CREATE TABLE spawn_parents (
    namespace TEXT   NOT NULL,
    parent    TEXT   NOT NULL,
    spawns    BIGINT NOT NULL,
    PRIMARY KEY (namespace, parent)
);
