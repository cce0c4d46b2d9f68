//! The EmailSyncActor: delivers outbox rows to the email provider, on its own Arbiter (thread),
//! under actix's `Supervisor`, with a bounded mailbox. Nothing on the request path waits on it:
//! the RegistrationActor only `try_send`s a [`WakeUp`], and readiness reads the circuit state
//! from a `watch` channel this actor publishes to.
//!
//! The outbox is the source of truth: on start, on every wake-up and on every `poll_interval`
//! the actor claims due rows, so a dropped wake-up, a full mailbox or a restart loses nothing.
//!
//! Each delivery runs as its own spawned task. A panic in delivery code then ends that task,
//! not the Arbiter's thread (actix's `Supervisor` restarts an actor that stops, but a panic in a
//! handler would take the whole Arbiter down); the panic is recorded as a failed attempt and the
//! row is retried on its schedule.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;
use tokio::sync::{oneshot, watch};
use tokio::task::AbortHandle;
use uuid::Uuid;

use crate::configuration::EmailSyncSettings;
use crate::database::{WriteTurns, Writes};
use crate::email::{
    self, Admission, AttemptOutcome, CircuitBreaker, CircuitState, Delivery, Paced,
};
use crate::metrics::Metrics;
use crate::outbox::{self, Claimed, Completion, Finished};

/// "There may be new due rows in the outbox." Carries no data on purpose.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct WakeUp;

/// Called in the delivery task before each attempt, with the outbox row id. A seam for tests
/// (inject a panic, or stall the Arbiter); a no-op in production.
pub type DeliveryHook = Arc<dyn Fn(Uuid) + Send + Sync>;

/// How often delivered rows past `retention` are deleted: retention is days, so a sweep every
/// ten minutes keeps the table within minutes of it at the cost of one indexed query.
const RETENTION_SWEEP_EVERY: Duration = Duration::from_secs(600);
/// How often the outbox gauges are read from the database: readiness and `/metrics` show
/// them, and two COUNTs per probe cost ~50 ms with a million pending rows on PostgreSQL.
const GAUGE_REFRESH_EVERY: Duration = Duration::from_secs(5);
/// Rows deleted per statement by the retention sweep: short statements, so that on SQLite the
/// registrations waiting for the write lock are not held up behind one long delete.
const RETENTION_BATCH: u64 = 1000;

