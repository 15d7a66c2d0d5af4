//! The model and dataset registries through HTTP.

use std::{
    fs,
    io::{Read, Write},
    net::TcpStream,
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use quickcheck::{QuickCheck, TestResult};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::harness::{envelope_code, example, unique_name, with_thread_server, zip_of, Opts, Server, KEY};

/// A safetensors file holding `bytes` as one `U8` tensor: any bytes become a valid model.
fn safetensors_of(bytes: &[u8]) -> Vec<u8> {
    safetensors_with(&format!(r#"{{"w":{{"dtype":"U8","shape":[{n}],"data_offsets":[0,{n}]}}}}"#, n = bytes.len()), bytes)
}

fn safetensors_with(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A GET with extra headers: status, the headers asked for, body.
fn get_with(s: &Server, path: &str, headers: &[(&str, &str)], want: &[&str]) -> (u16, Vec<Option<String>>, Vec<u8>) {
    let mut req = s.req("GET", path);
    for (name, value) in headers {
        req = req.set(name, value);
    }
    let resp = match req.call() {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("GET {path}: {e}"),
    };
    let status = resp.status();
    let found = want.iter().map(|h| resp.header(h).map(str::to_owned)).collect();
    let mut body = Vec::new();
    resp.into_reader().read_to_end(&mut body).expect("body");
    (status, found, body)
}

fn files_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

// Property 32: any bytes uploaded as a model download back identical, are listed with their
// size, and after delete neither the row nor the file remains.
fn prop32_case(bytes: Vec<u8>) -> TestResult {
    if bytes.is_empty() {
        return TestResult::discard();
    }
    let bytes = safetensors_of(&bytes);
    with_thread_server(|s| {
        let name = unique_name("m");
        let (code, v) = s.upload(&format!("/api/v1/models?model_name={name}"), "weights.bin", &bytes);
        if code != 200 || v["name"] != name.as_str() || v["size_bytes"].as_u64() != Some(bytes.len() as u64) {
            return TestResult::error(format!("upload: {code} {v}"));
        }
        let (code, back, _) = s.get_bytes(&format!("/api/v1/models/{name}"));
        let (_, list) = s.get("/api/v1/models");
        let listed = list
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == name.as_str() && m["format"] == "safetensors" && m["content_hash"] == sha256_hex(&bytes).as_str());
        let (del, _) = s.delete(&format!("/api/v1/models/{name}"));
        let (gone, _, _) = s.get_bytes(&format!("/api/v1/models/{name}"));
        TestResult::from_bool(code == 200 && back == bytes && listed && del == 200 && gone == 404)
    })
}

#[test]
fn prop32_model_upload_download_round_trip() {
    QuickCheck::new().tests(25).quickcheck(prop32_case as fn(Vec<u8>) -> TestResult);
    with_thread_server(|s| assert_eq!(files_in(&s.data_dir.join("models")), [".staging"], "every file was deleted with its row"));
}

#[test]
fn duplicate_names_conflict_and_unknown_names_are_404() {
    let s = Server::start();
    let (code, _) = s.upload("/api/v1/models?model_name=dup", "a.bin", &safetensors_of(b"first"));
    assert_eq!(code, 200);
    let (code, v) = s.upload("/api/v1/models?model_name=dup", "b.bin", &safetensors_of(b"second"));
    assert_eq!((code, envelope_code(&v).as_str()), (409, "CONFLICT"));
    assert!(v["detail"].as_str().unwrap().contains("overwrite=true"), "{v}");
    let (_, back, _) = s.get_bytes("/api/v1/models/dup");
    assert_eq!(back, safetensors_of(b"first"), "the first upload is kept");
    let (code, v) = s.delete("/api/v1/models/never");
    assert_eq!((code, envelope_code(&v).as_str()), (404, "MODEL_NOT_FOUND"));
    let (code, v) = s.get("/api/v1/datasets/never");
    assert_eq!((code, envelope_code(&v).as_str()), (404, "DATASET_NOT_FOUND"));
    let (code, v) = s.upload("/api/v1/datasets?dataset_name=iris", "iris.csv", &fs::read(example("iris.csv")).unwrap());
    assert_eq!(code, 200, "{v}");
    let (code, v) = s.upload("/api/v1/datasets?dataset_name=iris", "iris.csv", b"a,b\n1,2\n");
    assert_eq!((code, envelope_code(&v).as_str()), (409, "CONFLICT"));
}

// Property 34: a name that is not an identifier (separators, parent references, encoded
// forms, control characters, over-long) is a 400 on upload, download and delete, and nothing
// is written.
fn prop34_case(seed: String, pick: u8) -> bool {
    const EVIL: [&str; 9] = ["..%2F..%2Fetc%2Fpasswd", "%2E%2E", "a%2Fb", "a%5Cb", "%2Fabs", "a%00b", "a%0Ab", "..hidden", "x%20y"];
    let clean: String = seed.chars().filter(char::is_ascii_alphanumeric).take(8).collect();
    let name = format!("{clean}{}", EVIL[usize::from(pick) % EVIL.len()]);
    with_thread_server(|s| {
        let up = s.upload(&format!("/api/v1/models?model_name={name}"), "x.bin", b"data");
        let up_ds = s.upload(&format!("/api/v1/datasets?dataset_name={name}"), "x.csv", b"a,b\n1,2\n");
        let refused = |code: u16| code == 400 || code == 404;
        let (down, _, _) = s.get_bytes(&format!("/api/v1/models/{name}"));
        let (del, _) = s.delete(&format!("/api/v1/models/{name}"));
        let (get_ds, _) = s.get(&format!("/api/v1/datasets/{name}"));
        up.0 == 400 && envelope_code(&up.1) == "INVALID_NAME" && up_ds.0 == 400 && refused(down) && refused(del) && refused(get_ds)
    })
}

#[test]
fn prop34_traversal_names_are_refused_everywhere() {
    QuickCheck::new().tests(30).quickcheck(prop34_case as fn(String, u8) -> bool);
    with_thread_server(|s| {
        let long = "a".repeat(200);
        let (code, v) = s.upload(&format!("/api/v1/models?model_name={long}"), "x.bin", b"data");
        assert_eq!((code, envelope_code(&v).as_str()), (400, "INVALID_NAME"));
        assert_eq!(files_in(&s.data_dir.join("models")), [".staging"]);
        assert_eq!(files_in(&s.data_dir.join("models").join(".staging")), Vec::<String>::new());
    });
}

// Property 33: an uploaded numeric table is listed with its row count, feature count and
// format, and its statistics are served by GET /api/v1/datasets/{name}.
fn prop33_case(rows: u8, cols: u8, values: Vec<i16>) -> TestResult {
    let (rows, cols) = (usize::from(rows % 20) + 2, usize::from(cols % 6) + 2);
    if values.is_empty() {
        return TestResult::discard();
    }
    let name = unique_name("t");
    let header: Vec<String> = (0..cols - 1).map(|c| format!("f{c}")).chain(["label".to_owned()]).collect();
    let mut csv = header.join(",") + "\n";
    for r in 0..rows {
        let row: Vec<String> = (0..cols)
            .map(|c| if c == cols - 1 { (r % 2).to_string() } else { values[(r * cols + c) % values.len()].to_string() })
            .collect();
        csv += &(row.join(",") + "\n");
    }
    with_thread_server(|s| {
        let (code, v) = s.upload(&format!("/api/v1/datasets?dataset_name={name}"), "t.csv", csv.as_bytes());
        let (gcode, full) = s.get(&format!("/api/v1/datasets/{name}"));
        let expected_dims = (cols - 1).to_string();
        TestResult::from_bool(
            code == 200
                && v["sample_count"].as_u64() == Some(rows as u64)
                && gcode == 200
                && full["format"] == "csv"
                && full["dimensions"].as_str() == Some(expected_dims.as_str())
                && full["statistics"].is_object(),
        )
    })
}

#[test]
fn prop33_csv_datasets_are_inspected_at_upload() {
    QuickCheck::new().tests(15).quickcheck(prop33_case as fn(u8, u8, Vec<i16>) -> TestResult);
    with_thread_server(|s| {
        let (_, list) = s.get("/api/v1/datasets");
        let first = &list.as_array().unwrap()[0];
        for field in ["name", "size_mb", "sample_count", "format", "dimensions", "created_at", "file_path"] {
            assert!(first.get(field).is_some(), "{field} in {first}");
        }
    });
}

#[test]
fn prop37_rejected_uploads_leave_nothing_behind() {
    // Property 37: an upload refused for any reason (malformed table, too large, no file
    // field) leaves no row and no file, and the server keeps serving.
    let s = Server::start_with(Opts { extra_args: vec!["--max-dataset-upload-mb".into(), "1".into()], ..Opts::default() });
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("ragged.csv", b"a,b,label\n1,2,0\n3,4\n5,6,1\n".to_vec(), 400),
        ("words.csv", b"a,b,label\n1,x,0\n3,4,1\n".to_vec(), 400),
        ("bad.txt", vec![0xff, 0xfe, 0x00, 0x01, 0x80, 0x81], 400),
        ("huge.csv", vec![b'1'; 2 * 1024 * 1024], 413),
    ];
    for (i, (file, bytes, expected)) in cases.iter().enumerate() {
        let (code, v) = s.upload(&format!("/api/v1/datasets?dataset_name=bad{i}"), file, bytes);
        assert_eq!(code, *expected, "{file}: {v}");
        envelope_code(&v);
    }
    let (code, v) = crate::harness::status_json(
        s.req("POST", "/api/v1/datasets?dataset_name=nofile")
            .set("Content-Type", "multipart/form-data; boundary=x")
            .send_bytes(b"--x--\r\n"),
    );
    assert_eq!(code, 400, "{v}");
    let (code, v) = crate::harness::status_json(s.req("POST", "/api/v1/datasets?dataset_name=raw").send_bytes(b"a,b\n1,2\n"));
    assert_eq!((code, envelope_code(&v).as_str()), (415, "UNSUPPORTED_MEDIA_TYPE"));
    let (_, list) = s.get("/api/v1/datasets");
    assert_eq!(list.as_array().unwrap().len(), 0);
    let dir = s.data_dir.join("datasets");
    assert_eq!(files_in(&dir), [".staging"]);
    assert_eq!(files_in(&dir.join(".staging")), Vec::<String>::new());
}

fn models_dir_files(s: &Server) -> Vec<String> {
    files_in(&s.data_dir.join("models"))
}

#[test]
fn concurrent_same_name_uploads_exactly_one_wins() {
    let s = Arc::new(Server::start());
    for round in 0..4 {
        let name = format!("race{round}");
        let barrier = Arc::new(Barrier::new(2));
        let racers: Vec<_> = (0..2u8)
            .map(|i| {
                let (s, barrier, name) = (s.clone(), barrier.clone(), name.clone());
                std::thread::spawn(move || {
                    let bytes = safetensors_of(&vec![i; 2 * 1024 * 1024]);
                    barrier.wait();
                    let (code, v) = s.upload(&format!("/api/v1/models?model_name={name}"), "w.safetensors", &bytes);
                    (code, v, bytes)
                })
            })
            .collect();
        let mut outcomes: Vec<_> = racers.into_iter().map(|t| t.join().unwrap()).collect();
        outcomes.sort_by_key(|(code, _, _)| *code);
        let codes: Vec<u16> = outcomes.iter().map(|(code, _, _)| *code).collect();
        assert_eq!(codes, [200, 409], "{:?}", outcomes.iter().map(|(_, v, _)| v).collect::<Vec<_>>());
        assert_eq!(envelope_code(&outcomes[1].1), "CONFLICT");
        let (_, back, _) = s.get_bytes(&format!("/api/v1/models/{name}"));
        assert!(back == outcomes[0].2, "the winner's bytes are served");
        let files: Vec<String> = models_dir_files(&s).into_iter().filter(|f| f.starts_with(&format!("{name}_"))).collect();
        assert_eq!(files.len(), 1, "one file on disk for {name}: {files:?}");
    }
    assert_eq!(files_in(&s.data_dir.join("models/.staging")), Vec::<String>::new(), "the losers' staged files are gone");
}

#[test]
fn a_client_that_disconnects_mid_upload_leaves_nothing() {
    let s = Server::start();
    let staging = s.data_dir.join("models/.staging");
    let addr = s.base.trim_start_matches("http://").to_owned();
    let boundary = "----halfway";
    let preamble = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.safetensors\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    );
    let mut conn = TcpStream::connect(&addr).unwrap();
    write!(
        conn,
        "POST /api/v1/models?model_name=halfway HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\n\r\n{preamble}",
        64 * 1024 * 1024
    )
    .unwrap();
    // Half of the declared body (well past the server's write buffer), then the client goes away.
    let chunk = vec![7u8; 1024 * 1024];
    for _ in 0..8 {
        conn.write_all(&chunk).unwrap();
    }
    conn.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while files_in(&staging).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(files_in(&staging).len(), 1, "the upload was being staged");
    drop(conn);

    let deadline = Instant::now() + Duration::from_secs(20);
    while !files_in(&staging).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(files_in(&staging), Vec::<String>::new(), "the partial upload is removed");
    assert_eq!(models_dir_files(&s), [".staging"]);
    let (code, health) = s.get("/health");
    assert_eq!((code, health["status"].as_str()), (200, Some("healthy")));
    let (_, list) = s.get("/api/v1/models");
    assert_eq!(list, json!([]));
    let (code, v) = s.upload("/api/v1/models?model_name=halfway", "w.safetensors", &safetensors_of(b"complete"));
    assert_eq!(code, 200, "the name is free: {v}");
}

#[test]
fn overwrite_replaces_the_file_and_changes_the_etag() {
    let s = Server::start_with(Opts { extra_args: vec!["--examples".into()], ..Opts::default() });
    let (v1, v2) = (safetensors_of(b"version one"), safetensors_of(b"version two, longer"));
    let (code, up) = s.upload("/api/v1/models?model_name=m", "m.safetensors", &v1);
    assert_eq!(code, 200, "{up}");
    assert_eq!(up["content_hash"], sha256_hex(&v1).as_str());
    let (_, etags, _) = get_with(&s, "/api/v1/models/m", &[], &["etag"]);
    let etag1 = etags[0].clone().unwrap();
    let (code, v) = s.upload("/api/v1/models?model_name=m&overwrite=false", "m.safetensors", &v2);
    assert_eq!((code, envelope_code(&v).as_str()), (409, "CONFLICT"));
    let (code, v) = s.upload("/api/v1/models?model_name=m&overwrite=true", "m.safetensors", &v2);
    assert_eq!(code, 200, "{v}");
    let (code, etags, body) = get_with(&s, "/api/v1/models/m", &[("If-None-Match", &etag1)], &["etag"]);
    assert_eq!(code, 200, "the old ETag no longer matches");
    assert_eq!(body, v2);
    let etag2 = etags[0].clone().unwrap();
    assert_ne!(etag1, etag2);
    assert_eq!(etag2, format!("\"sha256-{}\"", sha256_hex(&v2)));
    let (_, list) = s.get("/api/v1/models");
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["content_hash"], sha256_hex(&v2).as_str());
    assert_eq!(models_dir_files(&s).len(), 2, "the new file and the staging directory: {:?}", models_dir_files(&s));
    // Overwriting a name that does not exist creates it.
    let (code, _) = s.upload("/api/v1/models?model_name=fresh&overwrite=true", "m.safetensors", &v1);
    assert_eq!(code, 200);

    // A dataset keeps its place in the listing; while a running session uses it, it is a 409.
    let (_, before) = s.get("/api/v1/datasets");
    let (code, v) =
        s.upload("/api/v1/datasets?dataset_name=tempest&overwrite=true", "t.txt", b"To be, or not to be.\n".repeat(50).as_slice());
    assert_eq!(code, 200, "{v}");
    let (_, after) = s.get("/api/v1/datasets");
    let names = |l: &Value| l.as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap().to_owned()).collect::<Vec<_>>();
    assert_eq!(names(&before), names(&after));
    assert_ne!(before[0]["content_hash"], after[0]["content_hash"]);
    let (code, v) = s.post_json(
        "/api/v1/training/start",
        &json!({"model_architecture": "mlp", "dataset_name": "digits", "epochs": 1000, "batch_size": 1}),
    );
    assert_eq!(code, 200, "{v}");
    let session = v["session_id"].as_str().unwrap().to_owned();
    let (code, v) = s.upload("/api/v1/datasets?dataset_name=digits&overwrite=true", "d.csv", b"a,label\n1,0\n2,1\n");
    assert_eq!((code, envelope_code(&v).as_str()), (409, "CONFLICT"));
    assert!(v["detail"].as_str().unwrap().contains(&session), "the conflict names the session: {v}");
    let (code, _) = s.post(&format!("/api/v1/training/{session}/stop"));
    assert_eq!(code, 200);
    s.wait_ended(&session);
}

