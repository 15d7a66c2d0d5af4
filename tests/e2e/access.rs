//! Access control through the real binary: the failure throttle, the per-key request rate,
//! client addresses behind trusted proxies, scoped keys on every class of route, and key
//! rotation through the admin API.

use std::process::Command;

use serde_json::{json, Value};

use crate::harness::{bin, envelope_code, example, multipart, status_json, Opts, Server, KEY};

/// A response's status, `Retry-After` header and JSON body.
fn send(req: ureq::Request, body: Option<&Value>) -> (u16, Option<String>, Value) {
    let res = match body {
        Some(b) => req.send_json(b.clone()),
        None => req.call(),
    };
    let resp = match res {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("request failed: {e}"),
    };
    let retry_after = resp.header("retry-after").map(str::to_owned);
    let (status, value) = status_json(Ok(resp));
    (status, retry_after, value)
}

/// A request presenting `key`.
fn with_key(s: &Server, key: &str, method: &str, path: &str) -> ureq::Request {
    s.anon(method, path).set("Authorization", &format!("Bearer {key}"))
}

/// Creates a managed key through the admin API with the test's admin key; returns the key
/// and its listing.
fn create_key(s: &Server, label: &str, scope: &str) -> (String, Value) {
    let (code, v) = s.post_json("/api/v1/admin/keys", &json!({"label": label, "scope": scope}));
    assert_eq!(code, 201, "{v}");
    (v["key"].as_str().expect("the key").to_owned(), v)
}

fn audit(s: &Server) -> Vec<Value> {
    let (code, v) = s.get("/api/v1/admin/audit?limit=1000");
    assert_eq!(code, 200, "{v}");
    v.as_array().unwrap().clone()
}

/// Asserts a 429 in the envelope whose `Retry-After` is whole seconds within a minute and
/// matches `details.retry_after_seconds`.
fn assert_too_many(res: (u16, Option<String>, Value)) {
    let (code, retry_after, v) = res;
    assert_eq!((code, envelope_code(&v).as_str()), (429, "TOO_MANY_REQUESTS"), "{v}");
    let secs: u64 = retry_after.as_deref().and_then(|r| r.parse().ok()).unwrap_or_else(|| panic!("Retry-After {retry_after:?}"));
    assert!((1..=60).contains(&secs), "Retry-After {secs}");
    assert_eq!(v["error"]["details"]["retry_after_seconds"].as_u64(), Some(secs), "{v}");
}

#[test]
fn the_eleventh_failure_a_minute_from_an_address_is_throttled_but_the_valid_key_is_served() {
    // The default throttle: 10 failed authentications a minute per address.
    let s = Server::start();
    for i in 0..10 {
        let (code, _, v) = send(with_key(&s, &format!("wrong-key-{i}"), "GET", "/api/v1/models"), None);
        assert_eq!((code, envelope_code(&v).as_str()), (401, "API_KEY_INVALID"), "attempt {i}");
    }
    assert_too_many(send(with_key(&s, "wrong-key-10", "GET", "/api/v1/models"), None));
    assert_too_many(send(s.anon("GET", "/api/v1/training/sessions"), None));
    let (code, _, _) = send(s.req("GET", "/api/v1/models"), None);
    assert_eq!(code, 200, "the owner's valid key from the throttled address is still served");
    assert_eq!(status_json(s.anon("GET", "/health").call()).0, 200);
    let log = audit(&s);
    assert_eq!(log.iter().filter(|e| e["outcome"] == "throttled").count(), 2, "{log:?}");
    assert_eq!(log.iter().filter(|e| e["outcome"] == "invalid").count(), 10);
    assert!(log.iter().all(|e| e["client_addr"] == "127.0.0.1"));
    assert!(!Value::Array(log).to_string().contains(KEY), "the audit log holds no key");
}

#[test]
fn a_key_past_its_request_rate_waits_and_other_keys_do_not() {
    let s = Server::start_with(Opts { extra_args: vec!["--rate-limit-per-key".into(), "4".into()], ..Opts::default() });
    let (other, _) = create_key(&s, "other", "admin");
    for _ in 0..3 {
        assert_eq!(s.get("/api/v1/models").0, 200);
    }
    assert_too_many(send(s.req("GET", "/api/v1/models"), None));
    let (code, _, log) = send(with_key(&s, &other, "GET", "/api/v1/admin/audit"), None);
    assert_eq!(code, 200, "another key has its own rate");
    assert_eq!(log[0]["outcome"], "success");
    assert_eq!(log[1]["outcome"], "rate_limited", "{log}");
}

