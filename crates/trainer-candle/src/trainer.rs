//! [`CandleTrainer`], the trainer: classifiers (the MLP on tables, the [`crate::vision`]
//! models on images) trained in-process with candle, reporting every epoch, checkpointing so
//! an interrupted run resumes, stopping between batches on request, and saving the weights as
//! safetensors; the char-LSTM runs in [`crate::char_run`].

use std::{path::Path, time::Instant};

use candle_core::{Device, DeviceLocation, Tensor};
use candle_nn::VarMap;
use serde_json::{json, Value};
use time::OffsetDateTime;
use trainyard_domain::{
    config,
    metrics::{EpochMetrics, LogLevel},
    ports::{MemoryEstimate, StopSignal, TrainError, TrainedModel, Trainer, TrainingEvents, TrainingJob},
    registry::{DatasetFormat, DatasetRecord, ModelFormat, ModelRecord},
    Architecture, TrainingConfig,
};

use crate::{
    checkpoint, data,
    data::{Prepared, Split},
    images, loss,
    mlp::{Mlp, MlpShape},
    optim::TrainOptimizer,
    resume::{self, Checkpoint},
    rng::{self, SplitMix64, Stream},
    table::{Delimiter, TableError},
    vision::{self, ImageClassifier, ImageShape, Mode},
};

/// The file a run writes into its scratch directory.
pub const MODEL_FILE_NAME: &str = "model.safetensors";

/// Rows evaluated at once when computing validation metrics.
const EVAL_CHUNK: usize = 4096;

/// Trains every [`Architecture`] with candle: the MLP on tables (CSV, TSV, NumPy), the image
/// models on image archives, IDX, CIFAR-10 and image-shaped NumPy arrays, the char-LSTM on text.
///
/// Runs are reproducible: on the CPU the same config, seed and data give bit-identical
/// metrics and weights. The model file holds the parameters with PyTorch's names (see
/// [`crate::mlp`] and [`crate::vision`]) and, in the safetensors `__metadata__` header,
/// everything needed to use it: architecture, input shape (and feature names for tables),
/// class names, the standardisation mean and std, hyperparameters, final metrics and the
/// session id.
#[derive(Debug, Clone)]
pub struct CandleTrainer {
    /// Forces the CPU even when the `cuda` feature is on.
    cpu_only: bool,
    /// Failure injection for tests: request a stop once this many batches have run.
    #[cfg(test)]
    stop_after_batches: Option<u64>,
    /// Failure injection for tests: make this batch's loss NaN (counted from 0).
    #[cfg(test)]
    nan_at_batch: Option<u64>,
}

impl Default for CandleTrainer {
    fn default() -> Self {
        Self::new()
    }
}

impl CandleTrainer {
    /// A trainer on the best device: the first CUDA GPU when built with the `cuda` feature and
    /// one is present, else the CPU.
    #[must_use]
    pub fn new() -> Self {
        Self {
            cpu_only: false,
            #[cfg(test)]
            stop_after_batches: None,
            #[cfg(test)]
            nan_at_batch: None,
        }
    }

    /// A trainer that always runs on the CPU, where runs are bit-for-bit reproducible.
    #[must_use]
    pub fn cpu() -> Self {
        let mut trainer = Self::new();
        trainer.cpu_only = true;
        trainer
    }

    /// Where a session's `device` setting trains: `auto` resolved to the GPU or the CPU.
    fn resolve_device(&self, wanted: config::Device) -> config::Device {
        match wanted {
            config::Device::Auto if self.cpu_only || !cfg!(feature = "cuda") => config::Device::Cpu,
            config::Device::Auto => match Device::cuda_if_available(0) {
                Ok(d) if d.is_cuda() => config::Device::Cuda(0),
                _ => config::Device::Cpu,
            },
            other => other,
        }
    }

    /// The candle device for a session's `device` setting.
    fn device(&self, wanted: config::Device) -> Result<Device, TrainError> {
        match wanted {
            config::Device::Cpu => Ok(Device::Cpu),
            config::Device::Auto if self.cpu_only || !cfg!(feature = "cuda") => Ok(Device::Cpu),
            config::Device::Auto => Device::cuda_if_available(0).map_err(backend),
            config::Device::Cuda(n) => {
                self.check_device(wanted).map_err(TrainError::Data)?;
                Device::new_cuda(n as usize).map_err(backend)
            }
        }
    }
}

