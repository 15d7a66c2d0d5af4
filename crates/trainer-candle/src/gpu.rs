//! Which CUDA GPUs this process can train on, and why there are none: the one place that
//! `auto` resolution, the memory estimate's device and the `device` check ask.
//!
//! The probe asks the driver only (`cuInit`, the device count, each device's name) and creates
//! no context, so the server can probe without taking GPU memory. It runs once per process.
//!
//! A CUDA build made by `cargo xtask cuda build` loads `libcuda.so.1` at run time (cudarc's
//! `dynamic-loading`): on a machine without the driver cudarc panics on its first call, and the
//! probe catches that panic (quietly) and reports "no NVIDIA driver". A build made with plain
//! `cargo build --features cuda` links the driver and does not start without it. cuBLAS and
//! cuRAND are loaded when a run first opens its device ([`open`]), which turns a missing one
//! into an error naming it.

use std::{fmt, sync::OnceLock};

use candle_core::Device;
use trainyard_domain::config;

/// A GPU the driver reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    /// Its CUDA ordinal, as in `cuda:N`.
    pub index: u32,
    /// The driver's name for it, e.g. "NVIDIA H200".
    pub name: String,
}

/// What CUDA this process can use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cuda {
    /// This build was made without the `cuda` feature.
    NotBuilt,
    /// The driver library (`libcuda.so.1`) could not be loaded.
    NoDriver,
    /// The driver loaded but would not initialise (for example, it is older than the CUDA
    /// version of this build); the driver's words.
    DriverFailed(String),
    /// The driver works and sees no GPU.
    NoDevice,
    /// These GPUs, in ordinal order.
    Usable(Vec<Gpu>),
}

impl Cuda {
    /// The usable GPUs: none unless [`Cuda::Usable`].
    #[must_use]
    pub fn gpus(&self) -> &[Gpu] {
        match self {
            Self::Usable(gpus) => gpus,
            _ => &[],
        }
    }

    /// Where `auto` trains: the first GPU if there is one, else the CPU.
    #[must_use]
    pub fn auto(&self) -> config::Device {
        self.gpus().first().map_or(config::Device::Cpu, |g| config::Device::Cuda(g.index))
    }

