//! A small in-memory Kubernetes API: GET (objects and lists), WATCH,
//! server-side apply and merge PATCH (objects and `/status`), POST (create,
//! or an answer computed by a responder such as TokenReview), PUT (an
//! update, refused 409 on a stale resourceVersion) and DELETE.
//! Enough for the controller's reconcile and for running the real
//! `wopr-operator` binary against it.
//!
//! One router over one state, two transports: in process for clients of
//! the test itself ([`FakeApi::start`], [`FakeApi::client`]), and real HTTP
//! on 127.0.0.1 with a kubeconfig for real processes
//! ([`FakeApi::serve_http`]). Every request is recorded so tests can
//! assert on exactly what was sent.
//!
//! Over HTTP it also serves `pods/portforward` as the API server (and the
//! kubelet behind it) does for WebSocket clients such as kube's
//! ([`FakeApi::forward`]): the `v4.channel.k8s.io` subprotocol, a data and
//! an error channel per port, the first frame on each the port as two
//! bytes little-endian, every frame after it prefixed by its channel.
//! And `pods/exec` ([`FakeApi::script_exec`], in `exec`).

mod exec;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use futures::{SinkExt, StreamExt};
use http::{HeaderMap, Method, StatusCode};
use hyper_util::rt::TokioIo;
use kube::Client;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Message, handshake::derive_accept_key, protocol::Role};

#[allow(unused_imports)] // each test crate uses a different subset
pub use exec::{ExecCall, ExecReply};

/// One request a client sent.
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

/// Computes the answer to a POST from its body.
pub type Responder = Arc<dyn Fn(&Value) -> Value + Send + Sync>;

/// Selects request paths.
type PathMatcher = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// A change to an object, as a watch reports it.
#[derive(Clone, Debug)]
struct Change {
    resource_version: u64,
    key: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    requests: Vec<Recorded>,
    resource_version: u64,
    /// Every change, for watches that start from an older resourceVersion.
    history: Vec<Change>,
    responders: HashMap<String, Responder>,
    /// Requests to matching paths are refused with this status.
    refusals: Vec<(PathMatcher, StatusCode, Value)>,
    /// Requests to matching paths are never answered.
    stalled: Vec<PathMatcher>,
    /// Objects at matching paths are deleted gracefully: a DELETE marks
    /// them (`deletionTimestamp`) and [`FakeApi::remove`] ends them.
    graceful: Vec<PathMatcher>,
    /// Top-level status fields (and condition types) each field manager
    /// applied last, per object: what a new apply that omits them removes.
    status_owners: HashMap<(String, String), BTreeSet<String>>,
    /// Where a port-forward to (pod path, port) is bridged to.
    forwards: HashMap<(String, u16), SocketAddr>,
    /// What execs in pods answer.
    exec: Option<exec::ExecScript>,
}

/// The fake API server's state, shared with the test.
#[derive(Clone)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<Change>,
}

impl Default for FakeApi {
    fn default() -> Self {
        FakeApi {
            state: Arc::default(),
            changes: broadcast::channel(1024).0,
        }
    }
}

/// What a request gets.
enum Reply {
    Json(StatusCode, Value),
    /// A watch of `collection`, from after `since`.
    Watch(Collection, u64),
    /// No answer, ever.
    Stall,
}

impl FakeApi {
    /// A client talking to a new fake API server (in process), and that server.
    pub fn start() -> (Client, FakeApi) {
        let api = FakeApi::default();
        (api.client(), api)
    }

    /// A client served in process by this API, as over HTTP (watches
    /// stream, stalled requests never answer), without a socket: under
    /// paused time, nothing waits outside the runtime.
    pub fn client(&self) -> Client {
        Client::new(self.router(), "default")
    }

    fn router(&self) -> axum::Router {
        axum::Router::new()
            .fallback(serve_http)
            .with_state(self.clone())
    }

    /// Serves this API over HTTP on 127.0.0.1, for real processes.
    pub async fn serve_http(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let router = self.router();
        tokio::spawn(async move { axum::serve(listener, router).await });
        address
    }

