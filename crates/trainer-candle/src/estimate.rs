//! Peak-memory estimates of a session before it is admitted: what a run of
//! [`CandleTrainer`](crate::CandleTrainer) holds at its peak, from the config and what the
//! inspector recorded about the datasets, without building the model.
//!
//! The model of the peak, in bytes (all numbers `f32`, 4 bytes):
//!
//! - **Runtime**: the process before any data, about [`RUNTIME_MB`] (code, the allocator's
//!   arenas of the rayon threads, gemm's packing buffers), measured as the resident set of the
//!   smallest runs (`mlp` on the digits table peaks at 9 MB, `cnn` on the 8x8 digits at 15 MB).
//! - **Parameters** `P`, exact: the models' parameter shapes ([`vision::parameter_shapes`],
//!   [`MlpShape::parameter_count`], [`lstm::parameter_count`]), the same lists the trainer logs
//!   and saves. Weights, gradients and the optimizer's state take `(2 + s) * 4P` bytes, `s` being
//!   the optimizer's state tensors per parameter (Adam and AdamW 2, SGD 1 with momentum and 0
//!   without, RMSprop 1 and 2 with momentum). On top come two copies of the largest parameter:
//!   the backward pass sums its gradient into a fresh tensor, and a checkpoint serialises one
//!   tensor at a time.
//! - **Kept kernels** (CPU): the convolutions keep, from one call to the next, the swapped
//!   kernel of a "same" convolution's input gradient and Winograd's transformed kernels (16/9
//!   the weight's size): [`KEPT_KERNEL_COPIES`] times the largest convolution weight.
//! - **Activations**: what one training batch keeps alive for its backward pass, `batch *
//!   activation_floats * 4` from a walk over each image model's layers
//!   ([`vision::activation_floats`]) or the LSTM's per-character state, times
//!   [`BACKWARD_FACTOR`] for the gradients flowing back while those are still held (measured:
//!   see the README's memory table). Evaluation runs in chunks that hold at most 64 MB, less
//!   than a training batch except for small ones, so the larger of the two counts.
//! - **Data**: the decoded samples (`samples * numbers per sample * 4`) three times: as
//!   decoded, split and standardised, and as the tensors the batches are cut from. Text is held
//!   as characters, ids and windows (a few bytes per character).
//!
//! On the CPU everything is host memory, and [`ALLOCATOR_FACTOR`] covers the allocator's
//! retained free blocks. On a CUDA device `gpu_mb` holds the parameters, gradients, optimizer
//! state and activations, plus the CUDA context; `host_mb` holds the runtime, the data and the
//! copy of weights and optimizer state that a checkpoint takes off the device.

use trainyard_domain::{
    config::{self, Device},
    ports::MemoryEstimate,
    registry::DatasetRecord,
    Architecture, Optimizer, TrainingConfig,
};

use crate::{
    data::MAX_CLASSES,
    lstm,
    mlp::MlpShape,
    vision::{self, ImageShape},
};

const MB: f64 = 1024.0 * 1024.0;
/// Bytes per number.
const F32: f64 = 4.0;
/// The process's resident set before any data or model, in MB.
pub(crate) const RUNTIME_MB: f64 = 10.0;
/// Activations kept for the backward pass, times this, cover the gradients computed from them.
pub(crate) const BACKWARD_FACTOR: f64 = 2.0;
/// The allocator's free blocks it keeps, as a share of what the run allocates.
pub(crate) const ALLOCATOR_FACTOR: f64 = 1.15;
/// Copies of the largest convolution weight the CPU convolutions keep between calls: the
/// swapped kernel (one) and Winograd's transformed kernels (16/9).
pub(crate) const KEPT_KERNEL_COPIES: f64 = 1.0 + 16.0 / 9.0;
/// Copies of the decoded data a run holds at once.
const DATA_COPIES: f64 = 3.0;
/// Bytes per character of text: the string, its ids and the window starts.
const TEXT_BYTES_PER_CHAR: f64 = 16.0;
/// The CUDA context and candle's kernels on the device, in MB.
const CUDA_CONTEXT_MB: f64 = 400.0;
/// Evaluation's retained activations, times this, cover its transient buffers.
const EVAL_FACTOR: f64 = 1.5;
/// Evaluation's activations at once (the chunks of `vision::Chunked`), in bytes.
const EVAL_BYTES: f64 = 64.0 * MB;

