//! The RegistrationActor: the only writer of users. It answers each registration once its
//! transaction has committed, and runs one transaction at a time, so a uniqueness check and the
//! insert that follows it never interleave with another registration's.
//!
//! Why not `AtomicResponse` around each message: that serializes too, but commits one
//! registration per transaction, capping throughput at 1 / (transaction latency). Instead a
//! registration is only queued ([`Registrations::submit`]); a single in-flight commit takes
//! everything queued, up to `max_batch`, into one transaction (a group commit) and answers each
//! member, then takes the next batch. The inbox is a tokio channel the submitters send to, and
//! the actor takes a batch with `recv_many` between commits: only an idle actor is woken by a
//! registration, so registrations arriving during a commit do not each wake the actor's thread
//! just to be queued (one thread wake-up per registration, ~1 context switch per registration
//! on that thread, measured).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use sea_orm::{DatabaseConnection, DbErr};
use tokio::sync::{mpsc, oneshot};

use super::WakeUp;
use crate::database::{Turn, WriteTurns, Writes};
use crate::metrics::Metrics;
use crate::registrar::RegistrationError;
use crate::store::{Candidate, Outcome, Writer};

/// What the RegistrationActor answers for one candidate: the registrar's own result type, as
/// the same channel also carries a hashing failure from the hashing thread that sends the
/// candidate here (see `registrar`).
pub(crate) type Registered = Result<Outcome, RegistrationError>;

/// Readiness probe: answered at once if the actor is alive and its mailbox moves.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Ping;

/// The database refused or did not answer; nothing of this registration was written.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the registration's transaction failed: {0}")]
pub(crate) struct CommitFailed(pub String);

/// What the registration path's storage is doing, shared with readiness. Written by the
/// RegistrationActor, read without waiting on it.
#[derive(Debug)]
pub struct CommitWatch {
    /// The moment every `*_since` value counts from.
    epoch: Instant,
    /// Milliseconds since `epoch` + 1 at which the running commit started; 0 when none runs.
    committing_since: AtomicU64,
    /// The last registration transaction failed (and none has committed since): the database
    /// answers reads but cannot store registrations (disk full, read-only, I/O error).
    failing: AtomicBool,
    /// SQLite: the file the server opened, checked before each batch and by readiness.
    file: Option<crate::db_file::DbFile>,
}

impl Default for CommitWatch {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            committing_since: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            file: None,
        }
    }
}

impl CommitWatch {
    /// Watching `file` too (SQLite): see [`crate::db_file`].
    pub(crate) fn watching(file: Option<crate::db_file::DbFile>) -> Self {
        Self {
            file,
            ..Self::default()
        }
    }

    /// The SQLite file watched, if any.
    pub(crate) fn file(&self) -> Option<&crate::db_file::DbFile> {
        self.file.as_ref()
    }

    /// Ok while the database file is the one the server opened (always, on PostgreSQL).
    pub(crate) fn file_ok(&self) -> Result<(), crate::db_file::Mismatch> {
        self.file
            .as_ref()
            .map_or(Ok(()), crate::db_file::DbFile::check)
    }

    fn started(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.committing_since.store(ms + 1, Ordering::Relaxed);
    }

    fn ended(&self, stored: bool) {
        self.committing_since.store(0, Ordering::Relaxed);
        self.failing.store(!stored, Ordering::Relaxed);
    }

    /// How long the running commit has taken so far; None when none runs.
    pub(crate) fn commit_age(&self) -> Option<Duration> {
        match self.committing_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(
                self.epoch
                    .elapsed()
                    .saturating_sub(Duration::from_millis(since - 1)),
            ),
        }
    }

    /// Whether the last registration transaction failed.
    pub(crate) fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// A write succeeded outside the actor (readiness's probe): storage works again.
    pub(crate) fn recovered(&self) {
        self.failing.store(false, Ordering::Relaxed);
    }
}

/// A queued request and where its answer goes.
struct Queued {
    candidate: Candidate,
    reply: oneshot::Sender<Registered>,
}

/// Where registrations are submitted to the RegistrationActor.
#[derive(Clone)]
pub struct Registrations {
    inbox: mpsc::UnboundedSender<Queued>,
    actor: Addr<RegistrationActor>,
}

impl Registrations {
    /// Queues one validated, hashed candidate; its answer goes to `reply` once its transaction
    /// has committed (or failed).
    ///
    /// The caller keeps the receiving end and the candidate's [`crate::ticket::Ticket`]: a
    /// caller that gives up (its client went away, or `registration.deadline` passed and it
    /// answered 503) does so on the ticket, and a candidate whose caller gave up before its
    /// batch's COMMIT began is never written (withdrawn from the transaction if need be), so a
    /// 503 does not turn into an account behind the person's back. The queue holds at most one candidate per request in
    /// flight. If the actor has stopped, `reply` is dropped at once (the request answers 503).
    pub fn submit(&self, candidate: Candidate, reply: oneshot::Sender<Registered>) {
        // A stopped actor has dropped the inbox: the candidate and `reply` go with the error.
        let _ = self.inbox.send(Queued { candidate, reply });
    }

