//! The one epoch loop every architecture trains through.
//!
//! The loop owns the order of things: resuming from the session's checkpoint, the stop check
//! before every batch, the NaN/infinity check on every batch loss and validation loss, the
//! heartbeat after every batch, each epoch's [`EpochMetrics`], the checkpoint written before
//! the epoch is reported, and the final save of the model file with its [`ModelMeta`].
//! An architecture supplies, as a [`Task`], its batches, a training step, an evaluation and
//! the description of its model.

use std::{path::Path, time::Instant};

use candle_core::{Device, DeviceLocation, Tensor, Var};
use candle_nn::VarMap;
use time::OffsetDateTime;
use trainyard_domain::{
    lr_schedule::LrScheduler,
    metrics::{EpochMetrics, LogLevel},
    ports::{RunControl, TrainError, TrainedModel, TrainingEvents, TrainingJob},
    registry::ModelFormat,
    selection::{Keep, Selection, Tracker},
};

use crate::{
    checkpoint,
    model_meta::{FinalMetrics, Kept, Model, ModelMeta, RunRecord},
    optim::TrainOptimizer,
    resume::{self, Checkpoint},
};

/// The file a run writes into its scratch directory.
pub const MODEL_FILE_NAME: &str = "model.safetensors";

/// What one training step computed, before the optimizer's update.
pub(crate) struct Step {
    /// The batch's mean loss, a scalar the optimizer differentiates.
    pub loss: Tensor,
    /// Predictions that were right.
    pub correct: usize,
    /// Predictions made (rows, or characters for the char-LSTM): accuracy is `correct / targets`.
    pub targets: usize,
    /// Samples in the batch, for the throughput.
    pub samples: usize,
}

/// What an architecture supplies to the loop.
pub(crate) trait Task {
    /// A batch: which samples it holds.
    type Batch;

    /// Every parameter and buffer: what checkpoints and the model file hold.
    fn varmap(&self) -> &VarMap;

    /// The variables the optimizer trains, in name order.
    fn trained_vars(&self) -> Vec<(String, Var)> {
        named_vars(self.varmap())
    }

    /// Whether a checkpoint of `model` holds this task's model, so the run can resume from it.
    fn resumes_from(&self, model: &Model) -> bool;

    /// Starts epoch `epoch` (counted from 1) and returns its batches in order; they depend only
    /// on the seed and the epoch, so a resumed run trains as the uninterrupted one would have.
    fn batches(&mut self, epoch: u32) -> Vec<Self::Batch>;

    /// The forward pass on one batch.
    fn step(&mut self, batch: &Self::Batch) -> candle_core::Result<Step>;

    /// Validation loss and accuracy after an epoch; `None` when nothing is held out.
    fn evaluate(&self) -> candle_core::Result<Option<(f64, f64)>>;

    /// The model's description, without the run's record.
    fn describe(&self) -> ModelMeta;

    /// Called once the run ends, however it ends.
    fn finish(&mut self) {}
}

/// Failure injection for tests, honoured by the loop for every architecture.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Faults {
    /// Request a stop once this many batches have run.
    #[cfg(test)]
    pub stop_after_batches: Option<u64>,
    /// Make this batch's loss NaN (counted from 0).
    #[cfg(test)]
    pub nan_at_batch: Option<u64>,
}

/// One session's run.
pub(crate) struct Session<'a> {
    pub job: &'a TrainingJob,
    pub device: &'a Device,
    pub events: &'a mut dyn TrainingEvents,
    pub control: &'a RunControl,
    pub faults: Faults,
}