pub struct EmailSyncActor {
    /// The email sync's own pool (see `startup`): claims, outcomes, gauges, retention. Replaced
    /// by a closed one once halted, so that an idle Arbiter holds no connection.
    db: DatabaseConnection,
    /// Sends one attempt and classifies the answer (SPEC §3.1, §3.2).
    provider: Arc<Paced>,
    /// `email_sync.*`: capacity, timers, lease, retry schedule, retention.
    settings: EmailSyncSettings,
    /// The circuit's state machine (pure, time passed in); only this actor touches it.
    breaker: CircuitBreaker,
    /// Where every change of the circuit's state is published, for readiness (the gauge in
    /// `metrics` is for Prometheus).
    circuit: watch::Sender<CircuitState>,
    /// Attempt counters, delivery lag, dead rows, dropped wake-ups, the outbox gauges.
    metrics: Arc<Metrics>,
    /// Test seam run before each attempt; None in production.
    hook: Option<DeliveryHook>,
    /// Claims whose delivery started and whose outcome is not yet stored, with a handle that
    /// cancels the delivery's HTTP request (shared by the rows of one batch).
    in_flight: HashMap<Uuid, (Claimed, AbortHandle)>,
    /// Rows claimed ahead, oldest due first, not yet sent: the next requests start from here
    /// as soon as a place frees, with no claim in between (and claims stay large: one claim of
    /// thousands of rows is one write transaction, not one per request).
    ready: VecDeque<Claimed>,
    /// Releases of claims given back (see [`Self::give_back`]) still running.
    releasing: usize,
    /// Deliveries (requests, each of up to `batch` rows) running now: at most `max_in_flight`.
    requests: usize,
    /// SQLite: claims and outcome writes wait for their turn among this process's writers
    /// (the RegistrationActor's commits), not in SQLite's busy handler; and within this actor a
    /// claim and a write of outcomes are not even started together (`turns.taken()`), so that
    /// outcomes finished during a claim are stored before the next claim. PostgreSQL lets both
    /// run at once.
    turns: WriteTurns,
    /// `email_sync.max_in_flight`, or the provider kind's default.
    max_requests: usize,
    /// Rows per request: `email_sync.max_batch`, or the provider kind's batch limit.
    batch: usize,
    /// Set by [`Drain`] (for good, across supervisor restarts): claim nothing more, run no
    /// timer's database work; answers still coming back are stored, cancelled requests'
    /// claims released.
    halted: Arc<AtomicBool>,
    /// The pending [`Drain`]'s answer, sent once `in_flight` is empty.
    draining: Option<oneshot::Sender<()>>,
    /// A claim query is running; a second would race it for the same capacity.
    claiming: bool,
    /// A pump was asked for while claiming: pump again when the claim returns.
    pump_again: bool,
    /// The timer that pumps when an open circuit may half-open.
    reopen_timer: Option<SpawnHandle>,
    /// Outcomes of finished deliveries not yet stored; their rows are still `in_flight`.
    finished: Vec<Finished>,
    /// A write of outcomes is running; the next waits for it.
    storing: bool,
    /// [`DeliverDue`] steps asked for while a claim was running, taken in order after it.
    steps_waiting: Vec<(DateTime<Utc>, oneshot::Sender<StepReport>)>,
    /// Steps whose claimed rows are still being delivered or recorded: the rows not yet
    /// stored, the report, and where it goes.
    step_reports: Vec<(HashSet<Uuid>, StepReport, oneshot::Sender<StepReport>)>,
}

impl EmailSyncActor {
    pub fn new(
        db: DatabaseConnection,
        provider: Arc<Paced>,
        settings: EmailSyncSettings,
        circuit: watch::Sender<CircuitState>,
        metrics: Arc<Metrics>,
        hook: Option<DeliveryHook>,
        turns: WriteTurns,
    ) -> Self {
        let cb = &settings.circuit_breaker;
        let breaker = CircuitBreaker::new(cb);
        let (max_requests, batch) = (settings.in_flight(), settings.batch());
        Self {
            turns,
            db,
            provider,
            settings,
            breaker,
            circuit,
            metrics,
            hook,
            in_flight: HashMap::new(),
            ready: VecDeque::new(),
            releasing: 0,
            requests: 0,
            max_requests,
            batch,
            halted: Arc::new(AtomicBool::new(false)),
            draining: None,
            claiming: false,
            pump_again: false,
            reopen_timer: None,
            finished: Vec::new(),
            storing: false,
            steps_waiting: Vec::new(),
            step_reports: Vec::new(),
        }
    }

