//! In-memory fakes of every port, for the domain's own tests and for adapters' tests.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Condvar, Mutex, PoisonError,
    },
    time::Duration as StdDuration,
};

use time::{Duration, OffsetDateTime};

use crate::{
    auth::{ApiKeyHash, ApiKeyRecord, AuditEntry},
    events::{Event, EventStore, NewEvent},
    ids::{DatasetName, ModelName, SessionId},
    metrics::{EpochMetrics, LogEntry, LogLevel},
    ports::{
        AuthStore, Clock, DatasetInspector, DatasetRegistry, InspectError, LogStore, MetricsStore, ModelInspector, ModelRegistry,
        RunControl, ScratchSpace, SessionRepository, StoreError, SystemMonitor, TrainError, TrainedModel, Trainer, TrainingEvents,
        TrainingJob,
    },
    registry::{DatasetInfo, DatasetRecord, ModelFormat, ModelInfo, ModelRecord, NewDataset, NewModel},
    session::{Session, SessionState},
    system::SystemSnapshot,
    webhooks::{AttemptRecord, Delivery, DeliveryId, DeliveryRecord, DeliveryState, DueDelivery, Webhook, WebhookId, WebhookStore},
};

use crate::lock as guard;

/// A clock that moves only when told.
#[derive(Debug)]
pub struct FixedClock(Mutex<OffsetDateTime>);

impl FixedClock {
    #[must_use]
    pub fn new(t: OffsetDateTime) -> Self {
        Self(Mutex::new(t))
    }

    pub fn advance(&self, d: Duration) {
        *guard(&self.0) += d;
    }
}

impl Clock for FixedClock {
    fn now(&self) -> OffsetDateTime {
        *guard(&self.0)
    }
}

/// Sessions in a vector, in insertion order.
#[derive(Debug, Default)]
pub struct MemorySessions(Mutex<Vec<Session>>);

impl SessionRepository for MemorySessions {
    fn insert(&self, session: &Session) -> Result<(), StoreError> {
        let mut all = guard(&self.0);
        if all.iter().any(|s| s.id == session.id) {
            return Err(StoreError::Conflict(format!("session {} exists", session.id)));
        }
        all.push(session.clone());
        Ok(())
    }

    fn update(&self, session: &Session) -> Result<(), StoreError> {
        let mut all = guard(&self.0);
        let slot = all.iter_mut().find(|s| s.id == session.id).ok_or_else(|| StoreError::NotFound(session.id.to_string()))?;
        let live = slot.live.clone();
        *slot = Session { live, ..session.clone() };
        Ok(())
    }

