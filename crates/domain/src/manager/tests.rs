//! Scheduler tests against in-memory fakes of every port.

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration as StdDuration,
};

use quickcheck::{quickcheck, TestResult};
use time::{Duration, OffsetDateTime};

use super::*;
use crate::{registry::DatasetFormat, testing::*};

const WAIT: StdDuration = StdDuration::from_secs(10);

struct World {
    manager: SessionManager,
    trainer: Arc<ScriptedTrainer>,
    sessions: Arc<MemorySessions>,
    metrics: Arc<MemoryMetrics>,
    models: Arc<MemoryModels>,
    monitor: Arc<FakeMonitor>,
    scratch: Arc<MemoryScratch>,
    clock: Arc<FixedClock>,
}

fn world(max_concurrent: usize, memory_reserve_mb: u64) -> World {
    let trainer = Arc::new(ScriptedTrainer::default());
    let sessions = Arc::new(MemorySessions::default());
    let metrics = Arc::new(MemoryMetrics::default());
    let models = Arc::new(MemoryModels::default());
    let monitor = Arc::new(FakeMonitor::default());
    let scratch = Arc::new(MemoryScratch::default());
    let clock = Arc::new(FixedClock::new(OffsetDateTime::UNIX_EPOCH + Duration::days(10_000)));
    let datasets = Arc::new(MemoryDatasets::default());
    for name in ["iris", "fail-data", "panic-data", "crash-data", "sweep-data"] {
        datasets.add(name, DatasetFormat::Csv);
    }
    datasets.add("tempest", DatasetFormat::Text);
    let ports = Ports {
        sessions: sessions.clone(),
        metrics: metrics.clone(),
        logs: Arc::new(MemoryLogs::default()),
        datasets,
        models: models.clone(),
        model_inspector: Arc::new(CountingModelInspector),
        scratch: scratch.clone(),
        trainer: trainer.clone(),
        monitor: monitor.clone(),
        clock: clock.clone(),
        events: Arc::new(MemoryEvents::default()),
    };
    let policy = SchedulerPolicy { max_concurrent, memory_reserve_mb, run_memory_limit_mb: 0, retention: Duration::days(7) };
    World { manager: SessionManager::new(ports, policy), trainer, sessions, metrics, models, monitor, scratch, clock }
}

fn request(dataset: &str, epochs: i64) -> TrainingRequest {
    TrainingRequest {
        model_architecture: Some("mlp".into()),
        dataset_name: Some(dataset.into()),
        epochs: Some(epochs),
        ..Default::default()
    }
}

fn state_of(w: &World, id: &SessionId) -> SessionState {
    w.manager.view(id).unwrap().session.state
}

#[test]
fn unknown_dataset_and_kind_mismatch_are_field_errors() {
    let w = world(1, 0);
    let err = w.manager.start(&request("nope", 1)).unwrap_err();
    assert!(matches!(&err, ManagerError::Invalid(e) if e.0[0].field == "dataset_name" && e.0[0].message.contains("not found")));
    let err = w.manager.start(&request("tempest", 1)).unwrap_err();
    assert!(matches!(&err, ManagerError::Invalid(e) if e.0[0].message.contains("'mlp'") && e.0[0].message.contains("'tempest' is text")));
}

#[test]
fn a_base_model_that_does_not_fit_is_a_field_error() {
    let w = world(1, 0);
    for name in ["bad-base", "good-base"] {
        w.models
            .import(crate::registry::NewModel {
                name: ModelName::new(name).unwrap(),
                staged_file: name.into(),
                format: crate::registry::ModelFormat::Pytorch,
                session_id: None,
                metadata: serde_json::Value::Null,
                content_hash: None,
            })
            .unwrap();
    }
    let req = |base: &str| TrainingRequest { base_model: Some(base.into()), ..request("iris", 1) };
    let err = w.manager.start(&req("bad-base")).unwrap_err();
    assert!(
        matches!(&err, ManagerError::Invalid(e) if e.0[0].field == "base_model" && e.0[0].message.contains("hidden_size is 3")),
        "{err:?}"
    );
    let err = w.manager.start(&req("missing")).unwrap_err();
    assert!(matches!(&err, ManagerError::Invalid(e) if e.0[0].message.contains("not found")), "{err:?}");
    assert!(w.manager.start(&req("good-base")).is_ok());
}

