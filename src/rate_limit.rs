//! Per-client rate limiting of the registration routes (`rate_limit.per_minute`, `burst`), with
//! the `governor` crate's keyed GCRA limiter.
//!
//! Memory stays bounded under a flood from rotating addresses: IPv6 clients are keyed by their
//! /64 (one host usually owns a whole /64), entries that are back to "fresh" are dropped every
//! sweep, and past `MAX_TRACKED` addresses the table is emptied rather than allowed to grow.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::configuration::RateLimitSettings;

/// Most client keys tracked at once (~100 bytes each).
const MAX_TRACKED: usize = 100_000;

pub struct ClientLimiter {
    quota: Quota,
    /// Replaced wholesale when it outgrows `MAX_TRACKED`.
    limiter: RwLock<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
    clock: DefaultClock,
}

impl ClientLimiter {
    /// `None` when `per_minute = 0` (rate limiting off).
    pub fn new(settings: &RateLimitSettings) -> Option<Self> {
        let per_minute = NonZeroU32::new(settings.per_minute)?;
        let burst = NonZeroU32::new(settings.burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_minute(per_minute).allow_burst(burst);
        Some(Self {
            quota,
            limiter: RwLock::new(Arc::new(RateLimiter::keyed(quota))),
            clock: DefaultClock::default(),
        })
    }

    fn current(&self) -> Arc<DefaultKeyedRateLimiter<IpAddr>> {
        match self.limiter.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Ok, or how long `client` must wait.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let limiter = self.current();
        let result = limiter
            .check_key(&key(client))
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()));
        if limiter.len() > MAX_TRACKED {
            self.sweep();
        }
        result
    }

    /// Forgets clients whose allowance is full again; empties the table if it is still too big.
    pub fn sweep(&self) {
        let limiter = self.current();
        limiter.retain_recent();
        limiter.shrink_to_fit();
        if limiter.len() > MAX_TRACKED {
            tracing::warn!(
                tracked = limiter.len(),
                "rate limiter table full (address-rotating flood?); resetting it"
            );
            if let Ok(mut guard) = self.limiter.write() {
                *guard = Arc::new(RateLimiter::keyed(self.quota));
            }
        }
    }

    /// Clients tracked now.
    pub fn tracked(&self) -> usize {
        self.current().len()
    }
}

/// IPv4 addresses as they are; IPv6 by /64 (IPv4-mapped ones as IPv4).
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the right-most
/// address in `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_address(
    peer: Option<IpAddr>,
    forwarded_for: Option<&str>,
    trusted: &[IpAddr],
) -> Option<IpAddr> {
    let peer = peer?;
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let Some(header) = forwarded_for else {
        return Some(peer);
    };
    let mut client = peer;
    for hop in header.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) if trusted.contains(&ip) => client = ip,
            Ok(ip) => return Some(ip),
            // Garbage in the header: trust nothing further left.
            Err(_) => return Some(client),
        }
    }
    Some(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(per_minute: u32, burst: u32) -> RateLimitSettings {
        RateLimitSettings { per_minute, burst }
    }

    #[test]
    fn a_client_gets_its_burst_then_waits_while_others_are_unaffected() {
        let limiter = ClientLimiter::new(&settings(6, 3)).expect("on");
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        for _ in 0..3 {
            assert!(limiter.check(a).is_ok());
        }
        let wait = limiter.check(a).expect_err("over the burst");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(10),
            "{wait:?}"
        );
        assert!(limiter.check(b).is_ok(), "another address");
    }

    #[test]
    fn zero_per_minute_turns_limiting_off() {
        assert!(ClientLimiter::new(&settings(0, 10)).is_none());
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        let limiter = ClientLimiter::new(&settings(60, 1)).expect("on");
        assert!(limiter.check("2001:db8::1".parse().expect("ip")).is_ok());
        assert!(
            limiter
                .check("2001:db8::ffff".parse().expect("ip"))
                .is_err(),
            "same /64"
        );
        assert!(
            limiter
                .check("2001:db8:0:1::1".parse().expect("ip"))
                .is_ok(),
            "another /64"
        );
    }

    #[test]
    fn a_rotating_flood_stays_bounded() {
        let limiter = ClientLimiter::new(&settings(60, 5)).expect("on");
        for n in 0..(MAX_TRACKED as u32 + 5_000) {
            let _ = limiter.check(IpAddr::V4(n.into()));
        }
        assert!(
            limiter.tracked() <= MAX_TRACKED + 1,
            "{}",
            limiter.tracked()
        );
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.1".parse().expect("ip");
        let peer: IpAddr = "198.51.100.7".parse().expect("ip");
        let client: IpAddr = "203.0.113.9".parse().expect("ip");
        let trusted = [proxy];
        assert_eq!(
            client_address(Some(peer), Some("203.0.113.9"), &trusted),
            Some(peer),
            "untrusted peer"
        );
        assert_eq!(
            client_address(Some(proxy), Some("203.0.113.9"), &trusted),
            Some(client)
        );
        assert_eq!(
            client_address(
                Some(proxy),
                Some("1.2.3.4, 203.0.113.9, 10.0.0.1"),
                &trusted
            ),
            Some(client),
            "right-most untrusted hop"
        );
        assert_eq!(
            client_address(Some(proxy), Some("junk"), &trusted),
            Some(proxy)
        );
        assert_eq!(client_address(Some(proxy), None, &trusted), Some(proxy));
    }
}