    /// Claims as many due rows as the circuit, the provider and `max_in_flight` allow and
    /// starts them.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        self.step(Utc::now(), None, ctx);
    }

    /// One step: claims the rows due at `now` (as many as the circuit, the provider's pause
    /// and `max_in_flight` requests of `batch` rows allow) and starts their deliveries. With `report`, answers there once every claimed
    /// row's outcome is stored (see [`DeliverDue`]).
    fn step(
        &mut self,
        now: DateTime<Utc>,
        report: Option<oneshot::Sender<StepReport>>,
        ctx: &mut Context<Self>,
    ) {
        if self.is_halted() {
            self.finish_drain_if_idle();
            return;
        }
        self.start_ready(ctx);
        if self.claiming || (self.storing && self.turns.taken()) {
            match report {
                Some(report) => self.steps_waiting.push((now, report)),
                None => self.pump_again = true,
            }
            return;
        }
        let capacity = self.max_requests.saturating_sub(self.requests);
        // Claim a round ahead (up to twice what `max_in_flight` requests carry), once less than
        // half a round is ready: claims stay large, and a freed place starts at once.
        let round = self.max_requests.saturating_mul(self.batch);
        let outstanding = self.ready.len() + self.in_flight.len();
        let wanted = if self.ready.len() > round / 2 {
            0
        } else {
            (2 * round).saturating_sub(outstanding)
        };
        if capacity == 0 || wanted == 0 {
            // Each finished delivery pumps again.
            if let Some(report) = report {
                let _ = report.send(StepReport::default());
            }
            return;
        }
        if let Some(until) = self.provider.paused_until() {
            // The provider said when its rate limit resets: claim nothing (no attempt spent on
            // a certain 429) until then.
            self.schedule_pump_at(until, ctx);
            if let Some(report) = report {
                let _ = report.send(StepReport {
                    provider_paused: true,
                    ..StepReport::default()
                });
            }
            return;
        }
        let before = self.breaker.state();
        let admission = self.breaker.admit(Instant::now());
        self.note_transition(before);
        let limit = match admission {
            Admission::Any => wanted,
            Admission::Probe => 1,
            Admission::None { until } => {
                // Open: claim nothing, spend no attempts. Look again when it may half-open.
                if let Some(until) = until {
                    self.schedule_pump_at(until, ctx);
                }
                if let Some(report) = report {
                    let _ = report.send(StepReport {
                        circuit_open: true,
                        ..StepReport::default()
                    });
                }
                return;
            }
        };
        let probe = admission == Admission::Probe;
        self.claiming = true;
        let db = self.db.clone();
        let lease = self.settings.lease;
        let turns = self.turns.clone();
        let claim = async move {
            turns
                .run(Writes::Deliveries, outbox::claim(&db, limit, lease, now))
                .await
        };
        ctx.spawn(claim.into_actor(self).map(move |result, act, ctx| {
            if let Ok(claims) = &result
                && act.is_halted()
            {
                // Halted while claiming: give them straight back (still `claiming` until done,
                // so a drain waits for it).
                let db = act.db.clone();
                let claims = claims.clone();
                let release = async move {
                    if let Err(e) = outbox::release(&db, &claims).await {
                        tracing::warn!(error = %e, "cannot release claims; they expire after email_sync.lease");
                    }
                };
                ctx.spawn(release.into_actor(act).map(|(), act, ctx| {
                    act.claiming = false;
                    // Outcomes that finished during the claim waited for it (SQLite): their
                    // rows are still `in_flight`, and the drain waits for them to be stored.
                    act.store_outcomes(ctx);
                    act.finish_drain_if_idle();
                }));
                return;
            }
            act.claiming = false;
            match result {
                Ok(claims) => {
                    if probe && claims.is_empty() {
                        act.breaker.on_abandoned();
                    }
                    let ids: HashSet<Uuid> = claims.iter().map(|c| c.row.id).collect();
                    if probe {
                        // The one request a half-open circuit lets through.
                        if !claims.is_empty() {
                            act.start_delivery(claims, ctx);
                        }
                    } else {
                        act.ready.extend(claims);
                    }
                    if let Some(report) = report {
                        let done = StepReport {
                            attempted: ids.len(),
                            ..StepReport::default()
                        };
                        if ids.is_empty() {
                            let _ = report.send(done);
                        } else {
                            act.step_reports.push((ids, done, report));
                        }
                    }
                }
                Err(e) => {
                    if probe {
                        act.breaker.on_abandoned();
                    }
                    tracing::warn!(error = %e, "cannot claim outbox rows; retrying at the next poll");
                }
            }
            act.start_ready(ctx);
            act.finish_drain_if_idle();
            // Outcomes that finished while claiming are written before the next claim.
            act.store_outcomes(ctx);
            if !act.steps_waiting.is_empty() {
                let (now, report) = act.steps_waiting.remove(0);
                act.step(now, Some(report), ctx);
            } else if std::mem::take(&mut act.pump_again) {
                act.pump(ctx);
            }
        }));
    }

    /// Starts requests from the rows claimed ahead, as many as `max_in_flight` has room for.
    /// Rows that may not go now (an open circuit, the provider's pause, shutdown) are given
    /// back, due as they were, no attempt spent; so is a row whose lease would end before its
    /// request could (another instance could then send it too).
    fn start_ready(&mut self, ctx: &mut Context<Self>) {
        if self.ready.is_empty() {
            return;
        }
        if self.is_halted()
            || self.breaker.state() != CircuitState::Closed
            || self.provider.paused_until().is_some()
        {
            let held = self.ready.drain(..).collect();
            self.give_back(held, ctx);
            return;
        }
        let margin = chrono::Duration::from_std(self.settings.timeout + Duration::from_secs(1))
            .unwrap_or(chrono::Duration::MAX);
        let sendable_until = Utc::now() + margin;
        let mut stale = Vec::new();
        while self.requests < self.max_requests && !self.ready.is_empty() {
            let mut batch = Vec::with_capacity(self.batch.min(self.ready.len()));
            while batch.len() < self.batch
                && let Some(claimed) = self.ready.pop_front()
            {
                if claimed.lease < sendable_until {
                    stale.push(claimed);
                } else {
                    batch.push(claimed);
                }
            }
            if !batch.is_empty() {
                self.start_delivery(batch, ctx);
            }
        }
        if !stale.is_empty() {
            self.give_back(stale, ctx);
        }
    }

    /// Releases `claims` that were never sent: due again as they were, no attempt spent. A
    /// [`DeliverDue`] step waiting for them stops waiting (they were not attempted).
    fn give_back(&mut self, claims: Vec<Claimed>, ctx: &mut Context<Self>) {
        for claimed in &claims {
            for (waiting_for, done, _) in &mut self.step_reports {
                if waiting_for.remove(&claimed.row.id) {
                    done.attempted = done.attempted.saturating_sub(1);
                }
            }
        }
        self.answer_finished_steps();
        self.releasing += 1;
        let db = self.db.clone();
        let release = async move {
            if let Err(e) = outbox::release(&db, &claims).await {
                tracing::warn!(rows = claims.len(), error = %e, "cannot release claims; they expire after email_sync.lease");
            }
        };
        ctx.spawn(release.into_actor(self).map(|(), act, _| {
            act.releasing -= 1;
            act.finish_drain_if_idle();
        }));
    }

    /// Answers the [`DeliverDue`] steps whose rows are all stored (or given back).
    fn answer_finished_steps(&mut self) {
        for (_, done, report) in self
            .step_reports
            .extract_if(.., |(waiting_for, _, _)| waiting_for.is_empty())
        {
            let _ = report.send(done);
        }
    }

    fn schedule_pump_at(&mut self, at: Instant, ctx: &mut Context<Self>) {
        if let Some(handle) = self.reopen_timer.take() {
            ctx.cancel_future(handle);
        }
        let delay = at.saturating_duration_since(Instant::now());
        self.reopen_timer = Some(ctx.run_later(delay, |act, ctx| {
            act.reopen_timer = None;
            act.pump(ctx);
        }));
    }

    fn is_halted(&self) -> bool {
        self.halted.load(Ordering::Relaxed)
    }

    /// Starts one request carrying `batch` (one row, or up to `batch` rows where the API takes
    /// a batch).
    fn start_delivery(&mut self, batch: Vec<Claimed>, ctx: &mut Context<Self>) {
        let provider = Arc::clone(&self.provider);
        let hook = self.hook.clone();
        let rows: Vec<Delivery> = batch
            .iter()
            .map(|claimed| Delivery {
                id: claimed.row.id,
                event: claimed.row.event,
                payload: claimed.row.payload.clone(),
            })
            .collect();
        // A task of its own: a panic in it is caught by the runtime and seen here as a JoinError.
        let task = tokio::task::spawn_local(async move {
            if let Some(hook) = hook {
                for row in &rows {
                    hook(row.id);
                }
            }
            provider.deliver(&rows).await
        });
        for claimed in &batch {
            self.in_flight
                .insert(claimed.row.id, (claimed.clone(), task.abort_handle()));
        }
        self.requests += 1;
        let attempt = async move {
            match task.await {
                Ok(outcomes) => Some(outcomes),
                // Cancelled by the drain: not an attempt.
                Err(e) if e.is_cancelled() => None,
                Err(e) => Some(vec![
                    AttemptOutcome::Transient {
                        status: None,
                        error: format!("delivery task failed: {e}"),
                        retry_after: None,
                        misconfigured: false,
                    };
                    1
                ]),
            }
        };
        ctx.spawn(
            attempt
                .into_actor(self)
                .map(move |outcomes, act, ctx| act.record(batch, outcomes, ctx)),
        );
    }

    /// Updates the circuit (once: this was one request) and stores each row's outcome; `None`
    /// is a request the drain cancelled.
    fn record(
        &mut self,
        batch: Vec<Claimed>,
        outcomes: Option<Vec<AttemptOutcome>>,
        ctx: &mut Context<Self>,
    ) {
        self.requests = self.requests.saturating_sub(1);
        let Some(mut outcomes) = outcomes else {
            // Cancelled at the end of the shutdown grace: give the claims back without spending
            // an attempt; the rows are delivered after the restart (or by another instance).
            // An answer that did come back, even during shutdown, is stored as usual.
            let db = self.db.clone();
            let release = async move {
                let result = outbox::release(&db, &batch).await;
                (batch, result)
            };
            ctx.spawn(release.into_actor(self).map(|(batch, result), act, _| {
                if let Err(e) = result {
                    tracing::warn!(rows = batch.len(), error = %e, "cannot release claims; they expire after email_sync.lease");
                }
                for claimed in &batch {
                    act.in_flight.remove(&claimed.row.id);
                }
                act.finish_drain_if_idle();
            }));
            return;
        };
        // One outcome per row; a task that failed as a whole (a panic) is every row's.
        if outcomes.len() != batch.len() {
            let whole = outcomes.pop().unwrap_or_else(|| AttemptOutcome::Transient {
                status: None,
                error: "the provider adapter gave no outcome".into(),
                retry_after: None,
                misconfigured: false,
            });
            outcomes = vec![whole; batch.len()];
        }
        let before = self.breaker.state();
        let mut sent = outcomes
            .iter()
            .filter(|outcome| !matches!(outcome, AttemptOutcome::NotSent { .. }))
            .peekable();
        if sent.peek().is_none() {
            // Held back by the provider's pause: not an answer, for the circuit either.
            self.breaker.on_abandoned();
        } else if sent.all(|outcome| matches!(outcome, AttemptOutcome::Transient { .. })) {
            self.breaker.on_failure(Instant::now());
        } else {
            // The provider is up and answered (a permanent refusal of a member included).
            self.breaker.on_success();
        }
        self.note_transition(before);
        let now = Utc::now();
        for (claimed, outcome) in batch.into_iter().zip(outcomes) {
            self.note_outcome(&claimed, &outcome, now);
            let spent = !matches!(outcome, AttemptOutcome::NotSent { .. });
            let attempts = claimed.row.attempts.saturating_add(i32::from(spent));
            let transient = matches!(outcome, AttemptOutcome::Transient { .. });
            let completion = email::completion(outcome, &claimed.row, now, &self.settings.retry);
            if let Completion::Dead { error, .. } = &completion {
                self.metrics.sync_dead.inc();
                if transient {
                    tracing::error!(outbox_id = %claimed.row.id, attempts, %error, "giving up on a row after email_sync.retry.max_attempts / max_elapsed; it is dead until an operator retries it");
                }
            }
            self.finished.push(Finished {
                claimed,
                attempts,
                completion,
                at: now,
            });
        }
        self.store_outcomes(ctx);
        // The request's place is free: claim its successor while the outcomes are stored (its
        // rows stay leased, so none of them is claimed again meanwhile).
        self.pump(ctx);
    }

    /// Counts and logs one row's outcome.
    fn note_outcome(&self, claimed: &Claimed, outcome: &AttemptOutcome, now: DateTime<Utc>) {
        let id = claimed.row.id;
        let attempts = claimed.row.attempts.saturating_add(1);
        match outcome {
            AttemptOutcome::Delivered { .. } => {
                self.metrics
                    .sync_attempts
                    .with_label_values(&["delivered"])
                    .inc();
                let lag = (now - claimed.row.created_at).to_std().unwrap_or_default();
                self.metrics.delivery_lag.observe(lag.as_secs_f64());
                self.metrics.activity.delivered(now, lag);
                tracing::info!(outbox_id = %id, attempts, "delivered to the email provider");
            }
            AttemptOutcome::Permanent { status, error } => {
                self.metrics
                    .sync_attempts
                    .with_label_values(&["permanent"])
                    .inc();
                self.metrics.activity.failed(now);
                // Providers quote the address in their messages: masked here, whole in the row.
                let error = crate::domain::mask_addresses_in(error);
                tracing::error!(outbox_id = %id, status, %error, "the provider refused a row permanently; it is dead until an operator retries it");
            }
            AttemptOutcome::Transient {
                status,
                error,
                misconfigured,
                ..
            } => {
                self.metrics
                    .sync_attempts
                    .with_label_values(&["transient"])
                    .inc();
                self.metrics.activity.failed(now);
                let error = crate::domain::mask_addresses_in(error);
                if *misconfigured {
                    tracing::error!(outbox_id = %id, ?status, %error, "email provider rejects our requests: check email_sync.kind and its section's base_url and api_key (webhook: email_sync.url and email_sync.secret)");
                } else {
                    tracing::warn!(outbox_id = %id, ?status, %error, attempts, "delivery failed; will retry");
                }
            }
            AttemptOutcome::NotSent { retry_after } => {
                tracing::debug!(outbox_id = %id, ?retry_after, "not sent: the provider asked us to wait for its rate limit");
            }
        }
    }

    /// Stores every outcome waiting in `finished` in one transaction, one such write at a time:
    /// outcomes that arrive meanwhile go into the next one (a group commit, as registrations).
    /// A row leaves `in_flight` once its outcome is stored, so it is not claimed again before.
    fn store_outcomes(&mut self, ctx: &mut Context<Self>) {
        if self.storing || (self.claiming && self.turns.taken()) || self.finished.is_empty() {
            return;
        }
        self.storing = true;
        let batch = std::mem::take(&mut self.finished);
        let db = self.db.clone();
        let turns = self.turns.clone();
        let write = async move {
            let result = turns
                .run(Writes::Deliveries, outbox::complete_all(&db, &batch))
                .await;
            (batch, result)
        };
        ctx.spawn(write.into_actor(self).map(|(batch, result), act, ctx| {
            act.storing = false;
            match result {
                Ok(stored) => {
                    for (finished, stored) in batch.iter().zip(stored) {
                        if !stored {
                            tracing::warn!(outbox_id = %finished.claimed.row.id, "lease expired before the outcome was stored; another claim owns the row");
                        }
                    }
                }
                // The leases expire and the rows are attempted again: at least once, same webhook-id.
                Err(e) => {
                    tracing::warn!(rows = batch.len(), error = %e, "cannot store delivery outcomes");
                }
            }
            for finished in &batch {
                let id = finished.claimed.row.id;
                act.in_flight.remove(&id);
                for (waiting_for, _, _) in &mut act.step_reports {
                    waiting_for.remove(&id);
                }
            }
            act.answer_finished_steps();
            // A claim waiting for this write goes first, then the outcomes that came meanwhile.
            if act.steps_waiting.is_empty() {
                act.pump(ctx);
            } else {
                let (now, report) = act.steps_waiting.remove(0);
                act.step(now, Some(report), ctx);
            }
            act.store_outcomes(ctx);
        }));
    }

    /// Publishes the circuit's state to readiness and to the gauge.
    fn publish_circuit(&self, state: CircuitState) {
        self.metrics.set_circuit(state);
        self.metrics.activity.circuit_changed(state, Utc::now());
        // No receiver left (the server is gone) is nothing to report.
        let _ = self.circuit.send(state);
    }

    /// Logs and publishes a change of circuit state.
    fn note_transition(&mut self, before: CircuitState) {
        let after = self.breaker.state();
        if before == after {
            return;
        }
        self.publish_circuit(after);
        match after {
            CircuitState::Open => tracing::warn!(
                from = before.as_str(),
                "email provider circuit opened: deliveries paused (see email_sync.url, email_sync.circuit_breaker)"
            ),
            CircuitState::HalfOpen => tracing::info!(
                from = before.as_str(),
                "email provider circuit half-open: sending a probe"
            ),
            CircuitState::Closed => tracing::info!(
                from = before.as_str(),
                "email provider circuit closed: deliveries resume"
            ),
        }
    }

    /// Refreshes the outbox gauges from the database (on a timer, not per scrape).
    fn refresh_gauges(&mut self, ctx: &mut Context<Self>) {
        if self.is_halted() {
            return;
        }
        let db = self.db.clone();
        let metrics = Arc::clone(&self.metrics);
        let refresh = async move {
            match outbox::outbox_counts(&db).await {
                Ok(counts) => {
                    metrics
                        .outbox_pending
                        .set(i64::try_from(counts.pending).unwrap_or(i64::MAX));
                    metrics
                        .outbox_dead
                        .set(i64::try_from(counts.dead).unwrap_or(i64::MAX));
                    let age = counts
                        .oldest_pending
                        .map_or(0.0, |at| (Utc::now() - at).as_seconds_f64().max(0.0));
                    metrics.oldest_pending.set(age);
                }
                Err(e) => tracing::debug!(error = %e, "cannot refresh the outbox gauges"),
            }
        };
        ctx.spawn(refresh.into_actor(self));
    }

    /// Once halted and idle: answers a pending [`Drain`] and lets go of the database pool, so
    /// that a halted actor holds no connection (its Arbiter may outlive it, as in tests).
    fn finish_drain_if_idle(&mut self) {
        if !self.is_halted()
            || !self.in_flight.is_empty()
            || !self.ready.is_empty()
            || self.releasing > 0
            || self.claiming
        {
            return;
        }
        if let Some(done) = self.draining.take() {
            let _ = done.send(());
        }
        self.db = DatabaseConnection::default();
    }

    fn sweep_delivered(&mut self, ctx: &mut Context<Self>) {
        if let Some(sweep) = self.sweep_at(Utc::now()) {
            ctx.spawn(
                async move {
                    sweep.await;
                }
                .into_actor(self),
            );
        }
    }

    /// The retention sweep as of `now`: deletes delivered rows older than `retention` and
    /// says how many. None while halted.
    fn sweep_at(
        &self,
        now: DateTime<Utc>,
    ) -> Option<impl std::future::Future<Output = u64> + 'static> {
        if self.is_halted() {
            return None;
        }
        let retention = chrono::Duration::from_std(self.settings.retention).ok()?;
        let db = self.db.clone();
        Some(async move {
            match outbox::delete_delivered_before(&db, now - retention, RETENTION_BATCH).await {
                Ok(0) => 0,
                Ok(n) => {
                    tracing::info!(
                        deleted = n,
                        "deleted delivered outbox rows past email_sync.retention"
                    );
                    n
                }
                Err(e) => {
                    tracing::warn!(error = %e, "retention sweep failed");
                    0
                }
            }
        })
    }
}

