//! What this instance's email sync did over the last hour, one slot a minute: deliveries,
//! failed attempts and a histogram of delivery lag per minute, and since when the circuit has
//! been in its state. The operator console draws its chart and lag figures from it (SPEC §7).
//!
//! Kept in memory by the EmailSyncActor (a few microseconds per outcome, one short lock) and
//! read by the console without waiting on the actor. Each instance keeps its own; Prometheus
//! sums them across instances.

use std::collections::VecDeque;
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use crate::email::CircuitState;

/// Minutes kept.
pub(crate) const MINUTES: usize = 60;
/// Lag buckets: upper bounds `FIRST_BOUND · GROWTH^k` seconds, k = 0..LAG_BUCKETS (1 ms to
/// about a day, each bound 20 % above the last: a quantile is read within 20 %).
const LAG_BUCKETS: usize = 102;
const FIRST_BOUND: f64 = 0.001;
const GROWTH: f64 = 1.2;

/// One minute's counts.
#[derive(Debug, Clone)]
struct Minute {
    /// Minutes since the Unix epoch.
    at: i64,
    delivered: u64,
    failed: u64,
    /// Deliveries per lag bucket; the last bucket also holds everything above it.
    lag: Box<[u32; LAG_BUCKETS]>,
}

impl Minute {
    fn new(at: i64) -> Self {
        Self {
            at,
            delivered: 0,
            failed: 0,
            lag: Box::new([0; LAG_BUCKETS]),
        }
    }
}

#[derive(Debug)]
struct Window {
    /// Oldest first; at most [`MINUTES`] minutes, none older than the last hour.
    minutes: VecDeque<Minute>,
    circuit: CircuitState,
    circuit_since: DateTime<Utc>,
}

/// A minute of the chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinuteCounts {
    /// The minute's start.
    pub at: DateTime<Utc>,
    pub delivered: u64,
    /// Attempts that failed (transient or permanent).
    pub failed: u64,
}

/// The last hour as the console shows it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The last [`MINUTES`] minutes, oldest first, the current one last; minutes with nothing
    /// are zeros.
    pub minutes: Vec<MinuteCounts>,
    /// Delivery lag (registration to the provider's acknowledgement) over the hour, in
    /// seconds; None without deliveries.
    pub lag_p50: Option<f64>,
    pub lag_p99: Option<f64>,
    pub circuit: CircuitState,
    pub circuit_since: DateTime<Utc>,
}

#[derive(Debug)]
pub struct Activity(Mutex<Window>);

impl Default for Activity {
    fn default() -> Self {
        Self::new(Utc::now())
    }
}

fn minute_of(at: DateTime<Utc>) -> i64 {
    at.timestamp().div_euclid(60)
}

fn bucket_of(lag_seconds: f64) -> usize {
    if lag_seconds.is_nan() || lag_seconds <= FIRST_BOUND {
        return 0;
    }
    let k = (lag_seconds / FIRST_BOUND).ln() / GROWTH.ln();
    (k.ceil() as usize).min(LAG_BUCKETS - 1)
}

fn upper_bound(bucket: usize) -> f64 {
    FIRST_BOUND * GROWTH.powi(bucket as i32)
}

impl Activity {
    /// A closed circuit since `start`, nothing counted.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self(Mutex::new(Window {
            minutes: VecDeque::with_capacity(MINUTES + 1),
            circuit: CircuitState::Closed,
            circuit_since: start,
        }))
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        // Nothing in here can panic half-way; a poisoned lock still holds whole counts.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn with_minute(&self, now: DateTime<Utc>, f: impl FnOnce(&mut Minute)) {
        let at = minute_of(now);
        let mut window = self.window();
        match window.minutes.back_mut() {
            // A clock step backwards counts in the newest minute.
            Some(last) if last.at >= at => f(last),
            _ => {
                let mut minute = Minute::new(at);
                f(&mut minute);
                window.minutes.push_back(minute);
                while window
                    .minutes
                    .front()
                    .is_some_and(|m| m.at <= at - MINUTES as i64)
                {
                    window.minutes.pop_front();
                }
            }
        }
    }

    /// A row delivered at `now`, `lag` after its registration.
    pub fn delivered(&self, now: DateTime<Utc>, lag: std::time::Duration) {
        let bucket = bucket_of(lag.as_secs_f64());
        self.with_minute(now, |m| {
            m.delivered += 1;
            m.lag[bucket] = m.lag[bucket].saturating_add(1);
        });
    }

    /// A failed attempt (transient or permanent) at `now`.
    pub fn failed(&self, now: DateTime<Utc>) {
        self.with_minute(now, |m| m.failed += 1);
    }

    /// The circuit changed to `state` at `now`.
    pub fn circuit_changed(&self, state: CircuitState, now: DateTime<Utc>) {
        let mut window = self.window();
        if window.circuit != state {
            window.circuit = state;
            window.circuit_since = now;
        }
    }

    /// The hour up to `now`.
    pub fn snapshot(&self, now: DateTime<Utc>) -> Snapshot {
        let current = minute_of(now);
        let window = self.window();
        let mut lag = [0u64; LAG_BUCKETS];
        let minutes = (current - MINUTES as i64 + 1..=current)
            .map(|at| {
                let found = window.minutes.iter().find(|m| m.at == at);
                if let Some(m) = found {
                    for (total, n) in lag.iter_mut().zip(m.lag.iter()) {
                        *total += u64::from(*n);
                    }
                }
                MinuteCounts {
                    at: DateTime::from_timestamp(at * 60, 0).unwrap_or(now),
                    delivered: found.map_or(0, |m| m.delivered),
                    failed: found.map_or(0, |m| m.failed),
                }
            })
            .collect();
        Snapshot {
            minutes,
            lag_p50: quantile(&lag, 0.50),
            lag_p99: quantile(&lag, 0.99),
            circuit: window.circuit,
            circuit_since: window.circuit_since,
        }
    }
}

