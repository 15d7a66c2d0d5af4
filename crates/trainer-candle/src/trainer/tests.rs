//! Tests of [`CandleTrainer`] and the epoch loop it runs: learning iris, every optimizer and
//! loss, reproducibility, stopping, resuming, failure injection for every architecture, and
//! refusing data it cannot train on.

use std::{fs, path::Path, time::Instant};

use quickcheck::{quickcheck, QuickCheck, TestResult};
use serde_json::{json, Value};
use time::OffsetDateTime;
use trainyard_domain::{
    metrics::EpochMetrics,
    registry::{DatasetInfo, DatasetRecord, ModelFormat},
    DatasetName, LossFunction, Optimizer, SessionId, TrainingRequest,
};

use super::*;
use crate::MODEL_FILE_NAME;

const IRIS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/datasets/iris.csv");
const TEMPEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/datasets/tempest.txt");

/// Everything a run reported.
#[derive(Debug, Default)]
struct Recorded {
    metrics: Vec<EpochMetrics>,
    logs: Vec<(LogLevel, String)>,
    resumed_from: Option<u32>,
    heartbeats: u64,
    /// Where the run writes its checkpoint: each report notes the epoch the checkpoint holds then.
    scratch: Option<std::path::PathBuf>,
    checkpointed: Vec<Option<u32>>,
    /// Snapshots the run reported, by id.
    snapshots: Vec<(u64, Result<TrainedModel, TrainError>)>,
    /// After this many batches, a live learning rate of 0.005 and snapshot 7 are asked for.
    live_at: Option<(u64, RunControl)>,
}

impl TrainingEvents for Recorded {
    fn epoch_finished(&mut self, metrics: EpochMetrics) {
        if let Some(dir) = &self.scratch {
            let held = crate::resume::Checkpoint::read(dir, &Device::Cpu).ok().flatten().map(|c| c.epoch);
            self.checkpointed.push(held);
        }
        self.metrics.push(metrics);
    }

    fn batch_finished(&mut self) {
        self.heartbeats += 1;
        if let Some((_, control)) = self.live_at.as_ref().filter(|(at, _)| *at == self.heartbeats) {
            control.set_learning_rate(0.005);
            control.request_snapshot(7);
        }
    }

    fn snapshot(&mut self, id: u64, result: Result<TrainedModel, TrainError>) {
        self.snapshots.push((id, result));
    }

    fn log(&mut self, level: LogLevel, message: String) {
        self.logs.push((level, message));
    }

    fn resumed(&mut self, epoch: u32) {
        self.resumed_from = Some(epoch);
    }
}

fn config(req: TrainingRequest) -> TrainingConfig {
    TrainingConfig::validate(&TrainingRequest { model_architecture: Some("mlp".into()), dataset_name: Some("data".into()), ..req }).unwrap()
}

fn job(path: &Path, format: DatasetFormat, config: TrainingConfig, scratch: &Path) -> TrainingJob {
    TrainingJob {
        session_id: SessionId::generate(),
        config,
        dataset: DatasetRecord {
            name: DatasetName::new("data").unwrap(),
            file_path: path.to_path_buf(),
            size_bytes: fs::metadata(path).map(|m| m.len()).unwrap_or(0),
            info: DatasetInfo { format, sample_count: None, dimensions: None, statistics: Value::Null },
            created_at: OffsetDateTime::UNIX_EPOCH,
            content_hash: None,
        },
        extra_datasets: Vec::new(),
        base_model: None,
        scratch_dir: scratch.to_path_buf(),
        learning_rate: None,
    }
}

fn run(trainer: &CandleTrainer, path: &Path, format: DatasetFormat, req: TrainingRequest) -> (Result<TrainedModel, TrainError>, Recorded) {
    let scratch = tempfile::tempdir().unwrap();
    let mut events = Recorded::default();
    let mut result = trainer.train(&job(path, format, config(req), scratch.path()), &mut events, &RunControl::default());
    // Keep the model file readable after the scratch directory goes away.
    if let Ok(model) = &mut result {
        let kept = std::env::temp_dir().join(format!("trainyard-test-{}.safetensors", SessionId::generate()));
        fs::copy(&model.file, &kept).unwrap();
        model.file = kept;
    }
    (result, events)
}

