//! Which epoch's model a session keeps, and when it stops early.
//!
//! A session is judged after every epoch by one metric ([`Selection`]): its early-stopping
//! metric when it has one, else `val_loss` when it holds data out, else `loss`. The best epoch
//! is the one with the best value so far (lowest for losses, highest for accuracies); the run
//! stops early when `patience` epochs in a row fail to improve on the reference value by more
//! than `min_delta` (as PyTorch Lightning's `EarlyStopping`). With `keep: best` the model saved
//! is the best epoch's. The trainer and the session manager run the same [`Tracker`] over the
//! same epochs, so the status and the model agree.

use serde::{Deserialize, Serialize};

use crate::{charts::Metric, metrics::EpochMetrics};

/// The longest patience, in epochs.
pub const PATIENCE_RANGE: (u32, u32) = (1, 1000);
/// Patience when the request names none.
pub const DEFAULT_PATIENCE: u32 = 5;

/// Whether lower or higher is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Min,
    Max,
}

impl Mode {
    pub const NAMES: &'static [&'static str] = &["min", "max"];

    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "min" => Some(Self::Min),
            "max" => Some(Self::Max),
            _ => None,
        }
    }

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Min => "min",
            Self::Max => "max",
        }
    }

    /// The natural mode of `metric`: lower losses, higher accuracies.
    #[must_use]
    pub fn of(metric: Metric) -> Self {
        match metric.kind() {
            crate::charts::MetricKind::Loss => Self::Min,
            crate::charts::MetricKind::Accuracy => Self::Max,
        }
    }

    /// Whether `value` beats `reference` by more than `delta`.
    fn beats(self, value: f64, reference: f64, delta: f64) -> bool {
        match self {
            Self::Min => value < reference - delta,
            Self::Max => value > reference + delta,
        }
    }
}

/// Which epoch's weights the model file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    /// The best epoch's by the session's [`Selection`] metric.
    Best,
    /// The last epoch's (what sessions did before `keep` existed).
    #[default]
    Last,
}

impl Keep {
    pub const NAMES: &'static [&'static str] = &["best", "last"];

    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "best" => Some(Self::Best),
            "last" => Some(Self::Last),
            _ => None,
        }
    }

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Best => "best",
            Self::Last => "last",
        }
    }
}

/// `early_stopping` as configured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    pub metric: Metric,
    pub mode: Mode,
    pub patience: u32,
    pub min_delta: f64,
}

/// How a session's epochs are judged: the metric, its mode, and when to stop early.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Selection {
    pub metric: Metric,
    pub mode: Mode,
    pub min_delta: f64,
    /// Epochs without improvement before stopping; `None`: never stop early.
    pub patience: Option<u32>,
}

impl Selection {
    /// The selection of a session: its early stopping's, else `val_loss` (min) when it holds
    /// data out, else `loss` (min), never stopping.
    #[must_use]
    pub fn new(early_stopping: Option<&EarlyStopping>, has_validation: bool) -> Self {
        match early_stopping {
            Some(e) => Self { metric: e.metric, mode: e.mode, min_delta: e.min_delta, patience: Some(e.patience) },
            None => {
                let metric = if has_validation { Metric::ValLoss } else { Metric::Loss };
                Self { metric, mode: Mode::Min, min_delta: 0.0, patience: None }
            }
        }
    }

    /// Judges one more epoch.
    pub fn observe(&self, tracker: &mut Tracker, m: &EpochMetrics) -> Observation {
        let value = self.metric.value(m).filter(|v| v.is_finite());
        let improved = value.is_some_and(|v| tracker.best.is_none_or(|b| self.mode.beats(v, b.value, 0.0)));
        if let (true, Some(v)) = (improved, value) {
            tracker.best = Some(BestEpoch { epoch: m.epoch, value: v });
        }
        match (value, tracker.reference) {
            // An epoch without the metric (no validation data this time) tells nothing.
            (None, _) => {}
            (Some(v), None) => tracker.reference = Some(v),
            (Some(v), Some(r)) if self.mode.beats(v, r, self.min_delta) => {
                tracker.reference = Some(v);
                tracker.waited = 0;
            }
            (Some(_), Some(_)) => tracker.waited = tracker.waited.saturating_add(1),
        }
        Observation { improved, stop: self.patience.is_some_and(|p| tracker.waited >= p) }
    }

    /// Why the run stopped early, for its log.
    #[must_use]
    pub fn stop_reason(&self, tracker: &Tracker) -> String {
        let best = tracker.best.map_or_else(String::new, |b| format!("; the best was {:.4} at epoch {}", b.value, b.epoch));
        format!(
            "stopping early: {} has not improved by more than {} for {} epochs{best}",
            self.metric.as_str(),
            self.min_delta,
            tracker.waited
        )
    }
}

