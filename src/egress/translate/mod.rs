//! Translation between the two model API dialects the proxy speaks
//! (OpenAI chat completions and Anthropic messages), so that a fallback
//! link of the other dialect answers in the agent's own: requests,
//! responses, streamed events and errors. Pure functions, no I/O.
//!
//! One module per job: [`inspect`] reads what a request asks,
//! [`request`] writes the request a link receives, [`response`] turns a
//! link's completion into the agent's, [`sse`] splits a byte stream into
//! server-sent events, [`stream`] translates a streamed completion event by
//! event, and [`error`] writes errors as each dialect's SDK expects them.

pub mod error;
pub mod inspect;
pub mod request;
pub mod response;
pub mod sse;
pub mod stream;

pub use error::{ErrorKind, error_body, stream_error};
pub use inspect::{Asked, BadRequest, inspect};
pub use request::{Unsupported, request_for};
pub use response::{BadResponse, Usage, response_for, usage};
pub use sse::{SseEvent, SseParser};
pub use stream::StreamTranslator;

use crate::proto::v1alpha1 as pb;

/// The wire format of a model API: the agent's, or a link's provider's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// OpenAI-compatible `POST /v1/chat/completions`.
    OpenAiChat,
    /// Anthropic-compatible `POST /v1/messages`.
    AnthropicMessages,
}

impl Dialect {
    /// The dialect's name as errors and logs say it.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::OpenAiChat => "OpenAI chat completions",
            Dialect::AnthropicMessages => "Anthropic messages",
        }
    }
}

/// A request whose dialect is `DIALECT_UNSPECIFIED` (or a value this build
/// does not know): the caller must say which API the agent spoke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the request names no dialect (openai_chat or anthropic_messages)")]
pub struct UnspecifiedDialect;

impl TryFrom<pb::Dialect> for Dialect {
    type Error = UnspecifiedDialect;

    fn try_from(dialect: pb::Dialect) -> Result<Self, Self::Error> {
        match dialect {
            pb::Dialect::OpenaiChat => Ok(Dialect::OpenAiChat),
            pb::Dialect::AnthropicMessages => Ok(Dialect::AnthropicMessages),
            pb::Dialect::Unspecified => Err(UnspecifiedDialect),
        }
    }
}

impl TryFrom<i32> for Dialect {
    type Error = UnspecifiedDialect;

    /// From a `ModelRequest.dialect` as prost stores it.
    fn try_from(value: i32) -> Result<Self, Self::Error> {
        pb::Dialect::try_from(value)
            .map_err(|_| UnspecifiedDialect)
            .and_then(Dialect::try_from)
    }
}

impl From<Dialect> for pb::Dialect {
    fn from(dialect: Dialect) -> Self {
        match dialect {
            Dialect::OpenAiChat => pb::Dialect::OpenaiChat,
            Dialect::AnthropicMessages => pb::Dialect::AnthropicMessages,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialect_converts_from_and_to_proto() {
        for dialect in [Dialect::OpenAiChat, Dialect::AnthropicMessages] {
            assert_eq!(Dialect::try_from(pb::Dialect::from(dialect)), Ok(dialect));
            assert_eq!(
                Dialect::try_from(pb::Dialect::from(dialect) as i32),
                Ok(dialect)
            );
        }
        assert_eq!(
            Dialect::try_from(pb::Dialect::Unspecified),
            Err(UnspecifiedDialect)
        );
        assert_eq!(Dialect::try_from(0), Err(UnspecifiedDialect));
        assert_eq!(Dialect::try_from(99), Err(UnspecifiedDialect));
    }
}