    /// Stores `object` at `path` as if it had been created.
    pub fn insert(&self, path: &str, object: Value) {
        let mut state = self.state.lock().unwrap();
        let object = created(object, &mut state.resource_version);
        self.publish(&mut state, path, "ADDED", &object);
        state.objects.insert(path.to_owned(), object);
    }

    /// The object at `path`.
    pub fn get(&self, path: &str) -> Option<Value> {
        self.state.lock().unwrap().objects.get(path).cloned()
    }

    /// Changes the object at `path` in place (watchers see the change).
    pub fn modify(&self, path: &str, change: impl FnOnce(&mut Value)) {
        let mut state = self.state.lock().unwrap();
        let version = next_version(&mut state.resource_version);
        let mut object = state.objects.remove(path).expect("object to modify");
        change(&mut object);
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        self.publish(&mut state, path, "MODIFIED", &object);
        state.objects.insert(path.to_owned(), object);
    }

    /// Removes the object at `path` (as the garbage collector or kubelet would).
    pub fn remove(&self, path: &str) {
        let mut state = self.state.lock().unwrap();
        if let Some(object) = state.objects.remove(path) {
            next_version(&mut state.resource_version);
            self.publish(&mut state, path, "DELETED", &object);
        }
    }

    /// Every request since the last call, and forgets them.
    pub fn take_requests(&self) -> Vec<Recorded> {
        std::mem::take(&mut self.state.lock().unwrap().requests)
    }

    /// Answers POSTs to `path` with what `responder` computes from the body.
    pub fn respond_to(
        &self,
        path: &str,
        responder: impl Fn(&Value) -> Value + Send + Sync + 'static,
    ) {
        self.state
            .lock()
            .unwrap()
            .responders
            .insert(path.to_owned(), Arc::new(responder));
    }