#[test]
fn forwarded_for_names_the_client_only_behind_a_trusted_proxy() {
    let s = Server::start_with(Opts { extra_args: vec!["--trusted-proxies".into(), "10.0.0.0/8, 127.0.0.1".into()], ..Opts::default() });
    let from = |client: &str, key: &str| send(with_key(&s, key, "GET", "/api/v1/models").set("X-Forwarded-For", client), None);
    for i in 0..10 {
        assert_eq!(from("203.0.113.7", &format!("wrong-{i}")).0, 401);
    }
    assert_too_many(from("203.0.113.7", "wrong-10"));
    assert_too_many(from("198.51.100.1, 203.0.113.7, 10.1.2.3", "wrong-11"));
    assert_eq!(from("203.0.113.8", "wrong-12").0, 401, "another client behind the proxy is not throttled");
    assert_eq!(from("203.0.113.7", KEY).0, 200);
    let log = audit(&s);
    assert_eq!(log[1]["client_addr"], "203.0.113.7", "{:?}", &log[..3]);
    assert_eq!(log[2]["client_addr"], "203.0.113.8");
    assert_eq!(log[3]["client_addr"], "203.0.113.7", "the rightmost untrusted hop, not the spoofed leftmost one");
    assert_eq!(log[3]["outcome"], "throttled");

    let plain = Server::start();
    let (code, _, _) = send(plain.req("GET", "/api/v1/models").set("X-Forwarded-For", "203.0.113.9"), None);
    assert_eq!(code, 200);
    assert_eq!(audit(&plain)[1]["client_addr"], "127.0.0.1", "without trusted proxies the header is ignored");
}

fn assert_forbidden(res: (u16, Option<String>, Value), needs: &str) {
    let (code, _, v) = res;
    assert_eq!((code, envelope_code(&v).as_str()), (403, "INSUFFICIENT_SCOPE"), "{v}");
    assert_eq!(v["error"]["details"]["required_scope"], needs, "{v}");
    assert!(v["detail"].as_str().unwrap().contains(&format!("scope '{needs}'")), "{v}");
}

#[test]
fn each_scope_reaches_its_class_of_routes_and_no_further() {
    let s = Server::start_with(Opts { extra_args: vec!["--examples".into()], ..Opts::default() });
    let (read, read_info) = create_key(&s, "reader", "read");
    let (train, _) = create_key(&s, "trainer", "train");
    let call = |key: &str, method: &str, path: &str, body: Option<&Value>| send(with_key(&s, key, method, path), body);
    let start = json!({"model_architecture": "mlp", "dataset_name": "iris", "epochs": 2});
    let csv = std::fs::read(example("iris.csv")).unwrap();
    let upload = |key: &str, path: &str| {
        let (content_type, body) = multipart("iris.csv", &csv);
        let resp = with_key(&s, key, "POST", path).set("Content-Type", &content_type).send_bytes(&body);
        let (code, v) = status_json(resp);
        (code, None, v)
    };

    // read: every GET outside admin, nothing else.
    for path in ["/api/v1/models", "/api/v1/datasets/iris", "/api/v1/training/sessions", "/api/v1/system/info", "/api/v1/architectures"] {
        assert_eq!(call(&read, "GET", path, None).0, 200, "{path}");
    }
    assert_forbidden(call(&read, "POST", "/api/v1/training/start", Some(&start)), "train");
    assert_forbidden(upload(&read, "/api/v1/datasets?dataset_name=mine"), "train");
    assert_forbidden(call(&read, "DELETE", "/api/v1/datasets/iris", None), "admin");
    assert_forbidden(call(&read, "GET", "/api/v1/admin/audit", None), "admin");
    assert_forbidden(call(&read, "GET", "/api/v1/%61dmin/audit", None), "admin");
    assert_forbidden(call(&read, "GET", "/api/v1/admin/keys", None), "admin");

    // train: starts sessions, uploads datasets, predicts; cannot delete or administer.
    let (code, _, started) = call(&train, "POST", "/api/v1/training/start", Some(&start));
    assert_eq!(code, 200, "{started}");
    let session = started["session_id"].as_str().unwrap().to_owned();
    assert_eq!(s.wait_ended(&session)["state"], "completed");
    let (code, _, predicted) =
        call(&train, "POST", &format!("/api/v1/models/{session}/predict"), Some(&json!({"inputs": [[5.1, 3.5, 1.4, 0.2]]})));
    assert_eq!(code, 200, "{predicted}");
    assert_eq!(upload(&train, "/api/v1/datasets?dataset_name=mine").0, 200);
    assert_forbidden(upload(&train, "/api/v1/models?model_name=mine"), "admin");
    assert_forbidden(call(&train, "DELETE", &format!("/api/v1/models/{session}"), None), "admin");
    assert_forbidden(call(&train, "DELETE", "/api/v1/datasets/mine", None), "admin");
    assert_forbidden(call(&train, "GET", "/api/v1/admin/audit", None), "admin");
    assert_forbidden(call(&train, "POST", "/api/v1/admin/keys", Some(&json!({"label": "x", "scope": "admin"}))), "admin");

    // admin (the API_KEYS key): everything.
    assert_eq!(s.delete(&format!("/api/v1/models/{session}")).0, 200);
    assert_eq!(s.delete("/api/v1/datasets/mine").0, 200);
    let log = audit(&s);
    let refused: Vec<&Value> = log.iter().filter(|e| e["outcome"] == "insufficient_scope").collect();
    assert_eq!(refused.len(), 11, "{log:?}");
    assert!(refused.iter().any(|e| e["key_fingerprint"] == read_info["fingerprint"] && e["method"] == "DELETE"));
}

