//! Live control of a running session: another learning rate from the next batch on, and a
//! snapshot of its weights saved as a registry model while the run goes on.

use std::time::{Duration as StdDuration, Instant};

use super::{ManagerError, Recorder, SessionManager, SessionView};
use crate::lock;
use crate::{
    config::{check_learning_rate, ConfigErrors},
    ids::{ModelName, SessionId},
    metrics::LogLevel,
    ports::{SnapshotId, StoreError, TrainError, TrainedModel},
    registry::ModelRecord,
    session::{Session, SessionLive, SessionState},
};

/// A snapshot asked for: the name it is to be registered under, then what came of it.
pub(super) struct Snapshot {
    session: SessionId,
    name: ModelName,
    result: Option<Result<ModelRecord, ManagerError>>,
}

impl SessionManager {
    /// Makes a running session train at `rate` from its next batch on, in place of its
    /// schedule; the change is logged, kept across retries and restarts, and shows in each
    /// epoch's `learning_rate`.
    ///
    /// # Errors
    /// [`ManagerError::Invalid`] for a rate the start config would refuse,
    /// [`ManagerError::NotFound`], [`ManagerError::Conflict`] when it is not running.
    pub fn set_learning_rate(&self, id: &SessionId, rate: f64) -> Result<SessionView, ManagerError> {
        let rate = check_learning_rate(rate)?;
        let (before, s) = {
            // Held so that the run cannot end between the check and the write, and so that
            // live changes are written one at a time.
            let sched = lock(&self.inner.sched);
            let run = sched.running.get(id).ok_or_else(|| self.not_running(id))?;
            let mut kept = None;
            let (s, written) =
                self.change_live(id, |live| kept = live.learning_rate.replace(rate))?.ok_or_else(|| ManagerError::NotFound(id.clone()))?;
            if !written {
                return Err(self.not_running(id));
            }
            let before = run.control.learning_rate().or(kept);
            run.control.set_learning_rate(rate);
            (before, s)
        };
        let was = match before {
            Some(r) => format!("it was set to {r}"),
            None if s.config.lr_schedule.is_some() => "it replaces the schedule".to_owned(),
            None => format!("it was {}", s.config.learning_rate),
        };
        self.inner.log(id, LogLevel::Info, format!("learning rate set to {rate} from the next batch on; {was}"));
        self.view(id)
    }