    /// Answers TokenReviews: each token in `tokens` authenticates as
    /// `(username, pod name)` for the audience `wopr.dev`; any other is refused.
    pub fn review_tokens(&self, tokens: HashMap<String, (String, Option<String>)>) {
        self.respond_to(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            move |review| {
                let token = review["spec"]["token"].as_str().unwrap_or_default();
                let status = match tokens.get(token) {
                    Some((username, pod)) => {
                        let extra = pod.as_ref().map_or_else(
                            || json!({}),
                            |pod| json!({"authentication.kubernetes.io/pod-name": [pod]}),
                        );
                        json!({"authenticated": true, "audiences": ["wopr.dev"],
                               "user": {"username": username, "extra": extra}})
                    }
                    None => json!({"authenticated": false, "error": "invalid bearer token"}),
                };
                json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                       "spec": review["spec"], "status": status})
            },
        );
    }

    /// Refuses every request under `path_prefix` with `code` (403 Forbidden,
    /// 404 NotFound, ...), as the API server would, with `message`.
    pub fn refuse(&self, path_prefix: &str, code: StatusCode, message: &str) {
        let reason = match code {
            StatusCode::FORBIDDEN => "Forbidden",
            StatusCode::NOT_FOUND => "NotFound",
            _ => "InternalError",
        };
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16()
        });
        let prefix = path_prefix.to_owned();
        self.state.lock().unwrap().refusals.push((
            Arc::new(move |path: &str| path.starts_with(&prefix)),
            code,
            status,
        ));
    }

    /// Answers everything in `namespace` as the API server does when the
    /// namespace does not exist.
    pub fn refuse_missing_namespace(&self, namespace: &str) {
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("namespaces \"{namespace}\" not found"), "reason": "NotFound",
            "details": {"name": namespace, "kind": "namespaces"}, "code": 404
        });
        let segment = format!("/namespaces/{namespace}/");
        self.state.lock().unwrap().refusals.push((
            Arc::new(move |path: &str| path.contains(&segment)),
            StatusCode::NOT_FOUND,
            status,
        ));
    }

    /// Port-forwards to `port` of the pod stored at `pod_path` reach
    /// `address` (a server the test runs on 127.0.0.1); to any other port,
    /// the error channel says the connection was refused, as the kubelet's
    /// does.
    pub fn forward(&self, pod_path: &str, port: u16, address: SocketAddr) {
        self.state
            .lock()
            .unwrap()
            .forwards
            .insert((pod_path.to_owned(), port), address);
    }

    /// Never answers requests under `path_prefix` from now on (over HTTP).
    pub fn stall(&self, path_prefix: &str) {
        let prefix = path_prefix.to_owned();
        self.state
            .lock()
            .unwrap()
            .stalled
            .push(Arc::new(move |path: &str| path.starts_with(&prefix)));
    }

    /// Deletes objects under `path_prefix` gracefully from now on, as the
    /// API server does pods: a DELETE only marks them, and they stay until
    /// [`FakeApi::remove`] (the kubelet) ends them.
    pub fn delete_gracefully(&self, path_prefix: &str) {
        let prefix = path_prefix.to_owned();
        self.state
            .lock()
            .unwrap()
            .graceful
            .push(Arc::new(move |path: &str| path.starts_with(&prefix)));
    }

    /// Serves the discovery document of `wopr.dev/v1alpha1`, as if the CRDs
    /// were installed.
    pub fn install_crds(&self) {
        let resources: Vec<Value> = wopr_operator::api::crds()
            .into_iter()
            .flat_map(|crd| {
                let plural = crd.spec.names.plural.clone();
                [
                    json!({"name": plural, "singularName": crd.spec.names.singular, "namespaced": true,
                           "kind": crd.spec.names.kind, "verbs": ["get", "list", "watch", "patch"]}),
                    json!({"name": format!("{plural}/status"), "singularName": "", "namespaced": true,
                           "kind": crd.spec.names.kind, "verbs": ["get", "patch"]}),
                ]
            })
            .collect();
        self.insert(
            "/apis/wopr.dev/v1alpha1",
            json!({"kind": "APIResourceList", "apiVersion": "v1",
                   "groupVersion": "wopr.dev/v1alpha1", "resources": resources}),
        );
    }

    fn publish(&self, state: &mut State, key: &str, kind: &'static str, object: &Value) {
        let change = Change {
            resource_version: state.resource_version,
            key: key.to_owned(),
            kind,
            object: object.clone(),
        };
        state.history.push(change.clone());
        let _ = self.changes.send(change);
    }

    fn handle(&self, method: &Method, uri: &http::Uri, headers: &HeaderMap, bytes: &[u8]) -> Reply {
        let path = uri.path().to_owned();
        let query = uri.query().unwrap_or_default().to_owned();
        let body: Option<Value> =
            (!bytes.is_empty()).then(|| serde_json::from_slice(bytes).expect("a JSON body"));
        let mut state = self.state.lock().unwrap();
        if let Some(reply) = screen(&mut state, method, &path, &query, body.clone()) {
            return reply;
        }
        let params = query_params(&query);
        if let Some(collection) = Collection::parse(&path) {
            return match *method {
                Method::GET if params.get("watch").is_some_and(|w| w == "true" || w == "1") => {
                    let since = params
                        .get("resourceVersion")
                        .and_then(|rv| rv.parse().ok())
                        .unwrap_or(0);
                    Reply::Watch(collection.selecting(&params), since)
                }
                Method::GET => {
                    let collection = collection.selecting(&params);
                    let items: Vec<Value> = state
                        .objects
                        .iter()
                        .filter(|(key, object)| collection.contains(key, object))
                        .map(|(_, object)| object.clone())
                        .collect();
                    Reply::Json(
                        StatusCode::OK,
                        json!({"apiVersion": "v1", "kind": "List",
                               "metadata": {"resourceVersion": state.resource_version.to_string()},
                               "items": items}),
                    )
                }
                Method::POST => self.create(&mut state, &path, body.unwrap_or_default()),
                _ => panic!("the fake API does not serve {method} on the collection {path}"),
            };
        }
        let (status_subresource, key) = match path.strip_suffix("/status") {
            Some(parent) => (true, parent.to_owned()),
            None => (false, path.clone()),
        };
        let apply = headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|content_type| content_type == "application/apply-patch+yaml");
        let (status, body) = match *method {
            Method::GET => match state.objects.get(&key) {
                Some(object) => (StatusCode::OK, object.clone()),
                None => not_found(&key),
            },
            Method::PATCH if status_subresource => {
                let Some(mut object) = state.objects.get(&key).cloned() else {
                    let (status, body) = not_found(&key);
                    return Reply::Json(status, body);
                };
                let manager = params.get("fieldManager").cloned().unwrap_or_default();
                let patch = body.expect("a status patch")["status"].clone();
                if apply {
                    let owned = state
                        .status_owners
                        .remove(&(key.clone(), manager.clone()))
                        .unwrap_or_default();
                    let now_owned = apply_status(&mut object["status"], &patch, &owned);
                    state
                        .status_owners
                        .insert((key.clone(), manager), now_owned);
                } else {
                    // A merge patch (an update): it owns what it sets apart
                    // from any apply, so later applies leave it alone.
                    if !object["status"].is_object() {
                        object["status"] = json!({});
                    }
                    merge(&mut object["status"], &patch);
                }
                object["metadata"]["resourceVersion"] =
                    json!(next_version(&mut state.resource_version).to_string());
                self.publish(&mut state, &key, "MODIFIED", &object);
                state.objects.insert(key, object.clone());
                (StatusCode::OK, object)
            }
            Method::PATCH => {
                let patch = body.expect("a patch");
                let (kind, object) = match state.objects.remove(&key) {
                    Some(mut existing) => {
                        merge(&mut existing, &patch);
                        existing["metadata"]["resourceVersion"] =
                            json!(next_version(&mut state.resource_version).to_string());
                        ("MODIFIED", existing)
                    }
                    None if apply => ("ADDED", created(patch, &mut state.resource_version)),
                    None => {
                        let (status, body) = not_found(&key);
                        return Reply::Json(status, body);
                    }
                };
                self.publish(&mut state, &key, kind, &object);
                state.objects.insert(key, object.clone());
                (StatusCode::OK, object)
            }
            // An update (PUT): refused 409 when the body's resourceVersion
            // is not the stored one, as the API server's optimistic
            // concurrency does.
            Method::PUT => {
                let mut object = body.expect("an object to update");
                let Some(stored) = state.objects.get(&key) else {
                    let (status, body) = not_found(&key);
                    return Reply::Json(status, body);
                };
                let sent = &object["metadata"]["resourceVersion"];
                if !sent.is_null() && *sent != stored["metadata"]["resourceVersion"] {
                    let status = json!({
                        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": format!("{key}: the object has been modified"),
                        "reason": "Conflict", "code": 409
                    });
                    return Reply::Json(StatusCode::CONFLICT, status);
                }
                object["metadata"]["uid"] = stored["metadata"]["uid"].clone();
                object["metadata"]["resourceVersion"] =
                    json!(next_version(&mut state.resource_version).to_string());
                self.publish(&mut state, &key, "MODIFIED", &object);
                state.objects.insert(key, object.clone());
                (StatusCode::OK, object)
            }
            Method::DELETE if state.graceful.iter().any(|matches| matches(&key)) => {
                let Some(mut object) = state.objects.get(&key).cloned() else {
                    let (status, body) = not_found(&key);
                    return Reply::Json(status, body);
                };
                if object["metadata"].get("deletionTimestamp").is_none() {
                    object["metadata"]["deletionTimestamp"] = json!("2026-11-24T12:00:00Z");
                    object["metadata"]["resourceVersion"] =
                        json!(next_version(&mut state.resource_version).to_string());
                    self.publish(&mut state, &key, "MODIFIED", &object);
                    state.objects.insert(key, object.clone());
                }
                (StatusCode::OK, object)
            }
            Method::DELETE => match state.objects.remove(&key) {
                Some(object) => {
                    next_version(&mut state.resource_version);
                    self.publish(&mut state, &key, "DELETED", &object);
                    (StatusCode::OK, object)
                }
                None => not_found(&key),
            },
            // A POST to an object path answers with the object stored there
            // (a canned response), or a responder's answer, or echoes the body.
            Method::POST => {
                let body = body.unwrap_or_default();
                match (state.responders.get(&path), state.objects.get(&key)) {
                    (Some(responder), _) => (StatusCode::CREATED, responder(&body)),
                    (None, Some(canned)) => (StatusCode::CREATED, canned.clone()),
                    (None, None) => (StatusCode::CREATED, body),
                }
            }
            ref other => panic!("the fake API does not serve {other} {path}"),
        };
        Reply::Json(status, body)
    }

    /// A POST to a collection: creates the object named in its body, or
    /// answers with a responder (TokenReview and other virtual resources).
    fn create(&self, state: &mut State, collection: &str, body: Value) -> Reply {
        if let Some(responder) = state.responders.get(collection) {
            return Reply::Json(StatusCode::CREATED, responder(&body));
        }
        if let Some(canned) = state.objects.get(collection) {
            return Reply::Json(StatusCode::CREATED, canned.clone());
        }
        let Some(name) = body["metadata"]["name"].as_str().map(str::to_owned) else {
            // Events and reviews without a responder: echoed, not stored.
            return Reply::Json(StatusCode::CREATED, body);
        };
        let key = format!("{collection}/{name}");
        if state.objects.contains_key(&key) {
            let status = json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("{key} already exists"), "reason": "AlreadyExists", "code": 409
            });
            return Reply::Json(StatusCode::CONFLICT, status);
        }
        let object = created(body, &mut state.resource_version);
        self.publish(state, &key, "ADDED", &object);
        state.objects.insert(key, object.clone());
        Reply::Json(StatusCode::CREATED, object)
    }

    /// The changes of `collection` after `since`, then every new one.
    fn watch(
        &self,
        collection: Collection,
        since: u64,
    ) -> impl futures::Stream<Item = Bytes> + use<> {
        let (backlog, live) = {
            let state = self.state.lock().unwrap();
            let backlog: Vec<Change> = state
                .history
                .iter()
                .filter(|change| change.resource_version > since)
                .cloned()
                .collect();
            (backlog, self.changes.subscribe())
        };
        let last_backlogged = backlog
            .last()
            .map_or(since, |change| change.resource_version);
        let live = tokio_stream::wrappers::BroadcastStream::new(live)
            .filter_map(move |change| futures::future::ready(change.ok()))
            .filter(move |change| {
                futures::future::ready(change.resource_version > last_backlogged)
            });
        let matching = move |change: &Change| collection.contains(&change.key, &change.object);
        futures::stream::iter(backlog)
            .chain(live)
            .filter(move |change| futures::future::ready(matching(change)))
            .map(|change| {
                let mut line =
                    serde_json::to_vec(&json!({"type": change.kind, "object": change.object}))
                        .unwrap();
                line.push(b'\n');
                Bytes::from(line)
            })
    }

    /// Writes a kubeconfig for this API at `address` into `dir`; returns its path.
    pub fn kubeconfig(dir: &Path, address: SocketAddr) -> PathBuf {
        let path = dir.join("kubeconfig");
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{address}\n\
             users:\n- name: fake\n  user:\n    token: fake-admin\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
             current-context: fake\n"
        );
        std::fs::write(&path, config).unwrap();
        path
    }
}

