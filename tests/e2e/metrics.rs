//! `GET /metrics` from the real binary, parsed with a strict OpenMetrics parser: what a run, a
//! refused key, an upload and a download leave in it; the key it needs unless
//! `--metrics-public`; and the docs redirects.

use std::{collections::BTreeMap, time::Duration};

use openmetrics_parser::{openmetrics::parse_openmetrics, OpenMetricsValue};
use serde_json::json;

use crate::harness::{envelope_code, example, status_json, Opts, Server};

/// One sample: its family, its labels, its value (a histogram's count).
#[derive(Debug)]
struct Row {
    family: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The body of a `/metrics` answer, checked to be OpenMetrics text, parsed strictly.
fn parse(res: ureq::Response) -> (Vec<Row>, String) {
    assert_eq!(res.status(), 200);
    let content_type = res.header("content-type").unwrap_or_default().to_owned();
    assert!(content_type.starts_with("application/openmetrics-text; version=1.0.0"), "{content_type}");
    let text = res.into_string().expect("body");
    let exposition = parse_openmetrics(&text).unwrap_or_else(|e| panic!("unparsable exposition: {e}\n{text}"));
    let mut rows = Vec::new();
    for (name, family) in &exposition.families {
        for sample in family.iter_samples() {
            let labels = sample.get_labelset().expect("labels").iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let value = match &sample.value {
                OpenMetricsValue::Gauge(n) => n.as_f64(),
                OpenMetricsValue::Counter(c) => c.value.as_f64(),
                OpenMetricsValue::Histogram(h) => h.count.unwrap_or_default() as f64,
                OpenMetricsValue::Info => 1.0,
                other => panic!("{name}: unexpected {other:?}"),
            };
            rows.push(Row { family: name.clone(), labels, value });
        }
    }
    (rows, text)
}

fn scrape(s: &Server) -> (Vec<Row>, String) {
    parse(s.req("GET", "/metrics").call().expect("GET /metrics"))
}

/// The value of the sample of `family` whose labels include `labels`, if one does.
fn value(rows: &[Row], family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    rows.iter()
        .find(|r| r.family == family && labels.iter().all(|(k, v)| r.labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|r| r.value)
}

#[test]
fn metrics_parse_and_show_what_happened() {
    let s = Server::start();
    let wrong = s.anon("GET", "/api/v1/models").set("Authorization", "Bearer not-a-key");
    assert_eq!(status_json(wrong.call()).0, 401);
    let dataset = std::fs::read(example("iris.csv")).unwrap();
    let (code, v) = s.upload_file("/api/v1/datasets?dataset_name=iris_metrics", &example("iris.csv"));
    assert_eq!(code, 200, "{v}");
    let (code, v) = s.get("/api/v1/models/no-such-model-here");
    assert_eq!(code, 404, "{v}");
    let (code, v) = s.post_json(
        "/api/v1/training/start",
        &json!({"model_architecture": "mlp", "dataset_name": "iris_metrics", "epochs": 2, "batch_size": 16, "learning_rate": 0.01}),
    );
    assert_eq!(code, 200, "{v}");
    let session = v["session_id"].as_str().unwrap().to_owned();
    let ended = s.wait_ended(&session);
    assert_eq!(ended["state"], "completed", "{ended}");
    let model = ended["model_name"].as_str().expect("a trained model").to_owned();
    let (code, model_bytes, _) = s.get_bytes(&format!("/api/v1/models/{model}"));
    assert_eq!(code, 200);

    let (rows, text) = scrape(&s);
    assert_eq!(value(&rows, "trainyard_auth_failures", &[("outcome", "invalid")]), Some(1.0), "{text}");
    assert_eq!(value(&rows, "trainyard_auth_failures", &[("outcome", "expired")]), Some(0.0), "every outcome is shown: {text}");
    let uploaded = value(&rows, "trainyard_upload_bytes", &[("kind", "dataset")]).expect("dataset upload bytes");
    assert!(uploaded >= dataset.len() as f64, "{uploaded} bytes counted for an upload of {}", dataset.len());
    assert_eq!(value(&rows, "trainyard_upload_bytes", &[("kind", "model")]), Some(0.0));
    let downloaded = value(&rows, "trainyard_download_bytes", &[]).expect("download bytes");
    assert!(downloaded >= model_bytes.len() as f64, "{downloaded} bytes counted for a download of {}", model_bytes.len());
    assert_eq!(value(&rows, "trainyard_epochs_completed", &[]), Some(2.0), "{text}");
    for (state, n) in [("queued", 0.0), ("running", 0.0), ("completed", 1.0), ("failed", 0.0), ("stopped", 0.0)] {
        assert_eq!(value(&rows, "trainyard_sessions", &[("state", state)]), Some(n), "sessions {state}: {text}");
    }
    assert_eq!(value(&rows, "trainyard_queue_length", &[]), Some(0.0));
    let requests =
        |method, route, status| value(&rows, "trainyard_http_requests", &[("method", method), ("route", route), ("status", status)]);
    assert_eq!(requests("POST", "/api/v1/datasets", "200"), Some(1.0), "{text}");
    assert_eq!(requests("GET", "/api/v1/models", "401"), Some(1.0), "{text}");
    assert_eq!(requests("GET", "/api/v1/models/{name}", "404"), Some(1.0), "{text}");
    assert!(value(&rows, "trainyard_http_request_duration_seconds", &[("route", "/api/v1/training/start")]).is_some_and(|n| n >= 1.0));
    assert!(!text.contains("no-such-model-here") && !text.contains(&session), "no raw path or session id of a finished run: {text}");
    assert!(value(&rows, "trainyard_memory_total_bytes", &[]).is_some_and(|b| b > 0.0), "{text}");
    assert!(value(&rows, "trainyard_cpu_cores", &[]).is_some_and(|n| n >= 1.0), "{text}");
    assert!(value(&rows, "trainyard_gpus", &[]).is_some(), "{text}");
    assert!(value(&rows, "trainyard_build", &[]).is_some(), "{text}");

    // The scrape itself is counted by the next one.
    let (rows, _) = scrape(&s);
    assert_eq!(value(&rows, "trainyard_http_requests", &[("route", "/metrics"), ("status", "200")]), Some(1.0));
}

#[test]
fn metrics_need_a_key_unless_the_server_makes_them_public() {
    let s = Server::start();
    let (code, v) = status_json(s.anon("GET", "/metrics").call());
    assert_eq!((code, envelope_code(&v).as_str()), (401, "API_KEY_MISSING"), "{v}");
    drop(s);

    let by_flag = Server::start_with(Opts { extra_args: vec!["--metrics-public".into()], ..Opts::default() });
    let by_env = Server::start_with(Opts { env: vec![("TRAINYARD_METRICS_PUBLIC".into(), "true".into())], ..Opts::default() });
    for s in [&by_flag, &by_env] {
        let (rows, text) = parse(s.anon("GET", "/metrics").call().expect("GET /metrics without a key"));
        assert!(value(&rows, "trainyard_sessions", &[("state", "queued")]).is_some(), "{text}");
        assert_eq!(value(&rows, "trainyard_auth_failures", &[("outcome", "missing")]), Some(0.0), "no key was refused: {text}");
        let (code, v) = status_json(s.anon("GET", "/api/v1/models").call());
        assert_eq!((code, envelope_code(&v).as_str()), (401, "API_KEY_MISSING"), "only the metrics are public: {v}");
        let (code, _) = status_json(s.anon("POST", "/metrics").call());
        assert_eq!(code, 401, "only reading the metrics is public");
    }
}

#[test]
fn docs_without_a_slash_and_redoc_lead_to_the_explorer() {
    let s = Server::start();
    let agent = ureq::AgentBuilder::new().redirects(0).timeout(Duration::from_secs(30)).build();
    let get = |path: &str| match agent.get(&s.url(path)).call() {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("GET {path}: {e}"),
    };
    let docs = get("/docs");
    assert_eq!((docs.status(), docs.header("location")), (308, Some("/docs/")));
    let redoc = get("/redoc");
    assert_eq!((redoc.status(), redoc.header("location")), (307, Some("/docs/")));
    let explorer = get("/docs/");
    assert_eq!(explorer.status(), 200);
    assert!(explorer.into_string().unwrap().contains("swagger"), "the explorer is served without a key");
}
