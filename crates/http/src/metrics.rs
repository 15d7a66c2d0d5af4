//! Prometheus metrics: the families counted as things happen (HTTP requests and their latency,
//! refused authentications, upload and download bytes, finished epochs), the gauges computed at
//! each scrape from the session manager and the system monitor, and the OpenMetrics text that
//! `GET /metrics` answers.
//!
//! Every label value comes from a bounded set (route patterns, never raw paths; known methods;
//! status codes; session states; authentication outcomes) except the running sessions' ids and
//! the GPUs' names, which are few; control characters in them become spaces, and prometheus-client
//! escapes the rest as the text format requires.

use std::{
    fmt::{self, Write as _},
    sync::{atomic::AtomicU64, Arc},
    time::{Duration, Instant},
};

use actix_web::{
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    http::{Method, StatusCode},
    middleware::Next,
    Error,
};
use prometheus_client::{
    encoding::{text, EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram, info::Info},
    registry::{Registry, Unit},
};
use trainyard_domain::{
    auth::AuthOutcome,
    events::{Event, EventKind, EventListener},
    manager::{ManagerError, SessionManager},
    ports::SystemMonitor,
    session::SessionState,
    system::SystemSnapshot,
};

use crate::{
    openapi::{OPENAPI_PATH, SWAGGER_PATTERN},
    routes::ROUTES,
    AppState, VERSION,
};

/// Every metric name starts with `trainyard_`.
const PREFIX: &str = "trainyard";

/// The `Content-Type` of the exposition: OpenMetrics text, which Prometheus reads natively.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The route label of a request that matched no route.
pub(crate) const UNMATCHED: &str = "unmatched";

/// The method label of a method outside the standard ones.
const OTHER_METHOD: &str = "other";

/// Upper bounds of the request latency buckets, in seconds: milliseconds for most requests up
/// to minutes for large uploads.
const LATENCY_BUCKETS: [f64; 15] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

const MIB: u64 = 1024 * 1024;
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// What a request is counted under: a standard method or `other`, and its route pattern or
/// `unmatched`.
pub(crate) type RequestKey = (&'static str, &'static str);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SessionLabels {
    session_id: Escaped,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GpuLabels {
    index: u32,
    name: Escaped,
}

/// A label value from outside (a GPU's name, a session id) with its control characters other
/// than line feeds, which the text formats have no escape for, written as spaces.
/// prometheus-client (0.25.2 and later) escapes `\`, `"` and line feeds itself.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Escaped(String);

impl EncodeLabelValue for Escaped {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        if !self.0.chars().any(|c| c.is_control() && c != '\n') {
            return encoder.write_str(&self.0);
        }
        let printable: String = self.0.chars().map(|c| if c.is_control() && c != '\n' { ' ' } else { c }).collect();
        encoder.write_str(&printable)
    }
}

/// What an upload was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UploadKind {
    Model,
    Dataset,
}

impl UploadKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Model => "model",
            Self::Dataset => "dataset",
        }
    }
}

/// Why the metrics could not be gathered.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(transparent)]
    Sessions(#[from] ManagerError),
    #[error("cannot encode the metrics: {0}")]
    Encode(#[from] fmt::Error),
}

/// The metric families counted as things happen, and whether `GET /metrics` needs a key.
/// Cheap to clone; clones share the counts.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    public: bool,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    auth_failures: Family<OutcomeLabels, Counter>,
    uploads: Family<KindLabels, Counter>,
    downloads: Counter,
    epochs: Counter,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").field("public", &self.inner.public).finish_non_exhaustive()
    }
}

/// Counts the `epoch` events of the manager's bus: an atomic increment, so it returns at once.
struct EpochCounter(Counter);