impl Session<'_> {
    /// Reads the session's checkpoint, builds the task with `build` (which sees the
    /// checkpoint's model, if any), and trains it to completion, stop or failure.
    pub(crate) fn train<T: Task>(
        self,
        build: impl FnOnce(Option<&Model>, &mut dyn TrainingEvents) -> Result<T, TrainError>,
    ) -> Result<TrainedModel, TrainError> {
        let checkpoint = match Checkpoint::read(&self.job.scratch_dir, self.device) {
            Ok(checkpoint) => checkpoint,
            Err(why) => {
                self.events.log(LogLevel::Warning, format!("ignoring the checkpoint ({why}); starting over"));
                None
            }
        };
        let mut task = build(checkpoint.as_ref().map(|c| &c.description.model), &mut *self.events)?;
        let result = self.run(&mut task, checkpoint);
        task.finish();
        result
    }

    fn run<T: Task>(self, task: &mut T, checkpoint: Option<Checkpoint>) -> Result<TrainedModel, TrainError> {
        let Self { job, device, events, control, faults } = self;
        #[cfg(not(test))]
        let _ = faults;
        let cfg = &job.config;
        let checkpoint = checkpoint.filter(|c| {
            let fits = task.resumes_from(&c.description.model);
            if !fits {
                events.log(LogLevel::Warning, "ignoring a checkpoint written for another model shape; starting over".into());
            }
            fits
        });
        let mut optimizer = TrainOptimizer::new(cfg.optimizer, task.trained_vars(), cfg.learning_rate, cfg.momentum)
            .with_weight_decay(cfg.effective_weight_decay())
            .with_clip_grad_norm(cfg.clip_grad_norm);
        let selection = cfg.selection();
        let mut tracker = checkpoint.as_ref().and_then(|c| c.tracker).unwrap_or_default();
        let mut scheduler = LrScheduler::new(cfg.lr_schedule, cfg.learning_rate, cfg.epochs);
        if let Some(state) = checkpoint.as_ref().and_then(|c| c.plateau) {
            scheduler.plateau = state;
        }
        let start_epoch = match checkpoint {
            Some(ckpt) => {
                let grown = resume::assign(task.varmap(), &ckpt.tensors).map_err(TrainError::Data)?;
                if grown > 0 {
                    events.log(LogLevel::Info, format!("{grown} parameters grew to the larger vocabulary"));
                }
                ckpt.restore(&mut optimizer, events)?
            }
            None => 0,
        };
        let description = task.describe();

        let (mut completed, mut last, mut stopped, mut batches_run) = (start_epoch, None::<EpochMetrics>, false, 0u64);
        let mut stopped_early = false;
        'epochs: for epoch in start_epoch + 1..=cfg.epochs {
            let started = Instant::now();
            let (mut loss_sum, mut batches, mut correct, mut targets, mut samples) = (0.0f64, 0u32, 0usize, 0usize, 0usize);
            let batch_list = task.batches(epoch);
            for (b, batch) in batch_list.iter().enumerate() {
                #[cfg(test)]
                if faults.stop_after_batches == Some(batches_run) {
                    control.request_stop();
                }
                for snap in control.take_snapshots() {
                    let meta = run_meta(job, device, &description, last.as_ref().map(FinalMetrics::from), completed, false, None);
                    let file = job.scratch_dir.join(format!("snapshot-{snap}.safetensors"));
                    events.snapshot(snap, write_model(task.varmap(), &meta, file, completed, false, false));
                }
                if control.stop_requested() {
                    events.log(
                        LogLevel::Info,
                        format!(
                            "stop requested in epoch {epoch} before batch {} ({batches_run} batches run); saving the current weights",
                            b + 1
                        ),
                    );
                    stopped = true;
                    break 'epochs;
                }
                let step = task.step(batch).map_err(backend)?;
                #[cfg(test)]
                let step = if faults.nan_at_batch == Some(batches_run) {
                    Step { loss: (step.loss * f64::NAN).map_err(backend)?, ..step }
                } else {
                    step
                };
                let value = step.loss.to_scalar::<f32>().map_err(backend)?;
                if !value.is_finite() {
                    return Err(TrainError::Failed(format!(
                        "loss became {} at epoch {epoch}, batch {}; try a lower learning rate",
                        non_finite(f64::from(value)),
                        b + 1
                    )));
                }
                // A rate set live replaces the schedule.
                let rate = control.learning_rate().or(job.learning_rate);
                optimizer.set_learning_rate(rate.unwrap_or_else(|| scheduler.rate(epoch, b, batch_list.len())));
                optimizer.backward_step(&step.loss).map_err(backend)?;
                loss_sum += f64::from(value);
                batches += 1;
                correct += step.correct;
                targets += step.targets;
                samples += step.samples;
                batches_run += 1;
                events.batch_finished();
            }
            let train_seconds = started.elapsed().as_secs_f64();
            let validation = task.evaluate().map_err(backend)?;
            if let Some((loss, _)) = validation.filter(|(loss, _)| !loss.is_finite()) {
                return Err(TrainError::Failed(format!(
                    "validation loss became {} at epoch {epoch}; try a lower learning rate",
                    non_finite(loss)
                )));
            }
            #[allow(clippy::cast_precision_loss)]
            let metrics = EpochMetrics {
                epoch,
                loss: loss_sum / f64::from(batches.max(1)),
                accuracy: correct as f64 / targets.max(1) as f64,
                val_loss: validation.map(|(loss, _)| loss),
                val_accuracy: validation.map(|(_, accuracy)| accuracy),
                samples_per_second: samples as f64 / train_seconds.max(1e-9),
                epoch_seconds: started.elapsed().as_secs_f64(),
                learning_rate: Some(optimizer.learning_rate()),
                timestamp: OffsetDateTime::now_utc(),
            };
            let judged = selection.observe(&mut tracker, &metrics);
            let cut = scheduler.epoch_ended(&metrics).filter(|_| control.learning_rate().or(job.learning_rate).is_none());
            // The checkpoint first, holding this epoch's metrics too: once an epoch is reported
            // finished it can be resumed from, and a crash before the report replays it.
            resume::write(&job.scratch_dir, task.varmap(), &optimizer, &description, &metrics, &tracker, &scheduler.plateau)?;
            if judged.improved && cfg.keep == Keep::Best {
                resume::mark_best(&job.scratch_dir)?;
            }
            let line = epoch_line(&metrics, cfg.epochs);
            events.epoch_finished(metrics.clone());
            events.log(LogLevel::Info, line);
            if let Some(cut) = cut {
                events.log(LogLevel::Info, cut);
            }
            last = Some(metrics);
            completed = epoch;
            if judged.stop && epoch < cfg.epochs {
                events.log(LogLevel::Info, selection.stop_reason(&tracker));
                stopped_early = true;
                break;
            }
        }
        let kept = kept_epoch(cfg.keep, &selection, &tracker, last.as_ref(), stopped_early);
        // The best epoch's weights replace the current ones unless they are the same: the last
        // epoch was the best and no batch ran after it.
        // The model's final metrics are those of the epoch whose weights it holds.
        let mut final_metrics = last.as_ref().map(FinalMetrics::from);
        if let Some(k) = kept.as_ref().filter(|k| k.keep == "best" && (k.epoch != completed || stopped)) {
            match resume::load_best(&job.scratch_dir, task.varmap(), device) {
                Ok(best) => {
                    if k.epoch != completed {
                        final_metrics = best.as_ref().map(FinalMetrics::from);
                    }
                    events.log(
                        LogLevel::Info,
                        format!("keeping epoch {}'s weights: the best {} ({:.4})", k.epoch, k.metric, k.value.unwrap_or(f64::NAN)),
                    );
                }
                Err(why) => {
                    return Err(TrainError::Io(format!("could not read the best epoch's weights back ({why})")));
                }
            }
        }

        let meta = run_meta(job, device, &description, final_metrics, completed, stopped, kept);
        write_model(task.varmap(), &meta, job.scratch_dir.join(MODEL_FILE_NAME), completed, stopped, stopped_early)
    }
}

