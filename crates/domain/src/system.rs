//! A snapshot of the machine's resources, as the system monitor reports it.

use time::OffsetDateTime;

/// Formats megabytes for people: `812 MB`, `9.8 GB`.
#[must_use]
pub fn human_mb(mb: u64) -> String {
    if mb < 1024 {
        format!("{mb} MB")
    } else {
        // Precision loss is irrelevant at a tenth of a gigabyte.
        #[allow(clippy::cast_precision_loss)]
        let gb = mb as f64 / 1024.0;
        format!("{gb:.1} GB")
    }
}

/// One GPU's usage.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuInfo {
    pub index: u32,
    pub name: String,
    pub usage_percent: f64,
    pub memory_used_mb: u64,
    pub memory_total_mb: u64,
}

/// CPU, memory, disk and GPU usage at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct SystemSnapshot {
    pub cpu_usage_percent: f64,
    pub cpu_count: usize,
    pub memory_used_mb: u64,
    pub memory_total_mb: u64,
    pub memory_available_mb: u64,
    /// The server process's own resident memory, in MB (training runs in other processes).
    pub server_memory_mb: u64,
    pub disk_free_gb: f64,
    pub disk_total_gb: f64,
    /// Empty when there is no GPU, no NVML library, or NVML failed.
    pub gpus: Vec<GpuInfo>,
    /// Why GPUs are not reported, when they are not.
    pub gpu_error: Option<String>,
    pub timestamp: OffsetDateTime,
}

impl SystemSnapshot {
    /// Used memory as a percentage of the total.
    #[must_use]
    pub fn memory_percent(&self) -> f64 {
        if self.memory_total_mb == 0 {
            0.0
        } else {
            // Precision loss is irrelevant at megabyte granularity.
            #[allow(clippy::cast_precision_loss)]
            let pct = self.memory_used_mb as f64 * 100.0 / self.memory_total_mb as f64;
            (pct * 10.0).round() / 10.0
        }
    }
}
