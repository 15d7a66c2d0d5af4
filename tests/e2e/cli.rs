//! The command-line client against the real server: the same binary run as `trainyard
//! datasets|train|watch|status|sessions|logs|stop|cancel|models ...`, its output with and
//! without `--json`, and its exit codes.

use std::{
    io::Read,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::harness::{bin, example, Opts, Server, KEY};

/// How long one client command may take.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(300);

/// What a client command did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// Standard output as JSON lines.
    fn json_lines(&self) -> Vec<Value> {
        self.stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}"))).collect()
    }
}

/// Runs `trainyard ARGS` with no terminal and no client settings from the environment, and
/// waits for it (at most [`CLIENT_TIMEOUT`]).
fn trainyard(args: &[&str]) -> Run {
    let mut child = Command::new(bin())
        .args(args)
        .env_remove("TRAINYARD_URL")
        .env_remove("TRAINYARD_KEY")
        .env_remove("TRAINYARD_CA_CERT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the client");
    let pipe = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = r.read_to_string(&mut text);
            text
        })
    };
    let stdout = pipe(Box::new(child.stdout.take().expect("stdout")));
    let stderr = pipe(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("trainyard {args:?} ran past {CLIENT_TIMEOUT:?}; stderr: {}", stderr.join().unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let run =
        Run { code: status.code().unwrap_or(-1), stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() };
    eprintln!("trainyard {}: exit {}\n{}", args.join(" "), run.code, run.stderr);
    run
}

/// Runs a client command against `s` with the test key.
fn client(s: &Server, args: &[&str]) -> Run {
    let mut all = args.to_vec();
    all.extend(["--server", s.base.as_str(), "--key", KEY]);
    trainyard(&all)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

#[test]
fn upload_train_watch_status_logs_and_download_through_the_client() {
    let s = Server::start();
    let iris = example("iris.csv");

    let up = client(&s, &["datasets", "upload", path(&iris), "--name", "iris", "--json"]);
    assert_eq!(up.code, 0, "{up:?}");
    assert_eq!(up.json()["name"], "iris", "{up:?}");
    let list = client(&s, &["datasets", "list", "--json"]);
    assert_eq!(list.code, 0, "{list:?}");
    assert!(list.json().as_array().unwrap().iter().any(|d| d["name"] == "iris"), "{list:?}");
    let human = client(&s, &["datasets"]);
    assert!(human.stdout.starts_with("NAME") && human.stdout.contains("iris") && human.stdout.contains("csv"), "{human:?}");
    let again = client(&s, &["datasets", "upload", path(&iris), "--name", "iris"]);
    assert_eq!(again.code, 1, "a name that exists is refused: {again:?}");
    assert!(again.stderr.starts_with("error: "), "{again:?}");

    // Without a terminal, --watch prints a plain line per epoch and exits 0 when it completes.
    let run = client(&s, &["train", "--arch", "mlp", "--dataset", "iris", "--epochs", "3", "--lr", "0.01", "--watch"]);
    assert_eq!(run.code, 0, "{run:?}");
    for line in ["epoch 1/3  loss ", "epoch 2/3  loss ", "epoch 3/3  loss ", "accuracy "] {
        assert!(run.stdout.contains(line), "{line:?} missing: {run:?}");
    }
    assert!(run.stdout.lines().last().unwrap_or_default().contains("completed: 3/3 epochs"), "{run:?}");
    assert!(!run.stdout.contains('\u{1b}'), "no terminal, so no bar: {run:?}");

    // With --json: one event a line, ending with session.completed; --set reaches the body.
    let run = client(
        &s,
        &[
            "train",
            "--arch",
            "mlp",
            "--dataset",
            "iris",
            "--epochs",
            "3",
            "--set",
            "batch_size=16",
            "--set",
            "hidden_sizes=[8]",
            "--watch",
            "--json",
        ],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let events = run.json_lines();
    let kinds: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"session.queued"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"session.completed"), "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "epoch").count(), 3, "{kinds:?}");
    assert!(events.windows(2).all(|w| w[0]["id"].as_u64() < w[1]["id"].as_u64()), "ids grow: {events:?}");
    let last = &events.last().unwrap()["data"];
    assert_eq!(last["config"]["batch_size"], 16);
    assert_eq!(last["config"]["hidden_sizes"], serde_json::json!([8]));
    let id = last["session_id"].as_str().unwrap().to_owned();
    let model = last["model_name"].as_str().expect("a completed session's model").to_owned();

    let status = client(&s, &["status", &id, "--json"]);
    assert_eq!(status.code, 0, "{status:?}");
    let status = status.json();
    assert_eq!((status["state"].as_str(), status["current_epoch"].as_u64()), (Some("completed"), Some(3)), "{status}");
    let human = client(&s, &["status", &id]);
    assert!(human.stdout.contains("completed") && human.stdout.contains("3/3"), "{human:?}");

    let sessions = client(&s, &["sessions", "--json"]);
    assert_eq!(sessions.json().as_array().map(Vec::len), Some(2), "{sessions:?}");
    let table = client(&s, &["sessions"]);
    assert!(table.stdout.starts_with("ID") && table.stdout.contains(&id), "{table:?}");
    assert_eq!(table.stdout.matches("completed").count(), 2, "{table:?}");

    // logs --follow on an ended session prints every line and returns.
    let (_, logs) = s.get(&format!("/api/v1/training/{id}/logs?limit=1000"));
    let followed = client(&s, &["logs", &id, "--follow", "--json"]);
    assert_eq!(followed.code, 0, "{followed:?}");
    assert_eq!(followed.json_lines(), *logs.as_array().unwrap());
    let tail = client(&s, &["logs", &id, "--limit", "2"]);
    assert_eq!(tail.stdout.lines().count(), 2, "{tail:?}");
    let newest = logs.as_array().unwrap().last().unwrap()["message"].as_str().unwrap().to_owned();
    assert!(tail.stdout.lines().last().unwrap().ends_with(&newest), "{tail:?}");

    // A download is the server's bytes, written whole.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model.bin");
    let got = client(&s, &["models", "download", &model, "-o", path(&file), "--json"]);
    assert_eq!(got.code, 0, "{got:?}");
    let (code, served, _) = s.get_bytes(&format!("/api/v1/models/{model}"));
    assert_eq!(code, 200);
    assert_eq!(std::fs::read(&file).unwrap(), served);
    assert_eq!(got.json()["size_bytes"].as_u64(), Some(served.len() as u64));
    // Without -o: the server's file name in the current directory.
    let models = client(&s, &["models", "--json"]);
    let ext = models.json().as_array().unwrap().iter().find(|m| m["name"] == model.as_str()).unwrap()["format"].clone();
    assert_eq!(ext, "safetensors");
    let out = Command::new(bin())
        .args(["models", "download", model.as_str(), "--server", s.base.as_str(), "--key", KEY])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(dir.path().join(format!("{model}.safetensors"))).unwrap(), served);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 2, "no temporary file is left: {leftovers:?}");

    // The session's chart, as the server draws it.
    let chart = dir.path().join("chart.png");
    let drawn = client(&s, &["chart", &id, "-o", path(&chart)]);
    assert_eq!(drawn.code, 0, "{drawn:?}");
    let (code, png, _) = s.get_bytes(&format!("/api/v1/training/{id}/chart.png"));
    assert_eq!(code, 200);
    let written = std::fs::read(&chart).unwrap();
    assert!(written.starts_with(b"\x89PNG\r\n\x1a\n") && written == png, "{} bytes written, {} served", written.len(), png.len());

    let rm = client(&s, &["models", "rm", &model]);
    assert_eq!(rm.code, 0, "{rm:?}");
    let missing = client(&s, &["models", "download", &model, "-o", path(&dir.path().join("gone"))]);
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(missing.stderr.contains("not found"), "{missing:?}");
    assert!(!dir.path().join("gone").exists());
}

