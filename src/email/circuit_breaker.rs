//! The circuit breaker in front of the email provider (SPEC §3.3), as a pure state machine:
//! time is passed in, so its tests need no sleeps.
//!
//! closed ──(failure_threshold consecutive transient failures)──▶ open
//! open ──(open_for elapsed)──▶ half-open: exactly one probe may go out
//! half-open ──probe succeeds──▶ closed;  ──probe fails──▶ open for twice as long (≤ max_open_for)

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// The three states, as exported in readiness and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }
}

/// A point in time as the breaker sees it: `Instant` in its tests, the delivery core's
/// `DateTime<Utc>` (time passed in with every input) in the server.
pub(crate) trait Moment: Copy + Ord + std::ops::Add<Duration, Output = Self> {}
impl<T: Copy + Ord + std::ops::Add<Duration, Output = T>> Moment for T {}

/// How many deliveries may start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission<T = Instant> {
    /// Closed: as many as concurrency allows.
    Any,
    /// Half-open: this one delivery is the probe.
    Probe,
    /// Open (or a probe is out): none; ask again at `until` (None: when the probe answers).
    None { until: Option<T> },
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
/// `email_sync.circuit_breaker` (SPEC §3.3).
pub struct CircuitBreakerSettings {
    /// Consecutive transient failures that open the circuit.
    pub failure_threshold: NonZeroU32,
    /// How long it stays open before one probe; doubles after each failed probe.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
    /// Longest open period.
    #[serde(with = "humantime_serde")]
    pub max_open_for: Duration,
}

