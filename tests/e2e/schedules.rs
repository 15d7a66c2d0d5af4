//! Learning-rate schedules end to end: each epoch's `learning_rate` for every schedule, a
//! schedule continued exactly across a kill -9 and resume, and the new knobs validated.

use std::f64::consts::PI;

use serde_json::{json, Value};

use crate::harness::{Opts, Server};

fn rates(s: &Server, session: &str) -> Vec<f64> {
    let (code, history) = s.get(&format!("/api/v1/training/{session}/history"));
    assert_eq!(code, 200, "{history}");
    history.as_array().unwrap().iter().map(|m| m["learning_rate"].as_f64().unwrap_or_else(|| panic!("{m}"))).collect()
}

/// A server with the example datasets (iris among them) registered.
fn server() -> Server {
    Server::start_with(Opts { extra_args: vec!["--examples".into()], ..Opts::default() })
}

fn train(s: &Server, extra: Value) -> String {
    let mut body =
        json!({"model_architecture": "mlp", "dataset_name": "iris", "epochs": 6, "batch_size": 16, "learning_rate": 0.01, "device": "cpu"});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let (code, v) = s.post_json("/api/v1/training/start", &body);
    assert_eq!(code, 200, "{v}");
    let id = v["session_id"].as_str().unwrap().to_owned();
    let status = s.wait_ended(&id);
    assert_eq!(status["state"], "completed", "{status}");
    id
}

fn assert_close(got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= 1e-9 * w.abs().max(1e-9), "{got:?} vs {want:?}");
    }
}

#[test]
fn each_schedule_sets_each_epochs_learning_rate() {
    let s = server();
    let constant = train(&s, json!({}));
    assert_close(&rates(&s, &constant), &[0.01; 6]);

    let step = train(&s, json!({"lr_schedule": {"type": "step", "step_size": 2, "gamma": 0.5}}));
    assert_close(&rates(&s, &step), &[0.01, 0.01, 0.005, 0.005, 0.0025, 0.0025]);

    let exp = train(&s, json!({"lr_schedule": {"type": "exponential", "gamma": 0.9, "warmup_epochs": 2}}));
    assert_close(&rates(&s, &exp), &[0.005, 0.01, 0.01, 0.009, 0.0081, 0.00729]);

    let cosine = train(&s, json!({"lr_schedule": {"type": "cosine", "min_lr": 0.001}}));
    let want: Vec<f64> = (0..6).map(|i| 0.001 + 0.009 * (1.0 + (PI * f64::from(i) / 6.0).cos()) / 2.0).collect();
    assert_close(&rates(&s, &cosine), &want);

    let onecycle = train(&s, json!({"lr_schedule": {"type": "onecycle", "max_lr": 0.05}}));
    let r = rates(&s, &onecycle);
    let peak = r.iter().copied().fold(0.0, f64::max);
    let top = r.iter().position(|x| *x == peak).unwrap();
    assert!(peak <= 0.05 && r[0] > 0.05 / 25.0 && r[5] < 0.05 / 25.0, "{r:?}");
    assert!(r[..=top].windows(2).all(|w| w[0] <= w[1]) && r[top..].windows(2).all(|w| w[0] >= w[1]), "{r:?}");

    let plateau = train(&s, json!({"lr_schedule": {"type": "plateau", "factor": 0.5, "patience": 0}, "epochs": 12, "learning_rate": 0.5}));
    let r = rates(&s, &plateau);
    assert!(r.windows(2).all(|w| w[0] >= w[1]), "never rises: {r:?}");
    assert!(r.iter().all(|x| (0..12).any(|k| (x - 0.5 * 0.5f64.powi(k)).abs() < 1e-12)), "cut by halves: {r:?}");

    let (code, status) = s.get(&format!("/api/v1/training/{step}/status"));
    assert_eq!(code, 200);
    assert_eq!(status["config"]["lr_schedule"], json!({"type": "step", "step_size": 2, "gamma": 0.5, "warmup_epochs": 0}));
    assert_eq!((status["config"]["weight_decay"].as_f64(), status["config"]["label_smoothing"].as_f64()), (Some(0.0), Some(0.0)));
    let tuned = train(&s, json!({"optimizer": "adamw", "clip_grad_norm": 1.0, "label_smoothing": 0.1}));
    let (_, status) = s.get(&format!("/api/v1/training/{tuned}/status"));
    assert_eq!((status["config"]["weight_decay"].as_f64(), status["config"]["clip_grad_norm"].as_f64()), (Some(0.01), Some(1.0)));
}

#[test]
fn a_schedule_continues_exactly_across_a_kill_and_resume() {
    let mut s = Server::start_with(Opts { extra_args: vec!["--examples".into()], ..Opts::default() });
    let body = json!({
        "model_architecture": "mlp", "dataset_name": "digits", "epochs": 5, "batch_size": 1, "learning_rate": 0.001,
        "device": "cpu", "lr_schedule": {"type": "step", "step_size": 1, "gamma": 0.5}
    });
    let (code, v) = s.post_json("/api/v1/training/start", &body);
    assert_eq!(code, 200, "{v}");
    let id = v["session_id"].as_str().unwrap().to_owned();
    s.status_until(&id, std::time::Duration::from_secs(120), |st| st["current_epoch"].as_u64() >= Some(2));
    let tmp = s.take_tmp();
    let dir = s.kill9();
    let s = Server::start_with(Opts { data_dir: Some(dir), ..Opts::default() });
    assert_eq!(s.wait_ended(&id)["state"], "completed");
    assert_close(&rates(&s, &id), &[0.001, 0.0005, 0.00025, 0.000125, 0.0000625]);
    let (_, logs) = s.get(&format!("/api/v1/training/{id}/logs"));
    assert!(logs.to_string().contains("resumed from the checkpoint after epoch"), "{logs}");
    drop(tmp);
}

#[test]
fn schedules_and_knobs_are_checked_field_by_field() {
    let s = Server::start();
    let body = json!({
        "model_architecture": "mlp", "dataset_name": "iris", "epochs": 5, "loss_function": "mse",
        "lr_schedule": {"type": "step", "gamma": 1.5, "min_lr": 0.1, "warmup_epochs": 5},
        "weight_decay": 2.0, "clip_grad_norm": 0.0, "label_smoothing": 0.1
    });
    let (code, v) = s.post_json("/api/v1/training/start", &body);
    assert_eq!(code, 400, "{v}");
    let fields: Vec<&str> = v["error"]["details"]["fields"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap()).collect();
    for f in [
        "lr_schedule.min_lr",
        "lr_schedule.gamma",
        "lr_schedule.step_size",
        "lr_schedule.warmup_epochs",
        "weight_decay",
        "clip_grad_norm",
        "label_smoothing",
    ] {
        assert!(fields.contains(&f), "{f} in {v}");
    }
    let (code, v) = s.post_json(
        "/api/v1/training/start",
        &json!({"model_architecture": "mlp", "dataset_name": "iris", "lr_schedule": {"type": "linear"}}),
    );
    assert_eq!(code, 400, "{v}");
    assert!(v.to_string().contains("unknown schedule"), "{v}");
}