#[test]
fn a_session_above_the_run_memory_limit_or_the_machine_is_refused() {
    let mut w = world(1, 0);
    // 10 MB per sample: batch 1024 needs 10 GB, more than the 4 GB a run may use.
    w.manager = SessionManager::new(
        w.manager.inner.ports.clone(),
        SchedulerPolicy { max_concurrent: 1, memory_reserve_mb: 0, run_memory_limit_mb: 4096, retention: Duration::days(7) },
    );
    let err = w.manager.start(&TrainingRequest { batch_size: Some(1024), ..request("iris", 1) }).unwrap_err();
    let ManagerError::InsufficientMemory(message) = err else { panic!("{err:?}") };
    assert!(message.contains("about 10.0 GB") && message.contains("4.0 GB a run may use") && message.contains("batch_size"), "{message}");
    assert!(w.sessions.list().unwrap().is_empty(), "nothing is stored");
    // Without a run limit, the machine's 32,000 MB is the bound.
    let w = world(1, 0);
    assert!(w.manager.start(&TrainingRequest { batch_size: Some(1024), ..request("iris", 1) }).is_ok());
}

#[test]
fn queue_reasons_say_what_each_session_waits_for_and_peaks_are_kept() {
    let w = world(1, 0);
    w.trainer.set_hold(true);
    let first = w.manager.start(&request("iris", 1)).unwrap().view.session.id;
    assert!(w.trainer.wait_started(1, WAIT));
    let second = w.manager.start(&request("iris", 1)).unwrap();
    assert_eq!(second.view.queue_reason.as_deref(), Some("waiting for a running session to finish (1 of 1 allowed at once)"));
    let third = w.manager.start(&request("iris", 1)).unwrap();
    assert_eq!(third.view.queue_reason.as_deref(), Some("waiting behind 1 earlier session in the queue"));
    let running = w.manager.view(&first).unwrap();
    assert_eq!(running.queue_reason, None);
    w.trainer.set_hold(false);
    assert!(w.manager.wait_idle(WAIT));
    let done = w.manager.view(&first).unwrap();
    assert_eq!(done.session.resources.peak_memory_mb, Some(ScriptedTrainer::PEAK_MB), "the run's peak is kept");
    assert_eq!(done.usage, None, "an ended run has no live usage");
}

#[test]
fn failing_and_panicking_runs_fail_and_the_queue_moves_on() {
    let w = world(1, 0);
    let failing = w.manager.start(&request("fail-data", 2)).unwrap().view.session.id;
    let panicking = w.manager.start(&request("panic-data", 2)).unwrap().view.session.id;
    let fine = w.manager.start(&request("iris", 2)).unwrap().view.session.id;
    assert!(w.trainer.wait_started(3, WAIT));
    assert!(w.manager.wait_idle(WAIT));
    let f = w.manager.view(&failing).unwrap().session;
    assert_eq!(f.state, SessionState::Failed);
    assert!(f.error_message.unwrap().contains("NaN"));
    let p = w.manager.view(&panicking).unwrap().session;
    assert_eq!(p.state, SessionState::Failed);
    assert!(p.error_message.unwrap().contains("scripted panic"));
    assert_eq!(state_of(&w, &fine), SessionState::Completed);
}

