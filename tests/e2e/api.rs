//! Authentication, the error envelope, docs and system information.

use quickcheck::{QuickCheck, TestResult};
use serde_json::{json, Value};

use crate::harness::{envelope_code, status_json, with_thread_server, Server, KEY};

/// Every protected route, with a method and a concrete path.
const PROTECTED: &[(&str, &str)] = &[
    ("POST", "/api/v1/training/start"),
    ("POST", "/api/v1/training/sess_00000000000000000000000000000000/stop"),
    ("GET", "/api/v1/training/sess_00000000000000000000000000000000/status"),
    ("GET", "/api/v1/training/sess_00000000000000000000000000000000/metrics"),
    ("GET", "/api/v1/training/sess_00000000000000000000000000000000/history"),
    ("GET", "/api/v1/training/sess_00000000000000000000000000000000/logs"),
    ("GET", "/api/v1/training/sessions"),
    ("GET", "/api/v1/training/queue"),
    ("DELETE", "/api/v1/training/queue/sess_00000000000000000000000000000000"),
    ("GET", "/api/v1/system/info"),
    ("GET", "/api/v1/models"),
    ("POST", "/api/v1/models?model_name=x"),
    ("GET", "/api/v1/models/x"),
    ("DELETE", "/api/v1/models/x"),
    ("GET", "/api/v1/datasets"),
    ("POST", "/api/v1/datasets?dataset_name=x"),
    ("GET", "/api/v1/datasets/x"),
    ("DELETE", "/api/v1/datasets/x"),
    ("GET", "/api/v1/architectures"),
    ("GET", "/api/v1/admin/audit"),
    ("GET", "/api/v1/admin/keys"),
    ("POST", "/api/v1/admin/keys"),
    ("DELETE", "/api/v1/admin/keys/key_00000000"),
];

#[test]
fn health_and_root_need_no_key_and_tolerate_one() {
    let s = Server::start();
    let (code, v) = status_json(s.anon("GET", "/health").call());
    assert_eq!((code, v["status"].as_str()), (200, Some("healthy")));
    assert_eq!(v["service"], "trainyard");
    assert!(v["version"].is_string());
    let (code, _) = status_json(s.anon("GET", "/health").set("Authorization", "Bearer wrong").call());
    assert_eq!(code, 200);
    let (code, v) = status_json(s.anon("GET", "/").call());
    assert_eq!(code, 200);
    assert_eq!(v["docs"], "/docs/");
}

// Property 31: every route but /health and / answers 401 in the envelope without a valid
// key, whatever key is presented, and each attempt is audited with a fingerprint only.
fn prop31_case(pick: usize, key: String, header_kind: bool) -> TestResult {
    if key.trim() == KEY || !key.is_ascii() || key.chars().any(char::is_control) {
        return TestResult::discard();
    }
    with_thread_server(|s| {
        let (method, path) = PROTECTED[pick % PROTECTED.len()];
        let mut req = s.anon(method, path);
        if !key.trim().is_empty() {
            req = if header_kind { req.set("Authorization", &format!("Bearer {key}")) } else { req.set("X-API-Key", &key) };
        }
        let (code, v) = status_json(req.call());
        let expected = if key.trim().is_empty() { "API_KEY_MISSING" } else { "API_KEY_INVALID" };
        TestResult::from_bool(code == 401 && envelope_code(&v) == expected)
    })
}

#[test]
fn prop31_every_protected_route_refuses_missing_and_wrong_keys() {
    QuickCheck::new().tests(60).quickcheck(prop31_case as fn(usize, String, bool) -> TestResult);
    with_thread_server(|s| {
        let (code, audit) = s.get("/api/v1/admin/audit?limit=1000");
        assert_eq!(code, 200);
        let entries = audit.as_array().expect("audit array");
        assert!(entries.iter().filter(|e| e["outcome"] == "invalid" || e["outcome"] == "missing").count() >= 30);
        assert!(!audit.to_string().contains(KEY), "the audit log must not contain keys");
        assert!(entries.iter().any(|e| e["outcome"] == "success" && e["key_fingerprint"].as_str().is_some_and(|f| f.starts_with("fp_"))));
        assert!(entries.iter().all(|e| e["client_addr"] == "127.0.0.1" && e["endpoint"].as_str().is_some()));
    });
}

#[test]
fn both_header_styles_authenticate() {
    let s = Server::start();
    let (code, _) = status_json(s.anon("GET", "/api/v1/models").set("X-API-Key", KEY).call());
    assert_eq!(code, 200);
    let (code, _) = status_json(s.anon("GET", "/api/v1/models").set("Authorization", &format!("bearer {KEY}")).call());
    assert_eq!(code, 200);
}

