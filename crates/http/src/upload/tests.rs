//! The multipart reader fuzzed: valid uploads with random boundaries, fields and contents,
//! the same cut or overwritten, arbitrary bytes behind a random boundary, and the checked-in
//! corpus of tricky bodies (`tests/corpus/multipart`). Each runs through [`receive`] as the
//! upload routes call it; none may panic, and once the answer is dropped the staging directory
//! is empty again.

use actix_web::{test::TestRequest, web, FromRequest};
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};

use super::*;

/// Cases per property: bounded so that the fuzzing stays a few seconds of `cargo test`.
const CASES: u64 = 300;
/// How long one body may take to be read before the reader counts as hung.
const HANG: std::time::Duration = std::time::Duration::from_secs(10);

/// Receives `body` sent with `content_type` into a fresh staging directory, with `limit`;
/// returns what `receive` answered and the staging directory's entries after the answer was
/// dropped.
/// `None` when `content_type` is no header value HTTP can carry (control characters): such a
/// request never reaches the reader.
fn run(content_type: &str, body: Vec<u8>, limit: u64) -> Option<(Result<u64, ApiError>, Vec<String>)> {
    let ct = header::HeaderValue::from_str(content_type).ok()?;
    let staging = tempfile::tempdir().expect("staging dir");
    let dir = staging.path().to_path_buf();
    let answer = actix_web::rt::System::new().block_on(async move {
        let (req, mut payload) = TestRequest::post().insert_header((header::CONTENT_TYPE, ct)).set_payload(body).to_http_parts();
        let payload = web::Payload::from_request(&req, &mut payload).await.expect("payload");
        // A reader that waits forever on a finished body is a failure too (the idle timeout,
        // longer than that, must not be what ends it).
        let counted = Counter::default();
        let received = actix_web::rt::time::timeout(HANG, receive(&req, payload, dir, limit, 6 * HANG, &counted)).await;
        let received = received.unwrap_or_else(|_| Err(ApiError::internal(&"the reader hung")))?;
        // The upload metric counts exactly the file's bytes of an upload received.
        match counted.get() {
            n if n == received.size => Ok(received.size),
            n => Err(ApiError::internal(&format!("{n} bytes counted for a file of {}", received.size))),
        }
    });
    let left = std::fs::read_dir(staging.path())
        .expect("list staging")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    Some((answer, left))
}

/// A boundary as RFC 2046 allows it (1 to 70 characters of its set), or sometimes any text.
fn boundary(g: &mut Gen) -> String {
    const SET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? ";
    if u8::arbitrary(g) % 8 == 0 {
        return String::arbitrary(g);
    }
    let len = 1 + usize::arbitrary(g) % 70;
    let mut b: String = (0..len).map(|_| char::from(*g.choose(SET).unwrap_or(&b'x'))).collect();
    if b.ends_with(' ') {
        b.push('x');
    }
    b
}

/// One multipart upload: its content type, its body, and the size of its `file` field when the
/// body is well formed and holds exactly one.
#[derive(Debug, Clone)]
struct Upload {
    content_type: String,
    body: Vec<u8>,
    file_size: Option<u64>,
    limit: u64,
}

/// Printable text for a quoted header parameter.
fn header_text(g: &mut Gen) -> String {
    String::arbitrary(g).chars().filter(|c| (c.is_ascii_graphic() || *c == ' ') && !matches!(c, '"' | '\\')).collect()
}

fn part(out: &mut Vec<u8>, boundary: &str, name: &str, filename: Option<&str>, content: &[u8]) {
    out.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"").as_bytes());
    if let Some(f) = filename {
        out.extend_from_slice(format!("; filename=\"{f}\"").as_bytes());
    }
    out.extend_from_slice(b"\r\nContent-Type: application/octet-stream\r\n\r\n");
    out.extend_from_slice(content);
    out.extend_from_slice(b"\r\n");
}

impl Arbitrary for Upload {
    fn arbitrary(g: &mut Gen) -> Self {
        let b = boundary(g);
        let mut body = Vec::new();
        let mut files = 0;
        let mut file_size = 0;
        for _ in 0..usize::arbitrary(g) % 4 {
            let is_file = bool::arbitrary(g);
            let content = Vec::<u8>::arbitrary(g);
            if is_file {
                files += 1;
                file_size = content.len() as u64;
            }
            let name = if is_file { "file".to_owned() } else { format!("field-{}", header_text(g)) };
            let filename = header_text(g);
            part(&mut body, &b, &name, is_file.then_some(filename.as_str()), &content);
        }
        body.extend_from_slice(format!("--{b}--\r\n").as_bytes());
        // The declared boundary, quoted or not; the body's own boundary whatever it holds.
        let content_type = if bool::arbitrary(g) {
            format!("multipart/form-data; boundary=\"{b}\"")
        } else {
            format!("multipart/form-data; boundary={b}")
        };
        let limit = if u8::arbitrary(g) % 4 == 0 { u64::arbitrary(g) % 64 } else { 1 << 20 };
        // RFC 2046: 1 to 70 characters; an empty boundary (which `String::arbitrary` gives now
        // and then) makes the header unparseable, so such an upload is not well formed.
        let token = (1..=70).contains(&b.len()) && b.bytes().all(|c| c.is_ascii_alphanumeric() || b"'+_-.".contains(&c));
        let well_formed = files == 1 && file_size > 0 && file_size <= limit && token;
        Self { content_type, body, file_size: well_formed.then_some(file_size), limit }
    }
}

