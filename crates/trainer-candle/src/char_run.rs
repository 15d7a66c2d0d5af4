//! Training the owner's character-level LSTM (`custom_ai_model`): text corpora, fine-tuning
//! from a registry model (extending the vocabulary when the new text has new characters),
//! a checkpoint of weights and optimizer state after every epoch, and resuming from it.

use std::{path::Path, time::Instant};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde_json::{json, Value};
use time::OffsetDateTime;
use trainyard_domain::{
    config::CharLstmOptions,
    metrics::{EpochMetrics, LogLevel},
    ports::{StopSignal, TrainError, TrainedModel, TrainingEvents, TrainingJob},
    registry::{DatasetRecord, ModelFormat},
};

use crate::{
    checkpoint, loss,
    lstm::{CharLstm, CharLstmConfig},
    optim::TrainOptimizer,
    resume::{self, Checkpoint},
    text::{self, Vocabulary},
    trainer::{backend, count_correct, device_name, epoch_line, named_vars},
    weights, MODEL_FILE_NAME,
};

/// Windows evaluated at once during validation.
const EVAL_BATCH: usize = 64;

/// The model's configuration from a session's options and a vocabulary size.
pub(crate) fn lstm_config(opts: CharLstmOptions, vocab: usize) -> CharLstmConfig {
    CharLstmConfig {
        vocab,
        embedding_dim: opts.embedding_dim as usize,
        hidden: opts.hidden_size as usize,
        num_layers: opts.num_layers as usize,
    }
}

/// The safetensors metadata that makes a file a loadable char-LSTM.
pub(crate) fn model_metadata(opts: CharLstmOptions, vocab: &Vocabulary) -> Value {
    json!({
        "architecture": "custom_ai_model",
        "vocab_size": vocab.len(),
        "embedding_dim": opts.embedding_dim,
        "hidden_dim": opts.hidden_size,
        "num_layers": opts.num_layers,
        "sequence_length": opts.sequence_length,
        "vocabulary": vocab.to_json(),
    })
}

/// The run's checkpoint, if it was written for this session's layer sizes.
fn read_checkpoint(dir: &Path, device: &Device, opts: CharLstmOptions) -> Result<Option<(Checkpoint, Vocabulary)>, String> {
    let Some(ckpt) = Checkpoint::read(dir, device)? else { return Ok(None) };
    let same_shape = ["embedding_dim", "hidden_dim", "num_layers"]
        .iter()
        .zip([opts.embedding_dim, opts.hidden_size, opts.num_layers])
        .all(|(k, v)| ckpt.recorded(k, &Value::from(v)));
    if !same_shape {
        return Err("the checkpoint was written for other layer sizes".into());
    }
    let vocab = Vocabulary::from_json(ckpt.metadata.get("vocabulary").unwrap_or(&Value::Null))?;
    Ok(Some((ckpt, vocab)))
}

