//! Hyperparameter sweeps, the pure part: the search space, the trials a seed gives, and the
//! pruners that stop weak trials early.
//!
//! A sweep runs `trials` ordinary training sessions, each the `base` start config with one
//! point of the `space` applied. `random` search samples each dimension from its distribution
//! with a generator seeded by `seed` (the same seed gives the same trials); `grid` search runs
//! every combination of `choice` dimensions. Trials are judged by one metric after every
//! epoch: `asha` (asynchronous successive halving) stops a trial at a rung (`epochs / 3^k`)
//! unless it is in the best third of the trials that reached that rung (the best one while
//! fewer than three have, as Optuna's `SuccessiveHalvingPruner`); `median` stops it once its
//! best value so far is worse than the median of the other trials at the same epoch (from the
//! second epoch, with at least two others there, as Optuna's `MedianPruner`).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::{
    charts::Metric,
    config::{ConfigErrors, TrainingConfig, TrainingRequest},
    ids::{ModelName, SessionId, SweepId},
    metrics::EpochMetrics,
    selection::Mode,
};

/// The most trials a sweep may run.
pub const MAX_TRIALS: u32 = 100;
/// The most dimensions a search space may have.
pub const MAX_DIMENSIONS: usize = 16;
/// ASHA's reduction factor: a third of the trials at a rung go on.
pub const ASHA_ETA: u32 = 3;
/// Other trials the median pruner needs at an epoch before it judges.
pub const MEDIAN_STARTUP_TRIALS: usize = 2;
/// The suffix of the name under which a sweep's best trial's model is registered.
pub const BEST_SUFFIX: &str = "-best";

/// The start-config fields a sweep may vary.
pub const SWEEPABLE: &[&str] = &[
    "learning_rate",
    "batch_size",
    "epochs",
    "optimizer",
    "momentum",
    "weight_decay",
    "clip_grad_norm",
    "label_smoothing",
    "dropout",
    "hidden_sizes",
    "embedding_dim",
    "hidden_size",
    "num_layers",
    "sequence_length",
    "seed",
];

/// How one dimension's values are drawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dist {
    /// Uniform between the bounds.
    Uniform(f64, f64),
    /// Uniform in the logarithm between the bounds (both above 0).
    LogUniform(f64, f64),
    /// A whole number between the bounds, both included.
    IntUniform(i64, i64),
    /// One of the values, each as likely.
    Choice(Vec<Value>),
}

impl Dist {
    pub const NAMES: &'static [&'static str] = &["uniform", "log_uniform", "int_uniform", "choice"];

    /// Parses `{"log_uniform": [1e-4, 1e-1]}` and the like.
    fn parse(raw: &Value) -> Result<Self, String> {
        let shape = || format!("must be an object with one of {}, such as {{\"uniform\": [0, 0.5]}}", Self::NAMES.join(", "));
        let Some((kind, args)) = raw.as_object().filter(|o| o.len() == 1).and_then(|o| o.iter().next()) else {
            return Err(shape());
        };
        let list = args.as_array().ok_or_else(|| format!("{kind} takes a list"))?;
        let bounds = || -> Result<(f64, f64), String> {
            match list.as_slice() {
                [a, b] => match (a.as_f64(), b.as_f64()) {
                    (Some(a), Some(b)) if a <= b && (b - a).is_finite() => Ok((a, b)),
                    _ => Err(format!("{kind} takes [low, high] with low <= high")),
                },
                _ => Err(format!("{kind} takes [low, high]")),
            }
        };
        match kind.as_str() {
            "uniform" => bounds().map(|(a, b)| Self::Uniform(a, b)),
            "log_uniform" => match bounds()? {
                (a, b) if a > 0.0 => Ok(Self::LogUniform(a, b)),
                _ => Err("log_uniform takes bounds above 0".to_owned()),
            },
            "int_uniform" => {
                let (a, b) = bounds()?;
                #[allow(clippy::cast_possible_truncation)]
                let whole = |x: f64| (x.fract() == 0.0 && x.abs() < 1e15).then_some(x as i64);
                match (whole(a), whole(b)) {
                    (Some(a), Some(b)) => Ok(Self::IntUniform(a, b)),
                    _ => Err("int_uniform takes whole-number bounds".to_owned()),
                }
            }
            "choice" if !list.is_empty() && list.len() <= 100 => Ok(Self::Choice(list.clone())),
            "choice" => Err("choice takes 1 to 100 values".to_owned()),
            _ => Err(shape()),
        }
    }

    /// The value at `u` in [0, 1).
    fn draw(&self, u: f64) -> Value {
        match self {
            Self::Uniform(a, b) => Value::from(a + u * (b - a)),
            Self::LogUniform(a, b) => Value::from((a.ln() + u * (b.ln() - a.ln())).exp()),
            #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
            Self::IntUniform(a, b) => Value::from((*a + (u * ((b - a + 1) as f64)) as i64).min(*b)),
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
            Self::Choice(values) => values[((u * values.len() as f64) as usize).min(values.len() - 1)].clone(),
        }
    }
}

