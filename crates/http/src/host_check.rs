//! DNS-rebinding defence: a server bound to a loopback address answers only requests whose
//! `Host` names the loopback (`localhost`, `127.0.0.0/8`, `[::1]`, any port) or a host the
//! operator allows (`--allowed-hosts`); any other gets 421 Misdirected Request in the envelope.
//! A web page whose name an attacker re-points at 127.0.0.1 still sends its own name as
//! `Host`, so it cannot reach the API (the attack on Ray's dashboard, CVE-2025-62593).
//! Every route is covered, `/health` too: a rebound page could otherwise probe for the server.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs},
    sync::Arc,
};

use actix_web::{
    body::{EitherBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    http::header,
    middleware::Next,
    Error, ResponseError,
};

use crate::error::{ApiError, ErrorCode};

/// A host as a `Host` header or `--allowed-hosts` names it: a lower-case name without its
/// trailing dot, or an IP address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Name(String),
    Ip(IpAddr),
}

impl Host {
    /// Whether this host is the machine itself: `localhost` or a loopback address.
    #[must_use]
    pub fn is_loopback(&self) -> bool {
        match self {
            Self::Name(name) => name == "localhost",
            Self::Ip(ip) => ip.is_loopback(),
        }
    }
}

/// Parses the host of a `Host` header value (`name`, `name:port`, `1.2.3.4:port`,
/// `[v6]:port`). Names compare without case and without one trailing dot (`LocalHost.` is
/// `localhost`); the port, when present, must be digits and is ignored. Returns `None` for
/// anything else (a bare IPv6 address, an empty host or port, a path, white space).
#[must_use]
pub fn parse_host(value: &str) -> Option<Host> {
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let ip = inside.parse::<Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        return port_ok(port).then_some(Host::Ip(IpAddr::V6(ip)));
    } else {
        match value.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (value, None),
        }
    };
    if !port_ok(port) {
        return None;
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_') {
        return None;
    }
    Some(match host.parse::<Ipv4Addr>() {
        Ok(ip) => Host::Ip(IpAddr::V4(ip)),
        Err(_) => Host::Name(host.to_ascii_lowercase()),
    })
}

/// A port, when present, is 1 to 5 digits.
fn port_ok(port: Option<&str>) -> bool {
    port.is_none_or(|p| (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
}

/// An `--allowed-hosts` entry that is not a host name or address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid allowed host '{0}': expected a host name or an IP address, without port or scheme")]
pub struct BadAllowedHost(pub String);

/// Which `Host` headers the server answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPolicy {
    /// `None`: every host (bound to a non-loopback address with no `--allowed-hosts`).
    allowed: Option<Vec<Host>>,
}

impl HostPolicy {
    /// The policy for a server bound to `bind_host` with the operator's extra hosts: the check
    /// is on when every address `bind_host` stands for is a loopback one, or when `extra` is not
    /// empty; loopback names then always pass.
    ///
    /// # Errors
    /// An entry of `extra` that is not a host name or an IP address (IPv6 with or without
    /// brackets).
    pub fn new(bind_host: &str, extra: &[String]) -> Result<Self, BadAllowedHost> {
        let mut hosts = Vec::with_capacity(extra.len());
        for entry in extra.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            hosts.push(parse_allowed(entry).ok_or_else(|| BadAllowedHost(entry.to_owned()))?);
        }
        if hosts.is_empty() && !binds_loopback_only(bind_host) {
            return Ok(Self { allowed: None });
        }
        Ok(Self { allowed: Some(hosts) })
    }

    /// Whether the check is on.
    #[must_use]
    pub fn is_checking(&self) -> bool {
        self.allowed.is_some()
    }

    /// Whether a request with this `Host` header value (absent: `None`) is answered.
    #[must_use]
    pub fn allows(&self, host_header: Option<&str>) -> bool {
        let Some(allowed) = &self.allowed else { return true };
        match host_header.and_then(parse_host) {
            Some(host) => host.is_loopback() || allowed.contains(&host),
            None => false,
        }
    }
}

