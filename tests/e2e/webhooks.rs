//! Webhooks: a receiver on loopback that fails twice and then takes the signed event, a
//! delivery cut by a server crash and made after the restart, the address policy, and the
//! create / list / delete / deliveries contract.

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::harness::{envelope_code, receiver, start_iris, status_json, Opts, Received, Server};

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// A server that delivers to loopback, with retries 100 ms, 200 ms, ... apart.
fn open_server(data_dir: Option<std::path::PathBuf>, extra: &[&str]) -> Server {
    let extra_args = ["--webhooks-allow-private", "--webhook-retry-base-ms", "10"].iter().chain(extra).map(|a| (*a).to_owned()).collect();
    Server::start_with(Opts { extra_args, data_dir, ..Opts::default() })
}

/// Polls the webhook's delivery log until its delivery `id` is no longer pending.
fn settled(s: &Server, webhook: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, list) = s.get(&format!("/api/v1/webhooks/{webhook}/deliveries"));
        assert_eq!(code, 200, "{list}");
        let found = list.as_array().unwrap().iter().find(|d| d["id"] == id).cloned();
        if let Some(d) = found.filter(|d| d["state"] != "pending") {
            return d;
        }
        assert!(Instant::now() < deadline, "the delivery did not settle: {list}");
        // A pause between two polls of the condition, not a wait for it.
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_receiver_that_fails_twice_gets_the_signed_event_on_the_third_attempt() {
    let (addr, requests) = receiver(vec![500, 500, 200]);
    let s = open_server(None, &[]);
    let secret = "e2e-webhook-secret-0123456789";
    let (code, created) = s.post_json(
        "/api/v1/webhooks",
        &json!({"url": format!("http://{addr}/hook?x=1"), "events": ["session.completed"], "secret": secret}),
    );
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["secret"], secret);
    assert_eq!(created["events"], json!(["session.completed"]));
    let webhook = created["id"].as_str().unwrap().to_owned();

    let session = start_iris(&s, 2);
    assert_eq!(s.wait_ended(&session)["state"], "completed");
    let got: Vec<Received> =
        (0..3).map(|i| requests.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("attempt {i}"))).collect();
    let delivery_id = got[0].header("X-Trainyard-Delivery").to_owned();
    assert!(delivery_id.starts_with("dlv_"), "{delivery_id}");
    for r in &got {
        assert_eq!(r.path, "/hook?x=1");
        assert_eq!(r.header("X-Trainyard-Event"), "session.completed");
        assert_eq!(r.header("X-Trainyard-Delivery"), delivery_id, "every attempt carries the same delivery id");
        assert!(r.header("Content-Type").starts_with("application/json"));
        assert_eq!(r.header("X-Trainyard-Signature"), format!("sha256={}", hmac_hex(secret, &r.body)));
        assert_ne!(r.header("X-Trainyard-Signature"), format!("sha256={}", hmac_hex("another-secret-0123456789", &r.body)));
        let body: Value = serde_json::from_slice(&r.body).expect("a JSON body");
        assert_eq!(body["event"], "session.completed");
        assert!(body["id"].as_str().is_some_and(|id| id.parse::<u64>().is_ok()), "{body}");
        assert!(body["created_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{body}");
        assert_eq!(body["data"]["state"], "completed");
        assert_eq!(body["data"]["session_id"], session.as_str());
    }
    assert_eq!(got[0].body, got[2].body, "a retry sends the same body");

    let d = settled(&s, &webhook, &delivery_id);
    assert_eq!(d["state"], "delivered", "{d}");
    assert_eq!(d["attempts"], 3, "{d}");
    assert_eq!(d["last_status"], 200, "{d}");
    assert_eq!(d["event"], "session.completed");
    assert_eq!(d["session_id"], session.as_str());
    assert!(d["next_attempt_at"].is_null() && d["last_attempt_at"].is_string(), "{d}");
    if let Ok(extra) = requests.try_recv() {
        panic!("a delivered event was sent again: {}", extra.header("X-Trainyard-Delivery"));
    }
}

#[test]
fn a_delivery_cut_by_a_crash_is_made_after_the_restart() {
    // The first attempt gets no answer; the server dies during it.
    let (addr, requests) = receiver(vec![0, 200]);
    let mut first = open_server(None, &["--webhook-timeout-secs", "300"]);
    let (code, created) = first.post_json("/api/v1/webhooks", &json!({"url": format!("http://{addr}/"), "events": ["session.queued"]}));
    assert_eq!(code, 201, "{created}");
    let webhook = created["id"].as_str().unwrap().to_owned();
    start_iris(&first, 1);
    let cut = requests.recv_timeout(Duration::from_secs(60)).expect("the first attempt");
    let delivery_id = cut.header("X-Trainyard-Delivery").to_owned();
    let tmp = first.take_tmp();
    let data_dir = first.kill9();

    let second = open_server(Some(data_dir), &[]);
    let again = requests.recv_timeout(Duration::from_secs(60)).expect("the delivery after the restart");
    assert_eq!(again.header("X-Trainyard-Delivery"), delivery_id);
    assert_eq!(again.body, cut.body);
    let d = settled(&second, &webhook, &delivery_id);
    assert_eq!((d["state"].as_str(), d["last_status"].as_u64()), (Some("delivered"), Some(200)), "{d}");
    drop(second);
    drop(tmp);
}