/// How the trials' points are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Search {
    Random,
    Grid,
}

/// What stops weak trials early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pruner {
    Asha,
    Median,
    None,
}

macro_rules! named {
    ($t:ty, $($v:ident => $s:literal),+) => {
        impl $t {
            pub const NAMES: &'static [&'static str] = &[$($s),+];

            #[must_use]
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),+ }
            }

            #[must_use]
            pub fn parse(raw: &str) -> Option<Self> {
                match raw.trim().to_ascii_lowercase().as_str() { $($s => Some(Self::$v),)+ _ => None }
            }
        }
    };
}
named!(Search, Random => "random", Grid => "grid");
named!(Pruner, Asha => "asha", Median => "median", None => "none");
named!(SweepState, Running => "running", Completed => "completed", Stopped => "stopped", Failed => "failed");

/// A sweep request as received.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SweepRequest {
    pub name: Option<String>,
    /// The start config every trial begins from.
    pub base: TrainingRequest,
    /// Field name to distribution, as JSON.
    pub space: Option<Map<String, Value>>,
    pub search: Option<String>,
    pub trials: Option<i64>,
    pub metric: Option<String>,
    pub mode: Option<String>,
    pub pruner: Option<String>,
    pub seed: Option<u64>,
}

/// One dimension of the search space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dimension {
    pub field: String,
    pub dist: Dist,
}

/// A validated sweep: what it varies, how, and how trials are judged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepSpec {
    /// Its name; its best trial's model is registered as `<name>-best`.
    pub name: ModelName,
    pub space: Vec<Dimension>,
    pub search: Search,
    pub trials: u32,
    pub metric: Metric,
    pub mode: Mode,
    pub pruner: Pruner,
    pub seed: u64,
}

/// A validated sweep with each trial's config, ready to start.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepPlan {
    pub spec: SweepSpec,
    /// Each trial's point of the space and its config, in trial order.
    pub trials: Vec<(Map<String, Value>, TrainingConfig)>,
}