/// An `--allowed-hosts` entry: a name, an IPv4 address, or an IPv6 address with or without
/// brackets; never a port (it would be ignored, so it is refused).
fn parse_allowed(entry: &str) -> Option<Host> {
    if let Ok(ip) = entry.parse::<Ipv6Addr>() {
        return Some(Host::Ip(IpAddr::V6(ip)));
    }
    if let Some(inside) = entry.strip_prefix('[') {
        return inside.strip_suffix(']')?.parse::<Ipv6Addr>().ok().map(|ip| Host::Ip(IpAddr::V6(ip)));
    }
    if entry.contains(':') {
        return None;
    }
    parse_host(entry)
}

/// Whether every address `host` resolves to is a loopback one (`localhost`, `127.0.0.1`, `::1`).
fn binds_loopback_only(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match (host, 0u16).to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.collect();
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
        }
        Err(_) => false,
    }
}

/// The middleware: refuses with 421 `HOST_NOT_ALLOWED` a request whose `Host` the policy does
/// not allow, and logs it as a warning (the host shown escaped and cut to 100 characters).
pub(crate) async fn check(
    policy: Arc<HostPolicy>,
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    let host = req.headers().get(header::HOST).map(|v| v.to_str().unwrap_or("\u{fffd}"));
    let host = host.or_else(|| req.uri().authority().map(actix_web::http::uri::Authority::as_str));
    if policy.allows(host) {
        return Ok(next.call(req).await?.map_into_left_body());
    }
    let shown: String = host.unwrap_or("").chars().take(100).flat_map(char::escape_default).collect();
    tracing::warn!(
        host = %shown,
        peer = %req.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default(),
        "request refused: its Host is not this server (DNS rebinding?)"
    );
    let err = ApiError::new(
        ErrorCode::HostNotAllowed,
        format!("the Host '{shown}' is not served here; use localhost or a host listed in --allowed-hosts"),
    )
    .with_details(serde_json::json!({ "host": shown }));
    Ok(req.into_response(err.error_response()).map_into_right_body())
}

#[cfg(test)]
mod tests {
    use quickcheck::{quickcheck, Arbitrary, Gen};

    use super::*;

    fn loopback_policy() -> HostPolicy {
        HostPolicy::new("127.0.0.1", &[]).unwrap()
    }