impl Actor for EmailSyncActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.settings.mailbox_capacity.get());
        self.publish_circuit(self.breaker.state());
        ctx.run_interval(self.settings.poll_interval, |act, ctx| act.pump(ctx));
        // A retention shorter than the sweep period (tests, tiny deployments) is swept as often.
        let sweep_every = RETENTION_SWEEP_EVERY
            .min(self.settings.retention)
            .max(Duration::from_millis(100));
        ctx.run_interval(sweep_every, |act, ctx| act.sweep_delivered(ctx));
        ctx.run_interval(
            GAUGE_REFRESH_EVERY.min(self.settings.poll_interval),
            |act, ctx| act.refresh_gauges(ctx),
        );
        self.refresh_gauges(ctx);
        self.sweep_delivered(ctx);
        self.store_outcomes(ctx);
        self.pump(ctx);
    }
}

impl Supervised for EmailSyncActor {
    /// The supervisor reuses this value and drops its pending futures: forget them. Their rows'
    /// leases expire and the rows are claimed again.
    fn restarting(&mut self, _: &mut Self::Context) {
        tracing::warn!("email sync actor restarting");
        self.in_flight.clear();
        // Rows claimed ahead: their leases expire and they are claimed again.
        self.ready.clear();
        self.releasing = 0;
        self.requests = 0;
        // A write of outcomes in progress died with the old context (its transaction rolls
        // back; those rows are attempted again once their leases expire). Outcomes still
        // waiting in `finished` are stored after the restart.
        self.storing = false;
        self.claiming = false;
        self.pump_again = false;
        self.reopen_timer = None;
        // Their futures died with the old context: the askers see their channel closed.
        self.steps_waiting.clear();
        self.step_reports.clear();
    }
}

