//! Learning-rate schedules, with PyTorch's semantics for the schedulers of the same names, and
//! an optional linear warm-up before them.
//!
//! With `warmup_epochs = W`, epoch `k` of the first `W` trains at `lr * k / W`; the schedule
//! then runs over the remaining `N = epochs - W` epochs, its own epoch index `i` counting from 0:
//! - `step`: `lr * gamma^floor(i / step_size)` (`StepLR`);
//! - `exponential`: `lr * gamma^i` (`ExponentialLR`);
//! - `cosine`: `min_lr + (lr - min_lr) (1 + cos(pi i / N)) / 2` (`CosineAnnealingLR`, `T_max = N`);
//! - `onecycle`: per batch over the `N` epochs' batches, from `max_lr / 25` up to `max_lr` over
//!   the first 30% and down to `max_lr / 25 / 10^4` by cosine annealing (`OneCycleLR`'s
//!   defaults); the session's `learning_rate` is not used;
//! - `plateau`: `lr` until the validation loss (the training loss without validation data) has
//!   not improved (by a relative `1e-4`) for more than `patience` epochs, then times `factor`,
//!   and so on (`ReduceLROnPlateau`).
//!
//! Only `plateau` has state beyond the epoch and batch; [`PlateauState`] is what checkpoints
//! save, so a resumed run continues the schedule exactly.

use std::f64::consts::PI;

use serde::{Deserialize, Serialize};

use crate::metrics::EpochMetrics;

/// `OneCycleLR`'s defaults.
const ONECYCLE_PCT_START: f64 = 0.3;
const ONECYCLE_DIV: f64 = 25.0;
const ONECYCLE_FINAL_DIV: f64 = 1e4;
/// `ReduceLROnPlateau`'s default relative threshold.
const PLATEAU_THRESHOLD: f64 = 1e-4;

/// A schedule's kind and its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LrScheduleKind {
    Step { step_size: u32, gamma: f64 },
    Exponential { gamma: f64 },
    Cosine { min_lr: f64 },
    Onecycle { max_lr: f64 },
    Plateau { factor: f64, patience: u32 },
}

impl LrScheduleKind {
    pub const NAMES: &'static [&'static str] = &["step", "exponential", "cosine", "onecycle", "plateau"];

    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::Step { .. } => "step",
            Self::Exponential { .. } => "exponential",
            Self::Cosine { .. } => "cosine",
            Self::Onecycle { .. } => "onecycle",
            Self::Plateau { .. } => "plateau",
        }
    }
}

/// `lr_schedule` as configured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    #[serde(flatten)]
    pub kind: LrScheduleKind,
    #[serde(default)]
    pub warmup_epochs: u32,
}

/// What `plateau` remembers between epochs.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct PlateauState {
    pub best: Option<f64>,
    pub bad_epochs: u32,
    /// How many times the rate was cut.
    pub reductions: u32,
}

/// The learning rate of every batch of a session.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrScheduler {
    schedule: Option<LrSchedule>,
    base: f64,
    epochs: u32,
    pub plateau: PlateauState,
}

impl LrScheduler {
    /// The scheduler of a session training `epochs` epochs at `base` (its `learning_rate`).
    #[must_use]
    pub fn new(schedule: Option<LrSchedule>, base: f64, epochs: u32) -> Self {
        Self { schedule, base, epochs, plateau: PlateauState::default() }
    }

    /// The rate of batch `batch` (from 0) of `batches` in epoch `epoch` (from 1).
    #[must_use]
    pub fn rate(&self, epoch: u32, batch: usize, batches: usize) -> f64 {
        let Some(s) = self.schedule else { return self.base };
        let e = epoch.saturating_sub(1);
        if e < s.warmup_epochs {
            let start = match s.kind {
                LrScheduleKind::Onecycle { max_lr } => max_lr / ONECYCLE_DIV,
                _ => self.base,
            };
            return start * f64::from(e + 1) / f64::from(s.warmup_epochs);
        }
        let i = e - s.warmup_epochs;
        let n = self.epochs.saturating_sub(s.warmup_epochs).max(1);
        match s.kind {
            LrScheduleKind::Step { step_size, gamma } => self.base * gamma.powf(f64::from(i / step_size.max(1))),
            LrScheduleKind::Exponential { gamma } => self.base * gamma.powf(f64::from(i)),
            LrScheduleKind::Cosine { min_lr } => min_lr + (self.base - min_lr) * (1.0 + (PI * f64::from(i) / f64::from(n)).cos()) / 2.0,
            LrScheduleKind::Onecycle { max_lr } => onecycle(max_lr, i as usize * batches.max(1) + batch, n as usize * batches.max(1)),
            LrScheduleKind::Plateau { factor, .. } => self.base * factor.powf(f64::from(self.plateau.reductions)),
        }
    }