#[test]
fn a_stopped_or_cancelled_session_makes_watch_exit_1() {
    let s = Server::start_with(Opts { extra_args: vec!["--examples".into()], ..Opts::default() });
    let long = ["train", "--arch", "mlp", "--dataset", "digits", "--epochs", "1000", "--batch-size", "1", "--json"];
    let first = client(&s, &long);
    assert_eq!(first.code, 0, "{first:?}");
    let first = first.json()["session_id"].as_str().unwrap().to_owned();
    let second = client(&s, &long);
    assert_eq!(second.json()["status"], "queued", "{second:?}");
    let second = second.json()["session_id"].as_str().unwrap().to_owned();

    // A running session is not in the queue: cancel is refused with the server's message.
    let refused = client(&s, &["cancel", &first]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.starts_with("error: "), "{refused:?}");

    let cancelled = client(&s, &["cancel", &second]);
    assert_eq!(cancelled.code, 0, "{cancelled:?}");
    let watched = client(&s, &["watch", &second]);
    assert_eq!(watched.code, 1, "{watched:?}");
    assert!(watched.stdout.contains("stopped"), "{watched:?}");

    let stop = client(&s, &["stop", &first, "--json"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    assert!(stop.json()["message"].is_string(), "{stop:?}");
    let watched = client(&s, &["watch", &first, "--json"]);
    assert_eq!(watched.code, 1, "{watched:?}");
    assert_eq!(watched.json_lines().last().unwrap()["event"], "session.stopped", "{watched:?}");
}

#[test]
fn exit_codes_for_usage_errors_unreachable_servers_and_refused_keys() {
    let s = Server::start();
    // Usage errors: clap's exit 2.
    for args in [
        vec!["frobnicate"],
        vec!["status"],
        vec!["train", "--dataset", "iris"],
        vec!["train", "--arch", "mlp", "--dataset", "iris", "--set", "epochs"],
    ] {
        let run = client(&s, &args);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
    }
    let run = trainyard(&["sessions", "--server", "ftp://example.invalid"]);
    assert_eq!(run.code, 2, "{run:?}");

    // Nobody listens on port 1.
    let run = trainyard(&["sessions", "--server", "http://127.0.0.1:1", "--key", KEY]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stderr.contains("http://127.0.0.1:1") && run.stderr.contains("is the server running?"), "{run:?}");
    let run = trainyard(&["watch", "sess_00000000000000000000000000000000", "--server", "http://127.0.0.1:1"]);
    assert_eq!(run.code, 3, "{run:?}");

    let run = trainyard(&["sessions", "--server", &s.base, "--key", "wrong-key-0123456789"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stderr.contains("the key was refused"), "{run:?}");
    let run = trainyard(&["datasets", "--server", &s.base]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stderr.contains("TRAINYARD_KEY"), "{run:?}");

    // The environment works as the flags do.
    let out = Command::new(bin()).args(["sessions", "--json"]).env("TRAINYARD_URL", &s.base).env("TRAINYARD_KEY", KEY).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), serde_json::json!([]));

    // An unknown session and a refused configuration are the server's messages, exit 1.
    let run = client(&s, &["status", "sess_00000000000000000000000000000000"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("not found"), "{run:?}");
    let up = client(&s, &["datasets", "upload", path(&example("iris.csv"))]);
    assert_eq!(up.code, 0, "the name defaults to the file's: {up:?}");
    let run = client(&s, &["train", "--arch", "mlp", "--dataset", "iris", "--epochs", "0", "--set", "dropout=2"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("\n  epochs: ") && run.stderr.contains("\n  dropout: "), "every failing field is listed: {run:?}");
}

#[test]
fn https_servers_are_reached_with_their_certificate() {
    let s = Server::start_with(Opts { extra_args: vec!["--tls-self-signed".into()], ..Opts::default() });
    assert!(s.base.starts_with("https://"), "{}", s.base);
    let cert = s.data_dir.join("tls/cert.pem");
    let run = client(&s, &["sessions", "--json", "--ca-cert", path(&cert)]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json(), serde_json::json!([]));
    let run = client(&s, &["sessions"]);
    assert_eq!(run.code, 3, "a self-signed certificate is not trusted without --ca-cert: {run:?}");
    assert!(run.stderr.contains("--ca-cert"), "{run:?}");
}
