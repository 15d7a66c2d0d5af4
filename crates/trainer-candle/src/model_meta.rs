//! The description of a Trainyard model, kept in its safetensors file's `__metadata__`:
//! one typed [`ModelMeta`] with one writer ([`ModelMeta::to_header`], and
//! [`ModelMeta::to_value`] for the registry) and one reader ([`ModelMeta::from_header`]).
//!
//! The layout on disk is the one files have had since the first version, so models trained
//! by earlier versions keep loading. It is flat: each key's value is a string as it is, or
//! anything else as JSON text.
//!
//! | keys | written for |
//! |---|---|
//! | `architecture` | every model |
//! | `model` (`{architecture, layers, dropout_layers}` or `{architecture, input_shape, classes}`), `sample_shape`, `classes`, `parameters`, `parameter_count` | classifiers |
//! | `layers`, `input_features`, `feature_names`, `label_column`, `feature_mean`, `feature_std` | the MLP |
//! | `input_shape`, `adaptation`, `channel_mean`, `channel_std`, `pixel_scale` | image models |
//! | `vocab_size`, `embedding_dim`, `hidden_dim`, `num_layers`, `sequence_length`, `vocabulary` | the char-LSTM |
//! | `hyperparameters`, `final_metrics`, `epochs_completed`, `stopped`, `session_id`, `dataset`, `datasets`, `base_model`, `device`, `kept` (`{keep, epoch, metric, value, stopped_early}`) | the run that trained it |

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use trainyard_domain::{config::CharLstmOptions, metrics::EpochMetrics, Architecture, LossFunction, Optimizer, TrainingConfig};

use crate::{
    mlp::MlpShape,
    net::NetSpec,
    text::Vocabulary,
    vision::{self, ImageShape},
};

/// What image prediction does to pixels before the channel statistics apply.
const PIXEL_SCALE: &str = "pixels are divided by 255 (8-bit images) before the channel mean and std apply";

/// The top-level keys whose values are text: the reader takes them as they are, where every
/// other value is JSON text (a session id or a column name may look like a number).
const TEXT_KEYS: &[&str] =
    &["architecture", "label_column", "adaptation", "pixel_scale", "session_id", "dataset", "base_model", "device", "format"];

/// A Trainyard model's description.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ModelMeta {
    /// What it takes to rebuild and use the model.
    pub model: Model,
    /// Every parameter (and buffer) name with its shape.
    pub parameters: BTreeMap<String, Vec<usize>>,
    /// Trainable numbers.
    pub parameter_count: Option<usize>,
    /// The run that trained it; checkpoints carry none.
    pub run: Option<RunRecord>,
}

/// The model itself.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Model {
    Table(TableModel),
    Image(ImageModel),
    Char(CharModel),
}

/// An MLP on table rows.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TableModel {
    pub shape: MlpShape,
    pub classes: Vec<String>,
    /// The input columns, in the order the network takes them.
    pub feature_names: Vec<String>,
    pub label_column: Option<String>,
    /// Per feature.
    pub normalisation: Normalisation,
}

/// An image classifier.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ImageModel {
    pub arch: Architecture,
    pub input: ImageShape,
    pub classes: Vec<String>,
    /// Per channel, applied to pixels scaled to 0..=1.
    pub normalisation: Normalisation,
    /// How the architecture was adapted to the input size.
    pub adaptation: String,
}

/// The standardisation training applied, `(x - mean) / std`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Normalisation {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl Normalisation {
    /// No change, for `n` values.
    fn identity(n: usize) -> Self {
        Self { mean: vec![0.0; n], std: vec![1.0; n] }
    }
}

/// The character-level LSTM.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CharModel {
    pub sizes: CharLstmOptions,
    pub vocabulary: Vocabulary,
}

/// The run that trained a model.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RunRecord {
    pub hyperparameters: Hyperparameters,
    pub final_metrics: Option<FinalMetrics>,
    /// Absent from char-LSTM files of earlier versions.
    pub epochs_completed: Option<u32>,
    /// Absent from char-LSTM files of earlier versions.
    pub stopped: Option<bool>,
    pub session_id: String,
    /// The datasets trained on, the first one first.
    pub datasets: Vec<String>,
    /// The registry model training started from.
    pub base_model: Option<String>,
    pub device: String,
    /// Which epoch's weights the file holds, and by what they were chosen.
    pub kept: Option<Kept>,
}