    /// Tells the scheduler an epoch ended with `m` (for `plateau`); returns the message to log
    /// when the rate was cut.
    pub fn epoch_ended(&mut self, m: &EpochMetrics) -> Option<String> {
        let Some(LrSchedule { kind: LrScheduleKind::Plateau { factor, patience }, warmup_epochs }) = self.schedule else { return None };
        if m.epoch <= warmup_epochs {
            return None;
        }
        let value = m.val_loss.unwrap_or(m.loss);
        if !value.is_finite() {
            return None;
        }
        let p = &mut self.plateau;
        if p.best.is_none_or(|best| value < best * (1.0 - PLATEAU_THRESHOLD)) {
            p.best = Some(value);
            p.bad_epochs = 0;
            return None;
        }
        p.bad_epochs += 1;
        if p.bad_epochs <= patience {
            return None;
        }
        p.bad_epochs = 0;
        p.reductions += 1;
        let lr = self.base * factor.powf(f64::from(p.reductions));
        Some(format!("plateau: no improvement for {} epochs; learning rate now {lr:.3e}", patience + 1))
    }
}

/// `OneCycleLR` (cosine annealing, two phases) at step `step` of `total`.
fn onecycle(max_lr: f64, step: usize, total: usize) -> f64 {
    let initial = max_lr / ONECYCLE_DIV;
    let min = initial / ONECYCLE_FINAL_DIV;
    #[allow(clippy::cast_precision_loss)]
    let (step, total) = (step as f64, total.max(2) as f64);
    let end_up = (ONECYCLE_PCT_START * total - 1.0).max(1.0);
    let anneal = |start: f64, end: f64, pct: f64| end + (start - end) / 2.0 * (1.0 + (PI * pct.clamp(0.0, 1.0)).cos());
    if step <= end_up {
        anneal(initial, max_lr, step / end_up)
    } else {
        anneal(max_lr, min, (step - end_up) / (total - 1.0 - end_up).max(1.0))
    }
}

#[cfg(test)]
mod tests {
    use quickcheck::{Gen, QuickCheck};

    use super::*;