/// Delivers what is due at `now` once, and answers when every row it claimed has its outcome
/// stored: the step the poll timer and wake-ups take, which a test takes too (as zero2prod's
/// `try_execute_task`) to drive delivery and to see that nothing is due, instead of sleeping.
#[derive(Debug, Message)]
#[rtype(result = "StepReport")]
pub struct DeliverDue {
    pub now: DateTime<Utc>,
}

/// What one [`DeliverDue`] step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, MessageResponse)]
pub struct StepReport {
    /// Rows claimed and attempted; their outcomes are stored.
    pub attempted: usize,
    /// The circuit was open: nothing was claimed and no attempt spent.
    pub circuit_open: bool,
    /// The provider asked us to wait (a 429's reset): nothing was claimed.
    pub provider_paused: bool,
}

impl Handler<DeliverDue> for EmailSyncActor {
    type Result = ResponseFuture<StepReport>;

    fn handle(&mut self, msg: DeliverDue, ctx: &mut Self::Context) -> Self::Result {
        let (report, done) = oneshot::channel();
        self.step(msg.now, Some(report), ctx);
        // Halted (shutting down), or restarted meanwhile: nothing was attempted.
        Box::pin(async move { done.await.unwrap_or_default() })
    }
}

/// Runs the retention sweep as of `now` and answers how many delivered rows it deleted (the
/// timer's work, as a step a test can take).
#[derive(Debug, Message)]
#[rtype(result = "u64")]
pub struct SweepDelivered {
    pub now: DateTime<Utc>,
}

