//! The metrics checked through a strict OpenMetrics parser: requests through the real router
//! and middleware are counted under bounded labels only (property 66), and the exposition parses
//! and reads back what was measured whatever the sessions, GPUs and values are (property 67).

use std::collections::{BTreeMap, HashSet};

use actix_web::{
    http::Method,
    middleware::from_fn,
    test::{self as actix_test, TestRequest},
    App,
};
use openmetrics_parser::{openmetrics::parse_openmetrics, MetricNumber, OpenMetricsValue};
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};
use time::OffsetDateTime;
use trainyard_domain::system::GpuInfo;

use super::*;
use crate::routes::register;

/// Cases per property: each builds a router, so a few seconds of `cargo test` in all.
const CASES: u64 = 60;

/// One sample of the exposition: its family, its labels (unescaped), and its value (a
/// histogram's count).
#[derive(Debug, Clone, PartialEq)]
struct Row {
    family: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A label value as written, unescaped (`\\`, `\"`, `\n`).
fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

fn number(n: &MetricNumber) -> f64 {
    n.as_f64()
}

/// Parses `text` with the strict parser; every sample as a [`Row`].
fn rows(text: &str) -> Result<Vec<Row>, String> {
    let exposition = parse_openmetrics(text).map_err(|e| format!("{e}"))?;
    let mut out = Vec::new();
    for (name, family) in &exposition.families {
        for sample in family.iter_samples() {
            let labels = sample.get_labelset().map_err(|e| format!("{e}"))?;
            let labels = labels.iter().map(|(k, v)| (k.clone(), unescape(v))).collect();
            let value = match &sample.value {
                OpenMetricsValue::Gauge(n) | OpenMetricsValue::Unknown(n) => number(n),
                OpenMetricsValue::Counter(c) => number(&c.value),
                OpenMetricsValue::Histogram(h) => h.count.map_or(f64::NAN, |c| c as f64),
                OpenMetricsValue::Info => 1.0,
                other => return Err(format!("{name}: unexpected value {other:?}")),
            };
            out.push(Row { family: name.clone(), labels, value });
        }
    }
    Ok(out)
}

fn of<'a>(rows: &'a [Row], family: &'a str) -> impl Iterator<Item = &'a Row> + 'a {
    rows.iter().filter(move |r| r.family == family)
}

fn label<'a>(row: &'a Row, name: &str) -> &'a str {
    row.labels.get(name).map_or("", String::as_str)
}

fn snapshot(gpus: Vec<GpuInfo>) -> SystemSnapshot {
    SystemSnapshot {
        cpu_usage_percent: 12.5,
        cpu_count: 8,
        memory_used_mb: 1024,
        memory_total_mb: 4096,
        memory_available_mb: 3072,
        server_memory_mb: 40,
        disk_free_gb: 10.25,
        disk_total_gb: 100.0,
        gpus,
        gpu_error: None,
        timestamp: OffsetDateTime::UNIX_EPOCH,
    }
}

fn quiet() -> Gauges {
    Gauges { sessions: SessionState::ALL.map(|s| (s, 0)), queue_length: 0, running: Vec::new(), system: snapshot(Vec::new()) }
}

/// Every route label a request may be counted under.
fn route_labels() -> HashSet<&'static str> {
    ROUTES.iter().map(|r| r.path).chain([OPENAPI_PATH, SWAGGER_PATTERN, UNMATCHED]).collect()
}

const STANDARD_METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"];

/// A path segment: arbitrary text percent-encoded, or a word the routes use; never empty.
fn segment(g: &mut Gen) -> String {
    const WORDS: [&str; 10] = ["metrics", "docs", "health", "api", "v1", "models", "%2F", "..", "%7Bname%7D", "unmatched"];
    if u8::arbitrary(g) % 4 == 0 {
        return (*g.choose(&WORDS).unwrap_or(&"x")).to_owned();
    }
    let raw = String::arbitrary(g);
    let mut out = String::new();
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() {
        out.push('s');
    }
    out
}

/// A request: its method, its path, and the route pattern it was made from when it must match
/// that one.
#[derive(Debug, Clone)]
struct Probe {
    method: String,
    path: String,
    template: Option<&'static str>,
}

