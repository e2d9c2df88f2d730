//! Telling clients apart by address, for the limits kept per client.

use std::net::{IpAddr, Ipv6Addr};

/// The address a client is counted under: IPv4 as it is (also when mapped into IPv6), IPv6 by its /64 (one host
/// can use any address of it).
pub fn key(client: IpAddr) -> IpAddr {
    match client.to_canonical() {
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            segments[4..].fill(0);
            IpAddr::V6(Ipv6Addr::from(segments))
        }
        v4 => v4,
    }
}
