//! Live control of a running session from a chat: a new learning rate from the next batch on,
//! and a snapshot of the weights saved as a registry model while the run goes on.

use std::time::Duration;

use serde_json::json;

use crate::harness::{envelope_code, Opts, Server};

#[test]
fn a_running_session_takes_a_new_learning_rate_and_gives_a_snapshot() {
    let s = Server::start_with(Opts { extra_args: vec!["--examples".into()], ..Opts::default() });
    // Batches of one: thousands of steps, so the run is still going while it is changed.
    let body = json!({"model_architecture": "mlp", "dataset_name": "iris", "epochs": 1000, "batch_size": 1, "learning_rate": 0.001});
    let (code, started) = s.post_json("/api/v1/training/start", &body);
    assert_eq!(code, 200, "{started}");
    let id = started["session_id"].as_str().unwrap().to_owned();
    s.status_until(&id, Duration::from_secs(120), |st| st["current_epoch"].as_u64() >= Some(1));

    // Refused like the start config would refuse it, or for a wrong shape.
    let live = format!("/api/v1/training/{id}");
    let (code, v) = s.patch_json(&live, &json!({"learning_rate": 5.0}));
    assert_eq!(code, 400, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("learning_rate"), "{v}");
    let (code, v) = s.patch_json(&live, &json!({"learning_rate": "fast"}));
    assert_eq!(code, 422, "{v}");
    let (code, v) = s.patch_json(&live, &json!({"learning_rate": 0.0005, "epochs": 3}));
    assert_eq!(code, 422, "{v}");

    let (code, status) = s.patch_json(&live, &json!({"learning_rate": 0.0005}));
    assert_eq!(code, 200, "{status}");
    assert_eq!(status["state"], "running", "{status}");
    // Epochs that had finished when the change was made trained at the old rate.
    let done_before = status["current_epoch"].as_u64().unwrap();

    // A snapshot: a registry model now, which predicts, while the run goes on.
    let (code, model) = s.post_json(&format!("{live}/checkpoint"), &json!({"model_name": "iris-midway"}));
    assert_eq!(code, 200, "{model}");
    assert_eq!(model["name"], "iris-midway", "{model}");
    assert_eq!(model["metadata"]["snapshot"], true, "{model}");
    assert_eq!(model["metadata"]["session_id"], id.as_str(), "{model}");
    let (code, v) = s.post_json("/api/v1/models/iris-midway/predict", &json!({"inputs": [[5.1, 3.5, 1.4, 0.2]]}));
    assert_eq!(code, 200, "{v}");
    let (code, v) = s.post_json(&format!("{live}/checkpoint"), &json!({"model_name": "iris-midway"}));
    assert_eq!((code, envelope_code(&v).as_str()), (409, "CONFLICT"), "{v}");
    let (code, v) = s.post_json(&format!("{live}/checkpoint"), &json!({"model_name": "../etc"}));
    assert_eq!(code, 400, "{v}");

    // A few more epochs, then stop; each epoch shows the rate its last batch trained at.
    s.status_until(&id, Duration::from_secs(120), |st| st["current_epoch"].as_u64() >= Some(done_before + 3));
    let (code, v) = s.post(&format!("{live}/stop"));
    assert_eq!(code, 200, "{v}");
    let ended = s.wait_ended(&id);
    assert_eq!(ended["state"], "stopped", "{ended}");
    let (_, history) = s.get(&format!("{live}/history"));
    let rates: Vec<(u64, f64)> =
        history.as_array().unwrap().iter().map(|m| (m["epoch"].as_u64().unwrap(), m["learning_rate"].as_f64().unwrap())).collect();
    // The old rate up to the epoch the change came in, the new one from there on.
    let switched = rates.iter().position(|(_, r)| *r == 0.0005).unwrap_or_else(|| panic!("{rates:?}"));
    assert!(rates[..switched].iter().all(|(_, r)| *r == 0.001) && rates[switched..].iter().all(|(_, r)| *r == 0.0005), "{rates:?}");
    assert!(switched as u64 >= done_before && rates.len() - switched >= 2, "changed after epoch {done_before}: {rates:?}");
    let (_, logs) = s.get(&format!("{live}/logs?limit=1000"));
    let logs: Vec<&str> = logs.as_array().unwrap().iter().map(|l| l["message"].as_str().unwrap()).collect();
    assert!(logs.contains(&"learning rate set to 0.0005 from the next batch on; it was 0.001"), "{logs:?}");
    assert!(logs.iter().any(|l| l.starts_with("snapshot saved as model 'iris-midway' after ")), "{logs:?}");

    // An ended session takes neither.
    let (code, v) = s.patch_json(&live, &json!({"learning_rate": 0.01}));
    assert_eq!((code, envelope_code(&v).as_str()), (409, "CONFLICT"), "{v}");
    let (code, v) = s.post_json(&format!("{live}/checkpoint"), &json!({"model_name": "too-late"}));
    assert_eq!(code, 409, "{v}");
}