impl EventListener for EpochCounter {
    fn on_event(&self, event: &Event) {
        if event.kind == EventKind::Epoch {
            self.0.inc();
        }
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

impl Metrics {
    /// Fresh families; `GET /metrics` needs no key when `public`. Its epoch counter counts
    /// nothing until [`Self::attach`] subscribes it to a manager.
    #[must_use]
    pub fn new(public: bool) -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let build = Info::new(vec![("version", VERSION)]);
        registry.register("build", "The running trainyard's version", build);
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests answered, by method, route pattern and status", requests.clone());
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register(
            "http_request_duration_seconds",
            "Time until a response's head was ready, by method and route pattern (streamed bodies not included)",
            latency.clone(),
        );
        let auth_failures = Family::<OutcomeLabels, Counter>::default();
        for outcome in AuthOutcome::ALL.into_iter().filter(|o| *o != AuthOutcome::Success) {
            drop(auth_failures.get_or_create(&OutcomeLabels { outcome: outcome.as_str() }));
        }
        registry.register("auth_failures", "Refused authentications, by outcome", auth_failures.clone());
        let uploads = Family::<KindLabels, Counter>::default();
        for kind in [UploadKind::Model, UploadKind::Dataset] {
            drop(uploads.get_or_create(&KindLabels { kind: kind.as_str() }));
        }
        registry.register_with_unit("upload", "Bytes of uploaded files received, by kind", Unit::Bytes, uploads.clone());
        let downloads = Counter::default();
        registry.register_with_unit("download", "Bytes of model files sent", Unit::Bytes, downloads.clone());
        let epochs = Counter::default();
        registry.register("epochs_completed", "Training epochs finished since the server started", epochs.clone());
        Self { inner: Arc::new(Inner { registry, public, requests, latency, auth_failures, uploads, downloads, epochs }) }
    }

    /// As [`Self::new`], counting the epochs `manager` reports.
    #[must_use]
    pub fn attach(manager: &SessionManager, public: bool) -> Self {
        let metrics = Self::new(public);
        manager.events().subscribe(Arc::new(EpochCounter(metrics.inner.epochs.clone())));
        metrics
    }

    /// Whether `GET /metrics` is served without a key.
    #[must_use]
    pub fn is_public(&self) -> bool {
        self.inner.public
    }

    /// Counts one answered request and its latency.
    pub(crate) fn request(&self, (method, route): RequestKey, status: StatusCode, elapsed: Duration) {
        self.inner.requests.get_or_create(&RequestLabels { method, route, status: status.as_u16() }).inc();
        self.inner.latency.get_or_create(&RouteLabels { method, route }).observe(elapsed.as_secs_f64());
    }

    /// Counts one refused authentication.
    pub(crate) fn auth_failure(&self, outcome: AuthOutcome) {
        if outcome != AuthOutcome::Success {
            self.inner.auth_failures.get_or_create(&OutcomeLabels { outcome: outcome.as_str() }).inc();
        }
    }

    /// The counter of received upload bytes of `kind`.
    pub(crate) fn upload_bytes(&self, kind: UploadKind) -> Counter {
        self.inner.uploads.get_or_create_owned(&KindLabels { kind: kind.as_str() })
    }

    /// The counter of sent download bytes.
    pub(crate) fn download_bytes(&self) -> Counter {
        self.inner.downloads.clone()
    }

    /// The exposition: the counted families, then the gauges of `gauges`, then `# EOF`.
    ///
    /// # Errors
    /// A formatting error (none is expected when writing to a `String`).
    pub(crate) fn encode(&self, gauges: &Gauges) -> Result<String, fmt::Error> {
        let mut out = String::with_capacity(16 * 1024);
        text::encode_registry(&mut out, &self.inner.registry)?;
        text::encode_registry(&mut out, &gauges.registry())?;
        text::encode_eof(&mut out)?;
        Ok(out)
    }
}

/// The method label: a standard method, or `other` (a client may send any token).
pub(crate) fn method_label(method: &Method) -> &'static str {
    const KNOWN: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::HEAD, "HEAD"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::DELETE, "DELETE"),
        (Method::PATCH, "PATCH"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::CONNECT, "CONNECT"),
        (Method::TRACE, "TRACE"),
    ];
    KNOWN.iter().find(|(m, _)| m == method).map_or(OTHER_METHOD, |(_, label)| *label)
}

