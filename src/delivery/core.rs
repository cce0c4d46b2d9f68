//! The delivery core: every decision of the email sync, as plain data and functions (sans-I/O,
//! as quinn-proto under quinn). Inputs carry their own time (`now`); each returns the
//! [`Actions`] to carry out: a claim to run, requests to send, claims to give back, outcomes to
//! store, when to be woken. No I/O, no clock, no actix in here: the EmailSyncActor is the shell
//! that runs the actions and feeds back what happened, and the simulation (`delivery::sim`)
//! drives the same core through seeded random schedules.
//!
//! One core serves one destination (one provider): its breaker, the provider's pause and its
//! request budget are its own, so a second destination is a second core.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::email::circuit_breaker::CircuitBreakerSettings;
use crate::email::retry::RetrySettings;
use crate::email::{Admission, AttemptOutcome, CircuitBreaker, CircuitState};
use crate::outbox::{Claimed, Completion, Finished};

/// How long after its claim a row may still be sent at the shortest lease start-up accepts:
/// the time a claim query may take (a wait for SQLite's write turn included) before its rows
/// come back to the core.
pub(crate) const CLAIM_SLACK: Duration = Duration::from_secs(1);

/// The one rule for sending a claimed row, used at claim time and by the configuration check:
/// a row whose lease ends at `lease_ends` may be sent at `now` only if its request, given the
/// whole `timeout`, is over before the lease is (else another claim could send it meanwhile).
pub(crate) fn may_send(lease_ends: DateTime<Utc>, now: DateTime<Utc>, timeout: Duration) -> bool {
    now.checked_add_signed(chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX))
        .is_some_and(|end| end <= lease_ends)
}

/// Whether start-up accepts `lease` with `timeout`: a row claimed at some moment may still be
/// sent [`CLAIM_SLACK`] later. The same inequality as [`may_send`], so every lease start-up
/// accepts delivers.
pub(crate) fn lease_accepted(lease: Duration, timeout: Duration) -> bool {
    let Ok(lease) = chrono::Duration::from_std(lease) else {
        return true;
    };
    let claimed_at = DateTime::<Utc>::UNIX_EPOCH;
    let slack = chrono::Duration::from_std(CLAIM_SLACK).unwrap_or_default();
    may_send(claimed_at + lease, claimed_at + slack, timeout)
}

/// What the core needs of `email_sync.*`.
#[derive(Debug, Clone)]
pub(crate) struct CoreSettings {
    /// Requests in flight at once (`max_in_flight`).
    pub max_requests: usize,
    /// Rows one request carries at most.
    pub batch: usize,
    /// One attempt's timeout: a request started at `t` is over by `t + timeout`.
    pub timeout: Duration,
    /// How long a claim lasts.
    pub lease: Duration,
    pub retry: RetrySettings,
    pub circuit_breaker: CircuitBreakerSettings,
    /// SQLite: a claim and a write of outcomes are never asked for together (one writer at a
    /// time; outcomes finished during a claim are stored before the next claim).
    pub one_writer: bool,
}

/// Names one request while it is in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct RequestId(pub u64);

/// One request to send: one row, or up to `batch` rows where the API takes a batch.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub id: RequestId,
    pub rows: Vec<Claimed>,
}

/// One attempt's outcome, for the shell's metrics and logs.
#[derive(Debug, Clone)]
pub(crate) struct Noted {
    pub claimed: Claimed,
    pub outcome: AttemptOutcome,
    /// The row's attempts once this one is counted.
    pub attempts: i32,
    /// A transient failure that used up the retry schedule: the row is dead.
    pub gave_up: bool,
    /// The outcome made the row dead (permanently refused or given up on).
    pub dead: bool,
}

