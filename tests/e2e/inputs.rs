//! Inputs and messages: prediction and generation never answer `null` or a number that is not
//! finite, whatever the inputs (tabular, image and text models), and no refusal, session
//! failure message or session log line shows a server path or an internal error's text.

use std::path::Path;

use serde_json::{json, Value};

use crate::harness::{envelope_code, example, Server};

/// Every number in `v` is finite and nothing is `null`.
fn all_finite_no_null(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Number(n) => n.as_f64().is_some_and(f64::is_finite),
        Value::Array(items) => items.iter().all(all_finite_no_null),
        Value::Object(fields) => fields.values().all(all_finite_no_null),
        Value::Bool(_) | Value::String(_) => true,
    }
}

fn upload_dataset(s: &Server, name: &str, file: &str, bytes: &[u8]) {
    let (code, v) = s.upload(&format!("/api/v1/datasets?dataset_name={name}"), file, bytes);
    assert_eq!(code, 200, "{v}");
}

/// Starts a session and waits for it to end; returns its id and final status.
fn run_session(s: &Server, body: &Value) -> (String, Value) {
    let (code, v) = s.post_json("/api/v1/training/start", body);
    assert_eq!(code, 200, "{v}");
    let id = v["session_id"].as_str().unwrap().to_owned();
    let status = s.wait_ended(&id);
    (id, status)
}

/// A prediction's answer: 200 with every number finite and no `null`, or a 400 envelope.
fn assert_finite_or_refused(what: &str, code: u16, v: &Value) {
    match code {
        200 => assert!(all_finite_no_null(v), "{what}: {v}"),
        400 => {
            envelope_code(v);
        }
        _ => panic!("{what}: {code} {v}"),
    }
}

#[test]
fn predict_and_generate_never_answer_null_or_a_number_that_is_not_finite() {
    let s = Server::start();
    upload_dataset(&s, "iris", "iris.csv", &std::fs::read(example("iris.csv")).unwrap());
    upload_dataset(&s, "digits", "digits_png.zip", &std::fs::read(example("digits_png.zip")).unwrap());
    let (mlp, status) = run_session(&s, &json!({"model_architecture": "mlp", "dataset_name": "iris", "epochs": 2}));
    assert_eq!(status["state"], "completed", "{status}");
    let (cnn, status) = run_session(&s, &json!({"model_architecture": "cnn", "dataset_name": "digits", "epochs": 1}));
    assert_eq!(status["state"], "completed", "{status}");

    // Tabular: values a 32-bit network cannot take are a 400 that says so.
    for big in [1e308, -1e308, 3.5e38] {
        let (code, v) = s.post_json(&format!("/api/v1/models/{mlp}/predict"), &json!({"inputs": [[big, big, big, big]]}));
        assert_eq!(code, 400, "{big}: {v}");
        assert_eq!(envelope_code(&v), "BAD_REQUEST");
        assert!(v["detail"].as_str().unwrap().contains("too large for the model"), "{v}");
    }
    // Large but representable values: a finite answer, or a 400 saying the output overflowed.
    for x in [1e30, -1e30, 1e37, 3e38, 5e-324, 0.0] {
        let (code, v) = s.post_json(&format!("/api/v1/models/{mlp}/predict"), &json!({"inputs": [[x, -x, x, x]]}));
        assert_finite_or_refused(&format!("mlp {x}"), code, &v);
        if code == 400 {
            assert!(v["detail"].as_str().unwrap().contains("overflows") || v["detail"].as_str().unwrap().contains("too large"), "{v}");
        }
    }
    let named = json!({"input": {"sepal_length": 1e308, "sepal_width": 1, "petal_length": 1, "petal_width": 1}});
    let (code, v) = s.post_json(&format!("/api/v1/models/{mlp}/predict"), &named);
    assert_finite_or_refused("named row", code, &v);

    // Images: values outside 0..=255 (or past f32) are a 400; every pixel value in range answers.
    for px in [1e308, 1e39, 256.0, -1.0] {
        let image = vec![vec![px; 8]; 8];
        let (code, v) = s.post_json(&format!("/api/v1/models/{cnn}/predict"), &json!({"input": image}));
        assert_eq!(code, 400, "{px}: {v}");
        envelope_code(&v);
    }
    for px in [0.0, 1.0, 255.0, 5e-324] {
        let image = vec![vec![px; 8]; 8];
        let (code, v) = s.post_json(&format!("/api/v1/models/{cnn}/predict"), &json!({"input": image}));
        assert_eq!(code, 200, "{px}: {v}");
        assert!(all_finite_no_null(&v), "{px}: {v}");
    }

    // Text: any temperature in range gives text (near 0 the most probable character); out of
    // range is a 400 that gives the range.
    let pth = Path::new(env!("CARGO_MANIFEST_DIR")).join("../trainer-candle/tests/data/owner_tiny.pth");
    let (code, v) = s.upload_file("/api/v1/models?model_name=owner", &pth);
    assert_eq!(code, 200, "{v}");
    for t in [1e-300, 1e-30, 1e-3, 1.0, 10.0] {
        let (code, g) =
            s.post_json("/api/v1/models/owner/generate", &json!({"prompt": "hello", "max_length": 30, "temperature": t, "seed": 3}));
        assert_eq!(code, 200, "{t}: {g}");
        assert!(all_finite_no_null(&g), "{t}: {g}");
        assert_eq!(g["generated_text"].as_str().unwrap().chars().count(), 30, "{t}: {g}");
    }
    let (_, a) = s.post_json("/api/v1/models/owner/generate", &json!({"prompt": "he", "max_length": 20, "temperature": 1e-30, "seed": 1}));
    let (_, b) = s.post_json("/api/v1/models/owner/generate", &json!({"prompt": "he", "max_length": 20, "temperature": 1e-30, "seed": 2}));
    assert_eq!(a["generated_text"], b["generated_text"], "near 0 sampling is greedy, whatever the seed");
    for t in [0.0, -1.0, 10.5, 1e30, 1e308] {
        let (code, v) = s.post_json("/api/v1/models/owner/generate", &json!({"prompt": "hello", "temperature": t}));
        assert_eq!(code, 400, "{t}: {v}");
        assert!(v["detail"].as_str().unwrap().contains("temperature must be above 0 and at most 10"), "{v}");
    }
}

