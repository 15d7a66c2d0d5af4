//! Tests of webhook delivery against receivers on loopback, with the domain's in-memory stores.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{mpsc, Arc},
    thread,
    time::{Duration, Instant},
};

use trainyard_domain::{
    events::{Event, EventBus, EventKind, EventPayload, EventStore, NewEvent},
    metrics::{LogEntry, LogLevel},
    ports::SystemClock,
    testing::{MemoryEvents, MemoryWebhooks},
    webhooks::{DeliveryState, EventFilter, RetrySchedule, Webhook, WebhookId, WebhookSecret, WebhookStore, WebhookUrl},
    SessionId,
};

use super::*;

/// A request as a receiver saw it.
#[derive(Debug)]
struct Received {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Reads one HTTP/1.1 request with a `Content-Length` body.
fn read_request(stream: &TcpStream) -> Option<Received> {
    let mut reader = BufReader::new(stream);
    let mut headers = Vec::new();
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        let (name, value) = trimmed.split_once(':')?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let length: usize = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("content-length"))?.1.parse().ok()?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Received { headers, body })
}

/// A receiver on loopback answering the statuses in turn (the last one from then on), and
/// passing each request it read to the test. An answer of 0 is none: the connection is held
/// until `release` says so.
fn receiver(statuses: Vec<u16>, release: Option<mpsc::Receiver<()>>) -> (SocketAddr, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for (i, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            let Some(request) = read_request(&stream) else { continue };
            if tx.send(request).is_err() {
                return;
            }
            let status = statuses.get(i).or(statuses.last()).copied().unwrap_or(200);
            if status == 0 {
                if let Some(release) = &release {
                    let _ = release.recv();
                }
                continue;
            }
            let _ = write!(stream, "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (addr, rx)
}

struct Rig {
    events: Arc<MemoryEvents>,
    bus: EventBus,
    store: Arc<MemoryWebhooks>,
}

fn rig() -> Rig {
    let events = Arc::new(MemoryEvents::default());
    Rig { bus: EventBus::new(events.clone()), store: Arc::new(MemoryWebhooks::new(events.clone())), events }
}

impl Rig {
    fn hook(&self, addr: SocketAddr, secret: &str) -> WebhookId {
        let webhook = Webhook {
            id: WebhookId::generate(),
            url: WebhookUrl::parse(&format!("http://{addr}/hook")).unwrap(),
            events: EventFilter::All,
            secret: WebhookSecret::new(secret).unwrap(),
            created_at: time::OffsetDateTime::now_utc(),
        };
        self.store.insert_webhook(&webhook).unwrap();
        webhook.id
    }

    fn start(&self, allow_private: bool, timeout: Duration) -> Notifier {
        let render: RenderBody =
            Arc::new(|e: &Event| serde_json::to_vec(&serde_json::json!({"id": e.id.to_string(), "event": e.kind.as_str()})).unwrap());
        let config = NotifierConfig { allow_private, timeout, schedule: RetrySchedule::new(time::Duration::milliseconds(5)) };
        Notifier::start(self.store.clone(), &self.bus, Arc::new(SystemClock), Arc::new(SystemResolver), render, config).unwrap()
    }

    fn publish(&self, kind: EventKind) -> u64 {
        let session_id = SessionId::generate();
        let entry = LogEntry {
            session_id: session_id.clone(),
            timestamp: time::OffsetDateTime::now_utc(),
            level: LogLevel::Info,
            message: "m".into(),
        };
        self.bus.publish(NewEvent { session_id, kind, created_at: entry.timestamp, payload: EventPayload::Log(entry) }).unwrap().id
    }

    /// Waits until the webhook's newest delivery is no longer pending.
    fn settled(&self, hook: &WebhookId) -> trainyard_domain::webhooks::Delivery {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let newest = self.store.deliveries(hook, 1).unwrap().pop();
            if let Some(d) = newest.filter(|d| d.record.state != DeliveryState::Pending) {
                return d;
            }
            assert!(Instant::now() < deadline, "the delivery did not settle: {:?}", self.store.deliveries(hook, 1));
            // Polling the in-memory store, not waiting for anything in particular.
            thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn signatures_are_hmac_sha256_in_hex() {
    // RFC 4231, test case 2.
    assert_eq!(
        signature("Jefe", b"what do ya want for nothing?"),
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

#[test]
fn a_failing_receiver_gets_the_same_signed_delivery_until_it_accepts() {
    let rig = rig();
    let (addr, requests) = receiver(vec![500, 503, 200], None);
    let hook = rig.hook(addr, "0123456789abcdef-secret");
    let _notifier = rig.start(true, Duration::from_secs(5));
    let id = rig.publish(EventKind::SessionCompleted);
    let got: Vec<Received> = (0..3).map(|_| requests.recv_timeout(Duration::from_secs(20)).expect("an attempt")).collect();
    let delivery = rig.settled(&hook);
    for r in &got {
        assert_eq!(r.header("X-Trainyard-Event"), Some("session.completed"));
        assert_eq!(r.header("X-Trainyard-Delivery"), Some(delivery.record.id.as_str()));
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        assert_eq!(r.header("X-Trainyard-Signature").map(str::to_owned), Some(signature("0123456789abcdef-secret", &r.body)));
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body, serde_json::json!({"id": id.to_string(), "event": "session.completed"}));
    }
    assert_eq!(
        (delivery.record.state, delivery.record.attempts, delivery.record.last_status, delivery.record.event_id),
        (DeliveryState::Delivered, 3, Some(200), id)
    );
}

#[test]
fn a_receiver_that_never_accepts_fails_after_the_schedule() {
    let rig = rig();
    let (addr, _requests) = receiver(vec![500], None);
    let hook = rig.hook(addr, "0123456789abcdef-secret");
    let _notifier = rig.start(true, Duration::from_secs(5));
    rig.publish(EventKind::Log);
    let d = rig.settled(&hook);
    assert_eq!(
        (d.record.state, d.record.attempts, d.record.last_status, d.record.next_attempt_at),
        (DeliveryState::Failed, 6, Some(500), None)
    );
    assert_eq!(d.record.last_error.as_deref(), Some("the receiver answered 500"));
}

#[test]
fn a_hanging_receiver_does_not_hold_up_another_webhook() {
    let rig = rig();
    let (release_tx, release_rx) = mpsc::channel();
    let (slow, slow_requests) = receiver(vec![0], Some(release_rx));
    let (fast, fast_requests) = receiver(vec![200], None);
    let slow_hook = rig.hook(slow, "0123456789abcdef-slow");
    let fast_hook = rig.hook(fast, "0123456789abcdef-fast");
    let _notifier = rig.start(true, Duration::from_secs(30));
    rig.publish(EventKind::SessionStarted);
    slow_requests.recv_timeout(Duration::from_secs(20)).expect("the slow receiver got its request");
    fast_requests.recv_timeout(Duration::from_secs(20)).expect("the fast receiver got its request");
    // The fast webhook's delivery is recorded while the slow one is still waiting for an answer.
    assert_eq!(rig.settled(&fast_hook).record.state, DeliveryState::Delivered);
    assert_eq!(rig.store.deliveries(&slow_hook, 1).unwrap()[0].record.state, DeliveryState::Pending);
    release_tx.send(()).unwrap();
}

#[test]
fn loopback_is_refused_without_allow_private_and_nothing_is_sent() {
    let rig = rig();
    let (addr, requests) = receiver(vec![200], None);
    let hook = rig.hook(addr, "0123456789abcdef-secret");
    let _notifier = rig.start(false, Duration::from_secs(5));
    rig.publish(EventKind::SessionFailed);
    let d = rig.settled(&hook);
    assert_eq!((d.record.state, d.record.attempts, d.record.last_status), (DeliveryState::Failed, 6, None));
    let error = d.record.last_error.unwrap();
    assert!(error.contains("127.0.0.1") && error.contains("loopback"), "{error}");
    assert!(requests.try_recv().is_err(), "no request reached the receiver");
}

#[test]
fn deliveries_left_pending_are_sent_at_the_next_start() {
    let rig = rig();
    let (addr, requests) = receiver(vec![200], None);
    let hook = rig.hook(addr, "0123456789abcdef-secret");
    // Recorded while no notifier runs, as before a restart.
    let id = rig.publish(EventKind::SessionCompleted);
    assert_eq!(rig.events.last_id().unwrap(), id);
    let _notifier = rig.start(true, Duration::from_secs(5));
    let got = requests.recv_timeout(Duration::from_secs(20)).expect("the pending delivery was sent");
    assert_eq!(got.header("X-Trainyard-Event"), Some("session.completed"));
    assert_eq!(rig.settled(&hook).record.state, DeliveryState::Delivered);
}
