//! OpenTelemetry logs over OTLP/gRPC: each event one `LogRecord`, sent with
//! the generated `LogsService` client of the official protos
//! (`opentelemetry-proto`), whose answer says whether the receiver took the
//! whole batch (the SDK's batching exporter does not tell its caller, so
//! it cannot move a cursor).

use std::path::Path;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::{Sink, SinkError};
use crate::api::name_of;
use crate::policy::Outcome;
use crate::store::Chained;
use crate::tls::client::{Bundle, ClientTls};

/// The instrumentation scope of every record.
pub const SCOPE: &str = "wopr.audit";
/// How long one batch may take to be accepted before it is sent again.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends batches to an OTLP/gRPC logs receiver.
pub struct OtlpSink {
    client: LogsServiceClient<Channel>,
}

impl OtlpSink {
    /// A sink for the receiver at `endpoint`: `https://host:port`, its
    /// certificate verified against the CA bundle `ca` (PEM) when given,
    /// else the system's roots; or `http://host:port` in plaintext (a
    /// collector beside the operator). It connects on the first batch, and
    /// again after a failure.
    pub fn new(endpoint: &str, ca: Option<&Path>) -> Result<OtlpSink, SinkError> {
        let invalid = |why: String| SinkError::Unreachable(format!("{endpoint}: {why}"));
        let secured = match (endpoint.split_once("://").map(|(scheme, _)| scheme), ca) {
            (Some("https"), Some(ca)) => crate::tls::client::endpoint(
                endpoint,
                &ClientTls::Verify {
                    bundle: Bundle::File(ca.to_owned()),
                    server_name: None,
                },
            )
            .map_err(|error| invalid(error.to_string()))?,
            (Some("https"), None) => Endpoint::from_shared(endpoint.to_owned())
                .map_err(|error| invalid(error.to_string()))?
                .tls_config(ClientTlsConfig::new().with_native_roots())
                .map_err(|error| invalid(error.to_string()))?,
            (Some("http"), None) => Endpoint::from_shared(endpoint.to_owned())
                .map_err(|error| invalid(error.to_string()))?,
            (Some("http"), Some(_)) => {
                return Err(invalid(
                    "a CA bundle for a plaintext endpoint: use https://".into(),
                ));
            }
            _ => return Err(invalid("not an http:// or https:// URL".into())),
        };
        let channel = secured.timeout(REQUEST_TIMEOUT).connect_lazy();
        Ok(OtlpSink {
            client: LogsServiceClient::new(channel),
        })
    }
}

impl Sink for OtlpSink {
    async fn send(&mut self, batch: &[Chained]) -> Result<(), SinkError> {
        let response = self
            .client
            .export(request(batch))
            .await
            .map_err(|status| SinkError::Refused(status.to_string()))?
            .into_inner();
        // A partial success rejected some records: the whole batch is sent
        // again (the accepted ones are repeats the receiver can drop by id).
        match response.partial_success {
            Some(partial) if partial.rejected_log_records > 0 => Err(SinkError::Refused(format!(
                "{} of {} records rejected: {}",
                partial.rejected_log_records,
                batch.len(),
                partial.error_message
            ))),
            _ => Ok(()),
        }
    }
}

/// One request carrying `batch`, in order.
pub fn request(batch: &[Chained]) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![
                    text("service.name", "wopr-operator"),
                    text("service.version", env!("CARGO_PKG_VERSION")),
                ],
                ..Resource::default()
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: SCOPE.to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..InstrumentationScope::default()
                }),
                log_records: batch.iter().map(record).collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// The severity of a decision: a denial is what a SIEM alerts on.
pub fn severity(decision: Outcome) -> SeverityNumber {
    match decision {
        Outcome::Allowed => SeverityNumber::Info,
        Outcome::WouldDeny => SeverityNumber::Warn,
        Outcome::Denied => SeverityNumber::Error,
    }
}