/// Records a request; a stalled or refused path's reply.
fn screen(
    state: &mut State,
    method: &Method,
    path: &str,
    query: &str,
    body: Option<Value>,
) -> Option<Reply> {
    state.requests.push(Recorded {
        method: method.clone(),
        path: path.to_owned(),
        query: query.to_owned(),
        body,
    });
    if state.stalled.iter().any(|matches| matches(path)) {
        return Some(Reply::Stall);
    }
    state
        .refusals
        .iter()
        .find(|(matches, _, _)| matches(path))
        .map(|(_, code, status)| Reply::Json(*code, status.clone()))
}

/// The kube client's WebSocket subprotocol for port-forwards (it also
/// offers `v5.channel.k8s.io`, which port-forward does not speak).
const PORT_FORWARD_PROTOCOL: &str = "v4.channel.k8s.io";

/// What a `pods/portforward` request gets.
enum Forward {
    /// The upgrade, to the pod at this path, of these ports.
    Upgrade(String, Vec<u16>),
    Reply(Reply),
}

impl FakeApi {
    /// Checks a port-forward request as the API server does: recorded,
    /// refused (RBAC), the pod's existence, the WebSocket upgrade asked for
    /// with the subprotocol, ports named.
    fn port_forward(&self, method: &Method, uri: &http::Uri, headers: &HeaderMap) -> Forward {
        let path = uri.path();
        let query = uri.query().unwrap_or_default();
        let mut state = self.state.lock().unwrap();
        if let Some(reply) = screen(&mut state, method, path, query, None) {
            return Forward::Reply(reply);
        }
        let pod = path.trim_end_matches("/portforward").to_owned();
        if !state.objects.contains_key(&pod) {
            let (status, body) = not_found(&pod);
            return Forward::Reply(Reply::Json(status, body));
        }
        let bad_request = |message: &str| {
            Forward::Reply(Reply::Json(
                StatusCode::BAD_REQUEST,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": message, "reason": "BadRequest", "code": 400}),
            ))
        };
        let offered = headers
            .get(http::header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        if *method != Method::GET
            || !offered
                .split(',')
                .any(|protocol| protocol.trim() == PORT_FORWARD_PROTOCOL)
        {
            return bad_request(
                "the fake API port-forwards only over WebSocket (v4.channel.k8s.io)",
            );
        }
        let ports: Option<Vec<u16>> = query_params(query)
            .get("ports")
            .map(|ports| ports.split(',').map(|port| port.parse().ok()).collect())
            .unwrap_or_default();
        match ports {
            Some(ports) if ports.len() == 1 => Forward::Upgrade(pod, ports),
            _ => bad_request("the fake API forwards exactly one port per request"),
        }
    }

    /// Serves one port-forward's WebSocket: the port on channels 0 (data)
    /// and 1 (error), each opened by the port as two bytes little-endian;
    /// the data bridged to where [`FakeApi::forward`] says, or the error
    /// channel's message and the end.
    async fn bridge(
        &self,
        socket: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>,
        pod: String,
        port: u16,
    ) {
        let target = self
            .state
            .lock()
            .unwrap()
            .forwards
            .get(&(pod.clone(), port))
            .copied();
        let (mut to_client, mut from_client) = socket.split();
        let [low, high] = port.to_le_bytes();
        for channel in [0, 1] {
            if to_client
                .send(Message::binary(vec![channel, low, high]))
                .await
                .is_err()
            {
                return;
            }
        }
        let connected = match target {
            Some(address) => tokio::net::TcpStream::connect(address).await.ok(),
            None => None,
        };
        let Some(connection) = connected else {
            let mut error = vec![1];
            error.extend(format!(
                "error forwarding port {port} to pod {pod}, uid : failed to connect to localhost:{port} inside namespace: connection refused"
            ).into_bytes());
            let _ = to_client.send(Message::binary(error)).await;
            let _ = to_client.send(Message::Close(None)).await;
            // The closing handshake: until the client's Close, what it
            // sends is read and dropped.
            while let Some(Ok(message)) = from_client.next().await {
                if message.is_close() {
                    break;
                }
            }
            return;
        };
        let (mut from_pod, mut to_pod) = connection.into_split();
        let upstream = async move {
            // Data frames (channel 0) to the pod, until the client closes.
            while let Some(Ok(message)) = from_client.next().await {
                let more = match message {
                    Message::Binary(frame) if frame.first() == Some(&0) => {
                        to_pod.write_all(&frame[1..]).await.is_ok()
                    }
                    Message::Close(_) => false,
                    _ => true,
                };
                if !more {
                    break;
                }
            }
            let _ = to_pod.shutdown().await;
        };
        let downstream = async move {
            let mut buffer = vec![0; 16 * 1024];
            while let Ok(read @ 1..) = from_pod.read(&mut buffer).await {
                let mut frame = Vec::with_capacity(read + 1);
                frame.push(0);
                frame.extend_from_slice(&buffer[..read]);
                if to_client.send(Message::binary(frame)).await.is_err() {
                    return;
                }
            }
            let _ = to_client.send(Message::Close(None)).await;
        };
        tokio::join!(upstream, downstream);
    }
}

/// The answer to a port-forward: the WebSocket handshake's 101, the bridge
/// spawned on the upgraded connection.
fn upgrade(
    api: FakeApi,
    mut request: axum::extract::Request,
    pod: String,
    port: u16,
) -> axum::response::Response {
    let key = request
        .headers()
        .get(http::header::SEC_WEBSOCKET_KEY)
        .map(|key| derive_accept_key(key.as_bytes()))
        .expect("a WebSocket key");
    let upgraded = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let Ok(upgraded) = upgraded.await else { return };
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        api.bridge(socket, pod, port).await;
    });
    axum::response::Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, "websocket")
        .header(http::header::SEC_WEBSOCKET_ACCEPT, key)
        .header(http::header::SEC_WEBSOCKET_PROTOCOL, PORT_FORWARD_PROTOCOL)
        .body(axum::body::Body::empty())
        .unwrap()
}

