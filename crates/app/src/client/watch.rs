//! Following a session's event stream (`watch`, `train --watch`, `logs --follow`): events in
//! order from the session's first, the stream opened again after the last event seen when it
//! breaks, until the session's final event.

use std::{
    io::{ErrorKind, Read, Write},
    thread,
    time::Duration,
};

use indicatif::ProgressBar;
use serde_json::{json, Value};

use super::{
    output,
    progress::Progress,
    sse::{SseEvent, SseParser},
    Client, Failure, EXIT_FAILED, EXIT_OK,
};

/// Times in a row the stream is opened again after it broke before the client gives up.
const RECONNECTS: u32 = 5;

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Completed,
    Failed,
    Stopped,
}

impl Ending {
    fn of(kind: &str) -> Option<Self> {
        match kind {
            "session.completed" => Some(Self::Completed),
            "session.failed" => Some(Self::Failed),
            "session.stopped" => Some(Self::Stopped),
            _ => None,
        }
    }

    /// 0 for a completed session, 1 for a failed or stopped one.
    #[must_use]
    pub fn exit_code(self) -> i32 {
        if self == Self::Completed {
            EXIT_OK
        } else {
            EXIT_FAILED
        }
    }
}

/// Hands each event of session `id` (with its data parsed) to `on_event`, from the session's
/// first event to its final one, and returns how it ended. A stream that breaks is opened
/// again with `Last-Event-ID`, [`RECONNECTS`] times in a row at most (waiting 1, 2, 4, 8, 8 s);
/// a server that cannot be reached at all is given up at once.
///
/// # Errors
/// [`Failure::Unreachable`] when the stream cannot be had back; any refusal of the server.
pub fn follow(client: &Client, id: &str, mut on_event: impl FnMut(&SseEvent, &Value)) -> Result<Ending, Failure> {
    let mut last_id: Option<String> = None;
    let mut tries = 0u32;
    let mut opened = false;
    loop {
        let broken = match client.events(id, last_id.as_deref()) {
            Ok(res) => {
                opened = true;
                let mut reader = res.into_reader();
                let mut parser = SseParser::new();
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) => break Failure::Unreachable(format!("the event stream of {id} closed before the session ended")),
                        Ok(n) => {
                            tries = 0;
                            for event in parser.push(&buf[..n]) {
                                let data = serde_json::from_str(&event.data).unwrap_or_else(|_| Value::String(event.data.clone()));
                                on_event(&event, &data);
                                if event.id.is_some() {
                                    last_id.clone_from(&event.id);
                                }
                                if let Some(end) = Ending::of(&event.event) {
                                    return Ok(end);
                                }
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => break Failure::Unreachable(format!("the event stream of {id} broke: {e}")),
                    }
                }
            }
            Err(e @ Failure::Unreachable(_)) if opened => e,
            Err(e) => return Err(e),
        };
        tries += 1;
        if tries > RECONNECTS {
            return Err(broken);
        }
        // Backoff before opening the stream again, not synchronisation.
        thread::sleep(Duration::from_secs(1 << (tries - 1).min(3)));
    }
}

/// `trainyard watch ID` (and `train --watch`): 0 when the session completes, 1 when it fails
/// or is stopped.
///
/// # Errors
/// See [`follow`].
pub fn watch(client: &Client, id: &str, json: bool) -> Result<i32, Failure> {
    let mut view = View { json, progress: Progress::new(json), bar: None, total: 0 };
    let end = follow(client, id, |event, data| view.show(event, data))?;
    Ok(end.exit_code())
}

/// What a person or a program sees of the events.
struct View {
    json: bool,
    progress: Progress,
    bar: Option<ProgressBar>,
    total: u64,
}

impl View {
    /// A line on standard output, above the bar when there is one.
    fn say(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| println!("{line}")),
            None => println!("{line}"),
        }
    }

    fn show(&mut self, event: &SseEvent, data: &Value) {
        if self.json {
            let id = event.id.as_deref().map_or(Value::Null, |i| i.parse::<u64>().map_or_else(|_| Value::from(i), Value::from));
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", json!({"id": id, "event": event.event, "data": data}));
            let _ = out.flush();
            return;
        }
        let session = data["session_id"].as_str().unwrap_or_default();
        if let Some(total) = data["total_epochs"].as_u64() {
            self.total = total;
            if let Some(bar) = &self.bar {
                bar.set_length(total);
            }
        }
        match event.event.as_str() {
            "session.queued" => {
                self.start_bar();
                let reason = data["queue_reason"].as_str().map(|r| format!(": {r}")).unwrap_or_default();
                self.say(&format!("session {session} queued{reason}"));
            }
            "session.started" => {
                self.start_bar();
                let device = data["device"].as_str().map(|d| format!(" on {d}")).unwrap_or_default();
                self.say(&format!("session {session} started{device}"));
                if let Some(bar) = &self.bar {
                    bar.set_message("running");
                }
            }
            "epoch" => {
                let epoch = data["epoch"].as_u64().unwrap_or_default();
                let metrics = output::metrics(data);
                self.say(&format!("epoch {epoch}/{}  {metrics}", self.total));
                if let Some(bar) = &self.bar {
                    bar.set_position(epoch);
                    bar.set_message(metrics);
                }
            }
            "log" => self.say(&output::log_line(data)),
            kind => {
                let Some(end) = Ending::of(kind) else { return };
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
                let (epoch, total) =
                    (data["current_epoch"].as_u64().unwrap_or_default(), data["total_epochs"].as_u64().unwrap_or(self.total));
                let line = match end {
                    Ending::Completed => {
                        let model = data["model_name"].as_str().map(|m| format!("; model {m}")).unwrap_or_default();
                        format!("session {session} completed: {epoch}/{total} epochs{model}")
                    }
                    Ending::Failed => {
                        format!(
                            "session {session} failed at epoch {epoch}/{total}: {}",
                            data["error_message"].as_str().unwrap_or("no reason given")
                        )
                    }
                    Ending::Stopped => format!("session {session} stopped at epoch {epoch}/{total}"),
                };
                self.say(&line);
            }
        }
    }

    fn start_bar(&mut self) {
        if self.bar.is_none() && self.progress.shown() {
            self.bar = Some(self.progress.epochs(self.total));
        }
    }
}

/// `trainyard logs ID --follow`: every log line from the session's start, then new ones until
/// it ends (JSON lines of the log objects with `--json`).
///
/// # Errors
/// See [`follow`].
pub fn follow_logs(client: &Client, id: &str, json: bool) -> Result<i32, Failure> {
    follow(client, id, |event, data| {
        if event.event == "log" {
            let line = if json { data.to_string() } else { output::log_line(data) };
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    })?;
    Ok(EXIT_OK)
}
