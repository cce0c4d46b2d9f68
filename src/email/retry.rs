//! The retry schedule (SPEC §3.2): exponential backoff with jitter, computed by the `backoff`
//! crate's policy and stored on the outbox row, so a schedule survives restarts and spans days.
//!
//! `backoff` is unmaintained upstream; it is used only inside [`backoff_delay`], so replacing it
//! touches one function.

use std::time::Duration;

use backoff::backoff::Backoff;
use chrono::{DateTime, Utc};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
/// `email_sync.retry` (SPEC §3.2).
pub struct RetrySettings {
    /// First retry delay.
    #[serde(with = "humantime_serde")]
    pub initial_interval: Duration,
    /// Each delay is this many times the one before (at least 1).
    pub multiplier: f64,
    /// Jitter: each delay is drawn from ± this fraction around its nominal value (0–1).
    pub randomization: f64,
    /// Longest delay between attempts.
    #[serde(with = "humantime_serde")]
    pub max_interval: Duration,
    /// Attempts before a row is dead.
    pub max_attempts: u32,
    /// Time since the schedule's start (registration, or an operator's retry) after which a
    /// row is dead.
    #[serde(with = "humantime_serde")]
    pub max_elapsed: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            initial_interval: Duration::from_secs(5),
            multiplier: 2.0,
            randomization: 0.5,
            max_interval: Duration::from_secs(3600),
            max_attempts: 30,
            max_elapsed: Duration::from_secs(72 * 3600),
        }
    }
}

/// The jittered delay before attempt `attempts_made + 1`, given `attempts_made ≥ 1` failures:
/// nominal `initial × multiplier^(attempts_made − 1)`, capped at `max_interval`, then drawn
/// uniformly from ±`randomization` around it.
pub(crate) fn backoff_delay(attempts_made: u32, settings: &RetrySettings) -> Duration {
    let exponent = attempts_made.saturating_sub(1).min(64) as i32;
    let nominal = settings.initial_interval.as_secs_f64() * settings.multiplier.powi(exponent);
    let nominal = Duration::from_secs_f64(nominal.min(settings.max_interval.as_secs_f64()));
    // The crate is used as a calculator: its own clock and max_elapsed_time are not (it would
    // measure elapsed time from this construction, not from the registration).
    let mut policy = backoff::ExponentialBackoff {
        current_interval: nominal,
        initial_interval: settings.initial_interval,
        randomization_factor: settings.randomization,
        multiplier: settings.multiplier,
        max_interval: settings.max_interval,
        max_elapsed_time: None,
        ..backoff::ExponentialBackoff::default()
    };
    policy
        .next_backoff()
        .unwrap_or(nominal)
        .min(settings.max_interval)
}

/// When a row that failed transiently for the `attempts_made`-th time is tried next, or `None`
/// if it is dead (too many attempts, or too old). A provider's `Retry-After` pushes the next
/// attempt later, never sooner, and is capped at `max_interval`.
pub(crate) fn next_attempt_at(
    attempts_made: u32,
    schedule_start: DateTime<Utc>,
    now: DateTime<Utc>,
    retry_after: Option<Duration>,
    settings: &RetrySettings,
) -> Option<DateTime<Utc>> {
    if attempts_made >= settings.max_attempts {
        return None;
    }
    let mut delay = backoff_delay(attempts_made, settings);
    if let Some(asked) = retry_after {
        delay = delay.max(asked.min(settings.max_interval));
    }
    let next = now + chrono::Duration::from_std(delay).ok()?;
    let deadline = schedule_start + chrono::Duration::from_std(settings.max_elapsed).ok()?;
    (next <= deadline).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> RetrySettings {
        RetrySettings::default()
    }

    #[test]
    fn delays_grow_exponentially_within_the_jitter_band() {
        let s = settings();
        for (attempts, nominal) in [(1, 5.0), (2, 10.0), (3, 20.0), (4, 40.0), (8, 640.0)] {
            for _ in 0..50 {
                let d = backoff_delay(attempts, &s).as_secs_f64();
                assert!(
                    d >= nominal * 0.5 - 1e-9 && d <= nominal * 1.5 + 1e-9,
                    "attempt {attempts}: {d}"
                );
            }
        }
    }

    #[test]
    fn delays_are_capped_at_the_max_interval() {
        let s = settings();
        for attempts in [11, 12, 20, 30, 1000] {
            assert!(
                backoff_delay(attempts, &s) <= s.max_interval,
                "attempt {attempts}"
            );
        }
    }

    #[test]
    fn jitter_actually_varies_the_delay() {
        let s = settings();
        let delays: std::collections::HashSet<u128> =
            (0..20).map(|_| backoff_delay(3, &s).as_millis()).collect();
        assert!(delays.len() > 1);
    }

    #[test]
    fn a_row_dies_after_max_attempts() {
        let s = RetrySettings {
            max_attempts: 3,
            ..settings()
        };
        let now = Utc::now();
        assert!(next_attempt_at(2, now, now, None, &s).is_some());
        assert!(next_attempt_at(3, now, now, None, &s).is_none());
    }

    #[test]
    fn a_row_dies_when_the_next_attempt_would_pass_max_elapsed() {
        let s = settings();
        let created = Utc::now() - chrono::Duration::hours(72) + chrono::Duration::seconds(1);
        assert!(next_attempt_at(1, created, Utc::now(), None, &s).is_none());
        let fresh = Utc::now();
        assert!(next_attempt_at(1, fresh, fresh, None, &s).is_some());
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let s = RetrySettings {
            randomization: 0.0,
            ..settings()
        };
        let now = Utc::now();
        let at = |asked| next_attempt_at(1, now, now, Some(asked), &s).expect("alive") - now;
        assert_eq!(
            at(Duration::from_secs(120)),
            chrono::Duration::seconds(120),
            "later than backoff"
        );
        assert_eq!(
            at(Duration::from_secs(1)),
            chrono::Duration::seconds(5),
            "never sooner than backoff"
        );
        assert_eq!(
            at(Duration::from_secs(86_400)),
            chrono::Duration::hours(1),
            "capped"
        );
    }
}
