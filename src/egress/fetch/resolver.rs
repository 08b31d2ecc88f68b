//! Names to addresses, once per hop: the guard judges what the resolver
//! answered and the client dials exactly that, so no second lookup can
//! answer otherwise (DNS rebinding). A trait, so tests answer what they
//! need (a name resolving to a private address, an answer that changes).

use std::net::SocketAddr;

use futures::future::BoxFuture;

/// Resolves host names.
pub trait Resolver: Send + Sync + 'static {
    /// The addresses of `host` (a name, never an address literal) with
    /// `port`, in the order to try them.
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> BoxFuture<'a, std::io::Result<Vec<SocketAddr>>>;
}

/// The system's resolver (`getaddrinfo`, through tokio).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> BoxFuture<'a, std::io::Result<Vec<SocketAddr>>> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}
