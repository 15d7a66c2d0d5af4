//! One sample of CPU, memory, disk and GPU usage; the monitor thread keeps one [`Sampler`] alive.

use std::path::{Path, PathBuf};

use sysinfo::{
    CpuRefreshKind, DiskRefreshKind, Disks, MemoryRefreshKind, ProcessRefreshKind, ProcessesToUpdate, System, MINIMUM_CPU_UPDATE_INTERVAL,
};
use time::OffsetDateTime;
use trainyard_domain::system::SystemSnapshot;

use crate::gpu::GpuProbe;

const MIB: u64 = 1024 * 1024;
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// The state that successive samples share: CPU usage is a difference between two reads,
/// and NVML is initialised once.
#[derive(Debug)]
pub(crate) struct Sampler {
    system: System,
    disks: Disks,
    /// The data directory, or its nearest existing ancestor, canonicalised.
    data_dir: PathBuf,
    gpu: GpuProbe,
    /// Whether the "no disk holds the data directory" warning was logged already.
    warned_no_disk: bool,
}

impl Sampler {
    /// Reads the CPU list and its counters twice, [`MINIMUM_CPU_UPDATE_INTERVAL`] apart, so that
    /// the first sample's CPU usage is real; blocks for that long plus NVML's initialisation.
    pub(crate) fn new(data_dir: &Path) -> Self {
        let mut system = System::new();
        system.refresh_cpu_list(CpuRefreshKind::nothing().with_cpu_usage());
        std::thread::sleep(MINIMUM_CPU_UPDATE_INTERVAL);
        system.refresh_cpu_usage();
        Self { system, disks: Disks::new(), data_dir: resolve_dir(data_dir), gpu: GpuProbe::init(), warned_no_disk: false }
    }

    /// Takes a snapshot. Never fails: a part that cannot be read reports zeros (disk) or an
    /// error string (GPU) and the rest is reported as usual.
    pub(crate) fn sample(&mut self) -> SystemSnapshot {
        // sysinfo keeps the previous CPU usage when called sooner than MINIMUM_CPU_UPDATE_INTERVAL.
        self.system.refresh_cpu_usage();
        self.system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        // Re-lists the mounts each time, so a filesystem mounted later is found.
        self.disks.refresh_specifics(true, DiskRefreshKind::nothing().with_storage());

        let cpu = f64::from(self.system.global_cpu_usage());
        let cpu_usage_percent = if cpu.is_finite() { (cpu.clamp(0.0, 100.0) * 10.0).round() / 10.0 } else { 0.0 };
        let cpu_count = match self.system.cpus().len() {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };

        let memory_total_mb = self.system.total_memory() / MIB;
        let memory_used_mb = (self.system.used_memory() / MIB).min(memory_total_mb);
        let memory_available_mb = (self.system.available_memory() / MIB).min(memory_total_mb);

        let server_memory_mb = self.own_memory_mb();
        let (disk_free_gb, disk_total_gb) = self.disk_space();
        let gpu = self.gpu.read();

        SystemSnapshot {
            cpu_usage_percent,
            cpu_count,
            memory_used_mb,
            memory_total_mb,
            memory_available_mb,
            server_memory_mb,
            disk_free_gb,
            disk_total_gb,
            gpus: gpu.gpus,
            gpu_error: gpu.error,
            timestamp: OffsetDateTime::now_utc(),
        }
    }

    /// This process's resident memory, in MB (0 when it cannot be read).
    fn own_memory_mb(&mut self) -> u64 {
        let Ok(pid) = sysinfo::get_current_pid() else { return 0 };
        self.system.refresh_processes_specifics(ProcessesToUpdate::Some(&[pid]), false, ProcessRefreshKind::nothing().with_memory());
        self.system.process(pid).map_or(0, |p| p.memory().div_ceil(MIB))
    }

    /// Free and total GiB of the filesystem holding the data directory; zeros when sysinfo lists
    /// no such filesystem (tmpfs and network mounts are not listed).
    fn disk_space(&mut self) -> (f64, f64) {
        let Some(disk) =
            containing(self.disks.list().iter().map(sysinfo::Disk::mount_point), &self.data_dir).and_then(|i| self.disks.list().get(i))
        else {
            if !self.warned_no_disk {
                tracing::warn!(data_dir = %self.data_dir.display(), "no listed filesystem holds the data directory; disk space reads 0");
                self.warned_no_disk = true;
            }
            return (0.0, 0.0);
        };
        let total = disk.total_space();
        let free = disk.available_space().min(total);
        (gib(free), gib(total))
    }
}

/// Bytes as GiB with two decimals.
fn gib(bytes: u64) -> f64 {
    // Precision loss is irrelevant at two decimals of a GiB.
    #[allow(clippy::cast_precision_loss)]
    let gib = bytes as f64 / GIB;
    (gib * 100.0).round() / 100.0
}

/// `dir` canonicalised; if it does not exist (yet), its nearest existing ancestor canonicalised,
/// since that is the filesystem it will be created on.
pub(crate) fn resolve_dir(dir: &Path) -> PathBuf {
    let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    absolute.ancestors().find_map(|a| a.canonicalize().ok()).unwrap_or(absolute)
}

/// The index of the mount point that is the longest (component-wise) prefix of `path`.
pub(crate) fn containing<'a>(mount_points: impl Iterator<Item = &'a Path>, path: &Path) -> Option<usize> {
    mount_points
        .enumerate()
        .filter(|(_, mount)| path.starts_with(mount))
        .max_by_key(|(_, mount)| mount.components().count())
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_mount_prefix_wins() {
        let mounts = [Path::new("/"), Path::new("/data"), Path::new("/data/models"), Path::new("/dat")];
        let pick = |p: &str| containing(mounts.iter().copied(), Path::new(p));
        assert_eq!(pick("/data/models/x"), Some(2));
        assert_eq!(pick("/data/modelsx"), Some(1), "prefixes are compared by component");
        assert_eq!(pick("/datax"), Some(0));
        assert_eq!(pick("/data"), Some(1));
        assert_eq!(containing([Path::new("/data")].into_iter(), Path::new("/home")), None);
    }

    #[test]
    fn a_missing_directory_resolves_to_its_existing_ancestor() {
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        let missing = here.join("does-not-exist/either");
        let resolved = resolve_dir(&missing);
        assert_eq!(resolved, here.canonicalize().expect("the crate directory exists"));
    }

    #[test]
    fn gib_rounds_to_two_decimals() {
        assert!((gib(1024 * 1024 * 1024) - 1.0).abs() < f64::EPSILON);
        assert!((gib(1536 * 1024 * 1024) - 1.5).abs() < f64::EPSILON);
        assert!((gib(1_000_000) - 0.0).abs() < f64::EPSILON);
    }
}