async fn serve_http(
    axum::extract::State(api): axum::extract::State<FakeApi>,
    request: axum::extract::Request,
) -> axum::response::Response {
    let (method, uri, headers) = (
        request.method().clone(),
        request.uri().clone(),
        request.headers().clone(),
    );
    if uri.path().ends_with("/exec") {
        return api.exec(request).await;
    }
    if uri.path().ends_with("/portforward") {
        return match api.port_forward(&method, &uri, &headers) {
            Forward::Upgrade(pod, ports) => upgrade(api, request, pod, ports[0]),
            Forward::Reply(reply) => respond(&api, reply).await,
        };
    }
    let body = axum::body::to_bytes(request.into_body(), usize::MAX)
        .await
        .expect("a request body");
    let reply = api.handle(&method, &uri, &headers, &body);
    respond(&api, reply).await
}

async fn respond(api: &FakeApi, reply: Reply) -> axum::response::Response {
    match reply {
        Reply::Json(status, body) => axum::response::Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap(),
        Reply::Stall => std::future::pending().await,
        Reply::Watch(collection, since) => axum::response::Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from_stream(
                api.watch(collection, since)
                    .map(Ok::<_, std::convert::Infallible>),
            ))
            .unwrap(),
    }
}

/// A collection path: `{prefix}/{plural}` (every namespace, or a
/// cluster-scoped kind) or `{prefix}/namespaces/{namespace}/{plural}`, with
/// an equality label selector.
#[derive(Clone, Debug)]
struct Collection {
    prefix: String,
    namespace: Option<String>,
    plural: String,
    labels: Vec<(String, String, bool)>,
}

