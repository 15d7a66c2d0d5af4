//! Tests of chart queries, the charts built from histories, and the chart use case against
//! in-memory fakes.

use std::sync::Mutex;

use quickcheck::{Arbitrary, Gen, QuickCheck};
use time::OffsetDateTime;

use super::*;
use crate::{
    config::{TrainingConfig, TrainingRequest},
    manager::{Ports, SchedulerPolicy},
    ports::{MetricsStore, SessionRepository},
    testing::*,
};

fn session() -> Session {
    let req = TrainingRequest {
        model_architecture: Some("mlp".into()),
        dataset_name: Some("iris".into()),
        epochs: Some(5),
        ..Default::default()
    };
    Session::queued(SessionId::generate(), TrainingConfig::validate(&req).unwrap(), OffsetDateTime::UNIX_EPOCH)
}

fn epoch(n: u32, loss: f64, accuracy: f64, validation: Option<(f64, f64)>) -> EpochMetrics {
    EpochMetrics {
        epoch: n,
        loss,
        accuracy,
        val_loss: validation.map(|v| v.0),
        val_accuracy: validation.map(|v| v.1),
        samples_per_second: 100.0,
        epoch_seconds: 1.0,
        learning_rate: None,
        timestamp: OffsetDateTime::UNIX_EPOCH,
    }
}

fn raw(metrics: Option<&str>, width: Option<&str>, height: Option<&str>) -> RawChartQuery {
    RawChartQuery { metrics: metrics.map(str::to_owned), width: width.map(str::to_owned), height: height.map(str::to_owned) }
}

fn fields(e: &ChartQueryErrors) -> Vec<&str> {
    e.0.iter().map(|f| f.field.as_str()).collect()
}

#[test]
fn an_empty_query_is_every_metric_at_the_default_size() {
    let q = ChartQuery::parse(&RawChartQuery::default()).unwrap();
    assert_eq!(q.metrics(), Metric::ALL);
    assert_eq!((q.width(), q.height()), (DEFAULT_WIDTH, DEFAULT_HEIGHT));
    assert_eq!(q, ChartQuery::all_metrics());
}

#[test]
fn metrics_are_trimmed_deduplicated_and_put_in_panel_order() {
    let q = ChartQuery::parse(&raw(Some(" val_accuracy,loss,,loss "), Some("640"), Some(" 480"))).unwrap();
    assert_eq!(q.metrics(), [Metric::Loss, Metric::ValAccuracy]);
    assert_eq!((q.width(), q.height()), (640, 480));
}

#[test]
fn every_bad_parameter_is_named_at_once() {
    let e = ChartQuery::parse(&raw(Some("loss,f1"), Some("10"), Some("tall"))).unwrap_err();
    assert_eq!(fields(&e), ["metrics", "width", "height"]);
    assert!(e.0[0].message.contains("'f1'") && e.0[0].message.contains("val_accuracy"), "{e}");
    assert!(e.0[1].message.contains("between 200 and 4000") && e.0[1].message.contains("10"), "{e}");
    assert!(e.0[2].message.contains("'tall'"), "{e}");
    let e = ChartQuery::parse(&raw(Some(" , "), Some("4001"), Some("200"))).unwrap_err();
    assert_eq!(fields(&e), ["metrics", "width"]);
    assert!(e.to_string().starts_with("invalid chart request: metrics: names no metric"), "{e}");
}

#[test]
fn the_bounds_are_inclusive() {
    assert!(ChartQuery::parse(&raw(None, Some("200"), Some("4000"))).is_ok());
    assert!(ChartQuery::parse(&raw(None, Some("199"), None)).is_err());
    assert!(ChartQuery::parse(&raw(None, None, Some("18446744073709551616"))).is_err());
}

