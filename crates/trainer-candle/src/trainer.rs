//! [`CandleTrainer`], the trainer: it checks the dataset against the architecture, picks the
//! device and runs the architecture's [`Task`] through [`crate::epoch_loop`]. The classifiers'
//! task (the MLP on tables, the [`crate::vision`] models on images) lives here; the
//! char-LSTM's in [`crate::char_run`].

use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use trainyard_domain::{
    config,
    metrics::LogLevel,
    ports::{MemoryEstimate, RunControl, TrainError, TrainedModel, Trainer, TrainingEvents, TrainingJob},
    registry::{DatasetFormat, DatasetRecord, ModelRecord},
    Architecture, TrainingConfig,
};

use crate::{
    data,
    data::{Prepared, Split},
    epoch_loop::{backend, count_correct, device_name, named_vars, Faults, Session, Step, Task},
    gpu, images, loss,
    mlp::MlpShape,
    model_meta::{ImageModel, Model, ModelMeta, Normalisation, TableModel},
    net::{Net, NetSpec},
    rng::{self, SplitMix64, Stream},
    table::{Delimiter, TableError},
    vision::{self, ImageShape, Mode},
};

/// Rows evaluated at once when computing validation metrics.
const EVAL_CHUNK: usize = 4096;

/// Trains every [`Architecture`] with candle: the MLP on tables (CSV, TSV, NumPy), the image
/// models on image archives, IDX, CIFAR-10 and image-shaped NumPy arrays, the char-LSTM on text.
///
/// Runs are reproducible: on the CPU the same config, seed and data give bit-identical
/// metrics and weights. The model file holds the parameters with PyTorch's names (see
/// [`crate::mlp`] and [`crate::vision`]) and, in the safetensors `__metadata__` header, the
/// model's description ([`crate::model_meta`]): architecture, input shape (and feature names for
/// tables), class names, the standardisation mean and std, hyperparameters, final metrics and
/// the session id.
#[derive(Debug, Clone)]
pub struct CandleTrainer {
    /// Forces the CPU even when the `cuda` feature is on.
    cpu_only: bool,
    /// Failure injection for tests: request a stop once this many batches have run.
    #[cfg(test)]
    pub(crate) stop_after_batches: Option<u64>,
    /// Failure injection for tests: make this batch's loss NaN (counted from 0).
    #[cfg(test)]
    pub(crate) nan_at_batch: Option<u64>,
}

impl Default for CandleTrainer {
    fn default() -> Self {
        Self::new()
    }
}

impl CandleTrainer {
    /// A trainer on the best device: the first usable CUDA GPU ([`gpu::cuda`]), else the CPU.
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

    /// Where a session's `device` setting trains: `auto` resolved to the first usable GPU
    /// ([`gpu::cuda`]) or the CPU.
    fn resolve_device(&self, wanted: config::Device) -> config::Device {
        match wanted {
            config::Device::Auto if self.cpu_only => config::Device::Cpu,
            config::Device::Auto => gpu::cuda().auto(),
            other => other,
        }
    }

    /// The candle device for a session's `device` setting. `auto` falls back to the CPU, with a
    /// warning, when its GPU cannot be opened (a CUDA library missing); `cuda:N` fails.
    fn device(&self, wanted: config::Device, events: &mut dyn TrainingEvents) -> Result<Device, TrainError> {
        match (wanted, self.resolve_device(wanted)) {
            (_, config::Device::Cpu | config::Device::Auto) => Ok(Device::Cpu),
            (config::Device::Auto, config::Device::Cuda(n)) => Ok(gpu::open(n).unwrap_or_else(|why| {
                events.log(LogLevel::Warning, format!("{why}; training on the CPU instead"));
                Device::Cpu
            })),
            (_, config::Device::Cuda(n)) => gpu::open(n).map_err(TrainError::Data),
        }
    }