    /// Whether a session may ask for `device`; the error says what this machine has instead.
    ///
    /// # Errors
    /// `device cuda:3 is not available: this machine has 1 usable GPU (cuda:0, NVIDIA H200)`,
    /// or the reason there are none.
    pub fn check(&self, device: config::Device) -> Result<(), String> {
        match device {
            config::Device::Cuda(n) if !self.gpus().iter().any(|g| g.index == n) => {
                Err(format!("device cuda:{n} is not available: {self}"))
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Cuda {
    /// What this machine offers, as the end of a sentence.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const CPU: &str = "this server trains on the CPU";
        match self {
            Self::NotBuilt => {
                write!(f, "this build has no CUDA support (build it with `cargo xtask cuda build`); {CPU}")
            }
            Self::NoDriver => write!(f, "no NVIDIA driver was found (libcuda.so.1); {CPU}"),
            Self::DriverFailed(why) => write!(f, "the NVIDIA driver did not initialise ({why}); {CPU}"),
            Self::NoDevice => write!(f, "the NVIDIA driver sees no GPU; {CPU}"),
            Self::Usable(gpus) => {
                let list: Vec<String> = gpus.iter().map(|g| format!("cuda:{}, {}", g.index, g.name)).collect();
                let s = if gpus.len() == 1 { "" } else { "s" };
                write!(f, "this machine has {} usable GPU{s} ({})", gpus.len(), list.join("; "))
            }
        }
    }
}

/// What CUDA this process can use, probed on first call.
pub fn cuda() -> &'static Cuda {
    static CUDA: OnceLock<Cuda> = OnceLock::new();
    CUDA.get_or_init(probe)
}

/// Opens `cuda:n` for training. cudarc panics when a library it loads at run time (cuBLAS,
/// cuRAND) is missing; that becomes an error naming it.
///
/// # Errors
/// The device is not available ([`Cuda::check`]), or candle could not open it.
pub fn open(n: u32) -> Result<Device, String> {
    cuda().check(config::Device::Cuda(n))?;
    match quietly(|| Device::new_cuda(n as usize)) {
        Ok(Ok(device)) => Ok(device),
        Ok(Err(e)) => Err(format!("device cuda:{n} could not be opened: {e}")),
        Err(why) => Err(format!("device cuda:{n} could not be opened: {why}")),
    }
}

#[cfg(not(feature = "cuda"))]
fn probe() -> Cuda {
    Cuda::NotBuilt
}

#[cfg(feature = "cuda")]
fn probe() -> Cuda {
    use candle_core::cuda::cudarc::driver::{result, sys::CUresult};
    let asked = quietly(|| {
        if let Err(e) = result::init() {
            return if e.0 == CUresult::CUDA_ERROR_NO_DEVICE { Cuda::NoDevice } else { Cuda::DriverFailed(e.to_string()) };
        }
        let count = match result::device::get_count() {
            Ok(0) => return Cuda::NoDevice,
            Ok(n) => n,
            Err(e) => return Cuda::DriverFailed(e.to_string()),
        };
        let gpus: Vec<Gpu> = (0..count)
            .filter_map(|i| {
                let name = result::device::get(i).and_then(result::device::get_name).ok()?;
                Some(Gpu { index: u32::try_from(i).ok()?, name })
            })
            .collect();
        if gpus.is_empty() {
            Cuda::NoDevice
        } else {
            Cuda::Usable(gpus)
        }
    });
    // cudarc panics when it cannot load the library ("Unable to dynamically load the "cuda"
    // shared library") or a function in it (a driver older than this build's CUDA).
    match asked {
        Ok(cuda) => cuda,
        Err(why) if why.contains("Unable to dynamically load") => Cuda::NoDriver,
        Err(why) => Cuda::DriverFailed(why),
    }
}

/// Runs `f`, turning a panic into its message without printing it: cudarc reports a library it
/// cannot load by panicking, which here is an answer, not a crash.
fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    use std::{
        cell::Cell,
        panic::{self, AssertUnwindSafe},
        sync::Once,
    };
    thread_local! { static QUIET: Cell<bool> = const { Cell::new(false) }; }
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    result.map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "a CUDA library panicked".to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h200s(n: u32) -> Cuda {
        Cuda::Usable((0..n).map(|index| Gpu { index, name: "NVIDIA H200".into() }).collect())
    }

    #[test]
    fn auto_takes_the_first_gpu_or_the_cpu() {
        assert_eq!(h200s(2).auto(), config::Device::Cuda(0));
        for none in [Cuda::NotBuilt, Cuda::NoDriver, Cuda::NoDevice, Cuda::DriverFailed("x".into())] {
            assert_eq!(none.auto(), config::Device::Cpu, "{none:?}");
        }
    }

    #[test]
    fn a_missing_gpu_is_refused_with_what_there_is() {
        assert_eq!(h200s(1).check(config::Device::Cuda(0)), Ok(()));
        assert_eq!(
            h200s(1).check(config::Device::Cuda(3)).unwrap_err(),
            "device cuda:3 is not available: this machine has 1 usable GPU (cuda:0, NVIDIA H200)"
        );
        assert_eq!(
            Cuda::NoDriver.check(config::Device::Cuda(0)).unwrap_err(),
            "device cuda:0 is not available: no NVIDIA driver was found (libcuda.so.1); this server trains on the CPU"
        );
        for ok in [config::Device::Cpu, config::Device::Auto] {
            assert_eq!(Cuda::NoDriver.check(ok), Ok(()));
        }
    }

    #[test]
    fn the_probe_answers_without_a_gpu_and_quietly_catches_panics() {
        // On a machine without the driver (or a build without CUDA) this is the CPU; with
        // TRAINYARD_TEST_CUDA=1 the machine has a GPU and the probe must see it.
        let found = cuda();
        if std::env::var_os("TRAINYARD_TEST_CUDA").is_some_and(|v| v == "1") {
            assert!(!found.gpus().is_empty(), "TRAINYARD_TEST_CUDA=1 but {found}");
        } else if !cfg!(feature = "cuda") {
            assert_eq!(*found, Cuda::NotBuilt);
        }
        assert_eq!(quietly(|| 7), Ok(7));
        assert_eq!(quietly(|| -> u8 { panic!("no libcuda") }), Err("no libcuda".to_owned()));
    }
}
