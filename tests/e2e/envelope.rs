//! The error envelope on every answer, checked with raw bytes over a TCP stream: weird but
//! parseable requests reach the application and every non-2xx answer is the envelope; the
//! requests actix-http's HTTP/1 codec refuses before any service runs get the documented
//! status with an empty body (README "Errors"), the connection closes, and the server keeps
//! serving.

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpStream},
    time::Duration,
};

use serde_json::Value;

use crate::harness::{authority, envelope_code, Reply, Server, KEY};

/// Sends `request` as it is and reads the answer until the server closes the connection (every
/// request here asks for `Connection: close`, or is refused with the connection closed).
fn send(s: &Server, request: &[u8]) -> Reply {
    parse(&send_raw(s, request))
}

/// Sends `request` and returns every byte answered until the server closed the connection.
fn send_raw(s: &Server, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(authority(s)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // The server may answer and close before it has read everything (a refused head, a body
    // over the limit): a failed write is then expected, and the answer is still there to read.
    let _ = stream.write_all(request);
    let _ = stream.shutdown(Shutdown::Write);
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !bytes.is_empty() => break,
            Err(e) => panic!("reading the answer to {:?}: {e}", String::from_utf8_lossy(&request[..request.len().min(120)])),
        }
    }
    bytes
}

fn parse(bytes: &[u8]) -> Reply {
    let head_end =
        bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(bytes)));
    let mut reply = Reply::of_head(&bytes[..head_end], bytes[head_end + 4..].to_vec());
    if let Some(len) = reply.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        reply.body.truncate(len);
    } else if reply.header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        reply.body = dechunk(&reply.body);
    }
    reply
}

fn dechunk(mut bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = bytes.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&bytes[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&bytes[eol + 2..eol + 2 + size]);
        bytes = &bytes[eol + 2 + size + 2..];
    }
    out
}

/// A request with the test key and `Connection: close`; `extra` holds further header lines.
fn request(method: &str, target: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "{method} {target} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// Asserts the answer is the envelope (when it has a body: a HEAD answer has none) and returns
/// its code.
fn assert_envelope(what: &str, r: &Reply) -> String {
    let content_type = r.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("application/json"), "{what}: {} with content type {content_type:?}", r.status);
    if r.body.is_empty() && what.starts_with("HEAD ") {
        return String::new();
    }
    let v: Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{what}: {} with a body that is not JSON ({e}): {:?}", r.status, String::from_utf8_lossy(&r.body)));
    envelope_code(&v)
}

#[test]
fn weird_but_parseable_requests_get_the_envelope_on_every_refusal() {
    let s = Server::start();
    let long_query = format!("/api/v1/training/sessions?{}", "q=%ff&".repeat(6_000));
    let long_name = format!("/api/v1/models/{}", "a".repeat(5_000));
    let json = "Content-Type: application/json\r\n";
    // Method, target, extra header lines, body.
    let cases: Vec<(&str, &str, &str, &[u8])> = vec![
        ("BREW", "/health", "", b""),
        ("DELETE", "/", "", b""),
        ("PATCH", "/api/v1/models", "", b""),
        ("OPTIONS", "*", "", b""),
        ("HEAD", "/api/v1/nothing-here", "", b""),
        ("GET", "/%zz", "", b""),
        ("GET", "/api/v1/models/%00", "", b""),
        ("GET", "/api/v1/models/%ff%fe", "", b""),
        ("GET", "/api/v1/models/..%2F..%2Fetc%2Fpasswd", "", b""),
        ("GET", "//..//etc/passwd", "", b""),
        ("GET", "/api/v1/datasets/%E2%80%AE", "", b""),
        ("GET", &long_name, "", b""),
        ("GET", &long_query, "", b""),
        ("GET", "/api/v1/training/nope/logs?limit=abc", "", b""),
        ("GET", "/api/v1/training/nope/status?wait_seconds=%ff", "", b""),
        ("POST", "/api/v1/training/start", "", b""),
        ("POST", "/api/v1/training/start", json, b""),
        ("POST", "/api/v1/training/start", "Content-Type: text/plain\r\n", b"{}"),
        ("POST", "/api/v1/training/start", json, b"{\"model_architecture\": \"mlp\""),
        ("POST", "/api/v1/training/start", json, b"\xff\xfe{}"),
        ("POST", "/api/v1/training/start", json, b"[]"),
        ("POST", "/api/v1/training/start", json, b"{\"epochs\": 1e999}"),
        ("POST", "/api/v1/models/m/predict", json, b""),
        ("POST", "/api/v1/models/m/predict", "", b"{}"),
        ("POST", "/api/v1/models/m/predict", "Content-Type: multipart/form-data\r\n", b"--x--"),
        ("POST", "/api/v1/models/m/generate", json, b"null"),
        ("POST", "/api/v1/models", "", b""),
        ("POST", "/api/v1/models?model_name=m", "Content-Type: multipart/form-data; boundary=zz\r\n", b"garbage"),
        ("POST", "/api/v1/datasets?dataset_name=d", "Content-Type: multipart/form-data; boundary=zz\r\n", b"--zz\r\n\r\n--zz--\r\n"),
        ("DELETE", "/api/v1/datasets/%2e%2e", "", b""),
        ("POST", "/api/v1/training/%20/stop", "", b""),
    ];
    let mut refused = 0;
    for (method, target, extra, body) in &cases {
        let what = format!("{method} {}", &target[..target.len().min(80)]);
        let r = send(&s, &request(method, target, extra, body));
        assert!(r.status >= 200, "{what}: {}", r.status);
        if r.status >= 400 {
            assert_envelope(&what, &r);
            refused += 1;
        }
        let (code, _) = s.get("/health");
        assert_eq!(code, 200, "the server serves after {what}");
    }
    assert!(refused >= cases.len() - 2, "only {refused} of {} were refused", cases.len());
}