/// An upload with bytes overwritten, cut, or inserted, or its declared boundary changed.
#[derive(Debug, Clone)]
struct Damaged(Upload);

impl Arbitrary for Damaged {
    fn arbitrary(g: &mut Gen) -> Self {
        let mut u = Upload::arbitrary(g);
        u.file_size = None;
        for _ in 0..1 + usize::arbitrary(g) % 3 {
            let len = u.body.len().max(1);
            match u8::arbitrary(g) % 5 {
                0 => u.body.truncate(usize::arbitrary(g) % len),
                1 if !u.body.is_empty() => {
                    let at = usize::arbitrary(g) % u.body.len();
                    u.body[at] = *g.choose(b"-\r\n\"; =\x00\xff").unwrap_or(&0);
                }
                2 => {
                    let at = usize::arbitrary(g) % (u.body.len() + 1);
                    let insert = Vec::<u8>::arbitrary(g);
                    u.body.splice(at..at, insert);
                }
                3 => u.content_type = format!("multipart/form-data; boundary={}", boundary(g)),
                _ => u.content_type = format!("multipart/form-data{}", String::arbitrary(g)),
            }
        }
        Self(u)
    }
}

/// Arbitrary bytes sent as a multipart body with a random boundary.
#[derive(Debug, Clone)]
struct Noise(Upload);

impl Arbitrary for Noise {
    fn arbitrary(g: &mut Gen) -> Self {
        let b = boundary(g);
        let mut body = if bool::arbitrary(g) { format!("--{b}\r\n").into_bytes() } else { Vec::new() };
        body.extend(Vec::<u8>::arbitrary(g));
        Self(Upload { content_type: format!("multipart/form-data; boundary={b}"), body, file_size: None, limit: 1 << 20 })
    }
}

/// `receive`'s answer is well handled: the size of a well-formed upload, or a 4xx that says why;
/// and nothing is left staged either way.
fn well_handled(u: Upload) -> TestResult {
    let expected = u.file_size;
    let shown = format!("{:?} with {:?}", u.content_type, String::from_utf8_lossy(&u.body));
    let Some((answer, left)) = run(&u.content_type, u.body, u.limit) else { return TestResult::discard() };
    if !left.is_empty() {
        return TestResult::error(format!("staged files left behind: {left:?}, for {shown}"));
    }
    match (answer, expected) {
        (Ok(size), Some(want)) if size == want => TestResult::passed(),
        (Ok(size), None) => TestResult::from_bool(size > 0 && size <= u.limit),
        (Err(e), None) if e.code.status().is_client_error() && !e.message.is_empty() => TestResult::passed(),
        (other, want) => TestResult::error(format!("{other:?}, expected a file of {want:?} bytes, for {shown}")),
    }
}

// Property 56: any multipart body (well formed with a random boundary and fields, the same
// damaged, or arbitrary bytes behind a boundary) never panics the upload reader; it is received
// with the exact size of its one `file` field or refused with a 4xx that says why, and once the
// answer is dropped no staged file is left.
#[test]
fn prop56_well_formed_uploads_are_received_exactly_and_leave_nothing() {
    QuickCheck::new().tests(CASES).rng(Gen::new(200)).quickcheck(well_handled as fn(Upload) -> TestResult);
}

#[test]
fn prop56_damaged_uploads_are_refused_or_received_and_leave_nothing() {
    QuickCheck::new().tests(CASES).rng(Gen::new(200)).quickcheck((|d: Damaged| well_handled(d.0)) as fn(Damaged) -> TestResult);
}

#[test]
fn prop56_noise_behind_a_boundary_is_refused_and_leaves_nothing() {
    QuickCheck::new().tests(CASES).rng(Gen::new(200)).quickcheck((|n: Noise| well_handled(n.0)) as fn(Noise) -> TestResult);
}

/// The corpus: each file's first line is the `Content-Type` header, the rest the body sent
/// (`\n` line ends are sent as `\r\n`). `ok-*` files are received with the size the name ends
/// with (`ok-name-5.txt`: 5 bytes), `bad-*` files refused with a 4xx; none leaves a file.
#[test]
fn the_multipart_corpus_is_received_or_refused_as_named() {
    for (name, raw) in crate::corpus("multipart") {
        let split = raw.iter().position(|&b| b == b'\n').unwrap_or(raw.len());
        let content_type = String::from_utf8_lossy(&raw[..split]).trim().to_owned();
        let mut body = Vec::new();
        for &b in raw.get(split + 1..).unwrap_or_default() {
            if b == b'\n' && body.last() != Some(&b'\r') {
                body.push(b'\r');
            }
            body.push(b);
        }
        let (answer, left) = run(&content_type, body, 1 << 20).expect("a valid Content-Type");
        assert!(left.is_empty(), "{name}: left {left:?}");
        if let Some(size) = name.strip_prefix("ok-").and_then(|n| n.rsplit('-').next()).and_then(|n| n.parse::<u64>().ok()) {
            assert_eq!(answer.as_ref().ok(), Some(&size), "{name}: {answer:?}");
        } else {
            assert!(name.starts_with("bad-"), "corpus files are named ok-*-SIZE or bad-*: {name}");
            assert!(answer.as_ref().is_err_and(|e| e.code.status().is_client_error()), "{name}: {answer:?}");
        }
    }
}