#[test]
fn etags_answer_conditional_and_range_requests() {
    let s = Server::start();
    let payload: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let file = safetensors_of(&payload);
    let len = file.len();
    let (code, _) = s.upload("/api/v1/models?model_name=r", "r.safetensors", &file);
    assert_eq!(code, 200);
    let path = "/api/v1/models/r";
    let (code, h, body) = get_with(&s, path, &[], &["etag", "accept-ranges", "content-length"]);
    assert_eq!((code, body.as_slice()), (200, file.as_slice()));
    let etag = h[0].clone().unwrap();
    assert_eq!(etag, format!("\"sha256-{}\"", sha256_hex(&file)));
    assert_eq!(h[1].as_deref(), Some("bytes"));
    assert_eq!(h[2], Some(len.to_string()));

    let (code, h, body) = get_with(&s, path, &[("If-None-Match", &etag)], &["etag"]);
    assert_eq!((code, h[0].as_deref(), body.len()), (304, Some(etag.as_str()), 0));
    let (code, _, _) = get_with(&s, path, &[("If-None-Match", "\"sha256-other\", W/\"x\"")], &[]);
    assert_eq!(code, 200);

    // Resume: the first 100 bytes, then the rest while the ETag still matches.
    let (code, h, first) = get_with(&s, path, &[("Range", "bytes=0-99")], &["content-range"]);
    assert_eq!((code, h[0].clone()), (206, Some(format!("bytes 0-99/{len}"))));
    let (code, h, rest) = get_with(&s, path, &[("Range", "bytes=100-"), ("If-Range", &etag)], &["content-range", "etag"]);
    assert_eq!((code, h[0].clone(), h[1].clone()), (206, Some(format!("bytes 100-{}/{len}", len - 1)), Some(etag.clone())));
    assert_eq!([first, rest].concat(), file);

    // A range of another version is not spliced in: the whole current file comes back.
    let (code, _, body) = get_with(&s, path, &[("Range", "bytes=100-"), ("If-Range", "\"sha256-stale\"")], &[]);
    assert_eq!((code, body.len()), (200, len));
    let (code, h, body) = get_with(&s, path, &[("Range", &format!("bytes={}-", len + 10))], &["content-range"]);
    assert_eq!((code, h[0].clone()), (416, Some(format!("bytes */{len}"))));
    assert_eq!(envelope_code(&serde_json::from_slice(&body).unwrap()), "RANGE_NOT_SATISFIABLE");
    let (code, _, body) = get_with(&s, path, &[("If-Match", "\"sha256-stale\"")], &[]);
    assert_eq!(code, 412);
    assert_eq!(envelope_code(&serde_json::from_slice(&body).unwrap()), "PRECONDITION_FAILED");
    let (code, _, _) = get_with(&s, path, &[("If-Match", &etag)], &[]);
    assert_eq!(code, 200);
}