#[test]
fn a_session_without_epochs_gets_both_panels_saying_so() {
    let s = session();
    let spec = session_chart(&s, &[], &ChartQuery::all_metrics());
    assert_eq!(spec.title, "mlp on iris");
    assert!(spec.subtitle.contains(s.id.as_str()) && spec.subtitle.contains("queued") && spec.subtitle.contains("epoch 0 of 5"));
    assert_eq!(spec.panels.len(), 2);
    for p in &spec.panels {
        assert!(!p.has_points());
        assert_eq!(p.empty_note, "no epochs yet");
        assert_eq!(p.x_label, "epoch");
    }
    assert_eq!((spec.panels[0].y_label.as_str(), spec.panels[1].y_label.as_str()), ("loss", "accuracy"));
    assert_eq!(spec.panels[1].y_format, AxisFormat::Percent);
    assert_eq!(spec.panels[1].y_clamp, Some((0.0, 1.0)));
}

#[test]
fn losses_and_accuracies_go_to_their_panels_in_epoch_order() {
    let history = [epoch(1, 1.0, 0.5, Some((1.2, 0.4))), epoch(2, f64::NAN, 0.7, Some((0.9, 0.6)))];
    let spec = session_chart(&session(), &history, &ChartQuery::all_metrics());
    let loss = &spec.panels[0];
    assert_eq!(loss.series.iter().map(|s| s.label.as_str()).collect::<Vec<_>>(), ["training loss", "validation loss"]);
    assert_eq!(loss.series[1].points, [(1.0, 1.2), (2.0, 0.9)]);
    assert_eq!(loss.series[0].finite_points().collect::<Vec<_>>(), [(1.0, 1.0)], "the NaN loss is skipped");
    let acc = &spec.panels[1];
    assert_eq!(acc.series[0].points, [(1.0, 0.5), (2.0, 0.7)]);
    assert_eq!(acc.series[1].label, "validation accuracy");
}

#[test]
fn only_the_panels_asked_for_are_drawn() {
    let history = [epoch(1, 1.0, 0.5, None)];
    let q = ChartQuery::parse(&raw(Some("val_loss"), None, None)).unwrap();
    let spec = session_chart(&session(), &history, &q);
    assert_eq!(spec.panels.len(), 1);
    assert_eq!(spec.panels[0].series.len(), 1);
    assert!(!spec.panels[0].has_points());
    assert!(spec.panels[0].empty_note.starts_with("no validation data"), "{}", spec.panels[0].empty_note);
    let q = ChartQuery::parse(&raw(Some("accuracy"), Some("300"), Some("250"))).unwrap();
    let spec = session_chart(&session(), &history, &q);
    assert_eq!((spec.panels.len(), spec.panels[0].y_label.as_str(), spec.width, spec.height), (1, "accuracy", 300, 250));
}

fn id(n: u128) -> String {
    format!("sess_{n:032x}")
}

fn compare_raw(sessions: Option<String>, metric: Option<&str>) -> RawCompareQuery {
    RawCompareQuery { sessions, metric: metric.map(str::to_owned), width: None, height: None }
}

#[test]
fn compare_queries_name_what_is_wrong() {
    let q = CompareQuery::parse(&compare_raw(Some(format!("{}, {}", id(1), id(2))), None)).unwrap();
    assert_eq!(q.sessions().len(), 2);
    assert_eq!(q.metric(), Metric::ValAccuracy);
    let e = CompareQuery::parse(&compare_raw(None, Some("f1"))).unwrap_err();
    assert_eq!(fields(&e), ["sessions", "metric"]);
    let e = CompareQuery::parse(&compare_raw(Some(format!("{},{}", id(1), id(1))), Some("loss"))).unwrap_err();
    assert!(e.0[0].message.contains("more than once"), "{e}");
    let e = CompareQuery::parse(&compare_raw(Some(format!("{},../etc", id(1))), Some("loss"))).unwrap_err();
    assert!(e.0[0].message.contains("'../etc'"), "{e}");
    let many = (0..21).map(id).collect::<Vec<_>>().join(",");
    let e = CompareQuery::parse(&compare_raw(Some(many), Some("loss"))).unwrap_err();
    assert!(e.0[0].message.contains("at most 20"), "{e}");
    let twenty = (0..20).map(id).collect::<Vec<_>>().join(",");
    assert!(CompareQuery::parse(&compare_raw(Some(twenty), Some("loss"))).is_ok());
    let e = CompareQuery::parse(&compare_raw(Some(",".into()), None)).unwrap_err();
    assert!(e.0[0].message.contains("names no session"), "{e}");
}