/// What to do after an input. The shell carries these out in any order but must report each
/// back: [`Core::claimed`] (or [`Core::claim_failed`]) for `claim`, [`Core::answered`] for each
/// request, [`Core::stored`] for `store`, [`Core::released`] for each entry of `release`.
#[derive(Debug, Default)]
pub(crate) struct Actions {
    /// Claim up to this many due rows, for `lease` from when the claim runs.
    pub claim: Option<usize>,
    /// Requests to start now.
    pub send: Vec<Request>,
    /// Claims to give back unsent (due as they were, no attempt spent), one release each.
    pub release: Vec<Vec<Claimed>>,
    /// Outcomes to store in one write.
    pub store: Option<Vec<Finished>>,
    /// Requests to cancel (the end of a drain's grace): each comes back as `answered(.., None)`.
    pub cancel: Vec<RequestId>,
    /// Be ticked again no later than this (an open circuit's probe, the provider's pause end).
    pub wake_at: Option<DateTime<Utc>>,
    /// Changes of the circuit's state, in order.
    pub circuit: Vec<(CircuitState, CircuitState)>,
    /// Attempts made, for metrics and logs.
    pub noted: Vec<Noted>,
    /// Rows given back because their lease would end before their request could.
    pub stale: usize,
    /// Draining, and nothing is left to do: the drain is over.
    pub drained: bool,
}

/// The delivery state of one destination.
#[derive(Debug)]
pub(crate) struct Core {
    settings: CoreSettings,
    breaker: CircuitBreaker<DateTime<Utc>>,
    /// Until when the provider asked every request to wait (a 429 with its reset).
    paused_until: Option<DateTime<Utc>>,
    /// Rows claimed ahead, oldest due first, not yet sent.
    ready: VecDeque<Claimed>,
    /// Requests sent and not answered, with their rows.
    in_flight: HashMap<RequestId, Vec<Claimed>>,
    next_request: u64,
    /// Outcomes not yet handed to the shell to store.
    finished: Vec<Finished>,
    /// Rows in the write of outcomes running now, if one runs.
    storing: Option<usize>,
    /// A claim runs; `Some(true)` if it is the half-open circuit's probe.
    claiming: Option<bool>,
    /// Releases handed out and not yet reported back.
    releasing: usize,
    /// A tick came while a claim or (one writer) a store ran: tick again after it.
    pump_again: bool,
    /// Set by [`Core::drain`]: claim nothing more.
    draining: bool,
    /// The drain's answer was given.
    drained: bool,
}

impl Core {
    pub(crate) fn new(settings: CoreSettings) -> Self {
        let breaker = CircuitBreaker::new(&settings.circuit_breaker);
        Self {
            settings,
            breaker,
            paused_until: None,
            ready: VecDeque::new(),
            in_flight: HashMap::new(),
            next_request: 0,
            finished: Vec::new(),
            storing: None,
            claiming: None,
            releasing: 0,
            pump_again: false,
            draining: false,
            drained: false,
        }
    }

    pub(crate) fn circuit(&self) -> CircuitState {
        self.breaker.state()
    }

