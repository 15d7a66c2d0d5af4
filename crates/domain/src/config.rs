//! Training configuration: the raw request, its validation (every failing field reported),
//! and the validated [`TrainingConfig`] with its documented defaults.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{
    charts::Metric,
    ids::{DatasetName, ModelName, SessionId},
    lr_schedule::{LrSchedule, LrScheduleKind},
    selection::{EarlyStopping, Keep, Mode, Selection, DEFAULT_PATIENCE, PATIENCE_RANGE},
};

/// Default learning rate when a request names none.
pub const DEFAULT_LEARNING_RATE: f64 = 0.001;
/// Default mini-batch size.
pub const DEFAULT_BATCH_SIZE: u32 = 32;
/// Default number of epochs.
pub const DEFAULT_EPOCHS: u32 = 10;
/// Default fraction of samples held out for validation.
pub const DEFAULT_VALIDATION_SPLIT: f64 = 0.2;
/// Default seed, so that two runs of the same request on the CPU are identical.
pub const DEFAULT_SEED: u64 = 42;
/// The most sessions one session may depend on.
pub const MAX_DEPENDENCIES: usize = 20;
/// The most retries a session may ask for.
pub const MAX_RETRIES: u32 = 10;
/// The lowest and highest queue priority.
pub const PRIORITY_RANGE: (i32, i32) = (-1000, 1000);
/// AdamW's weight decay when the request names none (PyTorch's default).
pub const ADAMW_DEFAULT_WEIGHT_DECAY: f64 = 0.01;
/// Accepted learning rates, inclusive.
pub const LEARNING_RATE_RANGE: (f64, f64) = (0.0001, 1.0);
/// Accepted batch sizes, inclusive.
pub const BATCH_SIZE_RANGE: (u32, u32) = (1, 1024);
/// Accepted epoch counts, inclusive.
pub const EPOCHS_RANGE: (u32, u32) = (1, 1000);
/// Accepted validation splits: at least 0, below 1.
pub const VALIDATION_SPLIT_MAX: f64 = 0.9;
/// The MLP's hidden layer widths when a request names none.
pub const DEFAULT_HIDDEN_SIZES: [u32; 2] = [128, 64];
/// Accepted number of MLP hidden layers, inclusive.
pub const HIDDEN_LAYERS_RANGE: (usize, usize) = (1, 8);
/// Accepted width of one MLP hidden layer, inclusive.
pub const HIDDEN_WIDTH_RANGE: (u32, u32) = (1, 8192);
/// Accepted dropout probabilities: at least 0, below this.
pub const DROPOUT_MAX: f64 = 0.9;

/// Which kind of data an architecture trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataKind {
    /// Rows of numeric features with a class label (CSV, TSV).
    Tabular,
    /// Plain UTF-8 text.
    Text,
    /// Images with a class label (image archives, IDX, CIFAR-10, image-shaped NumPy arrays).
    Image,
}

impl fmt::Display for DataKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tabular => "tabular",
            Self::Text => "text",
            Self::Image => "image",
        })
    }
}

