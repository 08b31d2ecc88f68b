//! The contract between a session pod, as the controller builds it, and the
//! programs in it: names, paths, ports, and the environment variables each
//! container reads. The pod builder writes them from these constants and
//! the sidecar's flags read them from the same constants, so the two cannot
//! drift; the control plane finds a session's pod and token here too.

/// Name of the agent container.
pub const AGENT_CONTAINER: &str = "agent";
/// Label naming the Session a child (its pod, ...) belongs to.
pub const SESSION_LABEL: &str = "wopr.dev/session";
/// Name of the sidecar container.
pub const SIDECAR_CONTAINER: &str = "a2a";
/// The operator binary in the sidecar image (its entrypoint).
pub const SIDECAR_BINARY: &str = "/usr/local/bin/wopr-operator";

/// Directory of the sidecar's unix socket, shared by both containers.
pub const SOCKET_DIR: &str = "/run/wopr";
/// The sidecar's gRPC unix socket.
pub const SOCKET_PATH: &str = "/run/wopr/a2a.sock";
/// Port of the sidecar's MCP endpoint on the pod's loopback.
pub const MCP_PORT: u16 = 7780;
/// The sidecar's MCP address: loopback, [`MCP_PORT`].
pub const MCP_ADDRESS: &str = "127.0.0.1:7780";
/// The path of the sidecar's MCP endpoint.
pub const MCP_PATH: &str = "/mcp";
/// The URL the agent reaches its sidecar's MCP endpoint at.
pub const MCP_URL: &str = "http://127.0.0.1:7780/mcp";
/// Port of the sidecar's model proxy on the pod's loopback: OpenAI- and
/// Anthropic-compatible HTTP, relayed to the egress service.
pub const MODELS_PORT: u16 = 7782;
/// The model proxy's address: loopback, [`MODELS_PORT`].
pub const MODELS_ADDRESS: &str = "127.0.0.1:7782";
/// What the agent's OpenAI SDK is pointed at (`OPENAI_BASE_URL`: the SDK
/// appends `/chat/completions`).
pub const OPENAI_BASE_URL: &str = "http://127.0.0.1:7782/v1";
/// What the agent's Anthropic SDK is pointed at (`ANTHROPIC_BASE_URL`: the
/// SDK appends `/v1/messages`).
pub const ANTHROPIC_BASE_URL: &str = "http://127.0.0.1:7782";
/// The API key the agent's SDKs are given: SDKs refuse to start without
/// one, and the real key never enters the pod, so this placeholder says so.
pub const PLACEHOLDER_API_KEY: &str = "wopr-no-key-in-the-sandbox";
/// The largest `http_fetch` answer body the egress service relays to a
/// sidecar (its `--fetch-max-response-bytes` is at most this), and so the
/// largest the sidecar's Fetch client takes, in one gRPC message.
pub const MAX_FETCH_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// Port of the sidecar's gRPC health service, for the kubelet's probes.
pub const HEALTH_PORT: u16 = 7781;
/// Where the sidecar serves gRPC health: every interface (the kubelet
/// probes the pod's IP), [`HEALTH_PORT`].
pub const HEALTH_ADDRESS: &str = "0.0.0.0:7781";
/// The same health service seen from inside the pod, where the sidecar's
/// postStart hook (`wopr-operator sidecar-ready`) checks it.
pub const LOOPBACK_HEALTH_ADDRESS: &str = "127.0.0.1:7781";
/// The sidecar's audit spool: an emptyDir of its own.
pub const SPOOL_DIR: &str = "/var/lib/wopr/spool";
/// The gRPC metadata key (on every CallTool answer, success or error) and
/// the MCP `_meta` key (on every `tools/call` answer) that carry the id of
/// the audit event recording the call.
pub const AUDIT_ID_METADATA: &str = "wopr-audit-id";
/// See [`AUDIT_ID_METADATA`].
pub const AUDIT_ID_MCP_META: &str = "wopr.dev/auditId";
/// Where the workspace is mounted in both containers: writable in the
/// sidecar, which alone writes it (`memory_write`), read-only in the agent.
pub const WORKSPACE_DIR: &str = "/workspace";

/// Where the projected service-account token is mounted in the sidecar.
pub const TOKEN_DIR: &str = "/var/run/secrets/wopr.dev/serviceaccount";
/// The token file in [`TOKEN_DIR`].
pub const TOKEN_PATH: &str = "/var/run/secrets/wopr.dev/serviceaccount/token";
/// Audience of the projected token, checked by the control plane.
pub const TOKEN_AUDIENCE: &str = "wopr.dev";
/// Lifetime of the projected token (the kubelet rotates it).
pub const TOKEN_EXPIRATION_SECONDS: i64 = 600;

/// The ClusterRole of `get` on Secrets (no list, no watch) the egress
/// service reads provider keys by, and the name of each RoleBinding of it
/// the controller applies in a namespace whose default SecurityPolicy
/// configures providers.
pub const PROVIDER_KEYS_ROLE: &str = "wopr-egress-provider-keys";
/// The ConfigMap of each namespace with Sessions holding the CA bundle the
/// control plane's certificate is verified against (ConfigMaps cannot be
/// mounted across namespaces, so the controller publishes one in each).
pub const CA_BUNDLE_CONFIGMAP: &str = "wopr-ca-bundle";
/// The bundle's key in [`CA_BUNDLE_CONFIGMAP`] (PEM).
pub const CA_BUNDLE_KEY: &str = "ca.crt";
/// Where the bundle is mounted in the sidecar.
pub const CA_DIR: &str = "/var/run/secrets/wopr.dev/ca";
/// The bundle file in [`CA_DIR`].
pub const CA_PATH: &str = "/var/run/secrets/wopr.dev/ca/ca.crt";