    fn set_live(&self, id: &SessionId, live: &crate::session::SessionLive) -> Result<bool, StoreError> {
        let mut all = guard(&self.0);
        match all.iter_mut().find(|s| s.id == *id && s.state == SessionState::Running) {
            Some(s) => {
                s.live = live.clone();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn get(&self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        Ok(guard(&self.0).iter().find(|s| s.id == *id).cloned())
    }

    fn list(&self) -> Result<Vec<Session>, StoreError> {
        Ok(guard(&self.0).clone())
    }

    fn list_in_state(&self, state: SessionState) -> Result<Vec<Session>, StoreError> {
        Ok(guard(&self.0).iter().filter(|s| s.state == state).cloned().collect())
    }

    fn list_ended_before(&self, cutoff: OffsetDateTime) -> Result<Vec<Session>, StoreError> {
        Ok(guard(&self.0).iter().filter(|s| s.state.is_terminal() && s.end_time.is_some_and(|t| t < cutoff)).cloned().collect())
    }
}

/// Metrics keyed by session and epoch.
#[derive(Debug, Default)]
pub struct MemoryMetrics(Mutex<HashMap<SessionId, BTreeMap<u32, EpochMetrics>>>);

impl MetricsStore for MemoryMetrics {
    fn record(&self, session: &SessionId, metrics: &EpochMetrics) -> Result<(), StoreError> {
        guard(&self.0).entry(session.clone()).or_default().insert(metrics.epoch, metrics.clone());
        Ok(())
    }

    fn latest(&self, session: &SessionId) -> Result<Option<EpochMetrics>, StoreError> {
        Ok(guard(&self.0).get(session).and_then(|m| m.values().next_back().cloned()))
    }

    fn history(&self, session: &SessionId) -> Result<Vec<EpochMetrics>, StoreError> {
        Ok(guard(&self.0).get(session).map(|m| m.values().cloned().collect()).unwrap_or_default())
    }

    fn discard_after(&self, session: &SessionId, epoch: u32) -> Result<(), StoreError> {
        if let Some(m) = guard(&self.0).get_mut(session) {
            m.retain(|e, _| *e <= epoch);
        }
        Ok(())
    }
}

/// Log lines in a vector.
#[derive(Debug, Default)]
pub struct MemoryLogs(Mutex<Vec<LogEntry>>);

impl LogStore for MemoryLogs {
    fn append(&self, entry: &LogEntry) -> Result<(), StoreError> {
        guard(&self.0).push(entry.clone());
        Ok(())
    }

    fn tail(&self, session: &SessionId, limit: u32) -> Result<Vec<LogEntry>, StoreError> {
        let all: Vec<_> = guard(&self.0).iter().filter(|e| e.session_id == *session).cloned().collect();
        let skip = all.len().saturating_sub(limit as usize);
        Ok(all.into_iter().skip(skip).collect())
    }
}

/// Events in a vector, numbered from 1.
#[derive(Debug, Default)]
pub struct MemoryEvents(Mutex<Vec<Event>>);

impl EventStore for MemoryEvents {
    fn append(&self, event: NewEvent) -> Result<Event, StoreError> {
        let mut all = guard(&self.0);
        let id = all.len() as u64 + 1;
        let event = Event { id, session_id: event.session_id, kind: event.kind, created_at: event.created_at, payload: event.payload };
        all.push(event.clone());
        Ok(event)
    }

    fn after(&self, after: u64, session: Option<&SessionId>, limit: u32) -> Result<Vec<Event>, StoreError> {
        Ok(guard(&self.0)
            .iter()
            .filter(|e| e.id > after && session.is_none_or(|s| *s == e.session_id))
            .take(limit as usize)
            .cloned()
            .collect())
    }

    fn last_id(&self) -> Result<u64, StoreError> {
        Ok(guard(&self.0).last().map_or(0, |e| e.id))
    }
}

/// Webhooks and their deliveries in memory, fed from the events of a [`MemoryEvents`].
#[derive(Debug)]
pub struct MemoryWebhooks {
    events: Arc<MemoryEvents>,
    tables: Mutex<WebhookTables>,
}

#[derive(Debug, Default)]
struct WebhookTables {
    /// Each webhook with the last event id recorded before it.
    hooks: Vec<(Webhook, u64)>,
    /// Each delivery with its enqueue number and its event.
    deliveries: Vec<(u64, Delivery, Event)>,
    /// The last event enqueued.
    cursor: u64,
    next_seq: u64,
}

impl MemoryWebhooks {
    /// A store fed from `events`; events already there are never delivered.
    #[must_use]
    pub fn new(events: Arc<MemoryEvents>) -> Self {
        let cursor = events.last_id().unwrap_or(0);
        Self { events, tables: Mutex::new(WebhookTables { cursor, ..WebhookTables::default() }) }
    }
}

impl WebhookStore for MemoryWebhooks {
    fn insert_webhook(&self, webhook: &Webhook) -> Result<(), StoreError> {
        let since = self.events.last_id()?;
        let mut t = guard(&self.tables);
        if t.hooks.iter().any(|(h, _)| h.id == webhook.id) {
            return Err(StoreError::Conflict(format!("webhook {}", webhook.id)));
        }
        t.hooks.push((webhook.clone(), since));
        Ok(())
    }

    fn webhooks(&self) -> Result<Vec<Webhook>, StoreError> {
        Ok(guard(&self.tables).hooks.iter().map(|(h, _)| h.clone()).collect())
    }

    fn webhook(&self, id: &WebhookId) -> Result<Option<Webhook>, StoreError> {
        Ok(guard(&self.tables).hooks.iter().find(|(h, _)| h.id == *id).map(|(h, _)| h.clone()))
    }

    fn delete_webhook(&self, id: &WebhookId) -> Result<bool, StoreError> {
        let mut t = guard(&self.tables);
        let before = t.hooks.len();
        t.hooks.retain(|(h, _)| h.id != *id);
        t.deliveries.retain(|(_, d, _)| d.webhook_id != *id);
        Ok(t.hooks.len() < before)
    }

    fn enqueue_new_events(&self, at: OffsetDateTime, limit: u32) -> Result<u32, StoreError> {
        let cursor = guard(&self.tables).cursor;
        let events = self.events.after(cursor, None, limit)?;
        let mut t = guard(&self.tables);
        for event in &events {
            let wanted: Vec<WebhookId> =
                t.hooks.iter().filter(|(h, since)| event.id > *since && h.events.matches(event.kind)).map(|(h, _)| h.id.clone()).collect();
            for webhook_id in wanted {
                let seq = t.next_seq;
                t.next_seq += 1;
                let delivery = Delivery { webhook_id, record: DeliveryRecord::pending(event, at) };
                t.deliveries.push((seq, delivery, event.clone()));
            }
            t.cursor = event.id;
        }
        Ok(u32::try_from(events.len()).unwrap_or(u32::MAX))
    }

    fn due(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<DueDelivery>, StoreError> {
        let t = guard(&self.tables);
        let mut first: Vec<&(u64, Delivery, Event)> = Vec::new();
        for entry in t.deliveries.iter().filter(|(_, d, _)| d.record.next_attempt_at.is_some_and(|n| n <= now)) {
            let key = |e: &(u64, Delivery, Event)| (e.1.record.next_attempt_at, e.0);
            match first.iter_mut().find(|f| f.1.webhook_id == entry.1.webhook_id) {
                Some(f) if key(entry) < key(f) => *f = entry,
                Some(_) => {}
                None => first.push(entry),
            }
        }
        first.sort_by_key(|e| (e.1.record.next_attempt_at, e.0));
        Ok(first
            .into_iter()
            .take(limit as usize)
            .filter_map(|(_, d, event)| {
                let (hook, _) = t.hooks.iter().find(|(h, _)| h.id == d.webhook_id)?;
                Some(DueDelivery {
                    id: d.record.id.clone(),
                    webhook_id: d.webhook_id.clone(),
                    url: hook.url.clone(),
                    secret: hook.secret.clone(),
                    event: event.clone(),
                    attempts: d.record.attempts,
                })
            })
            .collect())
    }

    fn next_due_after(&self, now: OffsetDateTime) -> Result<Option<OffsetDateTime>, StoreError> {
        Ok(guard(&self.tables).deliveries.iter().filter_map(|(_, d, _)| d.record.next_attempt_at).filter(|n| *n > now).min())
    }

    fn record_attempt(&self, id: &DeliveryId, record: &AttemptRecord) -> Result<bool, StoreError> {
        let mut t = guard(&self.tables);
        let Some((_, d, _)) = t.deliveries.iter_mut().find(|(_, d, _)| d.record.id == *id && d.record.state == DeliveryState::Pending)
        else {
            return Ok(false);
        };
        d.record.apply(record);
        Ok(true)
    }

    fn deliveries(&self, webhook: &WebhookId, limit: u32) -> Result<Vec<Delivery>, StoreError> {
        let t = guard(&self.tables);
        Ok(t.deliveries.iter().rev().filter(|(_, d, _)| d.webhook_id == *webhook).take(limit as usize).map(|(_, d, _)| d.clone()).collect())
    }

    fn prune(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        let mut t = guard(&self.tables);
        let kept = t.deliveries.len();
        t.deliveries.retain(|(_, d, _)| d.record.state == DeliveryState::Pending || d.record.last_attempt_at.is_none_or(|at| at >= before));
        Ok((kept - t.deliveries.len()) as u64)
    }
}

/// Model records without files.
#[derive(Debug, Default)]
pub struct MemoryModels(Mutex<Vec<ModelRecord>>);

impl ModelRegistry for MemoryModels {
    fn list(&self) -> Result<Vec<ModelRecord>, StoreError> {
        Ok(guard(&self.0).clone())
    }

    fn get(&self, name: &ModelName) -> Result<Option<ModelRecord>, StoreError> {
        Ok(guard(&self.0).iter().find(|m| m.name == *name).cloned())
    }

    fn staging_dir(&self) -> PathBuf {
        PathBuf::from("staging")
    }

    fn import(&self, model: NewModel) -> Result<ModelRecord, StoreError> {
        let mut all = guard(&self.0);
        if all.iter().any(|m| m.name == model.name) {
            return Err(StoreError::Conflict(format!("model '{}' already exists", model.name)));
        }
        let rec = model_record(model);
        all.push(rec.clone());
        Ok(rec)
    }

    fn replace(&self, model: NewModel) -> Result<ModelRecord, StoreError> {
        let mut all = guard(&self.0);
        all.retain(|m| m.name != model.name);
        let rec = model_record(model);
        all.push(rec.clone());
        Ok(rec)
    }

    fn copy(&self, source: &ModelRecord, name: ModelName, metadata: serde_json::Value) -> Result<ModelRecord, StoreError> {
        self.import(NewModel {
            name,
            staged_file: source.file_path.clone(),
            format: source.format,
            session_id: source.session_id.clone(),
            metadata,
            content_hash: source.content_hash.clone(),
        })
    }

    fn delete(&self, name: &ModelName) -> Result<(), StoreError> {
        let mut all = guard(&self.0);
        let before = all.len();
        all.retain(|m| m.name != *name);
        if all.len() == before {
            Err(StoreError::NotFound(format!("model '{name}'")))
        } else {
            Ok(())
        }
    }
}

fn model_record(model: NewModel) -> ModelRecord {
    ModelRecord {
        file_path: model.staged_file,
        name: model.name,
        size_bytes: 0,
        format: model.format,
        created_at: OffsetDateTime::UNIX_EPOCH,
        session_id: model.session_id,
        metadata: model.metadata,
        content_hash: model.content_hash,
    }
}

fn dataset_record(dataset: NewDataset) -> DatasetRecord {
    DatasetRecord {
        file_path: dataset.staged_file,
        name: dataset.name,
        size_bytes: 0,
        info: dataset.info,
        created_at: OffsetDateTime::UNIX_EPOCH,
        content_hash: dataset.content_hash,
    }
}

/// Dataset records without files.
#[derive(Debug, Default)]
pub struct MemoryDatasets(Mutex<Vec<DatasetRecord>>);

impl MemoryDatasets {
    /// Adds a dataset of `format` directly.
    pub fn add(&self, name: &str, format: crate::registry::DatasetFormat) {
        guard(&self.0).push(DatasetRecord {
            name: DatasetName::new(name).unwrap_or_else(|e| panic!("bad test dataset name {name}: {e}")),
            file_path: PathBuf::from(name),
            size_bytes: 0,
            info: DatasetInfo { format, sample_count: Some(10), dimensions: None, statistics: serde_json::Value::Null },
            created_at: OffsetDateTime::UNIX_EPOCH,
            content_hash: None,
        });
    }
}

impl DatasetRegistry for MemoryDatasets {
    fn list(&self) -> Result<Vec<DatasetRecord>, StoreError> {
        Ok(guard(&self.0).clone())
    }

    fn get(&self, name: &DatasetName) -> Result<Option<DatasetRecord>, StoreError> {
        Ok(guard(&self.0).iter().find(|d| d.name == *name).cloned())
    }

    fn staging_dir(&self) -> PathBuf {
        PathBuf::from("staging")
    }

    fn import(&self, dataset: NewDataset) -> Result<DatasetRecord, StoreError> {
        let mut all = guard(&self.0);
        if all.iter().any(|d| d.name == dataset.name) {
            return Err(StoreError::Conflict(format!("dataset '{}' already exists", dataset.name)));
        }
        let rec = dataset_record(dataset);
        all.push(rec.clone());
        Ok(rec)
    }

    fn replace(&self, dataset: NewDataset) -> Result<DatasetRecord, StoreError> {
        let mut all = guard(&self.0);
        all.retain(|d| d.name != dataset.name);
        let rec = dataset_record(dataset);
        all.push(rec.clone());
        Ok(rec)
    }

    fn delete(&self, name: &DatasetName) -> Result<(), StoreError> {
        let mut all = guard(&self.0);
        let before = all.len();
        all.retain(|d| d.name != *name);
        if all.len() == before {
            Err(StoreError::NotFound(format!("dataset '{name}'")))
        } else {
            Ok(())
        }
    }
}

/// An inspector that calls every file a CSV with ten samples.
#[derive(Debug, Default)]
pub struct CsvInspector;

impl DatasetInspector for CsvInspector {
    fn inspect(&self, _path: &Path, file_name: Option<&str>) -> Result<DatasetInfo, InspectError> {
        if file_name.is_some_and(|n| n.ends_with(".bad")) {
            return Err(InspectError::Invalid("not a dataset".into()));
        }
        Ok(DatasetInfo {
            format: crate::registry::DatasetFormat::Csv,
            sample_count: Some(10),
            dimensions: Some("4".into()),
            statistics: serde_json::Value::Null,
        })
    }
}

/// A model inspector that reports one tensor of three parameters for every file, except that a
/// path ending in `.bad` is refused.
#[derive(Debug, Default)]
pub struct CountingModelInspector;

impl ModelInspector for CountingModelInspector {
    fn inspect(&self, path: &Path, format: ModelFormat) -> Result<ModelInfo, InspectError> {
        if path.to_string_lossy().ends_with(".bad") {
            return Err(InspectError::Invalid("not a model".into()));
        }
        Ok(ModelInfo { format, metadata: serde_json::json!({ "tensor_count": 1, "parameter_count": 3 }) })
    }
}

/// Managed keys and audit entries in memory.
#[derive(Debug, Default)]
pub struct MemoryAuthStore {
    keys: Mutex<Vec<ApiKeyRecord>>,
    audit: Mutex<Vec<AuditEntry>>,
}

impl AuthStore for MemoryAuthStore {
    fn insert_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        guard(&self.keys).push(key.clone());
        Ok(())
    }

    fn find_key(&self, hash: &ApiKeyHash) -> Result<Option<ApiKeyRecord>, StoreError> {
        Ok(guard(&self.keys).iter().find(|k| k.hash == *hash).cloned())
    }

    fn list_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        Ok(guard(&self.keys).clone())
    }

    fn revoke_key(&self, id_or_fingerprint: &str, at: OffsetDateTime) -> Result<ApiKeyRecord, StoreError> {
        let mut keys = guard(&self.keys);
        let key = keys
            .iter_mut()
            .find(|k| k.id == id_or_fingerprint || k.fingerprint == id_or_fingerprint)
            .ok_or_else(|| StoreError::NotFound(format!("key '{id_or_fingerprint}'")))?;
        key.revoked_at = key.revoked_at.or(Some(at));
        Ok(key.clone())
    }

    fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        guard(&self.audit).push(entry.clone());
        Ok(())
    }

    fn list_audit(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        Ok(guard(&self.audit).iter().rev().take(limit as usize).cloned().collect())
    }
}

/// Scratch directories that are only names; remembers what was removed.
#[derive(Debug, Default)]
pub struct MemoryScratch(pub Mutex<Vec<SessionId>>);

impl ScratchSpace for MemoryScratch {
    fn dir_for(&self, session: &SessionId) -> Result<PathBuf, StoreError> {
        Ok(PathBuf::from("scratch").join(session.as_str()))
    }