/// Text that shows a server path or an internal error.
fn leak_in(text: &str, data_dir: &Path) -> Option<String> {
    let dir = data_dir.display().to_string();
    let markers =
        [dir.as_str(), "/tmp", "os error", "Os {", "rusqlite", "called `Result::unwrap()`", "called `Option::unwrap()`", "panicked at"];
    let found = markers.into_iter().find(|m| text.contains(m));
    found.map(|m| format!("{m:?} in {text}"))
}

/// Records every answer and checks the error answers as they come.
struct Checked<'a> {
    s: &'a Server,
    refusals: usize,
}

impl Checked<'_> {
    fn check(&mut self, what: &str, code: u16, v: &Value) {
        if code >= 400 {
            envelope_code(v);
            self.refusals += 1;
            if let Some(leak) = leak_in(&v.to_string(), &self.s.data_dir) {
                panic!("{what}: {leak}");
            }
        }
    }

    fn session(&mut self, what: &str, id: &str) -> Value {
        let status = self.s.wait_ended(id);
        let (_, logs) = self.s.get(&format!("/api/v1/training/{id}/logs?limit=1000"));
        for text in [status.to_string(), logs.to_string()] {
            if let Some(leak) = leak_in(&text, &self.s.data_dir) {
                panic!("{what}: {leak}");
            }
        }
        status
    }
}

