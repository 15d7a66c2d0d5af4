//! Each session trains in a process of its own: whatever a run does (outgrow its memory limit,
//! panic, stall, get killed), it fails alone with a message a person understands, the queue
//! moves on, and the API keeps answering. Failures are injected into the run processes of
//! debug builds with `TRAINYARD_TEST_FAILPOINT=<dataset>=<action>`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{envelope_code, example, Opts, Server};

/// A server whose runs on dataset `doomed` (a copy of iris) misbehave as `action` says.
fn server_with_failpoint(action: &str, extra_args: &[&str]) -> Server {
    let s = Server::start_with(Opts {
        extra_args: extra_args.iter().map(|a| (*a).to_owned()).chain(["--examples".to_owned()]).collect(),
        env: vec![("TRAINYARD_TEST_FAILPOINT".to_owned(), format!("doomed={action}"))],
        ..Opts::default()
    });
    let (code, body) = s.upload_file("/api/v1/datasets?dataset_name=doomed", &example("iris.csv"));
    assert_eq!(code, 200, "{body}");
    s
}

fn start(s: &Server, body: &Value) -> String {
    let (code, started) = s.post_json("/api/v1/training/start", body);
    assert_eq!(code, 200, "{started}");
    started["session_id"].as_str().unwrap().to_owned()
}

/// A long mlp session on `dataset`: thousands of batches, so it is still running when looked at.
fn long_run(dataset: &str) -> Value {
    json!({"model_architecture": "mlp", "dataset_name": dataset, "epochs": 1000, "batch_size": 1})
}

fn logs_of(s: &Server, id: &str) -> Vec<String> {
    let (_, logs) = s.get(&format!("/api/v1/training/{id}/logs?limit=200"));
    logs.as_array().unwrap().iter().map(|l| l["message"].as_str().unwrap().to_owned()).collect()
}

fn assert_healthy(s: &Server) {
    let (code, body) = s.get("/api/v1/training/sessions");
    assert_eq!(code, 200, "the API answers: {body}");
}

#[test]
fn a_run_past_its_memory_limit_fails_alone_while_another_completes() {
    let s = server_with_failpoint("grow:64", &["--run-memory-limit-mb", "700", "--max-concurrent-sessions", "2"]);
    let hog = start(&s, &long_run("doomed"));
    let fine = start(&s, &json!({"model_architecture": "mlp", "dataset_name": "iris", "epochs": 30}));
    assert_healthy(&s);
    let hog_status = s.wait_ended(&hog);
    assert_eq!(hog_status["state"], "failed", "{hog_status}");
    let message = hog_status["error_message"].as_str().unwrap();
    assert!(message.starts_with("out of memory: the run "), "{message}");
    assert!(message.contains("(limit 700 MB)"), "{message}");
    assert!(hog_status["peak_memory_mb"].as_u64().unwrap() > 300, "{hog_status}");
    assert!(logs_of(&s, &hog).iter().any(|l| l == &format!("training failed: {message}")), "the log says the same");
    assert_eq!(s.wait_ended(&fine)["state"], "completed");
    assert_healthy(&s);
}

#[test]
fn a_run_killed_alone_fails_and_the_next_queued_session_starts() {
    let s = server_with_failpoint("stall", &[]);
    let stuck = start(&s, &long_run("doomed"));
    let next = start(&s, &json!({"model_architecture": "mlp", "dataset_name": "iris", "epochs": 3}));
    let running = s.status_until(&stuck, Duration::from_secs(60), |st| st["pid"].is_u64() && st["memory_mb"].as_u64() > Some(0));
    let pid = running["pid"].as_u64().unwrap_or_else(|| panic!("a running session reports its process: {running}"));
    assert!(running["peak_memory_mb"].as_u64() >= running["memory_mb"].as_u64(), "{running}");
    let (_, queued) = s.get(&format!("/api/v1/training/{next}/status"));
    assert_eq!(queued["state"], "queued", "{queued}");
    assert_eq!(queued["queue_reason"], "waiting for a running session to finish (1 of 1 allowed at once)", "{queued}");

    let killed = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    assert!(killed.success());
    let ended = s.wait_ended(&stuck);
    assert_eq!(ended["state"], "failed", "{ended}");
    let message = ended["error_message"].as_str().unwrap();
    assert!(message.starts_with("the training process was killed (signal 9)"), "{message}");
    assert_eq!(s.wait_ended(&next)["state"], "completed");
    assert_healthy(&s);
}

