//! `cargo xtask cuda build | check | test`: the `cuda` feature built on any Linux machine, with
//! or without a GPU or a CUDA toolkit.
//!
//! Everything lives in one directory, `TRAINYARD_CUDA_TARGET_DIR` or `cuda` under the target
//! directory, so a CI machine can keep it between runs:
//!
//! - `venv/`: NVIDIA's CUDA 13.0 wheels from PyPI (nvcc, the headers, the runtime, cuBLAS,
//!   cuRAND, NVRTC), installed once;
//!   Their `nvidia/cu13` tree is the `CUDA_HOME` the build scripts read (candle-kernels' nvcc,
//!   cudarc's `nvcc --version`);
//! - `link/libcudart.so`: a linker script naming the wheels' `libcudart_static.a`, on
//!   `LIBRARY_PATH`: candle-kernels asks to link the CUDA runtime, and this links it into the
//!   binary, which then needs no `libcudart.so.13`;
//! - `candle-core-<version>/`: the workspace's candle-core (the patched copy in `vendor/`) with
//!   cudarc's `dynamic-linking` switched to `dynamic-loading`, so the binary loads
//!   `libcuda.so.1`, cuBLAS and cuRAND when it first uses them instead of refusing to start
//!   without them; the build patches it in with `--config patch.crates-io.candle-core.path=…`
//!   (which takes the place of the workspace's own patch) and puts `Cargo.lock` back; a stamp
//!   beside it (`.source`) says which source it was copied from;
//! - `target/`: the cargo target directory of the CUDA build.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context};

/// NVIDIA's CUDA 13.0 wheels. The `-cu12` nvcc wheels hold only ptxas; 13.0 needs driver R580+.
const WHEELS: &[&str] = &[
    "nvidia-cuda-nvcc==13.0.*",
    "nvidia-nvvm==13.0.*",
    "nvidia-cuda-crt==13.0.*",
    "nvidia-cuda-runtime==13.0.*",
    "nvidia-cuda-cccl==13.0.*",
    "nvidia-cublas==13.0.*",
    // cuRAND keeps its own numbering: 10.4.0 is CUDA 13.0's.
    "nvidia-curand==10.4.0.*",
    "nvidia-cuda-nvrtc==13.0.*",
];

/// The GPU generation the kernels are compiled for unless `CUDA_COMPUTE_CAP` says otherwise:
/// 90 is Hopper (H100, H200).
const DEFAULT_COMPUTE_CAP: &str = "90";

/// Shared libraries a binary of this build must not need at start-up.
const CUDA_LIBRARIES: &[&str] = &["libcuda.", "libcudart", "libcublas", "libcurand", "libnvrtc"];

pub(crate) fn run(root: &Path, what: Option<&str>, rest: &[String]) -> anyhow::Result<()> {
    match what {
        Some("build") => build(root),
        Some("check") => check(root),
        Some("test") => test(root, rest),
        other => bail!("unknown cuda task {other:?}: expected build, check or test"),
    }
}

/// `cargo check --features cuda`: what CI runs to prove the feature compiles.
pub(crate) fn check(root: &Path) -> anyhow::Result<()> {
    let env = CudaEnv::prepare(root)?;
    env.cargo(root, &["check", "--package", "trainyard", "--features", "cuda"], &[])
}

/// The release binary with CUDA, stripped, at `<dir>/trainyard-cuda`, and compressed with zstd
/// beside it.
fn build(root: &Path) -> anyhow::Result<()> {
    let env = CudaEnv::prepare(root)?;
    env.cargo(
        root,
        &[
            "build",
            "--release",
            "--package",
            "trainyard",
            "--features",
            "cuda",
            "--config",
            "profile.release.debug=false",
            "--config",
            "profile.release.strip=true",
        ],
        &[],
    )?;
    let built = env.dir.join("target/release/trainyard");
    let out = env.dir.join("trainyard-cuda");
    std::fs::copy(&built, &out).with_context(|| format!("copying {}", built.display()))?;
    let needed = needed_libraries(&out)?;
    if let Some(bad) = needed.iter().find(|lib| CUDA_LIBRARIES.iter().any(|c| lib.starts_with(c))) {
        bail!("{} needs {bad} at start-up, so it would not start without the driver: {needed:?}", out.display());
    }
    println!("{}: {} (stripped; needs {})", out.display(), human(&out)?, needed.join(", "));
    let zst = env.dir.join("trainyard-cuda.zst");
    if which("zstd") {
        let out_s = out.to_string_lossy();
        crate::run(root, "zstd", &["-19", "-T0", "-q", "-f", &out_s, "-o", &zst.to_string_lossy()])?;
        println!("{}: {} (zstd -19; unpack with `zstd -d`)", zst.display(), human(&zst)?);
    } else {
        println!("(no zstd command here: {} was not compressed)", out.display());
    }
    Ok(())
}

