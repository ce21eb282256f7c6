//! `--trusted-proxies`: the peers whose `Forwarded` / `X-Forwarded-For`
//! headers Herald believes, to know a proxied client's real address.
//!
//! A connection from a trusted proxy carries many clients, so it is not
//! counted against `--max-connections-per-ip`; each event stream through
//! it is counted against the same limit by the client's address instead.
//! The client's address is the right-most address in the forwarding
//! headers that is not itself a trusted proxy (each proxy appends the
//! address it saw, so anything left of that was written by the client and
//! proves nothing). A peer that is not trusted is its own client address,
//! whatever headers it sends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use axum::http::HeaderMap;
use parking_lot::Mutex;

/// Networks of trusted proxies.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<(IpAddr, u8)>,
}

impl TrustedProxies {
    /// `CIDR,CIDR,...` (a bare address is a /32 or /128); empty: none.
    pub fn parse(list: &str) -> anyhow::Result<TrustedProxies> {
        let mut nets = Vec::new();
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (addr, bits) = match part.split_once('/') {
                Some((a, b)) => (a, Some(b)),
                None => (part, None),
            };
            let ip: IpAddr = addr.parse().map_err(|_| {
                anyhow::anyhow!(
                    "trusted_proxies: {part:?} is not an address or CIDR (e.g. 10.0.0.0/8, ::1)"
                )
            })?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                Some(b) => b.parse::<u8>().ok().filter(|b| *b <= max).ok_or_else(|| {
                    anyhow::anyhow!(
                        "trusted_proxies: {part:?}: the prefix length must be 0 to {max}"
                    )
                })?,
                None => max,
            };
            nets.push((ip, bits));
        }
        Ok(TrustedProxies { nets })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|&(net, bits)| in_net(ip, net, bits))
    }

    /// The client's address for a request from `peer`: the peer itself
    /// unless it is a trusted proxy; through one, the right-most hop in the
    /// forwarding headers that is not trusted, or None when there is no
    /// such hop (no header: the proxy does not say; every hop trusted: a
    /// client on the proxies' own networks).
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> Option<IpAddr> {
        if !self.contains(peer) {
            return Some(peer);
        }
        // Right to left over every hop the trusted proxies recorded.
        let mut hops: Vec<IpAddr> = Vec::new();
        for value in headers.get_all("x-forwarded-for") {
            if let Ok(v) = value.to_str() {
                hops.extend(v.split(',').filter_map(|a| parse_hop(a.trim())));
            }
        }
        if hops.is_empty() {
            for value in headers.get_all("forwarded") {
                if let Ok(v) = value.to_str() {
                    for element in v.split(',') {
                        for pair in element.split(';') {
                            if let Some((k, a)) = pair.trim().split_once('=') {
                                if k.trim().eq_ignore_ascii_case("for") {
                                    hops.extend(parse_hop(a.trim().trim_matches('"')));
                                }
                            }
                        }
                    }
                }
            }
        }
        hops.iter().rev().copied().find(|ip| !self.contains(*ip))
    }
}

/// Event streams through trusted proxies, counted per client address
/// against `--max-connections-per-ip` (0: not counted).
pub struct ProxiedStreams {
    max_per_ip: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One counted stream; dropping it frees the slot.
pub struct StreamSlot {
    streams: Arc<ProxiedStreams>,
    ip: IpAddr,
}

impl ProxiedStreams {
    pub fn new(max_per_ip: usize) -> Arc<ProxiedStreams> {
        Arc::new(ProxiedStreams {
            max_per_ip,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a stream of `client`, or None when it has its most.
    pub fn try_acquire(self: &Arc<Self>, client: IpAddr) -> Option<Option<StreamSlot>> {
        if self.max_per_ip == 0 {
            return Some(None);
        }
        let ip = crate::http::conn::client_key(client);
        let mut open = self.open.lock();
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return None;
        }
        *n += 1;
        Some(Some(StreamSlot {
            streams: self.clone(),
            ip,
        }))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock();
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// An address as a hop writes it: `1.2.3.4`, `1.2.3.4:5678`, `[::1]`,
/// `[::1]:5678`, `::1`.
fn parse_hop(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    s.rsplit_once(':')?.0.parse().ok()
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_parse_and_match() {
        let t = TrustedProxies::parse("127.0.0.0/8, ::1, 10.1.2.3").unwrap();
        assert!(t.contains(ip("127.9.9.9")));
        assert!(t.contains(ip("::ffff:127.0.0.1")), "v4 mapped into v6");
        assert!(t.contains(ip("::1")));
        assert!(t.contains(ip("10.1.2.3")));
        assert!(!t.contains(ip("10.1.2.4")));
        assert!(!t.contains(ip("128.0.0.1")));
        assert!(TrustedProxies::parse("").unwrap().nets.is_empty());
        for bad in ["10.0.0.0/33", "nope", "::1/129", "10.0.0.0/x"] {
            let e = TrustedProxies::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_hop_and_only_behind_a_trusted_peer() {
        let t = TrustedProxies::parse("127.0.0.0/8,10.0.0.0/8").unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "6.6.6.6, 203.0.113.7, 10.0.0.2".parse().unwrap(),
        );
        // The client wrote 6.6.6.6 itself; the edge proxy saw 203.0.113.7.
        assert_eq!(t.client_ip(ip("127.0.0.1"), &h), Some(ip("203.0.113.7")));
        // Not from a trusted peer: the header proves nothing.
        assert_eq!(
            t.client_ip(ip("198.51.100.1"), &h),
            Some(ip("198.51.100.1"))
        );
        let mut f = HeaderMap::new();
        f.insert(
            "forwarded",
            "for=\"[2001:db8::1]:4711\";proto=https".parse().unwrap(),
        );
        assert_eq!(t.client_ip(ip("127.0.0.1"), &f), Some(ip("2001:db8::1")));
        // Every hop trusted, or no header: no client address to count by.
        let mut all = HeaderMap::new();
        all.insert("x-forwarded-for", "10.0.0.9, 10.0.0.2".parse().unwrap());
        assert_eq!(t.client_ip(ip("127.0.0.1"), &all), None);
        assert_eq!(t.client_ip(ip("127.0.0.1"), &HeaderMap::new()), None);
    }

    #[test]
    fn proxied_streams_are_counted_per_client() {
        let s = ProxiedStreams::new(2);
        let a = s.try_acquire(ip("203.0.113.1")).unwrap();
        let _b = s.try_acquire(ip("203.0.113.1")).unwrap();
        assert!(s.try_acquire(ip("203.0.113.1")).is_none(), "over the limit");
        assert!(s.try_acquire(ip("203.0.113.2")).is_some(), "another client");
        drop(a);
        assert!(s.try_acquire(ip("203.0.113.1")).is_some(), "freed");
        assert!(ProxiedStreams::new(0)
            .try_acquire(ip("1.1.1.1"))
            .unwrap()
            .is_none());
    }
}
