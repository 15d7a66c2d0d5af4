//! Early stopping and the best model: a run whose validation loss rises stops early, keeps its
//! best epoch's weights, and predicts exactly as a run trained only to that epoch.

use serde_json::{json, Value};

use crate::harness::{unique_name, Server};

/// A CSV of random features and random labels: nothing to learn, so a wide MLP memorises the
/// training rows and its validation loss rises after the first epochs.
fn noise_csv() -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut csv = String::from("a,b,c,d,e,f,label\n");
    for _ in 0..240 {
        let row: Vec<String> = (0..6).map(|_| format!("{:.3}", (next() % 2000) as f64 / 1000.0 - 1.0)).collect();
        csv.push_str(&format!("{},{}\n", row.join(","), next() % 3));
    }
    csv.into_bytes()
}

fn config(dataset: &str, epochs: u32) -> Value {
    json!({
        "model_architecture": "mlp", "dataset_name": dataset, "epochs": epochs, "batch_size": 8,
        "learning_rate": 0.01, "hidden_sizes": [256, 256], "validation_split": 0.3, "seed": 11,
        "device": "cpu"
    })
}

fn start(s: &Server, body: &Value) -> String {
    let (code, v) = s.post_json("/api/v1/training/start", body);
    assert_eq!(code, 200, "{v}");
    v["session_id"].as_str().unwrap().to_owned()
}

fn predict(s: &Server, model: &str, rows: &Value) -> Value {
    let (code, v) = s.post_json(&format!("/api/v1/models/{model}/predict"), &json!({ "inputs": rows }));
    assert_eq!(code, 200, "{v}");
    v["predictions"].clone()
}

#[test]
fn a_run_whose_validation_loss_rises_stops_early_and_keeps_its_best_epoch() {
    let s = Server::start();
    let dataset = unique_name("noise");
    let (code, v) = s.upload(&format!("/api/v1/datasets?dataset_name={dataset}"), "noise.csv", &noise_csv());
    assert_eq!(code, 200, "{v}");

    let mut body = config(&dataset, 60);
    body["early_stopping"] = json!({"patience": 3});
    let early = start(&s, &body);
    let status = s.wait_ended(&early);
    assert_eq!(status["state"], "completed", "{status}");
    assert_eq!(status["stopped_early"], true, "{status}");
    assert_eq!(status["config"]["early_stopping"], json!({"metric": "val_loss", "mode": "min", "patience": 3, "min_delta": 0.0}));
    assert_eq!(status["config"]["keep"], "best");
    let (done, best) = (status["current_epoch"].as_u64().unwrap(), status["best_epoch"].as_u64().unwrap());
    assert!(done < 60 && best < done, "{status}");

    // The best epoch is the history's lowest validation loss, and patience ran out after it.
    let (code, history) = s.get(&format!("/api/v1/training/{early}/history"));
    assert_eq!(code, 200, "{history}");
    let epochs = history.as_array().unwrap().clone();
    let val: Vec<(u64, f64)> = epochs.iter().map(|m| (m["epoch"].as_u64().unwrap(), m["val_loss"].as_f64().unwrap())).collect();
    let lowest = val.iter().copied().fold((0, f64::INFINITY), |a, b| if b.1 < a.1 { b } else { a });
    assert_eq!((best, status["best_metric"].as_f64().unwrap()), lowest, "{val:?}");
    assert_eq!(done, best + 3, "three epochs without improvement after the best: {val:?}");
    let (code, logs) = s.get(&format!("/api/v1/training/{early}/logs"));
    assert_eq!(code, 200);
    let text = logs.to_string();
    assert!(text.contains("stopping early: val_loss has not improved by more than 0 for 3 epochs"), "{text}");
    assert!(text.contains(&format!("keeping epoch {best}'s weights")), "{text}");

    let (code, models) = s.get("/api/v1/models");
    assert_eq!(code, 200, "{models}");
    let list = models.as_array().or(models["models"].as_array()).unwrap().clone();
    let model = list.iter().find(|m| m["name"] == early.as_str()).unwrap_or_else(|| panic!("{early} in {models}"));
    let kept = &model["metadata"]["kept"];
    assert_eq!(
        (kept["keep"].as_str(), kept["epoch"].as_u64(), kept["metric"].as_str()),
        (Some("best"), Some(best), Some("val_loss")),
        "{model}"
    );
    assert_eq!((kept["stopped_early"].as_bool(), model["metadata"]["stopped_early"].as_bool()), (Some(true), Some(true)), "{model}");
    let final_metrics = &model["metadata"]["final_metrics"];
    assert_eq!(
        (final_metrics["epoch"].as_u64(), final_metrics["val_loss"].as_f64()),
        (Some(best), Some(lowest.1)),
        "the kept epoch's: {model}"
    );

    // The same seed trained to the best epoch only, keeping its last: the same model.
    let mut body = config(&dataset, u32::try_from(best).unwrap());
    body["keep"] = json!("last");
    let short = start(&s, &body);
    let short_status = s.wait_ended(&short);
    assert_eq!((short_status["state"].as_str(), short_status["stopped_early"].as_bool()), (Some("completed"), Some(false)));
    let rows = json!([[0.1, -0.5, 0.9, 0.0, -0.2, 0.4], [-0.9, 0.8, -0.1, 0.5, 0.3, -0.7], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]);
    assert_eq!(predict(&s, &early, &rows), predict(&s, &short, &rows), "the kept model is the best epoch's");
}

#[test]
fn early_stopping_and_keep_are_checked_with_every_other_field() {
    let s = Server::start();
    let body = json!({
        "model_architecture": "mlp", "dataset_name": "iris", "validation_split": 0.0, "keep": "newest",
        "early_stopping": {"metric": "val_accuracy", "mode": "up", "patience": 0, "min_delta": -1}
    });
    let (code, v) = s.post_json("/api/v1/training/start", &body);
    assert_eq!(code, 400, "{v}");
    let fields: Vec<&str> = v["error"]["details"]["fields"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap()).collect();
    for f in ["early_stopping.metric", "early_stopping.mode", "early_stopping.patience", "early_stopping.min_delta", "keep"] {
        assert!(fields.contains(&f), "{f} in {v}");
    }
    let (code, v) = s.post_json(
        "/api/v1/training/start",
        &json!({"model_architecture": "mlp", "dataset_name": "iris", "early_stopping": {"patience": 2, "wait": 1}}),
    );
    assert_eq!(code, 422, "unknown fields are refused: {v}");
}