#[test]
fn a_crashed_run_is_retried_up_to_max_retries_and_other_failures_never() {
    let w = world(1, 0);
    let with_retries = |dataset: &str, retries: i64| TrainingRequest { max_retries: Some(retries), ..request(dataset, 2) };
    let retried = w.manager.start(&with_retries("crash-data", 1)).unwrap().view.session.id;
    let unretried = w.manager.start(&with_retries("crash-data", 0)).unwrap().view.session.id;
    let failing = w.manager.start(&with_retries("fail-data", 3)).unwrap().view.session.id;
    assert!(w.trainer.wait_started(4, WAIT));
    assert!(w.manager.wait_idle(WAIT));

    let r = w.manager.view(&retried).unwrap().session;
    assert_eq!((r.state, r.outcome.attempt()), (SessionState::Completed, 2));
    let logs: Vec<String> = w.manager.logs(&retried, 100).unwrap().into_iter().map(|l| l.message).collect();
    assert!(
        logs.contains(
            &"the run failed: the training process was killed (signal 9); retry 1 of 1 (attempt 2) from the last checkpoint".to_owned()
        ),
        "{logs:?}"
    );
    let u = w.manager.view(&unretried).unwrap().session;
    assert_eq!((u.state, u.outcome.attempt()), (SessionState::Failed, 1));
    assert_eq!(u.error_message.as_deref(), Some("the training process was killed (signal 9)"));
    let f = w.manager.view(&failing).unwrap().session;
    assert_eq!((f.state, f.outcome.attempt()), (SessionState::Failed, 1));
    let started = w.trainer.started.lock().unwrap().clone();
    assert_eq!(started.iter().filter(|id| **id == retried).count(), 2);
    assert_eq!(started.iter().filter(|id| **id == failing).count(), 1);
}

#[test]
fn a_running_session_takes_a_live_learning_rate_and_snapshots() {
    let w = world(1, 0);
    w.trainer.set_hold(true);
    let id = w.manager.start(&request("iris", 3)).unwrap().view.session.id;
    assert!(w.trainer.wait_started(1, WAIT));
    assert!(matches!(w.manager.set_learning_rate(&id, 5.0), Err(ManagerError::Invalid(e)) if e.0[0].field == "learning_rate"));
    let view = w.manager.set_learning_rate(&id, 0.01).unwrap();
    assert_eq!(view.session.live.learning_rate, Some(0.01));
    assert!(matches!(w.manager.snapshot(&id, "../evil", WAIT), Err(ManagerError::Invalid(e)) if e.0[0].field == "model_name"));
    // The session's own model will take its id as its name.
    assert!(matches!(w.manager.snapshot(&id, id.as_str(), WAIT), Err(ManagerError::Invalid(e)) if e.0[0].field == "model_name"));

    // The snapshot is taken at the run's next step, once it is released.
    let taker = {
        let manager = w.manager.clone();
        let id = id.clone();
        std::thread::spawn(move || manager.snapshot(&id, "midway", WAIT))
    };
    while !w.manager.logs(&id, 100).unwrap().iter().any(|l| l.message == "snapshot requested as model 'midway'") {
        std::thread::yield_now();
    }
    w.trainer.set_hold(false);
    let snap = taker.join().unwrap().unwrap();
    assert_eq!((snap.name.as_str(), snap.metadata["snapshot"].as_bool()), ("midway", Some(true)));
    assert!(w.manager.wait_idle(WAIT));

    let done = w.manager.view(&id).unwrap().session;
    assert_eq!((done.state, done.live.learning_rate), (SessionState::Completed, Some(0.01)));
    let rates: Vec<Option<f64>> = w.manager.history(&id).unwrap().iter().map(|m| m.learning_rate).collect();
    assert_eq!(rates, vec![Some(0.01); 3]);
    let logs: Vec<String> = w.manager.logs(&id, 100).unwrap().into_iter().map(|l| l.message).collect();
    assert!(logs.contains(&"learning rate set to 0.01 from the next batch on; it was 0.001".to_owned()), "{logs:?}");
    assert!(logs.contains(&"snapshot saved as model 'midway' after 0 epochs".to_owned()), "{logs:?}");
    // An ended session takes neither; a taken name is refused before anything is asked.
    assert!(
        matches!(w.manager.set_learning_rate(&id, 0.01), Err(ManagerError::Conflict(m)) if m.ends_with("is completed and not running"))
    );
    assert!(matches!(w.manager.snapshot(&id, "midway", WAIT), Err(ManagerError::Conflict(m)) if m.contains("already exists")));
    assert!(
        matches!(w.manager.snapshot(&id, "later", WAIT), Err(ManagerError::Conflict(m)) if m.ends_with("is completed and not running"))
    );
}