fn iris(req: TrainingRequest) -> (Result<TrainedModel, TrainError>, Recorded) {
    run(&CandleTrainer::cpu(), Path::new(IRIS), DatasetFormat::Csv, req)
}

/// A small two-class table with a learnable rule, from quickcheck's numbers.
fn synthetic(dir: &Path, values: &[i16]) -> std::path::PathBuf {
    let mut text = "a,b,c,label\n".to_owned();
    for r in 0..24 {
        let v = |k: usize| f64::from(values.get((r * 3 + k) % values.len().max(1)).copied().unwrap_or(0)) / 100.0;
        let (a, b, c) = (v(0), v(1), v(2) + r as f64);
        text += &format!("{a},{b},{c},{}\n", r % 2);
    }
    let path = dir.join("synthetic.csv");
    fs::write(&path, text).unwrap();
    path
}

fn tensor_bytes(file: &Path) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    let bytes = fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = st.tensors().into_iter().map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec())).collect();
    out.sort();
    out
}

#[test]
fn learns_iris_to_ninety_percent_validation_accuracy() {
    let started = Instant::now();
    let (model, events) = iris(TrainingRequest {
        learning_rate: Some(0.01),
        batch_size: Some(16),
        epochs: Some(30),
        optimizer: Some("adam".into()),
        loss_function: Some("cross_entropy".into()),
        ..TrainingRequest::default()
    });
    let model = model.unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let last = events.metrics.last().unwrap();
    let per_epoch = events.metrics.iter().map(|m| m.epoch_seconds).sum::<f64>() / 30.0;
    println!(
        "iris: val_accuracy {:.4}, accuracy {:.4}, loss {:.4}; {per_epoch:.4}s per epoch, {elapsed:.2}s in all",
        last.val_accuracy.unwrap(),
        last.accuracy,
        last.loss
    );
    // One validation sample is 3.3%: judge the last five epochs together, so that a rounding
    // difference on another CPU cannot flip the verdict, and the final one on its own loosely.
    let recent = events.metrics[25..].iter().filter_map(|m| m.val_accuracy).sum::<f64>() / 5.0;
    println!("iris: mean val_accuracy over epochs 26-30: {recent:.4}");
    assert!(recent >= 0.9, "{:?}", &events.metrics[25..]);
    assert!(last.val_accuracy.unwrap() >= 0.85, "{last:?}");
    assert_eq!(events.metrics.iter().map(|m| m.epoch).collect::<Vec<_>>(), (1..=30).collect::<Vec<_>>());
    assert!(last.loss < events.metrics[0].loss * 0.5);
    assert_eq!((model.epochs_completed, model.stopped, model.format), (30, false, ModelFormat::Safetensors));
    assert_eq!(model.metadata["classes"], json!(["0", "1", "2"]));
    assert_eq!(model.metadata["input_features"], 4);
    assert_eq!(model.metadata["hyperparameters"]["optimizer"], "adam");

    let logs: Vec<&str> = events.logs.iter().map(|(_, m)| m.as_str()).collect();
    assert!(logs[0].contains("150 rows, 4 features, 3 classes"), "{logs:?}");
    assert!(logs[1].contains("120 training / 30 validation"), "{logs:?}");
    assert!(logs[2].contains("9091 parameters") && logs[2].contains("device cpu"), "{logs:?}");
    assert!(logs[3].starts_with("epoch 1/30: loss ") && logs[3].contains("val_accuracy"), "{logs:?}");

    // The file: PyTorch names, and the metadata in the header.
    let bytes = fs::read(&model.file).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().unwrap();
    assert_eq!(meta["architecture"], "mlp");
    assert_eq!(meta["classes"], r#"["0","1","2"]"#);
    assert_eq!(meta["session_id"], model.metadata["session_id"].as_str().unwrap());
    let mean: Vec<f64> = serde_json::from_str(&meta["feature_mean"]).unwrap();
    assert_eq!(mean.len(), 4);
    let final_metrics: Value = serde_json::from_str(&meta["final_metrics"]).unwrap();
    // With validation data the model keeps its best epoch's weights, and says so.
    let kept = &model.metadata["kept"];
    assert_eq!((kept["keep"].as_str(), kept["metric"].as_str()), (Some("best"), Some("val_loss")), "{kept}");
    assert_eq!(final_metrics["epoch"], kept["epoch"]);
    // The one reader reads what the one writer wrote.
    let description = crate::model_meta::ModelMeta::from_header(&meta).unwrap();
    assert_eq!(description.to_value(), model.metadata);
    let Model::Table(table) = &description.model else { panic!("{description:?}") };
    assert_eq!((table.classes.len(), table.shape.inputs, table.feature_names.len()), (3, 4, 4));
    assert_eq!(events.heartbeats, 30 * 8, "a heartbeat after every batch");
    let names: Vec<String> = tensor_bytes(&model.file).into_iter().map(|(n, _, _)| n).collect();
    assert_eq!(names, ["layers.0.bias", "layers.0.weight", "layers.2.bias", "layers.2.weight", "layers.4.bias", "layers.4.weight"]);
    fs::remove_file(&model.file).unwrap();
}

#[test]
fn every_optimizer_and_loss_runs_an_epoch_with_a_finite_loss() {
    let combos =
        Optimizer::ALL.iter().map(|&o| (o, LossFunction::CrossEntropy)).chain(LossFunction::ALL.iter().map(|&l| (Optimizer::Adam, l)));
    for (optimizer, loss) in combos {
        let (model, events) = iris(TrainingRequest {
            epochs: Some(1),
            batch_size: Some(16),
            learning_rate: Some(0.01),
            optimizer: Some(optimizer.as_str().into()),
            loss_function: Some(loss.as_str().into()),
            ..TrainingRequest::default()
        });
        let model = model.unwrap_or_else(|e| panic!("{optimizer}/{loss}: {e}"));
        let m = &events.metrics[0];
        assert!(m.loss.is_finite() && m.val_loss.is_some_and(f64::is_finite), "{optimizer}/{loss}: {m:?}");
        println!("{optimizer}/{loss}: loss {:.4}, val_accuracy {:.3}", m.loss, m.val_accuracy.unwrap());
        fs::remove_file(&model.file).unwrap();
    }
}

#[test]
fn no_validation_split_reports_no_validation_metrics() {
    let (model, events) = iris(TrainingRequest { epochs: Some(1), validation_split: Some(0.0), ..TrainingRequest::default() });
    fs::remove_file(model.unwrap().file).unwrap();
    assert_eq!((events.metrics[0].val_loss, events.metrics[0].val_accuracy), (None, None));
    assert!(events.logs[1].1.contains("150 training / 0 validation"));
    assert!(!events.logs[3].1.contains("val_"));
}

#[test]
fn prop27_same_seed_same_metrics_and_weights() {
    // Property 27: same seed => identical metrics and identical saved weights bytes on CPU.
    fn prop(values: Vec<i16>, seed: u64, batch: u8, optimizer: u8) -> TestResult {
        let dir = tempfile::tempdir().unwrap();
        let path = synthetic(dir.path(), &values);
        let req = TrainingRequest {
            epochs: Some(2),
            batch_size: Some(i64::from(batch % 8) + 1),
            seed: Some(seed),
            learning_rate: Some(0.01),
            optimizer: Some(Optimizer::ALL[usize::from(optimizer) % Optimizer::ALL.len()].as_str().into()),
            ..TrainingRequest::default()
        };
        let once = || {
            let (model, events) = run(&CandleTrainer::cpu(), &path, DatasetFormat::Csv, req.clone());
            let model = model.unwrap();
            let weights = tensor_bytes(&model.file);
            fs::remove_file(&model.file).unwrap();
            let metrics: Vec<_> = events.metrics.iter().map(|m| (m.epoch, m.loss, m.accuracy, m.val_loss, m.val_accuracy)).collect();
            (metrics, weights, model.metadata["classes"].clone())
        };
        let (a, b) = (once(), once());
        TestResult::from_bool(a == b && a.0.len() == 2)
    }
    QuickCheck::new().tests(10).quickcheck(prop as fn(Vec<i16>, u64, u8, u8) -> TestResult);
}

#[test]
fn different_seeds_train_differently() {
    let dir = tempfile::tempdir().unwrap();
    let path = synthetic(dir.path(), &[3, 1, 4, 1, 5, 9, 2, 6]);
    let weights = |seed| {
        let (model, _) = run(
            &CandleTrainer::cpu(),
            &path,
            DatasetFormat::Csv,
            TrainingRequest { epochs: Some(1), seed: Some(seed), ..TrainingRequest::default() },
        );
        let file = model.unwrap().file;
        let w = tensor_bytes(&file);
        fs::remove_file(file).unwrap();
        w
    };
    assert_ne!(weights(1), weights(2));
}

#[test]
fn prop28_stop_after_k_batches_saves_a_loadable_model() {
    // Property 28: a stop requested after k batches ends with stopped=true, a loadable
    // safetensors file whose tensors have the right shapes.
    fn prop(k: u8, batch: u8) -> TestResult {
        let batch = u64::from(batch % 40) + 8;
        let epochs = 3u64;
        let per_epoch = 120u64.div_ceil(batch);
        let k = u64::from(k) % (per_epoch * epochs);
        let trainer = CandleTrainer { stop_after_batches: Some(k), ..CandleTrainer::cpu() };
        let req = TrainingRequest {
            epochs: Some(epochs as i64),
            batch_size: Some(batch as i64),
            validation_split: Some(0.2),
            ..TrainingRequest::default()
        };
        let (model, events) = run(&trainer, Path::new(IRIS), DatasetFormat::Csv, req);
        let model = match model {
            Ok(m) => m,
            Err(e) => return TestResult::error(e.to_string()),
        };
        let loaded = candle_core::safetensors::load(&model.file, &Device::Cpu).unwrap();
        fs::remove_file(&model.file).unwrap();
        let shapes_ok = MlpShape { inputs: 4, hidden: vec![128, 64], classes: 3, dropout: false }
            .parameter_shapes()
            .iter()
            .all(|(name, shape)| loaded.get(name).is_some_and(|t| t.dims() == shape.as_slice()));
        let completed = u32::try_from(k / per_epoch).unwrap();
        TestResult::from_bool(
            model.stopped
                && shapes_ok
                && loaded.len() == 6
                && model.epochs_completed == completed
                && events.metrics.len() == completed as usize
                && model.metadata["stopped"] == true
                && events.logs.iter().any(|(_, m)| m.contains("stop requested")),
        )
    }
    QuickCheck::new().tests(15).quickcheck(prop as fn(u8, u8) -> TestResult);
}

#[test]
fn a_stop_before_the_first_batch_still_saves_the_initial_weights() {
    let scratch = tempfile::tempdir().unwrap();
    let stop = RunControl::default();
    stop.request_stop();
    let model = CandleTrainer::cpu()
        .train(
            &job(Path::new(IRIS), DatasetFormat::Csv, config(TrainingRequest::default()), scratch.path()),
            &mut Recorded::default(),
            &stop,
        )
        .unwrap();
    assert_eq!((model.stopped, model.epochs_completed, model.metadata["final_metrics"].clone()), (true, 0, Value::Null));
    assert_eq!(model.file, scratch.path().join(MODEL_FILE_NAME));
    assert!(model.file.exists());
}

#[test]
fn a_live_learning_rate_applies_from_the_next_batch_and_a_snapshot_is_a_loadable_model() {
    let scratch = tempfile::tempdir().unwrap();
    let req = TrainingRequest {
        epochs: Some(3),
        batch_size: Some(30),
        lr_schedule: Some(trainyard_domain::config::LrScheduleRequest {
            kind: Some("exponential".into()),
            gamma: Some(0.5),
            ..Default::default()
        }),
        ..TrainingRequest::default()
    };
    let job = job(Path::new(IRIS), DatasetFormat::Csv, config(req), scratch.path());
    let control = RunControl::default();
    // 120 training rows in batches of 30: four an epoch; the change comes after epoch 1's third.
    let mut events = Recorded { live_at: Some((3, control.clone())), ..Recorded::default() };
    let model = CandleTrainer::cpu().train(&job, &mut events, &control).unwrap();
    let rates: Vec<Option<f64>> = events.metrics.iter().map(|m| m.learning_rate).collect();
    // Epoch 1's last batch already trains at the new rate; the schedule no longer applies.
    assert_eq!(rates, vec![Some(0.005); 3]);
    assert_eq!(events.snapshots.len(), 1);
    let (id, snap) = &events.snapshots[0];
    let snap = snap.as_ref().unwrap();
    assert_eq!((*id, snap.epochs_completed, snap.stopped), (7, 0, false));
    assert!(snap.file != model.file && snap.file.exists());
    assert_eq!(snap.metadata["architecture"], model.metadata["architecture"]);
    // The snapshot holds the weights of epoch 1's fourth batch, not the final ones, and loads.
    assert_ne!(tensor_bytes(&snap.file), tensor_bytes(&model.file));
    let shapes = |f: &Path| tensor_bytes(f).into_iter().map(|(n, s, _)| (n, s)).collect::<Vec<_>>();
    assert_eq!(shapes(&snap.file), shapes(&model.file));
}

#[test]
fn a_nan_loss_fails_the_run_naming_epoch_and_batch() {
    let trainer = CandleTrainer { nan_at_batch: Some(9), ..CandleTrainer::cpu() };
    let (result, _) =
        run(&trainer, Path::new(IRIS), DatasetFormat::Csv, TrainingRequest { batch_size: Some(16), ..TrainingRequest::default() });
    // 120 training rows in batches of 16: 8 per epoch, so batch 9 overall is epoch 2, batch 2.
    assert_eq!(result.unwrap_err(), TrainError::Failed("loss became NaN at epoch 2, batch 2; try a lower learning rate".into()));
}

#[test]
fn refuses_data_it_cannot_train_on() {
    let (r, _) = run(&CandleTrainer::cpu(), Path::new(TEMPEST), DatasetFormat::Text, TrainingRequest::default());
    let msg = r.unwrap_err().to_string();
    assert!(msg.contains("mlp") && msg.contains("tabular") && msg.contains("text"), "{msg}");

    let dir = tempfile::tempdir().unwrap();
    let data_error = |name: &str, text: &str| {
        let path = dir.path().join(name);
        fs::write(&path, text).unwrap();
        match run(&CandleTrainer::cpu(), &path, DatasetFormat::Csv, TrainingRequest::default()).0 {
            Err(TrainError::Data(m)) => m,
            other => panic!("{name}: expected a data error, got {other:?}"),
        }
    };
    assert!(data_error("one_class.csv", "a,label\n1,0\n2,0\n3,0\n").contains("single class"));
    assert!(data_error("one_row.csv", "a,label\n1,0\n").contains("at least 2"));
    assert!(data_error("ragged.csv", "a,b,label\n1,2,0\n3,4\n").contains("line 3"));
    let missing = run(&CandleTrainer::cpu(), &dir.path().join("gone.csv"), DatasetFormat::Csv, TrainingRequest::default()).0;
    assert!(matches!(missing, Err(TrainError::Io(_))), "{missing:?}");
}

#[test]
fn string_labels_and_tsv_train() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.tsv");
    let mut text = "x\ty\tspecies\n".to_owned();
    for i in 0..30 {
        let (x, label) = if i % 2 == 0 { (f64::from(i), "cat") } else { (-f64::from(i), "dog") };
        text += &format!("{x}\t{}\t{label}\n", i % 5);
    }
    fs::write(&path, text).unwrap();
    let (model, events) =
        run(&CandleTrainer::cpu(), &path, DatasetFormat::Tsv, TrainingRequest { epochs: Some(3), ..TrainingRequest::default() });
    let model = model.unwrap();
    fs::remove_file(&model.file).unwrap();
    assert_eq!(model.metadata["classes"], json!(["cat", "dog"]));
    assert_eq!(model.metadata["label_column"], "species");
    assert_eq!(events.metrics.len(), 3);
}