/// Header bytes that are not UTF-8 (a key of `\xff\xfe`) reach the application too.
#[test]
fn a_key_header_that_is_not_utf8_is_a_401_envelope() {
    let s = Server::start();
    let mut raw = b"GET /api/v1/models HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nX-API-Key: ".to_vec();
    raw.extend_from_slice(b"\xff\xfe\r\n\r\n");
    let r = send(&s, &raw);
    assert_eq!(r.status, 401);
    assert_eq!(assert_envelope("non-UTF-8 key", &r), "API_KEY_MISSING");
}

#[test]
fn requests_the_codec_refuses_get_the_documented_status_and_the_server_keeps_serving() {
    let s = Server::start();
    let hundred_kb_path = format!("GET /{} HTTP/1.1\r\nHost: localhost\r\n\r\n", "a".repeat(100 * 1024)).into_bytes();
    let many_headers = format!("GET /health HTTP/1.1\r\nHost: localhost\r\n{}\r\n", "X-A: b\r\n".repeat(500)).into_bytes();
    // Exactly 128 KiB of a head that has not ended: the codec has read every byte when it
    // refuses, so the connection closes cleanly and the answer can be read.
    let mut huge_head = b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: ".to_vec();
    huge_head.resize(128 * 1024, b'b');
    // What is sent, and the status actix-http's codec answers with an empty body.
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("NUL byte in the path", b"GET /he\0alth HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(), 400),
        ("non-UTF-8 byte in the path", b"GET /he\xffalth HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(), 400),
        ("space in the path", b"GET /he alth HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(), 400),
        ("100 KB path", hundred_kb_path, 400),
        ("500 headers", many_headers, 431),
        ("128 KiB head", huge_head, 431),
        ("header line without a colon", b"GET /health HTTP/1.1\r\nHost: localhost\r\nno colon here\r\n\r\n".to_vec(), 400),
        ("HTTP/9.9", b"GET /health HTTP/9.9\r\nHost: localhost\r\n\r\n".to_vec(), 400),
        ("HTTP/1.1 without Host", b"GET /health HTTP/1.1\r\n\r\n".to_vec(), 400),
        (
            "Content-Length and Transfer-Encoding",
            b"POST /health HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            400,
        ),
        ("Content-Length not a number", b"POST /health HTTP/1.1\r\nHost: localhost\r\nContent-Length: abc\r\n\r\n".to_vec(), 400),
        ("method with a NUL", b"GE\0T /health HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(), 400),
        (
            "Transfer-Encoding other than chunked",
            b"POST /health HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
            400,
        ),
        ("HTTP/1.0 POST without Content-Length", b"POST /health HTTP/1.0\r\n\r\n".to_vec(), 400),
    ];
    // A chunked body whose chunk size is not hexadecimal: the codec fails the body under the
    // handler and closes the connection without any answer.
    let bad_chunk = format!(
        "POST /api/v1/training/start HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n"
    );
    let answer = send_raw(&s, bad_chunk.as_bytes());
    assert!(answer.is_empty(), "a bad chunk size: {:?}", String::from_utf8_lossy(&answer));
    for (what, raw, status) in cases {
        let r = send(&s, &raw);
        assert_eq!(r.status, status, "{what}: {r:?}");
        assert!(
            r.body.is_empty(),
            "{what}: the codec answers without a body (README \"Errors\"); got {:?}",
            String::from_utf8_lossy(&r.body)
        );
        let (code, _) = s.get("/health");
        assert_eq!(code, 200, "the server serves after {what}");
    }
}
