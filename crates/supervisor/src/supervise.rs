//! The supervisor side: [`ProcessTrainer`] trains each job in a run process of its own and
//! watches it.

use std::{
    collections::VecDeque,
    io::{BufRead, BufReader, Write},
    os::unix::process::ExitStatusExt,
    path::PathBuf,
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{mpsc, Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use trainyard_domain::{
    config::Device,
    metrics::LogLevel,
    ports::{MemoryEstimate, RunControl, RunUsage, TrainError, TrainedModel, Trainer, TrainingEvents, TrainingJob},
    registry::{DatasetRecord, ModelRecord},
    TrainingConfig,
};

use crate::{
    human_mb, procfs,
    protocol::{FromRun, RunLimits, ToRun},
};

/// How the run process is started: a program, its arguments (the server's own binary and its
/// internal `run-session` command) and the environment variables it gets beside the server's.
#[derive(Debug, Clone)]
pub struct RunCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// What the supervisor enforces on every run.
#[derive(Debug, Clone, Copy)]
pub struct SupervisionLimits {
    /// A run whose resident memory passes this is killed, in MB; the run process also holds a
    /// data-segment rlimit of this size on the CPU.
    pub memory_limit_mb: u64,
    /// A run that finishes no batch for this long is killed.
    pub stall_timeout: Duration,
    /// How often the run's memory is measured.
    pub sample_every: Duration,
    /// A GPU is usable here, so `auto` means a GPU. GPU runs get the memory watch but no
    /// data-segment rlimit, which would break the driver's large mappings.
    pub gpu_usable: bool,
}

/// Lines of a run's standard error kept to explain how it died.
const STDERR_TAIL: usize = 20;

/// A [`Trainer`] that trains each job in a process of its own. Estimates, device and base-model
/// checks are answered by `checks`, the in-process trainer the run process also uses.
pub struct ProcessTrainer {
    command: RunCommand,
    limits: SupervisionLimits,
    checks: Arc<dyn Trainer>,
}

impl std::fmt::Debug for ProcessTrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessTrainer").field("command", &self.command).field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl ProcessTrainer {
    #[must_use]
    pub fn new(command: RunCommand, limits: SupervisionLimits, checks: Arc<dyn Trainer>) -> Self {
        Self { command, limits, checks }
    }
}

/// Why the supervisor killed a run.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Killed {
    Memory { at_mb: u64 },
    Stalled,
}

/// What the supervisor's loop hears.
enum Heard {
    Message(FromRun),
    /// A line that is not a message (something in the run printed to standard output).
    Noise(String),
    /// The session's `RunControl` has a command to pass on.
    Command,
    Closed,
}

impl Trainer for ProcessTrainer {
    fn train(&self, job: &TrainingJob, events: &mut dyn TrainingEvents, control: &RunControl) -> Result<TrainedModel, TrainError> {
        let on_cpu = match job.config.device {
            Device::Cpu => true,
            Device::Auto => !self.limits.gpu_usable,
            Device::Cuda(_) => false,
        };
        let limits = RunLimits { memory_limit_mb: on_cpu.then_some(self.limits.memory_limit_mb) };
        let mut child = Command::new(&self.command.program)
            .args(&self.command.args)
            .envs(self.command.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| TrainError::Io(format!("could not start the training process: {e}")))?;
        let pid = child.id();
        let mut guard = KillOnDrop(Some(&mut child));
        let child = guard.0.as_deref_mut().ok_or_else(|| TrainError::Io("the training process vanished".to_owned()))?;
        let mut stdin = child.stdin.take().ok_or_else(|| TrainError::Io("no pipe to the training process".to_owned()))?;
        let (tx, rx) = mpsc::channel();
        let wake = tx.clone();
        relay_stdout(child, tx)?;
        let stderr_tail = relay_stderr(child, &job.session_id.to_string())?;
        let start = ToRun::Start { job: Box::new(job.clone()), limits };
        if let Err(e) = stdin.write_all(start.to_line().as_bytes()).and_then(|()| stdin.flush()) {
            return Err(TrainError::Io(format!("could not hand the job to the training process: {e}")));
        }
        events.log(LogLevel::Info, format!("training process {pid} started (memory limit {})", human_mb(self.limits.memory_limit_mb)));
        let watch = Watch { pid, limits: self.limits, control, stdin: Some(stdin) };
        control.set_waker(move || {
            let _ = wake.send(Heard::Command);
        });
        let (result, killed, usage) = watch.run(&rx, child, events);
        control.clear_waker();
        let status = child.wait().map_err(|e| TrainError::Io(format!("could not wait for the training process: {e}")))?;
        guard.0 = None;
        let said = stderr_tail.lock().unwrap_or_else(PoisonError::into_inner).clone();
        outcome(result, killed, status, usage, self.limits.memory_limit_mb, &said)
    }