macro_rules! wire_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $wire:literal $(| $alias:literal)*),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $wire)] $variant),+
        }

        impl $name {
            /// Every accepted value, in wire spelling.
            pub const NAMES: &'static [&'static str] = &[$($wire),+];
            /// Every value.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The wire spelling.
            #[must_use]
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $wire),+ }
            }

            /// Other accepted spellings.
            #[must_use]
            pub fn aliases(self) -> &'static [&'static str] {
                match self { $(Self::$variant => &[$($alias),*]),+ }
            }

            /// Parses the wire spelling or an alias, case-insensitively.
            #[must_use]
            pub fn parse(raw: &str) -> Option<Self> {
                let raw = raw.trim().to_ascii_lowercase();
                match raw.as_str() { $($wire $(| $alias)* => Some(Self::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum!(
    /// A model architecture the trainer can build.
    Architecture {
        /// Multi-layer perceptron on tabular data.
        Mlp => "mlp",
        /// The owner's character-level LSTM text generator (alias `char_lstm`).
        CharLstm => "custom_ai_model" | "char_lstm",
        /// LeNet-style convolutional network for small images.
        Cnn => "cnn" | "lenet",
        /// torchvision's ResNet-18.
        Resnet18 => "resnet18",
        /// torchvision's ResNet-50.
        Resnet50 => "resnet50",
        /// torchvision's VGG-16 (without batch norm).
        Vgg16 => "vgg16",
        /// torchvision's MobileNetV2.
        MobilenetV2 => "mobilenet_v2" | "mobilenetv2",
    }
);

impl Architecture {
    /// The kind of dataset this architecture trains on.
    #[must_use]
    pub fn data_kind(self) -> DataKind {
        match self {
            Self::Mlp => DataKind::Tabular,
            Self::CharLstm => DataKind::Text,
            Self::Cnn | Self::Resnet18 | Self::Resnet50 | Self::Vgg16 | Self::MobilenetV2 => DataKind::Image,
        }
    }

    /// Whether the architecture has batch-norm layers, which need two or more samples per
    /// training batch.
    #[must_use]
    pub fn uses_batch_norm(self) -> bool {
        matches!(self, Self::Resnet18 | Self::Resnet50 | Self::MobilenetV2)
    }

    /// One line describing the architecture, for listings.
    #[must_use]
    pub fn description(self) -> &'static str {
        match self {
            Self::Mlp => {
                "multi-layer perceptron on standardised numeric features: hidden layers 128 and 64 with ReLU (hidden_sizes and \
                 dropout overridable)"
            }
            Self::Cnn => "LeNet-style CNN: two 5x5 convolutions with ReLU and 2x2 max-pooling, then three linear layers",
            Self::Resnet18 => "torchvision ResNet-18 (BasicBlock [2,2,2,2]); small inputs use a 3x3 stem without max-pool",
            Self::Resnet50 => "torchvision ResNet-50 (Bottleneck [3,4,6,3]); small inputs use a 3x3 stem without max-pool",
            Self::Vgg16 => "torchvision VGG-16: 13 3x3 convolutions, 7x7 adaptive average pool, classifier 4096-4096; pools skipped once the map is 1x1",
            Self::MobilenetV2 => "torchvision MobileNetV2 (inverted residuals, width 1.0); small inputs keep stride 1 in the stem and first stages",
            Self::CharLstm => {
                "character-level LSTM text generator: embedding 128, 2-layer LSTM with hidden size 256, linear to the \
                 vocabulary, sequences of 100 characters (all overridable)"
            }
        }
    }

    /// The optional config fields that tune this architecture.
    #[must_use]
    pub fn tunable_fields(self) -> &'static [&'static str] {
        match self {
            Self::Mlp => &["hidden_sizes", "dropout"],
            Self::Cnn | Self::Resnet18 | Self::Resnet50 | Self::Vgg16 | Self::MobilenetV2 => &["dropout"],
            Self::CharLstm => &["embedding_dim", "hidden_size", "num_layers", "sequence_length"],
        }
    }
}

wire_enum!(
    /// The optimizer that updates the weights.
    Optimizer {
        /// Adam.
        Adam => "adam",
        /// Adam with decoupled weight decay.
        AdamW => "adamw",
        /// Stochastic gradient descent.
        Sgd => "sgd",
        /// RMSprop.
        RmsProp => "rmsprop",
    }
);

wire_enum!(
    /// The loss the optimizer minimises.
    LossFunction {
        /// Softmax cross-entropy against the class index.
        CrossEntropy => "cross_entropy",
        /// Mean squared error between softmax probabilities and the one-hot target.
        Mse => "mse",
        /// Mean absolute error between softmax probabilities and the one-hot target.
        Mae => "mae",
        /// Binary cross-entropy with logits against the one-hot target (numerically stable).
        Bce => "bce",
    }
);

/// A training request as received: every field optional, nothing checked yet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainingRequest {
    pub model_architecture: Option<String>,
    /// The dataset, or the first of several.
    pub dataset_name: Option<String>,
    /// Further datasets trained on together with the first (text architectures).
    pub extra_datasets: Vec<String>,
    pub learning_rate: Option<f64>,
    pub batch_size: Option<i64>,
    pub epochs: Option<i64>,
    pub optimizer: Option<String>,
    pub loss_function: Option<String>,
    pub validation_split: Option<f64>,
    pub seed: Option<u64>,
    pub momentum: Option<f64>,
    pub embedding_dim: Option<i64>,
    pub hidden_size: Option<i64>,
    pub num_layers: Option<i64>,
    pub sequence_length: Option<i64>,
    /// MLP hidden layer widths.
    pub hidden_sizes: Option<Vec<i64>>,
    /// Dropout probability before each hidden-to-next linear layer (MLP) or the classifier (images).
    pub dropout: Option<f64>,
    pub base_model: Option<String>,
    pub device: Option<String>,
    /// Stop when a metric stops improving.
    pub early_stopping: Option<EarlyStoppingRequest>,
    /// `best` or `last`: which epoch's weights the model file holds.
    pub keep: Option<String>,
    /// How the learning rate changes over the run.
    pub lr_schedule: Option<LrScheduleRequest>,
    pub weight_decay: Option<f64>,
    pub clip_grad_norm: Option<f64>,
    pub label_smoothing: Option<f64>,
    /// Higher starts first; default 0.
    pub priority: Option<i64>,
    /// Sessions that must complete before this one starts.
    pub depends_on: Option<Vec<String>>,
    /// How many times a run whose process crashes is retried from its last checkpoint.
    pub max_retries: Option<i64>,
}

/// `lr_schedule` as received.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LrScheduleRequest {
    pub kind: Option<String>,
    pub step_size: Option<i64>,
    pub gamma: Option<f64>,
    pub min_lr: Option<f64>,
    pub max_lr: Option<f64>,
    pub factor: Option<f64>,
    pub patience: Option<i64>,
    pub warmup_epochs: Option<i64>,
}

/// `early_stopping` as received.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EarlyStoppingRequest {
    pub metric: Option<String>,
    pub mode: Option<String>,
    pub patience: Option<i64>,
    pub min_delta: Option<f64>,
}

/// Where a session trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    /// The first CUDA GPU when this build has CUDA and one is present, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// CUDA GPU number N.
    Cuda(u32),
}

