//! `cargo xtask bench vision`: image-classifier training speed against PyTorch in the same run.
//!
//! Each row trains one architecture with Adam on random images (the `memory_probe` example with
//! `--speed`, built in release: a generated CIFAR-10 batch at 32x32x3, or an `.npz` at 224x224x3)
//! and PyTorch's torchvision model with the same small-input adaptations
//! (`../shared/bench/torch_vision.py`), and prints both in samples per second with their ratio.
//! `TRAINYARD_BENCH_STEPS` (default 10) sets the timed steps of each side after its warm-up, and
//! `TRAINYARD_BENCH_ROUNDS` (default 3) how many times each row alternates the two sides: the
//! medians are compared, and the spread of the rounds' ratios is shown. Names after `vision`
//! choose rows: an architecture (`resnet18`: both its rows) or one row (`resnet18@224`).

use std::{path::Path, process::Command};

use anyhow::{bail, Context};

use super::{field, json_lines, torch_python};

/// Architecture, image side and batch size of each row.
const ROWS: [(&str, usize, usize); 6] =
    [("cnn", 32, 16), ("resnet18", 32, 16), ("resnet50", 32, 16), ("vgg16", 32, 16), ("mobilenet_v2", 32, 16), ("resnet18", 224, 8)];

/// Whether `name` chooses the row of `arch` at `size`: the architecture, or `arch@size`.
fn names(name: &str, (arch, size, _): (&str, usize, usize)) -> bool {
    name == arch || name == format!("{arch}@{size}")
}

pub(crate) fn run(root: &Path, only: &[String]) -> anyhow::Result<()> {
    if let Some(name) = only.iter().find(|name| !ROWS.into_iter().any(|row| names(name, row))) {
        let archs = ROWS.map(|row| row.0);
        let archs: Vec<&str> = archs.iter().enumerate().filter(|&(i, arch)| !archs[..i].contains(arch)).map(|(_, arch)| *arch).collect();
        bail!("no row {name:?}: expected an architecture ({}) or one of its rows, as resnet18@224", archs.join(", "));
    }
    let steps = super::bench_steps(10)?;
    // This machine's timings swing by up to 2x from run to run: each row alternates the two
    // sides this many times and compares their medians.
    let rounds = super::env_number("TRAINYARD_BENCH_ROUNDS", 3)?.max(1);
    let probe = super::build_probe(root)?;
    let python = torch_python(root)?;
    let script = root.join("../shared/bench/torch_vision.py");
    println!(
        "image classifier training (10 classes, Adam, train mode), CPU, samples/s, {steps} timed steps each, \
         median of {rounds} alternating rounds, this run:"
    );
    println!(
        "{:<14} {:<10} {:>5} {:>11} {:>11} {:>11} {:>15}",
        "architecture", "input", "batch", "Trainyard", "PyTorch", "ratio", "round ratios"
    );
    let chosen = |row| only.is_empty() || only.iter().any(|name| names(name, row));
    for (arch, size, batch) in ROWS.into_iter().filter(|&row| chosen(row)) {
        // The cnn trains in milliseconds a step: more steps make its time measurable.
        let ours_steps = if arch == "cnn" { steps * 20 } else { steps };
        let (data, samples) = if size == 32 { ("cifar", 2000) } else { ("images", 200) };
        let args = [
            "--arch",
            arch,
            "--data",
            data,
            "--size",
            &size.to_string(),
            "--samples",
            &samples.to_string(),
            "--batch",
            &batch.to_string(),
            "--warmup",
            "2",
            "--steps",
            &ours_steps.to_string(),
            "--speed",
        ];
        let torch_args = [
            script.to_string_lossy().into_owned(),
            "--batch".into(),
            batch.to_string(),
            "--size".into(),
            size.to_string(),
            "--steps".into(),
            ours_steps.to_string(),
            arch.into(),
        ];
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            eprintln!("$ {} {}", probe.display(), args.join(" "));
            let out = Command::new(&probe).args(args).current_dir(root).output().context("running memory_probe")?;
            if !out.status.success() {
                bail!("memory_probe {arch} failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let line = json_lines(&out.stdout).pop().context("no result from memory_probe")?;
            ours.push(field(&line, "samples_per_s").with_context(|| format!("no samples_per_s in {line}"))?);
            eprintln!("$ {} {}", python.display(), torch_args.join(" "));
            let reference = Command::new(&python).args(&torch_args).current_dir(root).output().context("running the PyTorch reference")?;
            if !reference.status.success() {
                bail!("the PyTorch reference failed: {}", String::from_utf8_lossy(&reference.stderr));
            }
            let torch = json_lines(&reference.stdout).pop().context("no result from the PyTorch reference")?;
            theirs.push(field(&torch, "samples_per_s").with_context(|| format!("no samples_per_s in {torch}"))?);
        }
        let (lo, hi) = super::ratio_range(&ours, &theirs);
        let (ours, theirs) = (super::median(&mut ours), super::median(&mut theirs));
        let input = format!("{size}x{size}x3");
        println!(
            "{arch:<14} {input:<10} {batch:>5} {ours:>11.1} {theirs:>11.1} {:>10.2}x {:>7.2}-{:.2}x",
            ours / theirs.max(f64::MIN_POSITIVE),
            lo,
            hi
        );
    }
    println!("(ratio: Trainyard's median samples/s over PyTorch's; above 1 means faster than PyTorch)");
    Ok(())
}