#[test]
fn a_comparison_has_one_series_per_session_in_the_order_asked() {
    let (a, b) = (session(), session());
    let q = CompareQuery::parse(&compare_raw(Some(format!("{},{}", a.id, b.id)), Some("loss"))).unwrap();
    let spec = compare_chart(&[(a.clone(), vec![epoch(1, 0.5, 0.5, None)]), (b.clone(), Vec::new())], &q);
    assert_eq!(spec.panels.len(), 1);
    let labels: Vec<&str> = spec.panels[0].series.iter().map(|s| s.label.as_str()).collect();
    assert_eq!(labels, [format!("{} mlp on iris", &a.id.as_str()[5..13]), format!("{} mlp on iris", &b.id.as_str()[5..13])]);
    assert_eq!(spec.panels[0].series[0].points, [(1.0, 0.5)]);
    assert!(spec.title.contains("training loss") && spec.title.contains("2 sessions"), "{}", spec.title);
    let spec = compare_chart(&[(a, Vec::new())], &q);
    assert_eq!(spec.panels[0].empty_note, "no epochs yet");
}

/// Answers every chart with its title, keeping the specs it was given.
#[derive(Default)]
struct Recorder(Mutex<Vec<ChartSpec>>);

impl ChartRenderer for Recorder {
    fn render(&self, spec: &ChartSpec, format: ChartFormat) -> Result<Vec<u8>, RenderError> {
        self.0.lock().unwrap().push(spec.clone());
        Ok(format!("{}:{}", format.content_type(), spec.title).into_bytes())
    }
}

fn charts_world() -> (Charts, Arc<Recorder>, Arc<MemorySessions>, Arc<MemoryMetrics>) {
    let sessions = Arc::new(MemorySessions::default());
    let metrics = Arc::new(MemoryMetrics::default());
    let ports = Ports {
        sessions: sessions.clone(),
        metrics: metrics.clone(),
        logs: Arc::new(MemoryLogs::default()),
        datasets: Arc::new(MemoryDatasets::default()),
        models: Arc::new(MemoryModels::default()),
        model_inspector: Arc::new(CountingModelInspector),
        scratch: Arc::new(MemoryScratch::default()),
        trainer: Arc::new(ScriptedTrainer::default()),
        monitor: Arc::new(FakeMonitor::default()),
        clock: Arc::new(FixedClock::new(OffsetDateTime::UNIX_EPOCH)),
        events: Arc::new(MemoryEvents::default()),
    };
    let recorder = Arc::new(Recorder::default());
    let charts = Charts::new(SessionManager::new(ports, SchedulerPolicy::default()), recorder.clone());
    (charts, recorder, sessions, metrics)
}

