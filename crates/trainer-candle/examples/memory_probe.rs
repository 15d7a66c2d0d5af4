//! Trains one architecture in this process for a number of steps and prints one JSON line about
//! its memory: the peak resident set (`VmHWM`), the resident set once warmed up and at the end,
//! the growth in between, and what [`Trainer::estimate_memory`] predicted for the run; and about
//! its speed: the samples per second of the training steps after warm-up.
//!
//! ```text
//! cargo run --release -p trainyard-trainer-candle --example memory_probe -- --arch vgg16
//!     [--data digits|cifar|images] [--size 32] [--batch 32] [--steps 300] [--warmup 20]
//!     [--samples 2000] [--speed]
//! ```
//!
//! The data are real files read the way the server reads them, described by the dataset
//! inspector as an upload would be: `mlp` trains on the bundled digits table (`digits.csv`,
//! 64 features), `custom_ai_model` on the bundled Tempest text, the image models on the bundled
//! 8x8x1 digits (`digits.npz`), with `--data cifar` on a CIFAR-10 batch file of `--samples`
//! random 32x32x3 images, or with `--data images` on an `.npz` of `--samples` random
//! `--size x --size x 3` images, both written to a temporary directory.
//!
//! Warm-up ends at the first step after `--warmup` steps that follows a finished epoch (so the
//! first validation pass and checkpoint are behind it); `--steps` more steps are then trained
//! and the run is stopped. The growth is `(end - warm) / warm` of the resident set.
//!
//! With `--speed` (for `cargo xtask bench vision`) warm-up ends after `--warmup` steps without
//! waiting for an epoch, and `samples_per_s` counts only the time between consecutive steps of
//! one epoch after warm-up (an epoch's evaluation and checkpoint are left out).

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    time::Instant,
};

use serde_json::json;
use time::OffsetDateTime;
use trainyard_domain::{
    metrics::{EpochMetrics, LogLevel},
    ports::{DatasetInspector, RunControl, TrainError, TrainedModel, Trainer, TrainingEvents, TrainingJob},
    registry::DatasetRecord,
    DatasetName, SessionId, TrainingConfig, TrainingRequest,
};
use trainyard_trainer_candle::{CandleTrainer, FileInspector};

type Error = Box<dyn std::error::Error>;

const DATASETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/datasets");

struct Args {
    arch: String,
    data: String,
    batch: i64,
    steps: u64,
    warmup: u64,
    samples: usize,
    size: usize,
    speed: bool,
}

fn parse_args() -> Result<Args, Error> {
    let mut args =
        Args { arch: String::new(), data: String::new(), batch: 32, steps: 300, warmup: 20, samples: 2000, size: 32, speed: false };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--arch" => args.arch = value("--arch")?,
            "--data" => args.data = value("--data")?,
            "--batch" => args.batch = value("--batch")?.parse()?,
            "--steps" => args.steps = value("--steps")?.parse()?,
            "--warmup" => args.warmup = value("--warmup")?.parse()?,
            "--samples" => args.samples = value("--samples")?.parse()?,
            "--size" => args.size = value("--size")?.parse()?,
            "--speed" => args.speed = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if args.arch.is_empty() {
        return Err("--arch is required".into());
    }
    if args.data.is_empty() {
        args.data = match args.arch.as_str() {
            "mlp" => "table",
            "custom_ai_model" => "text",
            _ => "digits",
        }
        .into();
    }
    Ok(args)
}

