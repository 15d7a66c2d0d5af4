//! Training sessions through HTTP: a real run on iris, the queue, stop and cancel.

use serde_json::{json, Value};

use crate::harness::{envelope_code, example, Opts, Server};

fn start(s: &Server, body: &Value) -> (String, Value) {
    let (code, v) = s.post_json("/api/v1/training/start", body);
    assert_eq!(code, 200, "{v}");
    (v["session_id"].as_str().expect("session_id").to_owned(), v)
}

fn is_utc_iso8601(t: &str) -> bool {
    t.ends_with('Z') && t.len() >= 20 && t.as_bytes()[4] == b'-' && t.as_bytes()[10] == b'T' && trainyard_time_ok(t)
}

fn trainyard_time_ok(t: &str) -> bool {
    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).is_ok_and(|d| d.offset().is_utc())
}

#[test]
fn iris_trains_to_completion_with_metrics_logs_and_a_model() {
    let s = Server::start();
    let (code, v) = s.upload_file("/api/v1/datasets?dataset_name=iris", &example("iris.csv"));
    assert_eq!(code, 200, "{v}");
    assert_eq!((v["name"].as_str(), v["sample_count"].as_u64(), v["format"].as_str()), (Some("iris"), Some(150), Some("csv")));

    let (id, started) = start(
        &s,
        &json!({"model_architecture": "mlp", "dataset_name": "iris", "learning_rate": 0.01, "batch_size": 16, "epochs": 40,
                "optimizer": "adam", "loss_function": "cross_entropy"}),
    );
    assert!(id.starts_with("sess_"));
    assert!(["running", "queued"].contains(&started["status"].as_str().unwrap()), "{started}");
    assert!(started["message"].is_string());

    let status = s.wait_ended(&id);
    assert_eq!(status["state"], "completed", "{status}");
    assert_eq!((status["current_epoch"].as_u64(), status["total_epochs"].as_u64()), (Some(40), Some(40)));
    assert_eq!(status["config"]["dataset_name"], "iris");
    assert!(status["error_message"].is_null());
    // Property 35: every timestamp the API writes is ISO 8601 in UTC.
    for t in [&status["start_time"], &status["end_time"], &status["created_at"]] {
        assert!(t.as_str().is_some_and(is_utc_iso8601), "{t}");
    }

    let (code, m) = s.get(&format!("/api/v1/training/{id}/metrics"));
    assert_eq!(code, 200);
    assert_eq!(m["epoch"], 40);
    assert!(m["loss"].is_f64() && m["accuracy"].is_f64());
    let val_acc = m["val_accuracy"].as_f64().unwrap();
    assert!(val_acc >= 0.85, "final validation accuracy {val_acc}");

    let (_, history) = s.get(&format!("/api/v1/training/{id}/history"));
    let history = history.as_array().unwrap().clone();
    let epochs: Vec<u64> = history.iter().map(|h| h["epoch"].as_u64().unwrap()).collect();
    assert_eq!(epochs, (1..=40).collect::<Vec<_>>());
    let first = history[0]["loss"].as_f64().unwrap();
    let last = history[39]["loss"].as_f64().unwrap();
    assert!(last < first * 0.5, "loss fell from {first} to {last}");
    assert!(history.iter().all(|h| h["timestamp"].as_str().is_some_and(is_utc_iso8601)));

    let (_, logs) = s.get(&format!("/api/v1/training/{id}/logs?limit=5"));
    let logs = logs.as_array().unwrap();
    assert_eq!(logs.len(), 5);
    assert!(logs
        .iter()
        .all(|l| l["session_id"] == id.as_str() && l["level"].is_string() && l["timestamp"].as_str().is_some_and(is_utc_iso8601)));
    assert!(logs.last().unwrap()["message"].as_str().unwrap().contains("completed"), "{logs:?}");

    let (_, models) = s.get("/api/v1/models");
    let model = models.as_array().unwrap().iter().find(|m| m["name"] == id.as_str()).expect("trained model listed").clone();
    assert_eq!(
        (model["format"].as_str(), model["architecture"].as_str(), model["session_id"].as_str()),
        (Some("safetensors"), Some("mlp"), Some(id.as_str()))
    );
    assert!(model["size_mb"].is_number() && model["file_path"].is_string());
    let (code, bytes, disposition) = s.get_bytes(&format!("/api/v1/models/{id}"));
    assert_eq!(code, 200);
    assert!(disposition.unwrap_or_default().contains(".safetensors"));
    // Trained models are hashed and described when registered, like uploads.
    let hash: String = <sha2::Sha256 as sha2::Digest>::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(model["content_hash"].as_str(), Some(hash.as_str()));
    assert!(model["parameter_count"].as_u64() > Some(0), "{model}");
    let header_len = usize::try_from(u64::from_le_bytes(bytes[..8].try_into().unwrap())).unwrap();
    let header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).expect("safetensors header");
    assert!(header["__metadata__"].is_object(), "metadata in the safetensors header");

    let (_, sessions) = s.get("/api/v1/training/sessions");
    let entry = sessions.as_array().unwrap().iter().find(|e| e["session_id"] == id.as_str()).unwrap().clone();
    assert_eq!(entry["status"]["state"], "completed");
    assert_eq!(entry["status"]["current_epoch"], 40);
    assert!(entry["config"].is_object() && entry["created_at"].is_string());
}

