//! The daemon's own metric families (issue 16), in the Prometheus
//! project's Rust client: counted where things happen (intake, stage
//! engine, monitor, loops) and encoded by `GET /metrics`. Process-wide, so
//! a lower layer counts without importing the HTTP layer; every label value
//! comes from a fixed set (stage names, sources, outcomes, loop names,
//! route templates), so a client cannot grow the families.

use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub source: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub from: &'static str,
    pub to: &'static str,
    /// `advanced`, `rolled_back`, `cancelled`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    /// `input`, `output`, `cache_read`, `cache_creation`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoopLabels {
    pub name: &'static str,
}

type TickHistogram = Family<LoopLabels, Histogram, fn() -> Histogram>;

/// Every family the daemon counts.
pub struct Families {
    pub requests: Family<RequestLabels, Counter>,
    pub webhooks: Family<WebhookLabels, Counter>,
    pub transitions: Family<TransitionLabels, Counter>,
    /// Stage writes that lost their compare-and-set to another actor.
    pub lost_cas: Counter,
    /// Transitions that met a lease held by another actor.
    pub busy_leases: Counter,
    pub tokens: Family<TokenLabels, Counter>,
    pub cost_usd: Counter<f64, AtomicU64>,
    pub loop_ticks: TickHistogram,
    registry: Registry,
}

fn tick_histogram() -> Histogram {
    // 1 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Families {
    fn new() -> Families {
        let f = Families {
            requests: Family::default(),
            webhooks: Family::default(),
            transitions: Family::default(),
            lost_cas: Counter::default(),
            busy_leases: Counter::default(),
            tokens: Family::default(),
            cost_usd: Counter::default(),
            loop_ticks: Family::new_with_constructor(tick_histogram as fn() -> Histogram),
            registry: Registry::default(),
        };
        let mut r = Registry::with_prefix("orchestrator");
        r.register(
            "http_requests",
            "HTTP requests by route template, method and status",
            f.requests.clone(),
        );
        r.register(
            "webhooks",
            "Webhook deliveries by source and outcome (accepted, ignored, duplicate, unauthorized, bad_request, shed, timeout, unavailable)",
            f.webhooks.clone(),
        );
        r.register(
            "stage_transitions",
            "Stage moves written, by from, to and kind",
            f.transitions.clone(),
        );
        r.register(
            "cas_lost",
            "Stage writes that lost their compare-and-set to another actor",
            f.lost_cas.clone(),
        );
        r.register(
            "lease_busy",
            "Transitions that met a transition lease held by another actor",
            f.busy_leases.clone(),
        );
        r.register(
            "agent_tokens",
            "Tokens agents used, by kind",
            f.tokens.clone(),
        );
        r.register(
            "agent_cost_usd",
            "What agents cost, in USD",
            f.cost_usd.clone(),
        );
        r.register(
            "loop_tick_seconds",
            "How long a background loop's tick took, by loop",
            f.loop_ticks.clone(),
        );
        Families { registry: r, ..f }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn webhook(&self, source: &'static str, outcome: &'static str) {
        self.webhooks
            .get_or_create(&WebhookLabels { source, outcome })
            .inc();
    }

    pub fn transition(&self, from: &'static str, to: &'static str, kind: &'static str) {
        self.transitions
            .get_or_create(&TransitionLabels { from, to, kind })
            .inc();
    }

    /// Tokens and cost of one finished run.
    pub fn usage(&self, input: i64, output: i64, cache_read: i64, cache_creation: i64, cost: f64) {
        for (kind, n) in [
            ("input", input),
            ("output", output),
            ("cache_read", cache_read),
            ("cache_creation", cache_creation),
        ] {
            if n > 0 {
                self.tokens
                    .get_or_create(&TokenLabels { kind })
                    .inc_by(n as u64);
            }
        }
        if cost.is_finite() && cost > 0.0 {
            self.cost_usd.inc_by(cost);
        }
    }

    /// Time one tick of the loop `name`.
    pub async fn tick<T>(&self, name: &'static str, tick: impl Future<Output = T>) -> T {
        let start = Instant::now();
        let out = tick.await;
        self.loop_ticks
            .get_or_create(&LoopLabels { name })
            .observe(start.elapsed().as_secs_f64());
        out
    }
}

/// The process's families.
pub fn families() -> &'static Families {
    static FAMILIES: LazyLock<Families> = LazyLock::new(Families::new);
    &FAMILIES
}

/// A Prometheus label value (in text written by hand, such as a status
/// block's lines): backslash, double quote and newline escaped.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_quotes_backslash_quote_and_newline() {
        assert_eq!(escape("plain /var"), "plain /var");
        assert_eq!(escape("a\\b\"c\nd"), r#"a\\b\"c\nd"#);
    }

    #[test]
    fn families_encode_with_their_labels() {
        let f = Families::new();
        f.webhook("plane", "accepted");
        f.transition("analysis", "design", "advanced");
        f.usage(10, 5, 0, 0, 0.25);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, f.registry()).unwrap();
        assert!(
            out.contains(r#"orchestrator_webhooks_total{source="plane",outcome="accepted"} 1"#),
            "{out}"
        );
        assert!(
            out.contains(
                r#"orchestrator_stage_transitions_total{from="analysis",to="design",kind="advanced"} 1"#
            ),
            "{out}"
        );
        assert!(
            out.contains(r#"orchestrator_agent_tokens_total{kind="input"} 10"#),
            "{out}"
        );
        assert!(
            out.contains("orchestrator_agent_cost_usd_total 0.25"),
            "{out}"
        );
        assert!(out.ends_with("# EOF\n"));
    }
}