/// `{prefix}` and the segments after it: `/api/v1` or `/apis/{group}/{version}`.
fn split_prefix(path: &str) -> Option<(String, Vec<&str>)> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let prefix_length = match segments.first() {
        Some(&"api") => 2,
        Some(&"apis") => 3,
        _ => return None,
    };
    (segments.len() >= prefix_length).then(|| {
        (
            format!("/{}", segments[..prefix_length].join("/")),
            segments[prefix_length..].to_vec(),
        )
    })
}

impl Collection {
    fn parse(path: &str) -> Option<Collection> {
        let (prefix, rest) = split_prefix(path)?;
        let (namespace, plural) = match rest.as_slice() {
            [plural] => (None, *plural),
            ["namespaces", namespace, plural] => (Some(namespace.to_string()), *plural),
            _ => return None,
        };
        Some(Collection {
            prefix,
            namespace,
            plural: plural.to_owned(),
            labels: Vec::new(),
        })
    }

    fn selecting(mut self, params: &HashMap<String, String>) -> Collection {
        self.labels = params
            .get("labelSelector")
            .map(|selector| {
                selector
                    .split(',')
                    .filter_map(|term| match term.split_once("!=") {
                        Some((key, value)) => Some((key, value, false)),
                        None => term.split_once('=').map(|(key, value)| (key, value, true)),
                    })
                    .map(|(key, value, equal)| (key.to_owned(), value.to_owned(), equal))
                    .collect()
            })
            .unwrap_or_default();
        self
    }