    fn estimate_memory(&self, config: &TrainingConfig, datasets: &[DatasetRecord]) -> Result<MemoryEstimate, String> {
        self.checks.estimate_memory(config, datasets)
    }

    fn check_device(&self, device: Device) -> Result<(), String> {
        self.checks.check_device(device)
    }

    fn check_base_model(&self, config: &TrainingConfig, model: &ModelRecord) -> Result<(), String> {
        self.checks.check_base_model(config, model)
    }
}

/// Kills and reaps the run process if the supervisor leaves early (an error, a panic).
struct KillOnDrop<'a>(Option<&'a mut Child>);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn relay_stdout(child: &mut Child, tx: mpsc::Sender<Heard>) -> Result<(), TrainError> {
    let stdout = child.stdout.take().ok_or_else(|| TrainError::Io("no pipe from the training process".to_owned()))?;
    std::thread::Builder::new()
        .name("run-stdout".into())
        .spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let heard = serde_json::from_str::<FromRun>(&line).map_or(Heard::Noise(line), Heard::Message);
                if tx.send(heard).is_err() {
                    return;
                }
            }
            let _ = tx.send(Heard::Closed);
        })
        .map(|_| ())
        .map_err(|e| TrainError::Io(format!("could not watch the training process: {e}")))
}

/// What a run said on its standard error, kept to explain how it died.
#[derive(Debug, Clone, Default)]
pub(crate) struct Stderr {
    /// The last lines that are not backtrace noise.
    pub(crate) tail: VecDeque<String>,
    /// It said that an allocation failed (Rust's out-of-memory abort).
    pub(crate) allocation_failed: bool,
}

impl Stderr {
    pub(crate) fn hear(&mut self, line: &str) {
        let trimmed = line.trim();
        if trimmed.starts_with("memory allocation of") && trimmed.ends_with("failed") {
            self.allocation_failed = true;
        }
        let noise = trimmed.is_empty()
            || trimmed.starts_with("note: ")
            || trimmed.starts_with("stack backtrace:")
            || trimmed.starts_with("at ")
            || trimmed.split_once(": ").is_some_and(|(n, _)| n.chars().all(|c| c.is_ascii_digit()));
        if noise {
            return;
        }
        if self.tail.len() == STDERR_TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(trimmed.to_owned());
    }
}

/// Passes the run's standard error to the server's log and keeps what explains a death.
fn relay_stderr(child: &mut Child, session: &str) -> Result<Arc<Mutex<Stderr>>, TrainError> {
    let stderr = child.stderr.take().ok_or_else(|| TrainError::Io("no pipe from the training process".to_owned()))?;
    let said = Arc::new(Mutex::new(Stderr::default()));
    let kept = Arc::clone(&said);
    let session = session.to_owned();
    std::thread::Builder::new()
        .name("run-stderr".into())
        .spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                tracing::warn!(session = %session, "run: {line}");
                kept.lock().unwrap_or_else(PoisonError::into_inner).hear(&line);
            }
        })
        .map_err(|e| TrainError::Io(format!("could not watch the training process: {e}")))?;
    Ok(said)
}

/// The supervisor's watch over one run.
struct Watch<'a> {
    pid: u32,
    limits: SupervisionLimits,
    control: &'a RunControl,
    stdin: Option<ChildStdin>,
}