#[test]
fn queue_cancel_and_stop() {
    let s = Server::start_with(Opts { extra_args: vec!["--examples".into()], ..Opts::default() });
    let long = json!({"model_architecture": "mlp", "dataset_name": "digits", "epochs": 1000, "batch_size": 1});
    let (first, v) = start(&s, &long);
    assert_eq!(v["status"], "running", "{v}");
    let (second, v) = start(&s, &long);
    assert_eq!((v["status"].as_str(), v["queue_position"].as_u64()), (Some("queued"), Some(1)), "{v}");
    let (third, v) = start(&s, &long);
    assert_eq!(v["queue_position"], 2);

    let (_, queue) = s.get("/api/v1/training/queue");
    let ids: Vec<&str> = queue.as_array().unwrap().iter().map(|q| q["session_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [second.as_str(), third.as_str()]);
    assert_eq!(queue[0]["status"]["state"], "queued");

    let (code, v) = s.delete(&format!("/api/v1/training/queue/{second}"));
    assert_eq!(code, 200, "{v}");
    assert!(v["message"].is_string());
    let (_, st) = s.get(&format!("/api/v1/training/{second}/status"));
    assert_eq!(st["state"], "stopped");
    let (_, st) = s.get(&format!("/api/v1/training/{third}/status"));
    assert_eq!(st["queue_position"], 1);
    let (code, v) = s.delete(&format!("/api/v1/training/queue/{first}"));
    assert_eq!((code, envelope_code(&v).as_str()), (409, "CONFLICT"));

    let (code, v) = s.post(&format!("/api/v1/training/{first}/stop"));
    assert_eq!(code, 200, "{v}");
    let status = s.wait_ended(&first);
    assert_eq!(status["state"], "stopped");
    assert_eq!(status["model_name"], first.as_str(), "stop saves the current weights as a model");
    let (code, bytes, _) = s.get_bytes(&format!("/api/v1/models/{first}"));
    assert_eq!(code, 200);
    assert!(bytes.len() > 1000, "a real model file");

    // The queued one starts when the first ends; stop it too.
    let (code, _) = s.post(&format!("/api/v1/training/{third}/stop"));
    assert_eq!(code, 200);
    assert_eq!(s.wait_ended(&third)["state"], "stopped");
    let (code, v) = s.post(&format!("/api/v1/training/{third}/stop"));
    assert_eq!((code, envelope_code(&v).as_str()), (409, "CONFLICT"));
}

#[test]
fn architecture_dataset_mismatch_is_a_400_naming_both() {
    let s = Server::start_with(Opts { extra_args: vec!["--examples".into()], ..Opts::default() });
    let (code, v) = s.post_json("/api/v1/training/start", &json!({"model_architecture": "mlp", "dataset_name": "tempest"}));
    assert_eq!((code, envelope_code(&v).as_str()), (400, "INVALID_CONFIG"));
    let msg = v["detail"].as_str().unwrap();
    assert!(msg.contains("mlp") && msg.contains("tempest"), "{msg}");
}

#[test]
fn two_sessions_train_at_once_when_allowed() {
    let s = Server::start_with(Opts {
        extra_args: vec!["--examples".into(), "--max-concurrent-sessions".into(), "2".into()],
        ..Opts::default()
    });
    let body = json!({"model_architecture": "mlp", "dataset_name": "wine", "epochs": 15, "learning_rate": 0.01});
    let (a, va) = start(&s, &body);
    let (b, vb) = start(&s, &body);
    assert_eq!((va["status"].as_str(), vb["status"].as_str()), (Some("running"), Some("running")));
    // The API answers while both train.
    assert_eq!(s.get("/api/v1/system/info").0, 200);
    assert_eq!(s.wait_ended(&a)["state"], "completed");
    assert_eq!(s.wait_ended(&b)["state"], "completed");
    let losses = |id: &str| -> Vec<f64> {
        let (_, h) = s.get(&format!("/api/v1/training/{id}/history"));
        h.as_array().unwrap().iter().map(|m| m["loss"].as_f64().unwrap()).collect()
    };
    let (la, lb) = (losses(&a), losses(&b));
    assert_eq!(la.len(), 15);
    assert_eq!(la, lb, "the same seed on the same data trains identically on the CPU");
}
