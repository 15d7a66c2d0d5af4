//! Tests of webhook validation, the use case, and the in-memory store the adapters' tests use.

use std::{collections::HashMap, sync::Arc};

use time::{Duration, OffsetDateTime};

use super::*;
use crate::{
    events::{EventPayload, EventStore, NewEvent},
    metrics::{LogEntry, LogLevel},
    testing::{FixedClock, MemoryEvents, MemoryWebhooks},
    SessionId,
};

/// Names resolve to what the test says; others do not resolve.
struct FakeResolver(HashMap<&'static str, Vec<IpAddr>>);

impl HostResolver for FakeResolver {
    fn resolve(&self, host: &str, _port: u16) -> Result<Vec<IpAddr>, String> {
        self.0.get(host).cloned().ok_or_else(|| "no such host".to_owned())
    }
}

fn resolver() -> Arc<FakeResolver> {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    Arc::new(FakeResolver(HashMap::from([
        ("hooks.example.com", vec![ip("93.184.215.14"), ip("2606:2800:21f:cb07:6820:80da:af6b:8b2c")]),
        ("internal.example.com", vec![ip("93.184.215.14"), ip("10.0.0.7")]),
        ("metadata.example.com", vec![ip("169.254.169.254")]),
        ("localhost", vec![ip("127.0.0.1"), ip("::1")]),
        ("empty.example.com", vec![]),
    ])))
}

fn t0() -> OffsetDateTime {
    OffsetDateTime::UNIX_EPOCH + Duration::days(20_000)
}

fn service(allow_private: bool) -> (Webhooks, Arc<MemoryEvents>, Arc<MemoryWebhooks>) {
    let events = Arc::new(MemoryEvents::default());
    let store = Arc::new(MemoryWebhooks::new(events.clone()));
    let hooks = Webhooks::new(store.clone(), resolver(), Arc::new(FixedClock::new(t0())), allow_private);
    (hooks, events, store)
}

fn request(url: &str, events: &[&str], secret: Option<&str>) -> NewWebhook {
    NewWebhook { url: url.to_owned(), events: events.iter().map(|e| (*e).to_owned()).collect(), secret: secret.map(str::to_owned) }
}

fn record(events: &MemoryEvents, kind: EventKind) -> Event {
    let session_id = SessionId::generate();
    let entry = LogEntry { session_id: session_id.clone(), timestamp: t0(), level: LogLevel::Info, message: "m".into() };
    events.append(NewEvent { session_id, kind, created_at: t0(), payload: EventPayload::Log(entry) }).unwrap()
}

#[test]
fn urls_are_checked_and_normalised() {
    let ok = WebhookUrl::parse("HTTPS://Hooks.Example.com/in?x=1").unwrap();
    assert_eq!(ok.as_str(), "https://hooks.example.com/in?x=1");
    assert_eq!((ok.host(), ok.port()), (&UrlHost::Name("hooks.example.com".into()), 443));
    // Numeric hosts are addresses, as the HTTP client reads them.
    let numeric = WebhookUrl::parse("http://2130706433:8080/").unwrap();
    assert_eq!((numeric.host(), numeric.port()), (&UrlHost::Ip("127.0.0.1".parse().unwrap()), 8080));
    assert_eq!(WebhookUrl::parse("http://[::1]/").unwrap().host(), &UrlHost::Ip("::1".parse().unwrap()));
    for bad in [
        "",
        "hooks.example.com/in",
        "ftp://hooks.example.com/",
        "file:///etc/passwd",
        "https://user:pass@hooks.example.com/",
        "https://user@hooks.example.com/",
        "https://hooks.example.com/#frag",
        "http://[::1/",
        "javascript:alert(1)",
    ] {
        assert!(matches!(WebhookUrl::parse(bad), Err(WebhookError::InvalidUrl(_))), "{bad:?}");
    }
    let long = format!("https://hooks.example.com/{}", "a".repeat(MAX_URL_LEN));
    assert!(matches!(WebhookUrl::parse(&long), Err(WebhookError::InvalidUrl(m)) if m.contains("2048")));
}

#[test]
fn event_filters_name_known_kinds_or_all() {
    assert_eq!(EventFilter::parse(&["*"]).unwrap(), EventFilter::All);
    let some = EventFilter::parse(&["session.failed", "session.completed", "session.failed"]).unwrap();
    assert_eq!(some.names(), ["session.completed", "session.failed"]);
    assert!(some.matches(EventKind::SessionFailed) && !some.matches(EventKind::Log));
    assert_eq!(EventFilter::from_stored(&some.to_stored()).unwrap(), some);
    assert_eq!(EventFilter::from_stored("*").unwrap(), EventFilter::All);
    assert!(matches!(EventFilter::parse::<&str>(&[]), Err(WebhookError::InvalidEvents(_))));
    match EventFilter::parse(&["session.done"]) {
        Err(WebhookError::InvalidEvents(m)) => assert!(m.contains("session.done") && m.contains("session.completed"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn secrets_are_checked_generated_and_never_shown_by_debug() {
    assert!(WebhookSecret::new("short").is_err());
    assert!(WebhookSecret::new("x".repeat(257)).is_err());
    assert!(WebhookSecret::new("sixteen chars ok\n").is_err());
    let chosen = WebhookSecret::new("a-secret-of-24-chars-xyz").unwrap();
    assert!(!format!("{chosen:?}").contains("a-secret"));
    assert!(chosen.fingerprint().starts_with("sha256:") && chosen.fingerprint().len() == 19);
    let (a, b) = (WebhookSecret::generate(), WebhookSecret::generate());
    assert_ne!(a, b);
    assert!(a.expose().starts_with("whsec_") && a.expose().len() == 70);
    assert!(WebhookSecret::new(a.expose()).is_ok());
}

#[test]
fn ids_parse_back_and_junk_is_not_found() {
    let id = WebhookId::generate();
    assert_eq!(WebhookId::parse(id.as_str()).unwrap(), id);
    let d = DeliveryId::generate();
    assert!(d.as_str().starts_with("dlv_") && DeliveryId::parse(d.as_str()).is_ok());
    for bad in ["", "wh_", "wh_0123", "../x", &id.as_str().to_uppercase(), d.as_str()] {
        assert!(WebhookId::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn creating_checks_the_addresses_a_host_leads_to() {
    let (hooks, _, _) = service(false);
    let created = hooks.create(request("https://hooks.example.com/in", &["session.completed"], None)).unwrap();
    assert!(created.secret.expose().starts_with("whsec_"));
    for (url, class) in [
        ("http://localhost:8080/", RefusedClass::Loopback),
        ("http://127.0.0.1/", RefusedClass::Loopback),
        ("http://[::ffff:10.0.0.1]/", RefusedClass::Private),
        ("http://internal.example.com/", RefusedClass::Private),
        ("http://metadata.example.com/latest", RefusedClass::Metadata),
        ("http://169.254.169.254/latest", RefusedClass::Metadata),
    ] {
        match hooks.create(request(url, &["*"], None)) {
            Err(WebhookError::Address(AddressError::Refused { class: c, .. })) => assert_eq!(c, class, "{url}"),
            other => panic!("{url}: {other:?}"),
        }
    }
    for url in ["http://nowhere.example.com/", "http://empty.example.com/"] {
        assert!(matches!(hooks.create(request(url, &["*"], None)), Err(WebhookError::Address(AddressError::Unresolvable { .. }))));
    }
    // Request errors come before any resolution.
    assert!(matches!(hooks.create(request("http://localhost/", &["nope"], None)), Err(WebhookError::InvalidEvents(_))));
    assert!(matches!(hooks.create(request("http://localhost/", &["*"], Some("short"))), Err(WebhookError::InvalidSecret(_))));
    assert_eq!(hooks.list().unwrap(), vec![created]);

    let (open, _, _) = service(true);
    let local = open.create(request("http://localhost:9/", &["log"], Some("0123456789abcdef"))).unwrap();
    assert_eq!(local.secret.expose(), "0123456789abcdef");
    assert_eq!(local.created_at, t0());
}

#[test]
fn deleting_and_listing_deliveries_find_the_webhook_or_say_not_found() {
    let (hooks, _, _) = service(false);
    let created = hooks.create(request("https://hooks.example.com/", &["*"], None)).unwrap();
    assert!(hooks.deliveries(created.id.as_str(), 10).unwrap().is_empty());
    assert_eq!(hooks.delete(created.id.as_str()).unwrap(), created);
    assert!(matches!(hooks.delete(created.id.as_str()), Err(WebhookError::NotFound(_))));
    assert!(matches!(hooks.deliveries(created.id.as_str(), 10), Err(WebhookError::NotFound(_))));
    assert!(matches!(hooks.delete("nonsense"), Err(WebhookError::NotFound(_))));
}

#[test]
fn a_server_keeps_at_most_max_webhooks() {
    let (hooks, _, _) = service(false);
    for _ in 0..MAX_WEBHOOKS {
        hooks.create(request("https://hooks.example.com/", &["*"], None)).unwrap();
    }
    assert_eq!(hooks.create(request("https://hooks.example.com/", &["*"], None)), Err(WebhookError::TooMany));
}

#[test]
fn events_go_to_the_webhooks_that_want_them_and_existed_before_them() {
    let (hooks, events, store) = service(false);
    record(&events, EventKind::SessionCompleted);
    let done = hooks.create(request("https://hooks.example.com/a", &["session.completed"], None)).unwrap();
    let all = hooks.create(request("https://hooks.example.com/b", &["*"], None)).unwrap();
    let completed = record(&events, EventKind::SessionCompleted);
    let log = record(&events, EventKind::Log);
    // Three events recorded: the first one before the webhooks existed, so it goes to neither.
    assert_eq!(store.enqueue_new_events(t0(), 1).unwrap(), 1);
    assert_eq!(store.enqueue_new_events(t0(), 10).unwrap(), 2);
    assert_eq!(store.enqueue_new_events(t0(), 10).unwrap(), 0);
    let kinds = |id: &WebhookId| -> Vec<u64> { store.deliveries(id, 10).unwrap().iter().map(|d| d.record.event_id).collect() };
    assert_eq!(kinds(&done.id), [completed.id]);
    assert_eq!(kinds(&all.id), [log.id, completed.id]);
    // One due delivery per webhook: the earliest.
    let due = store.due(t0(), 10).unwrap();
    assert_eq!(
        due.iter().map(|d| (d.webhook_id.clone(), d.event.id)).collect::<Vec<_>>(),
        [(done.id.clone(), completed.id), (all.id.clone(), completed.id)]
    );
    let first = &due[1];
    let failed = AttemptRecord::after(0, t0(), AttemptOutcome::Status(503), &RetrySchedule::default());
    assert!(store.record_attempt(&first.id, &failed).unwrap());
    assert_eq!(store.next_due_after(t0()).unwrap(), Some(t0() + Duration::seconds(10)));
    assert_eq!(store.due(t0(), 10).unwrap().iter().map(|d| d.event.id).collect::<Vec<_>>(), [completed.id, log.id]);
    hooks.delete(all.id.as_str()).unwrap();
    assert!(!store.record_attempt(&first.id, &failed).unwrap());
}
