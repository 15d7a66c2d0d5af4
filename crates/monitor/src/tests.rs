//! Tests of the monitor against the real machine.

use std::{
    sync::{Mutex, OnceLock},
    time::Instant,
};

use quickcheck::{QuickCheck, TestResult};

use super::*;

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Why `s` is not internally consistent, if it is not.
fn inconsistency(s: &SystemSnapshot) -> Option<String> {
    #[allow(clippy::cast_precision_loss)]
    let max_cpu = 100.0 * s.cpu_count as f64;
    let checks = [
        (s.cpu_count > 0, "no CPU counted"),
        (s.memory_total_mb > 0, "no memory"),
        (s.memory_used_mb <= s.memory_total_mb, "used memory above total"),
        (s.memory_available_mb <= s.memory_total_mb, "available memory above total"),
        ((0.0..=max_cpu).contains(&s.cpu_usage_percent), "CPU usage out of range"),
        // sysinfo's global figure is an average over cores.
        ((0.0..=100.0).contains(&s.cpu_usage_percent), "global CPU usage above 100 %"),
        (s.disk_free_gb >= 0.0 && s.disk_free_gb <= s.disk_total_gb, "free disk above total"),
        ((0.0..=100.0).contains(&s.memory_percent()), "memory percent out of range"),
        (!s.gpus.is_empty() || s.gpu_error.as_deref().is_some_and(|e| !e.is_empty()), "no GPU and no reason"),
        (s.gpus.iter().all(|g| g.memory_used_mb <= g.memory_total_mb), "GPU memory used above total"),
        (s.gpus.iter().all(|g| (0.0..=100.0).contains(&g.usage_percent)), "GPU usage out of range"),
    ];
    checks.iter().find(|(ok, _)| !ok).map(|(_, why)| format!("{why}: {s:?}"))
}

/// One sampler for every quickcheck case, as the monitor thread keeps one.
fn shared_sampler() -> &'static Mutex<Sampler> {
    static SAMPLER: OnceLock<Mutex<Sampler>> = OnceLock::new();
    SAMPLER.get_or_init(|| Mutex::new(Sampler::new(&data_dir())))
}

// Property 36: a snapshot is internally consistent: used <= total memory, available <= total, 0 <= cpu% <= 100*cores (sysinfo's global is 0..100), free disk <= total disk, memory_percent in [0,100], gpus empty iff gpu_error set or no GPU
#[test]
fn property_36_snapshots_are_internally_consistent() {
    fn prop(samples: u8) -> TestResult {
        let mut sampler = shared_sampler().lock().unwrap_or_else(PoisonError::into_inner);
        let mut previous: Option<SystemSnapshot> = None;
        for _ in 0..=samples % 4 {
            let s = sampler.sample();
            if let Some(why) = inconsistency(&s) {
                return TestResult::error(why);
            }
            if previous.as_ref().is_some_and(|p| p.timestamp > s.timestamp || p.cpu_count != s.cpu_count) {
                return TestResult::error(format!("timestamps went back or CPUs changed: {previous:?} then {s:?}"));
            }
            previous = Some(s);
        }
        TestResult::passed()
    }
    QuickCheck::new().tests(30).quickcheck(prop as fn(u8) -> TestResult);
}

#[test]
fn the_first_snapshot_is_real() {
    let s = sample_once(&data_dir());
    assert_eq!(inconsistency(&s), None);
    assert!(s.disk_total_gb > 0.0, "the crate's own filesystem is listed: {s:?}");
}

#[test]
fn the_cached_snapshot_refreshes_and_drop_joins_the_thread() {
    let monitor = CachedMonitor::start(data_dir(), Duration::from_millis(50));
    let first = monitor.snapshot();
    assert_eq!(inconsistency(&first), None);

    let deadline = Instant::now() + Duration::from_secs(10);
    let refreshed = loop {
        let s = monitor.snapshot();
        if s.timestamp > first.timestamp {
            break s;
        }
        assert!(Instant::now() < deadline, "the snapshot was not refreshed within 10 s");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(inconsistency(&refreshed), None);

    let thread_state = Arc::downgrade(&monitor.cache);
    let dropped_at = Instant::now();
    drop(monitor);
    assert!(dropped_at.elapsed() < Duration::from_secs(1), "drop took {:?}", dropped_at.elapsed());
    assert!(thread_state.upgrade().is_none(), "the thread still holds the cache after drop");
}

#[test]
fn drop_does_not_wait_for_the_interval() {
    let mut monitor = CachedMonitor::start(data_dir(), MAX_INTERVAL);
    let stopped_at = Instant::now();
    monitor.shutdown();
    assert!(stopped_at.elapsed() < Duration::from_secs(1), "shutdown took {:?}", stopped_at.elapsed());
    assert!(monitor.thread.is_none());
    // The last snapshot stays readable, and dropping after a shutdown is harmless.
    assert_eq!(inconsistency(&monitor.snapshot()), None);
    drop(monitor);
}

#[test]
fn intervals_are_clamped() {
    assert_eq!(clamp_interval(Duration::ZERO), MIN_INTERVAL);
    assert_eq!(clamp_interval(Duration::from_secs(60)), MAX_INTERVAL);
    assert_eq!(clamp_interval(Duration::from_secs(2)), Duration::from_secs(2));
}

/// Runs only where `TRAINYARD_GPU_TESTS` is set, on a machine with an NVIDIA GPU and driver.
#[test]
fn gpus_are_reported_on_a_gpu_machine() {
    if std::env::var_os("TRAINYARD_GPU_TESTS").is_none() {
        return;
    }
    let s = sample_once(&data_dir());
    assert_eq!(s.gpu_error, None, "{s:?}");
    assert!(!s.gpus.is_empty());
    for (i, gpu) in s.gpus.iter().enumerate() {
        assert_eq!(usize::try_from(gpu.index).ok(), Some(i));
        assert!(!gpu.name.is_empty() && gpu.memory_total_mb > 0, "{gpu:?}");
    }
}