/// A var map's variables with their names, in name order (so optimizer state lines up).
pub(crate) fn named_vars(varmap: &VarMap) -> Vec<(String, candle_core::Var)> {
    let data = varmap.data().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut vars: Vec<_> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

pub(crate) fn backend(e: candle_core::Error) -> TrainError {
    TrainError::Failed(format!("training backend error: {e}"))
}

pub(crate) fn device_name(device: &Device) -> String {
    match device.location() {
        DeviceLocation::Cpu => "cpu".to_owned(),
        DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

impl Trainer for CandleTrainer {
    fn train(&self, job: &TrainingJob, events: &mut dyn TrainingEvents, stop: &StopSignal) -> Result<TrainedModel, TrainError> {
        let cfg = &job.config;
        let format = job.dataset.info.format;
        if cfg.model_architecture == Architecture::CharLstm {
            if let Some(ds) = std::iter::once(&job.dataset).chain(&job.extra_datasets).find(|d| d.info.format != DatasetFormat::Text) {
                return Err(TrainError::Data(format!(
                    "architecture '{}' trains on text datasets; dataset '{}' is {}",
                    cfg.model_architecture, ds.name, ds.info.format
                )));
            }
            let device = self.device(cfg.device)?;
            return crate::char_run::train(job, &device, events, stop);
        }
        if job.dataset.info.data_kind() != Some(cfg.model_architecture.data_kind()) {
            return Err(TrainError::Data(format!(
                "architecture '{}' trains on {} datasets; dataset '{}' is {} ({})",
                cfg.model_architecture,
                cfg.model_architecture.data_kind(),
                job.dataset.name,
                format,
                job.dataset.info.dimensions.as_deref().unwrap_or("no dimensions"),
            )));
        }
        let in_dataset = |m: String| TrainError::Data(format!("dataset '{}': {m}", job.dataset.name));
        let path = &job.dataset.file_path;
        let prepared = match format {
            DatasetFormat::Csv | DatasetFormat::Tsv => {
                let delimiter = if format == DatasetFormat::Csv { Delimiter::Comma } else { Delimiter::Tab };
                let table = data::read_table(path, delimiter).map_err(|e| match e {
                    TableError::Invalid(m) => in_dataset(m),
                    TableError::Io(m) => TrainError::Io(m),
                })?;
                data::prepare(table, cfg.validation_split, cfg.seed)
            }
            _ if cfg.model_architecture == Architecture::Mlp => {
                let table = images::load_numpy_table(path, format).map_err(in_dataset)?;
                data::prepare(data::table_from_numpy(table), cfg.validation_split, cfg.seed)
            }
            _ => data::prepare_images(images::load_images(path, format).map_err(in_dataset)?, cfg.validation_split, cfg.seed),
        }
        .map_err(in_dataset)?;
        let device = self.device(cfg.device)?;
        Run {
            #[cfg(test)]
            trainer: self,
            job,
            cfg,
            data: &prepared,
            device: &device,
            events,
            stop,
        }
        .go()
    }

    fn check_base_model(&self, cfg: &TrainingConfig, model: &ModelRecord) -> Result<(), String> {
        if cfg.model_architecture != Architecture::CharLstm {
            return Err(format!("fine-tuning from a base model is available for custom_ai_model, not '{}'", cfg.model_architecture));
        }
        let base = crate::weights::load_char_model(&model.file_path, model.format, &Device::Cpu)?;
        match crate::weights::size_difference(base.opts, cfg.char_lstm.unwrap_or_default()) {
            Some(diff) => Err(diff),
            None => Ok(()),
        }
    }

    fn estimate_memory(&self, cfg: &TrainingConfig, datasets: &[DatasetRecord]) -> Result<MemoryEstimate, String> {
        crate::estimate::estimate(cfg, datasets, self.resolve_device(cfg.device))
    }

    fn check_device(&self, device: config::Device) -> Result<(), String> {
        match device {
            config::Device::Cuda(n) if !cfg!(feature = "cuda") => Err(format!(
                "device cuda:{n} needs a build with the `cuda` feature (cargo build --release --features cuda); this build trains on the CPU"
            )),
            config::Device::Cuda(n) => Device::new_cuda(n as usize).map(|_| ()).map_err(|e| format!("device cuda:{n} is not usable: {e}")),
            config::Device::Auto | config::Device::Cpu => Ok(()),
        }
    }
}

/// A classifier being trained.
pub(crate) enum Net {
    Mlp(Mlp),
    Image(Box<dyn ImageClassifier>),
}

impl Net {
    /// Logits for a batch.
    pub(crate) fn forward(&self, x: &Tensor, mode: Mode<'_>) -> candle_core::Result<Tensor> {
        match self {
            Self::Mlp(m) => m.forward(x, mode),
            Self::Image(m) => m.forward(x, mode),
        }
    }
}

/// What a run builds: the architecture and the sizes its parameters follow from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum NetSpec {
    Mlp(MlpShape),
    Image { arch: Architecture, input: ImageShape, classes: usize },
}

impl NetSpec {
    /// The spec for a config and prepared data.
    fn of(cfg: &TrainingConfig, data: &Prepared) -> Self {
        let classes = data.classes.len();
        match (cfg.model_architecture, data.sample_shape.as_slice()) {
            (arch, &[channels, height, width]) if arch != Architecture::Mlp => {
                Self::Image { arch, input: ImageShape { channels, height, width }, classes }
            }
            _ => Self::Mlp(MlpShape {
                inputs: data.features(),
                hidden: cfg
                    .hidden_sizes
                    .clone()
                    .unwrap_or_else(|| config::DEFAULT_HIDDEN_SIZES.to_vec())
                    .into_iter()
                    .map(|w| w as usize)
                    .collect(),
                classes,
                dropout: cfg.dropout > 0.0,
            }),
        }
    }

    /// The spec recorded in checkpoints and model files, so a resume or a load builds the same.
    pub(crate) fn to_json(&self) -> Value {
        match self {
            Self::Mlp(s) => {
                json!({ "architecture": "mlp", "layers": s.widths(), "dropout_layers": s.dropout })
            }
            Self::Image { arch, input, classes } => {
                json!({ "architecture": arch.as_str(), "input_shape": [input.channels, input.height, input.width], "classes": classes })
            }
        }
    }

    /// Builds the network with fresh parameters in `varmap`.
    fn build(&self, varmap: &VarMap, dropout: f64, rng: &mut SplitMix64, device: &Device) -> candle_core::Result<Net> {
        Ok(match self {
            Self::Mlp(shape) => Net::Mlp(Mlp::new(varmap, shape, dropout, rng, device)?),
            Self::Image { arch, input, classes } => Net::Image(vision::build(*arch, varmap, *input, *classes, dropout, rng, device)?),
        })
    }

    /// Every parameter (and buffer) name with its shape.
    fn parameter_shapes(&self) -> candle_core::Result<Vec<(String, Vec<usize>)>> {
        match self {
            Self::Mlp(shape) => Ok(shape.parameter_shapes()),
            Self::Image { arch, input, classes } => vision::parameter_shapes(*arch, *input, *classes),
        }
    }

    /// Trainable numbers.
    fn parameter_count(&self) -> usize {
        match self {
            Self::Mlp(shape) => shape.parameter_count(),
            Self::Image { arch, input, classes } => vision::parameter_count(*arch, *input, *classes),
        }
    }

    /// `mlp 4-128-64-3` or `resnet18 on 8x8x1 images (3x3 stem ...)`.
    fn describe(&self) -> String {
        match self {
            Self::Mlp(shape) => format!("mlp {}", shape.describe()),
            Self::Image { arch, input, classes } => format!(
                "{arch} on {}x{}x{} images, {classes} classes ({})",
                input.height,
                input.width,
                input.channels,
                vision::adaptation(*arch, *input)
            ),
        }
    }
}

/// One training run's state.
struct Run<'a> {
    #[cfg(test)]
    trainer: &'a CandleTrainer,
    job: &'a TrainingJob,
    cfg: &'a TrainingConfig,
    data: &'a Prepared,
    device: &'a Device,
    events: &'a mut dyn TrainingEvents,
    stop: &'a StopSignal,
}

impl Run<'_> {
    fn log(&mut self, level: LogLevel, message: String) {
        self.events.log(level, message);
    }

    fn go(mut self) -> Result<TrainedModel, TrainError> {
        let (cfg, data) = (self.cfg, self.data);
        let spec = NetSpec::of(cfg, data);
        let val_len = data.val.as_ref().map_or(0, Split::len);
        self.log_start(&spec, val_len);

        let varmap = VarMap::new();
        let model = spec.build(&varmap, cfg.dropout, &mut SplitMix64::stream(cfg.seed, Stream::Init), self.device).map_err(backend)?;
        let trained: Vec<_> = named_vars(&varmap).into_iter().filter(|(name, _)| !vision::is_buffer(name)).collect();
        let mut optimizer = TrainOptimizer::new(cfg.optimizer, trained, cfg.learning_rate, cfg.momentum);
        let samples = |split: &Split| {
            let shape: Vec<usize> = std::iter::once(split.len()).chain(data.sample_shape.iter().copied()).collect();
            Tensor::from_slice(&split.x, shape, self.device).map_err(backend)
        };
        let x_train = samples(&data.train)?;
        let x_val = match &data.val {
            Some(v) => Some(samples(v)?),
            None => None,
        };

        let rows: Vec<u32> = (0..u32::try_from(data.train.len()).map_err(|_| TrainError::Data("too many rows".into()))?).collect();
        let batch_seed = SplitMix64::stream(cfg.seed, Stream::Batches).next_u64();
        let batch_size = usize::try_from(cfg.batch_size).unwrap_or(1).max(1);
        let mut labels = Vec::with_capacity(batch_size);
        let resumed = match Checkpoint::read(&self.job.scratch_dir, self.device) {
            Ok(Some(ckpt)) if ckpt.recorded("model", &spec.to_json()) => Some(ckpt),
            Ok(Some(_)) => {
                self.log(LogLevel::Warning, "ignoring a checkpoint written for another model shape; starting over".into());
                None
            }
            Ok(None) => None,
            Err(why) => {
                self.log(LogLevel::Warning, format!("ignoring the checkpoint ({why}); starting over"));
                None
            }
        };
        let start_epoch = match resumed {
            Some(ckpt) => {
                resume::assign(&varmap, &ckpt.tensors).map_err(TrainError::Data)?;
                ckpt.restore(&mut optimizer, self.events)?
            }
            None => 0,
        };
        let (mut completed, mut last, mut stopped, mut batches_run) = (start_epoch, None::<EpochMetrics>, false, 0u64);

        'epochs: for epoch in start_epoch + 1..=cfg.epochs {
            let started = Instant::now();
            let order = rng::epoch_order(&rows, batch_seed, epoch);
            // Dropout masks per epoch, so that a resumed run draws what the uninterrupted one would.
            let mut masks = SplitMix64::stream(cfg.seed ^ u64::from(epoch), Stream::Dropout);
            let (mut loss_sum, mut batches, mut correct) = (0.0f64, 0u32, 0usize);
            for (b, chunk) in epoch_batches(&order, batch_size, cfg.model_architecture.uses_batch_norm()).into_iter().enumerate() {
                #[cfg(test)]
                if self.trainer.stop_after_batches == Some(batches_run) {
                    self.stop.request();
                }
                if self.stop.is_requested() {
                    self.log(
                        LogLevel::Info,
                        format!(
                            "stop requested in epoch {epoch} before batch {} ({batches_run} batches run); saving the current weights",
                            b + 1
                        ),
                    );
                    stopped = true;
                    break 'epochs;
                }
                labels.clear();
                labels.extend(chunk.iter().map(|&i| data.train.y[i as usize]));
                let index = Tensor::from_slice(chunk, chunk.len(), self.device).map_err(backend)?;
                let xb = x_train.index_select(&index, 0).map_err(backend)?;
                let logits = model.forward(&xb, Mode::Train(&mut masks)).map_err(backend)?;
                let batch_loss = loss::compute(cfg.loss_function, &logits, &labels).map_err(backend)?;
                #[cfg(test)]
                let batch_loss =
                    if self.trainer.nan_at_batch == Some(batches_run) { (batch_loss * f64::NAN).map_err(backend)? } else { batch_loss };
                let value = batch_loss.to_scalar::<f32>().map_err(backend)?;
                if !value.is_finite() {
                    let what = if value.is_nan() { "NaN" } else { "infinite" };
                    return Err(TrainError::Failed(format!(
                        "loss became {what} at epoch {epoch}, batch {}; try a lower learning rate",
                        b + 1
                    )));
                }
                correct += count_correct(&logits, &labels).map_err(backend)?;
                optimizer.backward_step(&batch_loss).map_err(backend)?;
                loss_sum += f64::from(value);
                batches += 1;
                batches_run += 1;
                self.events.batch_finished();
            }
            let train_seconds = started.elapsed().as_secs_f64();
            let (val_loss, val_accuracy) = match (&x_val, &data.val) {
                (Some(x), Some(v)) => {
                    let (l, a) = evaluate(&model, x, &v.y, cfg).map_err(backend)?;
                    if !l.is_finite() {
                        return Err(TrainError::Failed(format!(
                            "validation loss became {} at epoch {epoch}; try a lower learning rate",
                            if l.is_nan() { "NaN" } else { "infinite" }
                        )));
                    }
                    (Some(l), Some(a))
                }
                _ => (None, None),
            };
            let epoch_seconds = started.elapsed().as_secs_f64();
            #[allow(clippy::cast_precision_loss)]
            let metrics = EpochMetrics {
                epoch,
                loss: loss_sum / f64::from(batches.max(1)),
                accuracy: correct as f64 / data.train.len() as f64,
                val_loss,
                val_accuracy,
                samples_per_second: data.train.len() as f64 / train_seconds.max(1e-9),
                epoch_seconds,
                timestamp: OffsetDateTime::now_utc(),
            };
            // The checkpoint first: once an epoch is reported finished it can be resumed from.
            resume::write(&self.job.scratch_dir, &varmap, &optimizer, json!({ "model": spec.to_json() }), &metrics)?;
            let line = epoch_line(&metrics, cfg.epochs);
            self.events.epoch_finished(metrics.clone());
            self.log(LogLevel::Info, line);
            last = Some(metrics);
            completed = epoch;
        }

        let metadata = self.metadata(&spec, &last, completed, stopped);
        let file = self.job.scratch_dir.join(MODEL_FILE_NAME);
        save(&varmap, &metadata, &file)?;
        Ok(TrainedModel { file, format: ModelFormat::Safetensors, metadata, epochs_completed: completed, stopped })
    }

    fn log_start(&mut self, spec: &NetSpec, val_len: usize) {
        let (cfg, data) = (self.cfg, self.data);
        let shown: Vec<&str> = data.classes.iter().take(20).map(String::as_str).collect();
        let more = if data.classes.len() > shown.len() { ", ..." } else { "" };
        let what = if data.is_image() {
            let [c, h, w] = [0, 1, 2].map(|i| data.sample_shape[i]);
            format!("{} images of {h}x{w}x{c}, {} classes [{}{more}]", data.rows, data.classes.len(), shown.join(", "))
        } else {
            format!(
                "{} rows, {} features, {} classes [{}{more}] in column '{}'",
                data.rows,
                data.features(),
                data.classes.len(),
                shown.join(", "),
                data.label_column
            )
        };
        self.log(LogLevel::Info, format!("dataset '{}': {what}", self.job.dataset.name));
        self.log(
            LogLevel::Info,
            format!(
                "split: {} training / {val_len} validation samples (validation_split {}, seed {})",
                data.train.len(),
                cfg.validation_split,
                cfg.seed
            ),
        );
        if data.imputed > 0 {
            self.log(LogLevel::Warning, format!("replaced {} missing feature values with the training mean", data.imputed));
        }
        self.log(
            LogLevel::Info,
            format!(
                "model: {}, {} parameters; dropout {}; optimizer {} (lr {}), loss {}, batch size {}, {} epochs; device {}",
                spec.describe(),
                spec.parameter_count(),
                cfg.dropout,
                cfg.optimizer,
                cfg.learning_rate,
                cfg.loss_function,
                cfg.batch_size,
                cfg.epochs,
                device_name(self.device)
            ),
        );
    }

    /// What the model file and the registry record about the run.
    fn metadata(&self, spec: &NetSpec, last: &Option<EpochMetrics>, completed: u32, stopped: bool) -> Value {
        let (cfg, data) = (self.cfg, self.data);
        let parameters: serde_json::Map<String, Value> =
            spec.parameter_shapes().unwrap_or_default().into_iter().map(|(name, shape)| (name, json!(shape))).collect();
        let final_metrics = last.as_ref().map_or(
            Value::Null,
            |m| json!({ "epoch": m.epoch, "loss": m.loss, "accuracy": m.accuracy, "val_loss": m.val_loss, "val_accuracy": m.val_accuracy }),
        );
        let mut meta = json!({
            "architecture": cfg.model_architecture.as_str(),
            "model": spec.to_json(),
            "sample_shape": data.sample_shape,
            "classes": data.classes,
            "parameters": parameters,
            "parameter_count": spec.parameter_count(),
            "hyperparameters": {
                "learning_rate": cfg.learning_rate,
                "batch_size": cfg.batch_size,
                "epochs": cfg.epochs,
                "optimizer": cfg.optimizer.as_str(),
                "loss_function": cfg.loss_function.as_str(),
                "validation_split": cfg.validation_split,
                "seed": cfg.seed,
                "dropout": cfg.dropout,
            },
            "final_metrics": final_metrics,
            "epochs_completed": completed,
            "stopped": stopped,
            "session_id": self.job.session_id.as_str(),
            "dataset": self.job.dataset.name.as_str(),
            "device": device_name(self.device),
        });
        let extra = match spec {
            NetSpec::Mlp(shape) => json!({
                "layers": shape.widths(),
                "input_features": shape.inputs,
                "feature_names": data.feature_names,
                "label_column": data.label_column,
                "feature_mean": data.mean,
                "feature_std": data.std,
            }),
            NetSpec::Image { arch, input, .. } => json!({
                "input_shape": [input.channels, input.height, input.width],
                "adaptation": vision::adaptation(*arch, *input),
                "channel_mean": data.mean,
                "channel_std": data.std,
                "pixel_scale": "pixels are divided by 255 (8-bit images) before the channel mean and std apply",
            }),
        };
        if let (Some(meta), Value::Object(extra)) = (meta.as_object_mut(), extra) {
            meta.extend(extra);
        }
        meta
    }
}

