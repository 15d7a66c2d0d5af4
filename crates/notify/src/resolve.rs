//! Host name resolution through the operating system, for the address policy.

use std::net::{IpAddr, ToSocketAddrs};

use trainyard_domain::{failure, webhooks::HostResolver};

/// Resolves names with the system's resolver (`getaddrinfo`), as connecting would.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl HostResolver for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> Result<Vec<IpAddr>, String> {
        let found = (host, port).to_socket_addrs().map_err(|e| failure::scrub(&e.to_string()))?;
        let mut ips: Vec<IpAddr> = Vec::new();
        for addr in found {
            if !ips.contains(&addr.ip()) {
                ips.push(addr.ip());
            }
        }
        Ok(ips)
    }
}
