//! SQLite's write turns: one queue for this process's writers, so that they take turns instead
//! of starving each other in SQLite's busy handler.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;

use sea_orm::DatabaseConnection;
use tokio::sync::oneshot;

use super::is_postgres;

/// Turns at writing for this process's SQLite writers: the RegistrationActor's commits, and the
/// email sync's claims and outcome writes.
///
/// Why turns: SQLite lets one writer in at a time, and a connection that finds the lock taken
/// does not queue for it: it sleeps in SQLite's busy handler and polls (1, 2, 5 … up to 100 ms a
/// sleep). Two writers that each write back to back starve one another: measured, the
/// benchmark's provider-up line sometimes fell from ~8 000 to ~1 000 registrations/s with p99
/// near a second, registration batches sleeping while the email sync's writes took the lock
/// turn after turn. Waiting here instead, a writer starts the moment the other finishes.
///
/// Whose turn: registrations first, since a person waits for each; deliveries are what the
/// design makes asynchronous. But a delivery write that waits is passed over by at most
/// `REGISTRATIONS_BEFORE_DELIVERIES` (3) registration batches in a row, so deliveries keep going
/// under a flood of registrations (and each of their writes, waiting longer, stores more
/// outcomes at once). Among writers of one kind, first come first served. PostgreSQL runs
/// writers at once: no turns there.
#[derive(Clone, Default)]
pub struct WriteTurns(Option<Arc<Turns>>);

/// Who asks for a turn at writing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writes {
    /// A registration batch: someone is waiting for its answer.
    Registrations,
    /// The email sync's claims and outcome writes.
    Deliveries,
}

/// How many registration batches in a row may go before a delivery write that waits.
pub(crate) const REGISTRATIONS_BEFORE_DELIVERIES: usize = 3;

#[derive(Default)]
struct Turns(std::sync::Mutex<Queue>);

#[derive(Default)]
struct Queue {
    taken: bool,
    registrations: VecDeque<oneshot::Sender<()>>,
    deliveries: VecDeque<oneshot::Sender<()>>,
    /// Registration batches that went while a delivery write waited.
    passed_over: usize,
}

impl Queue {
    /// Hands the turn to the next waiter, or leaves it free if nobody waits.
    fn pass_on(&mut self) {
        loop {
            let deliveries_next = !self.deliveries.is_empty()
                && (self.registrations.is_empty()
                    || self.passed_over >= REGISTRATIONS_BEFORE_DELIVERIES);
            let next = if deliveries_next {
                self.passed_over = 0;
                self.deliveries.pop_front()
            } else {
                self.passed_over = if self.deliveries.is_empty() {
                    0
                } else {
                    self.passed_over + 1
                };
                self.registrations.pop_front()
            };
            match next {
                None => {
                    self.taken = false;
                    return;
                }
                // A waiter that gave up is skipped.
                Some(waiter) => {
                    if waiter.send(()).is_ok() {
                        return;
                    }
                }
            }
        }
    }
}

impl Turns {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        // Nothing under the lock can panic; take it even so rather than stop writing.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn take(self: &Arc<Self>, writes: Writes) -> Turn {
        loop {
            let granted = {
                let mut queue = self.queue();
                if !queue.taken {
                    queue.taken = true;
                    return Turn(Arc::clone(self));
                }
                let (waiter, granted) = oneshot::channel();
                match writes {
                    Writes::Registrations => queue.registrations.push_back(waiter),
                    Writes::Deliveries => queue.deliveries.push_back(waiter),
                }
                granted
            };
            let mut waiting = Waiting {
                turns: self,
                granted,
                settled: false,
            };
            let handed = (&mut waiting.granted).await;
            waiting.settled = true;
            // A waiter's sender goes only by being sent to; if it ever went otherwise, queue again.
            if handed.is_ok() {
                return Turn(Arc::clone(self));
            }
        }
    }
}

/// A place in the queue for a turn. Dropped while waiting (its write was cancelled), it gives
/// the place up, and passes the turn on if it had been handed the turn meanwhile.
struct Waiting<'a> {
    turns: &'a Turns,
    granted: oneshot::Receiver<()>,
    settled: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        self.granted.close();
        if self.granted.try_recv().is_ok() {
            self.turns.queue().pass_on();
        }
    }
}

