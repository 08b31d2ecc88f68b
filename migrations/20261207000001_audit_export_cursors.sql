-- Where each audit exporter (`otlp`, `ocsf`) has got to: per namespace, the
-- last chain position (audit_events.seq) its receiver accepted. Advanced
-- only after the receiver acknowledged the batch. Portable SQL.
CREATE TABLE audit_export_cursors (
    exporter  TEXT   NOT NULL,
    namespace TEXT   NOT NULL,
    seq       BIGINT NOT NULL,
    PRIMARY KEY (exporter, namespace)
);
