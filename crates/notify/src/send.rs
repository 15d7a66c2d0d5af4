//! One delivery attempt: the addresses checked once and connected to, the signed POST, and
//! what came of it.

use std::{io, net::SocketAddr, time::Duration};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use trainyard_domain::{
    failure,
    webhooks::{checked_addresses, AttemptOutcome, DueDelivery, HostResolver},
};

/// The event's kind (`session.completed`, ...).
pub const EVENT_HEADER: &str = "X-Trainyard-Event";
/// The delivery's id, the same on every attempt.
pub const DELIVERY_HEADER: &str = "X-Trainyard-Delivery";
/// `sha256=` and the hex HMAC-SHA256 of the raw body, keyed with the webhook's secret.
pub const SIGNATURE_HEADER: &str = "X-Trainyard-Signature";
/// The `User-Agent` of deliveries.
pub const USER_AGENT: &str = concat!("trainyard-webhooks/", env!("CARGO_PKG_VERSION"));

/// The `X-Trainyard-Signature` value of `body` signed with `secret`: `sha256=` and the
/// lowercase hex HMAC-SHA256.
#[must_use]
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// Sends `body` to the delivery's webhook once. The host is resolved once and each address is
/// checked against the address policy (unless `allow_private`); the connection goes only to
/// those checked addresses. Redirects are not followed: a 3xx is a failed attempt.
pub(crate) fn attempt(
    due: &DueDelivery,
    body: &[u8],
    resolver: &dyn HostResolver,
    allow_private: bool,
    timeout: Duration,
) -> AttemptOutcome {
    let addresses = match checked_addresses(&due.url, resolver, allow_private) {
        Ok(addresses) => addresses,
        Err(e) => return AttemptOutcome::NoAnswer(e.to_string()),
    };
    let agent = ureq::AgentBuilder::new()
        .timeout(timeout)
        .redirects(0)
        .user_agent(USER_AGENT)
        .resolver(move |_: &str| -> io::Result<Vec<SocketAddr>> { Ok(addresses.clone()) })
        .build();
    let sent = agent
        .post(due.url.as_str())
        .set("Content-Type", "application/json")
        .set(EVENT_HEADER, due.event.kind.as_str())
        .set(DELIVERY_HEADER, due.id.as_str())
        .set(SIGNATURE_HEADER, &signature(due.secret.expose(), body))
        .send_bytes(body);
    match sent {
        Ok(response) => AttemptOutcome::Status(response.status()),
        Err(ureq::Error::Status(code, _)) => AttemptOutcome::Status(code),
        Err(ureq::Error::Transport(t)) => AttemptOutcome::NoAnswer(describe(&t, timeout)),
    }
}

/// Why a request got no answer, in words an operator reads in the delivery log.
pub(crate) fn describe(t: &ureq::Transport, timeout: Duration) -> String {
    let timed_out = std::error::Error::source(t)
        .and_then(|s| s.downcast_ref::<io::Error>())
        .is_some_and(|e| matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock));
    if timed_out {
        return format!("no answer within {:.1} s", timeout.as_secs_f64());
    }
    let what = match t.kind() {
        ureq::ErrorKind::Dns => "the host did not resolve",
        ureq::ErrorKind::ConnectionFailed => "could not connect",
        ureq::ErrorKind::Io => "the connection broke",
        ureq::ErrorKind::BadStatus | ureq::ErrorKind::BadHeader => "the answer was not HTTP",
        _ => "the request failed",
    };
    let detail = std::error::Error::source(t).map(ToString::to_string).or_else(|| t.message().map(str::to_owned));
    match detail {
        Some(detail) => failure::scrub(&format!("{what}: {detail}")),
        None => what.to_owned(),
    }
}
