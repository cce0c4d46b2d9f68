//! The core driven input by input: no runtime, no sleeps, no database.
use std::num::NonZeroU32;

use entity::email_outbox::{self, EventType, Status};
use uuid::Uuid;

use super::*;

fn settings(timeout: u64, lease: u64) -> CoreSettings {
    CoreSettings {
        max_requests: 2,
        batch: 1,
        timeout: Duration::from_secs(timeout),
        lease: Duration::from_secs(lease),
        retry: RetrySettings::default(),
        circuit_breaker: CircuitBreakerSettings {
            failure_threshold: NonZeroU32::MIN,
            open_for: Duration::from_secs(30),
            max_open_for: Duration::from_secs(60),
        },
        one_writer: false,
    }
}

fn t(seconds: i64) -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::seconds(1_800_000_000 + seconds)
}

/// `n` rows claimed at `claimed_at` for `lease` seconds.
fn rows(n: usize, claimed_at: DateTime<Utc>, lease: i64) -> Vec<Claimed> {
    (0..n)
        .map(|i| Claimed {
            row: email_outbox::Model {
                id: Uuid::from_u128(i as u128 + 1),
                user_id: Uuid::from_u128(i as u128 + 1),
                payload: "{}".into(),
                status: Status::Pending,
                attempts: 0,
                next_attempt_at: claimed_at,
                locked_until: None,
                last_error: None,
                last_status: None,
                created_at: claimed_at,
                delivered_at: None,
                retry_from: None,
                event: EventType::UserRegistered,
                seq: 1,
                contact: None,
                claimed_at: None,
                provider_job: None,
                traceparent: None,
            },
            lease: claimed_at + chrono::Duration::seconds(lease),
        })
        .collect()
}

fn failed() -> Option<Vec<AttemptOutcome>> {
    Some(vec![AttemptOutcome::Transient {
        status: Some(503),
        error: "down".into(),
        retry_after: None,
    }])
}

#[test]
fn the_shortest_lease_start_up_accepts_is_the_shortest_that_sends() {
    assert!(lease_accepted(
        Duration::from_secs(3),
        Duration::from_secs(2)
    ));
    assert!(!lease_accepted(
        Duration::from_millis(2999),
        Duration::from_secs(2)
    ));
    let mut core = Core::new(settings(2, 3));

    let asked = core.tick(t(0));
    // The claim comes back within the slack start-up allows for it.
    let done = core.claimed(rows(2, t(0), 3), t(0) + chrono::Duration::milliseconds(900));

    assert_eq!(asked.claim, Some(2), "only what can start at once");
    assert_eq!(done.send.len(), 2, "{done:?}");
    assert!(done.release.is_empty());
    assert_eq!(done.stale, 0);
}

#[test]
fn a_row_whose_lease_would_end_during_its_request_is_given_back_and_counted() {
    let mut core = Core::new(settings(2, 3));
    core.tick(t(0));

    let late = core.claimed(rows(1, t(0), 3), t(2));

    assert!(late.send.is_empty());
    assert_eq!(late.stale, 1);
    assert_eq!(late.release.len(), 1);
}

#[test]
fn with_a_long_lease_rows_are_claimed_a_round_ahead() {
    let mut core = Core::new(settings(2, 60));

    let asked = core.tick(t(0));

    assert_eq!(
        asked.claim,
        Some(4),
        "twice max_in_flight requests of one row"
    );
}

#[test]
fn an_open_circuit_claims_nothing_and_asks_to_be_woken_when_it_may_half_open() {
    let mut core = Core::new(settings(2, 60));
    core.tick(t(0));
    let sent = core.claimed(rows(1, t(0), 60), t(0));
    let id = sent.send[0].id;

    let answered = core.answered(id, failed(), t(1));
    let store = answered.store.expect("the outcome is stored");
    core.stored(t(1));
    let while_open = core.tick(t(10));
    let reopened = core.tick(t(31));

    assert_eq!(store.len(), 1);
    assert_eq!(
        answered.circuit,
        [(CircuitState::Closed, CircuitState::Open)]
    );
    assert_eq!(while_open.claim, None);
    assert_eq!(while_open.wake_at, Some(t(31)));
    assert_eq!(reopened.claim, Some(1), "one probe");
    assert_eq!(core.circuit(), CircuitState::HalfOpen);
}

