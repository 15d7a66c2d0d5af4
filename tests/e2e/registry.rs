//! The model and dataset registries through HTTP.

use std::fs;

use quickcheck::{QuickCheck, TestResult};

use crate::harness::{envelope_code, example, unique_name, with_thread_server, Opts, Server};

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
    with_thread_server(|s| {
        let name = unique_name("m");
        let (code, v) = s.upload(&format!("/api/v1/models?model_name={name}"), "weights.bin", &bytes);
        if code != 200 || v["name"] != name.as_str() || v["size_bytes"].as_u64() != Some(bytes.len() as u64) {
            return TestResult::error(format!("upload: {code} {v}"));
        }
        let (code, back, _) = s.get_bytes(&format!("/api/v1/models/{name}"));
        let (_, list) = s.get("/api/v1/models");
        let listed = list.as_array().unwrap().iter().any(|m| m["name"] == name.as_str());
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
    let (code, _) = s.upload("/api/v1/models?model_name=dup", "a.bin", b"first");
    assert_eq!(code, 200);
    let (code, v) = s.upload("/api/v1/models?model_name=dup", "b.bin", b"second");
    assert_eq!((code, envelope_code(&v).as_str()), (409, "CONFLICT"));
    let (_, back, _) = s.get_bytes("/api/v1/models/dup");
    assert_eq!(back, b"first", "the first upload is kept");
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