/// Writes a model file (the final one, or a snapshot) and describes it for the manager.
fn write_model(
    varmap: &VarMap,
    meta: &ModelMeta,
    file: std::path::PathBuf,
    completed: u32,
    stopped: bool,
    stopped_early: bool,
) -> Result<TrainedModel, TrainError> {
    save(varmap, meta, &file)?;
    Ok(TrainedModel {
        file,
        format: ModelFormat::Safetensors,
        metadata: meta.to_value(),
        epochs_completed: completed,
        stopped,
        stopped_early,
    })
}

/// The model's description with the run's record: what a model file (final or snapshot) says.
fn run_meta(
    job: &TrainingJob,
    device: &Device,
    description: &ModelMeta,
    final_metrics: Option<FinalMetrics>,
    completed: u32,
    stopped: bool,
    kept: Option<Kept>,
) -> ModelMeta {
    ModelMeta {
        run: Some(RunRecord {
            hyperparameters: (&job.config).into(),
            final_metrics,
            epochs_completed: Some(completed),
            stopped: Some(stopped),
            session_id: job.session_id.as_str().to_owned(),
            datasets: std::iter::once(&job.dataset).chain(&job.extra_datasets).map(|d| d.name.as_str().to_owned()).collect(),
            base_model: job.base_model.as_ref().map(|m| m.name.as_str().to_owned()),
            device: device_name(device),
            kept,
        }),
        ..description.clone()
    }
}

