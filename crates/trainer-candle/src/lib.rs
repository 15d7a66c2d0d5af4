//! candle implementation of Trainyard's trainer and dataset-inspector ports.
//!
//! - [`FileInspector`] implements [`DatasetInspector`](trainyard_domain::ports::DatasetInspector):
//!   it tells CSV, TSV, text, `.npy`, `.npz` and image archives apart by content and computes
//!   their statistics in bounded memory.
//! - [`CandleTrainer`] implements [`Trainer`](trainyard_domain::ports::Trainer): an MLP
//!   classifier on CSV/TSV datasets, seeded and reproducible on the CPU, saved as safetensors
//!   with PyTorch-style parameter names (see [`mlp`]).
//!
//! Both parse tables with one shared reader, so a dataset the inspector accepts is read the
//! same way for training.

mod archive;
mod char_run;
mod checkpoint;
mod data;
mod epoch_loop;
mod estimate;
mod generate;
mod images;
mod inspect;
mod loss;
pub mod lstm;
pub mod mlp;
mod model_check;
mod model_meta;
mod net;
mod npy;
mod optim;
mod predict;
pub mod pth;
mod resume;
mod rng;
mod table;
pub mod text;
mod trainer;
pub mod vision;
mod weights;

pub use epoch_loop::MODEL_FILE_NAME;
pub use generate::CandleGenerator;
pub use inspect::FileInspector;
pub use model_check::FileModelInspector;
pub use optim::TrainOptimizer;
pub use predict::CandlePredictor;
pub use trainer::CandleTrainer;
