//! Image and tabular classifiers through HTTP: every image architecture trains, on every image
//! format (PNG archives, IDX, CIFAR-10 binary, NumPy), and every kind of model predicts.

use serde_json::{json, Value};

use crate::harness::{envelope_code, example, gzip, png, zip_of, Server};

/// A deterministic generator for test pixels.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u8 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 56) as u8
    }
}

/// `n` images of `h x w x c` (HWC bytes) in `classes` classes told apart by where a bright
/// square sits and, with colour, which channel is brightest.
fn synthetic(n: usize, h: usize, w: usize, c: usize, classes: usize) -> Vec<(Vec<u8>, u8)> {
    let mut rng = Lcg(7);
    (0..n)
        .map(|i| {
            let class = i % classes;
            let mut px: Vec<u8> = (0..h * w * c).map(|_| rng.next() / 4).collect();
            let (y0, x0) = ((class * h / classes).min(h - h / 3), (class * w / classes).min(w - w / 3));
            for y in y0..y0 + h / 3 {
                for x in x0..x0 + w / 3 {
                    for ch in 0..c {
                        let bright = c == 1 || ch == class % c;
                        px[(y * w + x) * c + ch] = if bright { 230 } else { 40 };
                    }
                }
            }
            (px, u8::try_from(class).unwrap())
        })
        .collect()
}

/// A zip of `<class>/<i>.png`.
fn png_zip(images: &[(Vec<u8>, u8)], h: usize, w: usize, c: usize) -> Vec<u8> {
    let files: Vec<(String, Vec<u8>)> =
        images.iter().enumerate().map(|(i, (px, class))| (format!("class_{class}/{i}.png"), png(px, h, w, c))).collect();
    zip_of(&files.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect::<Vec<_>>())
}

/// MNIST's IDX pair, gzipped, in a tar.gz.
fn idx_tar_gz(images: &[(Vec<u8>, u8)], h: usize, w: usize) -> Vec<u8> {
    let n = u32::try_from(images.len()).unwrap();
    let mut idx3 = vec![0, 0, 8, 3];
    for d in [n, h as u32, w as u32] {
        idx3.extend_from_slice(&d.to_be_bytes());
    }
    let mut idx1 = vec![0, 0, 8, 1];
    idx1.extend_from_slice(&n.to_be_bytes());
    for (px, class) in images {
        idx3.extend_from_slice(px);
        idx1.push(*class);
    }
    let mut tar = tar::Builder::new(Vec::new());
    for (name, bytes) in [("train-images-idx3-ubyte.gz", gzip(&idx3)), ("train-labels-idx1-ubyte.gz", gzip(&idx1))] {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, bytes.as_slice()).unwrap();
    }
    gzip(&tar.into_inner().unwrap())
}