    fn remove(&self, session: &SessionId) -> Result<(), StoreError> {
        guard(&self.0).push(session.clone());
        Ok(())
    }
}

/// A monitor whose available memory tests set.
#[derive(Debug)]
pub struct FakeMonitor(pub AtomicU64);

impl Default for FakeMonitor {
    fn default() -> Self {
        Self(AtomicU64::new(16_000))
    }
}

impl SystemMonitor for FakeMonitor {
    fn snapshot(&self) -> SystemSnapshot {
        let available = self.0.load(Ordering::SeqCst);
        SystemSnapshot {
            cpu_usage_percent: 0.0,
            cpu_count: 2,
            memory_used_mb: 32_000u64.saturating_sub(available),
            memory_total_mb: 32_000,
            memory_available_mb: available,
            server_memory_mb: 20,
            disk_free_gb: 10.0,
            disk_total_gb: 20.0,
            gpus: Vec::new(),
            gpu_error: Some("no GPU in tests".into()),
            timestamp: OffsetDateTime::UNIX_EPOCH,
        }
    }
}

/// A trainer that reports one metric per epoch. While `hold` is set, runs wait before their
/// first epoch (until released or stopped). Datasets named `fail*` fail, `panic*` panic, and
/// `crash*` crash (as a run process that died) at their first attempt and train at the next.
/// Snapshots are taken before each epoch, and a learning rate set live is each epoch's.
/// Datasets named `sweep*` report a validation accuracy of ten times the learning rate, so
/// that a sweep's trials differ.
#[derive(Debug, Default)]
pub struct ScriptedTrainer {
    hold: Mutex<bool>,
    released: Condvar,
    /// Session ids in the order their runs began.
    pub started: Mutex<Vec<SessionId>>,
    running: AtomicUsize,
    /// The most runs seen at once.
    pub max_concurrent_seen: AtomicUsize,
}

impl ScriptedTrainer {
    /// The peak memory every run reports, in MB.
    pub const PEAK_MB: u64 = 42;

