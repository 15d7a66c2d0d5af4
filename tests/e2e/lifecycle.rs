//! Start-up, keys, restarts and shutdown of the real binary.

use std::process::Command;

use serde_json::json;

use crate::harness::{bin, envelope_code, status_json, Opts, Server};

fn key_from_banner(banner: &[String]) -> String {
    banner.iter().map(|l| l.trim()).find(|l| l.starts_with("ty_")).unwrap_or_else(|| panic!("no key in {banner:?}")).to_owned()
}

fn keys_cmd(data_dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin()).arg("keys").arg("--data-dir").arg(data_dir).args(args).output().expect("run keys");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn first_start_generates_a_key_once_and_managed_keys_work() {
    let mut s = Server::start_with(Opts { keys: None, ..Opts::default() });
    let key = key_from_banner(&s.banner);
    let (code, _) = status_json(s.anon("GET", "/api/v1/models").set("Authorization", &format!("Bearer {key}")).call());
    assert_eq!(code, 200);
    let db = std::fs::read(s.data_dir.join("trainyard.db")).unwrap();
    assert!(!db.windows(key.len()).any(|w| w == key.as_bytes()), "the key itself is never stored");

    // A restart on the same data prints no new key; the old one still works.
    let tmp = s.take_tmp();
    let dir = s.kill9();
    let s = Server::start_with(Opts { keys: None, data_dir: Some(dir.clone()), ..Opts::default() });
    assert!(!s.banner.iter().any(|l| l.trim().starts_with("ty_")), "{:?}", s.banner);
    let auth = |k: &str| status_json(s.anon("GET", "/api/v1/models").set("X-API-Key", k).call());
    assert_eq!(auth(&key).0, 200);

    let (ok, created) = keys_cmd(&dir, &["create", "--label", "bot", "--expires-in", "30d"]);
    assert!(ok);
    let bot = created.trim().to_owned();
    assert_eq!(auth(&bot).0, 200);
    let (ok, listing) = keys_cmd(&dir, &["list"]);
    assert!(ok && listing.contains("bot") && listing.contains("active") && !listing.contains(&bot));
    let key_id = listing.lines().find(|l| l.contains("bot")).and_then(|l| l.split_whitespace().next()).unwrap().to_owned();
    let (ok, _) = keys_cmd(&dir, &["revoke", &key_id]);
    assert!(ok);
    let (code, v) = auth(&bot);
    assert_eq!((code, envelope_code(&v).as_str()), (401, "API_KEY_REVOKED"));
    let (ok, _) = keys_cmd(&dir, &["create", "--expires-in", "never"]);
    assert!(!ok, "a bad lifetime is refused");
    drop(tmp);
}

#[test]
fn a_restart_resumes_interrupted_sessions_before_queued_ones() {
    let mut s = Server::start_with(Opts { extra_args: vec!["--examples".into()], ..Opts::default() });
    let long = json!({"model_architecture": "mlp", "dataset_name": "digits", "epochs": 1000, "batch_size": 1});
    let (_, a) = s.post_json("/api/v1/training/start", &long);
    let (_, b) = s.post_json("/api/v1/training/start", &json!({"model_architecture": "mlp", "dataset_name": "iris", "epochs": 3}));
    assert_eq!((a["status"].as_str(), b["status"].as_str()), (Some("running"), Some("queued")));
    let a_id = a["session_id"].as_str().unwrap();
    let running = s.status_until(a_id, std::time::Duration::from_secs(60), |st| st["pid"].is_u64());
    let run_pid = running["pid"].as_u64().unwrap_or_else(|| panic!("the run reports its process: {running}"));
    let tmp = s.take_tmp();
    let dir = s.kill9();
    // The run process does not outlive its server: it notices at once and exits.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{run_pid}")).exists() && !is_zombie(run_pid) {
        assert!(std::time::Instant::now() < deadline, "run process {run_pid} outlived its server");
        std::thread::yield_now();
    }

    let s = Server::start_with(Opts { data_dir: Some(dir), ..Opts::default() });
    let b_id = b["session_id"].as_str().unwrap();
    let (_, st) = s.get(&format!("/api/v1/training/{a_id}/status"));
    assert_eq!(st["state"], "running", "the interrupted session runs again: {st}");
    let (_, st) = s.get(&format!("/api/v1/training/{b_id}/status"));
    assert_eq!(st["state"], "queued", "the queued one still waits its turn: {st}");
    let (_, logs) = s.get(&format!("/api/v1/training/{a_id}/logs"));
    assert!(logs.as_array().unwrap().iter().any(|l| l["message"].as_str().unwrap().contains("restarted")), "{logs}");
    let (code, _) = s.post(&format!("/api/v1/training/{a_id}/stop"));
    assert_eq!(code, 200);
    assert_eq!(s.wait_ended(a_id)["state"], "stopped");
    assert_eq!(s.wait_ended(b_id)["state"], "completed");
    drop(tmp);
}

/// Whether the process is a zombie (exited, waiting to be reaped by whoever adopted it).
fn is_zombie(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
}

#[test]
fn sigterm_stops_sessions_saving_their_weights() {
    let mut s = Server::start_with(Opts { extra_args: vec!["--examples".into()], ..Opts::default() });
    let (_, a) = s.post_json(
        "/api/v1/training/start",
        &json!({"model_architecture": "mlp", "dataset_name": "digits", "epochs": 1000, "batch_size": 1}),
    );
    let id = a["session_id"].as_str().unwrap().to_owned();
    assert_eq!(a["status"], "running");
    let tmp = s.take_tmp();
    let dir = s.data_dir.clone();
    let status = s.terminate();
    assert!(status.success(), "clean exit: {status:?}");
    let s = Server::start_with(Opts { data_dir: Some(dir), ..Opts::default() });
    let (_, st) = s.get(&format!("/api/v1/training/{id}/status"));
    assert_eq!(st["state"], "stopped", "{st}");
    let (code, _, _) = s.get_bytes(&format!("/api/v1/models/{id}"));
    assert_eq!(code, 200, "the stopped session's weights were saved");
    drop(tmp);
}

#[test]
fn examples_are_registered_once_text_first() {
    let mut s = Server::start_with(Opts { extra_args: vec!["--examples".into()], ..Opts::default() });
    let (_, list) = s.get("/api/v1/datasets");
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["tempest", "iris", "wine", "breast_cancer", "digits", "digits_png"]);
    assert_eq!(list[0]["format"], "text");
    assert_eq!(list[1]["sample_count"], 150);
    let tmp = s.take_tmp();
    let dir = s.kill9();
    let s = Server::start_with(Opts { extra_args: vec!["--examples".into()], data_dir: Some(dir), ..Opts::default() });
    let (_, list) = s.get("/api/v1/datasets");
    assert_eq!(list.as_array().unwrap().len(), 6);
    drop(tmp);
}
