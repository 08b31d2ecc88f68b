//! OCSF-shaped JSON lines: each event one object of the OCSF 1.3 class
//! API Activity (6003, category Application Activity): every audit event is
//! a decision on a call into the sidecar or the control plane (a tool
//! call, an injection, a forward), made by an actor (the source) against an
//! API (the tool or action), allowed or not. Authorization (3003, Authorize
//! Session) describes privileges granted to a login session, which is
//! not what these are. The decision is the Security Control profile's
//! `action_id` and `disposition_id`; WOPR's own fields go in `unmapped`.

use std::io::Write;

use serde_json::{Value, json};

use super::{Sink, SinkError};
use crate::api::name_of;
use crate::policy::Outcome;
use crate::store::Chained;

/// OCSF schema version the objects follow.
pub const OCSF_VERSION: &str = "1.3.0";
/// API Activity.
pub const CLASS_UID: u32 = 6003;
/// Application Activity.
pub const CATEGORY_UID: u32 = 6;
/// The activity: Other (an audit event is none of Create/Read/Update/Delete).
const ACTIVITY_OTHER: u32 = 99;

/// The OCSF object of one stored event.
pub fn object(chained: &Chained) -> Value {
    let event = &chained.event;
    // severity_id: 1 Informational, 3 Medium; status_id: 1 Success, 2 Failure;
    // action_id: 1 Allowed, 2 Denied; disposition_id: 1 Allowed, 2 Blocked,
    // 17 Logged (warn mode: it ran, and is reported).
    let (severity_id, severity, status_id, status, action_id, disposition_id) = match event.decision
    {
        Outcome::Allowed => (1, "Informational", 1, "Success", 1, 1),
        Outcome::WouldDeny => (3, "Medium", 1, "Success", 1, 17),
        Outcome::Denied => (3, "Medium", 2, "Failure", 2, 2),
    };
    let event_type = name_of(&event.event_type);
    let operation = event
        .tool
        .clone()
        .or_else(|| event.action.clone())
        .unwrap_or_else(|| event_type.clone());
    without_nulls(json!({
        "class_uid": CLASS_UID,
        "class_name": "API Activity",
        "category_uid": CATEGORY_UID,
        "category_name": "Application Activity",
        "activity_id": ACTIVITY_OTHER,
        "activity_name": event_type,
        "type_uid": CLASS_UID * 100 + ACTIVITY_OTHER,
        "time": event.time.as_millisecond(),
        "severity_id": severity_id,
        "severity": severity,
        "status_id": status_id,
        "status": status,
        "action_id": action_id,
        "disposition_id": disposition_id,
        "message": event.reason,
        "metadata": {
            "version": OCSF_VERSION,
            "uid": event.id,
            "sequence": chained.seq,
            "logged_time": event.received.map(|time| time.as_millisecond()),
            "product": {
                "name": "wopr-operator",
                "vendor_name": "WOPR",
                "version": env!("CARGO_PKG_VERSION"),
            },
        },
        "actor": {
            "user": {
                "name": event.source.identity,
                "type": event.source.source_type,
            },
            "session": { "uid": format!("{}/{}", event.namespace, event.session) },
        },
        "api": {
            "operation": operation,
            "service": { "name": format!("wopr/{}/{}", event.namespace, event.session) },
        },
        "src_endpoint": { "name": event.source.identity },
        "unmapped": {
            "namespace": event.namespace,
            "session": event.session,
            "event_type": event_type,
            "decision": name_of(&event.decision),
            "enforcement": name_of(&event.enforcement),
            "trust_level": name_of(&event.source.trust_level),
            "tool": event.tool,
            "action": event.action,
            "capability": event.capability.as_ref().map(name_of),
            "policy_hash": event.policy_hash,
            "repeats": event.repeats,
        },
    }))
}

/// `value` with the fields an event lacks left out rather than null.
fn without_nulls(mut value: Value) -> Value {
    if let Value::Object(fields) = &mut value {
        fields.retain(|_, field| !field.is_null());
        for field in fields.values_mut() {
            *field = without_nulls(field.take());
        }
    }
    value
}