impl SweepSpec {
    /// Validates a sweep request and every trial's config, naming every failing field at once
    /// (a trial's config errors as `trial N: field`).
    ///
    /// # Errors
    /// [`ConfigErrors`] listing each problem.
    pub fn plan(req: &SweepRequest) -> Result<SweepPlan, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let name = match req.name.as_deref().map(ModelName::new) {
            None => {
                errors.push("name", "is required");
                None
            }
            Some(Err(e)) => {
                errors.push("name", e.to_string());
                None
            }
            Some(Ok(n)) if n.as_str().len() + BEST_SUFFIX.len() > crate::ids::MAX_NAME_LEN => {
                errors.push("name", format!("must leave room for '{BEST_SUFFIX}' in a model name"));
                None
            }
            Some(Ok(n)) => Some(n),
        };
        let mut space = Vec::new();
        match req.space.as_ref().filter(|s| !s.is_empty()) {
            None => errors.push("space", format!("is required: field names ({}) to distributions", SWEEPABLE.join(", "))),
            Some(s) if s.len() > MAX_DIMENSIONS => errors.push("space", format!("has {} dimensions; at most {MAX_DIMENSIONS}", s.len())),
            Some(s) => {
                for (field, raw) in s {
                    let at = format!("space.{field}");
                    if !SWEEPABLE.contains(&field.as_str()) {
                        errors.push(&at, format!("cannot be swept; one of {}", SWEEPABLE.join(", ")));
                        continue;
                    }
                    match Dist::parse(raw) {
                        Ok(dist) => space.push(Dimension { field: field.clone(), dist }),
                        Err(why) => errors.push(&at, why),
                    }
                }
            }
        }
        let search = parse_enum(&mut errors, "search", req.search.as_deref(), Search::parse, Search::NAMES).unwrap_or(Search::Random);
        let pruner = parse_enum(&mut errors, "pruner", req.pruner.as_deref(), Pruner::parse, Pruner::NAMES).unwrap_or(Pruner::Asha);
        let metric =
            parse_enum(&mut errors, "metric", req.metric.as_deref(), Metric::parse, &["loss", "accuracy", "val_loss", "val_accuracy"])
                .unwrap_or(Metric::ValAccuracy);
        let mode = parse_enum(&mut errors, "mode", req.mode.as_deref(), Mode::parse, Mode::NAMES).unwrap_or_else(|| Mode::of(metric));
        let grid_size = space.iter().try_fold(1u64, |n, d| match &d.dist {
            Dist::Choice(v) => Some(n.saturating_mul(v.len() as u64)),
            _ => None,
        });
        let trials = match (search, req.trials, grid_size) {
            (Search::Grid, _, None) => {
                errors.push("search", "grid takes only choice dimensions");
                0
            }
            (Search::Grid, requested, Some(size)) => {
                let cap = requested.unwrap_or(i64::from(MAX_TRIALS));
                let n = size.min(u64::try_from(cap).unwrap_or(0));
                if size > u64::from(MAX_TRIALS) && requested.is_none() {
                    errors.push("trials", format!("the grid has {size} points; at most {MAX_TRIALS} trials run, so say how many"));
                }
                u32::try_from(n).unwrap_or(0)
            }
            (Search::Random, None, _) => {
                errors.push("trials", "is required for a random search");
                0
            }
            (Search::Random, Some(n), _) => u32::try_from(n).unwrap_or(0),
        };
        if !(1..=MAX_TRIALS).contains(&trials) && errors.0.iter().all(|e| e.field != "trials" && e.field != "search") {
            errors.push("trials", format!("must be a whole number from 1 to {MAX_TRIALS}, got {}", req.trials.unwrap_or(0)));
        }
        if pruner != Pruner::None && matches!(metric, Metric::ValLoss | Metric::ValAccuracy) && req.base.validation_split == Some(0.0) {
            errors.push("metric", format!("{} needs validation data; base.validation_split is 0", metric.as_str()));
        }
        let (Some(name), true) = (name, errors.is_empty()) else { return Err(errors) };
        let spec = SweepSpec { name, space, search, trials, metric, mode, pruner, seed: req.seed.unwrap_or(crate::config::DEFAULT_SEED) };
        let mut planned = Vec::new();
        for (number, point) in spec.points().into_iter().enumerate() {
            let mut request = req.base.clone();
            for (field, value) in &point {
                if let Err(why) = apply(&mut request, field, value) {
                    errors.push(&format!("space.{field}"), why);
                }
            }
            match TrainingConfig::validate(&request) {
                Ok(config) => planned.push((point, config)),
                Err(e) => {
                    for err in e.0 {
                        errors.push(&format!("trial {}: {}", number + 1, err.field), err.message);
                    }
                }
            }
            if errors.0.len() > 20 {
                break;
            }
        }
        if errors.is_empty() {
            Ok(SweepPlan { spec, trials: planned })
        } else {
            Err(errors)
        }
    }

    /// Each trial's point of the space, in trial order: the same spec gives the same points.
    #[must_use]
    pub fn points(&self) -> Vec<Map<String, Value>> {
        match self.search {
            Search::Random => {
                let mut rng = SplitMix64(self.seed);
                (0..self.trials).map(|_| self.space.iter().map(|d| (d.field.clone(), d.dist.draw(rng.unit()))).collect()).collect()
            }
            Search::Grid => {
                // Only the points that run: point i is i written in the mixed radix of the
                // choices' lengths (the last dimension varying fastest), so a huge grid costs
                // no more than its trials.
                let choices: Vec<(&String, &Vec<Value>)> = self
                    .space
                    .iter()
                    .filter_map(|d| match &d.dist {
                        Dist::Choice(values) => Some((&d.field, values)),
                        _ => None,
                    })
                    .collect();
                let size = choices.iter().try_fold(1u64, |n, (_, v)| n.checked_mul(v.len() as u64)).unwrap_or(u64::MAX);
                (0..u64::from(self.trials).min(size))
                    .map(|i| {
                        let mut rest = i;
                        let mut point = Map::new();
                        for (field, values) in choices.iter().rev() {
                            let n = values.len() as u64;
                            point.insert((*field).clone(), values[usize::try_from(rest % n).unwrap_or(0)].clone());
                            rest /= n;
                        }
                        point
                    })
                    .collect()
            }
        }
    }

    /// The name the best trial's model is registered under.
    #[must_use]
    pub fn best_model_name(&self) -> ModelName {
        // Checked at validation to fit; the suffix keeps the name valid.
        ModelName::new(format!("{}{BEST_SUFFIX}", self.name)).unwrap_or_else(|_| self.name.clone())
    }

    /// Why the trial `trial` should stop after `epoch` (of `epochs`), if it should, given every
    /// trial's values of the metric so far.
    #[must_use]
    pub fn prune(&self, seen: &Observations, trial: &SessionId, epoch: u32, epochs: u32) -> Option<String> {
        let mine = seen.0.get(trial)?;
        let value = *mine.get(&epoch)?;
        let metric = self.metric.as_str();
        let worse = |a: f64, b: f64| match self.mode {
            Mode::Min => a > b,
            Mode::Max => a < b,
        };
        let side = match self.mode {
            Mode::Min => "above",
            Mode::Max => "below",
        };
        match self.pruner {
            Pruner::None => None,
            Pruner::Asha => {
                if epoch >= epochs || !asha_rungs(epochs).contains(&epoch) {
                    return None;
                }
                let mut at_rung: Vec<f64> = seen.0.values().filter_map(|v| v.get(&epoch).copied()).collect();
                // Best first: a total order, ties included.
                at_rung.sort_by(|a, b| match self.mode {
                    Mode::Min => a.total_cmp(b),
                    Mode::Max => b.total_cmp(a),
                });
                let n = at_rung.len();
                let keep = (n / ASHA_ETA as usize).max(1);
                let threshold = at_rung[keep - 1];
                worse(value, threshold).then(|| {
                    format!("{PRUNED}{epoch}: {metric} {value:.4} {side} {threshold:.4}, the best {keep} of {n} trials at this rung (asha)")
                })
            }
            Pruner::Median => {
                if epoch < 2 || epoch >= epochs {
                    return None;
                }
                let mut others: Vec<f64> =
                    seen.0.iter().filter(|(id, _)| *id != trial).filter_map(|(_, v)| v.get(&epoch).copied()).collect();
                if others.len() < MEDIAN_STARTUP_TRIALS {
                    return None;
                }
                others.sort_by(f64::total_cmp);
                let mid = others.len() / 2;
                let median = if others.len().is_multiple_of(2) { (others[mid - 1] + others[mid]) / 2.0 } else { others[mid] };
                let best = mine.range(..=epoch).map(|(_, v)| *v).reduce(|a, b| if worse(a, b) { b } else { a })?;
                worse(best, median).then(|| {
                    format!(
                        "{PRUNED}{epoch}: {metric} {best:.4} {side} the median {median:.4} of {} other trials at this epoch (median)",
                        others.len()
                    )
                })
            }
        }
    }

    /// Whether score `a` beats score `b`.
    #[must_use]
    pub fn score_beats(&self, a: f64, b: f64) -> bool {
        match self.mode {
            Mode::Min => a < b,
            Mode::Max => a > b,
        }
    }

    /// A trial's score: its best value of the metric over its epochs.
    #[must_use]
    pub fn score(&self, values: &BTreeMap<u32, f64>) -> Option<(u32, f64)> {
        values.iter().map(|(e, v)| (*e, *v)).reduce(|a, b| match self.mode {
            Mode::Min if b.1 < a.1 => b,
            Mode::Max if b.1 > a.1 => b,
            _ => a,
        })
    }
}

