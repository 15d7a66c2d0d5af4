//! Telegram notifications against a Bot API stand-in on loopback: progress messages, the
//! summary and the chart of a finished session, a refused call retried, and a token that never
//! reaches a log line or `--help`.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::harness::{bin, receiver, start_iris, Opts, Received, Server};

const TOKEN: &str = "123456789:E2E-telegram_token_abcdefghijk";
const CHAT: &str = "-1001234567890";

fn env(api: &str) -> Vec<(String, String)> {
    [("TELEGRAM_BOT_TOKEN", TOKEN), ("TELEGRAM_CHAT_IDS", CHAT), ("TELEGRAM_API_URL", api), ("TELEGRAM_EVERY_EPOCHS", "2")]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The Bot API method a request called.
fn method(r: &Received) -> &str {
    let path = r.path.strip_prefix(&format!("/bot{TOKEN}/")).unwrap_or_else(|| panic!("not a Bot API path of the token: {}", r.path));
    path
}

/// The multipart field `name` of a `sendPhoto` request: its bytes.
fn field<'a>(r: &'a Received, name: &str) -> &'a [u8] {
    let boundary = r.header("Content-Type").strip_prefix("multipart/form-data; boundary=").expect("a multipart body");
    let marker = format!("\r\n--{boundary}");
    let head = format!("name=\"{name}\"");
    let body = &r.body;
    let at = body.windows(head.len()).position(|w| w == head.as_bytes()).unwrap_or_else(|| panic!("no {name} field"));
    let start = at + body[at..].windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let len = body[start..].windows(marker.len()).position(|w| w == marker.as_bytes()).unwrap();
    &body[start..start + len]
}

/// `GET /api/v1/telegram` once no message is pending.
fn settled(s: &Server) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (code, v) = s.get("/api/v1/telegram");
        assert_eq!(code, 200, "{v}");
        if v["deliveries"].as_array().unwrap().iter().all(|d| d["state"] != "pending") {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "messages still pending: {v}");
        // A pause between two polls of the condition, not a wait for it.
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_finished_session_sends_its_summary_and_chart_and_progress_every_n_epochs() {
    // The first call is refused with 502 and retried.
    let (addr, requests) = receiver(vec![502, 200]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let s = Server::start_with(Opts {
        extra_args: vec!["--webhook-retry-base-ms".into(), "10".into(), "--log-level".into(), "info".into()],
        env: env(&format!("http://{addr}")),
        stderr_file: Some(log.clone()),
        ..Opts::default()
    });
    let session = start_iris(&s, 4);
    assert_eq!(s.wait_ended(&session)["state"], "completed");

    let mut texts = Vec::new();
    let mut photo = None;
    let mut calls = 0;
    while texts.len() < 4 || photo.is_none() {
        let r = requests.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("got {texts:?} and photo {}", photo.is_some()));
        calls += 1;
        match method(&r) {
            "sendMessage" => {
                assert!(r.header("Content-Type").starts_with("application/json"));
                let body: Value = serde_json::from_slice(&r.body).expect("a JSON body");
                assert_eq!(body["chat_id"], CHAT);
                texts.push(body["text"].as_str().unwrap().to_owned());
            }
            "sendPhoto" => {
                assert_eq!(field(&r, "chat_id"), CHAT.as_bytes());
                let caption = String::from_utf8(field(&r, "caption").to_vec()).unwrap();
                assert!(caption.starts_with("✅ Training completed: mlp on iris"), "{caption}");
                assert!(String::from_utf8_lossy(&r.body).contains("filename=\"chart.png\"\r\nContent-Type: image/png"));
                photo = Some(image::load_from_memory_with_format(field(&r, "photo"), image::ImageFormat::Png).expect("a PNG chart"));
            }
            other => panic!("unexpected Bot API method {other}"),
        }
    }
    assert_eq!(calls, 5, "two progress messages, the summary and the chart, the first call sent twice: {texts:?}");
    // The refused first call is sent again, with the same text.
    assert_eq!(texts.iter().filter(|t| **t == texts[0]).count(), 2, "{texts:?}");
    let distinct: Vec<&String> = texts.iter().skip(1).collect();
    for epoch in [2, 4] {
        let want = format!("📈 mlp on iris, epoch {epoch}/4: loss ");
        assert_eq!(distinct.iter().filter(|t| t.starts_with(&want)).count(), 1, "{want} in {texts:?}");
    }
    let summary = distinct.iter().find(|t| t.starts_with("✅ Training completed: mlp on iris")).expect("the summary");
    for part in
        [format!("Session {session}"), "Epochs: 4/4".to_owned(), "Final loss ".to_owned(), "accuracy ".to_owned(), "Duration: ".to_owned()]
    {
        assert!(summary.contains(&part), "{part} in {summary}");
    }
    let (w, h) = (photo.as_ref().unwrap().width(), photo.as_ref().unwrap().height());
    assert_eq!((w, h), (1000, 700));
    // The message log: four messages, all delivered, the refused one on its second attempt.
    let status = settled(&s);
    assert_eq!((status["enabled"].as_bool(), status["every_epochs"].as_u64()), (Some(true), Some(2)), "{status}");
    assert_eq!(status["chats"], serde_json::json!([CHAT]));
    assert_eq!(status["api_url"], format!("http://{addr}"));
    assert!(!status.to_string().contains("E2E-telegram_token"), "{status}");
    let deliveries = status["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 4, "{status}");
    let attempts: Vec<u64> = deliveries.iter().map(|d| d["attempts"].as_u64().unwrap()).collect();
    assert_eq!(attempts.iter().sum::<u64>(), 5, "{status}");
    assert!(deliveries.iter().all(|d| d["chat"] == CHAT && d["session_id"] == session.as_str() && d["last_status"] == 200), "{status}");
    let parts: Vec<(&str, &str)> = deliveries.iter().map(|d| (d["event"].as_str().unwrap(), d["part"].as_str().unwrap())).collect();
    assert_eq!(parts, [("session.completed", "photo"), ("session.completed", "message"), ("epoch", "message"), ("epoch", "message")]);

    s.terminate();
    assert!(requests.try_recv().is_err(), "nothing more was sent");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("Telegram notifications on"), "{log}");
    assert!(log.contains("502: stand-in refusal 502"), "the refusal is logged: {log}");
    assert!(!log.contains("E2E-telegram_token"), "the token reached the log: {log}");
}

#[test]
fn a_token_without_chats_stops_the_start_and_help_never_shows_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["serve", "--port", "0", "--data-dir"])
        .arg(dir.path())
        .env("TELEGRAM_BOT_TOKEN", TOKEN)
        .env_remove("TELEGRAM_CHAT_IDS")
        .env("API_KEYS", "test-key-0123456789")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TELEGRAM_CHAT_IDS names no chat"), "{stderr}");
    assert!(!stderr.contains("E2E-telegram_token"), "{stderr}");

    let off = Server::start();
    let (code, v) = off.get("/api/v1/telegram");
    assert_eq!(code, 200, "{v}");
    assert_eq!(v, serde_json::json!({"enabled": false, "api_url": null, "chats": [], "every_epochs": null, "deliveries": []}));

    let help = Command::new(bin()).args(["serve", "--help"]).env("TELEGRAM_BOT_TOKEN", TOKEN).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--telegram-bot-token") && help.contains("TELEGRAM_BOT_TOKEN"), "{help}");
    assert!(!help.contains("E2E-telegram_token"), "{help}");
}
