//! Per-client rate limiting of the registration routes (`rate_limit.per_minute`, `burst`), with
//! the `governor` crate's GCRA limiter over a state store of our own: a least-recently-seen
//! table of bounded size.
//!
//! Memory stays bounded under a flood from rotating addresses: IPv6 clients are keyed by their
//! /64 (one host usually owns a whole /64), and past `MAX_TRACKED` keys the client seen least
//! recently is forgotten, one at a time. Emptying the whole table instead would hand every
//! client a fresh burst whenever a flood filled it.

use std::net::{IpAddr, Ipv6Addr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};
use hashlink::LruCache;

use crate::configuration::{RateLimitSettings, TrustedProxy};

/// Most client keys tracked at once (~60 bytes each).
const MAX_TRACKED: usize = 100_000;

/// GCRA state per client key, least recently seen evicted first.
struct RecentClients {
    /// Shared with [`ClientLimiter`] so that it can report the table's size.
    table: Arc<Mutex<LruCache<IpAddr, Nanos>>>,
}

impl StateStore for RecentClients {
    type Key = IpAddr;

    fn measure_and_replace<T, F, E>(&self, key: &IpAddr, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // One short critical section per registration request; the lock is never held across
        // an await, and a panic inside cannot leave the table half-updated (insert is last).
        let mut table = self
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (result, next) = f(table.get(key).copied())?;
        table.insert(*key, next);
        Ok(result)
    }
}

pub(crate) struct ClientLimiter {
    limiter: RateLimiter<IpAddr, RecentClients, DefaultClock, NoOpMiddleware>,
    /// The limiter's table, for [`ClientLimiter::tracked`].
    #[cfg(test)]
    table: Arc<Mutex<LruCache<IpAddr, Nanos>>>,
    clock: DefaultClock,
}

impl ClientLimiter {
    /// `None` when `per_minute = 0` (rate limiting off).
    pub(crate) fn new(settings: &RateLimitSettings) -> Option<Self> {
        Self::with_capacity(settings, MAX_TRACKED)
    }

    fn with_capacity(settings: &RateLimitSettings, capacity: usize) -> Option<Self> {
        let per_minute = NonZeroU32::new(settings.per_minute)?;
        let burst = NonZeroU32::new(settings.burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_minute(per_minute).allow_burst(burst);
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        let table = Arc::new(Mutex::new(LruCache::new(capacity.get())));
        let store = RecentClients {
            table: Arc::clone(&table),
        };
        let clock = DefaultClock::default();
        Some(Self {
            limiter: RateLimiter::new(quota, store, clock.clone()),
            #[cfg(test)]
            table,
            clock,
        })
    }

    /// The console's sign-in limit: 5 attempts at once per client address, then one every
    /// 12 s. Always on, whatever `rate_limit` says: it guards the admin token.
    pub(crate) fn sign_in() -> Self {
        let settings = RateLimitSettings {
            per_minute: 5,
            burst: 5,
        };
        Self::with_capacity(&settings, MAX_TRACKED)
            .unwrap_or_else(|| unreachable!("5/min is not 0"))
    }

    /// Ok, or how long `client` must wait.
    pub(crate) fn check(&self, client: IpAddr) -> Result<(), Duration> {
        self.limiter
            .check_key(&key(client))
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Clients tracked now.
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

/// IPv4 addresses as they are; IPv6 by /64 (IPv4-mapped ones as IPv4).
fn key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the right-most
/// address in `X-Forwarded-For` that is not itself a trusted proxy.
///
/// `forwarded_for` holds every `X-Forwarded-For` header line in the order received: a proxy
/// may append its own line instead of extending the client's (HAProxy's `option forwardfor`),
/// and reading only the first line would believe whatever the client wrote there.
pub(crate) fn client_address<'h>(
    peer: Option<IpAddr>,
    forwarded_for: impl IntoIterator<Item = &'h str>,
    trusted: &[TrustedProxy],
) -> Option<IpAddr> {
    let peer = peer?.to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|proxy| proxy.contains(ip));
    if !is_trusted(peer) {
        return Some(peer);
    }
    let hops: Vec<&str> = forwarded_for
        .into_iter()
        .flat_map(|line| line.split(','))
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop.trim().parse::<IpAddr>().map(|ip| ip.to_canonical()) {
            Ok(ip) if is_trusted(ip) => client = ip,
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
        assert_eq!(limiter.tracked(), MAX_TRACKED);
    }

    #[test]
    fn a_full_table_forgets_the_client_seen_least_recently_not_everyone() {
        let limiter = ClientLimiter::with_capacity(&settings(1, 1), 3).expect("on");
        let ip = |n: u8| IpAddr::V4([192, 0, 2, n].into());
        for n in 1..=3 {
            assert!(limiter.check(ip(n)).is_ok(), "first request of {n}");
        }
        // 1 is seen again (refused: its burst is spent), so 2 is now the least recent.
        assert!(limiter.check(ip(1)).is_err());
        // A fourth client fills the table past its size: 2 is forgotten, nobody else.
        assert!(limiter.check(ip(4)).is_ok());
        assert_eq!(limiter.tracked(), 3);
        assert!(limiter.check(ip(1)).is_err(), "1 is still limited");
        assert!(limiter.check(ip(3)).is_err(), "3 is still limited");
        assert!(limiter.check(ip(2)).is_ok(), "2 was forgotten");
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.1".parse().expect("ip");
        let peer: IpAddr = "198.51.100.7".parse().expect("ip");
        let client: IpAddr = "203.0.113.9".parse().expect("ip");
        let trusted: Vec<TrustedProxy> = vec!["10.0.0.0/24".parse().expect("range")];
        let mapped_proxy: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        // (peer, X-Forwarded-For lines, expected client, why)
        let cases: &[(IpAddr, &[&str], IpAddr, &str)] = &[
            (peer, &["203.0.113.9"], peer, "untrusted peer"),
            (proxy, &["203.0.113.9"], client, "one hop"),
            (
                proxy,
                &["1.2.3.4, 203.0.113.9, 10.0.0.2"],
                client,
                "right-most untrusted hop; the range covers 10.0.0.2",
            ),
            (
                proxy,
                &["1.2.3.4", "203.0.113.9"],
                client,
                "a second header line (HAProxy appends one) is read too",
            ),
            (
                mapped_proxy,
                &["203.0.113.9"],
                client,
                "a proxy seen as ::ffff:10.0.0.1 (bind = [::]) is the proxy",
            ),
            (proxy, &["junk"], proxy, "garbage: trust nothing left of it"),
            (proxy, &[], proxy, "no header"),
        ];
        for (peer, lines, expected, why) in cases {
            assert_eq!(
                client_address(Some(*peer), lines.iter().copied(), &trusted),
                Some(*expected),
                "{why}"
            );
        }
    }
}