    /// Saves a running session's current weights as the registry model `name`, at its next
    /// batch, while the run goes on; answers the model once it is registered.
    ///
    /// # Errors
    /// [`ManagerError::Invalid`] for a name that is not one, [`ManagerError::NotFound`],
    /// [`ManagerError::Conflict`] when the session is not running, the name is taken, or the
    /// run ends or does not reach its next batch within `timeout`.
    pub fn snapshot(&self, id: &SessionId, name: &str, timeout: StdDuration) -> Result<ModelRecord, ManagerError> {
        let invalid = |why: String| {
            let mut errors = ConfigErrors::default();
            errors.push("model_name", why);
            ManagerError::Invalid(errors)
        };
        let name = ModelName::new(name).map_err(|e| invalid(e.to_string()))?;
        if SessionId::parse(name.as_str()).is_ok() {
            // A session's own model is registered under its id when it ends.
            return Err(invalid("must not be a session id: those are the names of the sessions' own models".to_owned()));
        }
        let p = &self.inner.ports;
        if p.models.get(&name)?.is_some() {
            return Err(ManagerError::Conflict(format!("a model named '{name}' already exists; choose another name")));
        }
        let deadline = Instant::now() + timeout;
        let mut sched = lock(&self.inner.sched);
        let snap = sched.next_snapshot;
        sched.next_snapshot += 1;
        sched.running.get(id).ok_or_else(|| self.not_running(id))?.control.request_snapshot(snap);
        sched.snapshots.insert(snap, Snapshot { session: id.clone(), name: name.clone(), result: None });
        drop(sched);
        self.inner.log(id, LogLevel::Info, format!("snapshot requested as model '{name}'"));

        let mut sched = lock(&self.inner.sched);
        loop {
            if let Some(result) = sched.snapshots.get_mut(&snap).and_then(|s| s.result.take()) {
                sched.snapshots.remove(&snap);
                return result;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let gone = !sched.running.contains_key(id);
            if gone || left.is_zero() {
                sched.snapshots.remove(&snap);
                return Err(ManagerError::Conflict(if gone {
                    format!("training session {id} ended before it reached its next batch; no snapshot was taken")
                } else {
                    format!("training session {id} did not reach its next batch within {} s; no snapshot was taken", timeout.as_secs())
                }));
            }
            sched = self.inner.idle.wait_timeout(sched, left).unwrap_or_else(std::sync::PoisonError::into_inner).0;
        }
    }

    /// Stops a running session for `reason` (a sweep's pruner): it saves its weights and ends
    /// `stopped` with `reason` as its `error_message`. Answers whether it was running.
    pub fn stop_for(&self, id: &SessionId, reason: &str) -> bool {
        {
            let mut sched = lock(&self.inner.sched);
            let Some(run) = sched.running.get_mut(id) else { return false };
            // Kept with the session, so that a restart before the stop lands still stops it.
            match self.change_live(id, |live| live.stop_reason = Some(reason.to_owned())) {
                Ok(Some(_)) => {}
                Ok(None) => return false,
                Err(e) => tracing::warn!(session = %id, detail = %e, "the reason of a stop could not be kept"),
            }
            run.stop_reason = Some(reason.to_owned());
            run.control.request_stop();
        }
        self.inner.log(id, LogLevel::Info, format!("{reason}; stopping and saving the current weights"));
        true
    }

    /// Changes what is kept of the live changes of session `id` (the caller holds the scheduler
    /// lock, so that they are written one at a time): the session as it was read, and whether
    /// the change was written (it was not when the session no longer runs); `None` when there
    /// is no such session.
    fn change_live(&self, id: &SessionId, change: impl FnOnce(&mut SessionLive)) -> Result<Option<(Session, bool)>, StoreError> {
        let p = &self.inner.ports;
        let Some(mut s) = p.sessions.get(id)? else { return Ok(None) };
        change(&mut s.live);
        let written = p.sessions.set_live(id, &s.live)?;
        Ok(Some((s, written)))
    }

    /// The error for an operation on a running session that is not running.
    fn not_running(&self, id: &SessionId) -> ManagerError {
        match self.inner.ports.sessions.get(id) {
            Ok(Some(s)) if s.state == SessionState::Running => {
                ManagerError::Conflict(format!("training session {id} is between runs; try again in a moment"))
            }
            Ok(Some(s)) => ManagerError::Conflict(format!("training session {id} is {} and not running", s.state)),
            Ok(None) => ManagerError::NotFound(id.clone()),
            Err(e) => ManagerError::Store(e),
        }
    }
}

impl Recorder<'_> {
    /// Answers the snapshots this session's run was asked for and will not take: its process
    /// died with them (a retry starts a new one).
    pub(super) fn snapshots_lost(&mut self) {
        let _ = self.control.take_snapshots();
        let mut sched = lock(&self.inner.sched);
        for slot in sched.snapshots.values_mut().filter(|s| s.session == self.session.id && s.result.is_none()) {
            slot.result = Some(Err(ManagerError::Conflict(
                "the run's process ended before it took the snapshot; ask again once it has resumed".to_owned(),
            )));
        }
        drop(sched);
        self.inner.idle.notify_all();
    }

    /// A snapshot the run wrote (or could not): registered under the name asked for, and the
    /// outcome handed to the request waiting for it. Nobody waits any more when the request
    /// timed out; the file is then left to the scratch directory's cleanup.
    pub(super) fn snapshot_taken(&mut self, snap: SnapshotId, result: Result<TrainedModel, TrainError>) {
        let inner = self.inner;
        let name = lock(&inner.sched).snapshots.get(&snap).filter(|s| s.session == self.session.id).map(|s| s.name.clone());
        let Some(name) = name else { return };
        let outcome = match result {
            Ok(model) => inner.register_model(&self.session, &model, Some(&name)).map_err(|e| match e {
                StoreError::Conflict(_) => ManagerError::Conflict(format!("a model named '{name}' already exists; choose another name")),
                e => ManagerError::Store(e),
            }),
            Err(e) => Err(ManagerError::Store(StoreError::Io(format!("could not save the snapshot: {}", e.public_message())))),
        };
        let line = match &outcome {
            Ok(record) => {
                (LogLevel::Info, format!("snapshot saved as model '{}' after {} epochs", record.name, self.session.current_epoch))
            }
            Err(ManagerError::Store(e)) => (LogLevel::Warning, format!("the snapshot could not be saved: {}", e.public_message())),
            Err(e) => (LogLevel::Warning, e.to_string()),
        };
        inner.log(&self.session.id, line.0, line.1);
        if let Some(slot) = lock(&inner.sched).snapshots.get_mut(&snap) {
            slot.result = Some(outcome);
        }
        inner.idle.notify_all();
    }
}