impl Device {
    /// Parses `auto`, `cpu`, `cuda` (GPU 0) or `cuda:N`.
    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(Self::Auto),
            "cpu" => Some(Self::Cpu),
            "cuda" | "gpu" => Some(Self::Cuda(0)),
            other => other.strip_prefix("cuda:").and_then(|n| n.parse().ok()).map(Self::Cuda),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Layer sizes of the character-level LSTM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CharLstmOptions {
    pub embedding_dim: u32,
    pub hidden_size: u32,
    pub num_layers: u32,
    pub sequence_length: u32,
}

impl Default for CharLstmOptions {
    /// The owner's model: embedding 128, 2 layers of 256, sequences of 100 characters.
    fn default() -> Self {
        Self { embedding_dim: 128, hidden_size: 256, num_layers: 2, sequence_length: 100 }
    }
}

/// A validated training configuration. Every value in range, every default applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingConfig {
    pub model_architecture: Architecture,
    pub dataset_name: DatasetName,
    /// Further datasets trained on together with `dataset_name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_datasets: Vec<DatasetName>,
    pub learning_rate: f64,
    pub batch_size: u32,
    pub epochs: u32,
    pub optimizer: Optimizer,
    pub loss_function: LossFunction,
    pub validation_split: f64,
    pub seed: u64,
    /// SGD and RMSprop momentum (0 when absent).
    #[serde(default)]
    pub momentum: f64,
    /// Layer sizes, for the character-level LSTM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub char_lstm: Option<CharLstmOptions>,
    /// MLP hidden layer widths (the MLP only; `None` for other architectures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_sizes: Option<Vec<u32>>,
    /// Dropout probability during training (0 = none); not used by the char-LSTM.
    #[serde(default)]
    pub dropout: f64,
    /// A registry model to start from (fine-tuning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model: Option<ModelName>,
    #[serde(default)]
    pub device: Device,
    /// Stop when a metric has not improved for a while.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStopping>,
    /// Which epoch's weights the model file holds (`last` for sessions from before `keep`).
    #[serde(default)]
    pub keep: Keep,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_schedule: Option<LrSchedule>,
    /// L2 penalty (`adam`, `sgd`, `rmsprop`) or decoupled decay (`adamw`); `None`: the
    /// optimizer's default (0.01 for `adamw`, else 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    /// Gradients are scaled down so that their global L2 norm is at most this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_grad_norm: Option<f64>,
    /// Cross-entropy's label smoothing (0: none).
    #[serde(default)]
    pub label_smoothing: f64,
    /// Queued sessions of higher priority start first; changed while queued by reordering.
    #[serde(default)]
    pub priority: i32,
    /// Sessions that must complete before this one starts; it fails if one of them fails or
    /// is stopped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<SessionId>,
    /// How many times a run whose process crashes, runs out of memory or stalls is started
    /// again from its last checkpoint; configuration and data errors are never retried.
    #[serde(default)]
    pub max_retries: u32,
    /// The sweep trial this session is, when a sweep started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<crate::sweep::TrialOf>,
}

impl TrainingConfig {
    /// The request fields every architecture takes (besides the architecture's own
    /// [`Architecture::tunable_fields`]).
    pub const COMMON_FIELDS: &'static [&'static str] = &[
        "dataset_name",
        "learning_rate",
        "batch_size",
        "epochs",
        "optimizer",
        "loss_function",
        "validation_split",
        "seed",
        "momentum",
        "base_model",
        "device",
        "early_stopping",
        "keep",
        "lr_schedule",
        "weight_decay",
        "clip_grad_norm",
        "label_smoothing",
        "priority",
        "depends_on",
        "max_retries",
    ];

    /// How the session's epochs are judged: the best one, and when to stop early.
    #[must_use]
    pub fn selection(&self) -> Selection {
        Selection::new(self.early_stopping.as_ref(), self.validation_split > 0.0)
    }

    /// The weight decay in effect: the configured one, else the optimizer's default.
    #[must_use]
    pub fn effective_weight_decay(&self) -> f64 {
        self.weight_decay.unwrap_or(if self.optimizer == Optimizer::AdamW { ADAMW_DEFAULT_WEIGHT_DECAY } else { 0.0 })
    }

    /// Every dataset the session trains on, the first one first.
    pub fn datasets(&self) -> impl Iterator<Item = &DatasetName> {
        std::iter::once(&self.dataset_name).chain(self.extra_datasets.iter())
    }
}

/// One field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// Every field that failed validation, in field order.
#[derive(Debug, Clone, PartialEq, Eq, Default, thiserror::Error)]
#[error("invalid training configuration: {}", self.summary())]
pub struct ConfigErrors(pub Vec<FieldError>);

impl ConfigErrors {
    /// Adds a failing field.
    pub fn push(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(FieldError { field: field.to_owned(), message: message.into() });
    }

    /// `field: message; field: message`.
    #[must_use]
    pub fn summary(&self) -> String {
        self.0.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; ")
    }

    /// Whether no field failed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn one_of(names: &[&str]) -> String {
    format!("must be one of: {}", names.join(", "))
}