/// The turn at writing, until dropped.
pub struct Turn(Arc<Turns>);

impl Turn {
    /// Whether the holder may write again without giving the turn up: yes unless a delivery
    /// write waits and has been passed over [`REGISTRATIONS_BEFORE_DELIVERIES`] times. (The
    /// RegistrationActor keeps its turn from one batch to the next while callers wait: asking
    /// anew after each, it would find the queue empty of registrations every time.)
    pub(crate) fn may_write_again(&self) -> bool {
        let mut queue = self.0.queue();
        if queue.deliveries.is_empty() {
            queue.passed_over = 0;
            return true;
        }
        if queue.passed_over >= REGISTRATIONS_BEFORE_DELIVERIES {
            return false;
        }
        queue.passed_over += 1;
        true
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.0.queue().pass_on();
    }
}

impl WriteTurns {
    /// Turns if `db` is SQLite; none for PostgreSQL.
    pub fn for_database(db: &DatabaseConnection) -> Self {
        if is_postgres(db) {
            Self(None)
        } else {
            Self(Some(Arc::default()))
        }
    }

    /// Whether writers take turns here (SQLite), rather than run at once (PostgreSQL).
    pub(crate) fn taken(&self) -> bool {
        self.0.is_some()
    }

    /// Writers of `writes` waiting for their turn now (0 on PostgreSQL): what a test watches
    /// instead of guessing how long reaching the queue takes.
    pub fn waiting(&self, writes: Writes) -> usize {
        self.0.as_ref().map_or(0, |turns| {
            let queue = turns.queue();
            let waiters = match writes {
                Writes::Registrations => &queue.registrations,
                Writes::Deliveries => &queue.deliveries,
            };
            waiters.iter().filter(|waiter| !waiter.is_closed()).count()
        })
    }

    /// Runs `write` (one write transaction) in this process's next turn for `writes`.
    pub async fn run<F: Future>(&self, writes: Writes, write: F) -> F::Output {
        let _turn = self.take(writes).await;
        write.await
    }