    fn sched(kind: LrScheduleKind, warmup_epochs: u32) -> Option<LrSchedule> {
        Some(LrSchedule { kind, warmup_epochs })
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1e-12)
    }

    #[test]
    fn per_epoch_schedules_follow_pytorch() {
        let s = LrScheduler::new(sched(LrScheduleKind::Step { step_size: 3, gamma: 0.5 }, 0), 0.1, 10);
        let rates: Vec<f64> = (1..=7).map(|e| s.rate(e, 0, 4)).collect();
        assert_eq!(rates, [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025]);
        let s = LrScheduler::new(sched(LrScheduleKind::Exponential { gamma: 0.9 }, 2), 0.1, 10);
        let rates: Vec<f64> = (1..=4).map(|e| s.rate(e, 0, 4)).collect();
        assert!(close(rates[0], 0.05) && close(rates[1], 0.1) && close(rates[2], 0.1) && close(rates[3], 0.09), "{rates:?}");
        let s = LrScheduler::new(sched(LrScheduleKind::Cosine { min_lr: 0.001 }, 0), 0.1, 4);
        let rates: Vec<f64> = (1..=4).map(|e| s.rate(e, 0, 4)).collect();
        assert!(close(rates[0], 0.1) && close(rates[2], 0.0505) && rates[3] > 0.001, "{rates:?}");
        assert_eq!(LrScheduler::new(None, 0.02, 5).rate(3, 1, 4), 0.02);
    }

    #[test]
    fn onecycle_rises_to_max_lr_then_falls_far_below_its_start() {
        let s = LrScheduler::new(sched(LrScheduleKind::Onecycle { max_lr: 0.1 }, 0), 0.001, 10);
        let rates: Vec<f64> = (1..=10).flat_map(|e| (0..10).map(move |b| (e, b))).map(|(e, b)| s.rate(e, b, 10)).collect();
        assert!(close(rates[0], 0.004), "starts at max_lr / 25: {}", rates[0]);
        let peak = rates.iter().copied().fold(0.0, f64::max);
        let at = rates.iter().position(|r| *r == peak).unwrap();
        assert!(close(peak, 0.1) && (28..=30).contains(&at), "peak {peak} at {at}");
        assert!(close(rates[99], 0.004 / 1e4), "ends at initial / 1e4: {}", rates[99]);
        assert!(rates[..=at].windows(2).all(|w| w[0] <= w[1]) && rates[at..].windows(2).all(|w| w[0] >= w[1]));
    }

    fn epoch(n: u32, val_loss: f64) -> EpochMetrics {
        crate::testing::epoch_metrics(n, 1.0, Some(val_loss))
    }

    #[test]
    fn plateau_cuts_after_more_than_patience_bad_epochs() {
        let mut s = LrScheduler::new(sched(LrScheduleKind::Plateau { factor: 0.5, patience: 1 }, 0), 0.1, 20);
        let mut rates = Vec::new();
        for (n, v) in [1.0, 0.9, 0.95, 0.95, 0.95, 0.8, 0.85].into_iter().enumerate() {
            let n = n as u32 + 1;
            rates.push(s.rate(n, 0, 1));
            s.epoch_ended(&epoch(n, v));
        }
        assert_eq!(rates, [0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05]);
        assert_eq!(s.rate(8, 0, 1), 0.05);
    }

    // Property 74: every schedule gives finite, positive rates for every batch of every epoch,
    // never above its peak (the learning rate, or onecycle's max_lr), and a warm-up rises
    // linearly to where the schedule starts.
    #[test]
    fn prop74_rates_are_positive_bounded_and_warmups_rise() {
        fn prop(kind: u8, a: u8, b: u8, warmup: u8, epochs: u8, batches: u8) -> bool {
            let epochs = u32::from(epochs % 30) + 1;
            let warmup_epochs = u32::from(warmup % 5).min(epochs - 1);
            let gamma = f64::from(a % 100 + 1) / 100.0;
            let kind = match kind % 5 {
                0 => LrScheduleKind::Step { step_size: u32::from(b % 7) + 1, gamma },
                1 => LrScheduleKind::Exponential { gamma },
                2 => LrScheduleKind::Cosine { min_lr: 0.01 * gamma * 0.5 },
                3 => LrScheduleKind::Onecycle { max_lr: gamma },
                _ => LrScheduleKind::Plateau { factor: gamma.min(0.99), patience: u32::from(b % 4) },
            };
            let base = 0.01;
            let peak = match kind {
                LrScheduleKind::Onecycle { max_lr } => max_lr,
                _ => base,
            };
            let mut s = LrScheduler::new(Some(LrSchedule { kind, warmup_epochs }), base, epochs);
            let batches = usize::from(batches % 9) + 1;
            let mut warm = Vec::new();
            for e in 1..=epochs {
                for b in 0..batches {
                    let r = s.rate(e, b, batches);
                    if !(r.is_finite() && r > 0.0 && r <= peak * (1.0 + 1e-9)) {
                        return false;
                    }
                }
                if e <= warmup_epochs {
                    warm.push(s.rate(e, 0, batches));
                }
                s.epoch_ended(&epoch(e, 1.0 + f64::from(e % 3)));
            }
            warm.windows(2).all(|w| w[0] < w[1]) && warm.iter().enumerate().all(|(k, r)| close(*r, warm[0] * (k + 1) as f64))
        }
        QuickCheck::new().tests(400).rng(Gen::new(60)).quickcheck(prop as fn(u8, u8, u8, u8, u8, u8) -> bool);
    }
}
