//! The EmailSyncActor: the shell around the delivery core ([`crate::delivery::Core`]). The core
//! decides (what to claim, what to send, what to give back, what to store, when to look again);
//! this actor runs those actions against the database and the provider and feeds back what
//! happened, with the time it happened. It lives on its own Arbiter (thread), under actix's
//! `Supervisor`, with a bounded mailbox. Nothing on the request path waits on it: the
//! RegistrationActor only `try_send`s a [`WakeUp`], and readiness reads the circuit state from
//! a `watch` channel this actor publishes to.
//!
//! The outbox is the source of truth: on start, on every wake-up and on every `poll_interval`
//! the core is ticked and claims due rows, so a dropped wake-up, a full mailbox or a restart
//! loses nothing.
//!
//! Each request runs as its own spawned task. A panic in delivery code then ends that task,
//! not the Arbiter's thread (actix's `Supervisor` restarts an actor that stops, but a panic in a
//! handler would take the whole Arbiter down); the panic is recorded as a failed attempt and the
//! row is retried on its schedule.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;
use tokio::sync::{oneshot, watch};
use tokio::task::AbortHandle;
use uuid::Uuid;

use crate::configuration::EmailSyncSettings;
use crate::database::{WriteTurns, Writes};
use crate::delivery::{Actions, Core, CoreSettings, Noted, Request, RequestId};
use crate::email::{AttemptOutcome, CircuitState, Delivery, Paced};
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
    /// Every decision of the delivery side; this actor only carries them out.
    core: Core,
    /// The email sync's own pool (see `startup`): claims, outcomes, gauges, retention. Replaced
    /// by a closed one once drained, so that an idle Arbiter holds no connection.
    db: DatabaseConnection,
    /// Sends one request and classifies the answers (SPEC §3.1, §3.2, §5).
    provider: Arc<Paced>,
    /// `email_sync.*`: timers, lease, retention.
    settings: EmailSyncSettings,
    /// Where every change of the circuit's state is published, for readiness (the gauge in
    /// `metrics` is for Prometheus).
    circuit: watch::Sender<CircuitState>,
    /// Attempt counters, delivery lag, dead rows, released claims, the outbox gauges.
    metrics: Arc<Metrics>,
    /// Test seam run before each attempt; None in production.
    hook: Option<DeliveryHook>,
    /// How to cancel each request in flight (the end of a drain's grace).
    aborts: HashMap<RequestId, AbortHandle>,
    /// SQLite: claims and outcome writes wait for their turn among this process's writers
    /// (the RegistrationActor's commits), not in SQLite's busy handler. PostgreSQL: no turns.
    turns: WriteTurns,
    /// The timer set for the core's `wake_at` (an open circuit's probe, a provider's pause).
    wake_timer: Option<(DateTime<Utc>, SpawnHandle)>,
    /// The pending [`Drain`]'s answer, sent once the core says the drain is over.
    draining: Option<oneshot::Sender<()>>,
    /// Claimed upserts of declined addresses (SPEC §8), read once per claim: a request's rows
    /// take theirs when it is sent.
    declined: HashMap<uuid::Uuid, &'static str>,
}

impl EmailSyncActor {
    pub(crate) fn new(
        db: DatabaseConnection,
        provider: Arc<Paced>,
        settings: EmailSyncSettings,
        circuit: watch::Sender<CircuitState>,
        metrics: Arc<Metrics>,
        hook: Option<DeliveryHook>,
        turns: WriteTurns,
    ) -> Self {
        let core = Core::new(CoreSettings {
            max_requests: settings.in_flight().max(1),
            batch: settings.batch().max(1),
            timeout: settings.timeout,
            lease: settings.lease,
            retry: settings.retry.clone(),
            circuit_breaker: settings.circuit_breaker.clone(),
            one_writer: turns.taken(),
        });
        Self {
            core,
            db,
            provider,
            settings,
            circuit,
            metrics,
            hook,
            aborts: HashMap::new(),
            turns,
            wake_timer: None,
            draining: None,
            declined: HashMap::new(),
        }
    }

