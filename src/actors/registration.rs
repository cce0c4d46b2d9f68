//! The RegistrationActor: the only writer of users. It answers each registration once its
//! transaction has committed, and runs one transaction at a time, so a uniqueness check and the
//! insert that follows it never interleave with another registration's.
//!
//! Why not `AtomicResponse` around each message: that serializes too, but commits one
//! registration per transaction, capping throughput at 1 / (transaction latency). Instead the
//! handler only queues the request; a single in-flight commit (`committing`) takes everything
//! queued, up to `max_batch`, into one transaction (a group commit) and answers each member. The
//! handler never awaits, so the mailbox keeps draining into the queue while a commit runs.

use std::collections::VecDeque;
use std::sync::Arc;

use actix::prelude::*;
use sea_orm::DatabaseConnection;
use tokio::sync::oneshot;

use super::WakeUp;
use crate::metrics::Metrics;
use crate::store::{self, Candidate, Outcome};

/// Register one validated, hashed candidate. Answered after its transaction commits.
#[derive(Debug, Message)]
#[rtype(result = "Result<Outcome, RegistrationError>")]
pub struct RegisterUser(pub Candidate);

/// Readiness probe: answered at once if the actor is alive and its mailbox moves.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Ping;

#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistrationError {
    /// The database refused or did not answer; nothing of the batch was written.
    #[error("database unavailable: {0}")]
    Unavailable(String),
}

/// A queued request and where its answer goes.
struct Queued {
    candidate: Candidate,
    reply: oneshot::Sender<Result<Outcome, RegistrationError>>,
}

pub struct RegistrationActor {
    /// The pool; the actor holds at most one of its connections at a time.
    db: DatabaseConnection,
    /// Most candidates per transaction.
    max_batch: usize,
    /// The email sync's mailbox. `try_send` only: a full or closed mailbox must never block or
    /// fail a registration.
    email_sync: Recipient<WakeUp>,
    /// Where dropped wake-ups are counted.
    metrics: Arc<Metrics>,
    /// Requests received while a commit was running, oldest first.
    queue: VecDeque<Queued>,
    /// True while a batch's transaction is in flight: the serialization point.
    committing: bool,
}

impl RegistrationActor {
    pub fn new(
        db: DatabaseConnection,
        max_batch: usize,
        email_sync: Recipient<WakeUp>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            db,
            max_batch: max_batch.max(1),
            email_sync,
            metrics,
            queue: VecDeque::new(),
            committing: false,
        }
    }

    /// Starts the next batch unless one is in flight.
    fn commit_next_batch(&mut self, ctx: &mut Context<Self>) {
        if self.committing || self.queue.is_empty() {
            return;
        }
        self.committing = true;
        let take = self.queue.len().min(self.max_batch);
        let batch: Vec<Queued> = self.queue.drain(..take).collect();
        let db = self.db.clone();
        let work = async move {
            let candidates: Vec<Candidate> = batch.iter().map(|q| q.candidate.clone()).collect();
            let result = store::register_batch(&db, &candidates).await;
            let mut created_any = false;
            match result {
                Ok(outcomes) => {
                    for (queued, outcome) in batch.into_iter().zip(outcomes) {
                        created_any |= matches!(outcome, Outcome::Created(_));
                        // The caller may have gone (client disconnected): its user still exists,
                        // and a retry gets 409, or the first answer with an idempotency key.
                        let _ = queued.reply.send(Ok(outcome));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, batch = candidates.len(), "registration batch failed; nothing was written");
                    let error = RegistrationError::Unavailable(e.to_string());
                    for queued in batch {
                        let _ = queued.reply.send(Err(error.clone()));
                    }
                }
            }
            created_any
        };
        ctx.spawn(work.into_actor(self).map(|created_any, act, ctx| {
            act.committing = false;
            if created_any {
                act.wake_email_sync();
            }
            act.commit_next_batch(ctx);
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

impl Actor for RegistrationActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Idempotency keys are remembered 24 h; delete the expired ones now and then. Not a
        // registration, so it does not take the `committing` turn: it deletes old rows only.
        ctx.run_interval(KEY_SWEEP_EVERY, |act, ctx| {
            let db = act.db.clone();
            let sweep = async move {
                match store::delete_expired_keys(&db, 1000).await {
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

impl Handler<RegisterUser> for RegistrationActor {
    type Result = ResponseFuture<Result<Outcome, RegistrationError>>;

    fn handle(&mut self, msg: RegisterUser, ctx: &mut Self::Context) -> Self::Result {
        let (reply, answer) = oneshot::channel();
        self.queue.push_back(Queued {
            candidate: msg.0,
            reply,
        });
        self.commit_next_batch(ctx);
        Box::pin(async move {
            answer.await.unwrap_or_else(|_| {
                Err(RegistrationError::Unavailable(
                    "registration actor stopped".into(),
                ))
            })
        })
    }
}

impl Handler<Ping> for RegistrationActor {
    type Result = ();

    fn handle(&mut self, _: Ping, _: &mut Self::Context) {}
}
