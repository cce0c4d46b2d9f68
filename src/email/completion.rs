//! What one attempt's outcome makes of its outbox row (SPEC §3.2): delivered, tried again at a
//! time the retry schedule gives, or dead. Pure: the row, the outcome and `now` in, the
//! completion out; the EmailSyncActor stores it and updates its circuit breaker and metrics.

use chrono::{DateTime, Utc};
use entity::email_outbox;

use super::AttemptOutcome;
use super::retry;
use super::retry::RetrySettings;
use crate::outbox::Completion;

/// The completion of attempt number `row.attempts + 1` of `row`, which ended with `outcome` at
/// `now` (or of no attempt, if the outcome is that it was not sent).
pub(crate) fn completion(
    outcome: AttemptOutcome,
    row: &email_outbox::Model,
    now: DateTime<Utc>,
    settings: &RetrySettings,
) -> Completion {
    match outcome {
        AttemptOutcome::Delivered { status, job } => Completion::Delivered { status, job },
        AttemptOutcome::Declined { error, .. } => Completion::Suppressed {
            reason: format!("suppressed: {error}"),
        },
        AttemptOutcome::Suppressed { reason } => Completion::Suppressed {
            reason: format!("suppressed: {reason}"),
        },
        // Not attempted: due again when the provider's pause ends (no later than the longest
        // retry interval), with no attempt spent.
        AttemptOutcome::NotSent { retry_after } => Completion::Deferred {
            at: now
                + chrono::Duration::from_std(retry_after.min(settings.max_interval))
                    .unwrap_or_default(),
        },
        AttemptOutcome::Permanent { status, error } => Completion::Dead { status, error },
        AttemptOutcome::Transient {
            status,
            error,
            retry_after,
        } => retried(row, now, status, error, retry_after, settings),
        AttemptOutcome::Misconfigured { status, error } => {
            retried(row, now, status, error, None, settings)
        }
        // The provider is up but not done with an earlier request about the contact: retried
        // on the same schedule, so a job that never finishes ends dead, an operator's matter.
        AttemptOutcome::NotYet {
            status,
            error,
            retry_after,
        } => retried(row, now, Some(status), error, retry_after, settings),
    }
}

/// Attempt number `row.attempts + 1` failed for now: due again when the schedule says (no
/// sooner than the provider asked), or dead once the schedule is spent.
fn retried(
    row: &email_outbox::Model,
    now: DateTime<Utc>,
    status: Option<u16>,
    error: String,
    retry_after: Option<std::time::Duration>,
    settings: &RetrySettings,
) -> Completion {
    let attempts_made = u32::try_from(row.attempts.saturating_add(1)).unwrap_or(u32::MAX);
    // An operator's retry starts a new schedule (and a new max_elapsed) from its time.
    let schedule_start = row.retry_from.unwrap_or(row.created_at);
    match retry::next_attempt_at(attempts_made, schedule_start, now, retry_after, settings) {
        Some(at) => Completion::Retry { at, status, error },
        None => Completion::Dead { status, error },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::TimeZone;
    use entity::email_outbox::Status;
    use uuid::Uuid;

    use super::*;

    fn row(attempts: i32, created_at: DateTime<Utc>) -> email_outbox::Model {
        email_outbox::Model {
            id: Uuid::nil(),
            user_id: Uuid::nil(),
            payload: "{}".into(),
            status: Status::Pending,
            attempts,
            next_attempt_at: created_at,
            locked_until: None,
            last_error: None,
            last_status: None,
            created_at,
            delivered_at: None,
            retry_from: None,
            event: email_outbox::EventType::UserRegistered,
            seq: 1,
            contact: None,
            claimed_at: None,
            provider_job: None,
            traceparent: None,
        }
    }

    fn transient(status: u16, retry_after: Option<Duration>) -> AttemptOutcome {
        AttemptOutcome::Transient {
            status: Some(status),
            error: format!("provider answered {status}"),
            retry_after,
        }
    }

    fn at(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 30, h, 0, 0)
            .single()
            .expect("a time")
    }

    #[test]
    fn each_outcome_completes_its_row_as_the_spec_says() {
        let settings = RetrySettings::default();
        let now = at(12);
        let fresh = row(0, at(11));

        assert!(matches!(
            completion(AttemptOutcome::delivered(204), &fresh, now, &settings),
            Completion::Delivered {
                status: 204,
                job: None
            }
        ));
        assert!(matches!(
            completion(
                AttemptOutcome::Permanent {
                    status: Some(422),
                    error: "no".into()
                },
                &fresh,
                now,
                &settings
            ),
            Completion::Dead {
                status: Some(422),
                ..
            }
        ));
        match completion(transient(503, None), &fresh, now, &settings) {
            Completion::Retry { at, status, .. } => {
                assert_eq!(status, Some(503));
                // First retry: initial 5 s ± 50 %.
                let delay = (at - now).to_std().expect("later");
                assert!((2500..=7500).contains(&delay.as_millis()), "{delay:?}");
            }
            other => panic!("retried, not {other:?}"),
        }
    }

    #[test]
    fn a_retry_after_pushes_the_next_attempt_later_but_not_past_the_max_interval() {
        let settings = RetrySettings::default();
        let now = at(12);
        let fresh = row(0, at(11));
        let Completion::Retry { at: asked, .. } = completion(
            transient(429, Some(Duration::from_secs(120))),
            &fresh,
            now,
            &settings,
        ) else {
            panic!("retried");
        };
        assert_eq!((asked - now).num_seconds(), 120);
        let Completion::Retry { at: capped, .. } = completion(
            transient(429, Some(Duration::from_secs(86_400))),
            &fresh,
            now,
            &settings,
        ) else {
            panic!("retried");
        };
        assert_eq!((capped - now).to_std().ok(), Some(settings.max_interval));
    }

    #[test]
    fn a_row_is_dead_after_max_attempts_or_max_elapsed_and_an_operators_retry_starts_anew() {
        let settings = RetrySettings::default();
        let now = at(12);
        let worn = row(
            i32::try_from(settings.max_attempts).expect("small") - 1,
            at(11),
        );
        assert!(matches!(
            completion(transient(503, None), &worn, now, &settings),
            Completion::Dead { .. }
        ));
        let old = row(3, now - chrono::Duration::hours(73));
        assert!(matches!(
            completion(transient(503, None), &old, now, &settings),
            Completion::Dead { .. }
        ));
        let replayed = email_outbox::Model {
            retry_from: Some(now - chrono::Duration::minutes(1)),
            ..old
        };
        assert!(matches!(
            completion(transient(503, None), &replayed, now, &settings),
            Completion::Retry { .. }
        ));
    }

    #[test]
    fn a_row_not_sent_is_due_when_the_pause_ends_and_spends_no_attempt() {
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let settings = RetrySettings::default();
        let deferred = completion(
            AttemptOutcome::NotSent {
                retry_after: Duration::from_secs(30),
            },
            &row(29, now),
            now,
            &settings,
        );
        assert!(
            matches!(deferred, Completion::Deferred { at } if at == now + chrono::Duration::seconds(30)),
            "not dead at attempt 30, and not later than asked: {deferred:?}"
        );
    }
}