/// The route label: the pattern a request matched, if it is one of the route table's or the
/// API docs', else `unmatched`. Never the request's own path.
pub(crate) fn route_label(pattern: Option<&str>) -> &'static str {
    let Some(pattern) = pattern else { return UNMATCHED };
    ROUTES.iter().map(|r| r.path).chain([OPENAPI_PATH, SWAGGER_PATTERN]).find(|known| *known == pattern).unwrap_or(UNMATCHED)
}

/// What `req` is counted under. Its route is found on the same decoded path the router matches.
pub(crate) fn request_key(req: &ServiceRequest) -> RequestKey {
    let pattern = req.resource_map().match_pattern(req.match_info().as_str());
    (method_label(req.method()), route_label(pattern.as_deref()))
}

/// Middleware: counts every request in `metrics` with its final status (errors included) and
/// the time until its response's head was ready.
pub(crate) async fn track(
    metrics: Metrics,
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let started = Instant::now();
    let key = request_key(&req);
    let res = next.call(req).await;
    let status = match &res {
        Ok(res) => res.status(),
        Err(e) => e.as_response_error().status_code(),
    };
    metrics.request(key, status, started.elapsed());
    res
}

/// A running session as the gauges show it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RunningSession {
    pub session_id: String,
    /// The latest finished epoch's throughput, once one has finished.
    pub samples_per_second: Option<f64>,
    /// The run process's resident memory, as last measured.
    pub memory_bytes: Option<u64>,
}

/// What the gauges computed at scrape time show.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Gauges {
    /// How many sessions are in each state, every state included.
    pub sessions: [(SessionState, u64); SessionState::ALL.len()],
    pub queue_length: u64,
    pub running: Vec<RunningSession>,
    pub system: SystemSnapshot,
}

impl Gauges {
    /// Reads the sessions from `manager` and the machine from `monitor`'s cache. Blocking:
    /// it reads the database.
    ///
    /// # Errors
    /// A store error.
    pub(crate) fn gather(manager: &SessionManager, monitor: &dyn SystemMonitor) -> Result<Self, ManagerError> {
        let views = manager.list()?;
        let mut sessions = SessionState::ALL.map(|state| (state, 0u64));
        for view in &views {
            if let Some((_, n)) = sessions.iter_mut().find(|(state, _)| *state == view.session.state) {
                *n += 1;
            }
        }
        let queue_length = sessions.iter().find(|(state, _)| *state == SessionState::Queued).map_or(0, |(_, n)| *n);
        let mut running = Vec::new();
        for view in views.iter().filter(|v| v.session.state == SessionState::Running) {
            let latest = manager.latest_metrics(&view.session.id)?;
            running.push(RunningSession {
                session_id: view.session.id.to_string(),
                samples_per_second: latest.map(|m| m.samples_per_second),
                memory_bytes: view.usage.map(|u| u.memory_mb.saturating_mul(MIB)),
            });
        }
        Ok(Self { sessions, queue_length, running, system: monitor.snapshot() })
    }

    /// The gauges as a registry of their own, made for one scrape. Values that are not finite
    /// are left out rather than shown as numbers no one measured.
    fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix(PREFIX);
        let sessions = Family::<StateLabels, Gauge>::default();
        for (state, n) in self.sessions {
            sessions.get_or_create(&StateLabels { state: state.as_str() }).set(int(n));
        }
        r.register("sessions", "Training sessions by state", sessions);
        r.register("queue_length", "Sessions waiting in the queue", int_gauge(self.queue_length));

        let throughput = Family::<SessionLabels, Gauge<f64, AtomicU64>>::default();
        let run_memory = Family::<SessionLabels, Gauge>::default();
        for run in &self.running {
            let labels = SessionLabels { session_id: Escaped(run.session_id.clone()) };
            if let Some(v) = run.samples_per_second.filter(|v| v.is_finite()) {
                throughput.get_or_create(&labels).set(v);
            }
            if let Some(bytes) = run.memory_bytes {
                run_memory.get_or_create(&labels).set(int(bytes));
            }
        }
        r.register(
            "running_session_samples_per_second",
            "Training throughput of each running session in its latest finished epoch",
            throughput,
        );
        r.register_with_unit(
            "running_session_memory",
            "Resident memory of each running session's training process",
            Unit::Bytes,
            run_memory,
        );

