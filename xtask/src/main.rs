//! Project automation, run as `cargo xtask <task>`:
//! `ci` runs exactly what CI runs; `tidy` checks the architecture's rules; `openapi` writes
//! the OpenAPI document to `docs/openapi.json`; `bench` measures char-LSTM training speed
//! against PyTorch and the model registry's upload and download throughput against a file
//! copy, each in the same run; `bench memory` (not part of plain `bench`: it trains for minutes)
//! measures training memory per architecture against the memory estimate; `bench vision` (not
//! part of plain `bench` either) measures image-classifier training speed against PyTorch;
//! `cuda build | check | test` builds, checks and tests the `cuda` feature (see [`cuda`]).

mod bench_events;
mod bench_memory;
mod bench_registry;
mod bench_vision;
mod cuda;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

fn main() -> anyhow::Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    let root = root();
    match task.as_str() {
        "ci" => ci(&root),
        "tidy" => tidy(&root),
        "openapi" => openapi(&root),
        "bench" => match std::env::args().nth(2).as_deref() {
            None => bench(&root).and_then(|()| bench_registry::run(&root)),
            Some("lstm") => bench(&root),
            Some("registry") => bench_registry::run(&root),
            Some("memory") => bench_memory::run(&root),
            Some("vision") => bench_vision::run(&root, &std::env::args().skip(3).collect::<Vec<_>>()),
            Some("events") => bench_events::run(&root),
            Some(other) => bail!("unknown benchmark {other:?}: expected lstm, registry, memory, vision or events"),
        },
        "cuda" => cuda::run(&root, std::env::args().nth(2).as_deref(), &std::env::args().skip(3).collect::<Vec<_>>()),
        _ => {
            eprintln!("usage: cargo xtask <ci | tidy | openapi | bench [lstm | registry | memory | vision | events] | cuda <build | check | test>>");
            eprintln!("  ci       format check, tidy, clippy with warnings denied, every test, and cuda check");
            eprintln!("  tidy     crate dependency rules and module docs");
            eprintln!("  openapi  write docs/openapi.json from the code");
            eprintln!("  bench    the lstm and registry benchmarks below, each printing its table");
            eprintln!("    lstm      char-LSTM training speed: Trainyard, stock candle and PyTorch, as ratios of medians");
            eprintln!("    registry  model upload/download MB/s over loopback vs a file copy, and the server's peak RSS");
            eprintln!("    memory    training peak RSS and growth per architecture vs the memory estimate (minutes; not in plain bench)");
            eprintln!("    vision    image-classifier training samples/s vs PyTorch, as ratios (minutes; not in plain bench);");
            eprintln!("              names after it choose rows: an architecture, or one row as resnet18@224");
            eprintln!(
                "    events    the server memory of 1000 idle event-stream subscribers, and training time with them (not in plain bench)"
            );
            eprintln!("  cuda     the `cuda` feature, with NVIDIA's wheels from PyPI (no GPU or toolkit needed):");
            eprintln!("    build     the release binary, stripped and zstd-compressed, in target/cuda/");
            eprintln!("    check     cargo check --features cuda (what CI runs)");
            eprintln!("    test      the trainer's tests on cuda:0 against the CPU (TRAINYARD_TEST_CUDA=1; a GPU machine)");
            bail!("unknown task {task:?}")
        }
    }
}

/// Timed steps of a training benchmark: `TRAINYARD_BENCH_STEPS`, else `default`.
fn bench_steps(default: usize) -> anyhow::Result<usize> {
    env_number("TRAINYARD_BENCH_STEPS", default)
}

/// The number in the environment variable `name`, else `default`.
pub(crate) fn env_number(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(s) => s.parse().with_context(|| format!("{name}={s:?} is not a number")),
        Err(_) => Ok(default),
    }
}

/// Builds the `memory_probe` example in release and returns its path.
fn build_probe(root: &Path) -> anyhow::Result<PathBuf> {
    build_release(root, &["-p", "trainyard-trainer-candle", "--example", "memory_probe"], "examples/memory_probe")
}

/// Builds `what` (cargo's package and target arguments) in release and returns the path of
/// `artifact` in the release directory of the target directory.
fn build_release(root: &Path, what: &[&str], artifact: &str) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(root, &cargo, &[&["build", "--quiet", "--release"], what].concat())?;
    let target = std::env::var("CARGO_TARGET_DIR").map_or_else(|_| root.join("target"), PathBuf::from);
    Ok(target.join("release").join(artifact))
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn run(root: &Path, program: &str, args: &[&str]) -> anyhow::Result<()> {
    eprintln!("$ {program} {}", args.join(" "));
    let status = Command::new(program).args(args).current_dir(root).status().with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed: {status}", args.join(" "));
    }
    Ok(())
}

fn ci(root: &Path) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(root, &cargo, &["fmt", "--all", "--", "--check"])?;
    tidy(root)?;
    run(root, &cargo, &["clippy", "--workspace", "--all-targets", "--locked", "--", "-D", "warnings"])?;
    test_with_total(root, &cargo)?;
    cuda::check(root)
}