impl TrainingConfig {
    /// Validates a request, applying defaults, and reports every failing field at once.
    ///
    /// # Errors
    /// [`ConfigErrors`] listing each field that is missing or out of range.
    pub fn validate(req: &TrainingRequest) -> Result<Self, ConfigErrors> {
        let mut errors = ConfigErrors::default();

        let model_architecture = match req.model_architecture.as_deref() {
            None => {
                errors.push("model_architecture", format!("is required; {}", one_of(Architecture::NAMES)));
                None
            }
            Some(raw) => Architecture::parse(raw).or_else(|| {
                errors.push("model_architecture", format!("unknown architecture {raw:?}; {}", one_of(Architecture::NAMES)));
                None
            }),
        };
        let dataset_name = match req.dataset_name.as_deref() {
            None => {
                errors.push("dataset_name", "is required");
                None
            }
            Some(raw) => DatasetName::new(raw).map_err(|e| errors.push("dataset_name", e.to_string())).ok(),
        };
        let mut extra_datasets = Vec::new();
        for raw in &req.extra_datasets {
            match DatasetName::new(raw.as_str()) {
                Ok(name) if Some(&name) == dataset_name.as_ref() || extra_datasets.contains(&name) => {
                    errors.push("dataset_name", format!("dataset '{name}' is listed twice"));
                }
                Ok(name) => extra_datasets.push(name),
                Err(e) => errors.push("dataset_name", format!("{raw:?}: {e}")),
            }
        }
        if !extra_datasets.is_empty() && model_architecture.is_some_and(|a| a.data_kind() != DataKind::Text) {
            errors.push("dataset_name", "several datasets can be trained on together only by text architectures");
        }

        let learning_rate = req.learning_rate.unwrap_or(DEFAULT_LEARNING_RATE);
        if let Err(e) = check_learning_rate(learning_rate) {
            errors.0.extend(e.0);
        }

        let batch_size = check_int(&mut errors, "batch_size", req.batch_size, DEFAULT_BATCH_SIZE, BATCH_SIZE_RANGE);
        if let Some(arch) = model_architecture.filter(|a| a.uses_batch_norm() && batch_size < 2) {
            errors.push("batch_size", format!("must be at least 2 for '{arch}', whose batch norm needs two samples per batch"));
        }
        let epochs = check_int(&mut errors, "epochs", req.epochs, DEFAULT_EPOCHS, EPOCHS_RANGE);

        let optimizer =
            parse_choice(&mut errors, "optimizer", req.optimizer.as_deref(), Optimizer::Adam, Optimizer::parse, Optimizer::NAMES);
        let loss_function = parse_choice(
            &mut errors,
            "loss_function",
            req.loss_function.as_deref(),
            LossFunction::CrossEntropy,
            LossFunction::parse,
            LossFunction::NAMES,
        );

        let validation_split = req.validation_split.unwrap_or(DEFAULT_VALIDATION_SPLIT);
        if !(validation_split.is_finite() && (0.0..=VALIDATION_SPLIT_MAX).contains(&validation_split)) {
            errors.push("validation_split", format!("must be between 0 and {VALIDATION_SPLIT_MAX}, got {validation_split}"));
        }

        let momentum = req.momentum.unwrap_or(0.0);
        if !(momentum.is_finite() && (0.0..1.0).contains(&momentum)) {
            errors.push("momentum", format!("must be at least 0 and below 1, got {momentum}"));
        } else if req.momentum.is_some() && !matches!(optimizer, Some(Optimizer::Sgd | Optimizer::RmsProp)) {
            errors.push("momentum", "applies only to the sgd and rmsprop optimizers");
        }

        let char_lstm = char_lstm_options(&mut errors, req, model_architecture);
        let hidden_sizes = hidden_sizes(&mut errors, req.hidden_sizes.as_deref(), model_architecture);
        let dropout = req.dropout.unwrap_or(0.0);
        if !(dropout.is_finite() && (0.0..DROPOUT_MAX).contains(&dropout)) {
            errors.push("dropout", format!("must be at least 0 and below {DROPOUT_MAX}, got {dropout}"));
        } else if req.dropout.is_some() && model_architecture == Some(Architecture::CharLstm) {
            errors.push("dropout", "does not apply to architecture 'custom_ai_model'");
        }

        let base_model =
            req.base_model.as_deref().and_then(|raw| ModelName::new(raw).map_err(|e| errors.push("base_model", e.to_string())).ok());
        let device = match req.device.as_deref() {
            None => Device::Auto,
            Some(raw) => Device::parse(raw).unwrap_or_else(|| {
                errors.push("device", format!("unknown device {raw:?}; use auto, cpu or cuda:N"));
                Device::Auto
            }),
        };

        let has_validation = validation_split > 0.0;
        let early_stopping = req.early_stopping.as_ref().map(|e| early_stopping(&mut errors, e, has_validation));
        let keep = match req.keep.as_deref() {
            None if has_validation => Keep::Best,
            None => Keep::Last,
            Some(raw) => Keep::parse(raw).unwrap_or_else(|| {
                errors.push("keep", format!("unknown value {raw:?}; {}", one_of(Keep::NAMES)));
                Keep::Last
            }),
        };

        let lr_schedule = req.lr_schedule.as_ref().and_then(|r| lr_schedule(&mut errors, r, epochs, learning_rate));
        let weight_decay = req.weight_decay;
        if let Some(wd) = weight_decay.filter(|wd| !(wd.is_finite() && (0.0..=1.0).contains(wd))) {
            errors.push("weight_decay", format!("must be between 0 and 1, got {wd}"));
        }
        let clip_grad_norm = req.clip_grad_norm;
        if let Some(c) = clip_grad_norm.filter(|c| !(c.is_finite() && *c > 0.0)) {
            errors.push("clip_grad_norm", format!("must be a number above 0, got {c}"));
        }
        let label_smoothing = req.label_smoothing.unwrap_or(0.0);
        if !(label_smoothing.is_finite() && (0.0..1.0).contains(&label_smoothing)) {
            errors.push("label_smoothing", format!("must be at least 0 and below 1, got {label_smoothing}"));
        } else if label_smoothing > 0.0 && loss_function.is_some_and(|l| l != LossFunction::CrossEntropy) {
            errors.push("label_smoothing", "applies only to the cross_entropy loss");
        }

        let priority = match req.priority.map(check_priority) {
            None => 0,
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                errors.0.extend(e.0);
                0
            }
        };