/// The kubelet's port on every node, probed by isolated sandboxes.
pub const KUBELET_PORT: u16 = 10250;

/// The pod conditions the control plane records a sidecar's sandbox checks
/// as (`wopr.dev/NetworkIsolated`, ...).
pub const POD_CONDITION_PREFIX: &str = "wopr.dev/";

/// The name of every child of the Session `session` (pod, ServiceAccount,
/// NetworkPolicy): `wopr-<session>`.
pub fn child_name(session: &str) -> String {
    format!("wopr-{session}")
}

/// Environment variables of the session pod's containers.
pub mod env {
    /// Sidecar: the control plane's address.
    pub const CONTROL_PLANE_ADDRESS: &str = "WOPR_CONTROL_PLANE_ADDRESS";
    /// Sidecar: the CA bundle the control plane is verified against.
    pub const CONTROL_PLANE_CA: &str = "WOPR_CONTROL_PLANE_CA";
    /// Sidecar (and controller): plaintext to the control plane, for
    /// development only.
    pub const INSECURE_PLAINTEXT: &str = "WOPR_INSECURE_PLAINTEXT";
    /// Sidecar: the session's namespace (from the downward API).
    pub const NAMESPACE: &str = "POD_NAMESPACE";
    /// Sidecar: the gRPC socket.
    pub const SOCKET_PATH: &str = "WOPR_SOCKET_PATH";
    /// Sidecar: the MCP address.
    pub const MCP_ADDRESS: &str = "WOPR_MCP_ADDRESS";
    /// Sidecar: the egress service's address (`https://host:port`).
    pub const EGRESS_ADDRESS: &str = "WOPR_EGRESS_ADDRESS";
    /// Sidecar: the model proxy's address.
    pub const MODELS_ADDRESS: &str = "WOPR_MODELS_ADDRESS";
    /// Sidecar: the gRPC health address.
    pub const HEALTH_ADDRESS: &str = "WOPR_HEALTH_ADDRESS";
    /// Sidecar: the projected token.
    pub const TOKEN_PATH: &str = "WOPR_TOKEN_PATH";
    /// Sidecar: the workspace.
    pub const WORKSPACE: &str = "WOPR_WORKSPACE";
    /// Sidecar: the audit spool.
    pub const SPOOL_DIR: &str = "WOPR_SPOOL_DIR";
    /// Sidecar: the sandbox's network mode.
    pub const NETWORK_MODE: &str = "WOPR_NETWORK_MODE";
    /// Sidecar: what the egress allow-list admits (TCP).
    pub const EGRESS_ALLOWED: &str = "WOPR_EGRESS_ALLOWED";
    /// Sidecar: addresses to prove unreachable.
    pub const ISOLATION_PROBES: &str = "WOPR_ISOLATION_PROBES";
    /// Sidecar: whether the agent waits for verified isolation.
    pub const REQUIRE_VERIFIED_ISOLATION: &str = "WOPR_REQUIRE_VERIFIED_ISOLATION";
    /// Sidecar: the node's IP (from the downward API), for the kubelet probe.
    pub const NODE_IP: &str = "WOPR_NODE_IP";

    /// Agent and sidecar: the Session's system prompt (`spec.prompt`; not
    /// set when it has none). Fixed for the pod's life, like the rest of its
    /// spec: a new prompt is a new pod.
    pub const PROMPT: &str = "WOPR_PROMPT";

    /// Agent: the session's name.
    pub const AGENT_SESSION: &str = "WOPR_SESSION";
    /// Agent: the sidecar's MCP URL.
    pub const AGENT_MCP_URL: &str = "WOPR_MCP_URL";
    /// Agent: the sidecar's gRPC socket.
    pub const AGENT_A2A_SOCKET: &str = "WOPR_A2A_SOCKET";
    /// Agent: where the official OpenAI SDKs send requests.
    pub const AGENT_OPENAI_BASE_URL: &str = "OPENAI_BASE_URL";
    /// Agent: the OpenAI SDKs' key (a placeholder).
    pub const AGENT_OPENAI_API_KEY: &str = "OPENAI_API_KEY";
    /// Agent: where the official Anthropic SDKs (and claude-code) send requests.
    pub const AGENT_ANTHROPIC_BASE_URL: &str = "ANTHROPIC_BASE_URL";
    /// Agent: the Anthropic SDKs' key (a placeholder).
    pub const AGENT_ANTHROPIC_API_KEY: &str = "ANTHROPIC_API_KEY";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_paths_agree_with_their_parts() {
        assert_eq!(MCP_ADDRESS, format!("127.0.0.1:{MCP_PORT}"));
        assert_eq!(MCP_URL, format!("http://{MCP_ADDRESS}{MCP_PATH}"));
        assert_eq!(HEALTH_ADDRESS, format!("0.0.0.0:{HEALTH_PORT}"));
        assert_eq!(MODELS_ADDRESS, format!("127.0.0.1:{MODELS_PORT}"));
        assert_eq!(OPENAI_BASE_URL, format!("http://{MODELS_ADDRESS}/v1"));
        assert_eq!(ANTHROPIC_BASE_URL, format!("http://{MODELS_ADDRESS}"));
        assert_eq!(LOOPBACK_HEALTH_ADDRESS, format!("127.0.0.1:{HEALTH_PORT}"));
        assert_eq!(TOKEN_PATH, format!("{TOKEN_DIR}/token"));
        assert_eq!(CA_PATH, format!("{CA_DIR}/{CA_BUNDLE_KEY}"));
        assert!(SOCKET_PATH.starts_with(SOCKET_DIR));
    }
}