#[test]
fn a_killed_run_is_retried_from_its_last_checkpoint() {
    let s = Server::start_with(Opts { extra_args: vec!["--examples".into()], ..Opts::default() });
    let mut body = long_run("iris");
    body["max_retries"] = json!(1);
    let id = start(&s, &body);
    let running = s.status_until(&id, Duration::from_secs(120), |st| st["pid"].is_u64() && st["current_epoch"].as_u64() >= Some(2));
    assert_eq!(running["attempt"], 1, "{running}");
    let pid = running["pid"].as_u64().unwrap_or_else(|| panic!("a running session reports its process: {running}"));
    let killed = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    assert!(killed.success());

    // The second attempt trains on past the epoch the first was killed in; then it is stopped.
    let after = running["current_epoch"].as_u64().unwrap() + 2;
    let retried = s.status_until(&id, Duration::from_secs(120), |st| st["attempt"] == 2 && st["current_epoch"].as_u64() >= Some(after));
    assert_eq!(retried["state"], "running", "{retried}");
    assert_ne!(retried["pid"].as_u64(), Some(pid), "{retried}");
    let (code, v) = s.post(&format!("/api/v1/training/{id}/stop"));
    assert_eq!(code, 200, "{v}");
    let ended = s.wait_ended(&id);
    assert_eq!(ended["state"], "stopped", "{ended}");
    assert_eq!(ended["attempt"], 2, "{ended}");
    assert_eq!(ended["config"]["max_retries"], 1, "{ended}");
    let logs = logs_of(&s, &id);
    let retry = logs.iter().position(|l| {
        l.starts_with("the run failed: the training process was killed (signal 9)")
            && l.ends_with("; retry 1 of 1 (attempt 2) from the last checkpoint")
    });
    let retry = retry.unwrap_or_else(|| panic!("the log says why it was retried: {logs:?}"));
    assert!(logs[retry..].iter().any(|l| l.starts_with("resumed from the checkpoint after epoch ")), "{logs:?}");
    // Every epoch is in the history once, in order, across the two processes.
    let (_, history) = s.get(&format!("/api/v1/training/{id}/history"));
    let epochs_seen: Vec<u64> = history.as_array().unwrap().iter().map(|m| m["epoch"].as_u64().unwrap()).collect();
    let last = ended["current_epoch"].as_u64().unwrap();
    assert!(last >= after, "{ended}");
    assert_eq!(epochs_seen, (1..=last).collect::<Vec<u64>>(), "{history}");
}

#[test]
fn a_run_that_crashes_at_every_attempt_fails_once_its_retries_are_spent() {
    let s = server_with_failpoint("panic", &[]);
    let id = start(&s, &json!({"model_architecture": "mlp", "dataset_name": "doomed", "epochs": 5, "max_retries": 2}));
    let ended = s.wait_ended(&id);
    assert_eq!(ended["state"], "failed", "{ended}");
    assert_eq!(ended["attempt"], 3, "{ended}");
    assert_eq!(ended["error_message"], "the training process crashed: failpoint: injected panic");
    let retries: Vec<String> = logs_of(&s, &id).into_iter().filter(|l| l.starts_with("the run failed: ")).collect();
    assert_eq!(retries.len(), 2, "{retries:?}");
    assert!(retries[0].ends_with("retry 1 of 2 (attempt 2) from the last checkpoint"), "{retries:?}");
    assert!(retries[1].ends_with("retry 2 of 2 (attempt 3) from the last checkpoint"), "{retries:?}");
    assert_healthy(&s);
}

/// A server with the failpoint `action` (and `extra_args`), once a run of the failpoint's
/// dataset on it has failed, and that run's `error_message`.
fn failed_run(action: &str, extra_args: &[&str]) -> (Server, String) {
    let s = server_with_failpoint(action, extra_args);
    let id = start(&s, &long_run("doomed"));
    let ended = s.wait_ended(&id);
    assert_eq!(ended["state"], "failed", "{ended}");
    let message = ended["error_message"].as_str().unwrap().to_owned();
    (s, message)
}