/// Writes each batch as JSON lines to a file (appended) or stdout, flushed
/// and, for a file, synced before the batch counts as accepted.
pub struct OcsfSink {
    out: Out,
}

enum Out {
    Stdout,
    File(std::fs::File),
}

impl OcsfSink {
    /// `-` is stdout; anything else a file path, created when missing.
    pub fn open(target: &str) -> Result<OcsfSink, SinkError> {
        let out = if target == "-" {
            Out::Stdout
        } else {
            Out::File(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(target)?,
            )
        };
        Ok(OcsfSink { out })
    }
}

impl Sink for OcsfSink {
    async fn send(&mut self, batch: &[Chained]) -> Result<(), SinkError> {
        let mut lines = Vec::new();
        for chained in batch {
            serde_json::to_writer(&mut lines, &object(chained))
                .map_err(|error| SinkError::Io(error.into()))?;
            lines.push(b'\n');
        }
        // Small synchronous writes of a batch: as the JSON-lines audit sink
        // does, without a blocking pool hop per batch.
        match &mut self.out {
            Out::Stdout => {
                let mut stdout = std::io::stdout().lock();
                stdout.write_all(&lines)?;
                stdout.flush()?;
            }
            Out::File(file) => {
                file.write_all(&lines)?;
                file.sync_data()?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Capability;

    /// The exporters' sample, with an id, a capability and a receive time.
    fn chained(decision: Outcome) -> Chained {
        let mut chained = super::super::sample(decision);
        chained.event.id = "01JEXAMPLE0000000000000000".into();
        chained.event.capability = Some(Capability::InjectExec);
        chained.event.received = Some("2026-12-07T08:00:00.500Z".parse().unwrap());
        chained
    }

    /// The fields OCSF 1.3 requires of API Activity (base event: class,
    /// category, activity, type, time, severity, metadata; the class: actor,
    /// api, src_endpoint), with the types the schema gives them.
    #[test]
    fn an_event_is_an_api_activity_with_its_required_fields_typed() {
        let object = object(&chained(Outcome::Denied));
        for integer in [
            "class_uid",
            "category_uid",
            "activity_id",
            "type_uid",
            "time",
            "severity_id",
            "status_id",
            "action_id",
            "disposition_id",
        ] {
            assert!(object[integer].is_i64(), "{integer}: {}", object[integer]);
        }
        assert_eq!(object["class_uid"], 6003);
        assert_eq!(object["category_uid"], 6);
        assert_eq!(object["type_uid"], 600399, "class_uid * 100 + activity_id");
        assert_eq!(object["time"], 1_796_630_400_123_i64, "milliseconds");
        assert!(object["metadata"]["version"].is_string());
        assert!(object["metadata"]["product"]["name"].is_string());
        assert_eq!(object["metadata"]["uid"], "01JEXAMPLE0000000000000000");
        assert_eq!(object["metadata"]["sequence"], 42);
        assert!(object["actor"]["user"]["name"].is_string());
        assert!(object["api"]["operation"].is_string());
        assert!(object["src_endpoint"].is_object());
        assert_eq!(object["unmapped"]["trust_level"], "semi-trusted");
    }

    /// Allowed, denied and would_deny differ where a SIEM looks: status,
    /// action, disposition and severity.
    #[test]
    fn the_decision_sets_status_action_and_disposition() {
        let of = |decision| {
            let object = object(&chained(decision));
            (
                object["status_id"].as_i64().unwrap(),
                object["action_id"].as_i64().unwrap(),
                object["disposition_id"].as_i64().unwrap(),
                object["severity_id"].as_i64().unwrap(),
            )
        };
        assert_eq!(of(Outcome::Allowed), (1, 1, 1, 1));
        assert_eq!(of(Outcome::Denied), (2, 2, 2, 3));
        assert_eq!(of(Outcome::WouldDeny), (1, 1, 17, 3));
    }

    #[test]
    fn a_denied_tool_call_as_ocsf() {
        let object = object(&chained(Outcome::Denied));
        insta::assert_snapshot!(serde_json::to_string_pretty(&object).unwrap());
    }
}
