//! Unit tests of the protocol, the memory reading and the words for a run's death.

use std::{os::unix::process::ExitStatusExt, path::PathBuf, process::ExitStatus};

use time::OffsetDateTime;
use trainyard_domain::{
    metrics::{EpochMetrics, LogLevel},
    ports::{RunUsage, TrainError, TrainedModel},
    registry::ModelFormat,
};

use crate::{
    human_mb, procfs,
    protocol::{FromRun, RunLimits, ToRun},
    supervise::{outcome, Killed, Stderr},
};

#[test]
fn messages_round_trip_as_single_lines() {
    let messages = [
        FromRun::Epoch {
            metrics: EpochMetrics {
                epoch: 3,
                loss: 0.25,
                accuracy: 0.9,
                val_loss: None,
                val_accuracy: Some(0.8),
                samples_per_second: 1200.5,
                epoch_seconds: 2.0,
                learning_rate: None,
                timestamp: OffsetDateTime::UNIX_EPOCH,
            },
        },
        FromRun::Log { level: LogLevel::Warning, message: "two\nlines".into() },
        FromRun::Resumed { epoch: 2 },
        FromRun::Progress { batches: 17 },
        FromRun::Finished {
            model: TrainedModel {
                file: PathBuf::from("/tmp/x/model.safetensors"),
                format: ModelFormat::Safetensors,
                metadata: serde_json::json!({"architecture": "cnn"}),
                epochs_completed: 2,
                stopped: true,
                stopped_early: true,
            },
        },
        FromRun::Failed { error: TrainError::Data("no rows".into()) },
        FromRun::Crashed { message: "index out of bounds".into() },
    ];
    for message in messages {
        let line = message.to_line();
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert_eq!(serde_json::from_str::<FromRun>(&line).unwrap(), message);
    }
    let stop = ToRun::Stop.to_line();
    assert_eq!(serde_json::from_str::<ToRun>(&stop).unwrap(), ToRun::Stop);
    assert_eq!(RunLimits::default().memory_limit_mb, None);
}

#[test]
fn resident_memory_is_read_from_proc_status() {
    let status = "Name:\ttrainyard\nVmPeak:\t 9000000 kB\nVmHWM:\t  2097152 kB\nVmRSS:\t  1048577 kB\n";
    let r = procfs::parse_status(status).unwrap();
    assert_eq!((r.now_mb, r.peak_mb), (1025, 2048));
    assert!(procfs::parse_status("Name:\tzombie\n").is_none());
    // This very process is measurable.
    let me = procfs::resident(std::process::id()).unwrap();
    assert!(me.now_mb > 0 && me.peak_mb >= me.now_mb);
}

#[test]
fn sizes_read_as_people_write_them() {
    assert_eq!(human_mb(812), "812 MB");
    assert_eq!(human_mb(10035), "9.8 GB");
    assert_eq!(human_mb(8192), "8.0 GB");
}

/// The message of a run that died, which is a crash a retry may get past.
fn failed(r: Result<TrainedModel, TrainError>) -> String {
    match r {
        Err(e @ TrainError::Crashed(_)) if e.is_retryable() => e.to_string(),
        other => panic!("expected a crash, got {other:?}"),
    }
}

#[test]
fn a_dead_run_is_described_in_plain_words() {
    let usage = RunUsage { pid: Some(7), memory_mb: 1200, peak_memory_mb: 1500 };
    let signalled = |sig: i32| ExitStatus::from_raw(sig);
    let exited = |code: i32| ExitStatus::from_raw(code << 8);
    let none = Stderr::default();
    let heard = |lines: &[&str]| {
        let mut said = Stderr::default();
        for line in lines {
            said.hear(line);
        }
        said
    };

    let oom_abort = heard(&[
        "memory allocation of 123456 bytes failed",
        "stack backtrace:",
        "   0: std::alloc::rust_oom",
        "             at /rustc/abc/library/std/src/alloc.rs:424:5",
        "note: Some details are omitted, run with `RUST_BACKTRACE=full` for a verbose backtrace.",
    ]);
    assert!(oom_abort.tail.iter().all(|l| l == "memory allocation of 123456 bytes failed"), "{:?}", oom_abort.tail);
    let m = failed(outcome(None, None, signalled(6), usage, 2048, &oom_abort));
    assert_eq!(m, "out of memory: the run could not allocate more memory at 1.5 GB (limit 2.0 GB)");

    let m = failed(outcome(None, None, signalled(9), usage, 2048, &none));
    assert!(m.starts_with("the training process was killed (signal 9)"), "{m}");

    let segv = heard(&["warning: something", "libfoo: bad pointer", ""]);
    let m = failed(outcome(None, None, signalled(11), usage, 2048, &segv));
    assert_eq!(m, "the training process crashed (signal 11, segmentation fault): libfoo: bad pointer");

    let m = failed(outcome(None, None, exited(3), usage, 2048, &none));
    assert_eq!(m, "the training process exited with status 3 without a result");

    let m = failed(outcome(None, Some(Killed::Memory { at_mb: 10035 }), signalled(9), usage, 8192, &none));
    assert_eq!(m, "out of memory: the run was killed at 9.8 GB (limit 8.0 GB)");
    let m = failed(outcome(None, Some(Killed::Stalled), signalled(9), usage, 8192, &none));
    assert!(m.starts_with("the run made no progress"), "{m}");

    // A result the run reported wins over how it exited.
    let reported = Some(Err(TrainError::Data("dataset 'x' has no rows".into())));
    assert_eq!(outcome(reported, None, signalled(9), usage, 2048, &none), Err(TrainError::Data("dataset 'x' has no rows".into())));
    assert!(!TrainError::Data(String::new()).is_retryable() && !TrainError::Failed(String::new()).is_retryable());
}