/// Runs every test, passing the output through, and closes with one plain total line
/// (`tests: N passed, M failed`) summed over all the test binaries.
fn test_with_total(root: &Path, cargo: &str) -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader};
    eprintln!("$ {cargo} test --workspace --locked");
    let mut child = Command::new(cargo)
        .args(["test", "--workspace", "--locked"])
        .current_dir(root)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                let count = |word: &str| {
                    rest.split(';')
                        .find_map(|part| part.trim().strip_suffix(word).and_then(|n| n.trim().split(' ').next_back()?.parse::<u64>().ok()))
                };
                passed += count("passed").unwrap_or(0);
                failed += count("failed").unwrap_or(0);
            }
        }
    }
    let status = child.wait()?;
    println!("tests: {passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo test failed: {status}");
    }
    Ok(())
}

/// The crates each crate may depend on, among the workspace's own.
const ALLOWED: &[(&str, &[&str])] = &[
    ("trainyard-domain", &[]),
    ("trainyard-storage-sqlite", &["trainyard-domain"]),
    ("trainyard-trainer-candle", &["trainyard-domain"]),
    ("trainyard-monitor", &["trainyard-domain"]),
    ("trainyard-http", &["trainyard-domain"]),
    ("trainyard-supervisor", &["trainyard-domain"]),
    ("trainyard-charts", &["trainyard-domain"]),
    ("trainyard-notify", &["trainyard-domain"]),
    (
        "trainyard",
        &[
            "trainyard-domain",
            "trainyard-storage-sqlite",
            "trainyard-trainer-candle",
            "trainyard-monitor",
            "trainyard-http",
            "trainyard-supervisor",
            "trainyard-charts",
            "trainyard-notify",
        ],
    ),
    ("xtask", &[]),
];

/// Crates the pure domain must never depend on.
const DOMAIN_FORBIDDEN: &[&str] = &["actix-web", "rusqlite", "r2d2", "candle-core", "candle-nn", "sysinfo", "nvml-wrapper", "tokio"];

fn tidy(root: &Path) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for (krate, allowed) in ALLOWED {
        let manifest = manifest_of(root, krate)?;
        let text = std::fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
        for line in text.lines() {
            let dep = line.split(['=', '.']).next().unwrap_or("").trim();
            if (dep.starts_with("trainyard") || dep == "xtask") && !allowed.contains(&dep) {
                problems.push(format!("{krate} must not depend on {dep}"));
            }
            if *krate == "trainyard-domain" && DOMAIN_FORBIDDEN.contains(&dep) {
                problems.push(format!("the domain crate must not depend on the I/O crate {dep}"));
            }
        }
    }
    for file in
        rust_files(&root.join("crates"))?.into_iter().chain(rust_files(&root.join("xtask"))?).chain(rust_files(&root.join("tests"))?)
    {
        let text = std::fs::read_to_string(&file)?;
        if !text.trim_start().starts_with("//!") {
            problems.push(format!("{} does not open with a `//!` line saying what it is for", file.display()));
        }
    }
    if problems.is_empty() {
        eprintln!("tidy: ok");
        Ok(())
    } else {
        for p in &problems {
            eprintln!("tidy: {p}");
        }
        bail!("tidy found {} problems", problems.len())
    }
}

fn manifest_of(root: &Path, krate: &str) -> anyhow::Result<PathBuf> {
    let dir = match krate {
        "trainyard" => "crates/app".to_owned(),
        "xtask" => "xtask".to_owned(),
        other => format!("crates/{}", other.trim_start_matches("trainyard-")),
    };
    let path = root.join(dir).join("Cargo.toml");
    if path.exists() {
        Ok(path)
    } else {
        bail!("no manifest for {krate} at {}", path.display())
    }
}

fn rust_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            out.extend(rust_files(&path)?);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(out)
}

