//! The run side: the body of `trainyard run-session`, a process that trains one job.
//!
//! It reads [`ToRun::Start`] from standard input, applies its limits to itself (a data-segment
//! rlimit, the highest out-of-memory score so that the kernel picks it before the server, and
//! death with its parent), takes the session's run lock so that two processes never train one
//! session, and trains with the in-process trainer it is given, reporting on standard output.
//! A [`ToRun::Stop`] asks the trainer to stop between batches; end of input means the
//! supervisor is gone, and the process exits at once without saving (the session resumes from
//! its last checkpoint).

use std::{
    fs::{File, OpenOptions},
    io::{BufRead, Write},
    panic::{catch_unwind, AssertUnwindSafe},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use trainyard_domain::{
    manager::TRAINING_THREAD_STACK,
    metrics::{EpochMetrics, LogLevel},
    ports::{RunControl, SnapshotId, TrainError, TrainedModel, Trainer, TrainingEvents, TrainingJob},
};

use crate::protocol::{FromRun, RunLimits, ToRun};

/// The exit code of a run whose supervisor went away.
pub const EXIT_ORPHANED: u8 = 75;
/// The exit code of a run that could not read its job.
pub const EXIT_BAD_JOB: u8 = 64;
/// The file in a session's scratch directory that its run holds locked while it trains.
pub const RUN_LOCK_FILE: &str = ".run.lock";
/// Progress messages are sent at most this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Where messages to the supervisor go.
type Out = Arc<Mutex<dyn Write + Send>>;

/// Trains the job read from standard input with `trainer`, reporting on standard output, and
/// returns the process's exit code (0 when it reported a result). Standard error is for people (it reaches the server's log).
pub fn serve(trainer: Arc<dyn Trainer>) -> u8 {
    let out: Out = Arc::new(Mutex::new(std::io::stdout()));
    let mut input = std::io::stdin().lock();
    let mut first = String::new();
    let start = match input.read_line(&mut first) {
        Ok(0) => return EXIT_ORPHANED,
        Ok(_) => serde_json::from_str::<ToRun>(&first).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let (job, limits) = match start {
        Ok(ToRun::Start { job, limits }) => (*job, limits),
        Ok(ToRun::Stop) => return 0,
        other => {
            let why = other.map_or_else(|why| why, |_| "a command came before the job".to_owned());
            send(&out, &FromRun::Failed { error: TrainError::Io(format!("the run could not read its job: {why}")) });
            return EXIT_BAD_JOB;
        }
    };
    drop(input);
    apply_limits(limits);
    let control = RunControl::default();
    let watched = control.clone();
    // Commands after the job, or the end of input when the supervisor dies.
    let watcher = std::thread::Builder::new().name("supervisor".into()).spawn(move || {
        for line in std::io::stdin().lock().lines() {
            match line.map(|l| serde_json::from_str::<ToRun>(&l)) {
                Ok(Ok(ToRun::Stop)) => watched.request_stop(),
                Ok(Ok(ToRun::LearningRate { rate })) => watched.set_learning_rate(rate),
                Ok(Ok(ToRun::Snapshot { id })) => watched.request_snapshot(id),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        eprintln!("trainyard run: the supervisor went away; exiting (the session resumes from its last checkpoint)");
        std::process::exit(i32::from(EXIT_ORPHANED));
    });
    if let Err(e) = watcher {
        send(&out, &FromRun::Failed { error: TrainError::Io(format!("could not watch the supervisor: {e}")) });
        return 1;
    }
    let message = run(trainer, job, &out, control);
    send(&out, &message);
    0
}

/// Trains `job` on a thread with a large stack and returns the run's last message.
fn run(trainer: Arc<dyn Trainer>, job: TrainingJob, out: &Out, stop: RunControl) -> FromRun {
    let out = Arc::clone(out);
    let thread = std::thread::Builder::new().name("train".into()).stack_size(TRAINING_THREAD_STACK).spawn(move || {
        let _lock = match lock_session(&job, &out) {
            Ok(lock) => lock,
            Err(error) => return FromRun::Failed { error },
        };
        let mut events = Reporter::new(out, &job);
        match catch_unwind(AssertUnwindSafe(|| trainer.train(&job, &mut events, &stop))) {
            Ok(Ok(model)) => FromRun::Finished { model },
            Ok(Err(error)) => FromRun::Failed { error },
            Err(panic) => FromRun::Crashed {
                message: panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned()),
            },
        }
    });
    match thread {
        Ok(handle) => handle.join().unwrap_or_else(|_| FromRun::Crashed { message: "the training thread panicked".to_owned() }),
        Err(e) => FromRun::Failed { error: TrainError::Io(format!("could not start the training thread: {e}")) },
    }
}

/// Holds the session's run lock, waiting for an earlier run of the same session (one whose
/// supervisor died a moment ago) to exit first.
fn lock_session(job: &TrainingJob, out: &Out) -> Result<File, TrainError> {
    let path = job.scratch_dir.join(RUN_LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| TrainError::Io(format!("could not open the run lock {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            send(out, &FromRun::Log { level: LogLevel::Warning, message: "waiting for an earlier run of this session to exit".to_owned() });
            file.lock().map_err(|e| TrainError::Io(format!("could not take the run lock: {e}")))?;
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(TrainError::Io(format!("could not take the run lock: {e}"))),
    }
    Ok(file)
}

/// Applies the run's limits to this process. Failures are reported on standard error and do
/// not stop the run: the supervisor's own memory watch still holds.
fn apply_limits(limits: RunLimits) {
    // Die with the supervisor's thread that started us, even before end of input is noticed.
    if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL) {
        eprintln!("trainyard run: could not ask to die with the server: {e}");
    }
    if nix::unistd::getppid() == nix::unistd::Pid::from_raw(1) {
        // The supervisor died before the request above took effect.
        std::process::exit(i32::from(EXIT_ORPHANED));
    }
    // The kernel's out-of-memory killer picks this process before the server.
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "1000") {
        eprintln!("trainyard run: could not raise the out-of-memory score: {e}");
    }
    if let Some(mb) = limits.memory_limit_mb {
        let bytes = mb.saturating_mul(1024 * 1024);
        if let Err(e) = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_DATA, bytes, bytes) {
            eprintln!("trainyard run: could not set the memory limit of {mb} MB: {e}");
        }
    }
}

fn send(out: &Out, message: &FromRun) {
    let mut out = out.lock().unwrap_or_else(PoisonError::into_inner);
    // A supervisor that stopped reading is gone; the stdin watcher ends the process.
    let _ = out.write_all(message.to_line().as_bytes()).and_then(|()| out.flush());
}

/// Sends the trainer's events to the supervisor.
struct Reporter {
    out: Out,
    batches: u64,
    last_progress: Instant,
    #[cfg(debug_assertions)]
    failpoint: failpoint::Failpoint,
}

impl Reporter {
    fn new(out: Out, job: &TrainingJob) -> Self {
        #[cfg(not(debug_assertions))]
        let _ = job;
        Self {
            out,
            batches: 0,
            last_progress: Instant::now(),
            #[cfg(debug_assertions)]
            failpoint: failpoint::Failpoint::for_job(job),
        }
    }
}

impl TrainingEvents for Reporter {
    fn epoch_finished(&mut self, metrics: EpochMetrics) {
        send(&self.out, &FromRun::Epoch { metrics });
    }

    fn log(&mut self, level: LogLevel, message: String) {
        send(&self.out, &FromRun::Log { level, message });
    }

    fn resumed(&mut self, epoch: u32) {
        send(&self.out, &FromRun::Resumed { epoch });
    }

    fn snapshot(&mut self, id: SnapshotId, result: Result<TrainedModel, TrainError>) {
        send(&self.out, &FromRun::Snapshot { id, result });
    }

    fn batch_finished(&mut self) {
        self.batches += 1;
        #[cfg(debug_assertions)]
        self.failpoint.batch_finished(self.batches);
        if self.last_progress.elapsed() >= PROGRESS_EVERY {
            self.last_progress = Instant::now();
            send(&self.out, &FromRun::Progress { batches: self.batches });
        }
    }
}

/// Failure injection for the end-to-end tests, compiled into debug builds only: the variable
/// `TRAINYARD_TEST_FAILPOINT=<dataset>=<action>` makes runs on that dataset misbehave after
/// their first batch. Actions: `panic`, `abort`, `stall` (no more progress), `grow:<MB>`
/// (hold that much more memory after every batch).
#[cfg(debug_assertions)]
mod failpoint {
    use trainyard_domain::ports::TrainingJob;

    #[derive(Debug, Default)]
    pub(super) struct Failpoint {
        action: Option<String>,
        held: Vec<Vec<u8>>,
    }

    impl Failpoint {
        pub(super) fn for_job(job: &TrainingJob) -> Self {
            let action = std::env::var("TRAINYARD_TEST_FAILPOINT").ok().and_then(|spec| {
                let (dataset, action) = spec.split_once('=')?;
                (dataset == job.config.dataset_name.as_str()).then(|| action.to_owned())
            });
            Self { action, held: Vec::new() }
        }

        pub(super) fn batch_finished(&mut self, _batches: u64) {
            let Some(action) = self.action.as_deref() else { return };
            match action.split_once(':').unwrap_or((action, "")) {
                ("panic", _) => panic!("failpoint: injected panic"),
                ("abort", _) => std::process::abort(),
                ("stall", _) => loop {
                    std::thread::park();
                },
                ("grow", mb) => {
                    let mb: usize = mb.parse().unwrap_or(64);
                    // Filled with ones so that every page is touched and resident.
                    self.held.push(vec![1u8; mb * 1024 * 1024]);
                }
                _ => {}
            }
        }
    }
}
