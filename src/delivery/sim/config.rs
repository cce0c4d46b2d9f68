//! A schedule's configuration, drawn from what start-up accepts.

use super::*;

/// One schedule's configuration, drawn from what start-up accepts.
#[derive(Debug, Clone)]
pub(super) struct Config {
    pub(super) core: CoreSettings,
    pub(super) poll: Ms,
    pub(super) instances: usize,
    /// Longest time a database statement takes while the run is chaotic.
    pub(super) db_stall: Ms,
}

pub(super) fn draw_config(rng: &mut StdRng) -> Config {
    let timeout = Duration::from_millis(rng.random_range(1..=10) * 1000);
    let lease = match rng.random_range(0..3) {
        // The shortest lease start-up accepts: the one that used to deliver nothing.
        0 => timeout + super::super::core::CLAIM_SLACK,
        1 => {
            timeout
                + super::super::core::CLAIM_SLACK
                + Duration::from_millis(rng.random_range(0..5000))
        }
        _ => timeout * rng.random_range(2..=4) + super::super::core::CLAIM_SLACK,
    };
    assert!(crate::delivery::lease_accepted(lease, timeout));
    let open_for = Duration::from_millis(rng.random_range(1..=10) * 1000);
    let initial = Duration::from_millis(rng.random_range(1..=5) * 1000);
    let max_interval = initial * rng.random_range(1..=12);
    Config {
        core: CoreSettings {
            max_requests: rng.random_range(1..=4),
            batch: rng.random_range(1..=5),
            timeout,
            lease,
            retry: RetrySettings {
                initial_interval: initial,
                multiplier: [1.0, 1.5, 2.0, 3.0][rng.random_range(0..4)],
                // Jitter would draw from the thread's RNG, not the seed's.
                randomization: 0.0,
                max_interval,
                max_attempts: rng.random_range(2..=10),
                max_elapsed: Duration::from_secs(rng.random_range(60..=3600)),
            },
            circuit_breaker: CircuitBreakerSettings {
                failure_threshold: NonZeroU32::new(rng.random_range(1..=5))
                    .unwrap_or(NonZeroU32::MIN),
                open_for,
                max_open_for: open_for * rng.random_range(1..=4),
            },
            one_writer: rng.random_bool(0.5),
        },
        poll: rng.random_range(1..=5) * 1000,
        instances: rng.random_range(1..=3),
        db_stall: [0, 200, 900, 3000][rng.random_range(0..4)],
    }
}