#[test]
fn keys_rotate_through_the_admin_api() {
    let s = Server::start();
    let (code, created) = s.post_json("/api/v1/admin/keys", &json!({"label": "bot-2", "scope": "train", "expires_in": "30d"}));
    assert_eq!(code, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("ty_") && id.starts_with("key_"), "{created}");
    assert!(created["fingerprint"].as_str().unwrap().starts_with("fp_"));
    assert_eq!((created["scope"].as_str(), created["status"].as_str()), (Some("train"), Some("active")));
    assert!(created["expires_at"].as_str().is_some_and(|e| e.ends_with('Z')), "{created}");

    assert_eq!(send(with_key(&s, &key, "GET", "/api/v1/models"), None).0, 200);
    let (code, list) = s.get("/api/v1/admin/keys");
    assert_eq!(code, 200);
    let listed = list.as_array().unwrap().iter().find(|k| k["id"] == id.as_str()).unwrap_or_else(|| panic!("{list}"));
    assert_eq!((listed["label"].as_str(), listed["scope"].as_str()), (Some("bot-2"), Some("train")));
    assert!(listed.get("key").is_none() && !list.to_string().contains(&key), "listings never hold keys");

    let (code, revoked) = s.delete(&format!("/api/v1/admin/keys/{id}"));
    assert_eq!((code, revoked["status"].as_str()), (200, Some("revoked")), "{revoked}");
    let (code, _, v) = send(with_key(&s, &key, "GET", "/api/v1/models"), None);
    assert_eq!((code, envelope_code(&v).as_str()), (401, "API_KEY_REVOKED"));

    let (code, v) = s.delete("/api/v1/admin/keys/key_ffffffff");
    assert_eq!((code, envelope_code(&v).as_str()), (404, "NOT_FOUND"), "{v}");
    let (code, v) = s.delete("/api/v1/admin/keys/..%2F..%2Fetc");
    assert_eq!((code, envelope_code(&v).as_str()), (404, "NOT_FOUND"), "{v}");
    let refused: [(Value, u16, &str); 6] = [
        (json!({"label": "x", "scope": "root"}), 422, "VALIDATION_ERROR"),
        (json!({"scope": "read"}), 422, "VALIDATION_ERROR"),
        (json!({"label": "x", "scope": "read", "owner": "me"}), 422, "VALIDATION_ERROR"),
        (json!({"label": "x", "scope": "read", "expires_in": "3y"}), 400, "BAD_REQUEST"),
        (json!({"label": "x", "scope": "read", "expires_in": "99999999999999999999w"}), 400, "BAD_REQUEST"),
        (json!({"label": "", "scope": "read"}), 400, "BAD_REQUEST"),
    ];
    for (body, status, code_name) in refused {
        let (code, v) = s.post_json("/api/v1/admin/keys", &body);
        assert_eq!((code, envelope_code(&v).as_str()), (status, code_name), "{body}: {v}");
    }
    assert_eq!(s.get("/api/v1/admin/keys").1.as_array().unwrap().len(), 1, "nothing refused was stored");

    let (_, doc) = status_json(s.anon("GET", "/openapi.json").call());
    assert_eq!(doc["paths"]["/api/v1/admin/keys/{id}"]["delete"]["x-required-scope"], "admin");
    for (path, item) in doc["paths"].as_object().unwrap().iter().filter(|(p, _)| p.starts_with("/api/")) {
        for (method, op) in item.as_object().unwrap() {
            assert!(op["x-required-scope"].is_string(), "{method} {path} documents no scope");
        }
    }
}

#[test]
fn the_keys_command_creates_scoped_keys() {
    let dir = tempfile::tempdir().unwrap();
    let keys = |args: &[&str]| {
        let out = Command::new(bin()).arg("keys").arg("--data-dir").arg(dir.path()).args(args).output().expect("run keys");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (ok, created) = keys(&["create", "--label", "watcher", "--scope", "read"]);
    assert!(ok);
    let reader = created.trim().to_owned();
    assert!(!keys(&["create", "--scope", "root"]).0, "an unknown scope is refused");
    let (ok, admin) = keys(&["create", "--label", "owner"]);
    assert!(ok);
    let (_, listing) = keys(&["list"]);
    assert!(listing.contains("SCOPE"), "{listing}");
    assert!(listing.lines().any(|l| l.contains("watcher") && l.contains(" read ")), "{listing}");
    assert!(listing.lines().any(|l| l.contains("owner") && l.contains(" admin ")), "{listing}");

    let s = Server::start_with(Opts { keys: None, data_dir: Some(dir.path().to_path_buf()), ..Opts::default() });
    assert_eq!(send(with_key(&s, &reader, "GET", "/api/v1/models"), None).0, 200);
    assert_forbidden(send(with_key(&s, &reader, "DELETE", "/api/v1/models/x"), None), "admin");
    let (code, _, v) = send(with_key(&s, admin.trim(), "DELETE", "/api/v1/models/x"), None);
    assert_eq!((code, envelope_code(&v).as_str()), (404, "MODEL_NOT_FOUND"), "{v}");
}
