//! Times training steps of the owner's char-LSTM (embedding 128, two LSTM layers of 256,
//! sequences of 100, batch 16, Adam) on the CPU, as `shared/bench/torch_char_lstm.py` does for
//! PyTorch, and prints one JSON line per implementation: Trainyard's fused layers, then the
//! same model in plain candle operations per time step.
//!
//! ```text
//! cargo run --release -p trainyard-trainer-candle --example lstm_bench -- [TEXT_FILE]
//!     [--batch 16] [--seq 100] [--warmup 3] [--steps 20] [--naive-steps 2] [--no-naive]
//! ```
//!
//! Without a text file it trains on generated text. A step is forward, cross-entropy, backward
//! and an Adam update with learning rate 1e-3 (Trainyard's `TrainOptimizer`, as a training run
//! uses it). Like a run process (`trainyard run-session`) the benchmark sets up candle's CPU
//! threads and starts with the run's allocator settings.

use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use candle_nn::{loss::cross_entropy, VarBuilder, VarMap};
use trainyard_domain::config::Optimizer;
use trainyard_trainer_candle::{
    lstm::{CharLstm, CharLstmConfig, LstmImpl},
    TrainOptimizer,
};

type Error = Box<dyn std::error::Error>;

struct Args {
    text: Option<String>,
    batch: usize,
    seq: usize,
    warmup: usize,
    steps: usize,
    naive_steps: usize,
}

fn parse_args() -> Result<Args, Error> {
    let mut args = Args { text: None, batch: 16, seq: 100, warmup: 3, steps: 20, naive_steps: 2 };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> Result<usize, Error> { Ok(it.next().ok_or(format!("{name} needs a value"))?.parse()?) };
        match a.as_str() {
            "--batch" => args.batch = num("--batch")?,
            "--seq" => args.seq = num("--seq")?,
            "--warmup" => args.warmup = num("--warmup")?,
            "--steps" => args.steps = num("--steps")?,
            "--naive-steps" => args.naive_steps = num("--naive-steps")?,
            "--no-naive" => args.naive_steps = 0,
            flag if flag.starts_with("--") => return Err(format!("unknown option {flag}").into()),
            path => args.text = Some(path.to_owned()),
        }
    }
    if args.batch == 0 || args.seq == 0 || args.steps == 0 {
        return Err("--batch, --seq and --steps must be positive".into());
    }
    Ok(args)
}

/// xorshift64*: enough to pick batch windows reproducibly.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        usize::try_from(x % n as u64).unwrap_or(0)
    }
}

/// The text's characters as ids into its sorted character set, and the set's size.
fn encode(text: &str) -> (Vec<u32>, usize) {
    let mut chars: Vec<char> = text.chars().collect();
    chars.sort_unstable();
    chars.dedup();
    let ids = text.chars().map(|c| u32::try_from(chars.binary_search(&c).unwrap_or(0)).unwrap_or(0)).collect();
    (ids, chars.len())
}

/// Generated text with a vocabulary near the owner's (about 65 characters).
fn generated_text() -> String {
    let alphabet: Vec<char> = ('a'..='z').chain('A'..='Z').chain(" .,;:!?'\n-&3".chars()).collect();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    (0..100_000).map(|_| alphabet[rng.below(alphabet.len())]).collect()
}

/// Runs `warmup + steps` training steps of `imp`; the mean time per measured step, the first and
/// last measured losses, and the mean time of the forward, backward and optimizer parts.
fn run(imp: LstmImpl, data: &[u32], vocab: usize, args: &Args, warmup: usize, steps: usize) -> Result<(f64, f32, f32, [f64; 3]), Error> {
    let device = Device::Cpu;
    let cfg = CharLstmConfig::with_vocab(vocab);
    let varmap = VarMap::new();
    let model = CharLstm::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, &device), 0)?;
    let vars = {
        let data = varmap.data().lock().map_err(|_| "the variables' lock is poisoned")?;
        let mut vars: Vec<_> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    };
    let mut opt = TrainOptimizer::new(Optimizer::Adam, vars, 1e-3, 0.0);
    let mut rng = Rng(0x5EED);
    let (b, t) = (args.batch, args.seq);
    let mut losses = Vec::new();
    let mut parts = [Duration::ZERO; 3];
    let mut total = Duration::ZERO;
    for i in 0..warmup + steps {
        let (mut x, mut y) = (Vec::with_capacity(b * t), Vec::with_capacity(b * t));
        for _ in 0..b {
            let s = rng.below(data.len() - t - 1);
            x.extend_from_slice(&data[s..s + t]);
            y.extend_from_slice(&data[s + 1..s + t + 1]);
        }
        let x = Tensor::from_vec(x, (b, t), &device)?;
        let y = Tensor::from_vec(y, b * t, &device)?;
        let t0 = Instant::now();
        let logits = model.forward_with(&x, imp)?.reshape((b * t, vocab))?;
        let loss = cross_entropy(&logits, &y)?;
        let value = loss.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        let t2 = Instant::now();
        opt.step(&grads)?;
        let t3 = Instant::now();
        if i >= warmup {
            total += t3 - t0;
            for (p, d) in parts.iter_mut().zip([t1 - t0, t2 - t1, t3 - t2]) {
                *p += d;
            }
            losses.push(value);
        }
    }
    #[allow(clippy::cast_precision_loss)]
    let per = |d: Duration| d.as_secs_f64() * 1e3 / steps as f64;
    Ok((per(total), losses[0], losses[losses.len() - 1], parts.map(per)))
}

fn main() -> Result<(), Error> {
    // As the run process does (`trainyard run-session`).
    trainyard_trainer_candle::train_like_a_run_process()?;
    let args = parse_args()?;
    let text = match &args.text {
        Some(path) => std::fs::read_to_string(path)?,
        None => generated_text(),
    };
    let (data, vocab) = encode(&text);
    if data.len() <= args.seq + 1 {
        return Err(format!("the text has {} characters, fewer than one sequence of {} plus one", data.len(), args.seq).into());
    }
    let runs = [("trainyard", LstmImpl::Fused, args.warmup, args.steps), ("candle-naive", LstmImpl::Naive, 1, args.naive_steps)];
    for (name, imp, warmup, steps) in runs {
        if steps == 0 {
            continue;
        }
        // On a worker of rayon's pool, as `CandleTrainer::train` runs a session.
        let (ms, first, last, [fwd, bwd, opt]) = rayon::scope(|_| run(imp, &data, vocab, &args, warmup, steps).map_err(|e| e.to_string()))?;
        #[allow(clippy::cast_precision_loss)]
        let per_s = args.batch as f64 * 1e3 / ms;
        println!(
            "{{\"impl\":\"{name}\",\"ms_per_step\":{ms:.2},\"sequences_per_s\":{per_s:.1},\"batch\":{},\"seq\":{},\"vocab\":{vocab},\"threads\":{},\"steps\":{steps},\"forward_ms\":{fwd:.2},\"backward_ms\":{bwd:.2},\"optimizer_ms\":{opt:.2},\"first_loss\":{first:.4},\"last_loss\":{last:.4}}}",
            args.batch,
            args.seq,
            rayon::current_num_threads(),
        );
    }
    Ok(())
}