/// How a pruned trial's `error_message` begins.
const PRUNED: &str = "pruned at epoch ";

/// The epoch a trial was pruned at, read from its session's `error_message`.
#[must_use]
pub fn pruned_at(message: &str) -> Option<u32> {
    message.strip_prefix(PRUNED)?.split(':').next()?.parse().ok()
}

/// ASHA's rungs for a run of `epochs`: `epochs / 3^k` for k = 1, 2, ... while at least 1.
#[must_use]
pub fn asha_rungs(epochs: u32) -> Vec<u32> {
    let mut rungs = Vec::new();
    let mut r = epochs / ASHA_ETA;
    while r >= 1 {
        if rungs.last() != Some(&r) {
            rungs.push(r);
        }
        r /= ASHA_ETA;
    }
    rungs.reverse();
    rungs
}

/// Every trial's values of the sweep metric, by epoch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observations(pub HashMap<SessionId, BTreeMap<u32, f64>>);

impl Observations {
    /// Records a trial's epoch; an epoch without the metric records nothing.
    pub fn record(&mut self, metric: Metric, trial: &SessionId, m: &EpochMetrics) {
        if let Some(v) = metric.value(m).filter(|v| v.is_finite()) {
            self.0.entry(trial.clone()).or_default().insert(m.epoch, v);
        }
    }
}

