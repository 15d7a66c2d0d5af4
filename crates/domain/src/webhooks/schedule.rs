//! When a webhook delivery is tried again: the retry schedule and what one attempt's outcome
//! makes of a delivery.
//!
//! An answer with a 2xx status delivers; any other status, no answer within the timeout, a
//! refused connection or a refused address is a failed attempt, tried again after a pause that
//! grows with each failure. After the last attempt the delivery has failed for good.

use time::{Duration, OffsetDateTime};

use crate::{events::EventKind, ids::SessionId, webhooks::DeliveryId};

/// The pauses between attempts, as multiples of a unit (a second in production): attempts at
/// 0 s, 10 s, 30 s, 1.5 min, 4 min and 10 min after the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySchedule {
    unit: Duration,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        Self::new(Self::STANDARD_UNIT)
    }
}

impl RetrySchedule {
    /// The pause after each failed attempt but the last, in units.
    pub const PAUSES: [u32; 5] = [10, 20, 60, 150, 360];
    /// The unit of the production schedule.
    pub const STANDARD_UNIT: Duration = Duration::SECOND;

    /// The schedule with pauses of [`Self::PAUSES`] times `unit` (at least a millisecond).
    #[must_use]
    pub fn new(unit: Duration) -> Self {
        Self { unit: unit.max(Duration::MILLISECOND) }
    }

    /// How many attempts a delivery gets in all.
    #[must_use]
    pub fn attempts(&self) -> u32 {
        Self::PAUSES.len() as u32 + 1
    }

    /// The pause after `made` failed attempts (1 for the first), or `None` when that was the
    /// last.
    #[must_use]
    pub fn pause_after(&self, made: u32) -> Option<Duration> {
        let index = usize::try_from(made.checked_sub(1)?).ok()?;
        Self::PAUSES.get(index).map(|p| self.unit * *p)
    }

    /// When each attempt comes after the first, if every attempt fails at once.
    #[must_use]
    pub fn offsets(&self) -> Vec<Duration> {
        let mut at = Duration::ZERO;
        let mut out = vec![at];
        for made in 1..self.attempts() {
            at += self.pause_after(made).unwrap_or(Duration::ZERO);
            out.push(at);
        }
        out
    }
}

/// What one attempt got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The receiver answered with this status.
    Status(u16),
    /// No answer: the reason (timed out, connection refused, refused address...).
    NoAnswer(String),
    /// The receiver answered with this status and said why (Telegram's `description`), and
    /// perhaps how long to wait before trying again (Telegram's `retry_after`): the next
    /// attempt comes no sooner than that, even when the schedule's pause is shorter.
    Refused { status: u16, reason: String, retry_after: Option<Duration> },
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryState {
    /// Waiting for its next attempt.
    Pending,
    /// A receiver answered 2xx.
    Delivered,
    /// Every attempt of the schedule failed.
    Failed,
}

impl DeliveryState {
    /// The stored and wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    /// Parses the stored name.
    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        [Self::Pending, Self::Delivered, Self::Failed].into_iter().find(|s| s.as_str() == raw)
    }
}

/// One event on its way to one receiver (a webhook, a Telegram chat), as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    pub id: DeliveryId,
    pub event_id: u64,
    pub event: EventKind,
    pub session_id: SessionId,
    pub state: DeliveryState,
    /// Attempts made so far.
    pub attempts: u32,
    /// The status of the last answer; `None` before the first attempt or when the last got none.
    pub last_status: Option<u16>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    pub created_at: OffsetDateTime,
    pub last_attempt_at: Option<OffsetDateTime>,
    /// When the next attempt is due; `None` once delivered or failed.
    pub next_attempt_at: Option<OffsetDateTime>,
}

impl DeliveryRecord {
    /// A new delivery of `event`, due at `at`.
    #[must_use]
    pub fn pending(event: &crate::events::Event, at: OffsetDateTime) -> Self {
        Self {
            id: DeliveryId::generate(),
            event_id: event.id,
            event: event.kind,
            session_id: event.session_id.clone(),
            state: DeliveryState::Pending,
            attempts: 0,
            last_status: None,
            last_error: None,
            created_at: at,
            last_attempt_at: None,
            next_attempt_at: Some(at),
        }
    }

    /// The delivery after the attempt `record`.
    pub fn apply(&mut self, record: &AttemptRecord) {
        self.state = record.state;
        self.attempts = record.attempts;
        self.last_status = record.last_status;
        self.last_error.clone_from(&record.last_error);
        self.last_attempt_at = Some(record.last_attempt_at);
        self.next_attempt_at = record.next_attempt_at;
    }
}

/// A delivery after an attempt: what the store writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub state: DeliveryState,
    /// Attempts made, this one included.
    pub attempts: u32,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub last_attempt_at: OffsetDateTime,
    /// When to try again; `None` unless pending.
    pub next_attempt_at: Option<OffsetDateTime>,
}

impl AttemptRecord {
    /// A delivery that had made `made_before` attempts, after one more, made at `at`, got
    /// `outcome`.
    #[must_use]
    pub fn after(made_before: u32, at: OffsetDateTime, outcome: AttemptOutcome, schedule: &RetrySchedule) -> Self {
        let attempts = made_before.saturating_add(1);
        let (last_status, last_error, not_before) = match outcome {
            AttemptOutcome::Status(code) if (200..300).contains(&code) => {
                return Self {
                    state: DeliveryState::Delivered,
                    attempts,
                    last_status: Some(code),
                    last_error: None,
                    last_attempt_at: at,
                    next_attempt_at: None,
                };
            }
            AttemptOutcome::Status(code) => (Some(code), Some(format!("the receiver answered {code}")), Duration::ZERO),
            AttemptOutcome::NoAnswer(reason) => (None, Some(reason), Duration::ZERO),
            AttemptOutcome::Refused { status, reason, retry_after } => {
                (Some(status), Some(format!("the receiver answered {status}: {reason}")), retry_after.unwrap_or(Duration::ZERO))
            }
        };
        let next = schedule.pause_after(attempts).map(|pause| at + pause.max(not_before));
        Self {
            state: if next.is_some() { DeliveryState::Pending } else { DeliveryState::Failed },
            attempts,
            last_status,
            last_error,
            last_attempt_at: at,
            next_attempt_at: next,
        }
    }
}