/// What a session trains, as far as memory goes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Footprint {
    /// Trainable numbers.
    pub parameters: usize,
    /// Numbers in the largest parameter.
    pub largest: usize,
    /// Numbers in the largest convolution weight (a 4-D parameter), 0 without convolutions.
    pub largest_kernel: usize,
    /// Numbers one sample keeps for the backward pass.
    pub activations_per_sample: f64,
    /// Samples per training batch.
    pub batch: usize,
    /// Samples an evaluation pass runs through.
    pub eval_samples: f64,
    /// Bytes of the decoded data.
    pub data_bytes: f64,
}

/// Optimizer state tensors per parameter.
pub(crate) fn state_tensors(kind: Optimizer, momentum: f64) -> usize {
    match kind {
        Optimizer::Adam | Optimizer::AdamW => 2,
        Optimizer::Sgd => usize::from(momentum > 0.0),
        Optimizer::RmsProp => 1 + usize::from(momentum > 0.0),
    }
}

/// What the inspector says about a dataset's samples.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Samples {
    /// `HxWxC` images.
    Image(ImageShape),
    /// Rows of this many features.
    Table(usize),
    /// Text over a vocabulary of this many characters.
    Text(usize),
}

/// `8x8x1` (height x width x channels), `13` (features), `vocab=65`.
fn parse_dimensions(dimensions: &str) -> Option<Samples> {
    if let Some(vocab) = dimensions.strip_prefix("vocab=") {
        return vocab.parse().ok().map(Samples::Text);
    }
    let parts: Vec<usize> = dimensions.split('x').map(str::parse).collect::<Result<_, _>>().ok()?;
    match parts.as_slice() {
        [features] => Some(Samples::Table(*features)),
        [height, width, channels] => Some(Samples::Image(ImageShape { channels: *channels, height: *height, width: *width })),
        _ => Some(Samples::Table(parts.iter().product())),
    }
}

/// The classes the inspector counted: the `classes` list, the `class_counts` keys, or
/// `distinct_labels`; at most [`MAX_CLASSES`] (the most a classifier gets).
fn class_count(dataset: &DatasetRecord) -> Option<usize> {
    let stats = &dataset.info.statistics;
    let counted = stats
        .get("classes")
        .and_then(|c| c.as_array().map(Vec::len))
        .or_else(|| stats.get("class_counts").and_then(|c| c.as_object().map(serde_json::Map::len)))
        .or_else(|| stats.get("distinct_labels").and_then(serde_json::Value::as_u64).and_then(|n| usize::try_from(n).ok()))?;
    Some(counted.clamp(1, MAX_CLASSES))
}

#[allow(clippy::cast_precision_loss)]
fn as_f64(n: usize) -> f64 {
    n as f64
}

