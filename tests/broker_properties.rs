//! Properties of the broker over random sequences of calls by sessions of
//! random trust levels, access lists and grants, through one gateway with
//! random forward rules, on the in-process control plane (real gRPC, real
//! store, the fake API server, the controller's ApprovalRequest
//! reconciler, people deciding at random). Whatever the sequence:
//! - no session ever holds a capability it did not start with, except one
//!   a person approved for it;
//! - nothing from an untrusted source reaches a session that is not a
//!   gateway, except a forward;
//! - a forward is delivered only under a rule of the gateway that lists its
//!   target and action, and, when the rule requires approval, only after a
//!   person approved it;
//! - an answer reaches only the gateway that forwarded the request, the
//!   source it came from, or the session that asked for an elevation.
//!
//! Enforce mode: warn mode's deliveries are tested on their own
//! (`tests/gateway.rs`).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};

use common::approvals::{approval_path, decide, reconcile};
use common::sidecar::{ControlPlane, as_sidecar};
use common::*;
use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::json;
use tonic::transport::Channel;
use wopr_operator::api::{
    AccessPattern, ApprovalState, Capability, ForwardRule, Grant, RateLimit, TrustLevel,
};
use wopr_operator::controlplane::discover::DiscoverPolicy;
use wopr_operator::inbox::MessageKind;
use wopr_operator::policy::CapabilitySet;
use wopr_operator::proto::v1alpha1::broker_client::BrokerClient;
use wopr_operator::proto::v1alpha1::{
    ElevateRequest, ForwardRequest, ReplyRequest, RespondRequest, SendRequest,
};

const GATE: &str = "gate";
const SESSIONS: [&str; 4] = ["s0", "s1", "s2", "s3"];
const ACTIONS: [&str; 2] = ["a", "b"];

fn all_sessions() -> Vec<&'static str> {
    let mut all = SESSIONS.to_vec();
    all.push(GATE);
    all
}

#[derive(Clone, Debug)]
struct World {
    levels: Vec<TrustLevel>,
    access: Vec<Vec<AccessPattern>>,
    cross_inject: Vec<bool>,
    rules: Vec<ForwardRule>,
}

#[derive(Clone, Debug)]
enum Op {
    Send {
        from: usize,
        to: usize,
    },
    Forward {
        message: usize,
        target: usize,
        action: usize,
    },
    Reply {
        from: usize,
        request: usize,
    },
    Respond {
        request: usize,
    },
    Elevate {
        from: usize,
        capability: Capability,
    },
    Decide {
        request: usize,
        approve: bool,
    },
}

fn level() -> impl Strategy<Value = TrustLevel> {
    select(TrustLevel::ALL.to_vec())
}

fn access() -> impl Strategy<Value = Vec<AccessPattern>> {
    let pattern = prop_oneof![
        Just(AccessPattern::Anyone),
        level().prop_map(AccessPattern::Trust),
        select(all_sessions()).prop_map(|name| AccessPattern::Session(name.into())),
    ];
    prop::collection::vec(pattern, 0..3)
}

fn rule() -> impl Strategy<Value = ForwardRule> {
    (
        prop::collection::vec(select(vec!["s0", "s1", "s2", "s3", "*"]), 1..3),
        prop::collection::vec(select(ACTIONS.to_vec()), 0..2),
        any::<bool>(),
        prop::option::of(1u32..4),
    )
        .prop_map(|(to, actions, require_approval, per_minute)| ForwardRule {
            allow_forward_to: to.into_iter().map(String::from).collect(),
            allow_actions: actions.into_iter().map(String::from).collect(),
            require_approval,
            rate_limit: per_minute.map(|per_minute| RateLimit { per_minute }),
        })
}

fn world() -> impl Strategy<Value = World> {
    (
        prop::collection::vec(level(), 5),
        prop::collection::vec(access(), 5),
        prop::collection::vec(any::<bool>(), 5),
        prop::collection::vec(rule(), 1..3),
    )
        .prop_map(|(levels, access, cross_inject, rules)| World {
            levels,
            access,
            cross_inject,
            rules,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..5usize, 0..5usize).prop_map(|(from, to)| Op::Send { from, to }),
        3 => (0..8usize, 0..4usize, 0..2usize)
            .prop_map(|(message, target, action)| Op::Forward { message, target, action }),
        1 => (0..5usize, 0..8usize).prop_map(|(from, request)| Op::Reply { from, request }),
        1 => (0..8usize).prop_map(|request| Op::Respond { request }),
        1 => (0..5usize, select(Capability::ALL.to_vec()))
            .prop_map(|(from, capability)| Op::Elevate { from, capability }),
        2 => (0..8usize, any::<bool>()).prop_map(|(request, approve)| Op::Decide { request, approve }),
    ]
}