/// The protobuf wire format, for building ONNX files.
fn pb_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn pb_int(number: u64, v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    pb_varint(number << 3, &mut out);
    pb_varint(v, &mut out);
    out
}

fn pb_len(number: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    pb_varint((number << 3) | 2, &mut out);
    pb_varint(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

/// An ONNX model whose one initializer, `w`, carries `extra` fields.
fn onnx_model(extra: &[Vec<u8>]) -> Vec<u8> {
    let mut tensor = [pb_int(1, 4), pb_int(2, 1), pb_len(8, b"w")].concat();
    tensor.extend(extra.concat());
    let graph = [pb_len(1, &[pb_len(4, b"Relu")].concat()), pb_len(2, b"g"), pb_len(5, &tensor)].concat();
    let opset = [pb_len(1, b""), pb_int(2, 17)].concat();
    [pb_int(1, 8), pb_len(2, b"test"), pb_len(7, &graph), pb_len(8, &opset)].concat()
}

#[test]
fn hostile_model_files_are_refused_with_the_reason() {
    let s = Server::start();
    let overlap = safetensors_with(
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
        &[0; 12],
    );
    let mut longer = safetensors_of(b"abcd");
    longer[..8].copy_from_slice(&1_000_000u64.to_le_bytes());
    let system = zip_of(&[("archive/data.pkl", b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R."), ("archive/version", b"3\n")]);
    let climbing = zip_of(&[("archive/data.pkl", b"\x80\x02}q\x00."), ("archive/../../etc/cron.d/x", b"x")]);
    let location = [pb_len(1, b"location"), pb_len(2, b"/etc/passwd")].concat();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("overlap.safetensors", overlap, "'a' and 'b' overlap"),
        ("long.safetensors", longer, "longer than the file"),
        ("system.pth", system, "forbidden global 'os.system'"),
        ("climb.pth", climbing, "'archive/../../etc/cron.d/x' is not allowed"),
        ("legacy.pth", b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.".to_vec(), "legacy"),
        ("external.onnx", onnx_model(&[pb_int(14, 1)]), "external data"),
        ("external2.onnx", onnx_model(&[pb_len(13, &location)]), "external data"),
        ("notes.bin", b"just some bytes, not a model".to_vec(), "supported formats are safetensors, pytorch, onnx"),
    ];
    for (i, (file, bytes, reason)) in cases.iter().enumerate() {
        let (code, v) = s.upload(&format!("/api/v1/models?model_name=hostile{i}"), file, bytes);
        assert_eq!((code, envelope_code(&v).as_str()), (400, "INVALID_MODEL"), "{file}: {v}");
        assert!(v["detail"].as_str().unwrap().contains(reason), "{file}: {v}");
        let (code, _) = s.get("/health");
        assert_eq!(code, 200, "the server keeps serving after {file}");
    }
    let (code, v) = s.upload("/api/v1/models?model_name=fine", "fine.onnx", &onnx_model(&[pb_len(9, &[0; 16])]));
    assert_eq!((code, v["format"].as_str()), (200, Some("onnx")), "{v}");
    let (_, list) = s.get("/api/v1/models");
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["fine"]);
    assert_eq!(list[0]["parameter_count"], 4);
    assert_eq!(list[0]["metadata"]["opsets"], json!([{ "domain": "ai.onnx", "version": 17 }]));
    assert_eq!(models_dir_files(&s).len(), 2, "one file and the staging directory");
    assert_eq!(files_in(&s.data_dir.join("models/.staging")), Vec::<String>::new());
}
