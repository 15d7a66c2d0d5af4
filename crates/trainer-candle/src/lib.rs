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
mod cpu_data;
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
///
/// candle also asks for its thread count on every matrix product, and without
/// `RAYON_NUM_THREADS` that count is the physical cores, found by parsing `/proc/cpuinfo` each
/// time (4% of a small CNN's training step). Unless it is set already, this sets
/// `RAYON_NUM_THREADS` to that count once, which candle's products and rayon's pool then read.
pub fn configure_cpu_threads() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", candle_core::utils::get_num_threads().to_string());
    }
}

/// glibc's allocator settings for a training process: blocks of up to 32 MB come from the heap,
/// freed memory stays there (up to 1 GB at its top) for the next step's tensors, and every
/// thread allocates from that one heap.
///
/// A training step allocates and frees the same large tensors every time. With glibc's
/// defaults most of them are fresh mappings that the kernel zero-fills page by page on first
/// write: mobilenet_v2 took 550,000 page faults and a fifth of its time in them in ten steps.
/// The kernels' worker threads would each get an arena of their own, whose 64 MB heaps glibc
/// maps and unmaps as tensors come and go: one arena took resnet18 at 224x224 from 420,000 to
/// 300,000 page faults in five steps, 7% faster, with 70 MB less at its peak.
/// The tunables only take effect at process start, so they are given to the run process in
/// its environment; any `GLIBC_TUNABLES` of the server's own come after them and win.
pub const MALLOC_TUNABLES: &str = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824:glibc.malloc.arena_max=1";

/// The environment variables a training process starts with, beside the server's: see
/// [`MALLOC_TUNABLES`].
#[must_use]
pub fn run_process_env() -> Vec<(String, String)> {
    let tunables = match std::env::var("GLIBC_TUNABLES") {
        Ok(own) if own.contains(MALLOC_TUNABLES) => own,
        Ok(own) if !own.is_empty() => format!("{MALLOC_TUNABLES}:{own}"),
        _ => MALLOC_TUNABLES.to_owned(),
    };
    vec![("GLIBC_TUNABLES".to_owned(), tunables)]
}

/// Makes the calling program train like a run process: unless it already has the environment of
/// [`run_process_env`], starts it again with it (same arguments) and exits with its status; then
/// [`configure_cpu_threads`]. For benchmarks and tools that measure what a run would; call it
/// first thing in `main`.
///
/// # Errors
/// The program could not be started again.
pub fn train_like_a_run_process() -> std::io::Result<()> {
    let env = run_process_env();
    if env.iter().any(|(k, v)| std::env::var(k).ok().as_ref() != Some(v)) {
        let status = std::process::Command::new(std::env::current_exe()?).args(std::env::args_os().skip(1)).envs(env).status()?;
        std::process::exit(status.code().unwrap_or(1));
    }
    configure_cpu_threads();
    Ok(())
}
