//! A parser of `text/event-stream` bodies that takes the bytes as they arrive, in pieces of
//! any size, and hands back each complete event (the WHATWG server-sent events rules: `\n`,
//! `\r\n` or `\r` ends a line, a blank line ends an event, `:` starts a comment).

/// One event of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The last `id:` seen so far in the stream (what `Last-Event-ID` resumes after).
    pub id: Option<String>,
    /// The `event:` field, `message` when absent.
    pub event: String,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// Keeps the unfinished line and event between pieces.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    after_cr: bool,
    last_id: Option<String>,
    event: Option<String>,
    data: Option<String>,
}

impl SseParser {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next piece of the stream and returns the events it completes, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        for &b in bytes {
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                continue;
            }
            match b {
                b'\n' => self.end_line(&mut events),
                b'\r' => {
                    self.end_line(&mut events);
                    self.after_cr = true;
                }
                _ => self.line.push(b),
            }
        }
        events
    }

    fn end_line(&mut self, events: &mut Vec<SseEvent>) {
        let raw = std::mem::take(&mut self.line);
        if raw.is_empty() {
            match self.data.take() {
                Some(data) => events.push(SseEvent {
                    id: self.last_id.clone(),
                    event: self.event.take().filter(|e| !e.is_empty()).unwrap_or_else(|| "message".to_owned()),
                    data,
                }),
                None => self.event = None,
            }
            return;
        }
        let line = String::from_utf8_lossy(&raw);
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (&*line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            "id" if !value.contains('\0') => self.last_id = Some(value.to_owned()),
            // `retry:` and unknown fields are ignored.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use quickcheck::{Arbitrary, Gen, QuickCheck};

    use super::*;

    #[test]
    fn reads_the_servers_frames_comments_and_line_endings() {
        let mut p = SseParser::new();
        let stream = b": keep-alive\n\nid: 7\nevent: epoch\ndata: {\"epoch\":1}\n\nid: 8\r\nevent: log\r\ndata: a\r\ndata: b\r\n\r\nretry: 10\rdata:x\r\r";
        let events = p.push(stream);
        assert_eq!(
            events,
            vec![
                SseEvent { id: Some("7".into()), event: "epoch".into(), data: "{\"epoch\":1}".into() },
                SseEvent { id: Some("8".into()), event: "log".into(), data: "a\nb".into() },
                SseEvent { id: Some("8".into()), event: "message".into(), data: "x".into() },
            ]
        );
        assert!(p.push(b"id: 9\nevent: cut\ndata: unfinished\n").is_empty(), "no blank line yet");
        assert_eq!(p.push(b"\n")[0].data, "unfinished");
    }

    /// A field value: any text without line breaks.
    fn value(g: &mut Gen) -> String {
        String::arbitrary(g).replace(['\r', '\n'], " ")
    }

    /// Text whose lines end with any of the three endings the format allows.
    #[derive(Default)]
    struct Lines {
        text: String,
        after_cr: bool,
    }

    impl Lines {
        fn line(&mut self, g: &mut Gen, line: &str) {
            // A blank line after a lone `\r` must not end with a lone `\n`: the two would be
            // one `\r\n` ending.
            let endings: &[&str] = if line.is_empty() && self.after_cr { &["\r\n", "\r"] } else { &["\n", "\r\n", "\r"] };
            let ending = g.choose(endings).copied().unwrap_or("\r\n");
            self.text += line;
            self.text += ending;
            self.after_cr = ending == "\r";
        }
    }

    /// A stream of events with comments between them, and the events it must give back; and
    /// where to cut it.
    #[derive(Debug, Clone)]
    struct Stream {
        bytes: Vec<u8>,
        events: Vec<SseEvent>,
        cuts: Vec<usize>,
    }

    impl Arbitrary for Stream {
        fn arbitrary(g: &mut Gen) -> Self {
            let mut out = Lines::default();
            let mut events = Vec::new();
            for id in 0..u8::arbitrary(g) % 12 {
                if bool::arbitrary(g) {
                    let comment = format!(":{}", value(g));
                    out.line(g, &comment);
                }
                let kind = g.choose(&["session.queued", "session.started", "epoch", "log", "session.completed"]).copied();
                let event = if bool::arbitrary(g) { kind.unwrap_or("epoch").to_owned() } else { value(g) };
                let lines: Vec<String> = (0..=u8::arbitrary(g) % 3).map(|_| value(g)).collect();
                out.line(g, &format!("id: {id}"));
                out.line(g, &format!("event: {event}"));
                for line in &lines {
                    out.line(g, &format!("data: {line}"));
                }
                out.line(g, "");
                let event = if event.is_empty() { "message".to_owned() } else { event };
                events.push(SseEvent { id: Some(id.to_string()), event, data: lines.join("\n") });
            }
            let bytes = out.text.into_bytes();
            let mut cuts: Vec<usize> = Vec::arbitrary(g).into_iter().map(|c: usize| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            Self { bytes, events, cuts }
        }
    }

    // Property 69: the SSE frame parser reassembles any event stream split at arbitrary byte
    // boundaries into the same events.
    #[test]
    fn property_69_any_split_of_a_stream_gives_the_same_events() {
        fn prop(s: Stream) -> bool {
            let mut whole = SseParser::new();
            if whole.push(&s.bytes) != s.events {
                return false;
            }
            let mut parser = SseParser::new();
            let mut got = Vec::new();
            let mut from = 0;
            for &cut in s.cuts.iter().chain(std::iter::once(&s.bytes.len())) {
                got.extend(parser.push(&s.bytes[from..cut]));
                from = cut;
            }
            got == s.events
        }
        QuickCheck::new().tests(300).rng(Gen::new(30)).quickcheck(prop as fn(Stream) -> bool);
    }
}