/// `VmRSS` and `VmHWM` of this process, in bytes.
fn rss() -> (u64, u64) {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Fills `bytes` with uniform random values (xorshift64 from `state`).
fn random_bytes(state: &mut u64, bytes: &mut [u8]) {
    for byte in bytes {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *byte = state.to_le_bytes()[0];
    }
}

/// A CIFAR-10 batch of `samples` random images (uniform pixels, labels cycling 0..9).
fn write_cifar(dir: &Path, samples: usize) -> Result<PathBuf, Error> {
    let path = dir.join("data_batch_1.bin");
    let mut out = std::io::BufWriter::new(fs::File::create(&path)?);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut record = vec![0u8; 1 + 3 * 32 * 32];
    for i in 0..samples {
        record[0] = u8::try_from(i % 10)?;
        random_bytes(&mut state, &mut record[1..]);
        out.write_all(&record)?;
    }
    out.flush()?;
    Ok(path)
}

/// One `.npy` array of `u8` values: the version 1.0 header padded to 64 bytes, then the data.
fn npy(shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
    let dims = if dims.len() == 1 { format!("{},", dims[0]) } else { dims.join(", ") };
    let mut header = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': ({dims}), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&u16::try_from(header.len()).unwrap_or(u16::MAX).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// An `.npz` (as `numpy.savez` writes it) of `samples` random `size x size x 3` images `x`
/// and labels `y` cycling 0..9.
fn write_images(dir: &Path, samples: usize, size: usize) -> Result<PathBuf, Error> {
    let path = dir.join("images.npz");
    let mut x = vec![0u8; samples * size * size * 3];
    random_bytes(&mut 0x9E37_79B9_7F4A_7C15u64, &mut x);
    let y: Vec<u8> = (0..samples).map(|i| u8::try_from(i % 10)).collect::<Result<_, _>>()?;
    let mut zip = zip::ZipWriter::new(fs::File::create(&path)?);
    let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored).large_file(true);
    zip.start_file("x.npy", stored)?;
    zip.write_all(&npy(&[samples, size, size, 3], &x))?;
    zip.start_file("y.npy", stored)?;
    zip.write_all(&npy(&[samples], &y))?;
    zip.finish()?;
    Ok(path)
}

/// Counts steps, notes the resident set at warm-up and at the end, times the steps after
/// warm-up, and stops the run.
struct Probe {
    stop: RunControl,
    warmup: u64,
    steps: u64,
    /// Warm-up ends without waiting for a finished epoch.
    speed: bool,
    done: u64,
    epochs: u32,
    warm: Option<(u64, u64)>,
    end: Option<(u64, u64)>,
    /// When the last step finished, unless an epoch has finished since.
    last: Option<Instant>,
    /// Steps timed after warm-up, and their seconds.
    timed: (u64, f64),
}

impl TrainingEvents for Probe {
    fn epoch_finished(&mut self, _: EpochMetrics) {
        self.epochs += 1;
        self.last = None;
    }

    fn log(&mut self, level: LogLevel, message: String) {
        if level != LogLevel::Info {
            eprintln!("{level:?}: {message}");
        }
    }

    fn resumed(&mut self, _: u32) {}

    fn snapshot(&mut self, _: u64, _: Result<TrainedModel, TrainError>) {}

    fn batch_finished(&mut self) {
        self.done += 1;
        let now = Instant::now();
        if let (Some(last), Some(_), None) = (self.last, self.warm, self.end) {
            self.timed.0 += 1;
            self.timed.1 += (now - last).as_secs_f64();
        }
        self.last = Some(now);
        match self.warm {
            None if self.done >= self.warmup && (self.epochs >= 1 || self.speed) => self.warm = Some((self.done, rss().0)),
            Some((at, _)) if self.done - at >= self.steps && self.end.is_none() => {
                self.end = Some((self.done, rss().0));
                self.stop.request_stop();
            }
            _ => {}
        }
    }
}

fn main() -> Result<(), Error> {
    // As the run process does (`trainyard run-session`).
    trainyard_trainer_candle::train_like_a_run_process()?;
    let args = parse_args()?;
    let tmp = tempfile::tempdir()?;
    let (path, file_name) = match args.data.as_str() {
        "table" => (PathBuf::from(DATASETS).join("digits.csv"), "digits.csv"),
        "text" => (PathBuf::from(DATASETS).join("tempest.txt"), "tempest.txt"),
        "digits" => (PathBuf::from(DATASETS).join("digits.npz"), "digits.npz"),
        "cifar" => (write_cifar(tmp.path(), args.samples)?, "data_batch_1.bin"),
        "images" => (write_images(tmp.path(), args.samples, args.size)?, "images.npz"),
        other => return Err(format!("unknown --data {other} (table, text, digits, cifar or images)").into()),
    };
    let info = FileInspector.inspect(&path, Some(file_name))?;
    let input = info.dimensions.clone().unwrap_or_default();
    let dataset = DatasetRecord {
        name: DatasetName::new("probe")?,
        size_bytes: fs::metadata(&path)?.len(),
        file_path: path,
        info,
        created_at: OffsetDateTime::now_utc(),
        content_hash: None,
    };
    let config = TrainingConfig::validate(&TrainingRequest {
        model_architecture: Some(args.arch.clone()),
        dataset_name: Some("probe".into()),
        batch_size: Some(args.batch),
        epochs: Some(1000),
        ..TrainingRequest::default()
    })
    .map_err(|e| format!("{e:?}"))?;
    let trainer = CandleTrainer::cpu();
    let estimate = trainer.estimate_memory(&config, std::slice::from_ref(&dataset))?;
    let job = TrainingJob {
        session_id: SessionId::generate(),
        config,
        dataset,
        extra_datasets: Vec::new(),
        base_model: None,
        scratch_dir: tmp.path().join("scratch"),
        learning_rate: None,
    };
    fs::create_dir_all(&job.scratch_dir)?;
    let stop = RunControl::default();
    let mut probe = Probe {
        stop: stop.clone(),
        warmup: args.warmup,
        steps: args.steps,
        speed: args.speed,
        done: 0,
        epochs: 0,
        warm: None,
        end: None,
        last: None,
        timed: (0, 0.0),
    };
    let started = Instant::now();
    trainer.train(&job, &mut probe, &stop)?;
    let seconds = started.elapsed().as_secs_f64();
    let (_, peak) = rss();
    let mb = |b: u64| b / (1 << 20);
    let (warm_step, warm) = probe.warm.unwrap_or((probe.done, 0));
    let (end_step, end) = probe.end.unwrap_or((probe.done, rss().0));
    #[allow(clippy::cast_precision_loss)]
    let growth = if warm > 0 { (end as f64 - warm as f64) / warm as f64 * 100.0 } else { 0.0 };
    #[allow(clippy::cast_precision_loss)]
    let samples_per_s = if probe.timed.1 > 0.0 { (probe.timed.0 * u64::try_from(args.batch)?) as f64 / probe.timed.1 } else { 0.0 };
    let line = json!({
        "architecture": args.arch,
        "data": args.data,
        "input": input,
        "batch": args.batch,
        "steps": probe.done,
        "warm_step": warm_step,
        "end_step": end_step,
        "completed": probe.end.is_some(),
        "peak_rss_mb": mb(peak),
        "warm_rss_mb": mb(warm),
        "end_rss_mb": mb(end),
        "growth_percent": (growth * 100.0).round() / 100.0,
        "estimate_host_mb": estimate.host_mb,
        "estimate_gpu_mb": estimate.gpu_mb,
        "seconds": (seconds * 10.0).round() / 10.0,
        "timed_steps": probe.timed.0,
        "samples_per_s": (samples_per_s * 100.0).round() / 100.0,
    });
    println!("{line}");
    Ok(())
}
