//! `cargo xtask bench memory`: the peak memory of training each architecture against the
//! estimate admission relies on, and whether memory stays flat once a run is warm.
//!
//! It builds the `memory_probe` example in release and runs it once per row below, each in a
//! fresh process so that one run's peak (`VmHWM`) is not another's. A row trains on real data:
//! the bundled digits (8x8x1 images, or the 64-column table for `mlp`), the bundled Tempest text
//! for `custom_ai_model`, or a generated CIFAR-10 batch of 32x32x3 images. Warm-up ends after 20
//! steps and one finished epoch; `TRAINYARD_BENCH_STEPS` (default 300) more steps then run, and
//! growth is the resident set's change over them.

use std::{path::Path, process::Command};

use anyhow::{bail, Context};

use super::{field, json_lines};

/// Architecture, data (`table`, `text`, `digits`, `cifar`) and batch size of each row.
const ROWS: [(&str, &str, u32); 9] = [
    ("mlp", "table", 32),
    ("cnn", "digits", 32),
    ("cnn", "cifar", 32),
    ("resnet18", "digits", 32),
    ("resnet50", "digits", 32),
    ("vgg16", "digits", 32),
    ("vgg16", "cifar", 16),
    ("mobilenet_v2", "digits", 32),
    ("custom_ai_model", "text", 16),
];

pub(crate) fn run(root: &Path) -> anyhow::Result<()> {
    let steps = super::bench_steps(300)?;
    let probe = super::build_probe(root)?;
    println!("training memory on the CPU, {steps} steps after warm-up, one fresh process per row:");
    println!(
        "{:<16} {:<8} {:>5} {:>6} {:>9} {:>9} {:>12} {:>9}",
        "architecture", "input", "batch", "steps", "peak MB", "growth %", "estimate MB", "est/peak"
    );
    for (arch, data, batch) in ROWS {
        let args = ["--arch", arch, "--data", data, "--batch", &batch.to_string(), "--steps", &steps.to_string()];
        eprintln!("$ {} {}", probe.display(), args.join(" "));
        let out = Command::new(&probe).args(args).current_dir(root).output().context("running memory_probe")?;
        if !out.status.success() {
            bail!("memory_probe {arch} {data} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let line = json_lines(&out.stdout).pop().context("no result from memory_probe")?;
        let input = line.split("\"input\"").nth(1).and_then(|r| r.split('"').nth(1)).unwrap_or("?").to_owned();
        let get = |key: &str| field(&line, key).with_context(|| format!("no {key} in {line}"));
        let (peak, estimate) = (get("peak_rss_mb")?, get("estimate_host_mb")?);
        println!(
            "{arch:<16} {input:<8} {batch:>5} {:>6} {peak:>9.0} {:>9.1} {estimate:>12.0} {:>9.2}",
            get("steps")?,
            get("growth_percent")?,
            estimate / peak.max(1.0)
        );
    }
    println!("(growth: resident set at the end against after warm-up; est/peak above 1 means the estimate covers the peak)");
    Ok(())
}