    /// Makes new and waiting runs wait (`true`) or go (`false`).
    pub fn set_hold(&self, hold: bool) {
        *guard(&self.hold) = hold;
        self.released.notify_all();
    }

    /// Waits until `n` runs have begun, or `timeout` passes; returns whether they had.
    pub fn wait_started(&self, n: usize, timeout: StdDuration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut hold = guard(&self.hold);
        while guard(&self.started).len() < n {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            hold = self.released.wait_timeout(hold, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        true
    }
}

impl Trainer for ScriptedTrainer {
    fn train(&self, job: &TrainingJob, events: &mut dyn TrainingEvents, stop: &RunControl) -> Result<TrainedModel, TrainError> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_concurrent_seen.fetch_max(now, Ordering::SeqCst);
        let attempt = {
            // Push under the hold lock, which waiters hold while they check, so no wake-up is lost.
            let _hold = guard(&self.hold);
            let mut started = guard(&self.started);
            started.push(job.session_id.clone());
            started.iter().filter(|id| **id == job.session_id).count()
        };
        self.released.notify_all();
        struct Leave<'a>(&'a AtomicUsize);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _leave = Leave(&self.running);
        {
            let mut hold = guard(&self.hold);
            while *hold && !stop.stop_requested() {
                // Stop requests arrive without a notification, so wake up now and then to look.
                hold = self.released.wait_timeout(hold, StdDuration::from_millis(5)).unwrap_or_else(PoisonError::into_inner).0;
            }
        }
        events.usage(crate::ports::RunUsage { pid: None, memory_mb: Self::PEAK_MB - 1, peak_memory_mb: Self::PEAK_MB });
        let name = job.config.dataset_name.as_str();
        if name.starts_with("panic") {
            panic!("scripted panic");
        }
        if name.starts_with("fail") {
            return Err(TrainError::Failed("loss became NaN at epoch 1".into()));
        }
        if name.starts_with("crash") && attempt == 1 {
            return Err(TrainError::Crashed("the training process was killed (signal 9)".into()));
        }
        let mut done = 0;
        for epoch in 1..=job.config.epochs {
            for snap in stop.take_snapshots() {
                let file = job.scratch_dir.join(format!("snapshot-{snap}.safetensors"));
                let metadata = serde_json::json!({ "architecture": job.config.model_architecture.as_str() });
                let model = TrainedModel {
                    file,
                    format: ModelFormat::Safetensors,
                    metadata,
                    epochs_completed: done,
                    stopped: false,
                    stopped_early: false,
                };
                events.snapshot(snap, Ok(model));
            }
            if stop.stop_requested() {
                break;
            }
            events.log(LogLevel::Info, format!("epoch {epoch}"));
            events.epoch_finished(EpochMetrics {
                epoch,
                loss: 1.0 / f64::from(epoch),
                accuracy: 0.5,
                val_loss: Some(1.0),
                val_accuracy: Some(if name.starts_with("sweep") { job.config.learning_rate * 10.0 } else { 0.5 }),
                samples_per_second: 100.0,
                epoch_seconds: 0.01,
                learning_rate: stop.learning_rate().or(job.learning_rate),
                timestamp: OffsetDateTime::UNIX_EPOCH,
            });
            done = epoch;
        }
        Ok(TrainedModel {
            file: job.scratch_dir.join("model.safetensors"),
            format: ModelFormat::Safetensors,
            metadata: serde_json::json!({ "architecture": job.config.model_architecture.as_str() }),
            epochs_completed: done,
            stopped: stop.stop_requested(),
            stopped_early: false,
        })
    }