    /// Requests in flight now.
    pub(crate) fn requests_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The shell was restarted (actix's supervisor) and its pending futures dropped: forget the
    /// claims, requests, releases and write that were running. Their rows' leases expire and the
    /// rows are claimed again. Outcomes not yet handed out are still stored; the circuit and
    /// the provider's pause stay as they were.
    pub(crate) fn restart(&mut self) {
        self.ready.clear();
        self.in_flight.clear();
        self.storing = None;
        self.claiming = None;
        self.releasing = 0;
        self.pump_again = false;
    }

    /// The provider told another instance to wait until `until` (a shared budget, SPEC §3.6):
    /// claim nothing until then, as after a 429 of this instance's own.
    pub(crate) fn hold_until(&mut self, until: DateTime<Utc>) {
        if self.paused_until.is_none_or(|at| at < until) {
            self.paused_until = Some(until);
        }
    }

    /// The poll timer, a wake-up, or a `wake_at` coming due: claim what may go now.
    pub(crate) fn tick(&mut self, now: DateTime<Utc>) -> Actions {
        let mut out = Actions::default();
        self.pump(now, &mut out);
        self.store_outcomes(&mut out);
        self.check_drained(&mut out);
        out
    }

    /// The claim asked for came back with `rows` (their leases set from when it ran).
    pub(crate) fn claimed(&mut self, rows: Vec<Claimed>, now: DateTime<Utc>) -> Actions {
        let mut out = Actions::default();
        let probe = self.claiming.take() == Some(true);
        if self.draining {
            self.give_back(rows, &mut out);
        } else if probe {
            let (sendable, stale) = self.split_stale(rows, now);
            self.give_back_stale(stale, &mut out);
            if self.breaker.state() != CircuitState::HalfOpen {
                // A request sent before the circuit opened failed meanwhile and opened it
                // again: the probe's turn is gone with it.
                self.give_back(sendable, &mut out);
            } else if sendable.is_empty() {
                self.breaker.on_abandoned();
            } else {
                // The one request a half-open circuit lets through.
                self.send(sendable, &mut out);
            }
        } else {
            self.ready.extend(rows);
        }
        self.after_claim(now, &mut out);
        out
    }

    /// The claim asked for failed (the database): nothing was claimed.
    pub(crate) fn claim_failed(&mut self, now: DateTime<Utc>) -> Actions {
        let mut out = Actions::default();
        if self.claiming.take() == Some(true) {
            self.breaker.on_abandoned();
        }
        self.after_claim(now, &mut out);
        out
    }

    /// Request `id` came back: one outcome per row in order (a single outcome stands for every
    /// row), or `None` if it was cancelled before an answer (no attempt).
    pub(crate) fn answered(
        &mut self,
        id: RequestId,
        outcomes: Option<Vec<AttemptOutcome>>,
        now: DateTime<Utc>,
    ) -> Actions {
        let mut out = Actions::default();
        let Some(rows) = self.in_flight.remove(&id) else {
            return out;
        };
        let Some(mut outcomes) = outcomes else {
            // Cancelled at the end of a drain's grace: given back, no attempt spent. An answer
            // that did come back, even while draining, is stored as usual.
            self.give_back(rows, &mut out);
            self.check_drained(&mut out);
            return out;
        };
        if outcomes.len() != rows.len() {
            let whole = outcomes.pop().unwrap_or_else(AttemptOutcome::no_outcome);
            outcomes = vec![whole; rows.len()];
        }
        self.observe(&outcomes, now, &mut out);
        for (claimed, outcome) in rows.into_iter().zip(outcomes) {
            // Attempts are requests that reached the provider (§3.5.4): a row held back by its
            // pause or suppressed (SPEC §8) spends none.
            let spent = !matches!(
                outcome,
                AttemptOutcome::NotSent { .. } | AttemptOutcome::Suppressed { .. }
            );
            let attempts = claimed.row.attempts.saturating_add(i32::from(spent));
            let transient =
                outcome.is_failure() || matches!(outcome, AttemptOutcome::NotYet { .. });
            let completion =
                crate::email::completion(outcome.clone(), &claimed.row, now, &self.settings.retry);
            let dead = matches!(completion, Completion::Dead { .. });
            if spent || matches!(outcome, AttemptOutcome::Suppressed { .. }) {
                out.noted.push(Noted {
                    claimed: claimed.clone(),
                    outcome,
                    attempts,
                    gave_up: dead && transient,
                    dead,
                });
            }
            self.finished.push(Finished {
                claimed,
                attempts,
                completion,
                at: now,
            });
        }
        // The request's place is free: start or claim its successor while the outcomes are
        // stored (their rows stay leased, so none is claimed again meanwhile).
        self.pump(now, &mut out);
        self.store_outcomes(&mut out);
        out
    }

    /// The write of outcomes handed out last finished (stored or not: a failed write leaves the
    /// rows to their leases, and they are attempted again).
    pub(crate) fn stored(&mut self, now: DateTime<Utc>) -> Actions {
        let mut out = Actions::default();
        self.storing = None;
        self.pump_again = false;
        // A claim that waited for this write goes first, then the outcomes that came meanwhile.
        self.pump(now, &mut out);
        self.store_outcomes(&mut out);
        self.check_drained(&mut out);
        out
    }

    /// A release handed out finished.
    pub(crate) fn released(&mut self) -> Actions {
        let mut out = Actions::default();
        self.releasing = self.releasing.saturating_sub(1);
        self.check_drained(&mut out);
        out
    }

    /// Shutdown: claim nothing more and give back what is claimed and unsent; requests in
    /// flight finish (or are cancelled by [`Core::cancel_all`]) and their outcomes are stored.
    pub(crate) fn drain(&mut self) -> Actions {
        let mut out = Actions::default();
        self.draining = true;
        self.drained = false;
        let held: Vec<Claimed> = self.ready.drain(..).collect();
        self.give_back(held, &mut out);
        self.check_drained(&mut out);
        out
    }

    /// The drain's grace is over: cancel every request in flight.
    pub(crate) fn cancel_all(&mut self) -> Actions {
        let mut ids: Vec<RequestId> = self.in_flight.keys().copied().collect();
        ids.sort();
        Actions {
            cancel: ids,
            ..Actions::default()
        }
    }

    /// Is the core draining?
    pub(crate) fn is_draining(&self) -> bool {
        self.draining
    }

    /// After a claim: start what came back, store what finished meanwhile, and take the tick
    /// that waited for it (not another claim at once: an empty claim would repeat forever).
    fn after_claim(&mut self, now: DateTime<Utc>, out: &mut Actions) {
        let again = std::mem::take(&mut self.pump_again);
        self.start_ready(now, out);
        // Outcomes that finished during the claim are written before the next claim.
        self.store_outcomes(out);
        if again {
            self.pump(now, out);
        }
        self.check_drained(out);
    }

    /// Starts what is ready, then asks for a claim if there is room for more.
    fn pump(&mut self, now: DateTime<Utc>, out: &mut Actions) {
        if self.draining {
            return;
        }
        self.start_ready(now, out);
        if self.claiming.is_some() || (self.settings.one_writer && self.storing.is_some()) {
            self.pump_again = true;
            return;
        }
        let capacity = self
            .settings
            .max_requests
            .saturating_sub(self.in_flight.len());
        if capacity == 0 {
            // Each answer pumps again.
            return;
        }
        let wanted = self.wanted(capacity, now);
        if wanted == 0 {
            return;
        }
        if let Some(until) = self.paused_until.filter(|until| *until > now) {
            // The provider said when its rate limit resets: claim nothing (no attempt spent on
            // a certain 429) until then.
            out.wake_at = earliest(out.wake_at, until);
            return;
        }
        let before = self.breaker.state();
        let admission = self.breaker.admit(now);
        self.note_transition(before, out);
        let (limit, probe) = match admission {
            Admission::Any => (wanted, false),
            Admission::Probe => (1, true),
            Admission::None { until } => {
                // Open: claim nothing, spend no attempts. Look again when it may half-open.
                if let Some(until) = until {
                    out.wake_at = earliest(out.wake_at, until);
                }
                return;
            }
        };
        self.claiming = Some(probe);
        out.claim = Some(limit);
    }

    /// How many rows to claim with `capacity` free places. Rows are claimed a round ahead
    /// (twice what `max_in_flight` requests carry, once less than half a round is ready) only
    /// when the lease is long enough for a row to wait for a place (one whole request) and
    /// still be sent; with a shorter lease, only what can start at once, so that no row is
    /// claimed and given back again and again.
    fn wanted(&self, capacity: usize, now: DateTime<Utc>) -> usize {
        let batch = self.settings.batch;
        let round = self.settings.max_requests.saturating_mul(batch);
        let lease =
            chrono::Duration::from_std(self.settings.lease).unwrap_or(chrono::Duration::MAX);
        let waited = chrono::Duration::from_std(self.settings.timeout + CLAIM_SLACK)
            .unwrap_or(chrono::Duration::MAX);
        let lease_ends = now
            .checked_add_signed(lease)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let may_wait = now
            .checked_add_signed(waited)
            .is_some_and(|then| may_send(lease_ends, then, self.settings.timeout));
        if may_wait {
            if self.ready.len() > round / 2 {
                return 0;
            }
            let outstanding =
                self.ready.len() + self.in_flight.values().map(Vec::len).sum::<usize>();
            (2 * round).saturating_sub(outstanding)
        } else {
            capacity
                .saturating_mul(batch)
                .saturating_sub(self.ready.len())
        }
    }

    /// Starts requests from the rows claimed ahead, as many as `max_in_flight` has room for.
    /// Rows that may not go now (an open circuit, the provider's pause, shutdown) are given
    /// back, due as they were, no attempt spent; so is a row whose lease would end before its
    /// request could ([`may_send`]).
    fn start_ready(&mut self, now: DateTime<Utc>, out: &mut Actions) {
        if self.ready.is_empty() {
            return;
        }
        let paused = self.paused_until.is_some_and(|until| until > now);
        if self.draining || self.breaker.state() != CircuitState::Closed || paused {
            let held: Vec<Claimed> = self.ready.drain(..).collect();
            self.give_back(held, out);
            return;
        }
        let mut stale = Vec::new();
        while self.in_flight.len() < self.settings.max_requests && !self.ready.is_empty() {
            let mut batch = Vec::with_capacity(self.settings.batch.min(self.ready.len()));
            while batch.len() < self.settings.batch
                && let Some(claimed) = self.ready.pop_front()
            {
                if may_send(claimed.lease, now, self.settings.timeout) {
                    batch.push(claimed);
                } else {
                    stale.push(claimed);
                }
            }
            if !batch.is_empty() {
                self.send(batch, out);
            }
        }
        self.give_back_stale(stale, out);
    }

    fn split_stale(&self, rows: Vec<Claimed>, now: DateTime<Utc>) -> (Vec<Claimed>, Vec<Claimed>) {
        rows.into_iter()
            .partition(|claimed| may_send(claimed.lease, now, self.settings.timeout))
    }

    fn give_back_stale(&mut self, stale: Vec<Claimed>, out: &mut Actions) {
        out.stale += stale.len();
        self.give_back(stale, out);
    }

    fn give_back(&mut self, rows: Vec<Claimed>, out: &mut Actions) {
        if rows.is_empty() {
            return;
        }
        self.releasing += 1;
        out.release.push(rows);
    }

    fn send(&mut self, rows: Vec<Claimed>, out: &mut Actions) {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        self.in_flight.insert(id, rows.clone());
        out.send.push(Request { id, rows });
    }

    /// What one request's outcomes tell of the provider: the circuit (once: this was one
    /// request) and its pause.
    fn observe(&mut self, outcomes: &[AttemptOutcome], now: DateTime<Utc>, out: &mut Actions) {
        let before = self.breaker.state();
        let mut sent = outcomes
            .iter()
            .filter(|outcome| {
                !matches!(
                    outcome,
                    AttemptOutcome::NotSent { .. } | AttemptOutcome::Suppressed { .. }
                )
            })
            .peekable();
        if sent.peek().is_none() {
            // Held back by the provider's pause, or not to be sent at all: not an answer, for
            // the circuit either.
            self.breaker.on_abandoned();
        } else if sent.all(AttemptOutcome::is_failure) {
            self.breaker.on_failure(now);
        } else {
            // The provider is up and answered (a permanent refusal of a member included).
            self.breaker.on_success();
        }
        self.note_transition(before, out);
        // A 429 that says when the limit resets pauses every request until then.
        // A request held back by that pause (not sent) says how much of it is left.
        let reset = outcomes
            .iter()
            .filter_map(|outcome| match outcome {
                AttemptOutcome::NotSent { retry_after } if !retry_after.is_zero() => {
                    Some(*retry_after)
                }
                other => other.rate_limit_reset(),
            })
            .max();
        if let Some(until) = reset
            .and_then(|wait| chrono::Duration::from_std(wait).ok())
            .and_then(|wait| now.checked_add_signed(wait))
            && self.paused_until.is_none_or(|at| at < until)
        {
            self.paused_until = Some(until);
        }
    }

    fn note_transition(&mut self, before: CircuitState, out: &mut Actions) {
        let after = self.breaker.state();
        if before != after {
            out.circuit.push((before, after));
        }
    }

    /// Hands every outcome waiting in `finished` out in one write, one write at a time:
    /// outcomes that arrive meanwhile go into the next one (a group commit, as registrations).
    fn store_outcomes(&mut self, out: &mut Actions) {
        if self.storing.is_some()
            || (self.settings.one_writer && self.claiming.is_some())
            || self.finished.is_empty()
            || out.store.is_some()
        {
            return;
        }
        let batch = std::mem::take(&mut self.finished);
        self.storing = Some(batch.len());
        out.store = Some(batch);
    }

    fn check_drained(&mut self, out: &mut Actions) {
        if self.draining
            && !self.drained
            && self.in_flight.is_empty()
            && self.ready.is_empty()
            && self.releasing == 0
            && self.claiming.is_none()
            && self.storing.is_none()
            && self.finished.is_empty()
        {
            self.drained = true;
            out.drained = true;
        }
    }
}

fn earliest(a: Option<DateTime<Utc>>, b: DateTime<Utc>) -> Option<DateTime<Utc>> {
    Some(a.map_or(b, |a| a.min(b)))
}

#[cfg(test)]
mod tests;