/// The record of one stored event: its time, a severity by decision, the
/// reason as body, and attributes a SIEM filters on (`wopr.event.id`, the
/// ULID, is what a receiver de-duplicates by).
pub fn record(chained: &Chained) -> LogRecord {
    let event = &chained.event;
    let severity = severity(event.decision);
    let mut attributes = vec![
        text("wopr.event.id", &event.id),
        int("wopr.chain.seq", chained.seq),
        text("wopr.namespace", &event.namespace),
        text("wopr.session", &event.session),
        text("wopr.event.type", &name_of(&event.event_type)),
        text("wopr.decision", &name_of(&event.decision)),
        text("wopr.enforcement", &name_of(&event.enforcement)),
        text("wopr.source.type", &event.source.source_type),
        text("wopr.source.identity", &event.source.identity),
        text("wopr.trust_level", &name_of(&event.source.trust_level)),
    ];
    let optional = [
        ("wopr.tool", event.tool.clone()),
        ("wopr.action", event.action.clone()),
        ("wopr.capability", event.capability.as_ref().map(name_of)),
        ("wopr.policy_hash", event.policy_hash.clone()),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            attributes.push(text(key, &value));
        }
    }
    if let Some(repeats) = event.repeats {
        attributes.push(int(
            "wopr.repeats",
            i64::try_from(repeats).unwrap_or(i64::MAX),
        ));
    }
    LogRecord {
        time_unix_nano: nanos(event.time),
        observed_time_unix_nano: event.received.map_or(0, nanos),
        severity_number: severity as i32,
        severity_text: severity
            .as_str_name()
            .trim_start_matches("SEVERITY_NUMBER_")
            .to_owned(),
        body: Some(AnyValue {
            value: Some(Value::StringValue(event.reason.clone())),
        }),
        attributes,
        event_name: format!("wopr.audit.{}", name_of(&event.event_type)),
        ..LogRecord::default()
    }
}

fn nanos(time: k8s_openapi::jiff::Timestamp) -> u64 {
    u64::try_from(time.as_nanosecond()).unwrap_or(0)
}

fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.to_owned())),
        }),
        ..KeyValue::default()
    }
}

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(Value::IntValue(value)),
        }),
        ..KeyValue::default()
    }
}

/// The event id a record carries (what a receiver de-duplicates by).
pub fn event_id(record: &LogRecord) -> Option<&str> {
    record
        .attributes
        .iter()
        .find_map(|kv| match (&kv.key[..], &kv.value) {
            (
                "wopr.event.id",
                Some(AnyValue {
                    value: Some(Value::StringValue(id)),
                }),
            ) => Some(id.as_str()),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::super::sample as chained;
    use super::*;

    fn attribute<'a>(record: &'a LogRecord, key: &str) -> Option<&'a Value> {
        let kv = record.attributes.iter().find(|kv| kv.key == key)?;
        kv.value.as_ref()?.value.as_ref()
    }

    /// A record carries the time, a severity by decision, the reason and
    /// the attributes a SIEM filters and de-duplicates on.
    #[test]
    fn a_record_carries_what_a_siem_filters_on() {
        let chained = chained(Outcome::Denied);
        let record = record(&chained);
        assert_eq!(record.time_unix_nano, 1_796_630_400_123_000_000);
        assert_eq!(record.severity_number, SeverityNumber::Error as i32);
        assert_eq!(record.severity_text, "ERROR");
        assert_eq!(
            record.body.and_then(|body| body.value),
            Some(Value::StringValue(
                "capability inject.exec is not granted".into()
            ))
        );
        let record = super::record(&chained);
        assert_eq!(event_id(&record), Some(chained.event.id.as_str()));
        let text = |value: &str| Some(Value::StringValue(value.into()));
        assert_eq!(
            attribute(&record, "wopr.namespace").cloned(),
            text("team-a")
        );
        assert_eq!(
            attribute(&record, "wopr.session").cloned(),
            text("research-agent")
        );
        assert_eq!(
            attribute(&record, "wopr.event.type").cloned(),
            text("tool_call")
        );
        assert_eq!(attribute(&record, "wopr.decision").cloned(), text("denied"));
        assert_eq!(attribute(&record, "wopr.tool").cloned(), text("shell_exec"));
        assert_eq!(
            attribute(&record, "wopr.trust_level").cloned(),
            text("semi-trusted")
        );
        assert_eq!(
            attribute(&record, "wopr.chain.seq"),
            Some(&Value::IntValue(42))
        );
        assert_eq!(
            attribute(&record, "wopr.capability"),
            None,
            "absent, not empty"
        );
    }

    #[test]
    fn severity_follows_the_decision() {
        assert_eq!(severity(Outcome::Allowed), SeverityNumber::Info);
        assert_eq!(severity(Outcome::WouldDeny), SeverityNumber::Warn);
        assert_eq!(severity(Outcome::Denied), SeverityNumber::Error);
    }
}
