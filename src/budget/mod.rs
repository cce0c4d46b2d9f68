//! The provider's budget (SPEC §3.6): how many requests may be at the provider at once
//! (`max_in_flight`), how many a second (`max_requests_per_second`), and the provider's pause
//! after a 429 with its reset. A provider's limits are per account, not per process: with
//! several instances on one PostgreSQL the budget lives in the database ([`Shared`]) and holds
//! for all of them together; one process (SQLite) keeps its pace and pause in memory, and its
//! delivery core bounds the requests in flight.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::email::AttemptOutcome;

mod shared;

pub(crate) use shared::{IDLE_SLOT, SHARED_PAUSE_CHANNEL, Shared, SlotPermit};

/// The budget every request to the provider is admitted by.
pub(crate) struct Budget {
    /// The requests-a-second allowance of one process (`None`: unlimited, or shared).
    pace: Option<governor::DefaultDirectRateLimiter>,
    /// Until when the provider asked every request to wait: its own 429s, and (shared) those
    /// of the other instances as they become known.
    paused_until: std::sync::Mutex<Option<Instant>>,
    /// Several instances: slots, allowance and pause in the database.
    shared: Option<Arc<Shared>>,
}

/// A request's place in the budget, held while it is at the provider.
pub(crate) enum Permit {
    /// One process: its delivery core bounds the requests in flight.
    Local,
    /// One of the shared `max_in_flight` slots, given back when dropped.
    Slot(#[allow(dead_code)] SlotPermit),
}

impl Budget {
    /// One process: at most `per_second` requests a second (0: unlimited), with no burst
    /// beyond one second's worth.
    pub(crate) fn local(per_second: u32) -> Self {
        let pace = std::num::NonZeroU32::new(per_second)
            .map(|n| governor::RateLimiter::direct(governor::Quota::per_second(n)));
        Self {
            pace,
            paused_until: std::sync::Mutex::new(None),
            shared: None,
        }
    }

    /// Several instances: the budget in the database.
    pub(crate) fn shared(shared: Arc<Shared>) -> Self {
        Self {
            pace: None,
            paused_until: std::sync::Mutex::new(None),
            shared: Some(shared),
        }
    }

    /// The shared budget, if there is one.
    pub(crate) fn shared_part(&self) -> Option<&Arc<Shared>> {
        self.shared.as_ref()
    }

    /// Waits for the next request's turn, which must come by `send_by` (the latest moment its
    /// rows' leases let it start); `Err(wait)` while the provider's pause lasts, or if the turn
    /// would come too late (the rows are then due again after `wait`, no attempt spent).
    pub(crate) async fn admit(&self, send_by: DateTime<Utc>) -> Result<Permit, Duration> {
        self.check_pause()?;
        let Some(shared) = &self.shared else {
            if let Some(pace) = &self.pace {
                pace.until_ready().await;
            }
            // A 429 may have come back while this request waited for its token.
            self.check_pause()?;
            return Ok(Permit::Local);
        };
        shared.pace(send_by).await?;
        self.check_pause()?;
        let slot = shared.slot(send_by).await?;
        // Another instance's 429 may have become known while this request waited.
        self.check_pause()?;
        Ok(Permit::Slot(slot))
    }

    fn check_pause(&self) -> Result<(), Duration> {
        match self.paused_until() {
            Some(until) => Err(until.saturating_duration_since(Instant::now())),
            None => Ok(()),
        }
    }

    /// Until when requests wait for the provider's rate-limit reset, if they do now.
    pub(crate) fn paused_until(&self) -> Option<Instant> {
        let paused = self
            .paused_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        paused.filter(|until| *until > Instant::now())
    }

    /// Holds every request back until `until` (this process's view of the pause).
    pub(crate) fn pause_until(&self, until: Instant) {
        let mut paused = self
            .paused_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if paused.is_none_or(|at| at < until) {
            *paused = Some(until);
        }
    }

    /// Notes what a request came to: a 429 that says when the limit resets pauses every
    /// request until then, of every instance when the budget is shared.
    pub(crate) async fn observe<'a>(&self, outcomes: impl IntoIterator<Item = &'a AttemptOutcome>) {
        let reset = outcomes
            .into_iter()
            .filter_map(AttemptOutcome::rate_limit_reset)
            .max();
        let Some(wait) = reset else {
            return;
        };
        self.pause_until(Instant::now() + wait);
        if let Some(shared) = &self.shared {
            let until = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
            shared.record_pause(until).await;
        }
    }