/// The epoch a model file's weights come from (`keep: best` or `last`), the metric it was
/// judged by and its value there, and whether the run stopped early.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Kept {
    /// `best` or `last`.
    pub keep: String,
    pub epoch: u32,
    pub metric: String,
    pub value: Option<f64>,
    pub stopped_early: bool,
}

/// The settings a run trained with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Hyperparameters {
    pub learning_rate: f64,
    pub batch_size: u32,
    pub epochs: u32,
    pub optimizer: Optimizer,
    pub loss_function: LossFunction,
    pub validation_split: f64,
    pub seed: u64,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default)]
    pub momentum: f64,
}

impl From<&TrainingConfig> for Hyperparameters {
    fn from(cfg: &TrainingConfig) -> Self {
        Self {
            learning_rate: cfg.learning_rate,
            batch_size: cfg.batch_size,
            epochs: cfg.epochs,
            optimizer: cfg.optimizer,
            loss_function: cfg.loss_function,
            validation_split: cfg.validation_split,
            seed: cfg.seed,
            dropout: cfg.dropout,
            momentum: cfg.momentum,
        }
    }
}

/// The last finished epoch's metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct FinalMetrics {
    /// Absent from char-LSTM files of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u32>,
    pub loss: f64,
    pub accuracy: f64,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
}

impl From<&EpochMetrics> for FinalMetrics {
    fn from(m: &EpochMetrics) -> Self {
        Self { epoch: Some(m.epoch), loss: m.loss, accuracy: m.accuracy, val_loss: m.val_loss, val_accuracy: m.val_accuracy }
    }
}

impl Model {
    pub(crate) fn architecture(&self) -> Architecture {
        match self {
            Self::Table(_) => Architecture::Mlp,
            Self::Image(m) => m.arch,
            Self::Char(_) => Architecture::CharLstm,
        }
    }

    /// The network a classifier is built from; `None` for the char-LSTM.
    pub(crate) fn net_spec(&self) -> Option<NetSpec> {
        match self {
            Self::Table(m) => Some(NetSpec::Mlp(m.shape.clone())),
            Self::Image(m) => Some(NetSpec::Image { arch: m.arch, input: m.input, classes: m.classes.len() }),
            Self::Char(_) => None,
        }
    }
}

impl ModelMeta {
    /// The description as the registry keeps it: the header's layout with values as JSON.
    pub(crate) fn to_value(&self) -> Value {
        serde_json::to_value(Wire::from(self)).unwrap_or(Value::Null)
    }

    /// The safetensors `__metadata__` map: strings as they are, anything else as JSON text,
    /// and `format: pt`, which `safetensors.torch` writes and loaders such as transformers
    /// look for.
    pub(crate) fn to_header(&self) -> HashMap<String, String> {
        let Value::Object(object) = self.to_value() else { return HashMap::new() };
        let mut out: HashMap<String, String> = object
            .into_iter()
            .map(|(k, v)| {
                let text = match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, text)
            })
            .collect();
        out.entry("format".into()).or_insert_with(|| "pt".into());
        out
    }

    /// Reads the description back from a `__metadata__` map (other keys are ignored).
    ///
    /// # Errors
    /// A message saying what the map lacks to describe a Trainyard model.
    pub(crate) fn from_header(header: &HashMap<String, String>) -> Result<Self, String> {
        let object: serde_json::Map<String, Value> = header
            .iter()
            .map(|(k, v)| {
                let value = if TEXT_KEYS.contains(&k.as_str()) {
                    Value::String(v.clone())
                } else {
                    serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.clone()))
                };
                (k.clone(), value)
            })
            .collect();
        let wire: Wire = serde_json::from_value(Value::Object(object)).map_err(|e| format!("its description is malformed: {e}"))?;
        Self::try_from(wire)
    }
}

