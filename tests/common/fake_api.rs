//! A small in-memory Kubernetes API behind a `tower-test` mock: GET, server-side
//! apply PATCH (objects and `/status`), DELETE and event POSTs, enough for the
//! controller's reconcile. Every request is recorded so tests can assert on
//! exactly what the controller sent.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock;

/// One request the controller sent.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub body: Option<Value>,
}

impl Recorded {
    /// `METHOD path`, for compact assertions.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    requests: Vec<Recorded>,
    resource_version: u64,
}

/// The fake API server's state, shared with the test.
#[derive(Clone, Default)]
pub struct FakeApi(Arc<Mutex<State>>);

impl FakeApi {
    /// A client talking to a new fake API server, and that server.
    pub fn start() -> (Client, FakeApi) {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let api = FakeApi::default();
        let server = api.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let response = server.serve(request).await;
                respond.send_response(response);
            }
        });
        (Client::new(service, "default"), api)
    }

    /// Stores `object` at `path` as if it had been created.
    pub fn insert(&self, path: &str, object: Value) {
        let mut state = self.0.lock().unwrap();
        let object = created(object, &mut state.resource_version);
        state.objects.insert(path.to_owned(), object);
    }

    /// The object at `path`.
    pub fn get(&self, path: &str) -> Option<Value> {
        self.0.lock().unwrap().objects.get(path).cloned()
    }

    /// Changes the object at `path` in place.
    pub fn modify(&self, path: &str, change: impl FnOnce(&mut Value)) {
        let mut state = self.0.lock().unwrap();
        change(state.objects.get_mut(path).expect("object to modify"));
    }

    /// Removes the object at `path` (as the garbage collector or kubelet would).
    pub fn remove(&self, path: &str) {
        self.0.lock().unwrap().objects.remove(path);
    }

    /// Every request since the last call, and forgets them.
    pub fn take_requests(&self) -> Vec<Recorded> {
        std::mem::take(&mut self.0.lock().unwrap().requests)
    }

    async fn serve(&self, request: Request<Body>) -> Response<Body> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        let bytes = request
            .into_body()
            .collect_bytes()
            .await
            .expect("a request body");
        let body: Option<Value> =
            (!bytes.is_empty()).then(|| serde_json::from_slice(&bytes).expect("a JSON body"));
        let mut state = self.0.lock().unwrap();
        state.requests.push(Recorded {
            method: method.clone(),
            path: path.clone(),
            query,
            body: body.clone(),
        });
        let (status, key) = match path.strip_suffix("/status") {
            Some(parent) => (true, parent.to_owned()),
            None => (false, path.clone()),
        };
        match method {
            Method::GET => match state.objects.get(&key) {
                Some(object) => respond(StatusCode::OK, object),
                None => not_found(&key),
            },
            Method::PATCH if status => {
                let resource_version = next_version(&mut state.resource_version);
                let Some(object) = state.objects.get_mut(&key) else {
                    return not_found(&key);
                };
                object["status"] = body.expect("a status patch")["status"].clone();
                object["metadata"]["resourceVersion"] = json!(resource_version);
                respond(StatusCode::OK, object)
            }
            Method::PATCH => {
                let patch = body.expect("an apply patch");
                let object = match state.objects.remove(&key) {
                    Some(mut existing) => {
                        merge(&mut existing, &patch);
                        existing["metadata"]["resourceVersion"] =
                            json!(next_version(&mut state.resource_version));
                        existing
                    }
                    None => created(patch, &mut state.resource_version),
                };
                state.objects.insert(key, object.clone());
                respond(StatusCode::OK, &object)
            }
            Method::DELETE => match state.objects.remove(&key) {
                Some(object) => respond(StatusCode::OK, &object),
                None => not_found(&key),
            },
            // A POST answers with the object stored at its path (a canned
            // response, such as a TokenReview), or echoes its body.
            Method::POST => match state.objects.get(&key) {
                Some(canned) => respond(StatusCode::CREATED, canned),
                None => respond(StatusCode::CREATED, &body.unwrap_or_default()),
            },
            other => panic!("the fake API does not serve {other} {path}"),
        }
    }
}

fn next_version(counter: &mut u64) -> String {
    *counter += 1;
    counter.to_string()
}

fn created(mut object: Value, counter: &mut u64) -> Value {
    let metadata = &mut object["metadata"];
    if metadata.get("uid").is_none() {
        metadata["uid"] = json!(format!(
            "uid-{}",
            metadata["name"].as_str().unwrap_or("object")
        ));
    }
    metadata["resourceVersion"] = json!(next_version(counter));
    if metadata.get("creationTimestamp").is_none() {
        metadata["creationTimestamp"] = json!("2026-11-24T12:00:00Z");
    }
    object
}

/// Server-side apply, simplified: fields of `patch` replace those of
/// `object`, objects merge recursively, everything else is replaced.
fn merge(object: &mut Value, patch: &Value) {
    match (object, patch) {
        (Value::Object(object), Value::Object(patch)) => {
            for (key, value) in patch {
                merge(object.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
        (object, patch) => *object = patch.clone(),
    }
}

fn respond(status: StatusCode, object: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Body::from(serde_json::to_vec(object).unwrap()))
        .unwrap()
}

fn not_found(path: &str) -> Response<Body> {
    let status = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("{path} not found"), "reason": "NotFound", "code": 404
    });
    respond(StatusCode::NOT_FOUND, &status)
}