    #[test]
    fn loopback_forms_pass_and_others_are_refused() {
        let p = loopback_policy();
        for ok in ["localhost", "localhost:8000", "LOCALHOST.:1", "127.0.0.1", "127.0.0.1:65535", "[::1]", "[::1]:80", "127.9.9.9:1"] {
            assert!(p.allows(Some(ok)), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8000",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "::1",
            "[::2]:80",
            "localhost:",
            "localhost:80:80",
            "localhost:abc",
            "localhost:123456",
            "",
            " localhost",
            "localhost/x",
            "[::1",
            "[::1]x",
            "0.0.0.0",
            "10.0.0.1",
            "0177.0.0.1",
            "2130706433",
        ] {
            assert!(!p.allows(Some(bad)), "{bad:?}");
        }
        assert!(!p.allows(None));
    }

    #[test]
    fn allowed_hosts_extend_the_list_and_bad_entries_are_refused() {
        let p = HostPolicy::new("127.0.0.1", &["Trainyard.LAN.".into(), "10.0.0.5".into(), "[fd00::1]".into(), "fd00::2".into()]).unwrap();
        for ok in ["trainyard.lan", "TRAINYARD.lan:8443", "10.0.0.5:1", "[fd00::1]", "[fd00::2]:8000", "localhost"] {
            assert!(p.allows(Some(ok)), "{ok}");
        }
        assert!(!p.allows(Some("other.lan")));
        for bad in ["trainyard.lan:8000", "http://x", "a b", "[fd00::1]:80", "x/y", "[fd00::1"] {
            assert_eq!(HostPolicy::new("127.0.0.1", &[bad.to_owned()]), Err(BadAllowedHost(bad.to_owned())), "{bad}");
        }
    }

    #[test]
    fn the_check_is_off_on_other_addresses_unless_hosts_are_listed() {
        assert!(HostPolicy::new("localhost", &[]).unwrap().is_checking());
        assert!(HostPolicy::new("::1", &[]).unwrap().is_checking());
        let open = HostPolicy::new("0.0.0.0", &[]).unwrap();
        assert!(!open.is_checking() && open.allows(Some("evil.example")) && open.allows(None));
        let listed = HostPolicy::new("0.0.0.0", &["gpu.lan".into()]).unwrap();
        assert!(listed.allows(Some("gpu.lan:8000")) && listed.allows(Some("127.0.0.1")) && !listed.allows(Some("evil.example")));
    }

    /// A `Host` header an attacker might send: a random name in random case, maybe with a
    /// trailing dot, a port, or as an IP literal (IPv6 in brackets).
    #[derive(Debug, Clone)]
    struct HostHeader(String);

    impl Arbitrary for HostHeader {
        fn arbitrary(g: &mut Gen) -> Self {
            let base = match u8::arbitrary(g) % 6 {
                0 => String::arbitrary(g),
                1 => {
                    let labels: Vec<String> = (0..=usize::arbitrary(g) % 3)
                        .map(|_| {
                            let len = 1 + usize::arbitrary(g) % 8;
                            (0..len)
                                .map(|_| *g.choose(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-").unwrap() as char)
                                .collect()
                        })
                        .collect();
                    labels.join(".")
                }
                2 => format!("{}", Ipv4Addr::from(u32::arbitrary(g))),
                3 => format!("[{}]", Ipv6Addr::from(u128::arbitrary(g))),
                4 => format!("{}.localhost", String::arbitrary(g)),
                _ => format!("localhost{}", String::arbitrary(g)),
            };
            let dotted = if bool::arbitrary(g) { format!("{base}.") } else { base };
            Self(if bool::arbitrary(g) { format!("{dotted}:{}", u16::arbitrary(g)) } else { dotted })
        }
    }

    /// A loopback `Host`: `localhost` in any case, a 127/8 address or `[::1]`, with or without
    /// a trailing dot on the name and a port.
    #[derive(Debug, Clone)]
    struct LoopbackHeader(String);

    impl Arbitrary for LoopbackHeader {
        fn arbitrary(g: &mut Gen) -> Self {
            let base = match u8::arbitrary(g) % 3 {
                0 => {
                    let mixed: String = "localhost".chars().map(|c| if bool::arbitrary(g) { c.to_ascii_uppercase() } else { c }).collect();
                    if bool::arbitrary(g) {
                        format!("{mixed}.")
                    } else {
                        mixed
                    }
                }
                1 => format!("{}", Ipv4Addr::from(0x7f00_0000 | (u32::arbitrary(g) & 0x00ff_ffff))),
                _ => "[::1]".to_owned(),
            };
            Self(if bool::arbitrary(g) { format!("{base}:{}", u16::arbitrary(g)) } else { base })
        }
    }

    /// The host part of a header, worked out naively (lower case, port and trailing dots cut)
    /// as a reference for the property.
    fn naive_host(header: &str) -> String {
        let lower = header.to_ascii_lowercase();
        let host = if lower.starts_with('[') { lower.split_inclusive(']').next() } else { lower.split(':').next() };
        host.unwrap_or_default().trim_end_matches('.').to_owned()
    }

    quickcheck! {
        // Property 50: bound to loopback, a `Host` that is neither a loopback form nor in the
        // allowed set (random strings, names in mixed case, trailing dots, ports, IPv4 and
        // bracketed IPv6 literals) is refused; every loopback form, with any port, passes, and
        // so does an allowed host in any case, with a trailing dot and a port.
        fn prop50_only_loopback_and_allowed_hosts_pass(header: HostHeader, loopback: LoopbackHeader, listed: bool, port: u16) -> bool {
            let extra = if listed { vec!["trainyard.lan".to_owned()] } else { Vec::new() };
            let policy = HostPolicy::new("127.0.0.1", &extra).unwrap();
            let name = naive_host(&header.0);
            let loopback_or_listed = name == "localhost"
                || (listed && name == "trainyard.lan")
                || name.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
                || name.strip_prefix('[').and_then(|n| n.strip_suffix(']')).and_then(|n| n.parse::<Ipv6Addr>().ok()).is_some_and(|ip| ip.is_loopback());
            (!policy.allows(Some(&header.0)) || loopback_or_listed)
                && policy.allows(Some(&loopback.0))
                && policy.allows(Some(&format!("TrainYard.LAN.:{port}"))) == listed
        }
    }
}