        let mut depends_on: Vec<SessionId> = Vec::new();
        let raw_deps = req.depends_on.as_deref().unwrap_or_default();
        if raw_deps.len() > MAX_DEPENDENCIES {
            errors.push("depends_on", format!("names {} sessions; at most {MAX_DEPENDENCIES}", raw_deps.len()));
        }
        for raw in raw_deps.iter().take(MAX_DEPENDENCIES) {
            match SessionId::parse(raw.trim()) {
                Ok(id) if depends_on.contains(&id) => errors.push("depends_on", format!("names session {id} twice")),
                Ok(id) => depends_on.push(id),
                Err(_) => {
                    let shown = crate::failure::shown(raw);
                    errors.push("depends_on", format!("'{shown}' is not a session id (sess_ and 32 hex digits)"));
                }
            }
        }

        let max_retries = match req.max_retries.map(u32::try_from) {
            None => 0,
            Some(Ok(n)) if n <= MAX_RETRIES => n,
            Some(_) => {
                errors.push("max_retries", format!("must be a whole number from 0 to {MAX_RETRIES}, got {}", req.max_retries.unwrap_or(0)));
                0
            }
        };

        match (model_architecture, dataset_name, errors.is_empty()) {
            (Some(model_architecture), Some(dataset_name), true) => Ok(Self {
                model_architecture,
                dataset_name,
                extra_datasets,
                learning_rate,
                batch_size,
                epochs,
                optimizer: optimizer.unwrap_or(Optimizer::Adam),
                loss_function: loss_function.unwrap_or(LossFunction::CrossEntropy),
                validation_split,
                seed: req.seed.unwrap_or(DEFAULT_SEED),
                momentum,
                char_lstm,
                hidden_sizes,
                dropout,
                base_model,
                device,
                early_stopping,
                keep,
                lr_schedule,
                weight_decay,
                clip_grad_norm,
                label_smoothing,
                priority,
                depends_on,
                max_retries,
                sweep: None,
            }),
            _ => Err(errors),
        }
    }
}

/// Checks a learning rate: a number in [`LEARNING_RATE_RANGE`].
///
/// # Errors
/// The `learning_rate` field's error.
pub fn check_learning_rate(rate: f64) -> Result<f64, ConfigErrors> {
    let (lo, hi) = LEARNING_RATE_RANGE;
    if rate.is_finite() && (lo..=hi).contains(&rate) {
        return Ok(rate);
    }
    let mut errors = ConfigErrors::default();
    errors.push("learning_rate", format!("must be between {lo} and {hi}, got {rate}"));
    Err(errors)
}

/// Checks a queue priority: a whole number in [`PRIORITY_RANGE`].
///
/// # Errors
/// The `priority` field's error.
pub fn check_priority(raw: i64) -> Result<i32, ConfigErrors> {
    let (lo, hi) = PRIORITY_RANGE;
    match i32::try_from(raw) {
        Ok(p) if (lo..=hi).contains(&p) => Ok(p),
        _ => {
            let mut errors = ConfigErrors::default();
            errors.push("priority", format!("must be a whole number from {lo} to {hi}, got {raw}"));
            Err(errors)
        }
    }
}

