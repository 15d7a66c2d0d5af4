//! The owner's character-level LSTM through HTTP: the bot's exact request, resuming after a
//! crash, fine-tuning from a PyTorch checkpoint, and generation.

use serde_json::{json, Value};

use crate::harness::{envelope_code, Opts, Server};

/// The start request the owner's bot sends, on the first dataset it lists.
fn bot_request(s: &Server, epochs: u32) -> Value {
    let (_, datasets) = s.get("/api/v1/datasets");
    let first = datasets[0]["name"].as_str().expect("a dataset").to_owned();
    json!({"model_architecture": "custom_ai_model", "dataset_name": first, "learning_rate": 0.0001,
           "batch_size": 16, "epochs": epochs, "optimizer": "adam", "loss_function": "cross_entropy"})
}

fn start(s: &Server, body: &Value) -> String {
    let (code, v) = s.post_json("/api/v1/training/start", body);
    assert_eq!(code, 200, "{v}");
    v["session_id"].as_str().unwrap().to_owned()
}

fn losses(s: &Server, id: &str) -> Vec<f64> {
    let (_, h) = s.get(&format!("/api/v1/training/{id}/history"));
    h.as_array().unwrap().iter().map(|m| m["loss"].as_f64().unwrap()).collect()
}

#[test]
fn the_bots_request_trains_the_char_lstm_and_the_model_generates() {
    let s = Server::start_with(Opts { extra_args: vec!["--examples".into()], ..Opts::default() });
    let id = start(&s, &bot_request(&s, 3));
    let status = s.wait_ended(&id);
    assert_eq!(status["state"], "completed", "{status}");
    assert_eq!(status["config"]["model_architecture"], "custom_ai_model");
    let l = losses(&s, &id);
    assert_eq!(l.len(), 3);
    assert!(l[2] < l[0], "the loss falls: {l:?}");
    let (_, m) = s.get(&format!("/api/v1/training/{id}/metrics"));
    assert!(m["loss"].is_f64() && m["accuracy"].is_f64() && m["val_accuracy"].is_f64(), "{m}");

    let (code, g) = s.post_json(
        &format!("/api/v1/models/{id}/generate"),
        &json!({"prompt": "PROSPERO:\u{1F600}", "max_length": 80, "temperature": 0.7, "seed": 7}),
    );
    assert_eq!(code, 200, "{g}");
    assert_eq!(g["generated_text"].as_str().unwrap().chars().count(), 80);
    assert_eq!(g["unknown_characters"], json!(["\u{1F600}"]));
    let (_, again) = s.post_json(
        &format!("/api/v1/models/{id}/generate"),
        &json!({"prompt": "PROSPERO:", "max_length": 80, "temperature": 0.7, "seed": 7}),
    );
    assert_eq!(again["generated_text"], g["generated_text"], "a seed makes generation reproducible");

    let (code, v) = s.post_json(&format!("/api/v1/models/{id}/generate"), &json!({"prompt": "x", "max_length": 0}));
    assert_eq!((code, envelope_code(&v).as_str()), (400, "BAD_REQUEST"));
    let (code, v) = s.post_json("/api/v1/training/start", &json!({"model_architecture": "custom_ai_model", "dataset_name": "iris"}));
    assert_eq!((code, envelope_code(&v).as_str()), (400, "INVALID_CONFIG"));
    assert!(v["detail"].as_str().unwrap().contains("iris"), "{v}");
}

#[test]
fn a_killed_char_lstm_run_resumes_from_its_checkpoint() {
    let mut s = Server::start_with(Opts { extra_args: vec!["--examples".into()], ..Opts::default() });
    let body = json!({"model_architecture": "char_lstm", "dataset_name": "tempest", "epochs": 3, "batch_size": 32,
                      "learning_rate": 0.002, "hidden_size": 64, "embedding_dim": 32, "sequence_length": 50});
    let id = start(&s, &body);
    let (_, st) = s.get(&format!("/api/v1/training/{id}/status?wait_seconds=240&min_epoch=1"));
    assert!(st["current_epoch"].as_u64() >= Some(1), "{st}");
    let tmp = s.take_tmp();
    let dir = s.kill9();

    let s = Server::start_with(Opts { data_dir: Some(dir), ..Opts::default() });
    let status = s.wait_ended(&id);
    assert_eq!(status["state"], "completed", "{status}");
    assert_eq!(status["current_epoch"], 3);
    let (_, h) = s.get(&format!("/api/v1/training/{id}/history"));
    let epochs: Vec<u64> = h.as_array().unwrap().iter().map(|m| m["epoch"].as_u64().unwrap()).collect();
    assert_eq!(epochs, [1, 2, 3], "no duplicate or missing epochs");
    let (_, logs) = s.get(&format!("/api/v1/training/{id}/logs?limit=1000"));
    assert!(logs.as_array().unwrap().iter().any(|l| l["message"].as_str().unwrap().contains("resumed from the checkpoint")), "{logs}");
    drop(tmp);
}