    fn check_base_model(&self, _config: &crate::config::TrainingConfig, model: &ModelRecord) -> Result<(), String> {
        if model.name.as_str().starts_with("bad") {
            Err("hidden_size is 3 in the base model but 256 in this session".into())
        } else {
            Ok(())
        }
    }

    /// Ten MB of host memory per sample of a batch, so that tests choose a session's size.
    fn estimate_memory(
        &self,
        config: &crate::config::TrainingConfig,
        _datasets: &[crate::registry::DatasetRecord],
    ) -> Result<crate::ports::MemoryEstimate, String> {
        let device = match config.device {
            crate::config::Device::Auto => crate::config::Device::Cpu,
            other => other,
        };
        Ok(crate::ports::MemoryEstimate { device, host_mb: u64::from(config.batch_size) * 10, gpu_mb: 0 })
    }

    fn check_device(&self, device: crate::config::Device) -> Result<(), String> {
        match device {
            crate::config::Device::Cuda(_) => Err("this build has no CUDA support".into()),
            _ => Ok(()),
        }
    }
}

/// Sweeps in memory.
#[derive(Debug, Default)]
pub struct MemorySweeps(Mutex<Vec<crate::sweep::Sweep>>);

impl crate::ports::SweepStore for MemorySweeps {
    fn insert(&self, sweep: &crate::sweep::Sweep) -> Result<(), StoreError> {
        let mut all = guard(&self.0);
        if all.iter().any(|s| s.spec.name == sweep.spec.name) {
            return Err(StoreError::Conflict(format!("a sweep named '{}' exists", sweep.spec.name)));
        }
        all.push(sweep.clone());
        Ok(())
    }