/// Trainer tests with the `cuda` feature and `TRAINYARD_TEST_CUDA=1`, on a GPU machine: every
/// custom operation on cuda:0 against the CPU, and a short training run on cuda:0. Arguments
/// after `test` go to the test binary (a filter).
fn test(root: &Path, filter: &[String]) -> anyhow::Result<()> {
    let env = CudaEnv::prepare(root)?;
    let mut args: Vec<&str> = vec!["test", "--package", "trainyard-trainer-candle", "--features", "cuda", "--"];
    args.extend(filter.iter().map(String::as_str));
    env.cargo(root, &args, &[("TRAINYARD_TEST_CUDA", "1")])
}

/// The toolkit, the patched candle-core and the target directory of a CUDA build.
struct CudaEnv {
    dir: PathBuf,
    cuda_home: PathBuf,
    link: PathBuf,
    candle_core: PathBuf,
}

impl CudaEnv {
    fn prepare(root: &Path) -> anyhow::Result<Self> {
        let dir = match std::env::var_os("TRAINYARD_CUDA_TARGET_DIR") {
            Some(d) => PathBuf::from(d),
            None => std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from).join("cuda"),
        };
        std::fs::create_dir_all(&dir)?;
        let dir = dir.canonicalize()?;
        let started = Instant::now();
        let cuda_home = wheels(root, &dir.join("venv"))?;
        let link = static_runtime(&dir.join("link"), &cuda_home)?;
        let candle_core = patched_candle_core(root, &dir)?;
        eprintln!("cuda: toolkit and patched candle-core ready in {:.0} s", started.elapsed().as_secs_f64());
        Ok(Self { dir, cuda_home, link, candle_core })
    }

    /// `cargo <args>` with the build scripts' environment and candle-core patched in; the
    /// workspace's `Cargo.lock` is put back afterwards, whatever happened.
    fn cargo(&self, root: &Path, args: &[&str], envs: &[(&str, &str)]) -> anyhow::Result<()> {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let bin = self.cuda_home.join("bin");
        let path = std::env::var_os("PATH").unwrap_or_default();
        let path = std::env::join_paths(std::iter::once(bin.clone()).chain(std::env::split_paths(&path)))?;
        let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| DEFAULT_COMPUTE_CAP.to_owned());
        let patch = format!("patch.crates-io.candle-core.path={:?}", self.candle_core.to_string_lossy());
        let lock = root.join("Cargo.lock");
        let saved = std::fs::read(&lock).context("reading Cargo.lock")?;
        let (command, rest) = args.split_first().context("no cargo command")?;
        eprintln!(
            "$ CUDA_HOME={} CUDA_COMPUTE_CAP={cap} {cargo} {command} --config '{patch}' {}",
            self.cuda_home.display(),
            rest.join(" ")
        );
        let started = Instant::now();
        // The patch goes after the subcommand with any other `--config`: cargo keeps only the
        // subcommand's `--config` values when both places have some.
        let status = Command::new(&cargo)
            .arg(command)
            .args(["--config", &patch])
            .args(rest)
            .envs(envs.iter().copied())
            .current_dir(root)
            .env("CARGO_TARGET_DIR", self.dir.join("target"))
            .env("CUDA_HOME", &self.cuda_home)
            .env("CUDA_PATH", &self.cuda_home)
            .env("NVCC", bin.join("nvcc"))
            .env("CUDA_COMPUTE_CAP", &cap)
            .env("PATH", path)
            .env("LIBRARY_PATH", &self.link)
            .status();
        std::fs::write(&lock, saved).context("putting Cargo.lock back")?;
        let status = status.with_context(|| format!("running {cargo}"))?;
        eprintln!("cuda: `cargo {command}` took {:.0} s", started.elapsed().as_secs_f64());
        if !status.success() {
            bail!("`cargo {}` with the cuda feature failed: {status}", args.join(" "));
        }
        Ok(())
    }
}

