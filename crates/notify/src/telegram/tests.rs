//! One Bot API call at a time against a stand-in on loopback: what is sent, and what an answer
//! makes of the attempt.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    sync::mpsc,
    thread,
};

use trainyard_domain::telegram::DEFAULT_API_URL;

use super::*;

const TOKEN: &str = "123456:TEST-token_abcdefghijklmnop";

/// A request as the stand-in read it.
struct Seen {
    line: String,
    content_type: String,
    body: Vec<u8>,
}

/// A Bot API stand-in answering one request with `status` and `body`, and the settings that
/// point at it.
fn stand_in(status: u16, body: &'static str) -> (TelegramSettings, mpsc::Receiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let (mut length, mut content_type) = (0, String::new());
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            let Some((name, value)) = header.trim_end().split_once(':') else { break };
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap(),
                "content-type" => content_type = value.trim().to_owned(),
                _ => {}
            }
        }
        let mut body_in = vec![0; length];
        reader.read_exact(&mut body_in).unwrap();
        write!(
            stream,
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        tx.send(Seen { line: line.trim_end().to_owned(), content_type, body: body_in }).unwrap();
    });
    let settings = TelegramSettings::from_config(Some(TOKEN), &["-100200".to_owned()], &api, None).unwrap().unwrap();
    (settings, rx)
}

fn call(settings: &TelegramSettings, outgoing: Outgoing) -> AttemptOutcome {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
    send(&agent, Duration::from_secs(10), settings, &settings.chats[0], &DeliveryId::generate(), outgoing)
}

#[test]
fn a_message_is_posted_as_json_to_send_message() {
    let (settings, seen) = stand_in(200, r#"{"ok":true,"result":{}}"#);
    assert_eq!(call(&settings, Outgoing::Text("✅ Training completed: mlp on iris".into())), AttemptOutcome::Status(200));
    let seen = seen.recv().unwrap();
    assert_eq!(seen.line, format!("POST /bot{TOKEN}/sendMessage HTTP/1.1"));
    assert_eq!(seen.content_type, "application/json");
    let body: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!((body["chat_id"].as_str(), body["text"].as_str()), (Some("-100200"), Some("✅ Training completed: mlp on iris")));
}

#[test]
fn a_photo_is_a_multipart_upload_to_send_photo() {
    let (settings, seen) = stand_in(200, r#"{"ok":true}"#);
    let png = b"\x89PNG\r\n\x1a\n--not-a-boundary\r\n".to_vec();
    let outgoing = Outgoing::Photo { png: png.clone(), caption: "📈 chart".into() };
    assert_eq!(call(&settings, outgoing), AttemptOutcome::Status(200));
    let seen = seen.recv().unwrap();
    assert_eq!(seen.line, format!("POST /bot{TOKEN}/sendPhoto HTTP/1.1"));
    let boundary = seen.content_type.strip_prefix("multipart/form-data; boundary=").expect("a multipart body");
    let body = seen.body;
    let marker = format!("--{boundary}");
    let text = String::from_utf8_lossy(&body);
    assert!(text.ends_with(&format!("--{boundary}--\r\n")));
    assert_eq!(text.matches(&marker).count(), 4, "three parts and the end");
    assert!(text.contains("name=\"chat_id\"\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n-100200\r\n"), "{text}");
    assert!(text.contains("name=\"caption\"\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n📈 chart\r\n"), "{text}");
    let head = "name=\"photo\"; filename=\"chart.png\"\r\nContent-Type: image/png\r\n\r\n";
    let at = body.windows(head.len()).position(|w| w == head.as_bytes()).unwrap() + head.len();
    assert_eq!(&body[at..at + png.len()], png.as_slice());
}

#[test]
fn an_error_answer_gives_its_description_and_retry_after() {
    let (settings, _seen) =
        stand_in(429, r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 35","parameters":{"retry_after":35}}"#);
    let outcome = call(&settings, Outgoing::Text("x".into()));
    let want = AttemptOutcome::Refused {
        status: 429,
        reason: "Too Many Requests: retry after 35".into(),
        retry_after: Some(time::Duration::seconds(35)),
    };
    assert_eq!(outcome, want);
    let (settings, _seen) = stand_in(502, "<html>bad gateway</html>");
    let outcome = call(&settings, Outgoing::Text("x".into()));
    assert_eq!(outcome, AttemptOutcome::Refused { status: 502, reason: "no description".into(), retry_after: None });
}

#[test]
fn no_answer_is_described_without_the_token() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let settings = TelegramSettings::from_config(Some(TOKEN), &["42".to_owned()], &api, None).unwrap().unwrap();
    let outbox = Telegram {
        store: Arc::new(NoStore),
        settings,
        compose: Arc::new(|_: &Event, _: Part| Ok(Outgoing::Text(format!("the token is {TOKEN}")))),
        agent: ureq::AgentBuilder::new().build(),
        timeout: Duration::from_secs(5),
    };
    let due = DueMessage {
        id: DeliveryId::generate(),
        chat: ChatId::parse("42").unwrap(),
        part: Part::Message,
        event: Event {
            id: 1,
            session_id: trainyard_domain::SessionId::generate(),
            kind: trainyard_domain::events::EventKind::SessionCompleted,
            created_at: OffsetDateTime::UNIX_EPOCH,
            payload: trainyard_domain::events::EventPayload::Log(trainyard_domain::metrics::LogEntry {
                session_id: trainyard_domain::SessionId::generate(),
                timestamp: OffsetDateTime::UNIX_EPOCH,
                level: trainyard_domain::metrics::LogLevel::Info,
                message: String::new(),
            }),
        },
        attempts: 0,
    };
    let AttemptOutcome::NoAnswer(reason) = outbox.attempt(&due) else { panic!("a closed port gives no answer") };
    assert!(reason.starts_with("could not connect"), "{reason}");
    assert!(!reason.contains("TEST-token"), "{reason}");
    assert_ne!(DEFAULT_API_URL, api);
}

/// A store the attempt never touches.
struct NoStore;

impl TelegramStore for NoStore {
    fn set_chats(&self, _: &[ChatId], _: OffsetDateTime) -> Result<(), StoreError> {
        unreachable!()
    }
    fn enqueue_new_events(&self, _: OffsetDateTime, _: u32, _: &dyn Fn(&Event) -> &'static [Part]) -> Result<u32, StoreError> {
        unreachable!()
    }
    fn due(&self, _: OffsetDateTime, _: u32) -> Result<Vec<DueMessage>, StoreError> {
        unreachable!()
    }
    fn next_due_after(&self, _: OffsetDateTime) -> Result<Option<OffsetDateTime>, StoreError> {
        unreachable!()
    }
    fn record_attempt(&self, _: &DeliveryId, _: &AttemptRecord) -> Result<bool, StoreError> {
        unreachable!()
    }
    fn deliveries(&self, _: u32) -> Result<Vec<trainyard_domain::telegram::TelegramDelivery>, StoreError> {
        unreachable!()
    }
    fn prune(&self, _: OffsetDateTime) -> Result<u64, StoreError> {
        unreachable!()
    }
}