impl Handler<SweepDelivered> for EmailSyncActor {
    type Result = ResponseFuture<u64>;

    fn handle(&mut self, msg: SweepDelivered, _: &mut Self::Context) -> Self::Result {
        let sweep = self.sweep_at(msg.now);
        Box::pin(async move {
            match sweep {
                Some(sweep) => sweep.await,
                None => 0,
            }
        })
    }
}

impl Handler<WakeUp> for EmailSyncActor {
    type Result = ();

    fn handle(&mut self, _: WakeUp, ctx: &mut Self::Context) {
        self.pump(ctx);
    }
}

/// Shutdown: stop claiming, let in-flight deliveries finish for up to `grace`, then give the
/// remaining claims back (no attempt spent) so that another instance, or this one after its
/// restart, delivers them without waiting for the lease to expire.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Drain {
    pub grace: Duration,
}

impl Handler<Drain> for EmailSyncActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, drain: Drain, ctx: &mut Self::Context) -> Self::Result {
        let (done, finished) = oneshot::channel();
        if !self.halted.swap(true, Ordering::Relaxed) {
            tracing::info!(in_flight = self.in_flight.len(), "email sync draining");
        }
        self.draining = Some(done);
        // Rows claimed ahead and not sent go back at once.
        self.start_ready(ctx);
        self.finish_drain_if_idle();
        ctx.run_later(drain.grace, |act, _| {
            if !act.in_flight.is_empty() {
                tracing::warn!(
                    in_flight = act.in_flight.len(),
                    "deliveries still in flight at the end of server.shutdown_grace; cancelling them and releasing their claims"
                );
            }
            // Each cancelled delivery comes back through `record`, which releases its claim.
            for (_, abort) in act.in_flight.values() {
                abort.abort();
            }
        });
        Box::pin(async move {
            let _ = finished.await;
        })
    }
}
