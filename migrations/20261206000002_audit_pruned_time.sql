-- The time of the last event retention pruned from each chain, in
-- microseconds since the Unix epoch, for Verify to report with how many it
-- pruned (pruned_seq: retention deletes a prefix, from seq 1). NULL until
-- retention prunes, and for chains pruned before this was kept. Portable
-- SQL, as the audit migration.

ALTER TABLE audit_chains ADD COLUMN pruned_time_us BIGINT;
