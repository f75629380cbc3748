//! Prometheus metrics: requests and latencies by route, and engine gauges read at scrape.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

/// The kinds of incident, each reported (at zero when none is open).
pub const INCIDENT_KINDS: [&str; 3] = ["hook", "condition", "stuck"];

pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    pub jobs_pending: Gauge,
    pub incidents_open: Gauge,
    pub dossiers_overdue: Gauge,
    incidents_open_by_kind: Family<KindLabels, Gauge>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tthc");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 14))
        });
        let jobs_pending = Gauge::default();
        let incidents_open = Gauge::default();
        let dossiers_overdue = Gauge::default();
        let incidents_open_by_kind = Family::<KindLabels, Gauge>::default();
        registry.register(
            "http_requests",
            "HTTP requests by method, route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            latency.clone(),
        );
        registry.register(
            "jobs_pending",
            "Hook and timer jobs waiting to run",
            jobs_pending.clone(),
        );
        registry.register(
            "incidents_open",
            "Incidents waiting for an administrator",
            incidents_open.clone(),
        );
        registry.register(
            "dossiers_overdue",
            "Open dossiers past their due date",
            dossiers_overdue.clone(),
        );
        registry.register(
            "incidents_open_by_kind",
            "Incidents waiting for an administrator, by kind: hook (failed for good), \
             condition (a decision could not evaluate its condition), stuck (nothing to wait on)",
            incidents_open_by_kind.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            requests,
            latency,
            jobs_pending,
            incidents_open,
            dossiers_overdue,
            incidents_open_by_kind,
        }
    }

    /// Sets the open incidents of each kind; a kind missing from `counts` has none open.
    pub fn set_incidents_by_kind(&self, counts: &[(String, i64)]) {
        for kind in INCIDENT_KINDS {
            let n = counts
                .iter()
                .filter(|(k, _)| k == kind)
                .map(|(_, n)| *n)
                .sum();
            self.incidents_open_by_kind
                .get_or_create(&KindLabels {
                    kind: kind.to_owned(),
                })
                .set(n);
        }
    }

    pub fn observe(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