/// The layout on disk, every key optional.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Wire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    architecture: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    model: Option<NetWire>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sample_shape: Option<Vec<usize>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    classes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parameters: Option<BTreeMap<String, Vec<usize>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parameter_count: Option<usize>,
    #[serde(flatten)]
    table: TableWire,
    #[serde(flatten)]
    image: ImageWire,
    #[serde(flatten)]
    char: CharWire,
    #[serde(flatten)]
    run: RunWire,
}

/// A classifier's `model` key: what [`NetSpec`] holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct NetWire {
    architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    layers: Option<Vec<usize>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dropout_layers: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    input_shape: Option<[usize; 3]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    classes: Option<usize>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TableWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    layers: Option<Vec<usize>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    input_features: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    feature_names: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label_column: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    feature_mean: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    feature_std: Option<Vec<f64>>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ImageWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    input_shape: Option<[usize; 3]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    adaptation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    channel_mean: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    channel_std: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pixel_scale: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CharWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vocab_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    embedding_dim: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hidden_dim: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    num_layers: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sequence_length: Option<u32>,
    /// One-character strings, in index order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vocabulary: Option<Value>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RunWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hyperparameters: Option<Hyperparameters>,
    /// Written as `null` by a run that finished no epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    final_metrics: Option<Option<FinalMetrics>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    epochs_completed: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stopped: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    session_id: Option<String>,
    /// The first dataset (what classifier files of earlier versions name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dataset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    datasets: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    base_model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kept: Option<Kept>,
}

impl From<&ModelMeta> for Wire {
    fn from(meta: &ModelMeta) -> Self {
        let mut wire = Self { architecture: Some(meta.model.architecture().as_str().to_owned()), ..Self::default() };
        match &meta.model {
            Model::Table(m) => {
                wire.model = Some(NetWire {
                    architecture: Architecture::Mlp.as_str().to_owned(),
                    layers: Some(m.shape.widths()),
                    dropout_layers: Some(m.shape.dropout),
                    ..NetWire::default()
                });
                wire.sample_shape = Some(vec![m.shape.inputs]);
                wire.classes = Some(m.classes.clone());
                wire.table = TableWire {
                    layers: Some(m.shape.widths()),
                    input_features: Some(m.shape.inputs),
                    feature_names: Some(m.feature_names.clone()),
                    label_column: m.label_column.clone(),
                    feature_mean: Some(m.normalisation.mean.clone()),
                    feature_std: Some(m.normalisation.std.clone()),
                };
            }
            Model::Image(m) => {
                let input_shape = [m.input.channels, m.input.height, m.input.width];
                wire.model = Some(NetWire {
                    architecture: m.arch.as_str().to_owned(),
                    input_shape: Some(input_shape),
                    classes: Some(m.classes.len()),
                    ..NetWire::default()
                });
                wire.sample_shape = Some(input_shape.to_vec());
                wire.classes = Some(m.classes.clone());
                wire.image = ImageWire {
                    input_shape: Some(input_shape),
                    adaptation: Some(m.adaptation.clone()),
                    channel_mean: Some(m.normalisation.mean.clone()),
                    channel_std: Some(m.normalisation.std.clone()),
                    pixel_scale: Some(PIXEL_SCALE.to_owned()),
                };
            }
            Model::Char(m) => {
                wire.char = CharWire {
                    vocab_size: Some(m.vocabulary.len()),
                    embedding_dim: Some(m.sizes.embedding_dim),
                    hidden_dim: Some(m.sizes.hidden_size),
                    num_layers: Some(m.sizes.num_layers),
                    sequence_length: Some(m.sizes.sequence_length),
                    vocabulary: Some(m.vocabulary.to_json()),
                };
            }
        }
        if !meta.parameters.is_empty() {
            wire.parameters = Some(meta.parameters.clone());
        }
        wire.parameter_count = meta.parameter_count;
        if let Some(run) = &meta.run {
            wire.run = RunWire {
                hyperparameters: Some(run.hyperparameters.clone()),
                final_metrics: Some(run.final_metrics.clone()),
                epochs_completed: run.epochs_completed,
                stopped: run.stopped,
                session_id: Some(run.session_id.clone()),
                dataset: run.datasets.first().cloned(),
                datasets: Some(run.datasets.clone()),
                base_model: run.base_model.clone(),
                device: Some(run.device.clone()),
                kept: run.kept.clone(),
            };
        }
        wire
    }
}