#[test]
fn a_sweep_queues_its_trials_in_order_and_registers_the_best_completed_one() {
    use crate::sweep::{SweepRequest, SweepState};
    use crate::sweeps::{SweepPorts, Sweeps};
    let w = world(1, 0);
    let ports = SweepPorts {
        store: Arc::new(MemorySweeps::default()),
        sessions: w.sessions.clone(),
        metrics: w.metrics.clone(),
        models: w.models.clone(),
        clock: w.clock.clone(),
    };
    let sweeps = Sweeps::start(w.manager.clone(), ports).unwrap();
    w.trainer.set_hold(true);
    let req = SweepRequest {
        name: Some("s".into()),
        base: request("sweep-data", 3),
        space: serde_json::json!({"learning_rate": {"choice": [0.01, 0.05, 0.03]}}).as_object().cloned(),
        search: Some("grid".into()),
        pruner: Some("none".into()),
        ..SweepRequest::default()
    };
    let created = sweeps.create(&req).unwrap();
    assert_eq!(created.sweep.state, SweepState::Running);
    let ids: Vec<SessionId> = created.trials.iter().map(|t| t.trial.session_id.clone()).collect();
    for (n, id) in (1..).zip(&ids) {
        let s = w.manager.view(id).unwrap().session;
        assert_eq!(s.config.sweep.as_ref().map(|t| t.number), Some(n));
    }
    assert!(matches!(sweeps.create(&req), Err(crate::sweeps::SweepError::Conflict(_))));
    w.trainer.set_hold(false);

    let done = sweeps.wait_ended(&created.sweep.id, WAIT).unwrap();
    assert_eq!(done.sweep.state, SweepState::Completed, "{:?}", done.sweep.message);
    let best = done.sweep.best.as_ref().unwrap();
    // Validation accuracy is ten times the learning rate here: 0.05 is the best.
    assert_eq!((best.number, best.session_id.clone()), (2, ids[1].clone()));
    assert_eq!(done.sweep.best_model.as_ref().map(ModelName::as_str), Some("s-best"));
    let model = w.models.get(&ModelName::new("s-best").unwrap()).unwrap().unwrap();
    assert_eq!(model.metadata["sweep_id"], done.sweep.id.as_str());
    assert_eq!(model.metadata["trial"], 2);
    assert_eq!(*w.trainer.started.lock().unwrap(), ids, "trials start in order");
    assert!(matches!(sweeps.stop(&done.sweep.id), Err(crate::sweeps::SweepError::Conflict(_))));
}

#[test]
fn stop_saves_a_model_and_ends_stopped() {
    let w = world(1, 0);
    w.trainer.set_hold(true);
    let id = w.manager.start(&request("iris", 5)).unwrap().view.session.id;
    assert!(w.trainer.wait_started(1, WAIT));
    assert!(w.manager.stop(&id).unwrap().contains("stopping"));
    assert!(w.manager.wait_idle(WAIT));
    let s = w.manager.view(&id).unwrap().session;
    assert_eq!(s.state, SessionState::Stopped);
    assert_eq!(s.model_name.as_ref().map(ModelName::as_str), Some(id.as_str()));
    let model = w.models.get(s.model_name.as_ref().unwrap()).unwrap().unwrap();
    assert_eq!(model.metadata["parameter_count"], 3, "the model inspector described it: {}", model.metadata);
    assert!(matches!(w.manager.stop(&id), Err(ManagerError::Conflict(m)) if m.contains("already ended")));
}

#[test]
fn retention_removes_scratch_of_old_sessions_only() {
    let w = world(1, 0);
    let old = w.manager.start(&request("iris", 1)).unwrap().view.session.id;
    assert!(w.manager.wait_idle(WAIT));
    w.clock.advance(Duration::days(8));
    let recent = w.manager.start(&request("iris", 1)).unwrap().view.session.id;
    assert!(w.manager.wait_idle(WAIT));
    assert_eq!(w.manager.sweep_retention().unwrap(), 1);
    let removed = w.scratch.0.lock().unwrap().clone();
    assert_eq!(removed, vec![old.clone()]);
    assert!(!removed.contains(&recent));
    assert_eq!(w.metrics.history(&old).unwrap().len(), 1, "history stays");
}