#[test]
fn fine_tuning_from_the_owners_pytorch_checkpoint_extends_its_vocabulary() {
    let s = Server::start_with(Opts { extra_args: vec!["--examples".into()], ..Opts::default() });
    let pth = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../trainer-candle/tests/data/owner_tiny.pth");
    let (code, v) = s.upload_file("/api/v1/models?model_name=owner", &pth);
    assert_eq!((code, v["format"].as_str()), (200, Some("pytorch")), "{v}");

    // The checkpoint's generation works before any training.
    let (code, g) = s.post_json("/api/v1/models/owner/generate", &json!({"prompt": "hello", "max_length": 20, "seed": 1}));
    assert_eq!(code, 200, "{g}");
    assert!(g["generated_text"].as_str().unwrap().chars().all(|c| "hello world\n".contains(c)));

    // A session whose sizes differ from the checkpoint's is refused, saying what differs.
    let (code, v) = s.post_json(
        "/api/v1/training/start",
        &json!({"model_architecture": "custom_ai_model", "dataset_name": "tempest", "base_model": "owner"}),
    );
    assert_eq!((code, envelope_code(&v).as_str()), (400, "INVALID_CONFIG"));
    assert!(v["detail"].as_str().unwrap().contains("embedding_dim is 4 in the base model but 128"), "{v}");

    let id = start(
        &s,
        &json!({"model_architecture": "custom_ai_model", "dataset_name": "tempest", "base_model": "owner", "embedding_dim": 4,
                "hidden_size": 3, "sequence_length": 50, "epochs": 1, "batch_size": 64, "learning_rate": 0.01}),
    );
    let status = s.wait_ended(&id);
    assert_eq!(status["state"], "completed", "{status}");
    let (_, logs) = s.get(&format!("/api/v1/training/{id}/logs?limit=1000"));
    assert!(
        logs.as_array().unwrap().iter().any(|l| l["message"].as_str().unwrap().contains("extending the vocabulary from 9 to")),
        "{logs}"
    );
    let (_, models) = s.get("/api/v1/models");
    let trained = models.as_array().unwrap().iter().find(|m| m["name"] == id.as_str()).unwrap().clone();
    assert_eq!(trained["metadata"]["base_model"], "owner");
    let (code, g) = s.post_json(&format!("/api/v1/models/{id}/generate"), &json!({"prompt": "ARIEL", "max_length": 30}));
    assert_eq!(code, 200, "{g}");
    // A table model cannot generate text.
    let header = br#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let table_model = [&(header.len() as u64).to_le_bytes()[..], header, &[0u8; 4]].concat();
    let (code, v) = s.upload("/api/v1/models?model_name=blob", "w.safetensors", &table_model);
    assert_eq!(code, 200, "{v}");
    let (code, v) = s.post_json("/api/v1/models/blob/generate", &json!({"prompt": "x"}));
    assert_eq!((code, envelope_code(&v).as_str()), (400, "UNSUPPORTED_MODEL"));
}

#[test]
fn a_stopped_char_lstm_session_leaves_a_usable_model() {
    let s = Server::start_with(Opts { extra_args: vec!["--examples".into()], ..Opts::default() });
    let id = start(&s, &bot_request(&s, 200));
    let (_, st) = s.get(&format!("/api/v1/training/{id}/status?wait_seconds=240&min_epoch=1"));
    assert_eq!(st["state"], "running", "{st}");
    let (code, _) = s.post(&format!("/api/v1/training/{id}/stop"));
    assert_eq!(code, 200);
    let status = s.wait_ended(&id);
    assert_eq!(status["state"], "stopped");
    assert!(status["current_epoch"].as_u64().unwrap() >= 1);
    let (code, g) = s.post_json(&format!("/api/v1/models/{id}/generate"), &json!({"prompt": "To be", "max_length": 40, "seed": 3}));
    assert_eq!(code, 200, "{g}");
    assert_eq!(g["generated_text"].as_str().unwrap().chars().count(), 40);
}