    /// This process's next turn for `writes`, held until dropped; none on PostgreSQL.
    pub async fn take(&self, writes: Writes) -> Option<Turn> {
        match &self.0 {
            Some(turns) => Some(turns.take(writes).await),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn sqlite_writers_take_turns_in_the_order_they_came() {
        use std::sync::Mutex;
        let dir = tempfile::tempdir().expect("temp dir");
        let settings = crate::configuration::DatabaseSettings {
            url: format!("sqlite://{}", dir.path().join("t.db").display()).into(),
            ..Default::default()
        };
        let db = crate::database::connect(&settings).await.expect("opens");
        let turns = super::WriteTurns::for_database(&db);
        let log = std::sync::Arc::new(Mutex::new(Vec::new()));
        // Three writers, each yielding in the middle of its "transaction": with turns, none
        // starts before the one before it has ended, and they go in the order they came.
        let writers = (0..3).map(|i| {
            let (turns, log) = (turns.clone(), std::sync::Arc::clone(&log));
            async move {
                turns
                    .run(super::Writes::Registrations, async {
                        log.lock().expect("log").push(format!("start {i}"));
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                        log.lock().expect("log").push(format!("end {i}"));
                    })
                    .await;
            }
        });
        futures_util::future::join_all(writers).await;
        let log = log.lock().expect("log").clone();
        assert_eq!(
            log,
            ["start 0", "end 0", "start 1", "end 1", "start 2", "end 2"]
        );
    }

    /// SQLite's turns without a database: the order is the queue's alone.
    fn sqlite_turns() -> super::WriteTurns {
        super::WriteTurns(Some(std::sync::Arc::default()))
    }

    #[tokio::test]
    async fn registrations_go_first_but_pass_a_waiting_delivery_write_at_most_three_times() {
        use super::Writes::{Deliveries, Registrations};
        use std::sync::Mutex;
        assert_eq!(super::REGISTRATIONS_BEFORE_DELIVERIES, 3);
        let turns = sqlite_turns();
        let log = std::sync::Arc::new(Mutex::new(Vec::new()));
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let holder = tokio::spawn({
            let turns = turns.clone();
            async move { turns.run(Registrations, released).await }
        });
        tokio::task::yield_now().await;
        // While the turn is held they queue in this order: a delivery write, five registration
        // batches, another delivery write.
        let mut writers = Vec::new();
        let queued = [
            ("d1", Deliveries),
            ("r1", Registrations),
            ("r2", Registrations),
            ("r3", Registrations),
            ("r4", Registrations),
            ("r5", Registrations),
            ("d2", Deliveries),
        ];
        for (name, writes) in queued {
            let (turns, log) = (turns.clone(), std::sync::Arc::clone(&log));
            writers.push(tokio::spawn(async move {
                turns
                    .run(writes, async {
                        log.lock().expect("log").push(format!("start {name}"));
                        tokio::task::yield_now().await;
                        log.lock().expect("log").push(format!("end {name}"));
                    })
                    .await;
            }));
            tokio::task::yield_now().await;
        }
        release.send(()).expect("the holder waits");
        holder.await.expect("holder").expect("released");
        for writer in writers {
            writer.await.expect("writer");
        }
        let log = log.lock().expect("log").clone();
        let order: Vec<&str> = log
            .iter()
            .filter_map(|entry| entry.strip_prefix("start "))
            .collect();
        assert_eq!(order, ["r1", "r2", "r3", "d1", "r4", "r5", "d2"]);
        // One at a time: every start is followed by its own end.
        for pair in log.chunks(2) {
            assert_eq!(pair[0].replace("start", "end"), pair[1], "{log:?}");
        }
    }

    #[tokio::test]
    async fn a_held_turn_may_write_again_until_a_waiting_delivery_write_was_passed_over_three_times()
     {
        use super::Writes::{Deliveries, Registrations};
        use futures_util::FutureExt;
        let turns = sqlite_turns();
        let held = turns.take(Registrations).await.expect("SQLite takes turns");
        // Nobody else waits: the holder may go on as long as it likes.
        for _ in 0..10 {
            assert!(held.may_write_again());
        }
        let mut delivery = Box::pin(turns.run(Deliveries, async { "delivered" }));
        assert!(delivery.as_mut().now_or_never().is_none(), "waits");
        for _ in 0..super::REGISTRATIONS_BEFORE_DELIVERIES {
            assert!(held.may_write_again());
        }
        assert!(!held.may_write_again(), "the delivery write's turn now");
        drop(held);
        assert_eq!(delivery.now_or_never(), Some("delivered"));
    }

    #[tokio::test]
    async fn a_write_cancelled_while_waiting_passes_its_turn_on() {
        use super::Writes::{Deliveries, Registrations};
        use futures_util::FutureExt;
        let turns = sqlite_turns();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let mut holder = Box::pin(turns.run(Registrations, released));
        assert!(holder.as_mut().now_or_never().is_none(), "holds the turn");

        // Two waiters: the first is handed the turn and dropped before it runs (its caller
        // went away), the second must get the turn all the same.
        let mut gives_up = Box::pin(turns.run(Registrations, async {}));
        assert!(gives_up.as_mut().now_or_never().is_none(), "waits");
        let mut waits = Box::pin(turns.run(Deliveries, async { "written" }));
        assert!(waits.as_mut().now_or_never().is_none(), "waits");
        release.send(()).expect("the holder waits");
        assert!(holder.now_or_never().is_some(), "the holder ends");
        drop(gives_up);
        assert_eq!(
            tokio::time::timeout(std::time::Duration::from_secs(5), waits).await,
            Ok("written")
        );

        // And a waiter dropped before its turn came leaves the queue without holding it.
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let mut holder = Box::pin(turns.run(Deliveries, released));
        assert!(holder.as_mut().now_or_never().is_none(), "holds the turn");
        let mut gives_up = Box::pin(turns.run(Deliveries, async {}));
        assert!(gives_up.as_mut().now_or_never().is_none(), "waits");
        drop(gives_up);
        release.send(()).expect("the holder waits");
        assert!(holder.now_or_never().is_some(), "the holder ends");
        assert_eq!(
            turns.run(Registrations, async { "free" }).now_or_never(),
            Some("free"),
            "the turn is free"
        );
    }
}