#[test]
fn the_use_case_charts_stored_history_and_refuses_unknown_sessions() {
    let (charts, recorder, sessions, metrics) = charts_world();
    let s = session();
    sessions.insert(&s).unwrap();
    metrics.record(&s.id, &epoch(1, 0.9, 0.6, Some((1.0, 0.5)))).unwrap();
    let bytes = charts.session(&s.id, &ChartQuery::all_metrics(), ChartFormat::Svg).unwrap();
    assert_eq!(bytes, b"image/svg+xml:mlp on iris");
    assert_eq!(recorder.0.lock().unwrap()[0].panels[0].series[0].points, [(1.0, 0.9)]);

    let unknown = SessionId::generate();
    let err = charts.session(&unknown, &ChartQuery::all_metrics(), ChartFormat::Png).unwrap_err();
    assert_eq!(err, ChartError::Manager(ManagerError::NotFound(unknown.clone())));
    let q = CompareQuery::parse(&compare_raw(Some(format!("{},{unknown}", s.id)), None)).unwrap();
    let err = charts.compare(&q, ChartFormat::Png).unwrap_err();
    assert_eq!(err, ChartError::Manager(ManagerError::NotFound(unknown)));
    let q = CompareQuery::parse(&compare_raw(Some(s.id.to_string()), Some("val_loss"))).unwrap();
    charts.compare(&q, ChartFormat::Png).unwrap();
    assert_eq!(recorder.0.lock().unwrap()[1].panels[0].series[0].points, [(1.0, 1.0)]);
}

/// A query parameter as a client might send it: absent, well-formed, out of bounds, or junk.
#[derive(Debug, Clone)]
struct AnyQuery {
    metrics: Option<String>,
    width: Option<String>,
    height: Option<String>,
    sessions: Option<String>,
    metric: Option<String>,
}

fn side(g: &mut Gen) -> Option<String> {
    match u8::arbitrary(g) % 8 {
        0 => None,
        1 => Some((MIN_SIDE + u32::arbitrary(g) % (MAX_SIDE - MIN_SIDE + 1)).to_string()),
        2 => Some(u32::arbitrary(g).to_string()),
        3 => Some(i64::arbitrary(g).to_string()),
        4 => Some(format!(" {} ", u16::arbitrary(g))),
        5 => Some(g.choose(&["", "1e3", "640px", "+640", "0x200", "99999999999999999999999", "٣٠٠"]).copied().unwrap_or("").to_owned()),
        _ => Some(String::arbitrary(g)),
    }
}

fn metric_name(g: &mut Gen) -> String {
    match u8::arbitrary(g) % 4 {
        0 | 1 => g.choose(Metric::NAMES).copied().unwrap_or("loss").to_owned(),
        2 => g.choose(&["LOSS", "", " val_loss ", "f1", "accuracy\0"]).copied().unwrap_or("").to_owned(),
        _ => String::arbitrary(g),
    }
}

fn session_token(g: &mut Gen, earlier: &[String]) -> String {
    match u8::arbitrary(g) % 6 {
        0 if !earlier.is_empty() => g.choose(earlier).cloned().unwrap_or_default(),
        0..=3 => id(u128::arbitrary(g)),
        4 => g.choose(&["", "sess_", "sess_XYZ", "../etc/passwd"]).copied().unwrap_or("").to_owned(),
        _ => String::arbitrary(g),
    }
}

impl Arbitrary for AnyQuery {
    fn arbitrary(g: &mut Gen) -> Self {
        let metrics = bool::arbitrary(g).then(|| (0..u8::arbitrary(g) % 5).map(|_| metric_name(g)).collect::<Vec<_>>().join(","));
        let sessions = (u8::arbitrary(g) % 5 != 0).then(|| {
            let n = if bool::arbitrary(g) { u8::arbitrary(g) % 4 } else { u8::arbitrary(g) % 25 };
            let mut ids = Vec::new();
            for _ in 0..n {
                let token = session_token(g, &ids);
                ids.push(token);
            }
            ids.join(",")
        });
        let metric = bool::arbitrary(g).then(|| metric_name(g));
        Self { metrics, width: side(g), height: side(g), sessions, metric }
    }
}

/// Whether the fields a refusal names are exactly those that fail when each is sent alone,
/// beside values known to be good.
fn names_exactly_the_failing_fields(err: &ChartQueryErrors, alone_fails: &[(&str, bool)]) -> bool {
    let named = fields(err);
    let unique = named.iter().enumerate().all(|(i, f)| !named[..i].contains(f));
    let messages = err.0.iter().all(|f| !f.message.trim().is_empty());
    unique && messages && alone_fails.iter().all(|(field, fails)| named.contains(field) == *fails)
}

