//! Charts through HTTP: a trained iris session's history as PNG and SVG, a comparison of two
//! sessions, a queued session's chart, and the refusals.

use std::io::Read;

use image::GenericImageView;
use serde_json::{json, Value};

use crate::harness::{envelope_code, example, Server};

/// Status, Content-Type, Cache-Control and body of a GET.
fn fetch(s: &Server, path: &str) -> (u16, String, String, Vec<u8>) {
    let resp = match s.req("GET", path).call() {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("GET {path}: {e}"),
    };
    let status = resp.status();
    let content_type = resp.header("content-type").unwrap_or_default().to_owned();
    let cache = resp.header("cache-control").unwrap_or_default().to_owned();
    let mut body = Vec::new();
    resp.into_reader().read_to_end(&mut body).expect("body");
    (status, content_type, cache, body)
}

/// Fetches a PNG and returns its decoded size.
fn png_size(s: &Server, path: &str) -> (u32, u32) {
    let (status, content_type, cache, body) = fetch(s, path);
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    assert_eq!((content_type.as_str(), cache.as_str()), ("image/png", "no-store"), "{path}");
    image::load_from_memory_with_format(&body, image::ImageFormat::Png).expect("a PNG").dimensions()
}

/// Fetches an SVG and returns its text.
fn svg(s: &Server, path: &str) -> String {
    let (status, content_type, cache, body) = fetch(s, path);
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    assert_eq!((content_type.as_str(), cache.as_str()), ("image/svg+xml", "no-store"), "{path}");
    let text = String::from_utf8(body).expect("UTF-8 SVG");
    assert!(text.contains("<svg"), "{text:.200}");
    text
}

/// The fields a 400 names.
fn refused_fields(s: &Server, path: &str) -> Vec<String> {
    let (code, v) = s.get(path);
    assert_eq!(code, 400, "{path}: {v}");
    assert_eq!(envelope_code(&v), "BAD_REQUEST");
    v["error"]["details"]["fields"].as_array().expect("fields").iter().map(|f| f["field"].as_str().unwrap().to_owned()).collect()
}

fn start(s: &Server, body: &Value) -> (String, String) {
    let (code, v) = s.post_json("/api/v1/training/start", body);
    assert_eq!(code, 200, "{v}");
    (v["session_id"].as_str().expect("session_id").to_owned(), v["status"].as_str().unwrap_or_default().to_owned())
}

#[test]
fn a_trained_session_charts_as_png_and_svg_and_two_compare() {
    let s = Server::start();
    let (code, v) = s.upload_file("/api/v1/datasets?dataset_name=iris", &example("iris.csv"));
    assert_eq!(code, 200, "{v}");
    let config = json!({"model_architecture": "mlp", "dataset_name": "iris", "epochs": 3, "batch_size": 16});
    let (first, _) = start(&s, &config);
    let (second, state) = start(&s, &config);

    // The second waits for the first (one session at a time): its chart is drawn all the same.
    assert_eq!(png_size(&s, &format!("/api/v1/training/{second}/chart.png?width=640&height=480")), (640, 480), "{state}");
    let early = svg(&s, &format!("/api/v1/training/{second}/chart.svg"));
    let (_, history) = s.get(&format!("/api/v1/training/{second}/history"));
    if history.as_array().is_some_and(Vec::is_empty) {
        assert!(early.contains("no epochs yet"), "{early:.2000}");
    }

    for id in [&first, &second] {
        assert_eq!(s.wait_ended(id)["state"], "completed");
    }
    assert_eq!(png_size(&s, &format!("/api/v1/training/{first}/chart.png?width=640&height=480")), (640, 480));
    assert_eq!(png_size(&s, &format!("/api/v1/training/{first}/chart.png?metrics=loss,val_loss&width=200&height=4000")), (200, 4000));
    let text = svg(&s, &format!("/api/v1/training/{first}/chart.svg"));
    assert!(text.contains("width=\"1000\"") && text.contains("height=\"700\""), "{text:.300}");
    for words in ["mlp on iris", "training loss", "validation accuracy", "epoch", first.as_str()] {
        assert!(text.contains(words), "{words} missing from the chart: {text:.2000}");
    }
    assert!(!text.contains("no epochs yet"));
    let only_accuracy = svg(&s, &format!("/api/v1/training/{first}/chart.svg?metrics=accuracy"));
    assert!(only_accuracy.contains("training accuracy") && !only_accuracy.contains("training loss"));

    let compare = format!("sessions={first},{second}&metric=val_accuracy");
    assert_eq!(png_size(&s, &format!("/api/v1/charts/compare.png?{compare}&width=800&height=500")), (800, 500));
    let text = svg(&s, &format!("/api/v1/charts/compare.svg?{compare}"));
    assert!(text.contains(&first[5..13]) && text.contains(&second[5..13]), "{text:.2000}");
}

#[test]
fn bad_chart_requests_are_named_and_unknown_sessions_are_404() {
    let s = Server::start();
    let unknown = "sess_0123456789abcdef0123456789abcdef";
    assert_eq!(refused_fields(&s, &format!("/api/v1/training/{unknown}/chart.png?width=10")), ["width"]);
    assert_eq!(refused_fields(&s, &format!("/api/v1/training/{unknown}/chart.svg?metrics=f1&height=big")), ["metrics", "height"]);
    assert_eq!(refused_fields(&s, "/api/v1/charts/compare.png?metric=val_accuracy"), ["sessions"]);
    let many = (0..21).map(|i| format!("sess_{i:032x}")).collect::<Vec<_>>().join(",");
    assert_eq!(refused_fields(&s, &format!("/api/v1/charts/compare.svg?sessions={many}&width=5000")), ["sessions", "width"]);

    for path in [
        format!("/api/v1/training/{unknown}/chart.png"),
        "/api/v1/training/not-a-session/chart.svg".to_owned(),
        format!("/api/v1/charts/compare.png?sessions={unknown}"),
    ] {
        let (code, v) = s.get(&path);
        assert_eq!((code, envelope_code(&v).as_str()), (404, "SESSION_NOT_FOUND"), "{path}: {v}");
    }
}