/// Checks `lr_schedule`, naming each failing part (`lr_schedule.gamma`, ...); a parameter of
/// another type is an error too.
fn lr_schedule(errors: &mut ConfigErrors, req: &LrScheduleRequest, epochs: u32, learning_rate: f64) -> Option<LrSchedule> {
    let before = errors.0.len();
    let field = |name: &str| format!("lr_schedule.{name}");
    let Some(kind) = req.kind.as_deref() else {
        errors.push("lr_schedule.type", format!("is required; {}", one_of(LrScheduleKind::NAMES)));
        return None;
    };
    let given: [(&str, bool); 6] = [
        ("step_size", req.step_size.is_some()),
        ("gamma", req.gamma.is_some()),
        ("min_lr", req.min_lr.is_some()),
        ("max_lr", req.max_lr.is_some()),
        ("factor", req.factor.is_some()),
        ("patience", req.patience.is_some()),
    ];
    let allowed: &[&str] = match kind {
        "step" => &["step_size", "gamma"],
        "exponential" => &["gamma"],
        "cosine" => &["min_lr"],
        "onecycle" => &["max_lr"],
        "plateau" => &["factor", "patience"],
        other => {
            errors.push("lr_schedule.type", format!("unknown schedule {other:?}; {}", one_of(LrScheduleKind::NAMES)));
            return None;
        }
    };
    for (name, present) in given {
        if present && !allowed.contains(&name) {
            errors.push(&field(name), format!("does not apply to the {kind} schedule"));
        }
    }
    let mut fraction = |name: &str, raw: Option<f64>, default: Option<f64>, upper_inclusive: bool| -> f64 {
        let Some(v) = raw.or(default) else {
            errors.push(&field(name), format!("is required by the {kind} schedule"));
            return 1.0;
        };
        let ok = v.is_finite() && v > 0.0 && (v < 1.0 || (upper_inclusive && v <= 1.0));
        if !ok {
            errors.push(&field(name), format!("must be above 0 and {} 1, got {v}", if upper_inclusive { "at most" } else { "below" }));
        }
        v
    };
    let kind = match kind {
        "step" => {
            let gamma = fraction("gamma", req.gamma, Some(0.1), true);
            if req.step_size.is_none() {
                errors.push(&field("step_size"), "is required by the step schedule");
            }
            let step_size = check_int(errors, &field("step_size"), req.step_size, 1, EPOCHS_RANGE);
            LrScheduleKind::Step { step_size, gamma }
        }
        "exponential" => LrScheduleKind::Exponential { gamma: fraction("gamma", req.gamma, None, true) },
        "cosine" => {
            let min_lr = req.min_lr.unwrap_or(0.0);
            if !(min_lr.is_finite() && min_lr >= 0.0 && min_lr < learning_rate) {
                errors.push(&field("min_lr"), format!("must be at least 0 and below the learning_rate ({learning_rate}), got {min_lr}"));
            }
            LrScheduleKind::Cosine { min_lr }
        }
        "onecycle" => {
            let max_lr = req.max_lr.unwrap_or(f64::NAN);
            let (lo, hi) = LEARNING_RATE_RANGE;
            if req.max_lr.is_none() {
                errors.push(&field("max_lr"), "is required by the onecycle schedule");
            } else if !(max_lr.is_finite() && (lo..=hi).contains(&max_lr)) {
                errors.push(&field("max_lr"), format!("must be between {lo} and {hi}, got {max_lr}"));
            }
            LrScheduleKind::Onecycle { max_lr }
        }
        _ => {
            let factor = fraction("factor", req.factor, Some(0.1), false);
            let patience = check_int(errors, &field("patience"), req.patience, 10, (0, 1000));
            LrScheduleKind::Plateau { factor, patience }
        }
    };
    let warmup_epochs = check_int(errors, &field("warmup_epochs"), req.warmup_epochs, 0, (0, 1000));
    if warmup_epochs >= epochs {
        errors.push(&field("warmup_epochs"), format!("must be fewer than the {epochs} epochs, got {warmup_epochs}"));
    }
    (errors.0.len() == before).then_some(LrSchedule { kind, warmup_epochs })
}

/// Checks `early_stopping`, naming each failing part (`early_stopping.patience`, ...).
fn early_stopping(errors: &mut ConfigErrors, req: &EarlyStoppingRequest, has_validation: bool) -> EarlyStopping {
    let default_metric = if has_validation { Metric::ValLoss } else { Metric::Loss };
    let metric = match req.metric.as_deref() {
        None => default_metric,
        Some(raw) => match Metric::parse(raw.trim()) {
            Some(m @ (Metric::ValLoss | Metric::ValAccuracy)) if !has_validation => {
                errors.push(
                    "early_stopping.metric",
                    format!("{} needs validation data: set validation_split above 0, or use loss or accuracy", m.as_str()),
                );
                m
            }
            Some(m) => m,
            None => {
                errors.push("early_stopping.metric", format!("unknown metric {raw:?}; {}", one_of(Metric::NAMES)));
                default_metric
            }
        },
    };
    let mode = match req.mode.as_deref() {
        None => Mode::of(metric),
        Some(raw) => Mode::parse(raw).unwrap_or_else(|| {
            errors.push("early_stopping.mode", format!("unknown mode {raw:?}; {}", one_of(Mode::NAMES)));
            Mode::of(metric)
        }),
    };
    let patience = check_int(errors, "early_stopping.patience", req.patience, DEFAULT_PATIENCE, PATIENCE_RANGE);
    let min_delta = req.min_delta.unwrap_or(0.0);
    if !(min_delta.is_finite() && min_delta >= 0.0) {
        errors.push("early_stopping.min_delta", format!("must be a number of at least 0, got {min_delta}"));
    }
    EarlyStopping { metric, mode, patience, min_delta }
}

/// Layer-size overrides: applied with defaults for the char-LSTM, refused for other architectures.
fn char_lstm_options(errors: &mut ConfigErrors, req: &TrainingRequest, arch: Option<Architecture>) -> Option<CharLstmOptions> {
    let given = [
        ("embedding_dim", req.embedding_dim),
        ("hidden_size", req.hidden_size),
        ("num_layers", req.num_layers),
        ("sequence_length", req.sequence_length),
    ];
    match arch {
        Some(Architecture::CharLstm) => {
            let d = CharLstmOptions::default();
            Some(CharLstmOptions {
                embedding_dim: check_int(errors, "embedding_dim", req.embedding_dim, d.embedding_dim, (1, 4096)),
                hidden_size: check_int(errors, "hidden_size", req.hidden_size, d.hidden_size, (1, 8192)),
                num_layers: check_int(errors, "num_layers", req.num_layers, d.num_layers, (1, 8)),
                sequence_length: check_int(errors, "sequence_length", req.sequence_length, d.sequence_length, (2, 10_000)),
            })
        }
        Some(other) => {
            for (field, value) in given {
                if value.is_some() {
                    errors.push(field, format!("does not apply to architecture '{other}'"));
                }
            }
            None
        }
        None => None,
    }
}

