//! A session's progress and outcome as a few lines a person reads on a phone: what notifications
//! (Telegram) send.

use time::Duration;

use crate::{metrics::EpochMetrics, session::Session, session::SessionState};

/// "2 h 05 min", "3 min 07 s", "12 s" (whole seconds; a negative span counts as zero).
#[must_use]
pub fn human_duration(d: Duration) -> String {
    let secs = d.whole_seconds().max(0);
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s} s"),
        (0, _) => format!("{m} min {s:02} s"),
        _ => format!("{h} h {m:02} min"),
    }
}

/// A value shown with four significant digits, or "n/a" when it is not finite.
fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.4}")
    } else {
        "n/a".to_owned()
    }
}

/// An accuracy in 0..=1 as a percentage.
fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.1}%", x * 100.0)
    } else {
        "n/a".to_owned()
    }
}

/// The metrics of one epoch on one line: "loss 0.4100, accuracy 88.0% (validation: loss
/// 0.4500, accuracy 86.7%)".
#[must_use]
pub fn metrics_line(m: &EpochMetrics) -> String {
    let mut line = format!("loss {}, accuracy {}", num(m.loss), pct(m.accuracy));
    match (m.val_loss, m.val_accuracy) {
        (Some(l), Some(a)) => line.push_str(&format!(" (validation: loss {}, accuracy {})", num(l), pct(a))),
        (Some(l), None) => line.push_str(&format!(" (validation loss {})", num(l))),
        (None, Some(a)) => line.push_str(&format!(" (validation accuracy {})", pct(a))),
        (None, None) => {}
    }
    line
}

/// The heading of a message about `session`: "mlp on iris".
fn what(session: &Session) -> String {
    format!("{} on {}", session.config.model_architecture.as_str(), session.config.dataset_name)
}

/// How a session ended, with the last epoch's metrics when it had one: architecture and
/// dataset, epochs done of total, final loss and accuracy, duration, the model or the error.
#[must_use]
pub fn outcome(session: &Session, last: Option<&EpochMetrics>) -> String {
    let heading = match session.state {
        SessionState::Completed => "✅ Training completed",
        SessionState::Failed => "❌ Training failed",
        SessionState::Stopped => "⏹ Training stopped",
        SessionState::Running => "▶️ Training running",
        SessionState::Queued => "⏳ Training queued",
    };
    let mut lines = vec![
        format!("{heading}: {}", what(session)),
        format!("Session {}", session.id),
        format!("Epochs: {}/{}", session.current_epoch, session.total_epochs()),
    ];
    if let Some(m) = last {
        lines.push(format!("Final {}", metrics_line(m)));
    }
    if let (Some(start), Some(end)) = (session.start_time, session.end_time) {
        lines.push(format!("Duration: {}", human_duration(end - start)));
    }
    if let Some(model) = &session.model_name {
        lines.push(format!("Model: {model}"));
    }
    if let Some(error) = &session.error_message {
        lines.push(format!("Error: {error}"));
    }
    lines.join("\n")
}

/// A progress message after an epoch: "📈 mlp on iris, epoch 10/40: loss …".
#[must_use]
pub fn progress(session: &Session, m: &EpochMetrics) -> String {
    format!("📈 {}, epoch {}/{}: {}\nSession {}", what(session), m.epoch, session.total_epochs(), metrics_line(m), session.id)
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;

    use super::*;
    use crate::{ids::SessionId, TrainingConfig, TrainingRequest};

    fn session(state: SessionState) -> Session {
        let config = TrainingConfig::validate(&TrainingRequest {
            model_architecture: Some("mlp".into()),
            dataset_name: Some("iris".into()),
            epochs: Some(40),
            ..Default::default()
        })
        .unwrap();
        let t0 = OffsetDateTime::UNIX_EPOCH;
        let mut s = Session::queued(SessionId::generate(), config, t0);
        s.transition(SessionState::Running, t0 + Duration::seconds(3)).unwrap();
        if state.is_terminal() {
            s.transition(state, t0 + Duration::seconds(75)).unwrap();
        }
        s
    }

    fn epoch(loss: f64, val: Option<f64>) -> EpochMetrics {
        EpochMetrics {
            epoch: 12,
            loss,
            accuracy: 0.875,
            val_loss: val,
            val_accuracy: val.map(|_| 0.9),
            samples_per_second: 1000.0,
            epoch_seconds: 0.1,
            learning_rate: None,
            timestamp: OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn durations_read_as_a_person_says_them() {
        assert_eq!(human_duration(Duration::seconds(12)), "12 s");
        assert_eq!(human_duration(Duration::seconds(187)), "3 min 07 s");
        assert_eq!(human_duration(Duration::seconds(7500)), "2 h 05 min");
        assert_eq!(human_duration(Duration::seconds(-5)), "0 s");
    }

    #[test]
    fn an_outcome_says_what_trained_how_far_how_well_how_long_and_why_it_failed() {
        let mut s = session(SessionState::Completed);
        s.current_epoch = 12;
        let text = outcome(&s, Some(&epoch(0.25, Some(0.3))));
        assert!(text.starts_with("✅ Training completed: mlp on iris\n"), "{text}");
        for part in ["Epochs: 12/40", "loss 0.2500, accuracy 87.5%", "validation: loss 0.3000, accuracy 90.0%", "Duration: 1 min 12 s"] {
            assert!(text.contains(part), "{part} in {text}");
        }
        let mut f = session(SessionState::Running);
        f.fail("loss became NaN at epoch 3", OffsetDateTime::UNIX_EPOCH + Duration::seconds(9)).unwrap();
        let text = outcome(&f, Some(&epoch(f64::NAN, None)));
        assert!(text.starts_with("❌ Training failed") && text.contains("Error: loss became NaN at epoch 3"), "{text}");
        assert!(text.contains("loss n/a, accuracy 87.5%") && !text.contains("validation"), "{text}");
        assert!(outcome(&session(SessionState::Stopped), None).starts_with("⏹ Training stopped"));
    }

    #[test]
    fn progress_names_the_epoch_of_the_total() {
        let s = session(SessionState::Running);
        let text = progress(&s, &epoch(0.5, None));
        assert!(text.starts_with("📈 mlp on iris, epoch 12/40: loss 0.5000, accuracy 87.5%\n"), "{text}");
    }
}