/// The best epoch so far and its value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BestEpoch {
    pub epoch: u32,
    pub value: f64,
}

/// Where a session's judging stands: saved in checkpoints so a resumed run goes on judging
/// exactly as the uninterrupted one would.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Tracker {
    pub best: Option<BestEpoch>,
    /// The value the next epoch must beat by more than `min_delta` to reset the patience.
    pub reference: Option<f64>,
    /// Epochs since the reference last moved.
    pub waited: u32,
}

/// What one epoch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// It is the best epoch so far.
    pub improved: bool,
    /// The patience ran out: stop after it.
    pub stop: bool,
}

#[cfg(test)]
mod tests {
    use quickcheck::{Gen, QuickCheck};

    use super::*;

    fn epoch(n: u32, val_loss: Option<f64>) -> EpochMetrics {
        crate::testing::epoch_metrics(n, 1.0, val_loss)
    }

    #[test]
    fn stops_after_patience_epochs_without_improvement_and_remembers_the_best() {
        let es = EarlyStopping { metric: Metric::ValLoss, mode: Mode::Min, patience: 2, min_delta: 0.05 };
        let s = Selection::new(Some(&es), true);
        let mut t = Tracker::default();
        let seen: Vec<(bool, bool)> = [0.9, 0.7, 0.68, 0.66, 0.8]
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let o = s.observe(&mut t, &epoch(i as u32 + 1, Some(*v)));
                (o.improved, o.stop)
            })
            .collect();
        // 0.68 and 0.66 improve on the best but not on 0.7 by more than 0.05: the second stops.
        assert_eq!(seen, [(true, false), (true, false), (true, false), (true, true), (false, true)]);
        assert_eq!(t.best, Some(BestEpoch { epoch: 4, value: 0.66 }));
        assert!(s.stop_reason(&t).contains("val_loss has not improved by more than 0.05 for 3 epochs; the best was 0.6600 at epoch 4"));
    }

    #[test]
    fn without_early_stopping_the_best_is_by_val_loss_or_loss_and_it_never_stops() {
        let s = Selection::new(None, true);
        assert_eq!((s.metric, s.mode, s.patience), (Metric::ValLoss, Mode::Min, None));
        assert_eq!(Selection::new(None, false).metric, Metric::Loss);
        let mut t = Tracker::default();
        for n in 1..50 {
            assert!(!s.observe(&mut t, &epoch(n, Some(f64::from(n)))).stop);
        }
        assert_eq!(t.best.map(|b| b.epoch), Some(1));
        assert_eq!(Mode::of(Metric::ValAccuracy), Mode::Max);
    }

    // Property 73: whatever the values (missing ones included), the best epoch is the first with
    // the best value seen, epochs without a value count for nothing, and the run stops exactly
    // at the first epoch where `patience` epochs with a value have not beaten the reference by
    // more than `min_delta`.
    #[test]
    fn prop73_the_best_is_the_best_and_patience_is_counted_exactly() {
        fn prop(values: Vec<Option<i8>>, patience: u8, delta: u8, max: bool) -> bool {
            let mode = if max { Mode::Max } else { Mode::Min };
            let es =
                EarlyStopping { metric: Metric::ValLoss, mode, patience: u32::from(patience % 5) + 1, min_delta: f64::from(delta % 4) };
            let s = Selection::new(Some(&es), true);
            let mut t = Tracker::default();
            let (mut reference, mut waited): (Option<f64>, u32) = (None, 0);
            let mut best: Option<(u32, f64)> = None;
            for (i, v) in values.iter().enumerate() {
                let v = v.map(f64::from);
                let n = i as u32 + 1;
                let o = s.observe(&mut t, &epoch(n, v));
                let better = |a: f64, b: f64, d: f64| if max { a > b + d } else { a < b - d };
                let improved = v.is_some_and(|v| best.is_none_or(|(_, b)| better(v, b, 0.0)));
                if improved {
                    best = Some((n, v.unwrap_or_default()));
                }
                match (v, reference) {
                    (None, _) => {}
                    (Some(v), None) => reference = Some(v),
                    (Some(v), Some(r)) if better(v, r, es.min_delta) => (reference, waited) = (Some(v), 0),
                    (Some(_), Some(_)) => waited += 1,
                }
                if o.improved != improved || o.stop != (waited >= es.patience) || t.best.map(|b| (b.epoch, b.value)) != best {
                    return false;
                }
                if o.stop {
                    break;
                }
            }
            true
        }
        QuickCheck::new().tests(300).rng(Gen::new(40)).quickcheck(prop as fn(Vec<Option<i8>>, u8, u8, bool) -> bool);
    }
}