/// The wheels' CUDA tree (`nvidia/cu13` in the virtual environment's site-packages), installed
/// if `nvcc` is not there yet.
fn wheels(root: &Path, venv: &Path) -> anyhow::Result<PathBuf> {
    let find = || -> Option<PathBuf> {
        std::fs::read_dir(venv.join("lib"))
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path().join("site-packages/nvidia/cu13"))
            .find(|p| p.join("bin/nvcc").exists())
    };
    if let Some(tree) = find() {
        return Ok(tree);
    }
    eprintln!("installing NVIDIA's CUDA 13.0 wheels into {} (once; about 1.2 GB)", venv.display());
    crate::venv_with(root, venv, WHEELS, |_| false)?;
    find().with_context(|| format!("the wheels installed no nvidia/cu13/bin/nvcc under {}", venv.display()))
}

/// A directory whose `libcudart.so` links the wheels' static CUDA runtime.
fn static_runtime(dir: &Path, cuda_home: &Path) -> anyhow::Result<PathBuf> {
    let runtime = cuda_home.join("lib/libcudart_static.a");
    if !runtime.exists() {
        bail!("{} is missing: nvidia-cuda-runtime did not install", runtime.display());
    }
    std::fs::create_dir_all(dir)?;
    let script =
        format!("/* -lcudart: the CUDA runtime linked statically, so no libcudart.so.13 at start-up */\nINPUT({})\n", runtime.display());
    std::fs::write(dir.join("libcudart.so"), script)?;
    Ok(dir.to_path_buf())
}

/// A fingerprint of the files under `dir` (their paths and contents).
fn tree_hash(dir: &Path) -> anyhow::Result<u64> {
    use std::hash::{Hash, Hasher};
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for file in files {
        file.strip_prefix(dir)?.hash(&mut hasher);
        std::fs::read(&file)?.hash(&mut hasher);
    }
    Ok(hasher.finish())
}

/// candle-core as the workspace has it (the patched copy under `vendor/`) with cudarc's
/// `dynamic-linking` turned into `dynamic-loading`; copied again when its source changed.
fn patched_candle_core(root: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(root)
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).context("reading cargo metadata")?;
    let package = meta["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "candle-core"))
        .context("candle-core is not among the workspace's packages")?;
    let version = package["version"].as_str().context("candle-core has no version")?;
    let source = Path::new(package["manifest_path"].as_str().context("candle-core has no manifest path")?)
        .parent()
        .context("candle-core's manifest has no directory")?;
    let copy = dir.join(format!("candle-core-{version}"));
    let manifest = copy.join("Cargo.toml");
    // Beside the copy, not in it: the copy is a package cargo builds.
    let stamp = dir.join(format!("candle-core-{version}.source"));
    let source_hash = format!("{} {:016x}\n", source.display(), tree_hash(source)?);
    let copied = std::fs::read_to_string(&stamp).is_ok_and(|s| s == source_hash);
    if copied && std::fs::read_to_string(&manifest).is_ok_and(|m| m.contains("\"dynamic-loading\"")) {
        return Ok(copy);
    }
    if copy.exists() {
        std::fs::remove_dir_all(&copy)?;
    }
    crate::run(root, "cp", &["-R", &source.to_string_lossy(), &copy.to_string_lossy()])?;
    let text = std::fs::read_to_string(&manifest)?;
    let start = text.find("[dependencies.cudarc]").context("candle-core's manifest has no [dependencies.cudarc]")?;
    let end = text[start + 1..].find("\n[").map_or(text.len(), |i| start + 1 + i);
    let section = &text[start..end];
    if !section.contains("\"dynamic-linking\"") {
        bail!("candle-core {version} no longer asks cudarc for dynamic-linking; revisit xtask/src/cuda.rs");
    }
    let patched = format!("{}{}{}", &text[..start], section.replace("\"dynamic-linking\"", "\"dynamic-loading\""), &text[end..]);
    std::fs::write(&manifest, patched)?;
    std::fs::write(&stamp, source_hash)?;
    Ok(copy)
}

/// The `NEEDED` entries of an ELF file, from `readelf -d`.
fn needed_libraries(file: &Path) -> anyhow::Result<Vec<String>> {
    let out = Command::new("readelf").arg("-d").arg(file).output().context("running readelf (binutils)")?;
    if !out.status.success() {
        bail!("readelf -d {} failed", file.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| Some(l.split('[').nth(1)?.trim_end_matches(']').to_owned()))
        .collect())
}

fn which(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success())
}

fn human(file: &Path) -> anyhow::Result<String> {
    #[allow(clippy::cast_precision_loss)]
    let mb = std::fs::metadata(file)?.len() as f64 / 1_048_576.0;
    Ok(format!("{mb:.1} MiB"))
}