/// Which epoch's weights the model file holds: the best one by `selection` with `keep: best`
/// (when any epoch had a value to judge), else the last; `None` before any epoch finished.
fn kept_epoch(keep: Keep, selection: &Selection, tracker: &Tracker, last: Option<&EpochMetrics>, stopped_early: bool) -> Option<Kept> {
    let last = last?;
    let metric = selection.metric.as_str().to_owned();
    Some(match (keep, tracker.best) {
        (Keep::Best, Some(best)) => Kept { keep: "best".into(), epoch: best.epoch, metric, value: Some(best.value), stopped_early },
        _ => Kept { keep: "last".into(), epoch: last.epoch, value: selection.metric.value(last), metric, stopped_early },
    })
}

/// Writes the model file (to a temporary name, renamed into place).
fn save(varmap: &VarMap, meta: &ModelMeta, file: &Path) -> Result<(), TrainError> {
    checkpoint::save(varmap, meta.to_header(), file).map_err(|e| match e {
        checkpoint::SaveError::Backend(e) => backend(e),
        io @ checkpoint::SaveError::Io { .. } => TrainError::Io(io.to_string()),
    })
}

fn non_finite(value: f64) -> &'static str {
    if value.is_nan() {
        "NaN"
    } else {
        "infinite"
    }
}

/// A var map's variables with their names, in name order (so optimizer state lines up).
pub(crate) fn named_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut vars: Vec<_> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

pub(crate) fn backend(e: candle_core::Error) -> TrainError {
    TrainError::Failed(format!("training backend error: {e}"))
}

pub(crate) fn device_name(device: &Device) -> String {
    match device.location() {
        DeviceLocation::Cpu => "cpu".to_owned(),
        DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// `epoch 3/10: loss 0.1234, accuracy 95.0%, val_loss 0.2345, val_accuracy 93.3%`.
pub(crate) fn epoch_line(m: &EpochMetrics, epochs: u32) -> String {
    let mut line = format!("epoch {}/{epochs}: loss {:.4}, accuracy {:.1}%", m.epoch, m.loss, m.accuracy * 100.0);
    if let (Some(l), Some(a)) = (m.val_loss, m.val_accuracy) {
        line.push_str(&format!(", val_loss {l:.4}, val_accuracy {:.1}%", a * 100.0));
    }
    line.push_str(&format!(" ({:.2}s, {:.0} samples/s)", m.epoch_seconds, m.samples_per_second));
    line
}

/// How many rows' largest logit is their label.
pub(crate) fn count_correct(logits: &Tensor, labels: &[u32]) -> candle_core::Result<usize> {
    let predicted = logits.argmax(1)?.to_vec1::<u32>()?;
    Ok(predicted.iter().zip(labels).filter(|(p, l)| p == l).count())
}