#[test]
fn a_panicking_run_fails_with_the_panic_message() {
    let (s, message) = failed_run("panic", &[]);
    assert_eq!(message, "the training process crashed: failpoint: injected panic");
    assert_healthy(&s);
}

#[test]
fn an_aborting_run_is_described_by_its_signal() {
    let (s, message) = failed_run("abort", &[]);
    assert!(message.starts_with("the training process crashed (signal 6, aborted)"), "{message}");
    assert_healthy(&s);
}

#[test]
fn a_run_that_makes_no_progress_is_killed_after_the_stall_timeout() {
    let (_, message) = failed_run("stall", &["--run-stall-timeout-secs", "2"]);
    assert!(message.starts_with("the run made no progress"), "{message}");
    assert!(message.contains("--run-stall-timeout-secs"), "{message}");
}

#[test]
fn sessions_are_estimated_refused_when_they_can_never_fit_and_queued_with_a_reason() {
    let s =
        Server::start_with(Opts { extra_args: vec!["--examples".into(), "--run-memory-limit-mb".into(), "600".into()], ..Opts::default() });
    // vgg16 holds 134 million parameters: weights, gradients and Adam's state alone pass 2 GB.
    let (code, body) = s.post_json("/api/v1/training/start", &json!({"model_architecture": "vgg16", "dataset_name": "digits_png"}));
    assert_eq!(code, 400, "{body}");
    assert_eq!(envelope_code(&body), "INSUFFICIENT_MEMORY");
    let message = body["detail"].as_str().unwrap();
    assert!(message.contains("600 MB a run may use") && message.contains("batch_size"), "{message}");

    let (code, started) =
        s.post_json("/api/v1/training/start", &json!({"model_architecture": "cnn", "dataset_name": "digits_png", "epochs": 2}));
    assert_eq!(code, 200, "{started}");
    let estimate = started["estimated_memory_mb"].as_u64().unwrap_or_else(|| panic!("an estimate: {started}"));
    assert!(estimate > 0 && estimate < 600, "{started}");
    assert_eq!(started["device"], "cpu");
    let ended = s.wait_ended(started["session_id"].as_str().unwrap());
    assert_eq!(ended["state"], "completed", "{ended}");
    assert_eq!(ended["estimated_memory_mb"].as_u64(), Some(estimate));
    assert!(ended["peak_memory_mb"].as_u64().unwrap() > 0, "{ended}");

    // A reserve larger than any machine keeps every session waiting, saying for what.
    let s = Server::start_with(Opts {
        extra_args: vec!["--examples".into(), "--memory-reserve-mb".into(), "100000000".into()],
        ..Opts::default()
    });
    let id = start(&s, &json!({"model_architecture": "mlp", "dataset_name": "iris"}));
    let (_, st) = s.get(&format!("/api/v1/training/{id}/status"));
    assert_eq!(st["state"], "queued", "{st}");
    let reason = st["queue_reason"].as_str().unwrap_or_else(|| panic!("a queue reason: {st}"));
    assert!(reason.starts_with("waiting for ") && reason.contains(" free"), "{reason}");
    let (_, queue) = s.get("/api/v1/training/queue");
    assert_eq!(queue[0]["status"]["queue_reason"].as_str(), Some(reason), "{queue}");
    let (code, _) = s.post(&format!("/api/v1/training/{id}/stop"));
    assert_eq!(code, 200);
}

#[test]
fn vgg16_trains_on_the_digits_at_batch_32() {
    let s = Server::start_with(Opts { extra_args: vec!["--examples".into()], ..Opts::default() });
    let id = start(&s, &json!({"model_architecture": "vgg16", "dataset_name": "digits_png", "batch_size": 32, "epochs": 1}));
    let ended = s.wait_ended(&id);
    assert_eq!(ended["state"], "completed", "{ended}");
    let peak = ended["peak_memory_mb"].as_u64().unwrap();
    let estimate = ended["estimated_memory_mb"].as_u64().unwrap();
    assert!(peak <= estimate * 2 && estimate <= peak * 2, "estimate {estimate} MB within 2x of the peak {peak} MB");
}
