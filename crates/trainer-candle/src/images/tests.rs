//! Tests of the image, IDX, CIFAR-10 and NumPy datasets: every file is built here (zip through
//! the `zip` writer, tar through `tar::Builder`, gzip through `flate2`, PNG/JPEG through `image`),
//! plus the bundled digits archive and npz; and the hostile-archive defences seen through the
//! inspector.

use std::{
    io::Cursor,
    path::{Path, PathBuf},
};

use image::{GrayImage, ImageFormat, Luma, Rgb, RgbImage, Rgba, RgbaImage};
use quickcheck::{QuickCheck, TestResult};
use serde_json::json;
use tar::EntryType;
use trainyard_domain::{
    config::DataKind,
    ports::{DatasetInspector, InspectError},
    registry::{DatasetFormat, DatasetInfo},
};

use super::{cifar, limits::Limits, load_images, load_images_with, load_numpy_table, ImageData};
use crate::{
    archive::{
        tests::{gzip, patch_zip_size, tar, tar_raw, zip},
        Container,
    },
    FileInspector,
};

const DIGITS_PNG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/datasets/digits_png.zip");
const DIGITS_NPZ: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/datasets/digits.npz");

/// A file holding `bytes`, kept alive with its directory.
struct Upload {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn upload(bytes: &[u8]) -> Upload {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("upload");
    std::fs::write(&path, bytes).unwrap();
    Upload { _dir: dir, path }
}

fn inspect(bytes: &[u8], name: Option<&str>) -> Result<DatasetInfo, InspectError> {
    FileInspector::new().inspect(&upload(bytes).path, name)
}

fn invalid(bytes: &[u8], name: Option<&str>) -> String {
    match inspect(bytes, name) {
        Err(InspectError::Invalid(m)) => m,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn load(bytes: &[u8], format: DatasetFormat) -> Result<ImageData, String> {
    load_images(&upload(bytes).path, format)
}

fn encode(image: image::DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// An 8x8 (or `w`x`h`) grayscale PNG of one value.
fn png(w: u32, h: u32, value: u8) -> Vec<u8> {
    encode(GrayImage::from_fn(w, h, |_, _| Luma([value])).into(), ImageFormat::Png)
}

/// Equal up to `f32` pixel rounding.
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

/// Three classes of 8x8 PNGs: class `c`'s image `i` is all `40 * c + 10 * i`.
fn three_classes(prefix: &str) -> (Vec<(String, Vec<u8>)>, Vec<u8>) {
    let mut files = Vec::new();
    let mut values = Vec::new();
    for (class, count) in [("0", 2u8), ("1", 3), ("2", 1)] {
        for i in 0..count {
            let v = 40 * class.parse::<u8>().unwrap() + 10 * i;
            files.push((format!("{prefix}{class}/img_{i}.png"), png(8, 8, v)));
            values.push(v);
        }
    }
    (files, values)
}

fn as_zip(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    zip(&files.iter().map(|(n, d)| (n.as_str(), d.as_slice(), 8)).collect::<Vec<_>>())
}

fn as_tar(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    tar(&files.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect::<Vec<_>>())
}

#[test]
fn png_class_folders_round_trip_in_zip_tar_and_tar_gz() {
    let (files, values) = three_classes("");
    let mean = values.iter().map(|&v| f64::from(v) / 255.0).sum::<f64>() / 6.0;
    let std = (values.iter().map(|&v| (f64::from(v) / 255.0 - mean).powi(2)).sum::<f64>() / 6.0).sqrt();
    let (nested, _) = three_classes("digits/");
    let mut junk = nested.clone();
    junk.push(("digits/README.md".into(), b"hello".to_vec()));
    junk.push(("digits/0/.DS_Store".into(), b"\0\0".to_vec()));
    junk.push(("__MACOSX/digits/0/._img_0.png".into(), b"junk".to_vec()));
    for (bytes, name) in
        [(as_zip(&files), "d.zip"), (as_tar(&files), "d.tar"), (gzip(&as_tar(&nested)), "d.tar.gz"), (gzip(&as_tar(&junk)), "d.tgz")]
    {
        let info = inspect(&bytes, Some(name)).unwrap();
        assert_eq!((info.format, info.sample_count, info.dimensions.as_deref()), (DatasetFormat::Images, Some(6), Some("8x8x1")), "{name}");
        assert_eq!(info.data_kind(), Some(DataKind::Image));
        let s = &info.statistics;
        assert_eq!(s["class_counts"], json!({"0": 2, "1": 3, "2": 1}), "{name}");
        assert_eq!(s["classes"], json!(["0", "1", "2"]));
        assert_eq!(s["image_formats"], json!({"png": 6}));
        assert!(close(s["pixel_mean"][0].as_f64().unwrap(), mean), "{s}");
        assert!(close(s["pixel_std"][0].as_f64().unwrap(), std), "{s}");
        assert_eq!(s.get("ignored_files").and_then(serde_json::Value::as_u64), if name == "d.tgz" { Some(3) } else { None });

        let data = load(&bytes, DatasetFormat::Images).unwrap();
        assert_eq!((data.channels, data.height, data.width, data.len(), data.x.len()), (1, 8, 8, 6, 6 * 64));
        assert_eq!(data.classes, ["0", "1", "2"]);
        assert_eq!(data.y, [0, 0, 1, 1, 1, 2]);
        for (i, &v) in values.iter().enumerate() {
            assert!(data.x[i * 64..(i + 1) * 64].iter().all(|&p| (p - f32::from(v) / 255.0).abs() < 1e-6));
        }
    }
}

#[test]
fn class_folders_order_numerically_then_by_name() {
    let files: Vec<(String, Vec<u8>)> = ["10", "9", "cat", "2", "Bird"].iter().map(|c| (format!("{c}/a.png"), png(4, 4, 1))).collect();
    let data = load(&as_zip(&files), DatasetFormat::Images).unwrap();
    assert_eq!(data.classes, ["2", "9", "10", "Bird", "cat"]);
    assert_eq!(data.y, [2, 1, 4, 0, 3]);
}

#[test]
fn colour_jpeg_and_rgba_png_give_three_chw_channels() {
    let rgb = encode(RgbImage::from_fn(8, 8, |_, _| Rgb([250, 10, 128])).into(), ImageFormat::Jpeg);
    let rgba = encode(RgbaImage::from_fn(8, 8, |x, _| Rgba([255, 0, 128, if x == 0 { 0 } else { 255 }])).into(), ImageFormat::Png);
    let bytes = gzip(&as_tar(&[("a/x.jpg".into(), rgb), ("b/y.png".into(), rgba)]));
    let info = inspect(&bytes, Some("c.tar.gz")).unwrap();
    assert_eq!(info.dimensions.as_deref(), Some("8x8x3"));
    assert_eq!(info.statistics["image_formats"], json!({"jpeg": 1, "png": 1}));
    assert_eq!(info.statistics["pixel_mean"].as_array().unwrap().len(), 3);
    let data = load(&bytes, DatasetFormat::Images).unwrap();
    assert_eq!((data.channels, data.sample_len()), (3, 192));
    // The PNG, CHW: a red plane of 1.0, a green plane of 0, a blue plane of 128/255 (alpha dropped).
    let png = &data.x[192..];
    assert!(png[..64].iter().all(|&v| v == 1.0) && png[64..128].iter().all(|&v| v == 0.0));
    assert!(png[128..].iter().all(|&v| (v - 128.0 / 255.0).abs() < 1e-6));
    // The JPEG is lossy, but near its colour.
    assert!(data.x[..64].iter().all(|&v| v > 0.9) && data.x[64..128].iter().all(|&v| v < 0.15));
}

#[test]
fn mixed_sizes_layouts_formats_and_broken_images_are_refused() {
    let mixed = as_zip(&[("0/a.png".into(), png(8, 8, 1)), ("1/odd.png".into(), png(9, 8, 1))]);
    let err = invalid(&mixed, Some("m.zip"));
    assert!(err.contains("'1/odd.png' is 9x8") && err.contains("'0/a.png' is 8x8"), "{err}");
    assert_eq!(load(&mixed, DatasetFormat::Images).unwrap_err(), err);
    let rgb = encode(RgbImage::from_fn(8, 8, |_, _| Rgb([1, 2, 3])).into(), ImageFormat::Png);
    let err = invalid(&as_zip(&[("0/a.png".into(), png(8, 8, 1)), ("1/c.png".into(), rgb)]), None);
    assert!(err.contains("3 channel(s)") && err.contains("1/c.png"), "{err}");

    let cases: [(&str, Vec<u8>, &str); 5] = [
        ("a.png", png(8, 8, 1), "not in a class folder"),
        ("0/a.bmp", b"BM".to_vec(), "not a PNG or JPEG"),
        ("0/a.png", b"hello, not an image".to_vec(), "not a PNG or JPEG image (by its content)"),
        ("0/a.png", png(8, 8, 1)[..40].to_vec(), "not a valid PNG"),
        ("0/a.png", png(5000, 1, 1), "larger than the 4096x4096"),
    ];
    for (name, bytes, why) in cases {
        let err = invalid(&as_zip(&[(name.into(), bytes)]), None);
        assert!(err.contains(why), "{name}: {err}");
    }
    let err = invalid(&as_zip(&[("a/0/x.png".into(), png(4, 4, 1)), ("b/1/y.png".into(), png(4, 4, 1))]), None);
    assert!(err.contains("class folders") && err.contains("'a/0/'") && err.contains("'b/1/'"), "{err}");
    let small = Limits { max_image_side: 6, ..Limits::DEFAULT };
    let err = super::inspect_archive_with(&upload(&as_zip(&[("0/a.png".into(), png(8, 8, 1))])).path, Container::Zip, &small);
    assert!(err.unwrap_err().contains("larger than the 6x6"));
    let err = invalid(&as_zip(&[("0/a.png".into(), png(4, 4, 1)), ("y.npy".into(), b"x".to_vec())]), None);
    assert!(err.contains("mixes .npy arrays"), "{err}");
}

/// An IDX images file of `n` `h`x`w` images, pixel `i` of image `k` being `k * 7 + i`.
fn idx_images(n: u32, h: u32, w: u32) -> Vec<u8> {
    let mut out = vec![0, 0, 8, 3];
    for d in [n, h, w] {
        out.extend_from_slice(&d.to_be_bytes());
    }
    for k in 0..n * h * w {
        out.push(u8::try_from((k / (h * w)) * 7 + k % (h * w)).unwrap_or(255));
    }
    out
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, 1];
    out.extend_from_slice(&u32::try_from(labels.len()).unwrap().to_be_bytes());
    out.extend_from_slice(labels);
    out
}

#[test]
fn idx_pairs_in_a_zip_gzipped_and_in_a_plain_tar() {
    let labels = [3u8, 1, 4, 1, 5, 9, 2, 6];
    let (images, ys) = (idx_images(8, 28, 28), idx_labels(&labels));
    let (test_images, test_labels) = (idx_images(2, 28, 28), idx_labels(&[0, 0]));
    let zipped = zip(&[
        ("mnist/t10k-images-idx3-ubyte.gz", &gzip(&test_images), 0),
        ("mnist/train-labels-idx1-ubyte.gz", &gzip(&ys), 0),
        ("mnist/train-images-idx3-ubyte.gz", &gzip(&images), 0),
        ("mnist/t10k-labels-idx1-ubyte.gz", &gzip(&test_labels), 0),
    ]);
    let tarred = tar(&[("train-images.idx3-ubyte", &images), ("train-labels.idx1-ubyte", &ys)]);
    for (bytes, name) in [(zipped, "mnist.zip"), (tarred, "mnist.tar")] {
        let info = inspect(&bytes, Some(name)).unwrap();
        assert_eq!((info.format, info.sample_count, info.dimensions.as_deref()), (DatasetFormat::Idx, Some(8), Some("28x28x1")), "{name}");
        let s = &info.statistics;
        assert_eq!(s["class_counts"], json!({"0": 0, "1": 2, "2": 1, "3": 1, "4": 1, "5": 1, "6": 1, "7": 0, "8": 0, "9": 1}));
        assert_eq!(s["classes"].as_array().unwrap().len(), 10);
        let pixels: Vec<f64> = (0..8 * 784).map(|k| f64::from(u8::try_from((k / 784) * 7 + k % 784).unwrap_or(255)) / 255.0).collect();
        let mean = pixels.iter().sum::<f64>() / pixels.len() as f64;
        assert!((s["pixel_mean"][0].as_f64().unwrap() - mean).abs() < 1e-9, "{s}");
        if name == "mnist.zip" {
            assert_eq!(s["ignored_idx_files"].as_array().unwrap().len(), 2);
        }
        let data = load(&bytes, DatasetFormat::Idx).unwrap();
        assert_eq!((data.channels, data.height, data.width, data.len()), (1, 28, 28, 8));
        assert_eq!(data.y, labels.map(u32::from));
        assert_eq!(data.classes, (0..10).map(|c| c.to_string()).collect::<Vec<_>>());
        assert!((data.x[784 + 5] - 12.0 / 255.0).abs() < 1e-6);
    }
    // A lone images file, gzipped or not, stores but cannot train.
    for bytes in [gzip(&images), images.clone()] {
        let info = inspect(&bytes, Some("train-images-idx3-ubyte.gz")).unwrap();
        assert_eq!((info.format, info.sample_count, info.dimensions.as_deref()), (DatasetFormat::Idx, Some(8), Some("28x28x1")));
        assert!(info.statistics.get("class_counts").is_none());
        assert!(load(&bytes, DatasetFormat::Idx).unwrap_err().contains("no labels"));
    }
    assert!(invalid(&ys, None).contains("labels but no IDX images"));
    assert!(invalid(&images[..images.len() - 1], None).contains("truncated"));
    assert!(invalid(&[&images[..], b"x"].concat(), None).contains("bytes after"));
    assert!(invalid(&gzip(b"just text"), Some("a.gz")).contains("gzip file must hold"));
    let odd = tar(&[("train-images-idx3-ubyte", &images), ("train-labels-idx1-ubyte", &idx_labels(&[1, 2]))]);
    assert!(invalid(&odd, None).contains("holds 8 images but"));
}

/// A CIFAR-10 batch: record `k` has `labels[k]` and planes of 255 (red), `k` (green), 128 (blue).
fn cifar_batch(labels: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, &l) in labels.iter().enumerate() {
        out.push(l);
        out.extend(std::iter::repeat_n(255u8, 1024));
        out.extend(std::iter::repeat_n(u8::try_from(k).unwrap(), 1024));
        out.extend(std::iter::repeat_n(128u8, 1024));
    }
    out
}

#[test]
fn cifar_batches_alone_and_in_a_tar_gz() {
    let batch = cifar_batch(&[0, 9, 3]);
    for name in [Some("data_batch_1.bin"), None] {
        let info = inspect(&batch, name).unwrap();
        assert_eq!((info.format, info.sample_count, info.dimensions.as_deref()), (DatasetFormat::Cifar10, Some(3), Some("32x32x3")));
        let s = &info.statistics;
        assert_eq!(s["class_counts"]["airplane"], 1);
        assert_eq!(s["class_counts"]["truck"], 1);
        assert_eq!(s["classes"][1], "automobile");
        let mean = s["pixel_mean"].as_array().unwrap();
        assert!(close(mean[0].as_f64().unwrap(), 1.0) && close(mean[1].as_f64().unwrap(), 1.0 / 255.0));
        assert!(close(mean[2].as_f64().unwrap(), 128.0 / 255.0));
    }
    let bad = cifar_batch(&[0, 12, 3]);
    let err = invalid(&bad, Some("data_batch_1.bin"));
    assert!(err.contains("record 1 has label byte 12"), "{err}");
    assert!(invalid(&bad, None).starts_with("unsupported dataset format"), "random binary is not CIFAR-10 without the name");
    assert!(invalid(&batch[..3000], Some("x.bin")).contains("3073-byte records"));
    assert!(invalid(&cifar_batch(&[1])[..], None).starts_with("unsupported dataset format"), "one record needs the .bin name");

    let meta = b"plane\ncar\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n";
    let archive = gzip(&tar(&[
        ("cifar-10-batches-bin/batches.meta.txt", meta),
        ("cifar-10-batches-bin/data_batch_2.bin", &cifar_batch(&[5, 5])),
        ("cifar-10-batches-bin/data_batch_1.bin", &batch),
        ("cifar-10-batches-bin/test_batch.bin", &cifar_batch(&[1])),
        ("cifar-10-batches-bin/readme.html", b"<html>"),
    ]));
    let info = inspect(&archive, Some("cifar-10-binary.tar.gz")).unwrap();
    assert_eq!((info.format, info.sample_count), (DatasetFormat::Cifar10, Some(5)));
    assert_eq!(info.statistics["class_counts"]["dog"], 2);
    assert_eq!(info.statistics["class_counts"]["plane"], 1);
    assert_eq!(info.statistics["ignored_batches"], json!(["cifar-10-batches-bin/test_batch.bin"]));
    let data = load(&archive, DatasetFormat::Cifar10).unwrap();
    assert_eq!((data.channels, data.height, data.width, data.len()), (3, 32, 32, 5));
    assert_eq!(data.y, [0, 9, 3, 5, 5], "data_batch_1 first");
    assert_eq!(data.classes[0], "plane");
    assert_eq!((data.x[0], data.x[1024], data.x[2 * 1024]), (1.0, 0.0, 128.0 / 255.0));
    assert_eq!(data.x[3072 + 1024], 1.0 / 255.0);
    let single = load(&batch, DatasetFormat::Cifar10).unwrap();
    assert_eq!((single.len(), single.classes[0].as_str()), (3, cifar::CLASS_NAMES[0]));
    let mixed = zip(&[("0/a.png", &png(4, 4, 1), 0), ("data_batch_1.bin", &batch, 0)]);
    assert!(invalid(&mixed, None).contains("mixes PNG/JPEG images ('0/a.png') and CIFAR-10 batches"));
}

/// A `.npy` file: `data` after a version-1 header.
fn npy(descr: &str, shape: &str, fortran: bool, data: &[u8]) -> Vec<u8> {
    let order = if fortran { "True" } else { "False" };
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {shape}, }}");
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut out = crate::npy::MAGIC.to_vec();
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&u16::try_from(h.len()).unwrap().to_le_bytes());
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out
}