#[test]
fn framework_errors_use_the_envelope() {
    let s = Server::start();
    let (code, v) = s.get("/api/v1/nope");
    assert_eq!((code, envelope_code(&v).as_str()), (404, "NOT_FOUND"));
    let (code, v) = s.post("/api/v1/system/info");
    assert_eq!((code, envelope_code(&v).as_str()), (405, "METHOD_NOT_ALLOWED"));
    let (code, v) = status_json(s.req("POST", "/api/v1/training/start").set("Content-Type", "application/json").send_string("{not json"));
    assert_eq!((code, envelope_code(&v).as_str()), (400, "MALFORMED_JSON"));
    let (code, v) = s.post_json("/api/v1/training/start", &json!({"model_architecture": "mlp", "dataset_name": "iris", "colour": "red"}));
    assert_eq!((code, envelope_code(&v).as_str()), (422, "VALIDATION_ERROR"));
    assert!(v["detail"].as_str().unwrap().contains("colour"), "{v}");
    let (code, v) = s.post_json("/api/v1/training/start", &json!({"model_architecture": "mlp", "dataset_name": "iris", "epochs": "ten"}));
    assert_eq!((code, envelope_code(&v).as_str()), (422, "VALIDATION_ERROR"));
    let big = json!({ "model_architecture": "x".repeat(2 * 1024 * 1024) });
    let (code, v) = s.post_json("/api/v1/training/start", &big);
    assert_eq!((code, envelope_code(&v).as_str()), (413, "PAYLOAD_TOO_LARGE"));
    let (code, v) = s.get("/api/v1/training/not-a-session/status");
    assert_eq!((code, envelope_code(&v).as_str()), (404, "SESSION_NOT_FOUND"));
    let (code, v) = s.get("/api/v1/training/sess_00000000000000000000000000000000/logs?limit=0");
    assert_eq!((code, envelope_code(&v).as_str()), (400, "BAD_REQUEST"));
    // Still serving.
    assert_eq!(s.get("/api/v1/models").0, 200);
}

#[test]
fn config_errors_list_every_field() {
    let s = Server::start();
    let (code, v) = s.post_json(
        "/api/v1/training/start",
        &json!({"model_architecture": "transformer", "dataset_name": "missing", "learning_rate": 7.0, "batch_size": 0, "epochs": 5000, "optimizer": "lbfgs"}),
    );
    assert_eq!((code, envelope_code(&v).as_str()), (400, "INVALID_CONFIG"));
    let fields: Vec<&str> = v["error"]["details"]["fields"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["model_architecture", "learning_rate", "batch_size", "epochs", "optimizer"]);
    assert!(v["detail"].as_str().unwrap().contains("mlp"), "lists valid architectures: {v}");
}

#[test]
fn system_info_reports_resources() {
    let s = Server::start();
    let (code, v) = s.get("/api/v1/system/info");
    assert_eq!(code, 200);
    for field in ["cpu_usage_percent", "memory_used_mb", "memory_total_mb", "memory_percent", "disk_free_gb", "disk_total_gb"] {
        assert!(v[field].is_number(), "{field} in {v}");
    }
    assert!(v["gpu_available"].is_boolean());
    assert!(v.get("gpu_usage_percent").is_some() && v.get("gpu_memory_used_mb").is_some() && v.get("gpu_memory_total_mb").is_some());
    assert!(v["memory_used_mb"].as_u64() <= v["memory_total_mb"].as_u64());
    assert!(v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
}

#[test]
fn openapi_and_swagger_ui_are_served_without_download() {
    let s = Server::start();
    let (code, v) = status_json(s.anon("GET", "/openapi.json").call());
    assert_eq!(code, 200);
    let paths = v["paths"].as_object().expect("paths");
    for p in ["/api/v1/training/start", "/api/v1/training/{session_id}/status", "/api/v1/models", "/api/v1/datasets/{name}", "/health"] {
        assert!(paths.contains_key(p), "{p} missing from OpenAPI");
    }
    let resp = s.anon("GET", "/docs/").call().expect("docs");
    assert_eq!(resp.status(), 200);
    let html = resp.into_string().unwrap();
    assert!(html.contains("swagger"), "Swagger UI page");
    let resp = s.anon("GET", "/docs/swagger-ui-bundle.js").call().expect("bundle");
    assert_eq!(resp.status(), 200);
    assert!(resp.into_string().unwrap().len() > 100_000, "the UI's script is served from the binary");
}

#[test]
fn architectures_are_listed() {
    let s = Server::start();
    let (code, v) = s.get("/api/v1/architectures");
    assert_eq!(code, 200);
    let mlp = v.as_array().unwrap().iter().find(|a| a["name"] == "mlp").expect("mlp");
    assert_eq!(mlp["data_kinds"], json!(["tabular"]));
    assert!(mlp["optimizers"].as_array().unwrap().contains(&Value::from("rmsprop")));
}

#[test]
fn a_gpu_this_machine_lacks_is_a_400_saying_what_there_is() {
    let s = Server::start();
    let (code, v) =
        s.post_json("/api/v1/training/start", &json!({"model_architecture": "mlp", "dataset_name": "iris", "device": "cuda:3"}));
    assert_eq!((code, envelope_code(&v).as_str()), (400, "INVALID_CONFIG"));
    let detail = v["detail"].as_str().unwrap();
    assert!(detail.contains("device cuda:3 is not available: "), "{v}");
    assert!(detail.contains("usable GPU") || detail.contains("this server trains on the CPU"), "{v}");
}
