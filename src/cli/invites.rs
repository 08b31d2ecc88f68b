//! `security invite create`: a `wop1://` invite for one peer, signed by
//! the control plane with the namespace's ingress key, as you (you need
//! what writing the Grant its claim makes would need).

use serde_json::json;

use super::args::InviteArgs;
use super::output::Shown;
use super::time::parse_duration;
use super::{CliError, Context};
use crate::proto::v1alpha1::CreateInviteRequest;

pub async fn create(context: &Context, args: InviteArgs) -> Result<Shown, CliError> {
    let lifetime = parse_duration(&args.expires)?;
    let (mut admin, caller) = context.control_plane.peer_admin().await?;
    let request = caller.request(CreateInviteRequest {
        namespace: context.namespace.clone(),
        peer_key: args.peer.clone(),
        sessions: args.sessions.clone(),
        capabilities: args.capabilities.clone(),
        expires_seconds: lifetime.as_secs().max(1) as u64,
        peer_name: String::new(),
    })?;
    let invite = caller.answer(admin.create_invite(request)).await?;
    Ok(Shown::new(
        format!(
            "{}\n# for peer {}, to {} with {}, claimable once until {}; signed by {}'s ingress key {}\n",
            invite.token,
            crate::p2p::key::short_id(&args.peer),
            args.sessions.join(", "),
            args.capabilities.join(", "),
            invite.expires_at,
            context.namespace,
            invite.ingress_key_id
        ),
        &json!({
            "token": invite.token,
            "expiresAt": invite.expires_at,
            "ingressKey": invite.ingress_key,
            "ingressKeyId": invite.ingress_key_id,
        }),
    ))
}