#[test]
fn private_and_metadata_addresses_are_refused_without_the_flag() {
    let s = Server::start();
    for (url, class) in [
        ("http://127.0.0.1:9/hook", "loopback"),
        ("http://localhost:9/hook", "loopback"),
        ("http://2130706433/", "loopback"),
        ("http://[::1]:9/", "loopback"),
        ("http://10.1.2.3/", "private"),
        ("http://[::ffff:192.168.0.1]/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://0.0.0.0:9/", "unspecified"),
    ] {
        let (code, v) = s.post_json("/api/v1/webhooks", &json!({"url": url, "events": ["*"]}));
        assert_eq!(code, 400, "{url}: {v}");
        assert_eq!(envelope_code(&v), "WEBHOOK_ADDRESS_REFUSED", "{url}");
        assert_eq!(v["error"]["details"]["address_class"], class, "{url}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("--webhooks-allow-private"), "{v}");
    }
    let (code, list) = s.get("/api/v1/webhooks");
    assert_eq!((code, list), (200, json!([])));
}

#[test]
fn bad_webhooks_are_refused_with_the_field_that_is_wrong() {
    let s = open_server(None, &[]);
    let cases = [
        (json!({"url": "ftp://127.0.0.1/", "events": ["*"]}), 400, "INVALID_WEBHOOK", "url"),
        (json!({"url": "http://user:pw@127.0.0.1/", "events": ["*"]}), 400, "INVALID_WEBHOOK", "url"),
        (json!({"url": "not a url", "events": ["*"]}), 400, "INVALID_WEBHOOK", "url"),
        (json!({"url": "http://127.0.0.1/", "events": ["session.done"]}), 400, "INVALID_WEBHOOK", "events"),
        (json!({"url": "http://127.0.0.1/", "events": []}), 400, "INVALID_WEBHOOK", "events"),
        (json!({"url": "http://127.0.0.1/", "events": ["*"], "secret": "short"}), 400, "INVALID_WEBHOOK", "secret"),
    ];
    for (body, status, code, field) in cases {
        let (got, v) = s.post_json("/api/v1/webhooks", &body);
        assert_eq!(got, status, "{body}: {v}");
        assert_eq!(envelope_code(&v), code, "{body}");
        assert_eq!(v["error"]["details"]["field"], field, "{body}: {v}");
    }
    let (code, v) = s.post_json("/api/v1/webhooks", &json!({"url": "http://127.0.0.1/"}));
    assert_eq!((code, envelope_code(&v).as_str()), (422, "VALIDATION_ERROR"), "{v}");
    let (code, v) = s.post_json("/api/v1/webhooks", &json!({"url": "http://127.0.0.1/", "events": ["*"], "extra": 1}));
    assert_eq!(code, 422, "{v}");
}

#[test]
fn the_secret_is_shown_once_and_a_webhook_can_be_deleted_once() {
    let s = open_server(None, &[]);
    let (code, created) = s.post_json("/api/v1/webhooks", &json!({"url": "http://127.0.0.1:9/in", "events": ["session.failed", "epoch"]}));
    assert_eq!(code, 201, "{created}");
    let secret = created["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_") && secret.len() == 70, "{secret}");
    assert_eq!(created["events"], json!(["epoch", "session.failed"]));
    let id = created["id"].as_str().unwrap();
    assert!(id.starts_with("wh_"));

    let (code, list) = s.get("/api/v1/webhooks");
    assert_eq!(code, 200);
    let listed = &list.as_array().unwrap()[0];
    assert_eq!(listed["id"], id);
    assert_eq!(listed["url"], "http://127.0.0.1:9/in");
    assert_eq!(listed["secret_fingerprint"], created["secret_fingerprint"]);
    assert!(listed.get("secret").is_none() && !list.to_string().contains(secret), "{list}");
    let (code, deliveries) = s.get(&format!("/api/v1/webhooks/{id}/deliveries"));
    assert_eq!((code, deliveries.to_string().contains(secret)), (200, false));
    assert_eq!(deliveries, json!([]));
    let (code, v) = s.get(&format!("/api/v1/webhooks/{id}/deliveries?limit=0"));
    assert_eq!((code, envelope_code(&v).as_str()), (400, "BAD_REQUEST"));

    // Webhooks need an admin key, reading them included: their URLs may hold credentials.
    let (code, key) = s.post_json("/api/v1/admin/keys", &json!({"label": "reader", "scope": "train"}));
    assert_eq!(code, 201, "{key}");
    let train_key = key["key"].as_str().unwrap();
    let res = s.anon("GET", "/api/v1/webhooks").set("Authorization", &format!("Bearer {train_key}")).call();
    let (code, v) = status_json(res);
    assert_eq!((code, envelope_code(&v).as_str()), (403, "INSUFFICIENT_SCOPE"));

    let (code, deleted) = s.delete(&format!("/api/v1/webhooks/{id}"));
    assert_eq!((code, &deleted["id"]), (200, &json!(id)), "{deleted}");
    assert!(deleted.get("secret").is_none());
    let (code, v) = s.delete(&format!("/api/v1/webhooks/{id}"));
    assert_eq!((code, envelope_code(&v).as_str()), (404, "WEBHOOK_NOT_FOUND"));
    let (code, v) = s.get(&format!("/api/v1/webhooks/{id}/deliveries"));
    assert_eq!((code, envelope_code(&v).as_str()), (404, "WEBHOOK_NOT_FOUND"));
    let (code, v) = s.delete("/api/v1/webhooks/..%2Fetc");
    assert_eq!((code, envelope_code(&v).as_str()), (404, "WEBHOOK_NOT_FOUND"));
    assert_eq!(s.get("/api/v1/webhooks"), (200, json!([])));
}
