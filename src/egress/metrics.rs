//! Prometheus metrics of the egress service, served on `/metrics`: calls,
//! tokens and latency per provider (and decision).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of the calls counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// The provider that answered or was refused (empty when none was chosen).
    pub provider: String,
    /// allowed, denied or would_deny.
    pub decision: String,
}

/// Labels of the tokens counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub provider: String,
    /// input or output.
    pub direction: String,
}

/// Labels of the latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: String,
}

fn latency_histogram() -> Histogram {
    // 10 ms to about 10 minutes.
    Histogram::new(exponential_buckets(0.01, 2.0, 16))
}

/// The egress service's metrics.
#[derive(Clone)]
pub struct ModelMetrics {
    /// Model calls, by provider and decision.
    pub calls: Family<CallLabels, Counter>,
    /// Tokens the providers reported, by provider and direction.
    pub tokens: Family<TokenLabels, Counter>,
    /// Seconds from a call's arrival to its last byte, by provider.
    pub latency: Family<ProviderLabels, Histogram, fn() -> Histogram>,
}

impl Default for ModelMetrics {
    fn default() -> Self {
        ModelMetrics {
            calls: Family::default(),
            tokens: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
        }
    }
}

impl ModelMetrics {
    /// Registers them in `registry` under the `wopr` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("wopr");
        registry.register(
            "model_calls",
            "Model calls the egress service decided, by provider and decision",
            self.calls.clone(),
        );
        registry.register(
            "model_tokens",
            "Tokens the model providers reported, by provider and direction (input, output)",
            self.tokens.clone(),
        );
        registry.register(
            "model_call_seconds",
            "Seconds from a model call's arrival at the egress service to its last byte, by provider",
            self.latency.clone(),
        );
    }

    /// Counts one call.
    pub fn observe(&self, provider: &str, decision: &str, input: u64, output: u64, seconds: f64) {
        self.calls
            .get_or_create(&CallLabels {
                provider: provider.to_owned(),
                decision: decision.to_owned(),
            })
            .inc();
        for (direction, tokens) in [("input", input), ("output", output)] {
            if tokens > 0 {
                self.tokens
                    .get_or_create(&TokenLabels {
                        provider: provider.to_owned(),
                        direction: direction.to_owned(),
                    })
                    .inc_by(tokens);
            }
        }
        self.latency
            .get_or_create(&ProviderLabels {
                provider: provider.to_owned(),
            })
            .observe(seconds);
    }
}