#[derive(Debug, Clone)]
struct Probes(Vec<Probe>);

impl Arbitrary for Probes {
    fn arbitrary(g: &mut Gen) -> Self {
        let n = 1 + usize::arbitrary(g) % 12;
        let probes = (0..n)
            .map(|_| {
                let method = if bool::arbitrary(g) {
                    (*g.choose(&STANDARD_METHODS).unwrap_or(&"GET")).to_owned()
                } else {
                    let len = 1 + usize::arbitrary(g) % 8;
                    (0..len).map(|_| char::from(*g.choose(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefgh").unwrap_or(&b'X'))).collect()
                };
                let route = g.choose(ROUTES).map_or("/health", |r| r.path);
                let fill = |g: &mut Gen| {
                    route
                        .split('/')
                        .map(|part| if part.starts_with('{') { segment(g) } else { part.to_owned() })
                        .collect::<Vec<_>>()
                        .join("/")
                };
                let (path, template) = match u8::arbitrary(g) % 5 {
                    0 => (fill(g), Some(route)),
                    1 => (
                        format!("/docs/{}", (0..usize::arbitrary(g) % 3).map(|_| segment(g)).collect::<Vec<_>>().join("/")),
                        Some(SWAGGER_PATTERN),
                    ),
                    2 => (format!("{}/{}", fill(g), segment(g)), None),
                    3 => (format!("/api/v1/{}", segment(g)), None),
                    _ => (format!("/{}", (0..usize::arbitrary(g) % 4).map(|_| segment(g)).collect::<Vec<_>>().join("/")), None),
                };
                Probe { method, path, template }
            })
            .collect();
        Self(probes)
    }
}

/// Sends `probes` through the real router with the metrics middleware (handlers that need the
/// application state answer 500, which is counted like any status) and returns the exposition.
fn send(probes: &[Probe]) -> String {
    let metrics = Metrics::new(false);
    let counted = metrics.clone();
    actix_web::rt::System::new().block_on(async move {
        let app =
            actix_test::init_service(App::new().configure(register).wrap(from_fn(move |req, next| track(counted.clone(), req, next))))
                .await;
        for probe in probes {
            let method = Method::from_bytes(probe.method.as_bytes()).expect("a token");
            let req = TestRequest::default().method(method).uri(&probe.path).to_request();
            drop(actix_test::call_service(&app, req).await);
        }
    });
    metrics.encode(&quiet()).expect("encoded")
}

/// Property 66's check: every request counted once, under a known method or `other` and a
/// route pattern or `unmatched`, never under its own path; requests made from a pattern under
/// that pattern.
fn counted_under_bounded_labels(probes: Probes) -> TestResult {
    let text = send(&probes.0);
    let rows = match rows(&text) {
        Ok(rows) => rows,
        Err(e) => return TestResult::error(format!("unparsable: {e}\n{text}")),
    };
    let routes = route_labels();
    let methods: HashSet<&str> = STANDARD_METHODS.into_iter().chain([OTHER_METHOD]).collect();
    for family in ["trainyard_http_requests", "trainyard_http_request_duration_seconds"] {
        let mut total = 0.0;
        for row in of(&rows, family) {
            total += row.value;
            if !routes.contains(label(row, "route")) || !methods.contains(label(row, "method")) {
                return TestResult::error(format!("{family} counted under {:?}", row.labels));
            }
        }
        if total != probes.0.len() as f64 {
            return TestResult::error(format!("{family} counted {total} of {} requests", probes.0.len()));
        }
    }
    for probe in &probes.0 {
        let expected_method = if STANDARD_METHODS.contains(&probe.method.as_str()) { probe.method.as_str() } else { OTHER_METHOD };
        let found = of(&rows, "trainyard_http_requests")
            .any(|r| label(r, "method") == expected_method && probe.template.is_none_or(|t| label(r, "route") == t));
        if !found {
            return TestResult::error(format!("{probe:?} not counted under its method and pattern: {rows:?}"));
        }
    }
    TestResult::passed()
}

// Property 66: any request, whatever its method and path (matched, encoded, unmatched), is
// counted once in `trainyard_http_requests_total` and the latency histogram, with a method
// label from the standard methods plus `other` and a route label from the route table's and
// the docs' patterns plus `unmatched`: no raw path ever becomes a label; a path made from a
// pattern is counted under that pattern.
#[test]
fn prop66_requests_are_counted_under_bounded_labels() {
    QuickCheck::new().tests(CASES).rng(Gen::new(40)).quickcheck(counted_under_bounded_labels as fn(Probes) -> TestResult);
}

#[test]
fn requests_are_counted_by_pattern_method_and_status() {
    let probe = |method: &str, path: &str| Probe { method: method.to_owned(), path: path.to_owned(), template: None };
    let text = send(&[
        probe("GET", "/health"),
        probe("GET", "/health"),
        probe("GET", "/api/v1/models/some-model"),
        probe("GET", "/no/such/route"),
        probe("BREW", "/health"),
        probe("GET", "/docs"),
    ]);
    let rows = rows(&text).unwrap();
    let count = |method: &str, route: &str, status: &str| {
        of(&rows, "trainyard_http_requests")
            .filter(|r| label(r, "method") == method && label(r, "route") == route && label(r, "status") == status)
            .map(|r| r.value)
            .sum::<f64>()
    };
    assert_eq!(count("GET", "/health", "200"), 2.0, "{text}");
    assert_eq!(count("GET", "/api/v1/models/{name}", "500"), 1.0, "no application state here: {text}");
    assert_eq!(count("GET", UNMATCHED, "404"), 1.0, "{text}");
    assert_eq!(count(OTHER_METHOD, "/health", "405"), 1.0, "{text}");
    assert_eq!(count("GET", "/docs", "308"), 1.0, "{text}");
    assert!(!text.contains("some-model") && !text.contains("/no/such"), "no raw path in the exposition: {text}");
}

#[test]
fn refusals_uploads_downloads_and_epochs_are_counted() {
    let metrics = Metrics::new(false);
    let rows0 = rows(&metrics.encode(&quiet()).unwrap()).unwrap();
    let failures: Vec<&Row> = of(&rows0, "trainyard_auth_failures").collect();
    assert_eq!(failures.len(), 7, "every refusal outcome is shown from the start: {failures:?}");
    assert!(failures.iter().all(|r| r.value == 0.0 && label(r, "outcome") != "success"));
    assert_eq!(of(&rows0, "trainyard_upload_bytes").count(), 2, "model and dataset uploads from the start");
    assert_eq!(of(&rows0, "trainyard_build").map(|r| label(r, "version")).collect::<Vec<_>>(), [VERSION]);

    metrics.auth_failure(AuthOutcome::Invalid);
    metrics.auth_failure(AuthOutcome::Invalid);
    metrics.auth_failure(AuthOutcome::Throttled);
    metrics.auth_failure(AuthOutcome::Success);
    metrics.upload_bytes(UploadKind::Dataset).inc_by(1234);
    metrics.download_bytes().inc_by(99);
    let listener = EpochCounter(metrics.inner.epochs.clone());
    let event = |kind| Event {
        id: 1,
        session_id: trainyard_domain::ids::SessionId::generate(),
        kind,
        created_at: OffsetDateTime::UNIX_EPOCH,
        payload: trainyard_domain::events::EventPayload::Log(trainyard_domain::metrics::LogEntry {
            session_id: trainyard_domain::ids::SessionId::generate(),
            timestamp: OffsetDateTime::UNIX_EPOCH,
            level: trainyard_domain::metrics::LogLevel::Info,
            message: String::new(),
        }),
    };
    for kind in [EventKind::Epoch, EventKind::Log, EventKind::Epoch, EventKind::SessionCompleted] {
        listener.on_event(&event(kind));
    }
    let rows = rows(&metrics.encode(&quiet()).unwrap()).unwrap();
    let value = |family: &str, key: &str, val: &str| {
        of(&rows, family).find(|r| key.is_empty() || label(r, key) == val).map(|r| r.value).unwrap_or_else(|| panic!("{family}: {rows:?}"))
    };
    assert_eq!(value("trainyard_auth_failures", "outcome", "invalid"), 2.0);
    assert_eq!(value("trainyard_auth_failures", "outcome", "throttled"), 1.0);
    assert_eq!(value("trainyard_auth_failures", "outcome", "missing"), 0.0);
    assert_eq!(value("trainyard_upload_bytes", "kind", "dataset"), 1234.0);
    assert_eq!(value("trainyard_upload_bytes", "kind", "model"), 0.0);
    assert_eq!(value("trainyard_download_bytes", "", ""), 99.0);
    assert_eq!(value("trainyard_epochs_completed", "", ""), 2.0, "epoch events only");
}

#[test]
fn label_values_from_outside_are_escaped() {
    let gpu = GpuInfo {
        index: 0,
        name: "A \"quoted\\\" name\nsecond line\r\u{7}".to_owned(),
        usage_percent: 5.0,
        memory_used_mb: 1,
        memory_total_mb: 2,
    };
    let gauges = Gauges { system: snapshot(vec![gpu]), ..quiet() };
    let text = Metrics::new(false).encode(&gauges).unwrap();
    assert!(text.contains(r#"name="A \"quoted\\\" name\nsecond line  ""#), "{text}");
    let rows = rows(&text).unwrap();
    let names: Vec<&str> = of(&rows, "trainyard_gpu_memory_total_bytes").map(|r| label(r, "name")).collect();
    assert_eq!(names, ["A \"quoted\\\" name\nsecond line  "]);
}

/// Any scrape: session counts, running sessions with any ids and throughputs (finite or not),
/// GPUs with any names and values, and the machine's values, as the monitor might report them.
#[derive(Debug, Clone)]
struct AnyGauges(Gauges);

fn nasty_text(g: &mut Gen) -> String {
    let mut s = String::arbitrary(g);
    for _ in 0..usize::arbitrary(g) % 3 {
        s.push_str(g.choose(&["\"", "\\", "\n", "\r", "}", ",", "=", "# EOF", "\t", "{a=\"b\"}"]).unwrap_or(&""));
        s.push_str(&String::arbitrary(g));
    }
    s
}

impl Arbitrary for AnyGauges {
    fn arbitrary(g: &mut Gen) -> Self {
        let sessions = SessionState::ALL.map(|s| (s, u64::arbitrary(g) % 1000));
        let running = (0..usize::arbitrary(g) % 4)
            .map(|i| RunningSession {
                session_id: format!("{i}:{}", nasty_text(g)),
                samples_per_second: Option::<f64>::arbitrary(g),
                memory_bytes: Option::<u64>::arbitrary(g),
            })
            .collect();
        let gpus = (0..usize::arbitrary(g) % 4)
            .map(|i| GpuInfo {
                index: u32::try_from(i).unwrap_or(0),
                name: nasty_text(g),
                usage_percent: f64::arbitrary(g),
                memory_used_mb: u64::arbitrary(g),
                memory_total_mb: u64::arbitrary(g),
            })
            .collect();
        let system = SystemSnapshot {
            cpu_usage_percent: f64::arbitrary(g),
            cpu_count: usize::arbitrary(g),
            memory_used_mb: u64::arbitrary(g),
            memory_total_mb: u64::arbitrary(g),
            memory_available_mb: u64::arbitrary(g),
            server_memory_mb: u64::arbitrary(g),
            disk_free_gb: f64::arbitrary(g),
            disk_total_gb: f64::arbitrary(g),
            gpus,
            gpu_error: None,
            timestamp: OffsetDateTime::UNIX_EPOCH,
        };
        Self(Gauges { sessions, queue_length: u64::arbitrary(g) % 1000, running, system })
    }
}

/// A label value as the exposition shows it: control characters other than line feeds, which
/// have no escape, become spaces.
fn shown(text: &str) -> String {
    text.chars().map(|c| if c.is_control() && c != '\n' { ' ' } else { c }).collect()
}

/// Property 67's check.
fn reads_back(gauges: AnyGauges) -> TestResult {
    let gauges = gauges.0;
    let metrics = Metrics::new(true);
    metrics.auth_failure(AuthOutcome::Missing);
    let text = match metrics.encode(&gauges) {
        Ok(text) => text,
        Err(e) => return TestResult::error(format!("not encoded: {e}")),
    };
    let rows = match rows(&text) {
        Ok(rows) => rows,
        Err(e) => return TestResult::error(format!("unparsable: {e}\n{text}")),
    };
    let mut problems = Vec::new();
    if let Some(row) = rows.iter().find(|r| !r.value.is_finite()) {
        problems.push(format!("a value that is not finite: {row:?}"));
    }
    for (state, n) in gauges.sessions {
        let found: Vec<f64> = of(&rows, "trainyard_sessions").filter(|r| label(r, "state") == state.as_str()).map(|r| r.value).collect();
        if found != [int(n) as f64] {
            problems.push(format!("sessions {state}: {found:?}, expected {n}"));
        }
    }
    let queue: Vec<f64> = of(&rows, "trainyard_queue_length").map(|r| r.value).collect();
    if queue != [gauges.queue_length as f64] {
        problems.push(format!("queue length {queue:?}"));
    }
    for run in &gauges.running {
        let id = shown(&run.session_id);
        let found: Vec<f64> =
            of(&rows, "trainyard_running_session_samples_per_second").filter(|r| label(r, "session_id") == id).map(|r| r.value).collect();
        let expected: Vec<f64> = run.samples_per_second.filter(|v| v.is_finite()).into_iter().collect();
        if found != expected {
            problems.push(format!("samples/s of {id:?}: {found:?}, expected {expected:?}"));
        }
    }
    for gpu in &gauges.system.gpus {
        let index = gpu.index.to_string();
        let name = shown(&gpu.name);
        let at = |family: &str| -> Vec<f64> {
            of(&rows, family).filter(|r| label(r, "index") == index && label(r, "name") == name).map(|r| r.value).collect()
        };
        let total = int(gpu.memory_total_mb.saturating_mul(MIB)) as f64;
        let used = int(gpu.memory_used_mb.saturating_mul(MIB)) as f64;
        let utilisation: Vec<f64> = Some(gpu.usage_percent).filter(|v| v.is_finite()).into_iter().collect();
        if at("trainyard_gpu_memory_total_bytes") != [total] || at("trainyard_gpu_memory_used_bytes") != [used] {
            problems.push(format!("GPU {index} {name:?} memory not read back"));
        }
        if at("trainyard_gpu_utilization_percent") != utilisation {
            problems.push(format!("GPU {index} {name:?} utilisation not read back"));
        }
    }
    let gpus: Vec<f64> = of(&rows, "trainyard_gpus").map(|r| r.value).collect();
    if gpus != [gauges.system.gpus.len() as f64] {
        problems.push(format!("GPU count {gpus:?}"));
    }
    let cpu: Vec<f64> = of(&rows, "trainyard_cpu_usage_percent").map(|r| r.value).collect();
    let expected_cpu: Vec<f64> = Some(gauges.system.cpu_usage_percent).filter(|v| v.is_finite()).into_iter().collect();
    if cpu != expected_cpu {
        problems.push(format!("CPU {cpu:?}, expected {expected_cpu:?}"));
    }
    if problems.is_empty() {
        TestResult::passed()
    } else {
        TestResult::error(format!("{problems:#?}\n{text}"))
    }
}

// Property 67: whatever the sessions, running sessions, GPUs (names with quotes, backslashes,
// line feeds, control characters, braces) and values (NaN, infinities, extremes) are, the
// exposition parses with a strict OpenMetrics parser, holds only finite values, and reads
// back every session state's count, the queue length, each running session's throughput and
// each GPU's gauges under its index and (escaped) name; values that are not finite are left out.
#[test]
fn prop67_the_exposition_always_parses_and_reads_back() {
    QuickCheck::new().tests(CASES * 3).rng(Gen::new(60)).quickcheck(reads_back as fn(AnyGauges) -> TestResult);
}

#[test]
fn only_known_patterns_become_route_labels() {
    assert_eq!(route_label(Some("/api/v1/models/{name}")), "/api/v1/models/{name}");
    assert_eq!(route_label(Some(SWAGGER_PATTERN)), SWAGGER_PATTERN);
    assert_eq!(route_label(Some("/api/v1/models/x")), UNMATCHED, "a path is not a pattern");
    assert_eq!(route_label(None), UNMATCHED);
    assert_eq!(method_label(&Method::from_bytes(b"PURGE").unwrap()), OTHER_METHOD);
    assert_eq!(method_label(&Method::DELETE), "DELETE");
}
