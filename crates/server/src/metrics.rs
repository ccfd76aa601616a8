//! Prometheus metrics, all named `kiln_…`. Counters and histograms are
//! updated as requests happen; the pool and session gauges are read from
//! the supervisor (`Stats`) at scrape time.

use kiln_core::service::PoolInfo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Mutex;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

fn latency_histogram() -> Histogram {
    // 5 ms … ~80 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// The registry and every metric in it.
pub struct Metrics {
    registry: Mutex<Registry>,
    executions: Family<OutcomeLabels, Counter>,
    latency: Family<KindLabels, Histogram, fn() -> Histogram>,
    requests: Family<RequestLabels, Counter>,
    rejections: Family<ReasonLabels, Counter>,
    pool: Family<StateLabels, Gauge>,
    sessions: Gauge,
    in_flight: Gauge,
    supervisor_up: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kiln");
        let m = Self {
            registry: Mutex::new(Registry::default()),
            executions: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            requests: Family::default(),
            rejections: Family::default(),
            pool: Family::default(),
            sessions: Gauge::default(),
            in_flight: Gauge::default(),
            supervisor_up: Gauge::default(),
        };
        let r = &mut registry;
        r.register(
            "executions",
            "Executions by outcome (or front-end fault)",
            m.executions.clone(),
        );
        r.register(
            "execution_duration_seconds",
            "Execution latency seen by the API, by kind (oneshot, session)",
            m.latency.clone(),
        );
        r.register(
            "http_requests",
            "HTTP requests by method, route and status",
            m.requests.clone(),
        );
        r.register("rejections", "Requests refused before reaching the supervisor (unauthorized, too_large, rate_limited, in_flight, concurrency, session_quota)", m.rejections.clone());
        r.register(
            "pool_sandboxes",
            "Warm pool sandboxes by state (read at scrape time)",
            m.pool.clone(),
        );
        r.register(
            "sessions_alive",
            "Sessions open across all keys (read at scrape time)",
            m.sessions.clone(),
        );
        r.register(
            "http_in_flight",
            "HTTP requests in flight",
            m.in_flight.clone(),
        );
        r.register(
            "supervisor_up",
            "1 when the supervisor answered the scrape's Stats command",
            m.supervisor_up.clone(),
        );
        *m.registry.lock().unwrap_or_else(|e| e.into_inner()) = registry;
        m
    }

    pub fn execution(&self, kind: &str, outcome: &str, seconds: f64) {
        let outcome = outcome.to_string();
        self.executions
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        let kind = kind.to_string();
        self.latency
            .get_or_create(&KindLabels { kind })
            .observe(seconds);
    }

    pub fn request(&self, method: &str, route: &str, status: u16) {
        let labels = RequestLabels {
            method: method.to_string(),
            route: route.to_string(),
            status,
        };
        self.requests.get_or_create(&labels).inc();
    }

    pub fn rejection(&self, reason: &str) {
        let reason = reason.to_string();
        self.rejections
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// The text exposition, after setting the gauges read at scrape time
    /// (`stats` is `None` when the supervisor did not answer).
    pub fn render(&self, stats: Option<(usize, Option<PoolInfo>)>, in_flight: usize) -> String {
        self.in_flight.set(in_flight as i64);
        self.supervisor_up.set(i64::from(stats.is_some()));
        if let Some((sessions, pool)) = stats {
            self.sessions.set(sessions as i64);
            let pool = pool.unwrap_or_default();
            for (state, n) in [
                ("ready", pool.ready),
                ("in_use", pool.in_use),
                ("creating", pool.creating),
            ] {
                let state = state.to_string();
                self.pool
                    .get_or_create(&StateLabels { state })
                    .set(n as i64);
            }
        }
        let mut text = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .expect("writing to a String cannot fail");
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