/// The footprint of `cfg` on `datasets` when it trains on `device` (`auto` already resolved).
pub(crate) fn footprint(cfg: &TrainingConfig, datasets: &[DatasetRecord], device: Device) -> Result<Footprint, String> {
    let first = datasets.first().ok_or("no dataset to estimate for")?;
    let describe = |d: &DatasetRecord| {
        d.info
            .dimensions
            .as_deref()
            .and_then(parse_dimensions)
            .ok_or_else(|| format!("dataset '{}' records no usable dimensions ({:?})", d.name, d.info.dimensions))
    };
    let samples = |d: &DatasetRecord| {
        d.info.sample_count.and_then(|n| usize::try_from(n).ok()).ok_or_else(|| format!("dataset '{}' records no sample count", d.name))
    };
    let batch = usize::try_from(cfg.batch_size).unwrap_or(1).max(1);
    let count = samples(first)?;
    // Unknown classes are taken at the most a classifier may have: over-estimating is safe.
    let eval_samples = (as_f64(count) * cfg.validation_split).ceil();
    let classes = class_count(first).unwrap_or_else(|| MAX_CLASSES.min(count.max(1)));
    match (cfg.model_architecture, describe(first)?) {
        (Architecture::CharLstm, _) => {
            let mut vocab = 0;
            let mut characters = 0;
            for d in datasets {
                match describe(d)? {
                    Samples::Text(v) => vocab = vocab.max(v),
                    other => return Err(format!("dataset '{}' is not text ({other:?})", d.name)),
                }
                characters += samples(d)?;
            }
            let opts = cfg.char_lstm.unwrap_or_default();
            let lstm_cfg = lstm::CharLstmConfig::from_options(opts, vocab.max(2));
            let shapes = lstm::parameter_shapes(lstm_cfg);
            let (e, h, v) = (as_f64(lstm_cfg.embedding_dim), as_f64(lstm_cfg.hidden), as_f64(lstm_cfg.vocab));
            // Per character: the embedding, per layer 40 numbers per unit (the four gates, cell
            // and hidden states, their gradients and the fused layers' kept buffers, and what the
            // allocator keeps of them: measured, the owner's model at batch 16 settles at a peak
            // of 274-282 MB after 650-1250 steps), and the logits with their softmax and gradient.
            let per_char = e + as_f64(lstm_cfg.num_layers) * 40.0 * h + 3.0 * v;
            Ok(Footprint {
                parameters: lstm::parameter_count(lstm_cfg),
                largest: shapes.iter().map(|(_, s)| s.iter().product::<usize>()).max().unwrap_or(0),
                largest_kernel: 0,
                activations_per_sample: per_char * as_f64(opts.sequence_length as usize),
                batch,
                eval_samples,
                data_bytes: as_f64(characters) * TEXT_BYTES_PER_CHAR / DATA_COPIES,
            })
        }
        (Architecture::Mlp, shape) => {
            let inputs = match shape {
                Samples::Table(n) => n,
                Samples::Image(i) => i.channels * i.height * i.width,
                Samples::Text(_) => return Err(format!("dataset '{}' is text, not a table", first.name)),
            };
            let hidden: Vec<usize> =
                cfg.hidden_sizes.clone().unwrap_or_else(|| config::DEFAULT_HIDDEN_SIZES.to_vec()).into_iter().map(|w| w as usize).collect();
            let mlp = MlpShape { inputs, hidden: hidden.clone(), classes, dropout: cfg.dropout > 0.0 };
            let largest = mlp.widths().windows(2).map(|w| w[0] * w[1]).max().unwrap_or(0);
            // Per sample: the input, and per layer the product, bias, activation and dropout.
            let per_sample = as_f64(inputs) + 4.0 * as_f64(hidden.iter().sum::<usize>() + classes);
            Ok(Footprint {
                parameters: mlp.parameter_count(),
                largest,
                largest_kernel: 0,
                activations_per_sample: per_sample,
                batch,
                eval_samples,
                data_bytes: as_f64(count) * as_f64(inputs) * F32,
            })
        }
        (arch, Samples::Image(input)) => {
            let shapes = vision::parameter_shapes(arch, input, classes).map_err(|e| e.to_string())?;
            let trained = shapes.iter().filter(|(name, _)| !vision::is_buffer(name));
            let numbers = trained.clone().map(|(_, s)| s.iter().product::<usize>());
            Ok(Footprint {
                parameters: numbers.clone().sum(),
                largest: numbers.max().unwrap_or(0),
                largest_kernel: trained.filter(|(_, s)| s.len() == 4).map(|(_, s)| s.iter().product::<usize>()).max().unwrap_or(0),
                activations_per_sample: as_f64(vision::activation_floats(arch, input, classes, !matches!(device, Device::Cuda(_)))),
                batch,
                eval_samples,
                data_bytes: as_f64(count) * as_f64(input.channels * input.height * input.width) * F32,
            })
        }
        (arch, other) => Err(format!("architecture '{arch}' trains on images; dataset '{}' holds {other:?}", first.name)),
    }
}

/// The session's expected peak memory on `device` (`auto` already resolved).
pub(crate) fn estimate(cfg: &TrainingConfig, datasets: &[DatasetRecord], device: Device) -> Result<MemoryEstimate, String> {
    let f = footprint(cfg, datasets, device)?;
    let p = as_f64(f.parameters) * F32;
    let state = as_f64(state_tensors(cfg.optimizer, cfg.momentum));
    let model = (2.0 + state) * p + 2.0 * as_f64(f.largest) * F32;
    let train_activations = as_f64(f.batch) * f.activations_per_sample * F32 * BACKWARD_FACTOR;
    let eval_activations = EVAL_BYTES.min(f.eval_samples * f.activations_per_sample * F32) * EVAL_FACTOR;
    let activations = train_activations.max(eval_activations);
    let data = f.data_bytes * DATA_COPIES;
    let runtime = RUNTIME_MB * MB;
    let mb = |bytes: f64| {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let whole = (bytes / MB).ceil() as u64;
        whole
    };
    Ok(match device {
        Device::Cuda(_) => MemoryEstimate {
            device,
            host_mb: mb((runtime + data + (1.0 + state) * p) * ALLOCATOR_FACTOR),
            gpu_mb: mb((model + activations) * ALLOCATOR_FACTOR + CUDA_CONTEXT_MB * MB),
        },
        Device::Cpu | Device::Auto => {
            let kept = KEPT_KERNEL_COPIES * as_f64(f.largest_kernel) * F32;
            MemoryEstimate { device, host_mb: mb(runtime + (data + model + kept + activations) * ALLOCATOR_FACTOR), gpu_mb: 0 }
        }
    })
}

#[cfg(test)]
mod tests;