/// The `q` quantile of a histogram: the upper bound of the bucket holding the `q`-th
/// observation (an overestimate by at most one bucket's 20 %).
fn quantile(buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (bucket, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(upper_bound(bucket));
        }
    }
    Some(upper_bound(buckets.len() - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(minute: i64, second: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + minute * 60 + second, 0).expect("time")
    }

    #[test]
    fn counts_land_in_their_minute_and_fall_out_after_an_hour() {
        let activity = Activity::new(at(0, 0));
        activity.delivered(at(0, 10), Duration::from_millis(200));
        activity.delivered(at(0, 50), Duration::from_millis(200));
        activity.failed(at(1, 0));
        activity.failed(at(30, 0));

        let snapshot = activity.snapshot(at(30, 5));
        assert_eq!(snapshot.minutes.len(), MINUTES);
        let last = snapshot.minutes[MINUTES - 1];
        assert_eq!((last.delivered, last.failed), (0, 1));
        let first_minute = &snapshot.minutes[MINUTES - 31];
        assert_eq!((first_minute.delivered, first_minute.failed), (2, 0));
        assert_eq!(first_minute.at, at(0, 0));
        let total: u64 = snapshot
            .minutes
            .iter()
            .map(|m| m.delivered + m.failed)
            .sum();
        assert_eq!(total, 4);

        // An hour later only the minute-30 failure is left (minute 30 is the oldest shown).
        activity.failed(at(89, 0));
        let later = activity.snapshot(at(89, 59));
        let kept: Vec<_> = later
            .minutes
            .iter()
            .filter(|m| m.delivered + m.failed > 0)
            .map(|m| m.at)
            .collect();
        assert_eq!(kept, vec![at(30, 0), at(89, 0)]);
        assert_eq!(activity.snapshot(at(90, 0)).minutes[0].at, at(31, 0));
        assert!(
            activity
                .snapshot(at(90, 0))
                .minutes
                .iter()
                .all(|m| m.at != at(30, 0)),
            "minute 30 is past the hour"
        );
    }

    #[test]
    fn lag_quantiles_are_within_a_bucket_of_the_truth() {
        let activity = Activity::new(at(0, 0));
        assert_eq!(activity.snapshot(at(0, 1)).lag_p50, None);
        // 99 deliveries of 100 ms, one of 30 s.
        for _ in 0..99 {
            activity.delivered(at(0, 1), Duration::from_millis(100));
        }
        activity.delivered(at(0, 2), Duration::from_secs(30));
        let snapshot = activity.snapshot(at(0, 3));
        let p50 = snapshot.lag_p50.expect("p50");
        let p99 = snapshot.lag_p99.expect("p99");
        assert!((0.1..=0.12).contains(&p50), "p50 {p50}");
        assert!((0.1..=0.12).contains(&p99), "p99 is the 99th of 100: {p99}");
        activity.delivered(at(0, 2), Duration::from_secs(30));
        let p99 = activity.snapshot(at(0, 3)).lag_p99.expect("p99");
        assert!((30.0..=36.0).contains(&p99), "p99 {p99}");
    }

    #[test]
    fn the_circuit_keeps_the_time_it_last_changed() {
        let activity = Activity::new(at(0, 0));
        activity.circuit_changed(CircuitState::Closed, at(1, 0));
        assert_eq!(activity.snapshot(at(2, 0)).circuit_since, at(0, 0));
        activity.circuit_changed(CircuitState::Open, at(3, 0));
        activity.circuit_changed(CircuitState::Open, at(4, 0));
        let snapshot = activity.snapshot(at(5, 0));
        assert_eq!(
            (snapshot.circuit, snapshot.circuit_since),
            (CircuitState::Open, at(3, 0))
        );
    }
}
