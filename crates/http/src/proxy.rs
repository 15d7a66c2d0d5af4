//! The client's effective address behind reverse proxies: `X-Forwarded-For` counts only when
//! the peer is a trusted proxy, and then the client is the rightmost hop that is not one.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

/// The proxies (addresses or CIDR networks) whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses addresses (`10.0.0.1`, `::1`) and networks (`10.0.0.0/8`, `fd00::/8`); blank
    /// items are skipped.
    ///
    /// # Errors
    /// A message naming the first item that is neither.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Self, String> {
        items
            .iter()
            .map(|item| item.as_ref().trim())
            .filter(|item| !item.is_empty())
            .map(|item| {
                item.parse::<IpNet>()
                    .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| format!("invalid trusted proxy {item:?}: use an IP address or a CIDR network such as 10.0.0.0/8"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// Whether no proxy is trusted (then `X-Forwarded-For` is always ignored).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The effective client address of a request from `peer` carrying the `X-Forwarded-For`
    /// header values `forwarded_for` (in order; each a comma-separated list of hops).
    ///
    /// An untrusted peer is the client, whatever the header says. A trusted peer's header is
    /// walked from the right, past trusted proxies, to the first hop that is not one: the
    /// client. If every hop is trusted, the leftmost is the client; a hop that is not an
    /// address (with or without a port) ends the walk at the trusted hop to its right.
    #[must_use]
    pub fn client_addr<'a>(&self, peer: IpAddr, forwarded_for: impl IntoIterator<Item = &'a str>) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        let hops: Vec<&str> = forwarded_for.into_iter().flat_map(|v| v.split(',')).map(str::trim).collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop) else { return client };
            client = ip;
            if !self.trusts(ip) {
                return ip;
            }
        }
        client
    }
}

/// One `X-Forwarded-For` hop: an address, perhaps with a port (`1.2.3.4:80`, `[::1]:80`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>().or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip())).ok().map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use quickcheck::{QuickCheck, TestResult};

    use super::*;

    fn trusted(items: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(items).unwrap()
    }

    #[test]
    fn parses_addresses_and_networks() {
        let t = trusted(&["10.0.0.0/8", " 192.168.1.7 ", "", "fd00::/8", "::1"]);
        assert!(t.trusts("10.1.2.3".parse().unwrap()) && t.trusts("192.168.1.7".parse().unwrap()));
        assert!(t.trusts("fd12::1".parse().unwrap()) && t.trusts("::1".parse().unwrap()) && t.trusts("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!t.trusts("192.168.1.8".parse().unwrap()) && !t.trusts("11.0.0.1".parse().unwrap()));
        assert!(TrustedProxies::parse(&["10.0.0.0/33"]).unwrap_err().contains("10.0.0.0/33"));
        assert!(TrustedProxies::parse(&["proxy.local"]).is_err());
        assert!(TrustedProxies::parse::<&str>(&[]).unwrap().is_empty());
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let t = trusted(&["10.0.0.0/8"]);
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let client = |values: &[&str]| t.client_addr(peer, values.iter().copied()).to_string();
        assert_eq!(client(&["203.0.113.9"]), "203.0.113.9");
        assert_eq!(client(&["1.1.1.1, 203.0.113.9, 10.0.0.2"]), "203.0.113.9", "a spoofed leftmost hop is ignored");
        assert_eq!(client(&["1.1.1.1", "203.0.113.9:4711"]), "203.0.113.9", "several headers, a port");
        assert_eq!(client(&["10.0.0.3, 10.0.0.2"]), "10.0.0.3", "all trusted: the leftmost");
        assert_eq!(client(&["garbage, 10.0.0.2"]), "10.0.0.2", "garbage ends the walk at the trusted hop");
        assert_eq!(client(&[]), "10.0.0.1");
        assert_eq!(client(&["[2001:db8::1]:443"]), "2001:db8::1");
        let outsider: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(t.client_addr(outsider, ["203.0.113.9"]), outsider, "an untrusted peer's header is ignored");
    }

    // Property 47: behind trusted proxies the client is the rightmost address of
    // [X-Forwarded-For hops..., peer] that is not a trusted proxy (the leftmost when all are),
    // however the hops are split across headers and spaced; without trusted proxies it is
    // always the peer.
    fn prop47_case(hops: Vec<(u8, bool)>, peer: (u8, bool), splits: Vec<bool>) -> TestResult {
        let addr = |i: u8| IpAddr::from([198, 51, 100, i]);
        let trusted_items: Vec<String> =
            hops.iter().chain(std::iter::once(&peer)).filter(|(_, t)| *t).map(|(i, _)| addr(*i).to_string()).collect();
        let proxies = TrustedProxies::parse(&trusted_items).unwrap();
        let is_trusted = |ip: &IpAddr| trusted_items.contains(&ip.to_string());
        let mut headers = vec![String::new()];
        for (n, (i, _)) in hops.iter().enumerate() {
            if n > 0 {
                if splits.get(n).copied().unwrap_or(false) {
                    headers.push(String::new());
                } else {
                    headers.last_mut().unwrap().push_str(" , ");
                }
            }
            headers.last_mut().unwrap().push_str(&addr(*i).to_string());
        }
        let values: Vec<&str> = if hops.is_empty() { Vec::new() } else { headers.iter().map(String::as_str).collect() };
        let chain: Vec<IpAddr> = hops.iter().map(|(i, _)| addr(*i)).chain(std::iter::once(addr(peer.0))).collect();
        let expected = chain.iter().rposition(|ip| !is_trusted(ip)).map_or(chain[0], |i| chain[i]);
        let got = proxies.client_addr(addr(peer.0), values.iter().copied());
        let untrusting = TrustedProxies::default().client_addr(addr(peer.0), values.iter().copied());
        TestResult::from_bool(got == expected && untrusting == addr(peer.0))
    }

    #[test]
    fn prop47_the_client_is_the_rightmost_untrusted_hop() {
        QuickCheck::new().tests(500).quickcheck(prop47_case as fn(Vec<(u8, bool)>, (u8, bool), Vec<bool>) -> TestResult);
    }
}