fn save(varmap: &VarMap, metadata: &Value, file: &Path) -> Result<(), TrainError> {
    checkpoint::save(varmap, checkpoint::header_metadata(metadata), file).map_err(|e| match e {
        checkpoint::SaveError::Backend(e) => backend(e),
        io @ checkpoint::SaveError::Io { .. } => TrainError::Io(io.to_string()),
    })
}

/// The epoch's batches in order. With batch norm a last batch of one sample joins the one
/// before it, since batch statistics need two samples.
fn epoch_batches(order: &[u32], size: usize, batch_norm: bool) -> Vec<&[u32]> {
    let mut out: Vec<&[u32]> = order.chunks(size).collect();
    if batch_norm && out.len() > 1 && out.last().is_some_and(|b| b.len() == 1) {
        out.pop();
        let start = order.len() - 1 - out.last().map_or(0, |b| b.len());
        out.pop();
        out.push(&order[start..]);
    }
    out
}

/// `epoch 3/10: loss 0.1234, accuracy 95.0%, val_loss 0.2345, val_accuracy 93.3%`.
pub(crate) fn epoch_line(m: &EpochMetrics, epochs: u32) -> String {
    let mut line = format!("epoch {}/{epochs}: loss {:.4}, accuracy {:.1}%", m.epoch, m.loss, m.accuracy * 100.0);
    if let (Some(l), Some(a)) = (m.val_loss, m.val_accuracy) {
        line.push_str(&format!(", val_loss {l:.4}, val_accuracy {:.1}%", a * 100.0));
    }
    line.push_str(&format!(" ({:.2}s, {:.0} samples/s)", m.epoch_seconds, m.samples_per_second));
    line
}