    fn update(&self, sweep: &crate::sweep::Sweep) -> Result<(), StoreError> {
        let mut all = guard(&self.0);
        let slot = all.iter_mut().find(|s| s.id == sweep.id).ok_or_else(|| StoreError::NotFound(format!("sweep {}", sweep.id)))?;
        *slot = sweep.clone();
        Ok(())
    }

    fn get(&self, id: &crate::ids::SweepId) -> Result<Option<crate::sweep::Sweep>, StoreError> {
        Ok(guard(&self.0).iter().find(|s| s.id == *id).cloned())
    }

    fn list(&self) -> Result<Vec<crate::sweep::Sweep>, StoreError> {
        Ok(guard(&self.0).clone())
    }
}

/// An epoch's metrics for tests: the given losses, accuracy 0.5 and a validation accuracy of
/// `1 - val_loss`, at the Unix epoch.
#[must_use]
pub fn epoch_metrics(epoch: u32, loss: f64, val_loss: Option<f64>) -> EpochMetrics {
    EpochMetrics {
        epoch,
        loss,
        accuracy: 0.5,
        val_loss,
        val_accuracy: val_loss.map(|l| 1.0 - l),
        samples_per_second: 1.0,
        epoch_seconds: 1.0,
        learning_rate: None,
        timestamp: OffsetDateTime::UNIX_EPOCH,
    }
}