    /// Before a claim (shared budget): the pause another instance recorded, if it lasts; this
    /// process holds its requests back until then too.
    pub(crate) async fn read_shared_pause(&self) -> Option<DateTime<Utc>> {
        let until = self.shared.as_ref()?.paused_until().await?;
        self.pause_until(instant_of(until));
        Some(until)
    }
}

impl Budget {
    /// Shared budget: follows the pauses the other instances record (LISTEN on
    /// [`SHARED_PAUSE_CHANNEL`]) while this instance sends requests, so that their 429s hold
    /// its requests back too, claimed rows included. Listens only while it has requests to
    /// send (until [`LISTEN_IDLE`] after the last): an idle instance holds no connection for
    /// it, and a pause recorded while it was not listening is read before its next claim, and
    /// once more as it starts listening. Runs until dropped.
    pub(crate) async fn follow_shared_pauses(&self) {
        let Some(shared) = &self.shared else {
            return;
        };
        loop {
            shared.wanted().await;
            match self.listen(shared).await {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for the other instances' provider pauses");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Listens until this instance has sent nothing for [`LISTEN_IDLE`], or the connection
    /// is lost.
    async fn listen(&self, shared: &Shared) -> Result<(), sea_orm::sqlx::Error> {
        // One of the budget's own connections, outside the email sync's pool.
        let mut listener =
            sea_orm::sqlx::postgres::PgListener::connect_with(shared.own_pool()).await?;
        listener.listen(SHARED_PAUSE_CHANNEL).await?;
        if let Some(until) = shared.paused_until().await {
            self.pause_until(instant_of(until));
        }
        loop {
            tokio::select! {
                received = listener.recv() => {
                    let notification = received?;
                    if let Some((kind, until)) = shared::read_announcement(notification.payload())
                        && kind == shared.kind()
                    {
                        self.pause_until(instant_of(until));
                    }
                }
                () = tokio::time::sleep(LISTEN_IDLE / 4) => {
                    if shared.unused_for() >= LISTEN_IDLE {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// How long after its last request an instance stops listening for the others' pauses.
pub(crate) const LISTEN_IDLE: Duration = Duration::from_secs(30);

/// `at` on this process's monotonic clock (now, if it has passed).
pub(crate) fn instant_of(at: DateTime<Utc>) -> Instant {
    let ahead = (at - Utc::now()).to_std().unwrap_or_default();
    Instant::now() + ahead
}

/// Whether a slot leased until `until` is free for anyone to take at `now` (the rule the
/// database's claim of a slot applies, and the simulation's).
pub(crate) fn slot_is_free(until: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    until.is_none_or(|until| until <= now)
}

/// Whether a request started at `now`, given its whole `timeout`, is over while the slot
/// leased until `until` is still its holder's: the one rule for using a slot, so that a slot
/// never carries a request another instance could overlap.
pub(crate) fn slot_covers(until: DateTime<Utc>, now: DateTime<Utc>, timeout: Duration) -> bool {
    crate::delivery::may_send(until, now, timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_429_with_a_reset_holds_every_request_back_until_then_and_nothing_else_does() {
        let budget = Budget::local(0);
        let later = Utc::now() + chrono::Duration::minutes(1);
        assert!(budget.admit(later).await.is_ok());
        let limited = |status, retry_after| AttemptOutcome::Transient {
            status: Some(status),
            error: "limited".into(),
            retry_after,
        };
        // A 503 asking to wait, or a 429 without a reset: that row's matter, not a pause.
        budget
            .observe([
                &limited(503, Some(Duration::from_secs(60))),
                &limited(429, None),
            ])
            .await;
        assert!(budget.admit(later).await.is_ok());
        budget
            .observe([&limited(429, Some(Duration::from_secs(60)))])
            .await;
        let held = budget.admit(later).await.err().expect("paused");
        assert!(held > Duration::from_secs(58) && held <= Duration::from_secs(60));
    }

    #[test]
    fn a_slot_is_used_only_for_a_request_that_ends_within_its_lease() {
        let now = Utc::now();
        let timeout = Duration::from_secs(10);
        assert!(slot_covers(
            now + chrono::Duration::seconds(10),
            now,
            timeout
        ));
        assert!(!slot_covers(
            now + chrono::Duration::seconds(9),
            now,
            timeout
        ));
        assert!(slot_is_free(None, now));
        assert!(slot_is_free(Some(now), now));
        assert!(!slot_is_free(
            Some(now + chrono::Duration::milliseconds(1)),
            now
        ));
    }
}
