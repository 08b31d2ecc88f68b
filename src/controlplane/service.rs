//! The Policy gRPC service: authenticated, authorized policy streams.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio_stream::wrappers::WatchStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use super::auth::{Authenticator, authorize};
use super::index::ContextIndex;
use crate::proto::v1alpha1::policy_server::Policy;
use crate::proto::v1alpha1::{PolicyUpdate, WatchRequest};

/// Serves each authenticated sidecar the policy of its own session.
pub struct PolicyService<A> {
    index: Arc<ContextIndex>,
    authenticator: Arc<A>,
}

impl<A> PolicyService<A> {
    /// A service over `index`, checking callers with `authenticator`.
    pub fn new(index: Arc<ContextIndex>, authenticator: Arc<A>) -> PolicyService<A> {
        PolicyService {
            index,
            authenticator,
        }
    }
}

/// The bearer token of a request.
fn bearer(metadata: &MetadataMap) -> Result<&str, Status> {
    metadata
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .filter(|token| !token.is_empty())
        .ok_or_else(|| {
            Status::unauthenticated(
                "missing bearer token: send `authorization: Bearer <service-account token>`",
            )
        })
}

#[tonic::async_trait]
impl<A: Authenticator> Policy for PolicyService<A> {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<PolicyUpdate, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let token = bearer(request.metadata())?;
        let identity = self
            .authenticator
            .authenticate(token)
            .await
            .map_err(|error| Status::unauthenticated(error.to_string()))?;
        let WatchRequest { namespace, session } = request.into_inner();
        authorize(&identity, &namespace, &session).map_err(Status::permission_denied)?;
        tracing::info!(%namespace, %session, "sidecar watching its policy");
        let updates = WatchStream::new(self.index.subscribe(&namespace, &session))
            .map(|snapshot| Ok(snapshot.to_update()));
        Ok(Response::new(Box::pin(updates)))
    }
}