impl Default for CircuitBreakerSettings {
    fn default() -> Self {
        Self {
            failure_threshold: NonZeroU32::new(5).unwrap_or(NonZeroU32::MIN),
            open_for: Duration::from_secs(30),
            max_open_for: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct CircuitBreaker<T = Instant> {
    state: CircuitState,
    /// Transient failures in a row while closed.
    consecutive_failures: u32,
    /// Open until this instant.
    open_until: Option<T>,
    /// How long the next opening lasts; doubles after each failed probe.
    open_for: Duration,
    /// True while the half-open probe is out.
    probe_in_flight: bool,
    failure_threshold: u32,
    base_open_for: Duration,
    max_open_for: Duration,
}

impl<T: Moment> CircuitBreaker<T> {
    pub(crate) fn new(settings: &CircuitBreakerSettings) -> Self {
        Self {
            state: CircuitState::Closed,
            consecutive_failures: 0,
            open_until: None,
            open_for: settings.open_for,
            probe_in_flight: false,
            failure_threshold: settings.failure_threshold.get(),
            base_open_for: settings.open_for,
            // A maximum below the first period would shorten it: validated at start-up.
            max_open_for: settings.max_open_for,
        }
    }

    pub(crate) fn state(&self) -> CircuitState {
        self.state
    }

    /// May a delivery start at `now`? A `Probe` answer reserves the probe: call this once per
    /// delivery about to start.
    pub(crate) fn admit(&mut self, now: T) -> Admission<T> {
        match self.state {
            CircuitState::Closed => Admission::Any,
            CircuitState::Open => match self.open_until {
                Some(until) if now < until => Admission::None { until: Some(until) },
                _ => {
                    self.state = CircuitState::HalfOpen;
                    self.probe_in_flight = true;
                    Admission::Probe
                }
            },
            CircuitState::HalfOpen if self.probe_in_flight => Admission::None { until: None },
            CircuitState::HalfOpen => {
                self.probe_in_flight = true;
                Admission::Probe
            }
        }
    }

    /// The provider answered (2xx, or a permanent 4xx: either way it is up). Closes the circuit.
    pub(crate) fn on_success(&mut self) {
        self.state = CircuitState::Closed;
        self.consecutive_failures = 0;
        self.open_until = None;
        self.open_for = self.base_open_for;
        self.probe_in_flight = false;
    }

    /// A transient failure (5xx, 429, timeout, refused…) at `now`.
    pub(crate) fn on_failure(&mut self, now: T) {
        match self.state {
            CircuitState::Closed => {
                self.consecutive_failures += 1;
                if self.consecutive_failures >= self.failure_threshold {
                    self.open(now);
                }
            }
            CircuitState::HalfOpen => {
                // The probe failed: stay away twice as long.
                self.open_for = (self.open_for * 2).min(self.max_open_for);
                self.open(now);
            }
            // A delivery that started before the circuit opened: already counted as down.
            CircuitState::Open => {}
        }
    }

    /// The probe never answered (its delivery was abandoned): allow another one.
    pub(crate) fn on_abandoned(&mut self) {
        self.probe_in_flight = false;
    }

    fn open(&mut self, now: T) {
        self.state = CircuitState::Open;
        self.open_until = Some(now + self.open_for);
        self.probe_in_flight = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN_FOR: Duration = Duration::from_secs(30);
    const MAX: Duration = Duration::from_secs(100);

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(&CircuitBreakerSettings {
            failure_threshold: NonZeroU32::new(3).expect("not zero"),
            open_for: OPEN_FOR,
            max_open_for: MAX,
        })
    }

    #[test]
    fn a_closed_circuit_admits_everything_and_opens_after_the_threshold() {
        let t0 = Instant::now();
        let mut cb = breaker();
        assert_eq!(cb.admit(t0), Admission::Any);
        cb.on_failure(t0);
        cb.on_failure(t0);
        assert_eq!(cb.state(), CircuitState::Closed, "two of three");
        cb.on_failure(t0);
        assert_eq!(cb.state(), CircuitState::Open);
        assert_eq!(
            cb.admit(t0),
            Admission::None {
                until: Some(t0 + OPEN_FOR)
            }
        );
    }

    #[test]
    fn a_success_resets_the_consecutive_count() {
        let t0 = Instant::now();
        let mut cb = breaker();
        cb.on_failure(t0);
        cb.on_failure(t0);
        cb.on_success();
        cb.on_failure(t0);
        cb.on_failure(t0);
        assert_eq!(cb.state(), CircuitState::Closed, "not three in a row");
    }

    #[test]
    fn after_open_for_exactly_one_probe_is_admitted() {
        let t0 = Instant::now();
        let mut cb = breaker();
        (0..3).for_each(|_| cb.on_failure(t0));
        assert!(matches!(
            cb.admit(t0 + OPEN_FOR - Duration::from_millis(1)),
            Admission::None { .. }
        ));
        assert_eq!(cb.admit(t0 + OPEN_FOR), Admission::Probe);
        assert_eq!(cb.state(), CircuitState::HalfOpen);
        assert_eq!(
            cb.admit(t0 + OPEN_FOR),
            Admission::None { until: None },
            "one probe at a time"
        );
    }

    #[test]
    fn a_successful_probe_closes_the_circuit() {
        let t0 = Instant::now();
        let mut cb = breaker();
        (0..3).for_each(|_| cb.on_failure(t0));
        assert_eq!(cb.admit(t0 + OPEN_FOR), Admission::Probe);
        cb.on_success();
        assert_eq!(cb.state(), CircuitState::Closed);
        assert_eq!(cb.admit(t0 + OPEN_FOR), Admission::Any);
    }

    #[test]
    fn each_failed_probe_doubles_the_open_time_up_to_the_maximum() {
        let t0 = Instant::now();
        let mut cb = breaker();
        (0..3).for_each(|_| cb.on_failure(t0));
        let mut now = t0 + OPEN_FOR;
        for expected in [60, 100, 100] {
            assert_eq!(cb.admit(now), Admission::Probe);
            cb.on_failure(now);
            assert_eq!(cb.state(), CircuitState::Open);
            let until = now + Duration::from_secs(expected);
            assert_eq!(
                cb.admit(now),
                Admission::None { until: Some(until) },
                "{expected}s"
            );
            now = until;
        }
        assert_eq!(cb.admit(now), Admission::Probe);
        cb.on_success();
        (0..3).for_each(|_| cb.on_failure(now));
        assert_eq!(
            cb.admit(now),
            Admission::None {
                until: Some(now + OPEN_FOR)
            },
            "reset after closing"
        );
    }

    #[test]
    fn late_failures_while_open_do_not_extend_the_opening() {
        let t0 = Instant::now();
        let mut cb = breaker();
        (0..3).for_each(|_| cb.on_failure(t0));
        cb.on_failure(t0 + Duration::from_secs(10));
        assert_eq!(cb.admit(t0 + OPEN_FOR), Admission::Probe);
    }

    #[test]
    fn an_abandoned_probe_lets_another_one_go() {
        let t0 = Instant::now();
        let mut cb = breaker();
        (0..3).for_each(|_| cb.on_failure(t0));
        assert_eq!(cb.admit(t0 + OPEN_FOR), Admission::Probe);
        cb.on_abandoned();
        assert_eq!(cb.admit(t0 + OPEN_FOR), Admission::Probe);
    }
}