    /// Whether the object stored at `key` belongs to this collection.
    fn contains(&self, key: &str, object: &Value) -> bool {
        let Some((prefix, rest)) = split_prefix(key) else {
            return false;
        };
        let (namespace, plural) = match rest.as_slice() {
            [plural, _name] => (None, *plural),
            ["namespaces", namespace, plural, _name] => (Some(*namespace), *plural),
            _ => return false,
        };
        prefix == self.prefix
            && plural == self.plural
            && self
                .namespace
                .as_deref()
                .is_none_or(|wanted| namespace == Some(wanted))
            && self.labels.iter().all(|(label, value, equal)| {
                (object["metadata"]["labels"][label] == json!(value)) == *equal
            })
    }
}

fn query_params(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (key.to_owned(), percent_decode(value)))
        .collect()
}

fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(byte) => {
                        decoded.push(byte);
                        i += 3;
                        continue;
                    }
                    Err(_) => decoded.push(b'%'),
                }
            }
            b'+' => decoded.push(b' '),
            byte => decoded.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

fn next_version(counter: &mut u64) -> u64 {
    *counter += 1;
    *counter
}

fn created(mut object: Value, counter: &mut u64) -> Value {
    let metadata = &mut object["metadata"];
    if metadata.get("uid").is_none() {
        metadata["uid"] = json!(format!(
            "uid-{}",
            metadata["name"].as_str().unwrap_or("object")
        ));
    }
    metadata["resourceVersion"] = json!(next_version(counter).to_string());
    if metadata.get("creationTimestamp").is_none() {
        metadata["creationTimestamp"] = json!("2026-11-24T12:00:00Z");
    }
    object
}