impl TryFrom<Wire> for ModelMeta {
    type Error = String;

    fn try_from(wire: Wire) -> Result<Self, String> {
        let named = wire
            .architecture
            .as_deref()
            .or(wire.model.as_ref().map(|m| m.architecture.as_str()))
            .ok_or("it has no Trainyard model description")?;
        let arch = Architecture::parse(named).ok_or_else(|| format!("unknown architecture '{named}'"))?;
        let model = match arch {
            Architecture::CharLstm => Model::Char(char_model(wire.char)?),
            Architecture::Mlp => {
                let net = wire.model.as_ref().ok_or("it has no Trainyard model description")?;
                let shape = net
                    .layers
                    .as_deref()
                    .and_then(|widths| MlpShape::from_widths(widths, net.dropout_layers.unwrap_or(false)))
                    .ok_or("no layer sizes")?;
                let t = wire.table;
                let normalisation = match (t.feature_mean, t.feature_std) {
                    (Some(mean), Some(std)) => Normalisation { mean, std },
                    _ => Normalisation::identity(shape.inputs),
                };
                Model::Table(TableModel {
                    feature_names: t.feature_names.unwrap_or_else(|| (0..shape.inputs).map(|j| format!("x{j}")).collect()),
                    classes: wire.classes.ok_or("it lists no classes")?,
                    label_column: t.label_column,
                    normalisation,
                    shape,
                })
            }
            arch => {
                let net = wire.model.as_ref().ok_or("it has no Trainyard model description")?;
                let [channels, height, width] = net.input_shape.or(wire.image.input_shape).ok_or("no input shape")?;
                let input = ImageShape { channels, height, width };
                let i = wire.image;
                let normalisation = match (i.channel_mean, i.channel_std) {
                    (Some(mean), Some(std)) => Normalisation { mean, std },
                    _ => Normalisation::identity(channels),
                };
                Model::Image(ImageModel {
                    arch,
                    input,
                    classes: wire.classes.ok_or("it lists no classes")?,
                    normalisation,
                    adaptation: i.adaptation.unwrap_or_else(|| vision::adaptation(arch, input)),
                })
            }
        };
        Ok(Self {
            model,
            parameters: wire.parameters.unwrap_or_default(),
            parameter_count: wire.parameter_count,
            run: run_record(wire.run)?,
        })
    }
}

fn char_model(c: CharWire) -> Result<CharModel, String> {
    let missing = |key: &str| format!("its description lacks '{key}'");
    let vocabulary = Vocabulary::from_json(c.vocabulary.as_ref().ok_or_else(|| missing("vocabulary"))?)?;
    Ok(CharModel {
        sizes: CharLstmOptions {
            embedding_dim: c.embedding_dim.ok_or_else(|| missing("embedding_dim"))?,
            hidden_size: c.hidden_dim.ok_or_else(|| missing("hidden_dim"))?,
            num_layers: c.num_layers.ok_or_else(|| missing("num_layers"))?,
            sequence_length: c.sequence_length.unwrap_or(CharLstmOptions::default().sequence_length),
        },
        vocabulary,
    })
}

/// The run's record, present when the description names a session.
fn run_record(r: RunWire) -> Result<Option<RunRecord>, String> {
    let Some(session_id) = r.session_id else { return Ok(None) };
    Ok(Some(RunRecord {
        hyperparameters: r.hyperparameters.ok_or("its description names a session but no hyperparameters")?,
        final_metrics: r.final_metrics.flatten(),
        epochs_completed: r.epochs_completed,
        stopped: r.stopped,
        session_id,
        datasets: r.datasets.or(r.dataset.map(|d| vec![d])).unwrap_or_default(),
        base_model: r.base_model,
        device: r.device.unwrap_or_default(),
        kept: r.kept,
    }))
}

#[cfg(test)]
mod tests;