/// CIFAR-10's binary batch: a label byte, then the red, green and blue 32x32 planes.
fn cifar_bin(images: &[(Vec<u8>, u8)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (px, class) in images {
        out.push(*class);
        for ch in 0..3 {
            out.extend((0..1024).map(|p| px[p * 3 + ch]));
        }
    }
    out
}

fn upload(s: &Server, name: &str, file_name: &str, bytes: &[u8]) -> Value {
    let (code, v) = s.upload(&format!("/api/v1/datasets?dataset_name={name}"), file_name, bytes);
    assert_eq!(code, 200, "{v}");
    v
}

/// Trains and waits; returns the final status and the loss history.
fn train(s: &Server, body: Value) -> (String, Value, Vec<f64>) {
    let (code, v) = s.post_json("/api/v1/training/start", &body);
    assert_eq!(code, 200, "{v}");
    let id = v["session_id"].as_str().unwrap().to_owned();
    let status = s.wait_ended(&id);
    assert_eq!(status["state"], "completed", "{body}: {status}");
    let (_, history) = s.get(&format!("/api/v1/training/{id}/history"));
    let losses = history.as_array().unwrap().iter().map(|h| h["loss"].as_f64().unwrap()).collect();
    (id, status, losses)
}

fn predict(s: &Server, model: &str, body: &Value) -> (u16, Value) {
    s.post_json(&format!("/api/v1/models/{model}/predict"), body)
}

#[test]
fn cnn_learns_the_digits_png_archive_and_predicts_uploaded_images() {
    let s = Server::start();
    let archive = std::fs::read(example("digits_png.zip")).unwrap();
    let v = upload(&s, "digits_png", "digits_png.zip", &archive);
    assert_eq!((v["format"].as_str(), v["sample_count"].as_u64(), v["dimensions"].as_str()), (Some("images"), Some(1797), Some("8x8x1")));

    let (id, _, losses) = train(
        &s,
        json!({"model_architecture": "cnn", "dataset_name": "digits_png", "epochs": 5, "batch_size": 32, "learning_rate": 0.002}),
    );
    let (_, m) = s.get(&format!("/api/v1/training/{id}/metrics"));
    let val = m["val_accuracy"].as_f64().unwrap();
    println!("cnn on digits_png: validation accuracy {val} after 5 epochs, losses {losses:?}");
    assert!(val >= 0.9, "cnn validation accuracy {val} after 5 epochs (losses {losses:?})");

    // One image of the archive, as a file and as an array.
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(archive)).unwrap();
    let (name, bytes) = (0..zip.len())
        .find_map(|i| {
            let mut f = zip.by_index(i).unwrap();
            let name = f.name().unwrap().to_string();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut bytes).unwrap();
            name.ends_with(".png").then_some((name, bytes))
        })
        .unwrap();
    let folder = name.rsplit('/').nth(1).unwrap().to_owned();
    let (content_type, body) = crate::harness::multipart("digit.png", &bytes);
    let (code, p) = crate::harness::status_json(
        s.req("POST", &format!("/api/v1/models/{id}/predict")).set("Content-Type", &content_type).send_bytes(&body),
    );
    assert_eq!(code, 200, "{p}");
    let first = &p["predictions"][0];
    assert_eq!(first["probabilities"].as_array().unwrap().len(), 10);
    assert!(first["confidence"].as_f64().unwrap() > 0.0);
    assert!(folder.ends_with(first["class"].as_str().unwrap()), "an image of {folder} predicted as {first}");

    let pixels = image::load_from_memory(&bytes).unwrap().to_luma8();
    let rows: Vec<Vec<u8>> = pixels.rows().map(|r| r.map(|p| p.0[0]).collect()).collect();
    let (code, p) = predict(&s, &id, &json!({"inputs": [rows.clone(), rows]}));
    assert_eq!(code, 200, "{p}");
    assert_eq!(p["predictions"].as_array().unwrap().len(), 2);
    assert_eq!(p["predictions"][0]["class"], first["class"]);

    // A wrong shape says what the model expects; a table row is the wrong kind.
    let (code, e) = predict(&s, &id, &json!({"input": [[1, 2, 3], [4, 5, 6]]}));
    assert_eq!((code, envelope_code(&e).as_str()), (400, "BAD_REQUEST"), "{e}");
    assert!(e["detail"].as_str().unwrap().contains("[8][8]"), "{e}");
    let (code, e) = predict(&s, &id, &json!({"inputs": [[1, 2, 3]]}));
    assert_eq!(code, 400, "{e}");
    assert!(e["detail"].as_str().unwrap().contains("image model"), "{e}");
}