quickcheck! {
    // Property 42: a run interrupted after any batch and started again on its scratch
    // directory resumes from the last epoch's checkpoint and ends with exactly the weights and
    // metrics of the uninterrupted run.
    fn prop42_resumed_runs_match_uninterrupted_ones(stop_after: u8, opt: u8) -> bool {
        let optimizer = ["adam", "adamw", "sgd", "rmsprop"][usize::from(opt % 4)];
        let req = || TrainingRequest {
            epochs: Some(4),
            batch_size: Some(32),
            learning_rate: Some(0.01),
            optimizer: Some(optimizer.into()),
            ..TrainingRequest::default()
        };
        let weights = |file: &Path| {
            let mut t: Vec<_> = candle_core::safetensors::load(file, &candle_core::Device::Cpu).unwrap().into_iter().collect();
            t.sort_by(|a, b| a.0.cmp(&b.0));
            t.into_iter().map(|(k, v)| (k, v.flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect::<Vec<_>>()
        };
        let (whole, whole_events) = iris(req());
        let whole = whole.unwrap();

        let scratch = tempfile::tempdir().unwrap();
        let job = job(Path::new(IRIS), DatasetFormat::Csv, config(req()), scratch.path());
        // 120 training rows in batches of 32: 4 batches an epoch, 16 in all.
        let interrupted = CandleTrainer { stop_after_batches: Some(u64::from(stop_after % 15) + 1), ..CandleTrainer::cpu() };
        let mut first = Recorded::default();
        let partial = interrupted.train(&job, &mut first, &RunControl::default()).unwrap();
        let mut second = Recorded::default();
        let resumed = CandleTrainer::cpu().train(&job, &mut second, &RunControl::default()).unwrap();
        let all_epochs: Vec<u32> = first.metrics.iter().chain(&second.metrics).map(|m| m.epoch).collect();
        partial.stopped
            && second.resumed_from == (partial.epochs_completed > 0).then_some(partial.epochs_completed)
            && weights(&resumed.file) == weights(&whole.file)
            && second.metrics.last().map(|m| m.loss) == whole_events.metrics.last().map(|m| m.loss)
            && all_epochs.iter().max() == Some(&4)
    }
}

#[test]
fn a_lone_last_sample_joins_the_batch_before_it_under_batch_norm() {
    let order: Vec<u32> = (0..9).collect();
    let sizes = |bn| epoch_batches(&order, 4, bn).iter().map(|b| b.len()).collect::<Vec<_>>();
    assert_eq!(sizes(false), [4, 4, 1]);
    assert_eq!(sizes(true), [4, 5]);
    assert_eq!(epoch_batches(&order, 4, true).concat(), order);
    assert_eq!(epoch_batches(&order[..1], 4, true).len(), 1);
}

/// A small text with a pattern the char-LSTM picks up in an epoch or two.
fn small_text(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("small.txt");
    fs::write(&path, "the cat sat on the mat. ".repeat(40)).unwrap();
    path
}

/// A small char-LSTM: 768 training characters in 38 windows of 20, 5 batches of 8 an epoch.
fn char_job(text: &Path, scratch: &Path, epochs: i64) -> TrainingJob {
    let config = TrainingConfig::validate(&TrainingRequest {
        model_architecture: Some("custom_ai_model".into()),
        dataset_name: Some("data".into()),
        embedding_dim: Some(8),
        hidden_size: Some(16),
        num_layers: Some(1),
        sequence_length: Some(20),
        batch_size: Some(8),
        epochs: Some(epochs),
        learning_rate: Some(0.01),
        validation_split: Some(0.2),
        ..TrainingRequest::default()
    })
    .unwrap();
    job(text, DatasetFormat::Text, config, scratch)
}

fn char_run(trainer: &CandleTrainer, job: &TrainingJob) -> (Result<TrainedModel, TrainError>, Recorded) {
    let mut events = Recorded { scratch: Some(job.scratch_dir.clone()), ..Recorded::default() };
    let result = trainer.train(job, &mut events, &RunControl::default());
    (result, events)
}

#[test]
fn the_char_lstm_trains_through_the_same_loop_reproducibly() {
    let dir = tempfile::tempdir().unwrap();
    let text = small_text(dir.path());
    let once = || {
        let scratch = tempfile::tempdir().unwrap();
        let (model, events) = char_run(&CandleTrainer::cpu(), &char_job(&text, scratch.path(), 2));
        let model = model.unwrap();
        (
            model.metadata.clone(),
            tensor_bytes(&model.file),
            events,
            crate::weights::load_char_model(&model.file, model.format, &Device::Cpu),
        )
    };
    let (metadata, weights, events, loaded) = once();
    assert_eq!(events.metrics.iter().map(|m| m.epoch).collect::<Vec<_>>(), [1, 2]);
    assert!(events.metrics.iter().all(|m| m.val_loss.is_some() && m.accuracy > 0.0), "{:?}", events.metrics);
    assert_eq!(events.heartbeats, 2 * 5, "a heartbeat after every batch");
    assert_eq!(events.checkpointed, [Some(1), Some(2)], "each epoch is checkpointed before it is reported");
    let lines: Vec<&str> = events.logs.iter().map(|(_, m)| m.as_str()).filter(|m| m.starts_with("epoch ")).collect();
    assert!(lines[0].starts_with("epoch 1/2: loss ") && lines[0].contains("val_accuracy"), "{lines:?}");
    // The description every architecture writes: the run's record, final metrics with their epoch.
    assert_eq!(metadata["architecture"], "custom_ai_model");
    assert_eq!(metadata["final_metrics"]["epoch"], 2);
    assert_eq!((metadata["epochs_completed"].clone(), metadata["stopped"].clone()), (json!(2), json!(false)));
    assert_eq!((metadata["hyperparameters"]["batch_size"].clone(), metadata["datasets"].clone()), (json!(8), json!(["data"])));
    let loaded = loaded.unwrap();
    assert_eq!((loaded.opts.embedding_dim, loaded.opts.hidden_size, loaded.opts.sequence_length), (8, 16, 20));
    assert_eq!(loaded.vocab.len(), metadata["vocab_size"].as_u64().unwrap() as usize);

    let (metadata_again, weights_again, events_again, _) = once();
    let numbers = |e: &Recorded| e.metrics.iter().map(|m| (m.epoch, m.loss, m.accuracy, m.val_loss, m.val_accuracy)).collect::<Vec<_>>();
    assert_eq!(numbers(&events), numbers(&events_again), "bit-identical metrics with the same seed");
    assert_eq!(weights, weights_again);
    assert_eq!(metadata["final_metrics"], metadata_again["final_metrics"]);
}

#[test]
fn stops_and_nan_losses_are_injected_into_the_char_lstm_like_any_other() {
    let dir = tempfile::tempdir().unwrap();
    let text = small_text(dir.path());
    let scratch = tempfile::tempdir().unwrap();
    let trainer = CandleTrainer { stop_after_batches: Some(7), ..CandleTrainer::cpu() };
    let (model, events) = char_run(&trainer, &char_job(&text, scratch.path(), 3));
    let model = model.unwrap();
    assert_eq!((model.stopped, model.epochs_completed, events.metrics.len()), (true, 1, 1));
    assert!(
        events.logs.iter().any(|(_, m)| m == "stop requested in epoch 2 before batch 3 (7 batches run); saving the current weights"),
        "{:?}",
        events.logs
    );
    assert_eq!((model.metadata["stopped"].clone(), model.metadata["final_metrics"]["epoch"].clone()), (json!(true), json!(1)));
    assert!(crate::weights::load_char_model(&model.file, model.format, &Device::Cpu).is_ok());

    let scratch = tempfile::tempdir().unwrap();
    let trainer = CandleTrainer { nan_at_batch: Some(6), ..CandleTrainer::cpu() };
    let (result, _) = char_run(&trainer, &char_job(&text, scratch.path(), 3));
    assert_eq!(result.unwrap_err(), TrainError::Failed("loss became NaN at epoch 2, batch 2; try a lower learning rate".into()));
}

#[test]
fn a_resumed_char_lstm_run_matches_the_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let text = small_text(dir.path());
    let whole_dir = tempfile::tempdir().unwrap();
    let (whole, whole_events) = char_run(&CandleTrainer::cpu(), &char_job(&text, whole_dir.path(), 3));
    let whole = whole.unwrap();

    let scratch = tempfile::tempdir().unwrap();
    let job = char_job(&text, scratch.path(), 3);
    let interrupted = CandleTrainer { stop_after_batches: Some(7), ..CandleTrainer::cpu() };
    let (partial, _) = char_run(&interrupted, &job);
    assert_eq!(partial.unwrap().epochs_completed, 1);
    let (resumed, second) = char_run(&CandleTrainer::cpu(), &job);
    let resumed = resumed.unwrap();
    assert_eq!(second.resumed_from, Some(1));
    assert_eq!(second.metrics.iter().map(|m| m.epoch).collect::<Vec<_>>(), [1, 2, 3], "the checkpoint's epoch replayed, then the rest");
    assert_eq!(tensor_bytes(&resumed.file), tensor_bytes(&whole.file));
    assert_eq!(second.metrics.last().map(|m| m.loss), whole_events.metrics.last().map(|m| m.loss));
}

#[test]
fn every_classifier_epoch_is_checkpointed_before_it_is_reported() {
    let scratch = tempfile::tempdir().unwrap();
    let job =
        job(Path::new(IRIS), DatasetFormat::Csv, config(TrainingRequest { epochs: Some(3), ..TrainingRequest::default() }), scratch.path());
    let mut events = Recorded { scratch: Some(scratch.path().to_path_buf()), ..Recorded::default() };
    CandleTrainer::cpu().train(&job, &mut events, &RunControl::default()).unwrap();
    assert_eq!(events.checkpointed, [Some(1), Some(2), Some(3)]);
}

#[test]
fn a_checkpoint_of_another_model_is_ignored_and_the_run_starts_over() {
    let scratch = tempfile::tempdir().unwrap();
    let small = config(TrainingRequest { epochs: Some(1), hidden_sizes: Some(vec![8]), ..TrainingRequest::default() });
    CandleTrainer::cpu()
        .train(&job(Path::new(IRIS), DatasetFormat::Csv, small, scratch.path()), &mut Recorded::default(), &RunControl::default())
        .unwrap();
    let wider = config(TrainingRequest { epochs: Some(1), hidden_sizes: Some(vec![16]), ..TrainingRequest::default() });
    let mut events = Recorded::default();
    let model = CandleTrainer::cpu()
        .train(&job(Path::new(IRIS), DatasetFormat::Csv, wider, scratch.path()), &mut events, &RunControl::default())
        .unwrap();
    assert_eq!((events.resumed_from, model.epochs_completed), (None, 1));
    assert!(events.logs.iter().any(|(level, m)| *level == LogLevel::Warning && m.contains("another model shape")), "{:?}", events.logs);
}

const DIGITS_PNG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/datasets/digits_png.zip");

/// The digits CNN for `epochs` on `device`.
fn digits_on(device: &str, epochs: i64) -> (Result<TrainedModel, TrainError>, Recorded) {
    let req = TrainingRequest {
        model_architecture: Some("cnn".into()),
        dataset_name: Some("data".into()),
        epochs: Some(epochs),
        batch_size: Some(32),
        learning_rate: Some(0.001),
        device: Some(device.into()),
        ..TrainingRequest::default()
    };
    let scratch = tempfile::tempdir().unwrap();
    let mut events = Recorded::default();
    let job = job(Path::new(DIGITS_PNG), DatasetFormat::Images, TrainingConfig::validate(&req).unwrap(), scratch.path());
    (CandleTrainer::new().train(&job, &mut events, &RunControl::default()), events)
}

#[test]
fn a_short_image_run_on_cuda_learns_as_on_the_cpu() {
    if crate::cuda_tests::gpu("a short image run on cuda:0").is_none() {
        return;
    }
    let (gpu, gpu_events) = digits_on("cuda:0", 3);
    let gpu = gpu.unwrap();
    assert!(gpu.metadata.to_string().contains("cuda:0"), "the model records its device: {}", gpu.metadata);
    let (cpu, cpu_events) = digits_on("cpu", 3);
    cpu.unwrap();
    let accuracy = |e: &Recorded| e.metrics.last().and_then(|m| m.val_accuracy).unwrap();
    let (on_gpu, on_cpu) = (accuracy(&gpu_events), accuracy(&cpu_events));
    println!("digits CNN, 3 epochs: val_accuracy {on_gpu:.3} on cuda:0, {on_cpu:.3} on the CPU");
    assert!(on_gpu >= 0.8 && (on_gpu - on_cpu).abs() < 0.05, "{on_gpu} on cuda:0 vs {on_cpu} on the CPU");
}

#[test]
fn a_device_this_machine_lacks_is_refused_saying_what_it_has() {
    let why = CandleTrainer::new().check_device(config::Device::Cuda(3)).unwrap_err();
    assert!(why.starts_with("device cuda:3 is not available: "), "{why}");
    assert!(why.contains("usable GPU") || why.ends_with("this server trains on the CPU"), "{why}");
    assert_eq!(CandleTrainer::new().check_device(config::Device::Auto), Ok(()));
}