/// How many rows' largest logit is their label.
pub(crate) fn count_correct(logits: &Tensor, labels: &[u32]) -> candle_core::Result<usize> {
    let predicted = logits.argmax(1)?.to_vec1::<u32>()?;
    Ok(predicted.iter().zip(labels).filter(|(p, l)| p == l).count())
}

/// Mean loss and accuracy over a whole split, in chunks.
fn evaluate(model: &Net, x: &Tensor, y: &[u32], cfg: &TrainingConfig) -> candle_core::Result<(f64, f64)> {
    let (mut loss_sum, mut correct) = (0.0f64, 0usize);
    for start in (0..y.len()).step_by(EVAL_CHUNK) {
        let len = EVAL_CHUNK.min(y.len() - start);
        let logits = model.forward(&x.narrow(0, start, len)?, Mode::Eval)?.detach();
        let labels = &y[start..start + len];
        #[allow(clippy::cast_precision_loss)]
        let weight = len as f64;
        loss_sum += f64::from(loss::compute(cfg.loss_function, &logits, labels)?.to_scalar::<f32>()?) * weight;
        correct += count_correct(&logits, labels)?;
    }
    #[allow(clippy::cast_precision_loss)]
    let n = y.len().max(1) as f64;
    #[allow(clippy::cast_precision_loss)]
    Ok((loss_sum / n, correct as f64 / n))
}

#[cfg(test)]
mod tests;