#[cfg(test)]
mod tests {
    use quickcheck::{Gen, QuickCheck};

    use super::*;

    #[test]
    fn the_standard_schedule_tries_six_times_over_ten_minutes() {
        let offsets: Vec<i64> = RetrySchedule::default().offsets().iter().map(|d| d.whole_seconds()).collect();
        assert_eq!(offsets, [0, 10, 30, 90, 240, 600]);
    }

    #[test]
    fn an_outcome_moves_the_delivery() {
        let s = RetrySchedule::default();
        let t = OffsetDateTime::UNIX_EPOCH;
        let ok = AttemptRecord::after(2, t, AttemptOutcome::Status(204), &s);
        assert_eq!((ok.state, ok.attempts, ok.last_status, ok.next_attempt_at), (DeliveryState::Delivered, 3, Some(204), None));
        let retry = AttemptRecord::after(0, t, AttemptOutcome::Status(500), &s);
        assert_eq!((retry.state, retry.next_attempt_at), (DeliveryState::Pending, Some(t + Duration::seconds(10))));
        assert_eq!(retry.last_error.as_deref(), Some("the receiver answered 500"));
        let limited = AttemptOutcome::Refused { status: 429, reason: "Too Many Requests".into(), retry_after: Some(Duration::seconds(35)) };
        let limited = AttemptRecord::after(0, t, limited, &s);
        assert_eq!((limited.last_status, limited.next_attempt_at), (Some(429), Some(t + Duration::seconds(35))));
        assert_eq!(limited.last_error.as_deref(), Some("the receiver answered 429: Too Many Requests"));
        let refused = AttemptOutcome::Refused { status: 400, reason: "chat not found".into(), retry_after: None };
        assert_eq!(AttemptRecord::after(0, t, refused, &s).next_attempt_at, Some(t + Duration::seconds(10)));
        let timeout = AttemptRecord::after(1, t, AttemptOutcome::NoAnswer("timed out".into()), &s);
        assert_eq!((timeout.last_status, timeout.next_attempt_at), (None, Some(t + Duration::seconds(20))));
        let last = AttemptRecord::after(5, t, AttemptOutcome::Status(302), &s);
        assert_eq!((last.state, last.attempts, last.next_attempt_at), (DeliveryState::Failed, 6, None));
    }

    // Property 64: the retry schedule is increasing, has at least 5 attempts, spans about 10
    // minutes at the standard unit and scales linearly with the unit; whatever the outcomes,
    // a delivery is retried at strictly later times, ends delivered on its first 2xx, and
    // fails after exactly the schedule's attempts.
    #[test]
    fn prop64_retries_back_off_and_end() {
        fn prop(unit_ms: u16, outcomes: Vec<u16>) -> bool {
            let standard = RetrySchedule::default().offsets();
            let spans_ten_minutes = standard.last().is_some_and(|d| (Duration::minutes(8)..=Duration::minutes(15)).contains(d));
            let pauses: Vec<Duration> =
                (1..RetrySchedule::default().attempts()).filter_map(|n| RetrySchedule::default().pause_after(n)).collect();
            let increasing = pauses.windows(2).all(|w| w[0] < w[1]) && pauses.first().is_some_and(|p| *p > Duration::ZERO);
            let unit = Duration::milliseconds(i64::from(unit_ms.max(1)));
            let scaled = RetrySchedule::new(unit);
            let linear = scaled.offsets().iter().zip(&standard).all(|(s, d)| *s * 1000_i32 == *d * (unit.whole_milliseconds() as i32));

            let mut made = 0;
            let mut at = OffsetDateTime::UNIX_EPOCH;
            let mut ended = None;
            for code in outcomes.iter().map(|c| 100 + c % 500) {
                let record = AttemptRecord::after(made, at, AttemptOutcome::Status(code), &scaled);
                made = record.attempts;
                match record.state {
                    DeliveryState::Pending => match record.next_attempt_at {
                        Some(next) if next > at && !(200..300).contains(&code) => at = next,
                        _ => return false,
                    },
                    state => {
                        let right = if (200..300).contains(&code) {
                            state == DeliveryState::Delivered
                        } else {
                            state == DeliveryState::Failed && made == scaled.attempts()
                        };
                        if !right || record.next_attempt_at.is_some() {
                            return false;
                        }
                        ended = Some(state);
                        break;
                    }
                }
            }
            let failures_before_end = outcomes.iter().map(|c| 100 + c % 500).take_while(|c| !(200..300).contains(c)).count();
            let expected_end = if failures_before_end >= scaled.attempts() as usize {
                Some(DeliveryState::Failed)
            } else if failures_before_end < outcomes.len() {
                Some(DeliveryState::Delivered)
            } else {
                None
            };
            scaled.attempts() >= 5 && spans_ten_minutes && increasing && linear && ended == expected_end
        }
        QuickCheck::new().tests(500).rng(Gen::new(12)).quickcheck(prop as fn(u16, Vec<u16>) -> bool);
    }
}