/// A patch, simplified: fields of `patch` replace those of `object`,
/// objects merge recursively, a null removes the field (merge-patch
/// semantics), everything else is replaced.
fn merge(object: &mut Value, patch: &Value) {
    match (object, patch) {
        (Value::Object(object), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    object.remove(key);
                } else {
                    merge(object.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (object, patch) => *object = patch.clone(),
    }
}

/// Server-side apply of a status, simplified: the fields of `patch` replace
/// those of `status`; the fields the same manager applied before (`owned`,
/// top-level names and `condition:<type>`) and now leaves out are removed;
/// conditions merge by `type`, as the list-map they are. Returns what the
/// manager owns now.
fn apply_status(status: &mut Value, patch: &Value, owned: &BTreeSet<String>) -> BTreeSet<String> {
    if !status.is_object() {
        *status = json!({});
    }
    let mut now_owned = BTreeSet::new();
    let fields = patch.as_object().cloned().unwrap_or_default();
    for (field, value) in &fields {
        if field == "conditions" {
            let mut conditions: Vec<Value> = status[field].as_array().cloned().unwrap_or_default();
            for condition in value.as_array().into_iter().flatten() {
                let type_ = condition["type"].as_str().unwrap_or_default().to_owned();
                conditions.retain(|existing| existing["type"] != json!(type_));
                conditions.push(condition.clone());
                now_owned.insert(format!("condition:{type_}"));
            }
            status[field] = json!(conditions);
        } else {
            status[field] = value.clone();
        }
        now_owned.insert(field.clone());
    }
    for dropped in owned.difference(&now_owned) {
        match dropped.strip_prefix("condition:") {
            Some(type_) => {
                if let Some(conditions) = status["conditions"].as_array_mut() {
                    conditions.retain(|existing| existing["type"] != json!(type_));
                }
            }
            None if dropped != "conditions" => {
                status.as_object_mut().unwrap().remove(dropped);
            }
            None => {}
        }
    }
    now_owned
}

fn not_found(path: &str) -> (StatusCode, Value) {
    let status = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("{path} not found"), "reason": "NotFound", "code": 404
    });
    (StatusCode::NOT_FOUND, status)
}