    /// Answered at once if the actor is alive and its mailbox moves (readiness).
    pub(crate) async fn ping(&self) -> Result<(), MailboxError> {
        self.actor.send(Ping).await
    }
}

pub struct RegistrationActor {
    /// The pool, for the key sweep.
    db: DatabaseConnection,
    /// Where batches are written (on SQLite, on a connection of the pool kept between them).
    writer: Writer,
    /// Most candidates per transaction.
    max_batch: usize,
    /// The email sync's mailbox. `try_send` only: a full or closed mailbox must never block or
    /// fail a registration.
    email_sync: Recipient<WakeUp>,
    /// Where dropped wake-ups are counted.
    metrics: Arc<Metrics>,
    /// Published for readiness: a commit's age, and whether storing fails.
    watch: Arc<CommitWatch>,
    /// Registrations waiting for their batch; away while the actor waits on it.
    inbox: Option<mpsc::UnboundedReceiver<Queued>>,
    /// Where [`RegistrationActor::launch`] gets the sending end.
    sender: mpsc::UnboundedSender<Queued>,
    /// SQLite: each batch's transaction waits for its turn among this process's writers.
    turns: WriteTurns,
    /// The turn, kept from one batch to the next while callers wait.
    turn: Option<Turn>,
}

impl RegistrationActor {
    pub fn new(
        db: DatabaseConnection,
        max_batch: std::num::NonZeroUsize,
        email_sync: Recipient<WakeUp>,
        metrics: Arc<Metrics>,
        watch: Arc<CommitWatch>,
        turns: WriteTurns,
    ) -> Self {
        let (sender, inbox) = mpsc::unbounded_channel();
        Self {
            turns,
            turn: None,
            writer: Writer::new(db.clone()),
            db,
            max_batch: max_batch.get(),
            email_sync,
            metrics,
            watch,
            inbox: Some(inbox),
            sender,
        }
    }

    /// Starts the actor; registrations are submitted through what this returns.
    pub fn launch(self) -> Registrations {
        Registrations {
            inbox: self.sender.clone(),
            actor: self.start(),
        }
    }

    /// Waits for the next batch (at once if registrations are queued), then commits it.
    fn take_next_batch(&mut self, ctx: &mut Context<Self>) {
        let Some(mut inbox) = self.inbox.take() else {
            return;
        };
        if inbox.is_empty() {
            // Nobody waits: the other writers may go.
            self.turn = None;
        }
        let max_batch = self.max_batch;
        let next = async move {
            let mut batch = Vec::with_capacity(max_batch);
            let open = inbox.recv_many(&mut batch, max_batch).await > 0;
            (inbox, batch, open)
        };
        ctx.spawn(next.into_actor(self).map(|(inbox, batch, open), act, ctx| {
            act.inbox = Some(inbox);
            if open {
                act.commit_batch(batch, ctx);
            }
        }));
    }

    /// Commits `batch`, then takes the next one.
    fn commit_batch(&mut self, mut batch: Vec<Queued>, ctx: &mut Context<Self>) {
        // Callers that gave up (deadline passed, client gone) were answered already or need no
        // answer: writing their user now would create an account someone was told was not.
        batch.retain(|queued| !queued.candidate.ticket.gave_up());
        if batch.is_empty() {
            self.take_next_batch(ctx);
            return;
        }
        self.metrics.batch_size.observe(batch.len() as f64);
        let writer = self.writer.clone();
        let watch = Arc::clone(&self.watch);
        let turns = self.turns.clone();
        // Callers wait, so the turn is kept from the last batch, unless a delivery write has
        // waited through enough of them.
        let kept = self.turn.take().filter(Turn::may_write_again);
        let work = async move {
            watch.started();
            let turn = match kept {
                Some(turn) => Some(turn),
                None => turns.take(Writes::Registrations).await,
            };
            // Waiting for the turn may outlast a caller's deadline: who gave up meanwhile was
            // answered 503 and must not get an account.
            batch.retain(|queued| !queued.candidate.ticket.gave_up());
            let (created_any, stored) = if batch.is_empty() {
                // Nothing was tried: whether storing fails stays as it was known.
                (false, !watch.failing())
            } else if let Err(e) = watch.file_ok() {
                // Written into a file nobody will read again, a 201 would be a lie.
                fail_all(batch, &DbErr::Custom(e.to_string()));
                (false, false)
            } else {
                commit(&writer, batch).await
            };
            watch.ended(stored);
            (created_any, turn)
        };
        ctx.spawn(work.into_actor(self).map(|(created_any, turn), act, ctx| {
            act.turn = turn;
            if created_any {
                act.wake_email_sync();
            }
            act.take_next_batch(ctx);
        }));
    }