#[test]
fn shutdown_stops_running_sessions_and_refuses_new_ones() {
    let w = world(2, 0);
    w.trainer.set_hold(true);
    let a = w.manager.start(&request("iris", 3)).unwrap().view.session.id;
    assert!(w.trainer.wait_started(1, WAIT));
    assert!(w.manager.shutdown(WAIT));
    assert_eq!(state_of(&w, &a), SessionState::Stopped);
    assert_eq!(w.manager.start(&request("iris", 1)).unwrap_err(), ManagerError::ShuttingDown);
}

quickcheck! {
    // Property 11: never more than `max_concurrent` sessions run; the rest queue with
    // consecutive positions 1..n in creation order.
    fn prop11_admission_respects_the_limit(max: u8, n: u8) -> TestResult {
        let (max, n) = (usize::from(max % 3 + 1), usize::from(n % 6 + 1));
        let w = world(max, 0);
        w.trainer.set_hold(true);
        let ids: Vec<_> = (0..n).map(|_| w.manager.start(&request("iris", 1)).unwrap().view.session.id).collect();
        let running = ids.iter().filter(|id| state_of(&w, id) == SessionState::Running).count();
        let queue: Vec<_> = w.manager.queue().unwrap().into_iter().map(|v| (v.session.id, v.queue_position)).collect();
        let expected_queue: Vec<_> = ids.iter().skip(max).cloned().enumerate().map(|(i, id)| (id, Some(i + 1))).collect();
        w.trainer.set_hold(false);
        let idle = w.manager.wait_idle(WAIT);
        TestResult::from_bool(idle && running == n.min(max) && queue == expected_queue
            && w.trainer.max_concurrent_seen.load(Ordering::SeqCst) <= max)
    }

    // Property 12: queued sessions start in FIFO order and every one completes.
    fn prop12_queue_is_fifo_and_drains(n: u8) -> bool {
        let n = usize::from(n % 6 + 1);
        let w = world(1, 0);
        w.trainer.set_hold(true);
        let ids: Vec<_> = (0..n).map(|_| w.manager.start(&request("iris", 2)).unwrap().view.session.id).collect();
        w.trainer.set_hold(false);
        w.trainer.wait_started(n, WAIT);
        let idle = w.manager.wait_idle(WAIT);
        idle && *w.trainer.started.lock().unwrap() == ids
            && ids.iter().all(|id| state_of(&w, id) == SessionState::Completed)
    }

    // Property 13: a cancelled queued session never runs, ends stopped, and the others keep
    // their relative order.
    fn prop13_cancelled_sessions_never_run(n: u8, pick: u8) -> bool {
        let n = usize::from(n % 5 + 2);
        let w = world(1, 0);
        w.trainer.set_hold(true);
        let ids: Vec<_> = (0..n).map(|_| w.manager.start(&request("iris", 1)).unwrap().view.session.id).collect();
        let victim = ids[1 + usize::from(pick) % (n - 1)].clone();
        w.manager.cancel(&victim).unwrap();
        let cancel_again = matches!(w.manager.cancel(&victim), Err(ManagerError::Conflict(_)));
        w.trainer.set_hold(false);
        let idle = w.manager.wait_idle(WAIT) && w.trainer.wait_started(n - 1, WAIT) && w.manager.wait_idle(WAIT);
        let expected: Vec<_> = ids.iter().filter(|id| **id != victim).cloned().collect();
        idle && cancel_again && state_of(&w, &victim) == SessionState::Stopped
            && *w.trainer.started.lock().unwrap() == expected
    }

    // Property 14: after a restart nothing is left running without a live run: interrupted
    // sessions resume (and complete) before queued ones start, and history has no duplicates.
    fn prop14_recovery_resumes_interrupted_sessions(running: u8, queued: u8) -> bool {
        let w = world(1, 0);
        let now = w.clock.now();
        let make = |state: SessionState| {
            let cfg = TrainingConfig::validate(&request("iris", 2)).unwrap();
            let mut s = Session::queued(SessionId::generate(), cfg, now);
            if state == SessionState::Running {
                s.transition(state, now).unwrap();
                s.current_epoch = 1;
                w.metrics.record(&s.id, &EpochMetrics {
                    epoch: 1, loss: 9.0, accuracy: 0.0, val_loss: None, val_accuracy: None,
                    samples_per_second: 1.0, epoch_seconds: 1.0, timestamp: now,
                    learning_rate: None,
                }).unwrap();
            }
            w.sessions.insert(&s).unwrap();
            s.id
        };
        let was_running: Vec<_> = (0..running % 3).map(|_| make(SessionState::Running)).collect();
        let was_queued: Vec<_> = (0..queued % 3).map(|_| make(SessionState::Queued)).collect();
        let resumed = w.manager.recover().unwrap();
        let all = was_running.len() + was_queued.len();
        let idle = w.trainer.wait_started(all, WAIT) && w.manager.wait_idle(WAIT);
        let started = w.trainer.started.lock().unwrap().clone();
        let first: std::collections::HashSet<_> = started.iter().take(was_running.len()).collect();
        idle && resumed == was_running
            && started.len() == all
            && first == was_running.iter().collect()
            && was_running.iter().chain(&was_queued).all(|id| {
                let history: Vec<u32> = w.manager.history(id).unwrap().iter().map(|m| m.epoch).collect();
                state_of(&w, id) == SessionState::Completed && history == [1, 2]
                    && w.manager.history(id).unwrap()[0].loss < 9.0
            })
    }

    // Property 15: the first queued session waits while its memory estimate plus the reserve is
    // more than the memory available, says so in its queue reason, and starts once memory frees.
    fn prop15_memory_estimates_hold_the_queue(reserve: u16, available: u16, batch: u8) -> bool {
        let (reserve, available, batch) = (u64::from(reserve % 2000), u64::from(available % 4000), i64::from(batch % 64 + 1));
        // The scripted trainer estimates 10 MB per sample of a batch.
        let estimate = 10 * batch.unsigned_abs();
        let w = world(1, reserve);
        w.monitor.0.store(available, Ordering::SeqCst);
        let started = w.manager.start(&TrainingRequest { batch_size: Some(batch), ..request("iris", 1) }).unwrap();
        let id = started.view.session.id.clone();
        let view = w.manager.view(&id).unwrap();
        let waited = view.session.state == SessionState::Queued;
        let said = view.queue_reason.as_deref().is_some_and(|r| r.starts_with(&format!("waiting for {} of memory", human_mb(estimate))));
        let estimated = started.view.session.resources.estimate.map(|e| e.host_mb) == Some(estimate);
        w.monitor.0.store(estimate + reserve, Ordering::SeqCst);
        w.manager.tick();
        let ran = w.trainer.wait_started(1, WAIT) && w.manager.wait_idle(WAIT);
        estimated && waited == (estimate + reserve > available) && (!waited || said) && ran && state_of(&w, &id) == SessionState::Completed
    }

    // Property 17: a run that fails or panics ends failed with its message, and every session
    // queued behind it still runs.
    fn prop17_failures_fail_and_the_queue_moves_on(kinds: Vec<u8>) -> bool {
        let w = world(1, 0);
        w.trainer.set_hold(true);
        let datasets = ["iris", "fail-data", "panic-data"];
        let started: Vec<_> = kinds.iter().take(6).map(|k| {
            let ds = datasets[usize::from(*k) % 3];
            (ds, w.manager.start(&request(ds, 1)).unwrap().view.session.id)
        }).collect();
        w.trainer.set_hold(false);
        let idle = w.trainer.wait_started(started.len(), WAIT) && w.manager.wait_idle(WAIT);
        idle && started.iter().all(|(ds, id)| {
            let s = w.manager.view(id).unwrap().session;
            match *ds {
                "iris" => s.state == SessionState::Completed,
                "fail-data" => s.state == SessionState::Failed && s.error_message.as_deref().is_some_and(|m| m.contains("NaN")),
                _ => s.state == SessionState::Failed && s.error_message.as_deref().is_some_and(|m| m.contains("scripted panic")),
            }
        })
    }

    // Property 16: a completed session has one metrics row per epoch, in order, its
    // current_epoch equals its total, and its model is in the registry.
    fn prop16_completed_sessions_have_full_history(epochs: u8) -> bool {
        let epochs = i64::from(epochs % 8 + 1);
        let w = world(1, 0);
        let id = w.manager.start(&request("iris", epochs)).unwrap().view.session.id;
        let idle = w.manager.wait_idle(WAIT);
        let s = w.manager.view(&id).unwrap().session;
        let history: Vec<u32> = w.manager.history(&id).unwrap().iter().map(|m| m.epoch).collect();
        idle && s.state == SessionState::Completed
            && history == (1..=u32::try_from(epochs).unwrap()).collect::<Vec<_>>()
            && s.current_epoch == s.total_epochs()
            && w.models.get(&ModelName::new(id.as_str()).unwrap()).unwrap().is_some()
    }
}

