//! Server-sent events: the order of a real run's events, replay after `Last-Event-ID`, the
//! stream of every session, heartbeats and refusals.

use std::io::{BufRead, BufReader, Read};

use serde_json::Value;

use crate::harness::{envelope_code, start_iris, Opts, Server};

/// One event of a `text/event-stream`.
#[derive(Debug, Clone)]
struct Sse {
    id: u64,
    event: String,
    data: Value,
}

/// Reads a `text/event-stream` frame by frame, skipping comment lines.
struct SseReader {
    lines: std::io::Lines<BufReader<Box<dyn Read + Send + Sync>>>,
}

impl SseReader {
    fn open(s: &Server, path: &str, last_event_id: Option<u64>) -> Self {
        let mut req = s.req("GET", path);
        if let Some(id) = last_event_id {
            req = req.set("Last-Event-ID", &id.to_string());
        }
        let res = req.call().unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(res.header("content-type"), Some("text/event-stream"));
        Self { lines: BufReader::new(res.into_reader()).lines() }
    }

    /// The next event, or `None` when the server closed the stream.
    fn next(&mut self) -> Option<Sse> {
        let (mut id, mut event, mut data) = (None, None, None);
        loop {
            let line = match self.lines.next() {
                Some(Ok(line)) => line,
                _ => return None,
            };
            if line.is_empty() {
                if let (Some(id), Some(event), Some(data)) = (id, event.take(), data.take()) {
                    return Some(Sse { id, event, data });
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.parse::<u64>().expect("numeric id"));
            } else if let Some(v) = line.strip_prefix("event: ") {
                event = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = Some(serde_json::from_str::<Value>(v).expect("one line of JSON"));
            } else {
                assert!(line.starts_with("retry: "), "unexpected line {line:?}");
            }
        }
    }

    /// Every event until the server closes the stream.
    fn rest(&mut self) -> Vec<Sse> {
        std::iter::from_fn(|| self.next()).collect()
    }
}

fn kinds(events: &[Sse]) -> Vec<&str> {
    events.iter().map(|e| e.event.as_str()).collect()
}

#[test]
fn a_session_stream_tells_a_run_in_order_and_replays_after_last_event_id() {
    let s = Server::start();
    let id = start_iris(&s, 5);
    let events = SseReader::open(&s, &format!("/api/v1/training/{id}/events"), None).rest();

    assert!(events.windows(2).all(|w| w[0].id < w[1].id), "ids must grow: {:?}", events.iter().map(|e| e.id).collect::<Vec<_>>());
    let k = kinds(&events);
    assert_eq!(k.first(), Some(&"session.queued"), "{k:?}");
    assert_eq!(k.last(), Some(&"session.completed"), "{k:?}");
    let started = k.iter().position(|e| *e == "session.started").expect("session.started");
    let epochs: Vec<&Sse> = events.iter().filter(|e| e.event == "epoch").collect();
    assert_eq!(epochs.iter().map(|e| e.data["epoch"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    assert!(events.iter().position(|e| e.event == "epoch").unwrap() > started);
    assert!(events.iter().all(|e| e.data["session_id"] == id.as_str()));
    // The state events carry the status object, the epochs the metrics and the logs the log
    // lines, as the REST routes answer them.
    let (_, status) = s.get(&format!("/api/v1/training/{id}/status"));
    let last = &events.last().unwrap().data;
    for field in ["state", "current_epoch", "total_epochs", "end_time", "model_name", "config"] {
        assert_eq!(last[field], status[field], "{field}");
    }
    let (_, history) = s.get(&format!("/api/v1/training/{id}/history"));
    assert_eq!(epochs.iter().map(|e| e.data.clone()).collect::<Vec<_>>(), *history.as_array().unwrap());
    let (_, logs) = s.get(&format!("/api/v1/training/{id}/logs?limit=1000"));
    let streamed_logs: Vec<Value> = events.iter().filter(|e| e.event == "log").map(|e| e.data.clone()).collect();
    assert_eq!(streamed_logs, *logs.as_array().unwrap());

    // Reconnecting after the third epoch gets exactly what followed, and closes again.
    let third = epochs[2].id;
    let replay = SseReader::open(&s, &format!("/api/v1/training/{id}/events"), Some(third)).rest();
    let expected: Vec<u64> = events.iter().filter(|e| e.id > third).map(|e| e.id).collect();
    assert_eq!(replay.iter().map(|e| e.id).collect::<Vec<_>>(), expected);
    assert_eq!(kinds(&replay).last(), Some(&"session.completed"));
}

#[test]
fn the_stream_of_every_session_carries_live_events_and_heartbeats() {
    let s = Server::start_with(Opts { extra_args: vec!["--events-heartbeat-secs".into(), "1".into()], ..Opts::default() });
    let mut all = SseReader::open(&s, "/api/v1/events", None);
    let id = start_iris(&s, 3);
    let mut seen = Vec::new();
    while let Some(e) = all.next() {
        assert_eq!(e.data["session_id"], id.as_str(), "{e:?}");
        let done = e.event == "session.completed";
        seen.push(e);
        if done {
            break;
        }
    }
    let k = kinds(&seen);
    assert_eq!(k.first(), Some(&"session.queued"), "{k:?}");
    assert_eq!(k.iter().filter(|e| **e == "epoch").count(), 3, "{k:?}");
    // Idle now: the heartbeat is a comment line.
    assert!(all.lines.by_ref().map_while(Result::ok).any(|line| line == ": keep-alive"), "the stream closed before a heartbeat");
    // A later stream with Last-Event-ID before the run gets the run's events back first.
    let first = seen[0].id;
    let mut again = SseReader::open(&s, "/api/v1/events", Some(first));
    let replayed: Vec<u64> = std::iter::from_fn(|| again.next()).take(seen.len() - 1).map(|e| e.id).collect();
    assert_eq!(replayed, seen[1..].iter().map(|e| e.id).collect::<Vec<_>>());
}

#[test]
fn event_streams_refuse_unknown_sessions_bad_ids_and_missing_keys() {
    let s = Server::start();
    let (code, v) = s.get("/api/v1/training/sess_00000000000000000000000000000000/events");
    assert_eq!((code, envelope_code(&v).as_str()), (404, "SESSION_NOT_FOUND"), "{v}");
    let res = s.req("GET", "/api/v1/events").set("Last-Event-ID", "yesterday").call();
    let (code, v) = crate::harness::status_json(res);
    assert_eq!((code, envelope_code(&v).as_str()), (400, "BAD_REQUEST"), "{v}");
    let (code, _) = crate::harness::status_json(s.anon("GET", "/api/v1/events").call());
    assert_eq!(code, 401);
}