fn f8(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn i8s(values: &[i64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn table(bytes: &[u8], format: DatasetFormat) -> Result<super::NumpyTable, String> {
    load_numpy_table(&upload(bytes).path, format)
}

#[test]
fn npz_tables() {
    let x: Vec<f64> = (0..15).map(f64::from).collect();
    let (xs, ys) = (npy("<f8", "(5, 3)", false, &f8(&x)), npy("<i8", "(5,)", false, &i8s(&[1, 0, 1, 2, 1])));
    for method in [0, 8] {
        let npz = zip(&[("x.npy", &xs, method), ("y.npy", &ys, method)]);
        let info = inspect(&npz, Some("t.npz")).unwrap();
        assert_eq!((info.format, info.sample_count, info.dimensions.as_deref()), (DatasetFormat::Npz, Some(5), Some("3")));
        assert_eq!(info.data_kind(), Some(DataKind::Tabular));
        assert_eq!(info.statistics["class_counts"], json!({"0": 1, "1": 3, "2": 1}));
        assert_eq!((info.statistics["x"].as_str(), info.statistics["y"].as_str()), (Some("x.npy"), Some("y.npy")));
        let t = table(&npz, DatasetFormat::Npz).unwrap();
        assert_eq!(
            (t.rows, t.features, t.x.clone(), t.labels.clone()),
            (5, 3, x.clone(), vec!["1", "0", "1", "2", "1"].into_iter().map(String::from).collect())
        );
    }
    // Other names, big-endian floats in Fortran order, string labels.
    let big: Vec<u8> = [1.0f32, 4.0, 2.0, 5.0, 3.0, 6.0].iter().flat_map(|v| v.to_be_bytes()).collect();
    let labels: Vec<u8> = ["cat", "dog"]
        .iter()
        .flat_map(|s| s.chars().chain(std::iter::repeat('\0')).take(3).flat_map(|c| (c as u32).to_le_bytes()))
        .collect();
    let npz = zip(&[("features.npy", &npy(">f4", "(2, 3)", true, &big), 0), ("labels.npy", &npy("<U3", "(2,)", false, &labels), 0)]);
    let t = table(&npz, DatasetFormat::Npz).unwrap();
    assert_eq!((t.x, t.labels), (vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], vec!["cat".to_owned(), "dog".to_owned()]));
    assert_eq!(inspect(&npz, None).unwrap().statistics["class_counts"], json!({"cat": 1, "dog": 1}));

    // Refusals, with what to do.
    assert_eq!(
        table(&xs, DatasetFormat::Npy).unwrap_err(),
        "a .npy holds features only; training needs labels: upload an .npz with x and y (numpy.savez(f, x=x, y=y))"
    );
    assert!(table(&zip(&[("x.npy", &xs, 0)]), DatasetFormat::Npz).unwrap_err().contains("training needs labels"));
    let short_y = npy("<i8", "(4,)", false, &i8s(&[1, 0, 1, 2]));
    let err = invalid(&zip(&[("x.npy", &xs, 0), ("y.npy", &short_y, 0)]), None);
    assert!(err.contains("4 labels but x.npy holds 5 samples"), "{err}");
    let nan = npy("<f8", "(2, 1)", false, &f8(&[1.0, f64::NAN]));
    let err = table(&zip(&[("x.npy", &nan, 0), ("y.npy", &npy("<i8", "(2,)", false, &i8s(&[0, 1])), 0)]), DatasetFormat::Npz).unwrap_err();
    assert!(err.contains("x.npy[1, 0] is NaN"), "{err}");
    let object = npy("|O", "(5,)", false, &[0; 40]);
    assert!(invalid(&zip(&[("x.npy", &xs, 0), ("y.npy", &object, 0)]), None).contains("object"));
    assert!(invalid(&zip(&[("x.npy", &xs[..xs.len() - 8], 8), ("y.npy", &ys, 8)]), None).contains("truncated"));
    let complex = npy("<c16", "(5, 3)", false, &[0; 240]);
    assert!(invalid(&zip(&[("x.npy", &complex, 0), ("y.npy", &ys, 0)]), None).contains("not supported"));
}

#[test]
fn npz_images_in_every_layout() {
    let x: Vec<u8> = (0..4 * 64).map(|v| u8::try_from(v % 256).unwrap()).collect();
    let y = npy("<i8", "(4,)", false, &i8s(&[7, 7, 2, 7]));
    let npz = zip(&[("x.npy", &npy("|u1", "(4, 8, 8)", false, &x), 8), ("y.npy", &y, 8)]);
    let info = inspect(&npz, Some("d.npz")).unwrap();
    assert_eq!((info.sample_count, info.dimensions.as_deref(), info.data_kind()), (Some(4), Some("8x8x1"), Some(DataKind::Image)));
    let data = load(&npz, DatasetFormat::Npz).unwrap();
    assert_eq!(
        (data.channels, data.height, data.width, data.classes.clone(), data.y.clone()),
        (1, 8, 8, vec!["2".into(), "7".into()], vec![1, 1, 0, 1])
    );
    assert_eq!(data.x[65], 65.0 / 255.0);

    // NHWC bytes: transposed to CHW.
    let hwc: Vec<u8> = (0..2 * 16 * 3).map(|v| u8::try_from(v).unwrap()).collect();
    let y2 = npy("<i8", "(2,)", false, &i8s(&[0, 1]));
    let npz = zip(&[("x.npy", &npy("|u1", "(2, 4, 4, 3)", false, &hwc), 0), ("y.npy", &y2, 0)]);
    assert_eq!(inspect(&npz, None).unwrap().dimensions.as_deref(), Some("4x4x3"));
    let data = load(&npz, DatasetFormat::Npz).unwrap();
    assert_eq!(data.channels, 3);
    assert_eq!(&data.x[..3], &[0.0, 3.0 / 255.0, 6.0 / 255.0], "red plane first");
    assert_eq!(data.x[16], 1.0 / 255.0, "then green");

    // NCHW floats: kept as they are.
    let chw: Vec<u8> = (0..2 * 3 * 64).flat_map(|v| (v as f32 * 0.5).to_le_bytes()).collect();
    let npz = zip(&[("X.npy", &npy("<f4", "(2, 3, 8, 8)", false, &chw), 0), ("Y.npy", &y2, 0)]);
    let info = inspect(&npz, None).unwrap();
    assert_eq!((info.dimensions.as_deref(), info.statistics["layout"].as_str()), (Some("8x8x3"), Some("nchw")));
    let data = load(&npz, DatasetFormat::Npz).unwrap();
    assert_eq!((data.channels, data.x[3]), (3, 1.5));

    let not_images = zip(&[("x.npy", &npy("|u1", "(2, 5, 6, 7)", false, &[0; 420]), 0), ("y.npy", &y2, 0)]);
    assert!(load(&not_images, DatasetFormat::Npz).unwrap_err().contains("not images"));
    assert!(load(&npy("|u1", "(4, 8, 8)", false, &x), DatasetFormat::Npy).unwrap_err().contains("upload an .npz"));
    assert!(load(b"a,b\n", DatasetFormat::Csv).unwrap_err().contains("holds no images"));
}

#[test]
fn the_bundled_digits_archive_and_npz() {
    let info = FileInspector::new().inspect(Path::new(DIGITS_PNG), Some("digits_png.zip")).unwrap();
    assert_eq!((info.format, info.sample_count, info.dimensions.as_deref()), (DatasetFormat::Images, Some(1797), Some("8x8x1")));
    let counts = info.statistics["class_counts"].clone();
    assert_eq!(info.statistics["classes"], json!(["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]));
    let npz = FileInspector::new().inspect(Path::new(DIGITS_NPZ), Some("digits.npz")).unwrap();
    assert_eq!((npz.format, npz.sample_count, npz.dimensions.as_deref()), (DatasetFormat::Npz, Some(1797), Some("8x8x1")));
    assert_eq!(npz.statistics["class_counts"], counts, "the same digits");

    let png = load_images(Path::new(DIGITS_PNG), DatasetFormat::Images).unwrap();
    let arrays = load_images(Path::new(DIGITS_NPZ), DatasetFormat::Npz).unwrap();
    assert_eq!((png.len(), arrays.len(), png.x.len(), arrays.x.len()), (1797, 1797, 1797 * 64, 1797 * 64));
    // PNG pixels are value * 255 / 16, npz bytes the value: the same mean up to that scale.
    let mean = |x: &[f32]| x.iter().map(|&v| f64::from(v)).sum::<f64>() / x.len() as f64;
    assert!((mean(&png.x) - mean(&arrays.x) * 255.0 / 16.0).abs() < 0.01, "{} {}", mean(&png.x), mean(&arrays.x));
    let t = load_numpy_table(Path::new(DIGITS_NPZ), DatasetFormat::Npz).unwrap();
    assert_eq!((t.rows, t.features), (1797, 64), "image arrays flatten to a table");
}

#[test]
fn hostile_archives_are_refused_by_the_inspector_with_the_reason() {
    let image = png(4, 4, 1);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (zip(&[("0/a.png", &image, 0), ("../../etc/evil.png", &image, 0)]), "path traversal"),
        (tar_raw(&[("0/a.png", EntryType::Regular, &image), ("/abs/b.png", EntryType::Regular, &image)]), "absolute path"),
        (gzip(&tar_raw(&[("0\\a.png", EntryType::Regular, &image)])), "backslash"),
        (tar_raw(&[("0/a.png", EntryType::Symlink, b"")]), "symbolic link"),
        (gzip(&tar_raw(&[("0/a.png", EntryType::Link, b"")])), "hard link"),
        (tar_raw(&[("0/dev", EntryType::Char, b"")]), "device"),
        (tar_raw(&[("0/fifo", EntryType::Fifo, b"")]), "FIFO"),
    ];
    for (bytes, why) in cases {
        let err = invalid(&bytes, Some("x.zip"));
        assert!(err.contains(why), "{why}: {err}");
    }
    // A deflate bomb whose header claims 1000 bytes: stopped right past them, without inflating it.
    let mut bomb = zip(&[("0/a.png", &vec![0u8; 32 << 20], 8)]);
    patch_zip_size(&mut bomb, 1000);
    let started = std::time::Instant::now();
    let err = invalid(&bomb, Some("bomb.zip"));
    assert!(err.contains("inflates past the 1000 bytes"), "{err}");
    assert!(started.elapsed().as_secs() < 5);
    // Honest headers: refused from the header alone.
    let honest = zip(&[("0/a.png", &vec![0u8; 32 << 20], 8)]);
    assert!(invalid(&honest, None).contains("decompression bomb"));
    // A gzipped IDX bomb: an honest header declaring 60,000 images of zeros.
    let mut idx = idx_images(0, 28, 28);
    idx[4..8].copy_from_slice(&60_000u32.to_be_bytes());
    idx.resize(16 + 60_000 * 784, 0);
    let err = invalid(&gzip(&idx), Some("train-images-idx3-ubyte.gz"));
    assert!(err.contains("more than 200 times"), "{err}");
    // Too many entries for the limit (a shrunk limit keeps the test small).
    let few = Limits { max_entries: 10, ..Limits::DEFAULT };
    let files: Vec<(String, Vec<u8>)> = (0..11).map(|i| (format!("0/{i}.png"), image.clone())).collect();
    let err = super::inspect_archive_with(&upload(&as_zip(&files)).path, Container::Zip, &few).unwrap_err();
    assert!(err.contains("too many entries"), "{err}");
    let loaded = load_images_with(&upload(&gzip(&as_tar(&files))).path, DatasetFormat::Images, &few).unwrap_err();
    assert!(loaded.contains("too many entries"), "{loaded}");
    let tight = Limits { max_loaded_values: 100, ..Limits::DEFAULT };
    let err = load_images_with(&upload(&as_zip(&files)).path, DatasetFormat::Images, &tight).unwrap_err();
    assert!(err.contains("more than 100 values"), "{err}");
}

/// Valid datasets of every kind, for the fuzz property to corrupt.
fn seeds() -> Vec<(Vec<u8>, &'static str)> {
    let (files, _) = three_classes("");
    let small: Vec<(String, Vec<u8>)> = files.into_iter().take(3).collect();
    let idx = zip(&[("train-images-idx3-ubyte.gz", &gzip(&idx_images(2, 4, 4)), 8), ("train-labels-idx1-ubyte", &idx_labels(&[1, 2]), 8)]);
    let npz = zip(&[("x.npy", &npy("|u1", "(2, 4, 4)", false, &[9; 32]), 8), ("y.npy", &npy("<i8", "(2,)", false, &i8s(&[0, 1])), 0)]);
    vec![
        (as_zip(&small), "a.zip"),
        (gzip(&as_tar(&small)), "a.tar.gz"),
        (as_tar(&small), "a.tar"),
        (idx, "mnist.zip"),
        (gzip(&idx_images(2, 4, 4)), "i.gz"),
        (cifar_batch(&[1, 2]), "data_batch_1.bin"),
        (npz, "d.npz"),
    ]
}

fn prop44(seed: u8, flips: Vec<(u32, u8)>, cut: Option<u32>, tail: Vec<u8>, named: bool) -> TestResult {
    static SEEDS: std::sync::OnceLock<Vec<(Vec<u8>, &'static str)>> = std::sync::OnceLock::new();
    let seeds = SEEDS.get_or_init(seeds);
    let (mut bytes, name) = match seeds.get(usize::from(seed) % (seeds.len() + 2)) {
        Some((bytes, name)) => (bytes.clone(), *name),
        // Random bytes behind a zip or gzip magic.
        None => ([if seed.is_multiple_of(2) { &b"PK\x03\x04"[..] } else { b"\x1f\x8b\x08\x00" }, &tail].concat(), "r.zip"),
    };
    for &(at, v) in &flips {
        if !bytes.is_empty() {
            let i = at as usize % bytes.len();
            bytes[i] = v;
        }
    }
    if let Some(cut) = cut {
        bytes.truncate(cut as usize % (bytes.len() + 1));
    }
    bytes.extend_from_slice(&tail[..tail.len().min(8)]);
    let file = upload(&bytes);
    let _ = FileInspector::new().inspect(&file.path, named.then_some(name));
    for format in [DatasetFormat::Images, DatasetFormat::Idx, DatasetFormat::Cifar10, DatasetFormat::Npz] {
        let _ = load_images(&file.path, format);
    }
    let _ = load_numpy_table(&file.path, DatasetFormat::Npz);
    TestResult::passed()
}

#[test]
fn prop44_arbitrary_archive_bytes_never_panic_the_inspector() {
    // Property 44: arbitrary archive bytes never panic the inspector: valid zip, tar, tar.gz,
    // IDX, CIFAR-10 and npz files with random bytes overwritten, truncated or appended (and
    // random bytes behind an archive magic) are inspected and loaded with a result, never a panic.
    QuickCheck::new().tests(300).quickcheck(prop44 as fn(u8, Vec<(u32, u8)>, Option<u32>, Vec<u8>, bool) -> TestResult);
}