fn within_bounds(width: u32, height: u32) -> bool {
    (MIN_SIDE..=MAX_SIDE).contains(&width) && (MIN_SIDE..=MAX_SIDE).contains(&height)
}

// Property 61: whatever values a chart query's parameters hold, it either validates to a
// query whose chart is within the size bounds (with a panel for each kind of metric asked and
// a series for each metric), or is refused naming exactly the parameters that are wrong;
// never a panic. The same holds for comparison queries.
fn prop61_chart_queries_validate_within_bounds_or_name_the_bad_field(q: AnyQuery) -> bool {
    let chart = RawChartQuery { metrics: q.metrics.clone(), width: q.width.clone(), height: q.height.clone() };
    let chart_ok = match ChartQuery::parse(&chart) {
        Ok(parsed) => {
            let spec = session_chart(&session(), &[epoch(1, 0.5, 0.5, None)], &parsed);
            let kinds =
                [MetricKind::Loss, MetricKind::Accuracy].iter().filter(|k| parsed.metrics().iter().any(|m| m.kind() == **k)).count();
            let series: usize = spec.panels.iter().map(|p| p.series.len()).sum();
            within_bounds(spec.width, spec.height)
                && !parsed.metrics().is_empty()
                && parsed.metrics().windows(2).all(|w| w[0] < w[1])
                && spec.panels.len() == kinds
                && series == parsed.metrics().len()
        }
        Err(e) => {
            let alone = |r: RawChartQuery| ChartQuery::parse(&r).is_err();
            names_exactly_the_failing_fields(
                &e,
                &[
                    ("metrics", alone(RawChartQuery { metrics: q.metrics.clone(), ..Default::default() })),
                    ("width", alone(RawChartQuery { width: q.width.clone(), ..Default::default() })),
                    ("height", alone(RawChartQuery { height: q.height.clone(), ..Default::default() })),
                ],
            )
        }
    };
    let compare =
        RawCompareQuery { sessions: q.sessions.clone(), metric: q.metric.clone(), width: q.width.clone(), height: q.height.clone() };
    let compare_ok = match CompareQuery::parse(&compare) {
        Ok(parsed) => {
            let sessions: Vec<(Session, Vec<EpochMetrics>)> = parsed
                .sessions()
                .iter()
                .map(|id| (Session { id: id.clone(), ..session() }, vec![epoch(1, 0.5, 0.5, Some((0.6, 0.4)))]))
                .collect();
            let spec = compare_chart(&sessions, &parsed);
            within_bounds(spec.width, spec.height)
                && (1..=MAX_COMPARE_SESSIONS).contains(&parsed.sessions().len())
                && spec.panels.len() == 1
                && spec.panels[0].series.len() == parsed.sessions().len()
        }
        Err(e) => {
            let good = RawCompareQuery { sessions: Some(id(7)), ..Default::default() };
            let alone = |r: RawCompareQuery| CompareQuery::parse(&r).is_err();
            names_exactly_the_failing_fields(
                &e,
                &[
                    ("sessions", alone(RawCompareQuery { sessions: q.sessions.clone(), ..Default::default() })),
                    ("metric", alone(RawCompareQuery { metric: q.metric.clone(), ..good.clone() })),
                    ("width", alone(RawCompareQuery { width: q.width.clone(), ..good.clone() })),
                    ("height", alone(RawCompareQuery { height: q.height.clone(), ..good })),
                ],
            )
        }
    };
    chart_ok && compare_ok
}

#[test]
fn prop61_runs() {
    QuickCheck::new()
        .tests(400)
        .rng(Gen::new(40))
        .quickcheck(prop61_chart_queries_validate_within_bounds_or_name_the_bad_field as fn(AnyQuery) -> bool);
}
