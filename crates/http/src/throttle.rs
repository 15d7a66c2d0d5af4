//! The [`AttemptLimiter`] port on governor's keyed token buckets (GCRA): failed
//! authentications per client address and per key fingerprint, and an optional request rate
//! per key. The buckets' memory is bounded: stale entries are dropped periodically, and while
//! a table is full of fresh entries, failures from newcomers are throttled (valid keys are
//! never held back by failure limits, so the owner keeps working). A full table is swept at
//! most once a second, so spraying addresses costs the server no more than that.

use std::{
    hash::Hash,
    net::IpAddr,
    num::NonZeroU32,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, PoisonError,
    },
    time::Duration,
};

use governor::{
    clock::{Clock, DefaultClock, Reference},
    middleware::NoOpMiddleware,
    state::keyed::DashMapStateStore,
    Quota, RateLimiter,
};
use trainyard_domain::ports::AttemptLimiter;

/// How many addresses or keys each table tracks at most: about 100 bytes each.
pub const MAX_TRACKED: usize = 65_536;
/// Every this many checks of a table, its stale entries are dropped and its memory shrunk.
const HOUSEKEEPING_EVERY: u64 = 4_096;
/// The wait a full table answers with: the time any bucket takes to refill.
const FULL_TABLE_WAIT: Duration = Duration::from_secs(60);
/// How often a full table may be swept for stale entries (a sweep visits every entry).
const FULL_TABLE_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The limits, per minute; `0` turns a limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Failed authentications per client address, and per key fingerprint.
    pub failures_per_minute: u32,
    /// Authenticated requests per key.
    pub requests_per_key_per_minute: u32,
}

type Keyed<K, C> = RateLimiter<K, DashMapStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// One keyed token-bucket table with its bound.
struct Table<K: Hash + Eq + Clone, C: Clock> {
    limiter: Keyed<K, C>,
    clock: C,
    max_tracked: usize,
    checks: AtomicU64,
    last_full_sweep: Mutex<Option<C::Instant>>,
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> Table<K, C> {
    fn new(per_minute: u32, clock: &C, max_tracked: usize) -> Option<Self> {
        let quota = Quota::per_minute(NonZeroU32::new(per_minute)?);
        Some(Self {
            limiter: RateLimiter::new(quota, DashMapStateStore::default(), clock.clone()),
            clock: clock.clone(),
            max_tracked,
            checks: AtomicU64::new(0),
            last_full_sweep: Mutex::new(None),
        })
    }

    /// Drops stale entries of a full table, unless that was done less than
    /// [`FULL_TABLE_SWEEP_INTERVAL`] ago; says whether the table has room now.
    fn make_room(&self) -> bool {
        let now = self.clock.now();
        {
            let mut last = self.last_full_sweep.lock().unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|t| Duration::from(now.duration_since(t)) < FULL_TABLE_SWEEP_INTERVAL) {
                return false;
            }
            *last = Some(now);
        }
        self.limiter.retain_recent();
        self.limiter.len() < self.max_tracked
    }

    /// Takes one token from `key`'s bucket, or says how long until one is there.
    fn check(&self, key: &K) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % HOUSEKEEPING_EVERY == HOUSEKEEPING_EVERY - 1 {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        if self.limiter.len() >= self.max_tracked && !self.make_room() {
            return Err(FULL_TABLE_WAIT);
        }
        self.limiter.check_key(key).map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    fn len(&self) -> usize {
        self.limiter.len()
    }
}

/// Failure and request limits in memory, for one server process.
pub struct GovernorLimiter<C: Clock = DefaultClock> {
    failures_by_client: Option<Table<IpAddr, C>>,
    failures_by_key: Option<Table<String, C>>,
    requests_by_key: Option<Table<String, C>>,
}

impl<C: Clock> std::fmt::Debug for GovernorLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GovernorLimiter")
            .field("failure_limit", &self.failures_by_client.is_some())
            .field("request_limit", &self.requests_by_key.is_some())
            .finish_non_exhaustive()
    }
}