#[test]
fn mlp_learns_iris_and_wine_with_chosen_widths_and_predicts_rows() {
    let s = Server::start();
    upload(&s, "iris", "iris.csv", &std::fs::read(example("iris.csv")).unwrap());
    upload(&s, "wine", "wine.csv", &std::fs::read(example("wine.csv")).unwrap());
    let (iris_model, status, _) = train(
        &s,
        json!({"model_architecture": "mlp", "dataset_name": "iris", "epochs": 40, "batch_size": 16, "learning_rate": 0.01,
               "hidden_sizes": [32, 16], "dropout": 0.1}),
    );
    assert_eq!(status["config"]["hidden_sizes"], json!([32, 16]));
    let (_, m) = s.get(&format!("/api/v1/training/{iris_model}/metrics"));
    assert!(m["val_accuracy"].as_f64().unwrap() >= 0.85, "{m}");
    let (wine_model, _, _) =
        train(&s, json!({"model_architecture": "mlp", "dataset_name": "wine", "epochs": 30, "batch_size": 16, "learning_rate": 0.01}));
    let (_, m) = s.get(&format!("/api/v1/training/{wine_model}/metrics"));
    assert!(m["val_accuracy"].as_f64().unwrap() >= 0.85, "{m}");

    let (_, models) = s.get("/api/v1/models");
    let listed = models.as_array().unwrap().iter().find(|m| m["name"] == iris_model.as_str()).unwrap().clone();
    assert_eq!(listed["architecture"], "mlp");

    // Iris rows: a setosa and a virginica, by position and by name.
    let (code, p) = predict(&s, &iris_model, &json!({"inputs": [[5.1, 3.5, 1.4, 0.2], [7.7, 3.0, 6.1, 2.3]]}));
    assert_eq!(code, 200, "{p}");
    let classes: Vec<&str> = p["predictions"].as_array().unwrap().iter().map(|x| x["class"].as_str().unwrap()).collect();
    assert!(classes[0].to_lowercase().contains("setosa") || classes[0] == "0", "{p}");
    assert_ne!(classes[0], classes[1]);
    let probs: f64 = p["predictions"][0]["probabilities"].as_array().unwrap().iter().map(|c| c["probability"].as_f64().unwrap()).sum();
    assert!((probs - 1.0).abs() < 1e-4, "{p}");

    let (_, info) = s.get("/api/v1/datasets/iris");
    let features: Vec<String> =
        info["statistics"]["columns"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_owned()).collect();
    let named: serde_json::Map<String, Value> = features.iter().zip([5.1, 3.5, 1.4, 0.2]).map(|(k, v)| (k.clone(), json!(v))).collect();
    let (code, p) = predict(&s, &iris_model, &json!({"input": named}));
    assert_eq!(code, 200, "{p}");
    assert_eq!(p["predictions"][0]["class"].as_str(), Some(classes[0]));

    let (code, e) = predict(&s, &iris_model, &json!({"inputs": [[1.0, 2.0, 3.0]]}));
    assert_eq!(code, 400, "{e}");
    let msg = e["detail"].as_str().unwrap();
    assert!(msg.contains("expects 4 features") && msg.contains(&features[0]), "{msg}");
    let (code, e) = predict(&s, &wine_model, &json!({"input": {"nonsense": 1.0}}));
    assert_eq!(code, 400, "{e}");
    let (code, e) = predict(&s, "no_such_model", &json!({"inputs": [[1.0]]}));
    assert_eq!((code, envelope_code(&e).as_str()), (404, "MODEL_NOT_FOUND"), "{e}");
}

#[test]
fn idx_and_cifar10_files_built_here_are_recognised_and_train() {
    let s = Server::start();
    let mnist_like = synthetic(90, 28, 28, 1, 3);
    let v = upload(&s, "mnist_like", "mnist.tar.gz", &idx_tar_gz(&mnist_like, 28, 28));
    assert_eq!((v["format"].as_str(), v["sample_count"].as_u64(), v["dimensions"].as_str()), (Some("idx"), Some(90), Some("28x28x1")));
    let cifar_like = synthetic(60, 32, 32, 3, 3);
    let v = upload(&s, "cifar_like", "data_batch_1.bin", &cifar_bin(&cifar_like));
    assert_eq!((v["format"].as_str(), v["sample_count"].as_u64(), v["dimensions"].as_str()), (Some("cifar10"), Some(60), Some("32x32x3")));
    let (_, info) = s.get("/api/v1/datasets/cifar_like");
    assert!(info["statistics"]["class_counts"].is_object(), "{info}");

    let (idx_model, _, losses) = train(
        &s,
        json!({"model_architecture": "cnn", "dataset_name": "mnist_like", "epochs": 4, "batch_size": 16, "learning_rate": 0.003}),
    );
    assert!(losses.last() < losses.first(), "{losses:?}");
    let (cifar_model, _, losses) = train(
        &s,
        json!({"model_architecture": "cnn", "dataset_name": "cifar_like", "epochs": 4, "batch_size": 16, "learning_rate": 0.003}),
    );
    assert!(losses.last() < losses.first(), "{losses:?}");

    // An encoded colour image for the CIFAR model, a grey one converted for the IDX model.
    let (px, class) = &cifar_like[1];
    let (code, p) = crate::harness::status_json(
        s.req("POST", &format!("/api/v1/models/{cifar_model}/predict")).set("Content-Type", "image/png").send_bytes(&png(px, 32, 32, 3)),
    );
    assert_eq!(code, 200, "{p}");
    assert_eq!(p["predictions"][0]["class_index"].as_u64(), Some(u64::from(*class)), "{p}");
    let (code, e) = crate::harness::status_json(
        s.req("POST", &format!("/api/v1/models/{idx_model}/predict")).set("Content-Type", "image/png").send_bytes(&png(px, 32, 32, 3)),
    );
    assert_eq!(code, 400, "{e}");
    assert!(e["detail"].as_str().unwrap().contains("expects 28x28"), "{e}");
}

