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
pub mod gpu;
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

#[cfg(test)]
mod cuda_tests;

pub use epoch_loop::MODEL_FILE_NAME;
pub use generate::CandleGenerator;
pub use inspect::FileInspector;
pub use model_check::FileModelInspector;
pub use optim::TrainOptimizer;
pub use predict::CandlePredictor;
pub use trainer::CandleTrainer;

/// Sets up candle's CPU threads for a process that trains; call it first thing in `main`,
/// before any other thread starts (it sets an environment variable).
///
/// candle runs large element-wise operations on a pool of its own whose calling thread spins
/// until the pool's workers finish. Trainyard's kernels and the matrix products run on rayon's
/// threads, one per core, so those workers share the cores with rayon's and the caller often
/// spins while a worker waits for a core: image training ran up to twice as slowly with the
/// pool on two cores. Unless `CANDLE_NUM_THREADS` is set already, this sets it to 1, so that
/// element-wise operations run on the calling thread.
pub fn configure_cpu_threads() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}