impl GovernorLimiter {
    /// Limits on the system's monotonic clock.
    #[must_use]
    pub fn new(limits: Limits) -> Self {
        Self::with_clock(limits, &DefaultClock::default(), MAX_TRACKED)
    }
}

impl<C: Clock + Clone> GovernorLimiter<C> {
    /// Limits on `clock`, each table tracking at most `max_tracked` entries.
    #[must_use]
    pub fn with_clock(limits: Limits, clock: &C, max_tracked: usize) -> Self {
        Self {
            failures_by_client: Table::new(limits.failures_per_minute, clock, max_tracked),
            failures_by_key: Table::new(limits.failures_per_minute, clock, max_tracked),
            requests_by_key: Table::new(limits.requests_per_key_per_minute, clock, max_tracked),
        }
    }

    /// How many client addresses and key fingerprints the failure tables track now.
    #[must_use]
    pub fn tracked(&self) -> (usize, usize) {
        (self.failures_by_client.as_ref().map_or(0, Table::len), self.failures_by_key.as_ref().map_or(0, Table::len))
    }
}

/// The bucket an address counts against: IPv4 addresses (IPv4-mapped IPv6 included) on
/// their own, IPv6 addresses by their /64, the block one subscriber usually holds.
fn client_bucket(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

impl<C: Clock + Clone + Send + Sync + 'static> AttemptLimiter for GovernorLimiter<C>
where
    C::Instant: Send + Sync,
{
    fn failure(&self, client: Option<IpAddr>, fingerprint: Option<&str>) -> Result<(), Duration> {
        let by_client = match (&self.failures_by_client, client) {
            (Some(table), Some(ip)) => table.check(&client_bucket(ip)),
            _ => Ok(()),
        };
        let by_key = match (&self.failures_by_key, fingerprint) {
            (Some(table), Some(fp)) => table.check(&fp.to_owned()),
            _ => Ok(()),
        };
        match (by_client, by_key) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(a), Err(b)) => Err(a.max(b)),
            (Err(wait), Ok(())) | (Ok(()), Err(wait)) => Err(wait),
        }
    }

    fn request(&self, fingerprint: &str) -> Result<(), Duration> {
        self.requests_by_key.as_ref().map_or(Ok(()), |table| table.check(&fingerprint.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use governor::clock::FakeRelativeClock;
    use quickcheck::{QuickCheck, TestResult};

    use super::*;

    fn ip(i: u8) -> IpAddr {
        IpAddr::from([203, 0, 113, i])
    }

    #[test]
    fn the_eleventh_failure_in_a_minute_waits_and_a_minute_later_passes() {
        let clock = FakeRelativeClock::default();
        let limiter = GovernorLimiter::with_clock(Limits { failures_per_minute: 10, requests_per_key_per_minute: 0 }, &clock, 100);
        for _ in 0..10 {
            assert_eq!(limiter.failure(Some(ip(1)), Some("fp_a")), Ok(()));
        }
        let wait = limiter.failure(Some(ip(1)), Some("fp_b")).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(6), "{wait:?}");
        assert_eq!(limiter.failure(Some(ip(2)), Some("fp_c")), Ok(()), "another address has its own bucket");
        assert!(limiter.failure(Some(ip(3)), Some("fp_a")).is_err(), "the key fp_a failed ten times from anywhere");
        assert_eq!(limiter.request("fp_a"), Ok(()), "no request limit configured");
        clock.advance(Duration::from_secs(60));
        assert_eq!(limiter.failure(Some(ip(1)), Some("fp_a")), Ok(()));
    }

    #[test]
    fn ipv6_addresses_share_their_64_and_mapped_ipv4_is_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_bucket(a), client_bucket(b));
        assert_ne!(client_bucket(a), client_bucket(c));
        assert_eq!(client_bucket("::ffff:10.0.0.1".parse().unwrap()), IpAddr::from([10, 0, 0, 1]));
    }

    #[test]
    fn the_request_rate_is_per_key() {
        let clock = FakeRelativeClock::default();
        let limiter = GovernorLimiter::with_clock(Limits { failures_per_minute: 0, requests_per_key_per_minute: 2 }, &clock, 100);
        assert_eq!((limiter.request("fp_a"), limiter.request("fp_a")), (Ok(()), Ok(())));
        assert_eq!(limiter.request("fp_a"), Err(Duration::from_secs(30)));
        assert_eq!(limiter.request("fp_b"), Ok(()));
        assert_eq!(limiter.failure(Some(ip(1)), Some("fp_a")), Ok(()), "no failure limit configured");
        assert_eq!(limiter.tracked(), (0, 0));
    }

    // Property 46: failed attempts from one address pass at most `burst` times a minute (exactly
    // that many while the table has room), a refusal says to wait at most a minute, a minute
    // later the address has its whole burst again, and however many addresses spray, each
    // table tracks at most its bound.
    fn prop46_case(attempts: Vec<(u8, bool)>) -> TestResult {
        const BURST: u32 = 3;
        const BOUND: usize = 8;
        let clock = FakeRelativeClock::default();
        let limits = Limits { failures_per_minute: BURST, requests_per_key_per_minute: 0 };
        let limiter = GovernorLimiter::with_clock(limits, &clock, BOUND);
        let mut used: HashMap<u8, u32> = HashMap::new();
        let distinct_small = attempts.iter().map(|(c, _)| c % 16).collect::<std::collections::HashSet<_>>().len() <= BOUND;
        for (client, next_minute) in attempts {
            if next_minute {
                clock.advance(Duration::from_secs(60));
                used.clear();
            }
            let client = client % 16;
            let count = used.entry(client).or_default();
            match limiter.failure(Some(ip(client)), None) {
                Ok(()) if *count < BURST => *count += 1,
                Ok(()) => return TestResult::error(format!("address {client} passed {} times in a minute", *count + 1)),
                Err(_) if distinct_small && *count < BURST => {
                    return TestResult::error(format!("address {client} refused after {count} failures"))
                }
                Err(wait) if wait > Duration::from_secs(60) || wait.is_zero() => return TestResult::error(format!("wait {wait:?}")),
                Err(_) => {}
            }
            if limiter.tracked().0 > BOUND {
                return TestResult::error(format!("{} addresses tracked", limiter.tracked().0));
            }
        }
        TestResult::passed()
    }

    #[test]
    fn prop46_failures_are_limited_per_address_within_bounded_memory() {
        QuickCheck::new().tests(300).quickcheck(prop46_case as fn(Vec<(u8, bool)>) -> TestResult);
    }

    #[test]
    fn spraying_addresses_keeps_the_tables_bounded() {
        let clock = FakeRelativeClock::default();
        let limiter = GovernorLimiter::with_clock(Limits { failures_per_minute: 10, requests_per_key_per_minute: 0 }, &clock, 1_000);
        let mut refused = 0;
        for i in 0..20_000u32 {
            let addr = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
            if limiter.failure(Some(addr), Some(&format!("fp_{i:012x}"))).is_err() {
                refused += 1;
            }
        }
        let (clients, keys) = limiter.tracked();
        assert_eq!((clients, keys), (1_000, 1_000));
        assert_eq!(refused, 19_000, "newcomers are refused while the table is full of fresh entries");
        clock.advance(Duration::from_millis(999));
        assert!(limiter.failure(Some(ip(9)), None).is_err(), "a full table is swept at most once a second");
        clock.advance(Duration::from_secs(60));
        assert_eq!(limiter.failure(Some(ip(9)), None), Ok(()), "stale entries make room again");
    }
}
