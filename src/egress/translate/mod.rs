//! Translation between the two model API dialects the proxy speaks
//! (OpenAI chat completions and Anthropic messages), so that a fallback
//! link of the other dialect answers in the agent's own: requests,
//! responses, streamed events and errors. Pure functions, no I/O.
