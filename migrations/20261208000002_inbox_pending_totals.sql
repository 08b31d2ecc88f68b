-- Each inbox's pending messages and bytes, kept on its head by every
-- append and acknowledgement under the head's lock, so checking the
-- inbox's limits reads one row instead of every pending message.
ALTER TABLE inbox_heads ADD COLUMN pending_messages BIGINT NOT NULL DEFAULT 0;
ALTER TABLE inbox_heads ADD COLUMN pending_bytes BIGINT NOT NULL DEFAULT 0;
UPDATE inbox_heads SET
    pending_messages = (
        SELECT COUNT(*) FROM inbox_messages m
        WHERE m.namespace = inbox_heads.namespace AND m.session = inbox_heads.session
          AND m.acked_us IS NULL),
    pending_bytes = (
        SELECT COALESCE(SUM(m.bytes), 0) FROM inbox_messages m
        WHERE m.namespace = inbox_heads.namespace AND m.session = inbox_heads.session
          AND m.acked_us IS NULL);