    /// A run of `job` on `device` through the epoch loop.
    fn session<'a>(
        &self,
        job: &'a TrainingJob,
        device: &'a Device,
        events: &'a mut dyn TrainingEvents,
        control: &'a RunControl,
    ) -> Session<'a> {
        #[cfg(test)]
        let faults = Faults { stop_after_batches: self.stop_after_batches, nan_at_batch: self.nan_at_batch };
        #[cfg(not(test))]
        let faults = Faults::default();
        Session { job, device, events, control, faults }
    }

    /// [`Trainer::train`] on the calling thread.
    fn train_here(&self, job: &TrainingJob, events: &mut dyn TrainingEvents, control: &RunControl) -> Result<TrainedModel, TrainError> {
        let cfg = &job.config;
        let format = job.dataset.info.format;
        if cfg.model_architecture == Architecture::CharLstm {
            if let Some(ds) = std::iter::once(&job.dataset).chain(&job.extra_datasets).find(|d| d.info.format != DatasetFormat::Text) {
                return Err(TrainError::Data(format!(
                    "architecture '{}' trains on text datasets; dataset '{}' is {}",
                    cfg.model_architecture, ds.name, ds.info.format
                )));
            }
            let device = self.device(cfg.device, events)?;
            return self
                .session(job, &device, events, control)
                .train(|checkpoint, events| crate::char_run::build(job, &device, checkpoint, events));
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
        let device = self.device(cfg.device, events)?;
        self.session(job, &device, events, control).train(|_, events| Classifier::build(job, &prepared, &device, events))
    }
}

impl Trainer for CandleTrainer {
    /// Trains on a worker of rayon's pool: the kernels' and the matrix products' parallel loops
    /// then start from inside the pool, where a loop started from another thread is handed to
    /// the pool and waited for (a small CNN, whose step is many short operations, trains about
    /// 1.5 times as fast).
    fn train(&self, job: &TrainingJob, events: &mut dyn TrainingEvents, control: &RunControl) -> Result<TrainedModel, TrainError> {
        rayon::scope(|_| self.train_here(job, events, control))
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
        gpu::cuda().check(device)
    }
}

