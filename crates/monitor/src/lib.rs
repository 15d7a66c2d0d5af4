//! The system-monitor adapter: a background thread samples CPU, memory, disk (sysinfo) and GPU
//! (NVML) usage into a cache that [`CachedMonitor::snapshot`] reads without waiting.
//!
//! GPUs: NVML is initialised once at start; when that fails (no library, no driver, no GPU) the
//! snapshot carries no GPUs and a short `gpu_error`, and initialisation is retried at most every
//! [`NVML_RETRY_INTERVAL`]. A failed NVML read never affects the CPU, memory and disk figures.

mod gpu;
mod sampler;

use std::{
    path::{Path, PathBuf},
    sync::{
        mpsc::{self, RecvTimeoutError},
        Arc, PoisonError, RwLock,
    },
    thread::JoinHandle,
    time::Duration,
};

pub use gpu::NVML_RETRY_INTERVAL;
use sampler::Sampler;
use trainyard_domain::{ports::SystemMonitor, system::SystemSnapshot};

/// The longest refresh interval [`CachedMonitor::start`] accepts; longer ones are shortened to it.
pub const MAX_INTERVAL: Duration = Duration::from_secs(5);

/// The shortest refresh interval [`CachedMonitor::start`] accepts; shorter ones are lengthened to it.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// A [`SystemMonitor`] whose snapshot is refreshed by one background thread named `monitor`.
///
/// Dropping it stops and joins the thread; the stop is seen at once, not after the interval.
/// Share it behind an `Arc`: the thread lives as long as the last `Arc`.
#[derive(Debug)]
pub struct CachedMonitor {
    cache: Arc<RwLock<SystemSnapshot>>,
    /// Dropping the sender wakes the thread and tells it to stop.
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl CachedMonitor {
    /// Takes a first, real snapshot (this blocks for about 200 ms, sysinfo's
    /// `MINIMUM_CPU_UPDATE_INTERVAL`, plus NVML's initialisation), then starts the thread that
    /// refreshes it every `interval`, clamped to [`MIN_INTERVAL`]..=[`MAX_INTERVAL`].
    ///
    /// Disk figures describe the filesystem that holds `data_dir` (or, while it does not exist,
    /// its nearest existing ancestor). If the thread cannot be spawned the error is logged and the
    /// first snapshot is served unchanged.
    #[must_use]
    pub fn start(data_dir: PathBuf, interval: Duration) -> Self {
        let interval = clamp_interval(interval);
        let mut sampler = Sampler::new(&data_dir);
        let cache = Arc::new(RwLock::new(sampler.sample()));
        let (stop, stopped) = mpsc::channel();
        let shared = Arc::clone(&cache);
        let thread = std::thread::Builder::new()
            .name("monitor".to_owned())
            .spawn(move || refresh_loop(sampler, &shared, &stopped, interval))
            .map_err(|e| tracing::error!(error = %e, "could not start the system monitor thread; its snapshot will not refresh"))
            .ok();
        Self { cache, stop: Some(stop), thread }
    }

    /// Stops and joins the refresh thread now; the last snapshot stays readable. Dropping does the same.
    pub fn shutdown(&mut self) {
        // Disconnecting the channel wakes `recv_timeout` at once.
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the system monitor thread panicked");
            }
        }
    }
}

impl SystemMonitor for CachedMonitor {
    fn snapshot(&self) -> SystemSnapshot {
        // The writer only replaces the value whole, so a poisoned lock still holds a whole snapshot.
        self.cache.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Drop for CachedMonitor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Takes one snapshot without a background thread (blocks for about 200 ms, see [`CachedMonitor::start`]).
#[must_use]
pub fn sample_once(data_dir: &Path) -> SystemSnapshot {
    Sampler::new(data_dir).sample()
}

fn clamp_interval(interval: Duration) -> Duration {
    let clamped = interval.clamp(MIN_INTERVAL, MAX_INTERVAL);
    if clamped != interval {
        tracing::warn!(requested = ?interval, used = ?clamped, "system monitor interval out of range");
    }
    clamped
}

/// Refreshes the cache every `interval` until the sender is dropped (or sends).
fn refresh_loop(mut sampler: Sampler, cache: &RwLock<SystemSnapshot>, stop: &mpsc::Receiver<()>, interval: Duration) {
    loop {
        match stop.recv_timeout(interval) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        // Sample outside the lock so that readers never wait on a refresh.
        let snapshot = sampler.sample();
        *cache.write().unwrap_or_else(PoisonError::into_inner) = snapshot;
    }
}

#[cfg(test)]
mod tests;
