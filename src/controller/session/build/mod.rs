//! Pure builders: a Session and its effective context → the objects it owns.
//! No I/O; tested on fixtures.

mod meta;
mod network_policy;
mod pod;
mod service_account;

pub use meta::*;
pub use network_policy::build_network_policy;
pub use pod::*;
pub use service_account::build_service_account;
