//! Which network addresses a webhook may be delivered to: the server-side request forgery
//! policy, a pure function of the address.
//!
//! A webhook URL is chosen by a client, and the server connects to it: without a policy a
//! client could make the server talk to itself, to its network's private services or to a
//! cloud's metadata endpoint. Only global unicast addresses pass.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

/// Why an address is refused: the class it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusedClass {
    /// `0.0.0.0/8`, `::`.
    Unspecified,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`, `fc00::/7`, and the deprecated
    /// site-local `fec0::/10`.
    Private,
    /// `169.254.0.0/16`, `fe80::/10`.
    LinkLocal,
    /// `100.64.0.0/10`, carrier-grade NAT.
    SharedAddressSpace,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// `192.0.2.0/24`, `198.51.100.0/24`, `203.0.113.0/24`, `2001:db8::/32`, `3fff::/20`.
    Documentation,
    /// The cloud metadata endpoints `169.254.169.254` and `fd00:ec2::254`.
    Metadata,
    /// `192.0.0.0/24`, `198.18.0.0/15` (benchmarking), `240.0.0.0/4`, the IPv4-compatible
    /// `::/96` and the discard-only `100::/64`.
    Reserved,
}

impl RefusedClass {
    /// The class in words, for messages.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::LinkLocal => "link-local",
            Self::SharedAddressSpace => "shared (carrier-grade NAT)",
            Self::Multicast => "multicast",
            Self::Broadcast => "broadcast",
            Self::Documentation => "documentation",
            Self::Metadata => "cloud metadata",
            Self::Reserved => "reserved",
        }
    }
}

impl fmt::Display for RefusedClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The metadata endpoint of most clouds (AWS, GCP, Azure, OpenStack).
const METADATA_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// AWS's IPv6 metadata endpoint.
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);

/// The class `ip` is refused for, or `None` when a webhook may be delivered to it. IPv6
/// forms that carry an IPv4 address (IPv4-mapped `::ffff:0:0/96`, NAT64 `64:ff9b::/96`, 6to4
/// `2002::/16`) are judged by that address.
#[must_use]
pub fn refused_class(ip: IpAddr) -> Option<RefusedClass> {
    match ip {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => v6_class(v6),
    }
}

/// Whether a webhook may be delivered to `ip`.
#[must_use]
pub fn address_allowed(ip: IpAddr) -> bool {
    refused_class(ip).is_none()
}

fn v4_class(ip: Ipv4Addr) -> Option<RefusedClass> {
    let [a, b, c, _] = ip.octets();
    let class = if ip == METADATA_V4 {
        RefusedClass::Metadata
    } else if a == 0 {
        RefusedClass::Unspecified
    } else if ip.is_loopback() {
        RefusedClass::Loopback
    } else if ip.is_private() {
        RefusedClass::Private
    } else if ip.is_link_local() {
        RefusedClass::LinkLocal
    } else if a == 100 && b & 0xc0 == 64 {
        RefusedClass::SharedAddressSpace
    } else if ip.is_multicast() {
        RefusedClass::Multicast
    } else if ip.is_broadcast() {
        RefusedClass::Broadcast
    } else if ip.is_documentation() {
        RefusedClass::Documentation
    } else if a >= 240 || (a == 192 && b == 0 && c == 0) || (a == 198 && b & 0xfe == 18) {
        RefusedClass::Reserved
    } else {
        return None;
    };
    Some(class)
}

fn v6_class(ip: Ipv6Addr) -> Option<RefusedClass> {
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    let class = if ip == METADATA_V6 {
        RefusedClass::Metadata
    } else if ip.is_unspecified() {
        RefusedClass::Unspecified
    } else if ip.is_loopback() {
        RefusedClass::Loopback
    } else if s[..6] == [0, 0, 0, 0, 0, 0xffff] || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return v4_class(embedded(s[6], s[7]));
    } else if s[0] == 0x2002 {
        return v4_class(embedded(s[1], s[2]));
    } else if s[..6] == [0; 6] || s[..4] == [0x100, 0, 0, 0] {
        RefusedClass::Reserved
    } else if s[0] & 0xfe00 == 0xfc00 || s[0] & 0xffc0 == 0xfec0 {
        RefusedClass::Private
    } else if s[0] & 0xffc0 == 0xfe80 {
        RefusedClass::LinkLocal
    } else if s[0] & 0xff00 == 0xff00 {
        RefusedClass::Multicast
    } else if (s[0] == 0x2001 && s[1] == 0x0db8) || (s[0] == 0x3fff && s[1] & 0xf000 == 0) {
        RefusedClass::Documentation
    } else {
        return None;
    };
    Some(class)
}

#[cfg(test)]
mod tests {
    use quickcheck::{Gen, QuickCheck};

    use super::*;

    /// The policy as a table of networks, first match wins: the oracle of property 63, written
    /// from the address registries rather than from the code above.
    const TABLE: &[(&str, u8, RefusedClass)] = &[
        ("169.254.169.254", 32, RefusedClass::Metadata),
        ("fd00:ec2::254", 128, RefusedClass::Metadata),
        ("0.0.0.0", 8, RefusedClass::Unspecified),
        ("127.0.0.0", 8, RefusedClass::Loopback),
        ("10.0.0.0", 8, RefusedClass::Private),
        ("172.16.0.0", 12, RefusedClass::Private),
        ("192.168.0.0", 16, RefusedClass::Private),
        ("169.254.0.0", 16, RefusedClass::LinkLocal),
        ("100.64.0.0", 10, RefusedClass::SharedAddressSpace),
        ("224.0.0.0", 4, RefusedClass::Multicast),
        ("255.255.255.255", 32, RefusedClass::Broadcast),
        ("192.0.2.0", 24, RefusedClass::Documentation),
        ("198.51.100.0", 24, RefusedClass::Documentation),
        ("203.0.113.0", 24, RefusedClass::Documentation),
        ("240.0.0.0", 4, RefusedClass::Reserved),
        ("192.0.0.0", 24, RefusedClass::Reserved),
        ("198.18.0.0", 15, RefusedClass::Reserved),
        ("::", 128, RefusedClass::Unspecified),
        ("::1", 128, RefusedClass::Loopback),
        ("::", 96, RefusedClass::Reserved),
        ("100::", 64, RefusedClass::Reserved),
        ("fc00::", 7, RefusedClass::Private),
        ("fec0::", 10, RefusedClass::Private),
        ("fe80::", 10, RefusedClass::LinkLocal),
        ("ff00::", 8, RefusedClass::Multicast),
        ("2001:db8::", 32, RefusedClass::Documentation),
        ("3fff::", 20, RefusedClass::Documentation),
    ];

    fn network(entry: &(&str, u8, RefusedClass)) -> IpAddr {
        entry.0.parse().expect("a table address")
    }

    fn within(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
        match (ip, net) {
            (IpAddr::V4(ip), IpAddr::V4(net)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                u32::from(ip) & mask == u32::from(net) & mask
            }
            (IpAddr::V6(ip), IpAddr::V6(net)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                u128::from(ip) & mask == u128::from(net) & mask
            }
            _ => false,
        }
    }

    fn oracle(ip: IpAddr) -> Option<RefusedClass> {
        if let IpAddr::V6(v6) = ip {
            let bits = u128::from(v6);
            // IPv4-mapped, NAT64 and 6to4 addresses are judged by the IPv4 address they carry.
            let carried = if bits >> 32 == 0xffff || bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 {
                Some((bits & 0xffff_ffff) as u32)
            } else if bits >> 112 == 0x2002 {
                Some(((bits >> 80) & 0xffff_ffff) as u32)
            } else {
                None
            };
            if let Some(v4) = carried {
                return oracle(IpAddr::V4(Ipv4Addr::from(v4)));
            }
        }
        TABLE.iter().find(|e| within(ip, network(e), e.1)).map(|e| e.2)
    }

    /// An address from `bits`: half the time inside a network of the table (so every class
    /// is reached), else anywhere; as IPv4, IPv6, or an IPv6 form carrying an IPv4 address.
    fn address(pick: u8, form: u8, bits: u128) -> IpAddr {
        let entry = &TABLE[usize::from(pick) % TABLE.len()];
        let ip = if form.is_multiple_of(2) {
            match network(entry) {
                IpAddr::V4(net) => {
                    let host = u32::MAX.checked_shr(u32::from(entry.1)).unwrap_or(0);
                    IpAddr::V4(Ipv4Addr::from(u32::from(net) | (bits as u32 & host)))
                }
                IpAddr::V6(net) => {
                    let host = u128::MAX.checked_shr(u32::from(entry.1)).unwrap_or(0);
                    IpAddr::V6(Ipv6Addr::from(u128::from(net) | (bits & host)))
                }
            }
        } else if form % 4 == 1 {
            IpAddr::V4(Ipv4Addr::from(bits as u32))
        } else {
            IpAddr::V6(Ipv6Addr::from(bits))
        };
        match (ip, form / 4 % 4) {
            (IpAddr::V4(v4), 1) => IpAddr::V6(v4.to_ipv6_mapped()),
            (IpAddr::V4(v4), 2) => IpAddr::V6(Ipv6Addr::from((0x0064_ff9b_u128 << 96) | u128::from(u32::from(v4)))),
            (IpAddr::V4(v4), 3) => IpAddr::V6(Ipv6Addr::from((0x2002_u128 << 112) | (u128::from(u32::from(v4)) << 80) | (bits & 0xffff))),
            (other, _) => other,
        }
    }

    // Property 63: a webhook may be delivered to an address iff it is global unicast: for
    // random IPv4 and IPv6 addresses, addresses inside every refused network, and their
    // IPv4-mapped, NAT64 and 6to4 forms, the policy names the same refused class as an
    // independent table of the registries' networks (or none for both).
    #[test]
    fn prop63_address_policy_agrees_with_the_registry_table() {
        fn prop(pick: u8, form: u8, bits: u128) -> bool {
            let ip = address(pick, form, bits);
            let class = refused_class(ip);
            class == oracle(ip) && address_allowed(ip) == class.is_none()
        }
        QuickCheck::new().tests(3000).rng(Gen::new(100)).quickcheck(prop as fn(u8, u8, u128) -> bool);
    }

    #[test]
    fn named_addresses_get_their_class() {
        let cases: &[(&str, Option<RefusedClass>)] = &[
            ("127.0.0.1", Some(RefusedClass::Loopback)),
            ("::1", Some(RefusedClass::Loopback)),
            ("::ffff:127.0.0.1", Some(RefusedClass::Loopback)),
            ("10.1.2.3", Some(RefusedClass::Private)),
            ("172.31.255.255", Some(RefusedClass::Private)),
            ("172.32.0.1", None),
            ("192.168.1.1", Some(RefusedClass::Private)),
            ("::ffff:192.168.1.1", Some(RefusedClass::Private)),
            ("169.254.169.254", Some(RefusedClass::Metadata)),
            ("::ffff:169.254.169.254", Some(RefusedClass::Metadata)),
            ("fd00:ec2::254", Some(RefusedClass::Metadata)),
            ("169.254.1.1", Some(RefusedClass::LinkLocal)),
            ("fe80::1", Some(RefusedClass::LinkLocal)),
            ("fd12:3456::1", Some(RefusedClass::Private)),
            ("100.64.0.1", Some(RefusedClass::SharedAddressSpace)),
            ("100.128.0.1", None),
            ("0.0.0.0", Some(RefusedClass::Unspecified)),
            ("::", Some(RefusedClass::Unspecified)),
            ("224.0.0.1", Some(RefusedClass::Multicast)),
            ("ff02::1", Some(RefusedClass::Multicast)),
            ("255.255.255.255", Some(RefusedClass::Broadcast)),
            ("192.0.2.10", Some(RefusedClass::Documentation)),
            ("2001:db8::1", Some(RefusedClass::Documentation)),
            ("64:ff9b::a00:1", Some(RefusedClass::Private)),
            ("2002:7f00:1::", Some(RefusedClass::Loopback)),
            ("8.8.8.8", None),
            ("1.1.1.1", None),
            ("::ffff:8.8.8.8", None),
            ("2606:4700:4700::1111", None),
        ];
        for (raw, expected) in cases {
            let ip: IpAddr = raw.parse().unwrap();
            assert_eq!(refused_class(ip), *expected, "{raw}");
        }
    }
}
