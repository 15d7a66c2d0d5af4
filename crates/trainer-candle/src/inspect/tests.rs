//! Tests of [`FileInspector`] on the example datasets and on generated files.

use std::{fs, path::PathBuf};

use quickcheck::{QuickCheck, TestResult};
use serde_json::json;

use super::*;
use crate::archive::tests::zip;

const IRIS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/datasets/iris.csv");
const WINE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/datasets/wine.csv");
const BREAST_CANCER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/datasets/breast_cancer.csv");
const DIGITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/datasets/digits.csv");
const TEMPEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/datasets/tempest.txt");

fn inspect_bytes(bytes: &[u8], name: Option<&str>) -> Result<DatasetInfo, InspectError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("upload");
    fs::write(&path, bytes).unwrap();
    FileInspector::new().inspect(&path, name)
}

fn invalid(bytes: &[u8], name: Option<&str>) -> String {
    match inspect_bytes(bytes, name) {
        Err(InspectError::Invalid(m)) => m,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn npy_bytes(descr: &str, shape: &str, data_len: usize) -> Vec<u8> {
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut out = npy::MAGIC.to_vec();
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&u16::try_from(h.len()).unwrap().to_le_bytes());
    out.extend_from_slice(h.as_bytes());
    out.extend(std::iter::repeat_n(7u8, data_len));
    out
}

#[test]
fn iris_is_a_csv_with_statistics() {
    let info = FileInspector::new().inspect(&PathBuf::from(IRIS), Some("iris.csv")).unwrap();
    assert_eq!((info.format, info.sample_count, info.dimensions.as_deref()), (DatasetFormat::Csv, Some(150), Some("4")));
    let s = &info.statistics;
    assert_eq!(s["label_column"], "label");
    assert_eq!(s["has_header"], true);
    assert_eq!(s["class_counts"], json!({"0": 50, "1": 50, "2": 50}));
    let sepal = &s["columns"][0];
    assert_eq!((sepal["name"].as_str(), sepal["min"].as_f64(), sepal["max"].as_f64()), (Some("sepal_length_cm"), Some(4.3), Some(7.9)));
    assert!((sepal["mean"].as_f64().unwrap() - 5.843_333).abs() < 1e-5);
    assert!((sepal["std"].as_f64().unwrap() - 0.825_301).abs() < 1e-5, "population std");
    assert_eq!(sepal["missing"], 0);
}

#[test]
fn the_other_example_tables_and_the_text_are_recognised() {
    for (path, rows, dims) in [(WINE, 178, "13"), (BREAST_CANCER, 569, "30"), (DIGITS, 1797, "64")] {
        // No file name: content alone decides.
        let info = FileInspector::new().inspect(&PathBuf::from(path), None).unwrap();
        assert_eq!((info.format, info.sample_count, info.dimensions.as_deref()), (DatasetFormat::Csv, Some(rows), Some(dims)), "{path}");
    }
    let info = FileInspector::new().inspect(&PathBuf::from(TEMPEST), Some("tempest.txt")).unwrap();
    assert_eq!((info.format, info.sample_count), (DatasetFormat::Text, Some(98_439)));
    let vocab = info.statistics["vocabulary_size"].as_u64().unwrap();
    assert_eq!(info.dimensions, Some(format!("vocab={vocab}")));
    assert!((30..=100).contains(&vocab), "{vocab}");
    assert_eq!(info.statistics["most_frequent"].as_array().unwrap().len(), 10);
    assert_eq!(info.statistics["most_frequent"][0]["char"], " ");
    // A .csv name does not make prose a table when its first line has no comma.
    let info = FileInspector::new().inspect(&PathBuf::from(TEMPEST), Some("tempest.csv")).unwrap();
    assert_eq!(info.format, DatasetFormat::Text);
}

#[test]
fn tsv_string_labels_and_missing_values() {
    let info = inspect_bytes(b"a\tb\tspecies\n1\t\t setosa\n2\t4\tvirginica\n3\t5\tsetosa\n", Some("x.tsv")).unwrap();
    assert_eq!((info.format, info.sample_count, info.dimensions.as_deref()), (DatasetFormat::Tsv, Some(3), Some("2")));
    assert_eq!(info.statistics["label_column"], "species");
    assert_eq!(info.statistics["class_counts"], json!({"setosa": 2, "virginica": 1}));
    assert_eq!(info.statistics["columns"][1]["missing"], 1);
    assert_eq!(info.statistics["columns"][1]["mean"], 4.5);

    let info = inspect_bytes(b"5.1,3.5,setosa\n4.9,3.0,versicolor\n", None).unwrap();
    assert_eq!((info.statistics["has_header"].as_bool(), info.statistics["label_column"].as_str()), (Some(false), Some("column_3")));
}

#[test]
fn text_statistics() {
    let info = inspect_bytes("héllo\nwörld\n".as_bytes(), Some("x.txt")).unwrap();
    assert_eq!((info.format, info.sample_count, info.dimensions.as_deref()), (DatasetFormat::Text, Some(12), Some("vocab=9")));
    assert_eq!(info.statistics["lines"], 2);
    assert_eq!(info.statistics["most_frequent"][0], json!({"char": "l", "count": 3}));
}

#[test]
fn numpy_arrays_and_archives() {
    let x = npy_bytes("|u1", "(10, 8, 8)", 640);
    let info = inspect_bytes(&x, Some("whatever.bin")).unwrap();
    assert_eq!((info.format, info.sample_count, info.dimensions.as_deref()), (DatasetFormat::Npy, Some(10), Some("8x8x1")));
    assert_eq!(info.statistics["dtype"], "|u1");
    assert!(invalid(&x[..x.len() - 1], None).contains("truncated"));
    assert!(invalid(&npy_bytes("|O", "(3,)", 24), None).contains("object"));
    let table = inspect_bytes(&npy_bytes("<f8", "(4, 13)", 4 * 13 * 8), None).unwrap();
    assert_eq!(table.dimensions.as_deref(), Some("13"));

    let y = npy_bytes("<i8", "(10,)", 80);
    let npz = zip(&[("y.npy", &y, 0), ("x.npy", &x, 0)]);
    let info = inspect_bytes(&npz, None).unwrap();
    assert_eq!((info.format, info.sample_count, info.dimensions.as_deref()), (DatasetFormat::Npz, Some(10), Some("8x8x1")));
    assert_eq!(info.statistics["arrays"][0]["name"], "y.npy");
    assert_eq!(info.statistics["class_counts"], json!({"506381209866536711": 10}));

    // numpy.savez_compressed deflates the arrays: read through the same checks.
    let compressed = zip(&[("x.npy", &x, 8), ("y.npy", &y, 8)]);
    let info = inspect_bytes(&compressed, Some("d.npz")).unwrap();
    assert_eq!((info.format, info.sample_count), (DatasetFormat::Npz, Some(10)));
    assert!(invalid(&zip(&[("x.npy", b"deflated", 8)]), Some("d.npz")).starts_with("x.npy in the npz archive"));

    let png = |v: u8| {
        let mut out = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageLuma8(image::GrayImage::from_pixel(2, 2, image::Luma([v])))
            .write_to(&mut out, image::ImageFormat::Png)
            .unwrap();
        out.into_inner()
    };
    let images = zip(&[("0/", b"", 0), ("0/0.png", &png(0), 8), ("0/1.png", &png(0), 8), ("1/2.png", &png(255), 8)]);
    let info = inspect_bytes(&images, Some("digits.zip")).unwrap();
    assert_eq!((info.format, info.sample_count, info.dimensions.as_deref()), (DatasetFormat::Images, Some(3), Some("2x2x1")));
    assert_eq!(info.statistics["class_counts"], json!({"0": 2, "1": 1}));
    assert!(invalid(&zip(&[("0/0.png", b"p", 8)]), Some("x.zip")).contains("not a PNG or JPEG"));

    assert!(invalid(&zip(&[("readme.md", b"hi", 0)]), Some("x.zip")).contains("neither"));
}

#[test]
fn refuses_empty_binary_and_broken_files() {
    assert_eq!(invalid(b"", Some("x.csv")), "the file is empty");
    assert!(invalid(&[0xff, 0xfe, 0x00, 0x01, 0x80, 0x81], Some("bad.txt")).starts_with("unsupported dataset format"));
    assert!(invalid(b"\x7fELF\x02\x01\x01\x00\x00\x00", None).starts_with("unsupported dataset format"));
    assert_eq!(invalid(b"ok line\nsecond\nbad \xff here\n", None), "line 3 is not valid UTF-8 (byte offset 19); save the file as UTF-8");
    assert_eq!(invalid(b"a,b,label\n1,2,0\n3,4\n5,6,1\n", Some("ragged.csv")), "line 3: expected 3 fields, found 2 (ragged row)");
    assert_eq!(invalid(b"a,b,label\n1,x,0\n3,4,1\n", Some("words.csv")), "line 2, column 'b': \"x\" is not a finite number");
    assert_eq!(invalid(b"a,b,label\n", Some("h.csv")), "the table has a header but no data rows");
    assert!(invalid(b" \n\t\n", None).contains("whitespace"));
    // Ragged and non-numeric tables are refused without a file name too.
    assert!(invalid(b"a,b,label\n1,2,0\n3,4\n5,6,1\n", None).contains("ragged"));
}

#[test]
fn a_giant_line_is_refused_without_reading_it_whole() {
    let mut csv = b"a,label\n1,0\n".to_vec();
    csv.extend(std::iter::repeat_n(b'9', 3 << 20));
    assert_eq!(invalid(&csv, Some("big.csv")), "line 3 is longer than 1 MiB");
}

/// A numeric table from quickcheck's numbers: `rows x cols`, the last column a class label.
fn numeric_table(rows: usize, cols: usize, values: &[i32], header: bool) -> (String, Vec<Vec<f64>>) {
    let mut text = String::new();
    if header {
        let names: Vec<String> = (0..cols - 1).map(|c| format!("f{c}")).chain(["label".to_owned()]).collect();
        text += &(names.join(",") + "\n");
    }
    let mut columns = vec![Vec::new(); cols - 1];
    for r in 0..rows {
        let mut cells = Vec::new();
        for (c, column) in columns.iter_mut().enumerate() {
            let v = f64::from(values[(r * cols + c) % values.len()]) / 100.0;
            column.push(v);
            cells.push(v.to_string());
        }
        cells.push((r % 3).to_string());
        text += &(cells.join(",") + "\n");
    }
    (text, columns)
}

#[test]
fn prop25_csv_statistics_match_a_direct_computation() {
    // Property 25: CSV inspection of an arbitrary generated numeric table (random rows x cols,
    // with/without header) reports sample_count = rows, dimensions = cols-1, and per-column
    // min/max/mean match a direct computation.
    fn prop(rows: u8, cols: u8, values: Vec<i32>, header: bool) -> TestResult {
        if values.is_empty() {
            return TestResult::discard();
        }
        let (rows, cols) = (usize::from(rows % 40) + 1, usize::from(cols % 8) + 2);
        let (text, columns) = numeric_table(rows, cols, &values, header);
        let info = match inspect_bytes(text.as_bytes(), Some("t.csv")) {
            Ok(info) => info,
            Err(e) => return TestResult::error(format!("{e}\n{text}")),
        };
        let stats_ok = columns.iter().enumerate().all(|(c, col)| {
            let s = &info.statistics["columns"][c];
            let mean = col.iter().sum::<f64>() / col.len() as f64;
            let min = col.iter().copied().fold(f64::INFINITY, f64::min);
            let max = col.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            // Summation order differs, so the mean may differ by rounding at the scale of the
            // values summed, not of the mean: +2e7 and -2e7 average to ~0 with an error ~1e-9.
            let scale = min.abs().max(max.abs()).max(1.0);
            s["min"].as_f64() == Some(min)
                && s["max"].as_f64() == Some(max)
                && s["mean"].as_f64().is_some_and(|m| (m - mean).abs() <= 1e-12 * scale * col.len() as f64)
        });
        TestResult::from_bool(
            info.format == DatasetFormat::Csv
                && info.sample_count == Some(rows as u64)
                && info.dimensions == Some((cols - 1).to_string())
                && info.statistics["has_header"] == header
                && stats_ok,
        )
    }
    QuickCheck::new().tests(200).quickcheck(prop as fn(u8, u8, Vec<i32>, bool) -> TestResult);
}

#[test]
fn prop26_ragged_or_non_numeric_tables_are_refused_and_bytes_never_panic() {
    // Property 26: ragged or non-numeric tables are rejected with InspectError::Invalid (never
    // panic), and arbitrary bytes never panic the inspector.
    fn corrupt(rows: u8, cols: u8, values: Vec<i32>, row: u8, ragged: bool, named: bool) -> TestResult {
        if values.is_empty() {
            return TestResult::discard();
        }
        let (rows, cols) = (usize::from(rows % 30) + 2, usize::from(cols % 6) + 2);
        let (text, _) = numeric_table(rows, cols, &values, true);
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let target = 1 + usize::from(row) % rows;
        let mut cells: Vec<&str> = lines[target].split(',').collect();
        if ragged {
            cells.pop();
        } else {
            cells[usize::from(row) % (cols - 1)] = "abc";
        }
        lines[target] = cells.join(",");
        let text = lines.join("\n") + "\n";
        let name = if named { Some("t.csv") } else { None };
        match inspect_bytes(text.as_bytes(), name) {
            Err(InspectError::Invalid(m)) => TestResult::from_bool(m.contains(&format!("line {}", target + 1))),
            // Without a name a table made mostly of corrupt rows may read as text; never as a table.
            Ok(info) if !named => TestResult::from_bool(info.format == DatasetFormat::Text),
            other => TestResult::error(format!("{other:?}\n{text}")),
        }
    }
    QuickCheck::new().tests(200).quickcheck(corrupt as fn(u8, u8, Vec<i32>, u8, bool, bool) -> TestResult);

    fn arbitrary(bytes: Vec<u8>, prefix: u8, name: Option<String>) -> bool {
        // Start some inputs with a real magic so that the npy and zip parsers see garbage too.
        let magic: &[u8] = match prefix % 4 {
            0 => npy::MAGIC,
            1 => archive::LOCAL_HEADER,
            2 => b"a,b,label\n",
            _ => b"",
        };
        let bytes = [magic, &bytes].concat();
        let _ = inspect_bytes(&bytes, name.as_deref());
        true
    }
    QuickCheck::new().tests(500).quickcheck(arbitrary as fn(Vec<u8>, u8, Option<String>) -> bool);
}