/// The MLP's hidden widths: the request's, checked, or the defaults; refused for other architectures.
fn hidden_sizes(errors: &mut ConfigErrors, raw: Option<&[i64]>, arch: Option<Architecture>) -> Option<Vec<u32>> {
    match (arch, raw) {
        (Some(Architecture::Mlp), None) => Some(DEFAULT_HIDDEN_SIZES.to_vec()),
        (Some(Architecture::Mlp), Some(raw)) => {
            let ((lo, hi), (wlo, whi)) = (HIDDEN_LAYERS_RANGE, HIDDEN_WIDTH_RANGE);
            if !(lo..=hi).contains(&raw.len()) {
                errors.push("hidden_sizes", format!("must list {lo} to {hi} layer widths, got {}", raw.len()));
                return Some(DEFAULT_HIDDEN_SIZES.to_vec());
            }
            match raw.iter().map(|&w| u32::try_from(w).ok().filter(|w| (wlo..=whi).contains(w))).collect::<Option<Vec<u32>>>() {
                Some(widths) => Some(widths),
                None => {
                    errors.push("hidden_sizes", format!("each width must be between {wlo} and {whi}, got {raw:?}"));
                    Some(DEFAULT_HIDDEN_SIZES.to_vec())
                }
            }
        }
        (Some(other), Some(_)) => {
            errors.push("hidden_sizes", format!("does not apply to architecture '{other}'"));
            None
        }
        _ => None,
    }
}

fn check_int(errors: &mut ConfigErrors, field: &str, raw: Option<i64>, default: u32, (lo, hi): (u32, u32)) -> u32 {
    let value = raw.unwrap_or(i64::from(default));
    match u32::try_from(value) {
        Ok(v) if (lo..=hi).contains(&v) => v,
        _ => {
            errors.push(field, format!("must be between {lo} and {hi}, got {value}"));
            default
        }
    }
}

fn parse_choice<T: Copy>(
    errors: &mut ConfigErrors,
    field: &str,
    raw: Option<&str>,
    default: T,
    parse: fn(&str) -> Option<T>,
    names: &[&str],
) -> Option<T> {
    match raw {
        None => Some(default),
        Some(raw) => parse(raw).or_else(|| {
            errors.push(field, format!("unknown value {raw:?}; {}", one_of(names)));
            None
        }),
    }
}

#[cfg(test)]
mod tests {
    use quickcheck::{quickcheck, TestResult};

    use super::*;

    fn minimal() -> TrainingRequest {
        TrainingRequest { model_architecture: Some("mlp".into()), dataset_name: Some("iris".into()), ..Default::default() }
    }

    #[test]
    fn defaults_are_documented_values() {
        let cfg = TrainingConfig::validate(&minimal()).unwrap();
        assert_eq!(cfg.learning_rate, DEFAULT_LEARNING_RATE);
        assert_eq!(cfg.batch_size, DEFAULT_BATCH_SIZE);
        assert_eq!(cfg.epochs, DEFAULT_EPOCHS);
        assert_eq!(cfg.optimizer, Optimizer::Adam);
        assert_eq!(cfg.loss_function, LossFunction::CrossEntropy);
        assert_eq!(cfg.validation_split, DEFAULT_VALIDATION_SPLIT);
        assert_eq!(cfg.seed, DEFAULT_SEED);
    }