/// The namespace's policy: the built-in profiles, but untrusted sessions
/// may call sessions_send (so they can try).
fn policy() -> wopr_operator::api::SecurityPolicy {
    security_policy(json!({
        "trustLevels": {"untrusted": {"tools": {"allow": ["sessions_send"], "deny": ["*"]}}}
    }))
}

/// Runs `ops` in `world` and checks the properties.
async fn run(world: World, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let names = all_sessions();
    let mut control_plane = ControlPlane::start(&names).await;
    control_plane.put_policy(policy());
    for (n, name) in names.iter().enumerate() {
        let mut session = session(name, world.levels[n]);
        session.spec.access = world.access[n].clone();
        control_plane.put_session(session);
        if world.cross_inject[n] {
            control_plane.put_grant(session_grant(
                &format!("send-{name}"),
                name,
                &[Capability::CrossInject],
            ));
        }
    }
    let mut gw = gateway("gw", GATE);
    gw.spec.forward_rules = world.rules.clone();
    control_plane.put_gateway(gw);
    let initial: HashMap<&str, CapabilitySet> = names
        .iter()
        .map(|name| (*name, capabilities(&control_plane, name)))
        .collect();
    let mut client = BrokerClient::new(control_plane.channel().await);
    // Requests filed so far (forwards, then elevations, in order).
    let mut requests: Vec<String> = Vec::new();
    let mut elevations: HashMap<String, (String, Capability)> = HashMap::new();
    let mut approved: HashSet<String> = HashSet::new();
    let mut granted: HashMap<&str, CapabilitySet> = HashMap::new();
    for op in ops {
        apply(
            &mut control_plane,
            &mut client,
            &op,
            &mut requests,
            &mut elevations,
            &mut approved,
        )
        .await;
        // Approved elevations reach the policy, as the cache would see
        // their Grants.
        for (id, (session, capability)) in &elevations {
            let path =
                format!("/apis/wopr.dev/v1alpha1/namespaces/{NAMESPACE}/grants/elevation-{id}");
            if let Some(grant) = control_plane.api.get(&path) {
                prop_assert!(approved.contains(id), "a Grant without an approval: {id}");
                let grant: Grant = serde_json::from_value(grant).unwrap();
                control_plane.put_grant(grant);
                let name = names.iter().find(|n| **n == session).unwrap();
                let mut set = granted.get(name).copied().unwrap_or_default();
                set.insert(*capability);
                granted.insert(name, set);
            }
        }
        for name in &names {
            let held = capabilities(&control_plane, name);
            let mut allowed = initial[name];
            for capability in granted.get(name).copied().unwrap_or_default().iter() {
                allowed.insert(capability);
            }
            for capability in held.iter() {
                prop_assert!(
                    allowed.has(capability),
                    "{name} gained {capability} after {op:?}"
                );
            }
        }
    }
    check_inboxes(&control_plane, &world, &approved).await
}

fn capabilities(control_plane: &ControlPlane, name: &str) -> CapabilitySet {
    control_plane
        .index
        .context(NAMESPACE, name)
        .map(|context| context.capabilities)
        .unwrap_or_default()
}

