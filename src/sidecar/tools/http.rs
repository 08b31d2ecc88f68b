//! `http_fetch`: made by the egress service (issue 26), never here. The
//! call goes over the model proxy's channel to the egress service
//! (verified with the control plane's CA bundle, the projected token read
//! anew), which decides it again from the session's policy, runs the SSRF
//! guard and connects to the address it checked. The agent gets the
//! status, headers, body (text, or base64 when not UTF-8), its size, the
//! final URL and the address connected to; a refusal is its precise
//! reason, a failed fetch a failure.

use base64::Engine;
use serde_json::{Map, Value, json};

use super::{Ran, Scope};
use crate::audit::FetchRecord;
use crate::contract::MAX_FETCH_RESPONSE_BYTES;
use crate::policy::tools::arguments::FetchRequest;
use crate::proto::v1alpha1::fetch_client::FetchClient;
use crate::proto::v1alpha1::{FetchCall, FetchReply, FetchResult};
use crate::sidecar::engine::ToolError;

/// What a reply carries beyond its body: headers, URLs, reasons.
const REPLY_OVERHEAD: usize = 1024 * 1024;

/// `http_fetch`.
pub async fn fetch(scope: &Scope<'_>, request: FetchRequest) -> Ran {
    let context = &scope.served.context;
    let call = FetchCall {
        namespace: context.namespace.clone(),
        session: context.session.clone(),
        method: request.method(),
        url: request.url,
        headers: request.headers.into_iter().collect(),
        body: request.body.unwrap_or_default(),
    };
    let (result, reply) = match relay(scope, &call).await {
        Ok(reply) => (answer(&reply), reply),
        Err(error) => (Err(error), FetchReply::default()),
    };
    Ran {
        result,
        fetch: Some(FetchRecord::of(&call, &reply)),
        summary: None,
    }
}

/// The egress service's reply to `call`.
async fn relay(scope: &Scope<'_>, call: &FetchCall) -> Result<FetchReply, ToolError> {
    let egress = scope.egress.ok_or_else(|| {
        ToolError::Failed("no egress service: this sidecar has no --egress-address".into())
    })?;
    let (channel, bearer) = egress
        .channel()
        .await
        .map_err(|error| ToolError::Failed(format!("cannot reach the egress service: {error}")))?;
    let mut request = tonic::Request::new(call.clone());
    request.metadata_mut().insert("authorization", bearer);
    let replied = FetchClient::new(channel)
        .max_decoding_message_size(MAX_FETCH_RESPONSE_BYTES + REPLY_OVERHEAD)
        .fetch(request)
        .await;
    match replied {
        Ok(reply) => Ok(reply.into_inner()),
        Err(status) => {
            egress.forget_after(&status);
            Err(match status.code() {
                tonic::Code::InvalidArgument => {
                    ToolError::InvalidArguments(status.message().into())
                }
                _ => ToolError::Failed(format!("the egress service: {}", status.message())),
            })
        }
    }
}

/// What the agent gets of `reply`.
fn answer(reply: &FetchReply) -> Result<Value, ToolError> {
    match FetchResult::try_from(reply.result) {
        Ok(FetchResult::Fetched) => {}
        Ok(FetchResult::Refused) => return Err(ToolError::Refused(reply.reason.clone())),
        Ok(FetchResult::Failed) => return Err(ToolError::Failed(reply.reason.clone())),
        Ok(FetchResult::Unspecified) | Err(_) => {
            return Err(ToolError::Failed(format!(
                "the egress service answered an unknown result {}: {}",
                reply.result, reply.reason
            )));
        }
    }
    let mut headers = Map::new();
    for header in &reply.headers {
        match headers.get_mut(&header.name) {
            Some(Value::String(joined)) => {
                joined.push_str(", ");
                joined.push_str(&header.value);
            }
            _ => {
                headers.insert(header.name.clone(), Value::String(header.value.clone()));
            }
        }
    }
    let mut answer = json!({
        "status": reply.status,
        "headers": headers,
        "bytes": reply.body.len(),
        "url": reply.final_url,
        "address": reply.address,
    });
    match std::str::from_utf8(&reply.body) {
        Ok(text) => answer["body"] = Value::String(text.to_owned()),
        Err(_) => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(&reply.body);
            answer["bodyBase64"] = Value::String(encoded);
        }
    }
    if !reply.redirects.is_empty() {
        answer["redirects"] = json!(reply.redirects);
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1alpha1::FetchHeader;

    fn fetched(body: &[u8]) -> FetchReply {
        FetchReply {
            result: FetchResult::Fetched.into(),
            status: 200,
            headers: vec![
                FetchHeader {
                    name: "vary".into(),
                    value: "a".into(),
                },
                FetchHeader {
                    name: "vary".into(),
                    value: "b".into(),
                },
            ],
            body: body.to_vec(),
            final_url: "http://example.com/".into(),
            address: "93.184.215.14:80".into(),
            ..FetchReply::default()
        }
    }

    #[test]
    fn text_bodies_come_as_text_others_as_base64() {
        let text = answer(&fetched(b"hello")).unwrap();
        assert_eq!(text["body"], "hello");
        assert_eq!(text["bytes"], 5);
        assert_eq!(text["headers"]["vary"], "a, b");
        assert_eq!(text["address"], "93.184.215.14:80");
        assert!(text.get("bodyBase64").is_none());
        let binary = answer(&fetched(&[0xff, 0xfe, 0])).unwrap();
        assert_eq!(binary["bodyBase64"], "//4A");
        assert!(binary.get("body").is_none());
    }

    #[test]
    fn refusals_and_failures_keep_their_reasons() {
        let stopped = |result: FetchResult| FetchReply {
            result: result.into(),
            reason: "why".into(),
            ..FetchReply::default()
        };
        assert_eq!(
            answer(&stopped(FetchResult::Refused)),
            Err(ToolError::Refused("why".into()))
        );
        assert_eq!(
            answer(&stopped(FetchResult::Failed)),
            Err(ToolError::Failed("why".into()))
        );
        assert!(matches!(
            answer(&stopped(FetchResult::Unspecified)),
            Err(ToolError::Failed(_))
        ));
    }
}
