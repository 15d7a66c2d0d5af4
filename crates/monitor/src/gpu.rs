//! GPU usage through NVML: initialised once, retried at most every [`NVML_RETRY_INTERVAL`] while unavailable.

use std::time::{Duration, Instant};

use nvml_wrapper::{error::NvmlError, Nvml};
use trainyard_domain::system::GpuInfo;

/// How long to wait before trying `Nvml::init` again after it failed.
///
/// A driver installed or loaded after start-up is picked up within this time; a machine
/// without NVIDIA hardware pays for one failed library load per interval, not per tick.
pub const NVML_RETRY_INTERVAL: Duration = Duration::from_secs(60);

const MIB: u64 = 1024 * 1024;

/// What a GPU read produced: the devices that could be read, and why any could not.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct GpuReading {
    pub(crate) gpus: Vec<GpuInfo>,
    /// Set when no GPU is reported, or when some device could not be read.
    pub(crate) error: Option<String>,
}

/// NVML, when it could be initialised, or the reason it could not and when to try again.
#[derive(Debug)]
pub(crate) enum GpuProbe {
    /// Boxed: `Nvml` holds its whole symbol table (about 11 KiB).
    Ready(Box<Nvml>),
    Unavailable {
        reason: String,
        retry_at: Instant,
    },
}

impl GpuProbe {
    /// Initialises NVML once.
    pub(crate) fn init() -> Self {
        match Nvml::init() {
            Ok(nvml) => Self::Ready(Box::new(nvml)),
            Err(e) => {
                let reason = init_failure(&e);
                tracing::info!(reason = %reason, "GPU monitoring unavailable");
                Self::Unavailable { reason, retry_at: Instant::now() + NVML_RETRY_INTERVAL }
            }
        }
    }

    /// Reads every device. Errors never escape: they end up in [`GpuReading::error`].
    pub(crate) fn read(&mut self) -> GpuReading {
        if let Self::Unavailable { retry_at, .. } = self {
            if Instant::now() >= *retry_at {
                *self = Self::init();
            }
        }
        let nvml = match self {
            Self::Ready(nvml) => nvml,
            Self::Unavailable { reason, .. } => return GpuReading { gpus: Vec::new(), error: Some(reason.clone()) },
        };
        let count = match nvml.device_count() {
            Ok(count) => count,
            Err(e) => {
                // NVML itself broke (driver unloaded, GPU lost): drop it and re-initialise later.
                let reason = format!("NVML failed to count devices: {e}");
                tracing::warn!(reason = %reason, "GPU monitoring lost");
                *self = Self::Unavailable { reason: reason.clone(), retry_at: Instant::now() + NVML_RETRY_INTERVAL };
                return GpuReading { gpus: Vec::new(), error: Some(reason) };
            }
        };
        if count == 0 {
            return GpuReading { gpus: Vec::new(), error: Some("no NVIDIA GPU found".to_owned()) };
        }
        let mut gpus = Vec::new();
        let mut failures = Vec::new();
        for index in 0..count {
            match read_device(nvml, index) {
                Ok(gpu) => gpus.push(gpu),
                Err(e) => failures.push(format!("GPU {index}: {e}")),
            }
        }
        GpuReading { gpus, error: (!failures.is_empty()).then(|| failures.join("; ")) }
    }
}

/// One device's name, utilisation and memory; any failed read skips the device.
fn read_device(nvml: &Nvml, index: u32) -> Result<GpuInfo, NvmlError> {
    let device = nvml.device_by_index(index)?;
    let name = device.name()?;
    let utilization = device.utilization_rates()?;
    let memory = device.memory_info()?;
    let memory_total_mb = memory.total / MIB;
    Ok(GpuInfo {
        index,
        name,
        usage_percent: f64::from(utilization.gpu.min(100)),
        memory_used_mb: (memory.used / MIB).min(memory_total_mb),
        memory_total_mb,
    })
}

/// A short reason for a failed `Nvml::init`.
fn init_failure(e: &NvmlError) -> String {
    match e {
        NvmlError::LibloadingError(_) => "NVML library not found (no NVIDIA driver installed)".to_owned(),
        NvmlError::DriverNotLoaded => "NVIDIA driver is not loaded".to_owned(),
        NvmlError::NoPermission => "no permission to talk to the NVIDIA driver".to_owned(),
        other => format!("NVML failed to initialise: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_probe_reports_its_reason_without_retrying_early() {
        let mut probe = GpuProbe::Unavailable { reason: "nope".to_owned(), retry_at: Instant::now() + NVML_RETRY_INTERVAL };
        let reading = probe.read();
        assert!(reading.gpus.is_empty());
        assert_eq!(reading.error.as_deref(), Some("nope"));
        assert!(matches!(probe, GpuProbe::Unavailable { ref reason, .. } if reason == "nope"));
    }

    #[test]
    fn init_failures_read_as_short_reasons() {
        assert_eq!(init_failure(&NvmlError::DriverNotLoaded), "NVIDIA driver is not loaded");
        assert!(init_failure(&NvmlError::Unknown).starts_with("NVML failed to initialise"));
    }
}