async fn apply(
    control_plane: &mut ControlPlane,
    client: &mut BrokerClient<Channel>,
    op: &Op,
    requests: &mut Vec<String>,
    elevations: &mut HashMap<String, (String, Capability)>,
    approved: &mut HashSet<String>,
) {
    let names = all_sessions();
    match *op {
        Op::Send { from, to } => {
            let request = SendRequest {
                namespace: NAMESPACE.into(),
                session: names[from].into(),
                target: names[to].into(),
                payload_json: json!({"from": names[from]}).to_string(),
                message_id: String::new(),
            };
            let _ = client.send(as_sidecar(names[from], request)).await;
        }
        Op::Forward {
            message,
            target,
            action,
        } => {
            let inbox = control_plane
                .store
                .pending_messages(NAMESPACE, GATE, 0, 100)
                .await
                .unwrap();
            let message_id = inbox
                .get(message)
                .map(|queued| queued.message.id.clone())
                .unwrap_or_else(|| "01JNOSUCHMESSAGE0000000000".into());
            let request = ForwardRequest {
                namespace: NAMESPACE.into(),
                session: GATE.into(),
                message_id,
                target: SESSIONS[target].into(),
                action: ACTIONS[action].into(),
                payload_json: "1".into(),
            };
            if let Ok(forwarded) = client.forward(as_sidecar(GATE, request)).await {
                requests.push(forwarded.into_inner().request_id);
            }
        }
        Op::Reply { from, request } => {
            let request = ReplyRequest {
                namespace: NAMESPACE.into(),
                session: names[from].into(),
                request_id: requests.get(request).cloned().unwrap_or_default(),
                result_json: "\"answer\"".into(),
            };
            let _ = client.reply(as_sidecar(names[from], request)).await;
        }
        Op::Respond { request } => {
            let request = RespondRequest {
                namespace: NAMESPACE.into(),
                session: GATE.into(),
                request_id: requests.get(request).cloned().unwrap_or_default(),
                result_json: "\"result\"".into(),
            };
            let _ = client.respond(as_sidecar(GATE, request)).await;
        }
        Op::Elevate { from, capability } => {
            let request = ElevateRequest {
                namespace: NAMESPACE.into(),
                session: names[from].into(),
                capabilities: vec![capability.as_str().into()],
                reason: "work".into(),
                duration_seconds: 600,
            };
            if let Ok(asked) = client.elevate(as_sidecar(names[from], request)).await {
                let id = asked.into_inner().request_id;
                elevations.insert(id.clone(), (names[from].to_owned(), capability));
                requests.push(id);
            }
        }
        Op::Decide { request, approve } => {
            let Some(id) = requests.get(request) else {
                return;
            };
            if control_plane.api.get(&approval_path(id)).is_none() {
                return;
            }
            reconcile(control_plane, id, Timestamp::now).await;
            let pending =
                control_plane.api.get(&approval_path(id)).unwrap()["status"]["state"] == "Pending";
            if pending {
                let state = if approve {
                    approved.insert(id.clone());
                    ApprovalState::Approved
                } else {
                    ApprovalState::Denied
                };
                decide(control_plane, id, state, "random");
                reconcile(control_plane, id, Timestamp::now).await;
            }
        }
    }
}

/// What every inbox holds is there by the rules.
async fn check_inboxes(
    control_plane: &ControlPlane,
    world: &World,
    approved: &HashSet<String>,
) -> Result<(), TestCaseError> {
    let levels: BTreeMap<&str, TrustLevel> = all_sessions()
        .into_iter()
        .zip(world.levels.iter().copied())
        .collect();
    for recipient in all_sessions() {
        let inbox = control_plane
            .store
            .pending_messages(NAMESPACE, recipient, 0, 1000)
            .await
            .unwrap();
        for queued in inbox {
            let message = queued.message;
            match message.kind {
                MessageKind::Message => {
                    prop_assert_eq!(&message.source.source_type, "session");
                    let sender_level = levels[message.source.identity.as_str()];
                    prop_assert_eq!(message.source.trust_level, sender_level);
                    if sender_level == TrustLevel::Untrusted {
                        prop_assert_eq!(
                            recipient,
                            GATE,
                            "an untrusted sender reached a non-gateway"
                        );
                    }
                }
                MessageKind::Forward => {
                    let id = message.request_id.clone().unwrap();
                    let forward = control_plane.store.forward(NAMESPACE, &id).await.unwrap();
                    let forward = forward.expect("a delivered forward is recorded");
                    prop_assert_eq!(&forward.gateway_session, GATE);
                    prop_assert_eq!(forward.target.as_str(), recipient);
                    let rule = &world.rules[forward.rule_index.expect("under a rule") as usize];
                    let lists = |entries: &[String], value: &str| {
                        entries.iter().any(|e| e == "*" || e == value)
                    };
                    prop_assert!(lists(&rule.allow_forward_to, recipient));
                    prop_assert!(
                        rule.allow_actions.is_empty()
                            || lists(&rule.allow_actions, &forward.action)
                    );
                    if rule.require_approval {
                        prop_assert!(approved.contains(&id), "delivered without approval: {id}");
                    }
                }
                MessageKind::Result => {
                    let id = message.request_id.clone().unwrap();
                    match control_plane.store.forward(NAMESPACE, &id).await.unwrap() {
                        Some(forward) => prop_assert!(
                            recipient == GATE || recipient == forward.source.identity,
                            "a result of {id} reached {recipient}"
                        ),
                        // An elevation's notice, to the session that asked.
                        None => {
                            let asked = control_plane.api.get(&approval_path(&id)).unwrap();
                            prop_assert_eq!(asked["spec"]["target"].as_str(), Some(recipient));
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn broker_calls_never_widen_what_the_policy_allows(
        world in world(),
        ops in prop::collection::vec(op(), 1..30),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(run(world, ops))?;
    }
}
