//! The owner's character-level LSTM (`custom_ai_model`) as the epoch loop trains it: text
//! corpora, fine-tuning from a registry model (extending the vocabulary when the new text has
//! new characters), and resuming from a checkpoint with the vocabulary it was written with.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use trainyard_domain::{
    config::CharLstmOptions,
    metrics::LogLevel,
    ports::{TrainError, TrainingEvents, TrainingJob},
    registry::DatasetRecord,
    LossFunction,
};

use crate::{
    epoch_loop::{backend, count_correct, device_name, Step, Task},
    loss,
    lstm::{self, CharLstm, CharLstmConfig},
    model_meta::{CharModel, Model, ModelMeta},
    resume,
    text::{self, Corpus, Vocabulary},
    weights,
};

/// Windows evaluated at once during validation.
const EVAL_BATCH: usize = 64;

/// Whether a model of `sizes` has the session's layers (the sequence length may differ).
fn same_layers(sizes: CharLstmOptions, session: CharLstmOptions) -> bool {
    (sizes.embedding_dim, sizes.hidden_size, sizes.num_layers) == (session.embedding_dim, session.hidden_size, session.num_layers)
}

/// A char-LSTM session.
pub(crate) struct CharTask {
    opts: CharLstmOptions,
    seed: u64,
    batch_size: usize,
    loss: LossFunction,
    label_smoothing: f64,
    vocab: Vocabulary,
    corpus: Corpus,
    train_starts: Vec<usize>,
    val_starts: Vec<usize>,
    lstm_cfg: CharLstmConfig,
    varmap: VarMap,
    model: CharLstm,
    device: Device,
}

/// Reads the texts and builds the model: with the vocabulary of `checkpoint` when the run
/// resumes from it, else from the base model's weights and vocabulary when fine-tuning, else
/// fresh.
pub(crate) fn build(
    job: &TrainingJob,
    device: &Device,
    checkpoint: Option<&Model>,
    events: &mut dyn TrainingEvents,
) -> Result<CharTask, TrainError> {
    let cfg = &job.config;
    let opts = cfg.char_lstm.unwrap_or_default();
    let seq = opts.sequence_length as usize;
    let datasets: Vec<&DatasetRecord> = std::iter::once(&job.dataset).chain(&job.extra_datasets).collect();
    let mut texts = Vec::with_capacity(datasets.len());
    for ds in &datasets {
        texts.push(text::read_text(&ds.file_path).map_err(|m| TrainError::Data(format!("dataset '{}': {m}", ds.name)))?);
    }

    let resumed_vocab = match checkpoint {
        Some(Model::Char(m)) if same_layers(m.sizes, opts) => Some(m.vocabulary.clone()),
        _ => None,
    };
    let base = match (&resumed_vocab, &job.base_model) {
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

    let from_model = resumed_vocab.is_some() || base.is_some();
    let mut vocab = match (resumed_vocab, &base) {
        (Some(v), _) => v,
        (None, Some(b)) => b.vocab.clone(),
        (None, None) => Vocabulary::from_texts(texts.iter().map(String::as_str)),
    };
    let base_vocab_len = vocab.len();
    let added = vocab.extend_with(texts.iter().map(String::as_str));
    if !added.is_empty() && from_model {
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

    let lstm_cfg = CharLstmConfig::from_options(opts, vocab.len());
    let varmap = VarMap::new();
    let model = CharLstm::new(lstm_cfg, VarBuilder::from_varmap(&varmap, DType::F32, device), cfg.seed).map_err(backend)?;
    if let Some(base) = &base {
        let grown = resume::assign(&varmap, &base.tensors).map_err(TrainError::Data)?;
        if grown > 0 {
            events.log(LogLevel::Info, format!("{grown} parameters grew to the larger vocabulary"));
        }
    }

    events.log(
        LogLevel::Info,
        format!(
            "char-LSTM on {}: {} training and {} validation characters, vocabulary {}, {} sequences of {seq} per epoch, {} parameters, device {}{}",
            datasets.iter().map(|d| format!("'{}'", d.name)).collect::<Vec<_>>().join(" + "),
            corpus.train.len(),
            corpus.val.len(),
            vocab.len(),
            train_starts.len(),
            lstm::parameter_count(lstm_cfg),
            device_name(device),
            job.base_model.as_ref().map(|m| format!(", fine-tuning '{}'", m.name)).unwrap_or_default()
        ),
    );
    Ok(CharTask {
        opts,
        seed: cfg.seed,
        batch_size: (cfg.batch_size as usize).max(1),
        loss: cfg.loss_function,
        label_smoothing: cfg.label_smoothing,
        vocab,
        corpus,
        train_starts,
        val_starts,
        lstm_cfg,
        varmap,
        model,
        device: device.clone(),
    })
}

impl CharTask {
    fn seq(&self) -> usize {
        self.opts.sequence_length as usize
    }
}

impl Task for CharTask {
    /// Window starts in the training text.
    type Batch = Vec<usize>;

    fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    fn resumes_from(&self, model: &Model) -> bool {
        matches!(model, Model::Char(m) if same_layers(m.sizes, self.opts))
    }

    fn batches(&mut self, epoch: u32) -> Vec<Vec<usize>> {
        text::epoch_order(&self.train_starts, self.seed, epoch).chunks(self.batch_size).map(<[usize]>::to_vec).collect()
    }

    fn step(&mut self, batch: &Vec<usize>) -> candle_core::Result<Step> {
        let seq = self.seq();
        let (x, y) = text::batch(&self.corpus.train, batch, seq);
        let xs = Tensor::from_vec(x, (batch.len(), seq), &self.device)?;
        let logits = self.model.forward(&xs)?.reshape((batch.len() * seq, self.vocab.len()))?;
        let loss = loss::train(self.loss, self.label_smoothing, &logits, &y)?;
        let correct = count_correct(&logits, &y)?;
        Ok(Step { loss, correct, targets: y.len(), samples: batch.len() })
    }

    fn evaluate(&self) -> candle_core::Result<Option<(f64, f64)>> {
        if self.val_starts.is_empty() {
            return Ok(None);
        }
        let seq = self.seq();
        let (mut loss_sum, mut correct, mut total) = (0.0f64, 0usize, 0usize);
        for chunk in self.val_starts.chunks(EVAL_BATCH) {
            let (x, y) = text::batch(&self.corpus.val, chunk, seq);
            let xs = Tensor::from_vec(x, (chunk.len(), seq), &self.device)?;
            let logits = self.model.forward(&xs)?.detach().reshape((chunk.len() * seq, self.vocab.len()))?;
            #[allow(clippy::cast_precision_loss)]
            let weight = y.len() as f64;
            loss_sum += f64::from(loss::compute(self.loss, &logits, &y)?.to_scalar::<f32>()?) * weight;
            correct += count_correct(&logits, &y)?;
            total += y.len();
        }
        #[allow(clippy::cast_precision_loss)]
        let n = total.max(1) as f64;
        #[allow(clippy::cast_precision_loss)]
        Ok(Some((loss_sum / n, correct as f64 / n)))
    }

    fn describe(&self) -> ModelMeta {
        ModelMeta {
            model: Model::Char(CharModel { sizes: self.opts, vocabulary: self.vocab.clone() }),
            parameters: lstm::parameter_shapes(self.lstm_cfg).into_iter().collect(),
            parameter_count: Some(lstm::parameter_count(self.lstm_cfg)),
            run: None,
        }
    }

    fn finish(&mut self) {
        // The fused layers keep scratch buffers between steps; this run needs them no more.
        lstm::release_buffers();
    }
}