        let s = &self.system;
        if s.cpu_usage_percent.is_finite() {
            r.register_with_unit("cpu_usage", "CPU usage of the machine", percent(), float_gauge(s.cpu_usage_percent));
        }
        r.register("cpu_cores", "Logical CPUs of the machine", int_gauge(s.cpu_count as u64));
        r.register_with_unit("memory_used", "Memory in use on the machine", Unit::Bytes, int_gauge(s.memory_used_mb.saturating_mul(MIB)));
        r.register_with_unit("memory_total", "Memory of the machine", Unit::Bytes, int_gauge(s.memory_total_mb.saturating_mul(MIB)));
        r.register_with_unit(
            "memory_available",
            "Memory available for new work on the machine",
            Unit::Bytes,
            int_gauge(s.memory_available_mb.saturating_mul(MIB)),
        );
        r.register_with_unit(
            "server_resident_memory",
            "Resident memory of the server process (training runs in processes of their own)",
            Unit::Bytes,
            int_gauge(s.server_memory_mb.saturating_mul(MIB)),
        );
        if s.disk_free_gb.is_finite() && s.disk_total_gb.is_finite() {
            r.register_with_unit(
                "disk_free",
                "Free space (to 10 MiB) of the filesystem holding the data directory",
                Unit::Bytes,
                int_gauge(gib_to_bytes(s.disk_free_gb)),
            );
            r.register_with_unit(
                "disk_total",
                "Size (to 10 MiB) of the filesystem holding the data directory",
                Unit::Bytes,
                int_gauge(gib_to_bytes(s.disk_total_gb)),
            );
        }

        let utilisation = Family::<GpuLabels, Gauge<f64, AtomicU64>>::default();
        let gpu_used = Family::<GpuLabels, Gauge>::default();
        let gpu_total = Family::<GpuLabels, Gauge>::default();
        for gpu in &s.gpus {
            let labels = GpuLabels { index: gpu.index, name: Escaped(gpu.name.clone()) };
            if gpu.usage_percent.is_finite() {
                utilisation.get_or_create(&labels).set(gpu.usage_percent);
            }
            gpu_used.get_or_create(&labels).set(int(gpu.memory_used_mb.saturating_mul(MIB)));
            gpu_total.get_or_create(&labels).set(int(gpu.memory_total_mb.saturating_mul(MIB)));
        }
        r.register("gpus", "GPUs the monitor sees (0 without a GPU, an NVIDIA driver or NVML)", int_gauge(s.gpus.len() as u64));
        r.register_with_unit("gpu_utilization", "Utilisation of each GPU", percent(), utilisation);
        r.register_with_unit("gpu_memory_used", "Memory in use on each GPU", Unit::Bytes, gpu_used);
        r.register_with_unit("gpu_memory_total", "Memory of each GPU", Unit::Bytes, gpu_total);
        r
    }
}

/// Gathers the gauges and encodes everything: the body of `GET /metrics`. Blocking.
///
/// # Errors
/// [`MetricsError`] when the sessions cannot be read.
pub(crate) fn scrape(state: &AppState) -> Result<String, MetricsError> {
    let gauges = Gauges::gather(&state.manager, state.monitor.as_ref())?;
    Ok(state.metrics.encode(&gauges)?)
}

fn percent() -> Unit {
    Unit::Other("percent".to_owned())
}

/// A gauge's integer value (counts and bytes stay far below `i64::MAX`).
fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn int_gauge(n: u64) -> Gauge {
    let gauge = Gauge::default();
    gauge.set(int(n));
    gauge
}

fn float_gauge(v: f64) -> Gauge<f64, AtomicU64> {
    let gauge = Gauge::<f64, AtomicU64>::default();
    gauge.set(v);
    gauge
}

/// GiB (as the monitor reports disks, to two decimals) in whole bytes; the cast saturates.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn gib_to_bytes(gib: f64) -> u64 {
    (gib.max(0.0) * GIB).round() as u64
}

#[cfg(test)]
mod tests;