/// Trains a char-LSTM session to completion, stop or failure.
pub(crate) fn train(
    job: &TrainingJob,
    device: &Device,
    events: &mut dyn TrainingEvents,
    stop: &StopSignal,
) -> Result<TrainedModel, TrainError> {
    let cfg = &job.config;
    let opts = cfg.char_lstm.unwrap_or_default();
    let seq = opts.sequence_length as usize;
    let datasets: Vec<&DatasetRecord> = std::iter::once(&job.dataset).chain(&job.extra_datasets).collect();
    let mut texts = Vec::with_capacity(datasets.len());
    for ds in &datasets {
        texts.push(text::read_text(&ds.file_path).map_err(|m| TrainError::Data(format!("dataset '{}': {m}", ds.name)))?);
    }

    let resume = match read_checkpoint(&job.scratch_dir, device, opts) {
        Ok(r) => r,
        Err(why) => {
            events.log(LogLevel::Warning, format!("ignoring the checkpoint ({why}); starting over"));
            None
        }
    };
    let base = match (&resume, &job.base_model) {
        (None, Some(model)) => {
            let base = weights::load_char_model(&model.file_path, model.format, device)
                .map_err(|e| TrainError::Data(format!("base model '{}': {e}", model.name)))?;
            if let Some(diff) = weights::size_difference(base.opts, opts) {
                return Err(TrainError::Data(format!("base model '{}' does not fit this session: {diff}", model.name)));
            }
            Some(base)
        }
        _ => None,
    };

    let mut vocab = match (&resume, &base) {
        (Some((_, v)), _) => v.clone(),
        (None, Some(b)) => b.vocab.clone(),
        (None, None) => Vocabulary::from_texts(texts.iter().map(String::as_str)),
    };
    let base_vocab_len = vocab.len();
    let added = vocab.extend_with(texts.iter().map(String::as_str));
    if !added.is_empty() && (resume.is_some() || base.is_some()) {
        events.log(
            LogLevel::Info,
            format!(
                "extending the vocabulary from {base_vocab_len} to {} characters with {:?}; new embedding and output rows start fresh",
                vocab.len(),
                added.iter().collect::<String>()
            ),
        );
    }
    if vocab.len() < 2 {
        return Err(TrainError::Data("the text has fewer than 2 distinct characters".into()));
    }
    let corpus = text::corpus(&texts, &vocab, cfg.validation_split);
    let train_starts = text::window_starts(corpus.train.len(), seq);
    if train_starts.is_empty() {
        return Err(TrainError::Data(format!(
            "the training text has {} characters, fewer than one sequence of {} plus one",
            corpus.train.len(),
            seq
        )));
    }
    let val_starts = text::window_starts(corpus.val.len(), seq);

    let lstm_cfg = lstm_config(opts, vocab.len());
    let varmap = VarMap::new();
    let model = CharLstm::new(lstm_cfg, VarBuilder::from_varmap(&varmap, DType::F32, device), cfg.seed).map_err(backend)?;
    let source = resume.as_ref().map(|(c, _)| &c.tensors).or(base.as_ref().map(|b| &b.tensors));
    if let Some(tensors) = source {
        let grown = resume::assign(&varmap, tensors).map_err(TrainError::Data)?;
        if grown > 0 {
            events.log(LogLevel::Info, format!("{grown} parameters grew to the larger vocabulary"));
        }
    }
    let mut optimizer = TrainOptimizer::new(cfg.optimizer, named_vars(&varmap), cfg.learning_rate, cfg.momentum);
    let start_epoch = match &resume {
        Some((ckpt, _)) => ckpt.restore(&mut optimizer, events)?,
        None => 0,
    };

    events.log(
        LogLevel::Info,
        format!(
            "char-LSTM on {}: {} training and {} validation characters, vocabulary {}, {} sequences of {seq} per epoch, {} parameters, device {}{}",
            datasets.iter().map(|d| format!("'{}'", d.name)).collect::<Vec<_>>().join(" + "),
            corpus.train.len(),
            corpus.val.len(),
            vocab.len(),
            train_starts.len(),
            crate::lstm::parameter_count(lstm_cfg),
            device_name(device),
            job.base_model.as_ref().map(|m| format!(", fine-tuning '{}'", m.name)).unwrap_or_default()
        ),
    );

    let batch_size = cfg.batch_size as usize;
    let mut last: Option<EpochMetrics> = None;
    let mut completed = start_epoch;
    let mut stopped = false;
    'epochs: for epoch in start_epoch + 1..=cfg.epochs {
        let started = Instant::now();
        let order = text::epoch_order(&train_starts, cfg.seed, epoch);
        let (mut loss_sum, mut correct, mut batches, mut positions) = (0.0f64, 0usize, 0u32, 0usize);
        for (b, chunk) in order.chunks(batch_size).enumerate() {
            if stop.is_requested() {
                events.log(LogLevel::Info, format!("stop requested in epoch {epoch} before batch {}; saving the current weights", b + 1));
                stopped = true;
                break 'epochs;
            }
            let (x, y) = text::batch(&corpus.train, chunk, seq);
            let xs = Tensor::from_vec(x, (chunk.len(), seq), device).map_err(backend)?;
            let logits = model.forward(&xs).map_err(backend)?.reshape((chunk.len() * seq, vocab.len())).map_err(backend)?;
            let batch_loss = loss::compute(cfg.loss_function, &logits, &y).map_err(backend)?;
            let value = batch_loss.to_scalar::<f32>().map_err(backend)?;
            if !value.is_finite() {
                let what = if value.is_nan() { "NaN" } else { "infinite" };
                return Err(TrainError::Failed(format!("loss became {what} at epoch {epoch}, batch {}; try a lower learning rate", b + 1)));
            }
            correct += count_correct(&logits, &y).map_err(backend)?;
            positions += y.len();
            optimizer.backward_step(&batch_loss).map_err(backend)?;
            loss_sum += f64::from(value);
            batches += 1;
            events.batch_finished();
        }
        let train_seconds = started.elapsed().as_secs_f64();
        let (val_loss, val_accuracy) = if val_starts.is_empty() {
            (None, None)
        } else {
            let (l, a) = evaluate(&model, &corpus.val, &val_starts, seq, vocab.len(), cfg.loss_function, device).map_err(backend)?;
            if !l.is_finite() {
                return Err(TrainError::Failed(format!("validation loss became {l} at epoch {epoch}; try a lower learning rate")));
            }
            (Some(l), Some(a))
        };
        #[allow(clippy::cast_precision_loss)]
        let metrics = EpochMetrics {
            epoch,
            loss: loss_sum / f64::from(batches.max(1)),
            accuracy: correct as f64 / positions.max(1) as f64,
            val_loss,
            val_accuracy,
            samples_per_second: order.len() as f64 / train_seconds.max(1e-9),
            epoch_seconds: started.elapsed().as_secs_f64(),
            timestamp: OffsetDateTime::now_utc(),
        };
        // The checkpoint first, holding this epoch's metrics too: once an epoch is reported
        // finished it can be resumed from, and a crash before the report replays it.
        resume::write(&job.scratch_dir, &varmap, &optimizer, model_metadata(opts, &vocab), &metrics)?;
        events.log(LogLevel::Info, epoch_line(&metrics, cfg.epochs));
        events.epoch_finished(metrics.clone());
        last = Some(metrics);
        completed = epoch;
    }

    let mut metadata = model_metadata(opts, &vocab);
    if let Some(obj) = metadata.as_object_mut() {
        obj.insert("datasets".into(), datasets.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().into());
        obj.insert("hyperparameters".into(), serde_json::to_value(cfg).unwrap_or(Value::Null));
        obj.insert(
            "final_metrics".into(),
            last.as_ref().map_or(
                Value::Null,
                |m| json!({"loss": m.loss, "accuracy": m.accuracy, "val_loss": m.val_loss, "val_accuracy": m.val_accuracy}),
            ),
        );
        obj.insert("session_id".into(), job.session_id.as_str().into());
        obj.insert("device".into(), device_name(device).into());
        if let Some(base) = &job.base_model {
            obj.insert("base_model".into(), base.name.as_str().into());
        }
    }
    let file = job.scratch_dir.join(MODEL_FILE_NAME);
    checkpoint::save(&varmap, checkpoint::header_metadata(&metadata), &file).map_err(|e| TrainError::Io(e.to_string()))?;
    // The fused layers keep scratch buffers between steps; this run needs them no more.
    crate::lstm::release_buffers();
    Ok(TrainedModel { file, format: ModelFormat::Safetensors, metadata, epochs_completed: completed, stopped })
}

fn evaluate(
    model: &CharLstm,
    tokens: &[u32],
    starts: &[usize],
    seq: usize,
    vocab: usize,
    kind: trainyard_domain::LossFunction,
    device: &Device,
) -> candle_core::Result<(f64, f64)> {
    let (mut loss_sum, mut correct, mut total) = (0.0f64, 0usize, 0usize);
    for chunk in starts.chunks(EVAL_BATCH) {
        let (x, y) = text::batch(tokens, chunk, seq);
        let xs = Tensor::from_vec(x, (chunk.len(), seq), device)?;
        let logits = model.forward(&xs)?.detach().reshape((chunk.len() * seq, vocab))?;
        #[allow(clippy::cast_precision_loss)]
        let weight = y.len() as f64;
        loss_sum += f64::from(loss::compute(kind, &logits, &y)?.to_scalar::<f32>()?) * weight;
        correct += count_correct(&logits, &y)?;
        total += y.len();
    }
    #[allow(clippy::cast_precision_loss)]
    let n = total.max(1) as f64;
    #[allow(clippy::cast_precision_loss)]
    Ok((loss_sum / n, correct as f64 / n))
}
