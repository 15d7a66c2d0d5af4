//! The queue: priorities (higher starts first, first in first out within a priority, a queued
//! session moved by changing its priority) and dependencies between sessions.

use serde_json::{json, Value};

use crate::harness::{Opts, Server};

fn start(s: &Server, body: Value) -> String {
    let (code, v) = s.post_json("/api/v1/training/start", &body);
    assert_eq!(code, 200, "{v}");
    v["session_id"].as_str().unwrap().to_owned()
}

fn order(s: &Server) -> Vec<(String, u64)> {
    let (code, v) = s.get("/api/v1/training/queue");
    assert_eq!(code, 200, "{v}");
    v.as_array()
        .unwrap()
        .iter()
        .map(|q| (q["session_id"].as_str().unwrap().to_owned(), q["status"]["queue_position"].as_u64().unwrap()))
        .collect()
}

#[test]
fn higher_priority_starts_first_and_a_queued_session_can_be_moved() {
    let s = Server::start_with(Opts {
        extra_args: vec!["--examples".into(), "--max-concurrent-sessions".into(), "1".into()],
        ..Opts::default()
    });
    let long = start(&s, json!({"model_architecture": "mlp", "dataset_name": "digits", "epochs": 1000, "batch_size": 1}));
    let iris = |priority: Option<i64>| {
        let mut body = json!({"model_architecture": "mlp", "dataset_name": "iris", "epochs": 1});
        if let Some(p) = priority {
            body["priority"] = json!(p);
        }
        body
    };
    let a = start(&s, iris(None));
    let b = start(&s, iris(Some(0)));
    let c = start(&s, iris(Some(5)));
    let ids = |q: Vec<(String, u64)>| q.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
    assert_eq!(ids(order(&s)), [c.clone(), a.clone(), b.clone()], "priority first, then arrival");

    let (code, v) = s.patch_json(&format!("/api/v1/training/queue/{b}"), &json!({"priority": 10}));
    assert_eq!(code, 200, "{v}");
    assert_eq!((v["queue_position"].as_u64(), v["config"]["priority"].as_i64()), (Some(1), Some(10)), "{v}");
    assert_eq!(order(&s), [(b.clone(), 1), (c.clone(), 2), (a.clone(), 3)]);
    let (_, st) = s.get(&format!("/api/v1/training/{a}/status"));
    assert_eq!(st["queue_position"], 3, "{st}");

    for (body, code) in [(json!({"priority": 1001}), 400), (json!({"priority": "high"}), 422), (json!({"priority": 1, "x": 2}), 422)] {
        let (got, v) = s.patch_json(&format!("/api/v1/training/queue/{a}"), &body);
        assert_eq!(got, code, "{body}: {v}");
    }
    let (code, v) = s.patch_json(&format!("/api/v1/training/queue/{long}"), &json!({"priority": 1}));
    assert_eq!(code, 409, "a running session is not in the queue: {v}");

    // They start in the new order once the long one is stopped.
    let (code, _) = s.post(&format!("/api/v1/training/{long}/stop"));
    assert_eq!(code, 200);
    let started: Vec<String> = [&b, &c, &a]
        .iter()
        .map(|id| {
            let st = s.wait_ended(id);
            assert_eq!(st["state"], "completed", "{st}");
            st["start_time"].as_str().unwrap().to_owned()
        })
        .collect();
    assert!(started.windows(2).all(|w| w[0] <= w[1]), "started in queue order: {started:?}");
}

#[test]
fn a_session_waits_for_those_it_depends_on_and_fails_when_one_fails() {
    let s = Server::start_with(Opts {
        extra_args: vec!["--examples".into(), "--max-concurrent-sessions".into(), "1".into()],
        ..Opts::default()
    });
    let iris = json!({"model_architecture": "mlp", "dataset_name": "iris", "epochs": 1});
    let done = start(&s, iris.clone());
    assert_eq!(s.wait_ended(&done)["state"], "completed");

    let long = start(&s, json!({"model_architecture": "mlp", "dataset_name": "digits", "epochs": 1000, "batch_size": 1}));
    let a = start(&s, iris.clone());
    let mut body = iris.clone();
    body["depends_on"] = json!([a, done]);
    let b = start(&s, body);
    let mut body = iris.clone();
    body["depends_on"] = json!([b]);
    let c = start(&s, body);
    let mut body = iris.clone();
    body["depends_on"] = json!([done]);
    let d = start(&s, body);
    let (_, st) = s.get(&format!("/api/v1/training/{b}/status"));
    assert_eq!(st["queue_reason"], format!("waiting for {a} to complete"), "{st}");
    assert_eq!(st["config"]["depends_on"], json!([a, done]));

    // A is cancelled: B fails, and C, which waits for B, fails after it.
    let (code, v) = s.delete(&format!("/api/v1/training/queue/{a}"));
    assert_eq!(code, 200, "{v}");
    let st = s.wait_ended(&b);
    assert_eq!(st["state"], "failed", "{st}");
    assert_eq!(st["error_message"], format!("it depends on training session {a}, which stopped"));
    let st = s.wait_ended(&c);
    assert_eq!(
        (st["state"].as_str(), st["error_message"].as_str()),
        (Some("failed"), Some(format!("it depends on training session {b}, which failed").as_str()))
    );

    // D's dependency completed long ago: it runs once the long one stops.
    let (code, _) = s.post(&format!("/api/v1/training/{long}/stop"));
    assert_eq!(code, 200);
    assert_eq!(s.wait_ended(&d)["state"], "completed");

    let mut body = iris.clone();
    body["depends_on"] = json!(["sess_00000000000000000000000000000000", "nope"]);
    let (code, v) = s.post_json("/api/v1/training/start", &body);
    assert_eq!(code, 400, "{v}");
    assert!(v.to_string().contains("'nope' is not a session id"), "{v}");
    body["depends_on"] = json!(["sess_00000000000000000000000000000000"]);
    let (code, v) = s.post_json("/api/v1/training/start", &body);
    assert_eq!(code, 400, "{v}");
    assert!(v.to_string().contains("training session 'sess_00000000000000000000000000000000' not found"), "{v}");
}