    /// Ticks the core: claims and sends what may go now.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        let actions = self.core.tick(Utc::now());
        self.run(actions, ctx);
    }

    /// Carries out what the core asked for.
    fn run(&mut self, actions: Actions, ctx: &mut Context<Self>) {
        for (before, after) in actions.circuit {
            self.note_transition(before, after);
        }
        // Double opt-in (SPEC §8): Mailchimp asks a new member to confirm; until its
        // `subscribe` event, the person is pending. One write for all the request's rows: a
        // write per row would queue behind each other and delay the outcome writes past their
        // leases (a 10 000-row run sent rows twice).
        let double_opt_in = self.settings.kind == crate::configuration::ProviderKind::Mailchimp
            && self.settings.mailchimp.status_if_new == crate::configuration::StatusIfNew::Pending;
        let mut asked = Vec::new();
        for noted in &actions.noted {
            self.note_outcome(noted);
            match &noted.outcome {
                AttemptOutcome::Declined { state, .. } => {
                    if let Some(state) = crate::consent::ConsentState::parse(state) {
                        self.record_answer(&noted.claimed, state, ctx);
                    }
                }
                AttemptOutcome::Delivered { .. }
                    if double_opt_in
                        && noted.claimed.row.event
                            == entity::email_outbox::EventType::UserRegistered =>
                {
                    asked.extend(noted.claimed.row.contact.clone());
                }
                _ => {}
            }
        }
        if !asked.is_empty() {
            self.record_asked(asked, ctx);
        }
        if actions.stale > 0 {
            tracing::warn!(
                rows = actions.stale,
                "claimed rows given back unsent: their lease would end before their request could (email_sync.lease, email_sync.timeout)"
            );
        }
        if let Some(limit) = actions.claim {
            self.claim(limit, ctx);
        }
        for request in actions.send {
            self.send(request, ctx);
        }
        for rows in actions.release {
            self.release(rows, ctx);
        }
        if let Some(batch) = actions.store {
            self.store(batch, ctx);
        }
        for id in actions.cancel {
            if let Some(abort) = self.aborts.get(&id) {
                abort.abort();
            }
        }
        if let Some(at) = actions.wake_at {
            self.wake_at(at, ctx);
        }
        if actions.drained {
            self.answer_drain(ctx);
            self.db = DatabaseConnection::default();
        }
    }

    /// Claims up to `limit` due rows, the lease counted from when the claim runs (after its
    /// write turn), not from when it was asked for.
    fn claim(&mut self, limit: usize, ctx: &mut Context<Self>) {
        let db = self.db.clone();
        let lease = self.settings.lease;
        let turns = self.turns.clone();
        let provider = Arc::clone(&self.provider);
        let claim = async move {
            // Another instance got a 429 with a reset: no claim until it passes (SPEC §3.6).
            if let Some(until) = provider.budget().read_shared_pause().await {
                return Ok((Vec::new(), HashMap::new(), Some(until)));
            }
            let rows = turns
                .run(Writes::Deliveries, async {
                    outbox::claim(&db, limit, lease, Utc::now()).await
                })
                .await?;
            // Once per claim, not once per request: reads on this pool compete with the
            // outcome writes, which must land within the lease.
            let declined = declined_of(&db, &rows).await?;
            Ok::<_, sea_orm::DbErr>((rows, declined, None))
        };
        ctx.spawn(claim.into_actor(self).map(|result, act, ctx| {
            let actions = match result {
                Ok((rows, declined, paused)) => {
                    act.declined.extend(declined);
                    if let Some(until) = paused {
                        act.core.hold_until(until);
                    }
                    act.core.claimed(rows, Utc::now())
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim outbox rows; retrying at the next poll");
                    act.core.claim_failed(Utc::now())
                }
            };
            act.run(actions, ctx);
        }));
    }

    /// Starts one request as a task of its own: a panic in it is caught by the runtime and
    /// seen here as a failed attempt.
    fn send(&mut self, request: Request, ctx: &mut Context<Self>) {
        let provider = Arc::clone(&self.provider);
        let hook = self.hook.clone();
        let (db, lease, timeout) = (self.db.clone(), self.settings.lease, self.settings.timeout);
        let claims = request.rows.clone();
        let declined: HashMap<uuid::Uuid, &'static str> = claims
            .iter()
            .filter_map(|c| {
                self.declined
                    .remove(&c.row.id)
                    .map(|state| (c.row.id, state))
            })
            .collect();
        let task = tokio::task::spawn_local(async move {
            let rows = deliveries(&db, &claims, lease, &declined).await;

            if let Some(hook) = hook {
                for row in &rows {
                    hook(row.id);
                }
            }
            // Reading what the request needs (and a test's hook) took time of the lease: the core's rule, once
            // more, right before the request goes out, or another claim could send these rows
            // while this request still runs.
            let now = Utc::now();
            if !claims
                .iter()
                .all(|claimed| crate::delivery::may_send(claimed.lease, now, timeout))
            {
                tracing::debug!(
                    rows = claims.len(),
                    "the leases ran short while the request was prepared; given back unsent"
                );
                return None;
            }
            // The latest moment a request may start: every row's lease covers it to its end.
            let send_by = claims
                .iter()
                .map(|claimed| claimed.lease)
                .min()
                .map_or(now, |lease| {
                    lease - chrono::Duration::from_std(timeout).unwrap_or_default()
                });
            Some(provider.deliver(&rows, send_by).await)
        });
        self.aborts.insert(request.id, task.abort_handle());
        let id = request.id;
        let attempt = async move {
            match task.await {
                Ok(outcomes) => outcomes,
                // Cancelled by the drain: not an attempt.
                Err(e) if e.is_cancelled() => None,
                Err(e) => Some(vec![AttemptOutcome::Transient {
                    status: None,
                    error: format!("delivery task failed: {e}"),
                    retry_after: None,
                }]),
            }
        };
        ctx.spawn(attempt.into_actor(self).map(move |outcomes, act, ctx| {
            act.aborts.remove(&id);
            let actions = act.core.answered(id, outcomes, Utc::now());
            act.run(actions, ctx);
        }));
    }

    /// Gives claims back unsent: due again as they were, no attempt spent. Counted: a row
    /// given back again and again is a configuration or a database to look at.
    fn release(&mut self, rows: Vec<Claimed>, ctx: &mut Context<Self>) {
        self.metrics.claims_released.inc_by(rows.len() as u64);
        for claimed in &rows {
            self.declined.remove(&claimed.row.id);
        }
        let db = self.db.clone();
        let release = async move {
            if let Err(e) = outbox::release(&db, &rows).await {
                tracing::warn!(rows = rows.len(), error = %e, "cannot release claims; they expire after email_sync.lease");
            }
        };
        ctx.spawn(release.into_actor(self).map(|(), act, ctx| {
            let actions = act.core.released();
            act.run(actions, ctx);
        }));
    }

    /// Stores outcomes in one transaction. A row whose claim was lost meanwhile (its lease
    /// expired and another claim owns it) is not overwritten.
    fn store(&mut self, batch: Vec<Finished>, ctx: &mut Context<Self>) {
        let db = self.db.clone();
        let turns = self.turns.clone();
        let write = async move {
            let result = turns
                .run(Writes::Deliveries, outbox::complete_all(&db, &batch))
                .await;
            (batch, result)
        };
        ctx.spawn(write.into_actor(self).map(|(batch, result), act, ctx| {
            match result {
                Ok(stored) => {
                    let mut scrubbed = false;
                    for (finished, stored) in batch.iter().zip(stored) {
                        if !stored {
                            tracing::warn!(outbox_id = %finished.claimed.row.id, "lease expired before the outcome was stored; another claim owns the row");
                        }
                        scrubbed |= stored
                            && finished.claimed.row.event
                                == entity::email_outbox::EventType::UserDeleted
                            && matches!(
                                finished.completion,
                                Completion::Delivered { .. } | Completion::Suppressed { .. }
                            );
                    }
                    if scrubbed {
                        // The deletion's payload held the address: its old image goes too.
                        let db = act.db.clone();
                        actix::spawn(async move { crate::erasure::forget_on_disk(&db).await });
                    }
                }
                // The leases expire and the rows are attempted again: at least once, same webhook-id.
                Err(e) => {
                    tracing::warn!(rows = batch.len(), error = %e, "cannot store delivery outcomes");
                }
            }
            let actions = act.core.stored(Utc::now());
            act.run(actions, ctx);
        }));
    }

    /// Ticks the core at `at` (or sooner, if an earlier wake-up is asked for).
    fn wake_at(&mut self, at: DateTime<Utc>, ctx: &mut Context<Self>) {
        if let Some((set, handle)) = self.wake_timer.take() {
            if set <= at {
                self.wake_timer = Some((set, handle));
                return;
            }
            ctx.cancel_future(handle);
        }
        let delay = (at - Utc::now()).to_std().unwrap_or_default();
        let handle = ctx.run_later(delay, |act, ctx| {
            act.wake_timer = None;
            act.pump(ctx);
        });
        self.wake_timer = Some((at, handle));
    }

    /// Publishes the circuit's state to readiness and to the gauge.
    fn publish_circuit(&self, state: CircuitState) {
        self.metrics.set_circuit(state);
        self.metrics.activity.circuit_changed(state, Utc::now());
        // No receiver left (the server is gone) is nothing to report.
        let _ = self.circuit.send(state);
    }

    /// Logs and publishes a change of circuit state.
    fn note_transition(&self, before: CircuitState, after: CircuitState) {
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
        if self.core.is_draining() {
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
            match crate::consent::store::counts(&db).await {
                Ok(counts) => {
                    for (state, n) in counts {
                        metrics
                            .consent_state
                            .with_label_values(&[state.as_str()])
                            .set(n);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot refresh the consent gauge"),
            }
        };
        ctx.spawn(refresh.into_actor(self));
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
    /// says how many. None while draining.
    fn sweep_at(
        &self,
        now: DateTime<Utc>,
    ) -> Option<impl std::future::Future<Output = u64> + 'static> {
        if self.core.is_draining() {
            return None;
        }
        let retention = chrono::Duration::from_std(self.settings.retention).ok()?;
        let db = self.db.clone();
        Some(async move {
            // The providers' event ids are kept as long, for replays: then they go too.
            if let Err(e) = crate::consent::store::forget_events_before(&db, now - retention).await
            {
                tracing::warn!(error = %e, "cannot delete provider event ids past email_sync.retention");
            }
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

mod budget;
mod consent;
mod notes;
mod rows;
use rows::{declined_of, deliveries};

impl Actor for EmailSyncActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.settings.mailbox_capacity.get());
        self.publish_circuit(self.core.circuit());
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
        self.start_shared_budget(ctx);
        self.refresh_gauges(ctx);
        self.sweep_delivered(ctx);
        self.pump(ctx);
    }
}

impl Supervised for EmailSyncActor {
    /// The supervisor reuses this value and drops its pending futures: the core forgets them.
    /// Their rows' leases expire and the rows are claimed again.
    fn restarting(&mut self, _: &mut Self::Context) {
        tracing::warn!("email sync actor restarting");
        self.core.restart();
        self.aborts.clear();
        self.wake_timer = None;
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
        if !self.core.is_draining() {
            tracing::info!(
                in_flight = self.core.requests_in_flight(),
                "email sync draining"
            );
        }
        self.draining = Some(done);
        let actions = self.core.drain();
        self.run(actions, ctx);
        ctx.run_later(drain.grace, |act, ctx| {
            if act.core.requests_in_flight() > 0 {
                tracing::warn!(
                    in_flight = act.core.requests_in_flight(),
                    "deliveries still in flight at the end of server.shutdown_grace; cancelling them and releasing their claims"
                );
            }
            // Each cancelled request comes back through `answered`, which gives its claims back.
            let actions = act.core.cancel_all();
            act.run(actions, ctx);
        });
        Box::pin(async move {
            let _ = finished.await;
        })
    }
}