impl Watch<'_> {
    /// Sends the run a command; a run that no longer reads is ending anyway.
    fn tell(&mut self, command: &ToRun) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = stdin.write_all(command.to_line().as_bytes()).and_then(|()| stdin.flush());
        }
    }

    /// Relays messages until the run closes its output; measures memory and progress meanwhile,
    /// killing the run past the memory limit or the stall timeout.
    fn run(
        mut self,
        rx: &mpsc::Receiver<Heard>,
        child: &mut Child,
        events: &mut dyn TrainingEvents,
    ) -> (Option<Result<TrainedModel, TrainError>>, Option<Killed>, RunUsage) {
        let mut result = None;
        let mut killed = None;
        let mut usage = RunUsage { pid: Some(self.pid), ..RunUsage::default() };
        let mut last_progress = Instant::now();
        let mut stop_sent = false;
        loop {
            match rx.recv_timeout(self.limits.sample_every) {
                Ok(Heard::Message(message)) => {
                    last_progress = Instant::now();
                    match message {
                        FromRun::Epoch { metrics } => events.epoch_finished(metrics),
                        FromRun::Log { level, message } => events.log(level, message),
                        FromRun::Resumed { epoch } => events.resumed(epoch),
                        FromRun::Progress { .. } => events.batch_finished(),
                        FromRun::Snapshot { id, result } => events.snapshot(id, result),
                        FromRun::Finished { model } => result = Some(Ok(model)),
                        FromRun::Failed { error } => result = Some(Err(error)),
                        FromRun::Crashed { message } => {
                            result = Some(Err(TrainError::Crashed(format!("the training process crashed: {message}"))));
                        }
                    }
                }
                Ok(Heard::Noise(line)) => tracing::debug!(pid = self.pid, "run printed: {line}"),
                Ok(Heard::Command) => {}
                Ok(Heard::Closed) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if self.control.stop_requested() && !stop_sent {
                stop_sent = true;
                self.tell(&ToRun::Stop);
            }
            if self.control.take_pending() {
                if let Some(rate) = self.control.learning_rate() {
                    self.tell(&ToRun::LearningRate { rate });
                }
                for id in self.control.take_snapshots() {
                    self.tell(&ToRun::Snapshot { id });
                }
            }
            if killed.is_some() {
                continue;
            }
            if let Some(resident) = procfs::resident(self.pid) {
                let changed = resident.now_mb != usage.memory_mb || resident.peak_mb != usage.peak_memory_mb;
                usage.memory_mb = resident.now_mb;
                usage.peak_memory_mb = usage.peak_memory_mb.max(resident.peak_mb);
                if changed {
                    events.usage(usage);
                }
                if resident.now_mb > self.limits.memory_limit_mb {
                    killed = Some(Killed::Memory { at_mb: resident.now_mb });
                    let _ = child.kill();
                    continue;
                }
            }
            if result.is_none() && last_progress.elapsed() > self.limits.stall_timeout {
                killed = Some(Killed::Stalled);
                let _ = child.kill();
            }
        }
        // Closing the pipe tells a run still alive that its supervisor is done with it.
        self.stdin = None;
        (result, killed, usage)
    }
}

/// The run's result, or why it failed in words a person understands.
pub(crate) fn outcome(
    result: Option<Result<TrainedModel, TrainError>>,
    killed: Option<Killed>,
    status: ExitStatus,
    usage: RunUsage,
    limit_mb: u64,
    said: &Stderr,
) -> Result<TrainedModel, TrainError> {
    if let Some(result) = result {
        return result;
    }
    let limit = human_mb(limit_mb);
    let last_words = said.tail.back().cloned();
    let message = match (killed, status.signal()) {
        (Some(Killed::Memory { at_mb }), _) => format!("out of memory: the run was killed at {} (limit {limit})", human_mb(at_mb)),
        (Some(Killed::Stalled), _) => "the run made no progress (no batch finished) for longer than the stall timeout and was killed; \
             raise --run-stall-timeout-secs if its batches are this slow"
            .to_owned(),
        (None, Some(6)) if said.allocation_failed => format!(
            "out of memory: the run could not allocate more memory at {} (limit {limit})",
            human_mb(usage.peak_memory_mb.max(usage.memory_mb))
        ),
        (None, Some(9)) => format!(
            "the training process was killed (signal 9) while using {}; if nobody killed it, the system ran out of memory",
            human_mb(usage.memory_mb)
        ),
        (None, Some(signal)) => {
            let name = signal_name(signal);
            match last_words {
                Some(words) => format!("the training process crashed (signal {signal}, {name}): {words}"),
                None => format!("the training process crashed (signal {signal}, {name})"),
            }
        }
        (None, None) => match (status.code(), last_words) {
            (Some(code), Some(words)) => format!("the training process exited with status {code}: {words}"),
            (Some(code), None) => format!("the training process exited with status {code} without a result"),
            (None, _) => "the training process ended without a result".to_owned(),
        },
    };
    Err(TrainError::Crashed(message))
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        4 => "illegal instruction",
        6 => "aborted",
        7 => "bus error",
        8 => "arithmetic error",
        11 => "segmentation fault",
        15 => "terminated",
        _ => "signal",
    }
}