#[test]
fn every_large_architecture_trains_an_epoch_on_a_small_subset_and_its_loss_falls() {
    let s = Server::start();
    // 64x64 colour images take ResNet's full stem with its 3x3 stride-2 max-pool.
    let big = synthetic(24, 64, 64, 3, 2);
    upload(&s, "shapes64", "shapes64.zip", &png_zip(&big, 64, 64, 3));
    let small = synthetic(32, 16, 16, 3, 2);
    upload(&s, "shapes16", "shapes16.zip", &png_zip(&small, 16, 16, 3));
    for (arch, dataset, optimizer, lr) in [
        ("resnet18", "shapes64", "adam", 0.001),
        ("resnet50", "shapes16", "adam", 0.001),
        ("mobilenet_v2", "shapes16", "adam", 0.001),
        ("vgg16", "shapes16", "sgd", 0.005),
    ] {
        let (id, status, losses) = train(
            &s,
            json!({"model_architecture": arch, "dataset_name": dataset, "epochs": 3, "batch_size": 8, "learning_rate": lr,
                   "optimizer": optimizer, "validation_split": 0.25}),
        );
        assert!(losses.last() < losses.first(), "{arch}: loss did not fall: {losses:?}");
        assert_eq!(status["config"]["model_architecture"], arch);
        let (_, logs) = s.get(&format!("/api/v1/training/{id}/logs?limit=100"));
        let text = logs.to_string();
        assert!(text.contains(arch) && text.contains("parameters"), "{arch}: {text:.400}");
        let (px, side) = if dataset == "shapes64" { (&big[0].0, 64) } else { (&small[0].0, 16) };
        let sample: Vec<Vec<&[u8]>> =
            (0..side).map(|y| (0..side).map(|x| &px[(y * side + x) * 3..(y * side + x) * 3 + 3]).collect()).collect();
        let (code, p) = predict(&s, &id, &json!({"input": sample}));
        assert_eq!(code, 200, "{arch}: {p}");
        assert_eq!(p["predictions"][0]["probabilities"].as_array().unwrap().len(), 2);
    }
}

#[test]
fn numpy_tables_and_images_train_and_a_text_model_cannot_predict() {
    let s = Server::start();
    upload(&s, "digits_npz", "digits.npz", &std::fs::read(example("digits.npz")).unwrap());
    let (_, info) = s.get("/api/v1/datasets/digits_npz");
    assert_eq!(info["format"], "npz", "{info}");
    let arch = if info["dimensions"].as_str().unwrap_or_default().contains('x') { "cnn" } else { "mlp" };
    let (id, _, losses) =
        train(&s, json!({"model_architecture": arch, "dataset_name": "digits_npz", "epochs": 3, "batch_size": 32, "learning_rate": 0.003}));
    assert!(losses.last() < losses.first(), "{losses:?}");
    let (_, m) = s.get(&format!("/api/v1/training/{id}/metrics"));
    assert!(m["val_accuracy"].as_f64().unwrap() > 0.8, "{m}");

    // Features alone store fine but cannot train.
    upload(&s, "digits_x", "digits_x.npy", &std::fs::read(example("digits_x.npy")).unwrap());
    let (code, e) = s.post_json("/api/v1/training/start", &json!({"model_architecture": "cnn", "dataset_name": "digits_x"}));
    if code == 200 {
        let status = s.wait_ended(e["session_id"].as_str().unwrap());
        assert_eq!(status["state"], "failed", "{status}");
        assert!(status["error_message"].as_str().unwrap().contains("labels"), "{status}");
    } else {
        assert_eq!(code, 400, "{e}");
    }

    upload(&s, "tempest", "tempest.txt", &std::fs::read(example("tempest.txt")).unwrap());
    let (lstm, _, _) = train(
        &s,
        json!({"model_architecture": "custom_ai_model", "dataset_name": "tempest", "epochs": 1, "batch_size": 16,
               "embedding_dim": 8, "hidden_size": 16, "num_layers": 1, "sequence_length": 20}),
    );
    let (code, e) = predict(&s, &lstm, &json!({"inputs": [[1.0]]}));
    assert_eq!((code, envelope_code(&e).as_str()), (400, "UNSUPPORTED_MODEL"), "{e}");
}