/// Where a sweep is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SweepState {
    Running,
    Completed,
    Stopped,
    Failed,
}

/// One trial: its number (from 1), its session and its point of the space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    pub number: u32,
    pub session_id: SessionId,
    pub params: Map<String, Value>,
}

/// The best trial so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestTrial {
    pub number: u32,
    pub session_id: SessionId,
    pub epoch: u32,
    pub value: f64,
}

/// A sweep as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sweep {
    pub id: SweepId,
    pub spec: SweepSpec,
    pub state: SweepState,
    pub trials: Vec<Trial>,
    pub created_at: OffsetDateTime,
    pub ended_at: Option<OffsetDateTime>,
    /// The best completed trial, once one has completed.
    pub best: Option<BestTrial>,
    /// The model registered for the best trial when the sweep ended.
    pub best_model: Option<ModelName>,
    /// What happened at its end, in words.
    pub message: Option<String>,
}

/// Which trial a session is, kept in its config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrialOf {
    pub sweep_id: SweepId,
    pub number: u32,
}

/// Sets a sweepable `field` of `req` to `value`.
fn apply(req: &mut TrainingRequest, field: &str, value: &Value) -> Result<(), String> {
    let float = || value.as_f64().ok_or_else(|| format!("{value} is not a number"));
    let int = || {
        value
            .as_i64()
            .or_else(|| value.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 1e15).map(|f| f as i64))
            .ok_or_else(|| format!("{value} is not a whole number"))
    };
    match field {
        "learning_rate" => req.learning_rate = Some(float()?),
        "momentum" => req.momentum = Some(float()?),
        "weight_decay" => req.weight_decay = Some(float()?),
        "clip_grad_norm" => req.clip_grad_norm = Some(float()?),
        "label_smoothing" => req.label_smoothing = Some(float()?),
        "dropout" => req.dropout = Some(float()?),
        "batch_size" => req.batch_size = Some(int()?),
        "epochs" => req.epochs = Some(int()?),
        "embedding_dim" => req.embedding_dim = Some(int()?),
        "hidden_size" => req.hidden_size = Some(int()?),
        "num_layers" => req.num_layers = Some(int()?),
        "sequence_length" => req.sequence_length = Some(int()?),
        "seed" => req.seed = Some(u64::try_from(int()?).map_err(|_| format!("{value} is not a seed"))?),
        "optimizer" => req.optimizer = Some(value.as_str().ok_or_else(|| format!("{value} is not an optimizer name"))?.to_owned()),
        "hidden_sizes" => {
            let sizes = value.as_array().and_then(|a| a.iter().map(Value::as_i64).collect::<Option<Vec<_>>>());
            req.hidden_sizes = Some(sizes.ok_or_else(|| format!("{value} is not a list of layer widths"))?);
        }
        _ => return Err(format!("cannot be swept; one of {}", SWEEPABLE.join(", "))),
    }
    Ok(())
}

fn parse_enum<T>(errors: &mut ConfigErrors, field: &str, raw: Option<&str>, parse: fn(&str) -> Option<T>, names: &[&str]) -> Option<T> {
    let raw = raw?;
    let parsed = parse(raw);
    if parsed.is_none() {
        errors.push(field, format!("must be one of {}, got {raw:?}", names.join(", ")));
    }
    parsed
}

/// A small seeded generator (Steele, Lea and Flood's SplitMix64): the trials of a seed must
/// not change with a dependency's version.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in [0, 1).
    #[allow(clippy::cast_precision_loss)]
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests;