    #[test]
    fn the_owners_request_selects_the_char_lstm_with_its_sizes() {
        let req = TrainingRequest {
            model_architecture: Some("custom_ai_model".into()),
            dataset_name: Some("tempest".into()),
            extra_datasets: vec!["sonnets".into()],
            learning_rate: Some(0.0001),
            batch_size: Some(16),
            epochs: Some(5),
            optimizer: Some("adam".into()),
            loss_function: Some("cross_entropy".into()),
            ..Default::default()
        };
        let cfg = TrainingConfig::validate(&req).unwrap();
        assert_eq!(cfg.model_architecture, Architecture::CharLstm);
        assert_eq!(cfg.char_lstm, Some(CharLstmOptions::default()));
        assert_eq!(cfg.datasets().map(DatasetName::as_str).collect::<Vec<_>>(), ["tempest", "sonnets"]);
        assert_eq!(Architecture::parse("char_lstm"), Some(Architecture::CharLstm));
        assert_eq!(Device::parse("cuda:1"), Some(Device::Cuda(1)));
        let mlp_with_lstm_field = TrainingRequest { model_architecture: Some("mlp".into()), sequence_length: Some(50), ..req };
        let errs = TrainingConfig::validate(&mlp_with_lstm_field).unwrap_err();
        assert_eq!(errs.0.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), ["dataset_name", "sequence_length"]);
    }

    #[test]
    fn mlp_widths_and_dropout_are_checked_and_kept() {
        let cfg = TrainingConfig::validate(&minimal()).unwrap();
        assert_eq!((cfg.hidden_sizes, cfg.dropout), (Some(DEFAULT_HIDDEN_SIZES.to_vec()), 0.0));
        let req = TrainingRequest { hidden_sizes: Some(vec![32, 16, 8]), dropout: Some(0.25), ..minimal() };
        let cfg = TrainingConfig::validate(&req).unwrap();
        assert_eq!((cfg.hidden_sizes, cfg.dropout), (Some(vec![32, 16, 8]), 0.25));
        for (hidden, dropout) in
            [(Some(vec![]), None), (Some(vec![0]), None), (Some(vec![8; 9]), None), (None, Some(0.9)), (None, Some(-0.1))]
        {
            let req = TrainingRequest { hidden_sizes: hidden.clone(), dropout, ..minimal() };
            assert!(TrainingConfig::validate(&req).is_err(), "{hidden:?} {dropout:?}");
        }
        let cnn =
            TrainingRequest { model_architecture: Some("resnet18".into()), hidden_sizes: Some(vec![8]), dropout: Some(0.5), ..minimal() };
        let errs = TrainingConfig::validate(&cnn).unwrap_err();
        assert_eq!(errs.0.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), ["hidden_sizes"]);
        let lstm = TrainingRequest { model_architecture: Some("custom_ai_model".into()), dropout: Some(0.1), ..minimal() };
        assert_eq!(TrainingConfig::validate(&lstm).unwrap_err().0[0].field, "dropout");
        assert_eq!(Architecture::parse("MobileNetV2"), Some(Architecture::MobilenetV2));
        assert_eq!(Architecture::Vgg16.data_kind(), DataKind::Image);
        let one = TrainingRequest { model_architecture: Some("resnet50".into()), batch_size: Some(1), ..minimal() };
        assert_eq!(TrainingConfig::validate(&one).unwrap_err().0[0].field, "batch_size");
    }

    #[test]
    fn reports_every_failing_field() {
        let req = TrainingRequest {
            model_architecture: Some("transformer9000".into()),
            dataset_name: Some("../x".into()),
            learning_rate: Some(5.0),
            batch_size: Some(0),
            epochs: Some(100_000),
            optimizer: Some("lbfgs".into()),
            loss_function: Some("hinge".into()),
            validation_split: Some(1.5),
            momentum: Some(0.5),
            device: Some("tpu".into()),
            hidden_size: Some(64),
            ..Default::default()
        };
        let errs = TrainingConfig::validate(&req).unwrap_err();
        let fields: Vec<_> = errs.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "model_architecture",
                "dataset_name",
                "learning_rate",
                "batch_size",
                "epochs",
                "optimizer",
                "loss_function",
                "validation_split",
                "momentum",
                "device"
            ]
        );
        assert!(errs.0[0].message.contains("mlp"), "lists the valid architectures");
    }

    quickcheck! {
        // Property 3: validation accepts exactly the in-range configurations.
        fn prop03_validation_accepts_exactly_in_range(lr: f64, batch: i64, epochs: i64, split: f64) -> bool {
            let req = TrainingRequest {
                learning_rate: Some(lr), batch_size: Some(batch), epochs: Some(epochs), validation_split: Some(split),
                ..minimal()
            };
            let in_range = (0.0001..=1.0).contains(&lr)
                && (1..=1024).contains(&batch)
                && (1..=1000).contains(&epochs)
                && (0.0..=0.9).contains(&split);
            TrainingConfig::validate(&req).is_ok() == in_range
        }

        // Property 4: a valid config keeps exactly the values the request gave.
        fn prop04_valid_config_preserves_values(lr_milli: u16, batch: u16, epochs: u16, seed: u64) -> TestResult {
            let lr = f64::from(lr_milli % 1000 + 1) / 1000.0;
            let (batch, epochs) = (i64::from(batch % 1024 + 1), i64::from(epochs % 1000 + 1));
            let req = TrainingRequest { learning_rate: Some(lr), batch_size: Some(batch), epochs: Some(epochs), seed: Some(seed), ..minimal() };
            let cfg = TrainingConfig::validate(&req).unwrap();
            TestResult::from_bool(cfg.learning_rate == lr && i64::from(cfg.batch_size) == batch && i64::from(cfg.epochs) == epochs && cfg.seed == seed)
        }

        // Property 5: the number of reported errors equals the number of bad fields.
        fn prop05_one_error_per_bad_field(bad_lr: bool, bad_batch: bool, bad_epochs: bool, bad_opt: bool, bad_loss: bool) -> bool {
            let req = TrainingRequest {
                learning_rate: Some(if bad_lr { 2.0 } else { 0.01 }),
                batch_size: Some(if bad_batch { -3 } else { 8 }),
                epochs: Some(if bad_epochs { 0 } else { 3 }),
                optimizer: Some(if bad_opt { "nope" } else { "sgd" }.into()),
                loss_function: Some(if bad_loss { "nope" } else { "mse" }.into()),
                ..minimal()
            };
            let expected = [bad_lr, bad_batch, bad_epochs, bad_opt, bad_loss].iter().filter(|b| **b).count();
            match TrainingConfig::validate(&req) {
                Ok(_) => expected == 0,
                Err(e) => e.0.len() == expected,
            }
        }
    }
}