#[test]
fn a_probe_whose_circuit_opened_again_meanwhile_is_given_back_not_sent() {
    let mut core = Core::new(settings(2, 60));
    core.tick(t(0));
    let first = core.claimed(rows(2, t(0), 60), t(0));
    let (a, b) = (first.send[0].id, first.send[1].id);
    core.answered(a, failed(), t(1));
    core.stored(t(1));
    let probe = core.tick(t(40));
    assert_eq!(probe.claim, Some(1));

    // The older request fails while the probe's claim runs: the circuit opens again.
    core.answered(b, failed(), t(41));
    let back = core.claimed(rows(1, t(41), 60), t(41));

    assert!(back.send.is_empty(), "{back:?}");
    assert_eq!(back.release.len(), 1);
    assert_eq!(core.circuit(), CircuitState::Open);
}

#[test]
fn a_provider_pause_claims_nothing_until_its_reset_and_spends_no_attempt() {
    let mut patient = settings(2, 60);
    patient.circuit_breaker.failure_threshold = NonZeroU32::new(5).expect("not zero");
    let mut core = Core::new(patient);
    core.tick(t(0));
    let sent = core.claimed(rows(1, t(0), 60), t(0));
    let limited = Some(vec![AttemptOutcome::Transient {
        status: Some(429),
        error: "slow down".into(),
        retry_after: Some(Duration::from_secs(20)),
    }]);

    let answered = core.answered(sent.send[0].id, limited, t(1));
    core.stored(t(1));
    let paused = core.tick(t(5));
    let after = core.tick(t(21));

    assert_eq!(paused.claim, None);
    assert_eq!(paused.wake_at, Some(t(21)));
    assert!(after.claim.is_some());
    let held_back = Some(vec![AttemptOutcome::NotSent {
        retry_after: Duration::from_secs(3),
    }]);
    let mut core = Core::new(settings(2, 60));
    core.tick(t(0));
    let sent = core.claimed(rows(1, t(0), 60), t(0));
    let not_sent = core.answered(sent.send[0].id, held_back, t(0));
    assert!(not_sent.noted.is_empty(), "no attempt noted");
    let stored = not_sent.store.expect("deferred");
    assert_eq!(stored[0].attempts, 0, "no attempt spent");
    assert_eq!(answered.noted.len(), 1);
}

#[test]
fn a_drain_gives_back_unsent_claims_cancels_at_the_grace_and_ends_once_all_is_stored() {
    let mut core = Core::new(settings(2, 60));
    core.tick(t(0));
    let claimed = core.claimed(rows(4, t(0), 60), t(0));
    assert_eq!(claimed.send.len(), 2, "two places, two rows waiting");

    let drain = core.drain();
    assert_eq!(drain.release.iter().map(Vec::len).sum::<usize>(), 2);
    assert!(!drain.drained);
    assert_eq!(core.tick(t(1)).claim, None, "nothing more is claimed");
    let answered = core.answered(claimed.send[0].id, failed(), t(2));
    let cancel = core.cancel_all();
    let cancelled = core.answered(claimed.send[1].id, None, t(3));
    core.released();
    assert!(answered.store.is_some());
    assert_eq!(cancel.cancel, [claimed.send[1].id]);
    assert_eq!(
        cancelled.release.len(),
        1,
        "a cancelled request's rows go back"
    );
    let stored = core.stored(t(4));
    assert!(!stored.drained, "a release is still running");

    let last = core.released();

    assert!(last.drained);
}

#[test]
fn an_import_still_running_spends_an_attempt_but_keeps_the_circuit_closed() {
    // One failure opens this circuit: a "not yet" must not count as one.
    let mut core = Core::new(settings(2, 60));
    core.tick(t(0));
    let sent = core.claimed(rows(1, t(0), 60), t(0));
    let not_yet = Some(vec![AttemptOutcome::NotYet {
        status: 200,
        error: "import pending".into(),
        retry_after: None,
    }]);

    let answered = core.answered(sent.send[0].id, not_yet, t(1));

    assert!(answered.circuit.is_empty(), "{:?}", answered.circuit);
    assert_eq!(core.circuit(), CircuitState::Closed);
    let stored = answered.store.expect("stored");
    assert_eq!(
        stored[0].attempts, 1,
        "an attempt is spent: the schedule bounds the wait"
    );
    assert!(
        matches!(
            stored[0].completion,
            Completion::Retry {
                status: Some(200),
                ..
            }
        ),
        "{:?}",
        stored[0].completion
    );
}