    fn wake_email_sync(&self) {
        // Fire-and-forget: if the mailbox is full a wake-up is already pending, and the email
        // sync's poll finds due rows anyway.
        if let Err(e) = self.email_sync.try_send(WakeUp) {
            self.metrics.wakeups_dropped.inc();
            tracing::debug!(error = %e, "email sync wake-up dropped; its poll will find the rows");
        }
    }
}

/// Commits `batch` in one transaction and answers each member. If the batch fails for any
/// reason but a lost uniqueness race (which `Writer::register_batch` settles itself), one bad
/// member must not fail the others: each is tried again alone, and only those that fail alone
/// are answered 503. Returns (anyone created, any transaction stored).
async fn commit(writer: &Writer, batch: Vec<Queued>) -> (bool, bool) {
    let candidates: Vec<Candidate> = batch.iter().map(|q| q.candidate.clone()).collect();
    let error = match writer.register_batch(&candidates).await {
        Ok(outcomes) => return (answer(batch, outcomes), true),
        Err(e) => e,
    };
    if batch.len() == 1 || is_unreachable(&error) {
        tracing::error!(error = %error, batch = batch.len(), "registration batch failed; nothing was written");
        fail_all(batch, &error);
        return (false, false);
    }
    tracing::warn!(error = %error, batch = batch.len(), "registration batch failed; nothing was written; trying its members one at a time");
    let mut created_any = false;
    let mut stored = false;
    let mut members = batch.into_iter();
    while let Some(queued) = members.next() {
        if queued.candidate.ticket.gave_up() {
            continue;
        }
        match writer
            .register_batch(std::slice::from_ref(&queued.candidate))
            .await
        {
            Ok(outcomes) => {
                created_any |= answer(vec![queued], outcomes);
                stored = true;
            }
            Err(e) if is_unreachable(&e) => {
                tracing::error!(error = %e, "database unreachable; answering the rest of the batch 503");
                fail_all(std::iter::once(queued).chain(members).collect(), &e);
                return (created_any, false);
            }
            Err(e) => {
                tracing::error!(error = %e, request_id = %queued.candidate.request_id, "registration failed alone; nothing was written for it");
                fail_all(vec![queued], &e);
            }
        }
    }
    (created_any, stored)
}

/// The database could not be reached at all: trying members one by one would only wait for
/// the pool's acquire timeout once per member.
fn is_unreachable(e: &DbErr) -> bool {
    matches!(e, DbErr::ConnectionAcquire(_) | DbErr::Conn(_))
}

/// Sends each member its outcome; true if any was created.
fn answer(batch: Vec<Queued>, outcomes: Vec<Outcome>) -> bool {
    let mut created_any = false;
    for (queued, outcome) in batch.into_iter().zip(outcomes) {
        created_any |= matches!(outcome, Outcome::Created(_));
        // The caller may have gone (client disconnected): its user still exists, and a retry
        // gets 409, or the first answer with an idempotency key.
        let _ = queued.reply.send(Ok(outcome));
    }
    created_any
}

fn fail_all(batch: Vec<Queued>, error: &DbErr) {
    let error = CommitFailed(error.to_string());
    for queued in batch {
        let _ = queued
            .reply
            .send(Err(RegistrationError::Unavailable(Box::new(error.clone()))));
    }
}

impl Actor for RegistrationActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.take_next_batch(ctx);
        // Idempotency keys are remembered 24 h; delete the expired ones now and then. Not a
        // registration, so it does not take the `committing` turn: it deletes old rows only.
        ctx.run_interval(KEY_SWEEP_EVERY, |act, ctx| {
            let db = act.db.clone();
            let sweep = async move {
                match crate::idempotency::delete_expired_keys(&db, KEY_SWEEP_BATCH).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "deleted expired idempotency keys"),
                    Err(e) => tracing::warn!(error = %e, "cannot delete expired idempotency keys"),
                }
            };
            ctx.spawn(sweep.into_actor(act));
        });
    }
}

/// How often expired idempotency keys are deleted.
const KEY_SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);
/// Keys deleted per statement by that sweep: short statements, so that registrations waiting
/// for the write lock (SQLite) are not held up by one long delete.
const KEY_SWEEP_BATCH: u64 = 1000;

impl Handler<Ping> for RegistrationActor {
    type Result = ();

    fn handle(&mut self, _: Ping, _: &mut Self::Context) {}
}
