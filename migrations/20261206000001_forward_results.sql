-- The result of a forward whose source has no inbox (a person, a
-- workload): gateway_respond keeps it here, as an inbox message (JSON),
-- and its source reads it with Broker.Answer. NULL until responded, and
-- for sources that are sessions (their result is in their inbox).
-- Portable SQL, as the audit migration.

ALTER TABLE forwards ADD COLUMN result TEXT;

-- A message's forwards (Broker.Answer).
CREATE INDEX forwards_by_message ON forwards (namespace, gateway_session, source_message);