/// The network a config and prepared data call for.
fn net_spec(cfg: &TrainingConfig, data: &Prepared) -> NetSpec {
    let classes = data.classes.len();
    match (cfg.model_architecture, data.sample_shape.as_slice()) {
        (arch, &[channels, height, width]) if arch != Architecture::Mlp => {
            NetSpec::Image { arch, input: ImageShape { channels, height, width }, classes }
        }
        _ => NetSpec::Mlp(MlpShape {
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

/// A classifier (the MLP or an image model) as the epoch loop trains it.
struct Classifier<'a> {
    cfg: &'a TrainingConfig,
    data: &'a Prepared,
    spec: NetSpec,
    varmap: VarMap,
    net: Net,
    x_train: Tensor,
    x_val: Option<Tensor>,
    /// Training row indices, shuffled per epoch.
    rows: Vec<u32>,
    batch_seed: u64,
    batch_size: usize,
    /// The epoch's dropout masks.
    masks: SplitMix64,
    labels: Vec<u32>,
}

impl<'a> Classifier<'a> {
    fn build(job: &'a TrainingJob, data: &'a Prepared, device: &Device, events: &mut dyn TrainingEvents) -> Result<Self, TrainError> {
        let cfg = &job.config;
        let spec = net_spec(cfg, data);
        log_start(job, data, &spec, device, events);
        let varmap = VarMap::new();
        let net = spec.build(&varmap, cfg.dropout, &mut SplitMix64::stream(cfg.seed, Stream::Init), device).map_err(backend)?;
        let samples = |split: &Split| {
            let shape: Vec<usize> = std::iter::once(split.len()).chain(data.sample_shape.iter().copied()).collect();
            Tensor::from_slice(&split.x, shape, device).map_err(backend)
        };
        let x_train = samples(&data.train)?;
        let x_val = match &data.val {
            Some(v) => Some(samples(v)?),
            None => None,
        };
        let rows: Vec<u32> = (0..u32::try_from(data.train.len()).map_err(|_| TrainError::Data("too many rows".into()))?).collect();
        let batch_size = usize::try_from(cfg.batch_size).unwrap_or(1).max(1);
        Ok(Self {
            cfg,
            data,
            spec,
            varmap,
            net,
            x_train,
            x_val,
            rows,
            batch_seed: SplitMix64::stream(cfg.seed, Stream::Batches).next_u64(),
            batch_size,
            masks: SplitMix64::stream(cfg.seed, Stream::Dropout),
            labels: Vec::with_capacity(batch_size),
        })
    }
}

impl Task for Classifier<'_> {
    type Batch = Vec<u32>;

    fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    fn trained_vars(&self) -> Vec<(String, Var)> {
        named_vars(&self.varmap).into_iter().filter(|(name, _)| !vision::is_buffer(name)).collect()
    }

    fn resumes_from(&self, model: &Model) -> bool {
        model.net_spec().as_ref() == Some(&self.spec)
    }

    fn batches(&mut self, epoch: u32) -> Vec<Vec<u32>> {
        // Dropout masks per epoch, so that a resumed run draws what the uninterrupted one would.
        self.masks = SplitMix64::stream(self.cfg.seed ^ u64::from(epoch), Stream::Dropout);
        let order = rng::epoch_order(&self.rows, self.batch_seed, epoch);
        epoch_batches(&order, self.batch_size, self.cfg.model_architecture.uses_batch_norm()).into_iter().map(<[u32]>::to_vec).collect()
    }

    fn step(&mut self, batch: &Vec<u32>) -> candle_core::Result<Step> {
        self.labels.clear();
        self.labels.extend(batch.iter().map(|&i| self.data.train.y[i as usize]));
        let index = Tensor::from_slice(batch, batch.len(), self.x_train.device())?;
        let xb = self.x_train.index_select(&index, 0)?;
        let logits = self.net.forward(&xb, Mode::Train(&mut self.masks))?;
        let loss = loss::train(self.cfg.loss_function, self.cfg.label_smoothing, &logits, &self.labels)?;
        let correct = count_correct(&logits, &self.labels)?;
        Ok(Step { loss, correct, targets: batch.len(), samples: batch.len() })
    }

    fn evaluate(&self) -> candle_core::Result<Option<(f64, f64)>> {
        match (&self.x_val, &self.data.val) {
            (Some(x), Some(v)) => evaluate(&self.net, x, &v.y, self.cfg).map(Some),
            _ => Ok(None),
        }
    }

    fn describe(&self) -> ModelMeta {
        let data = self.data;
        let normalisation = Normalisation { mean: data.mean.clone(), std: data.std.clone() };
        let model = match &self.spec {
            NetSpec::Mlp(shape) => Model::Table(TableModel {
                shape: shape.clone(),
                classes: data.classes.clone(),
                feature_names: data.feature_names.clone(),
                label_column: Some(data.label_column.clone()),
                normalisation,
            }),
            NetSpec::Image { arch, input, .. } => Model::Image(ImageModel {
                arch: *arch,
                input: *input,
                classes: data.classes.clone(),
                normalisation,
                adaptation: vision::adaptation(*arch, *input),
            }),
        };
        ModelMeta {
            model,
            parameters: self.spec.parameter_shapes().unwrap_or_default().into_iter().collect(),
            parameter_count: Some(self.spec.parameter_count()),
            run: None,
        }
    }
}

fn log_start(job: &TrainingJob, data: &Prepared, spec: &NetSpec, device: &Device, events: &mut dyn TrainingEvents) {
    let cfg = &job.config;
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
    events.log(LogLevel::Info, format!("dataset '{}': {what}", job.dataset.name));
    let val_len = data.val.as_ref().map_or(0, Split::len);
    events.log(
        LogLevel::Info,
        format!(
            "split: {} training / {val_len} validation samples (validation_split {}, seed {})",
            data.train.len(),
            cfg.validation_split,
            cfg.seed
        ),
    );
    if data.imputed > 0 {
        events.log(LogLevel::Warning, format!("replaced {} missing feature values with the training mean", data.imputed));
    }
    events.log(
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
            device_name(device)
        ),
    );
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