fn openapi(root: &Path) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .args(["run", "--quiet", "--package", "trainyard", "--", "openapi"])
        .current_dir(root)
        .output()
        .context("running trainyard openapi")?;
    if !out.status.success() {
        bail!("trainyard openapi failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let path = root.join("docs/openapi.json");
    std::fs::write(&path, &out.stdout)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// The PyTorch interpreter for the reference: `TORCH_PYTHON`, else a virtual environment in
/// `torchenv` under the target directory (`CARGO_TARGET_DIR` or `target`), created (PyTorch and
/// torchvision from the package registry, several GB; they run on the CPU) if missing, and
/// given torchvision if an earlier version of this task made it without.
fn torch_python(root: &Path) -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("TORCH_PYTHON") {
        return Ok(PathBuf::from(p));
    }
    let target = std::env::var("CARGO_TARGET_DIR").map_or_else(|_| root.join("target"), PathBuf::from);
    let venv = target.join("torchenv");
    if !venv.join("bin/python").exists() {
        eprintln!("installing PyTorch into {} for the reference (once; several GB)", venv.display());
    }
    venv_with(root, &venv, &["torch", "torchvision", "numpy", "safetensors"], |python| {
        Command::new(python).args(["-c", "import torchvision"]).output().is_ok_and(|o| o.status.success())
    })
}

/// The Python of a virtual environment at `venv`, created if missing, with `packages` installed
/// from the package registry unless `ready` (given that Python) says they are there.
fn venv_with(root: &Path, venv: &Path, packages: &[&str], ready: impl Fn(&Path) -> bool) -> anyhow::Result<PathBuf> {
    let python = venv.join("bin/python");
    if !python.exists() {
        run(root, "python3", &["-m", "venv", &venv.to_string_lossy()])
            .context("creating a Python virtual environment needs Python 3 with venv (Debian: apt-get install python3-venv)")?;
    }
    if !ready(&python) {
        let mut args = vec!["install", "--quiet"];
        args.extend_from_slice(packages);
        run(root, &venv.join("bin/pip").to_string_lossy(), &args)?;
    }
    Ok(python)
}

fn json_lines(out: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(out).lines().filter(|l| l.trim_start().starts_with('{')).map(str::to_owned).collect()
}

fn field(line: &str, key: &str) -> Option<f64> {
    let at = line.find(&format!("\"{key}\""))? + key.len() + 2;
    let rest = line[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

/// `cargo xtask bench lstm`: the char-LSTM's training step in Trainyard (fused layers and plain
/// candle) and in PyTorch, alternating the two sides `TRAINYARD_BENCH_ROUNDS` times (default 3)
/// and comparing medians, as `bench vision` does: this machine's timings swing from run to run.
fn bench(root: &Path) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let rounds = env_number("TRAINYARD_BENCH_ROUNDS", 3)?.max(1);
    let text = root.join("examples/datasets/tempest.txt");
    let text = text.to_string_lossy();
    let python = torch_python(root)?;
    let script = root.join("../shared/bench/torch_char_lstm.py");
    let (mut torch_ms, mut ours) = (Vec::new(), Vec::<(String, Vec<f64>)>::new());
    for _ in 0..rounds {
        eprintln!("$ cargo run --release -p trainyard-trainer-candle --example lstm_bench -- {text}");
        let out = Command::new(&cargo)
            .args(["run", "--quiet", "--release", "-p", "trainyard-trainer-candle", "--example", "lstm_bench", "--", &text])
            .current_dir(root)
            .output()
            .context("running the Trainyard benchmark")?;
        if !out.status.success() {
            bail!("lstm_bench failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        for line in json_lines(&out.stdout) {
            let name = line.split("\"impl\"").nth(1).and_then(|r| r.split('"').nth(1)).unwrap_or("?").to_owned();
            let Some(ms) = field(&line, "ms_per_step") else { continue };
            match ours.iter_mut().find(|(known, _)| *known == name) {
                Some((_, times)) => times.push(ms),
                None => ours.push((name, vec![ms])),
            }
        }
        eprintln!("$ {} {} {text}", python.display(), script.display());
        let reference =
            Command::new(&python).arg(&script).arg(&*text).current_dir(root).output().context("running the PyTorch reference")?;
        if !reference.status.success() {
            bail!("the PyTorch reference failed: {}", String::from_utf8_lossy(&reference.stderr));
        }
        let torch = json_lines(&reference.stdout).pop().context("no result from the PyTorch reference")?;
        torch_ms.push(field(&torch, "ms_per_step").context("no ms_per_step from PyTorch")?);
    }
    println!(
        "char-LSTM training step (emb 128, 2x256 LSTM, seq 100, batch 16, Adam), CPU, median of {rounds} alternating rounds, this run:"
    );
    println!("{:<16} {:>12} {:>12} {:>15}", "implementation", "ms/step", "vs PyTorch", "round ratios");
    let torch = median(&mut torch_ms.clone());
    println!("{:<16} {torch:>12.2} {:>11.2}x", "pytorch", 1.0);
    for (name, mut times) in ours {
        let (lo, hi) = ratio_range(&times, &torch_ms);
        let ms = median(&mut times);
        println!("{name:<16} {ms:>12.2} {:>11.2}x {lo:>7.2}-{hi:.2}x", ms / torch.max(f64::MIN_POSITIVE));
    }
    println!("(ratio: median ms per step over PyTorch's; below 1 means faster than PyTorch)");
    Ok(())
}

/// The smallest and largest of the rounds' ratios `ours[i] / theirs[i]`.
fn ratio_range(ours: &[f64], theirs: &[f64]) -> (f64, f64) {
    let ratios = ours.iter().zip(theirs).map(|(o, t)| o / t.max(f64::MIN_POSITIVE));
    ratios.fold((f64::INFINITY, 0.0f64), |(lo, hi), r| (lo.min(r), hi.max(r)))
}

/// The middle value (the mean of the two middle ones for an even count).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}