/// Keeps every event it is told of.
#[derive(Default)]
struct Collect(std::sync::Mutex<Vec<crate::events::Event>>);

impl crate::events::EventListener for Collect {
    fn on_event(&self, event: &crate::events::Event) {
        self.0.lock().unwrap().push(event.clone());
    }
}

// Property 70: whatever sessions do (complete, fail, panic, get cancelled while queued), each
// one's events are `session.queued`, then `session.started` and one `epoch` per finished epoch
// when it ran, then exactly one final event naming how it ended, with log events between; ids
// grow; and a listener is told exactly the stored events, in id order.
#[test]
fn prop70_each_sessions_events_follow_its_life_and_listeners_see_them_as_stored() {
    use crate::events::EventKind;
    fn prop(plan: Vec<(u8, u8)>) -> bool {
        let w = world(2, 0);
        let seen = Arc::new(Collect::default());
        w.manager.events().subscribe(seen.clone());
        w.trainer.set_hold(true);
        let mut expected = Vec::new();
        for (what, epochs) in plan.into_iter().take(6) {
            let epochs = u32::from(epochs % 3) + 1;
            let dataset = ["iris", "fail-data", "panic-data", "iris"][usize::from(what % 4)];
            let id = w.manager.start(&request(dataset, i64::from(epochs))).unwrap().view.session.id;
            let cancelled = what % 4 == 3 && w.manager.cancel(&id).is_ok();
            let life = match (cancelled, dataset) {
                (true, _) => vec![EventKind::SessionQueued, EventKind::SessionStopped],
                (false, "iris") => [vec![EventKind::SessionQueued, EventKind::SessionStarted], vec![EventKind::Epoch; epochs as usize]]
                    .concat()
                    .into_iter()
                    .chain([EventKind::SessionCompleted])
                    .collect(),
                (false, _) => vec![EventKind::SessionQueued, EventKind::SessionStarted, EventKind::SessionFailed],
            };
            expected.push((id, life));
        }
        w.trainer.set_hold(false);
        for (id, _) in &expected {
            assert!(w.manager.wait_for(id, WAIT, None).unwrap().session.state.is_terminal());
        }
        // The final event follows the state change a waiter sees: wait for the runs to end too.
        assert!(w.manager.wait_idle(WAIT));
        let stored = w.manager.events().after(0, None, u32::MAX).unwrap();
        let in_order = stored.windows(2).all(|p| p[0].id < p[1].id);
        let told = *seen.0.lock().unwrap() == stored;
        let lives = expected.iter().all(|(id, life)| {
            let kinds: Vec<EventKind> = stored.iter().filter(|e| e.session_id == *id && e.kind != EventKind::Log).map(|e| e.kind).collect();
            let last_is_final = stored.iter().rev().find(|e| e.session_id == *id).is_some_and(|e| e.kind.is_final());
            kinds == *life && last_is_final
        });
        in_order && told && lives
    }
    quickcheck::QuickCheck::new().tests(25).rng(quickcheck::Gen::new(8)).quickcheck(prop as fn(Vec<(u8, u8)>) -> bool);
}
