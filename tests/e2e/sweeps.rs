//! Hyperparameter sweeps end to end: an 8-trial random sweep with ASHA on iris in which weak
//! trials are pruned and the best trial's model is registered as `<name>-best`; the same seed
//! gives the same trials; bad sweeps are refused with every field named.

use serde_json::{json, Value};

use crate::harness::{envelope_code, Opts, Server};

fn sweep(name: &str, pruner: &str) -> Value {
    json!({
        "name": name,
        "base": {"model_architecture": "mlp", "dataset_name": "iris", "epochs": 27, "batch_size": 16},
        "space": {"learning_rate": {"log_uniform": [0.0001, 0.1]}, "hidden_sizes": {"choice": [[16], [64, 32]]}},
        "search": "random", "trials": 8, "metric": "val_accuracy", "pruner": pruner, "seed": 7
    })
}

fn params(sweep: &Value) -> Vec<Value> {
    sweep["trials"].as_array().unwrap().iter().map(|t| t["params"].clone()).collect()
}

#[test]
fn a_random_sweep_with_asha_prunes_weak_trials_and_registers_the_best() {
    let s = Server::start_with(Opts { extra_args: vec!["--examples".into()], ..Opts::default() });
    let (code, created) = s.post_json("/api/v1/sweeps", &sweep("iris-lr", "asha"));
    assert_eq!(code, 200, "{created}");
    let id = created["sweep_id"].as_str().unwrap().to_owned();
    assert_eq!((created["state"].as_str(), created["trial_count"].as_u64()), (Some("running"), Some(8)), "{created}");
    let trials = created["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 8);
    for t in trials {
        let lr = t["params"]["learning_rate"].as_f64().unwrap();
        assert!((0.0001..=0.1).contains(&lr), "{t}");
        // Each trial is an ordinary session that knows its sweep.
        let (_, status) = s.get(&format!("/api/v1/training/{}/status", t["session_id"].as_str().unwrap()));
        assert_eq!((status["sweep_id"].as_str(), status["trial"].as_u64()), (Some(id.as_str()), t["trial"].as_u64()), "{status}");
        assert_eq!(status["config"]["learning_rate"].as_f64(), Some(lr), "{status}");
    }

    let (code, done) = s.get(&format!("/api/v1/sweeps/{id}?wait_seconds=300"));
    assert_eq!(code, 200, "{done}");
    assert_eq!(done["state"], "completed", "{done}");
    let trials = done["trials"].as_array().unwrap();
    let pruned: Vec<&Value> = trials.iter().filter(|t| t["state"] == "stopped").collect();
    let completed: Vec<&Value> = trials.iter().filter(|t| t["state"] == "completed").collect();
    assert!(!pruned.is_empty() && !completed.is_empty(), "some trials pruned, some completed: {done}");
    assert_eq!(pruned.len() + completed.len(), 8, "{done}");
    for t in &pruned {
        let why = t["error_message"].as_str().unwrap_or_default();
        assert!(why.starts_with("pruned at epoch ") && why.contains("val_accuracy") && why.ends_with("(asha)"), "{t}");
        // ASHA's rungs for 27 epochs are epochs 1, 3 and 9; the stop takes effect a little later.
        let rung: u64 = why["pruned at epoch ".len()..].split(':').next().unwrap().parse().unwrap();
        assert!([1, 3, 9].contains(&rung) && t["current_epoch"].as_u64() >= Some(rung), "{t}");
    }

    // The best is the completed trial with the highest validation accuracy, registered.
    let best = &done["best"];
    let top = completed.iter().map(|t| t["best_metric"].as_f64().unwrap()).fold(f64::MIN, f64::max);
    assert_eq!(best["value"].as_f64(), Some(top), "{done}");
    let best_trial = completed.iter().find(|t| t["trial"] == best["trial"]).unwrap_or_else(|| panic!("{done}"));
    assert_eq!(best_trial["session_id"], best["session_id"]);
    assert_eq!(done["best_model"], "iris-lr-best", "{done}");
    assert!(done["message"].as_str().unwrap().contains("registered as 'iris-lr-best'"), "{done}");
    let (_, models) = s.get("/api/v1/models");
    let model = models.as_array().unwrap().iter().find(|m| m["name"] == "iris-lr-best").unwrap_or_else(|| panic!("{models}"));
    assert_eq!(model["metadata"]["sweep_id"], id.as_str(), "{model}");
    assert_eq!(model["metadata"]["session_id"], best["session_id"], "{model}");
    let (code, v) = s.post_json("/api/v1/models/iris-lr-best/predict", &json!({"inputs": [[5.1, 3.5, 1.4, 0.2]]}));
    assert_eq!(code, 200, "{v}");
    let (_, listed) = s.get("/api/v1/sweeps");
    assert_eq!(listed[0]["sweep_id"], id.as_str(), "{listed}");

    // The same seed gives the same trials; stopping a sweep cancels what has not run.
    let (code, again) = s.post_json("/api/v1/sweeps", &sweep("iris-lr-again", "none"));
    assert_eq!(code, 200, "{again}");
    assert_eq!(params(&again), params(&done));
    let again_id = again["sweep_id"].as_str().unwrap();
    let (code, stopped) = s.post(&format!("/api/v1/sweeps/{again_id}/stop"));
    assert_eq!((code, stopped["state"].as_str()), (200, Some("stopped")), "{stopped}");
    let (_, ended) = s.get(&format!("/api/v1/sweeps/{again_id}?wait_seconds=300"));
    assert!(ended["ended_at"].is_string(), "{ended}");
    // The first trial may have finished before the stop; the last never started.
    let states: Vec<&str> = ended["trials"].as_array().unwrap().iter().map(|t| t["state"].as_str().unwrap()).collect();
    assert!(states.iter().all(|s| *s == "stopped" || *s == "completed") && states[7] == "stopped", "{ended}");
    assert_eq!(ended["state"], "stopped", "{ended}");
    let (code, v) = s.post(&format!("/api/v1/sweeps/{again_id}/stop"));
    assert_eq!((code, envelope_code(&v).as_str()), (409, "CONFLICT"), "{v}");
}

#[test]
fn bad_sweeps_are_refused_with_every_field_named() {
    let s = Server::start_with(Opts { extra_args: vec!["--examples".into()], ..Opts::default() });
    let bad = json!({
        "name": "../x",
        "base": {"model_architecture": "mlp", "dataset_name": "iris"},
        "space": {"nope": {"choice": [1]}, "dropout": {"uniform": [0.5, 0.1]}},
        "trials": 0, "pruner": "hyperband"
    });
    let (code, v) = s.post_json("/api/v1/sweeps", &bad);
    assert_eq!(code, 400, "{v}");
    let detail = v["detail"].as_str().unwrap();
    for field in ["name", "space.nope", "space.dropout", "trials", "pruner"] {
        assert!(detail.contains(field), "{field} in {detail}");
    }
    // A trial whose config the start would refuse is named with its number.
    let mut too_big = sweep("too-big", "asha");
    too_big["space"] = json!({"dropout": {"choice": [0.2, 0.95]}});
    too_big["search"] = json!("grid");
    let (code, v) = s.post_json("/api/v1/sweeps", &too_big);
    assert_eq!(code, 400, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("trial 2: dropout"), "{v}");
    let (code, v) = s.get("/api/v1/sweeps/swp_0123");
    assert_eq!(code, 404, "{v}");
}

#[test]
fn a_sweep_interrupted_by_a_server_crash_finishes_after_the_restart() {
    let mut s = Server::start_with(Opts { extra_args: vec!["--examples".into()], ..Opts::default() });
    let (code, created) = s.post_json("/api/v1/sweeps", &sweep("iris-crash", "asha"));
    assert_eq!(code, 200, "{created}");
    let id = created["sweep_id"].as_str().unwrap().to_owned();
    let third = created["trials"][2]["session_id"].as_str().unwrap().to_owned();
    s.status_until(&third, std::time::Duration::from_secs(120), |st| st["current_epoch"].as_u64() >= Some(1));
    let tmp = s.take_tmp();
    let dir = s.kill9();

    let s = Server::start_with(Opts { data_dir: Some(dir), ..Opts::default() });
    let (code, done) = s.get(&format!("/api/v1/sweeps/{id}?wait_seconds=300"));
    assert_eq!(code, 200, "{done}");
    assert_eq!(done["state"], "completed", "{done}");
    let trials = done["trials"].as_array().unwrap();
    assert!(trials.iter().all(|t| t["state"] == "completed" || t["state"] == "stopped"), "{done}");
    assert!(trials.iter().any(|t| t["state"] == "completed"), "{done}");
    assert_eq!(done["best_model"], "iris-crash-best", "{done}");
    let (_, models) = s.get("/api/v1/models");
    assert!(models.as_array().unwrap().iter().any(|m| m["name"] == "iris-crash-best"), "{models}");
    drop(tmp);
}