#[test]
fn no_refusal_or_session_failure_shows_a_server_path_or_internal_error_text() {
    let s = Server::start();
    let mut c = Checked { s: &s, refusals: 0 };
    let iris = std::fs::read(example("iris.csv")).unwrap();
    upload_dataset(&s, "iris", "iris.csv", &iris);
    upload_dataset(&s, "gone", "gone.csv", &iris);
    upload_dataset(&s, "broken", "broken.csv", &iris);
    upload_dataset(&s, "text", "tempest.txt", &std::fs::read(example("tempest.txt")).unwrap());

    // Refusals through the API.
    let uploads: [(&str, &str, &[u8]); 6] = [
        ("/api/v1/datasets?dataset_name=empty", "e.csv", b""),
        ("/api/v1/datasets?dataset_name=bin", "b.csv", b"\x00\xff\x00garbage"),
        ("/api/v1/datasets?dataset_name=iris", "iris.csv", b"a,label\n1,0\n"),
        ("/api/v1/datasets?dataset_name=../x", "x.csv", b"a,label\n1,0\n"),
        ("/api/v1/models?model_name=junk", "junk.safetensors", b"\xff\xff\xff\xff\xff\xff\xff\x7fjunk"),
        ("/api/v1/models?model_name=junk2", "junk.pth", b"PK\x03\x04not really a zip"),
    ];
    for (path, file, bytes) in uploads {
        let (code, v) = s.upload(path, file, bytes);
        c.check(path, code, &v);
    }
    for (method, path) in [
        ("GET", "/api/v1/models/missing"),
        ("DELETE", "/api/v1/models/missing"),
        ("GET", "/api/v1/datasets/missing"),
        ("DELETE", "/api/v1/datasets/missing"),
        ("GET", "/api/v1/training/00000000-0000-0000-0000-000000000000/status"),
        ("POST", "/api/v1/training/nope/stop"),
    ] {
        let (code, v) = crate::harness::call(s.req(method, path), None);
        c.check(path, code, &v);
    }
    for (path, body) in [
        ("/api/v1/models/missing/predict", json!({"inputs": [[1.0]]})),
        ("/api/v1/models/missing/generate", json!({"prompt": "x"})),
        ("/api/v1/training/start", json!({"model_architecture": "mlp", "dataset_name": "missing"})),
        ("/api/v1/training/start", json!({"model_architecture": "mlp", "dataset_name": "iris", "base_model": "missing"})),
        ("/api/v1/training/start", json!({"model_architecture": "mlp", "dataset_name": "text"})),
    ] {
        let (code, v) = s.post_json(path, &body);
        c.check(path, code, &v);
    }

    // A dataset whose file vanished and one whose file was overwritten, after upload.
    let (_, listed) = s.get("/api/v1/datasets");
    let file_of = |name: &str| {
        let entry = listed.as_array().unwrap().iter().find(|d| d["name"] == name).unwrap_or_else(|| panic!("{name} in {listed}"));
        std::path::PathBuf::from(entry["file_path"].as_str().unwrap())
    };
    std::fs::remove_file(file_of("gone")).unwrap();
    std::fs::write(file_of("broken"), b"\xff\xfe\x00\x01 not a table at all\n\x00").unwrap();
    for name in ["gone", "broken"] {
        // Retries are for crashed processes: a data error fails at the first attempt.
        let (code, v) = s.post_json(
            "/api/v1/training/start",
            &json!({"model_architecture": "mlp", "dataset_name": name, "epochs": 1, "max_retries": 2}),
        );
        if code == 200 {
            let id = v["session_id"].as_str().unwrap().to_owned();
            let status = c.session(name, &id);
            assert_eq!(status["state"], "failed", "{name}: {status}");
            assert_eq!(status["attempt"], 1, "{name}: {status}");
            let reason = if name == "gone" { "a file it needs is missing" } else { "dataset 'broken': " };
            assert!(status["error_message"].as_str().unwrap_or_default().contains(reason), "{name}: {status}");
            assert!(status["error_message"].as_str().is_some_and(|m| !m.is_empty()), "{name}: {status}");
        } else {
            c.check(name, code, &v);
        }
    }

    // A session whose model cannot be saved: the models directory is no longer a directory
    // (a read-only directory would not stop root, which CI may run as).
    let models = s.data_dir.join("models");
    std::fs::rename(&models, s.data_dir.join("models-away")).unwrap();
    std::fs::write(&models, b"not a directory").unwrap();
    let (code, v) = s.post_json("/api/v1/training/start", &json!({"model_architecture": "mlp", "dataset_name": "iris", "epochs": 1}));
    assert_eq!(code, 200, "{v}");
    let id = v["session_id"].as_str().unwrap().to_owned();
    let status = c.session("unsaveable model", &id);
    std::fs::remove_file(&models).unwrap();
    std::fs::rename(s.data_dir.join("models-away"), &models).unwrap();
    assert_eq!(status["state"], "failed", "{status}");
    let message = status["error_message"].as_str().unwrap();
    assert!(message.starts_with("could not save the trained model: disk error: "), "{message}");

    assert!(c.refusals >= 15, "only {} refusals were provoked", c.refusals);
    let (code, _) = s.get("/health");
    assert_eq!(code, 200);
}
