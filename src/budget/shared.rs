//! The budget in PostgreSQL, shared by every instance on it (SPEC §3.6):
//! - `max_in_flight` slots per provider kind (`provider_slots`), each leased by one instance
//!   for `email_sync.lease`. A request uses a slot only if it is over before the slot's lease
//!   is (the rule of the rows' leases), so no two instances ever count on one slot at once; an
//!   instance keeps a slot for its next requests while the lease covers them, gives an idle one
//!   back after [`IDLE_SLOT`] unused, and a dead instance's slots come back when their lease expires.
//! - the requests-a-second allowance (`provider_budget.tat`): a GCRA whose theoretical arrival
//!   time moves forward by one interval per request in one statement, with one second's burst
//!   (as the in-process pace).
//! - the provider's pause (`provider_budget.paused_until`): written by the instance that got
//!   the 429, announced on [`SHARED_PAUSE_CHANNEL`] to every instance's listener, and read
//!   again before every claim.
//!
//! Times are the instances' own clocks, as the rows' leases are: they must agree (NTP).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseConnection, DbErr, Statement, Value};
use uuid::Uuid;

use super::{slot_covers, slot_is_free};

/// The PostgreSQL channel a recorded pause is announced on: `<kind> <until, Unix ms>`.
pub(crate) const SHARED_PAUSE_CHANNEL: &str = "signup_provider_pause";
/// How long a slot may sit unused in an instance before it is given back for the others.
pub(crate) const IDLE_SLOT: Duration = Duration::from_secs(1);
/// How often a request waiting for a slot asks the database again.
const SLOT_POLL: Duration = Duration::from_millis(25);
/// After a request could not get a slot in time: due again this much later.
const NO_SLOT_RETRY: Duration = Duration::from_millis(250);

/// One provider kind's budget in the database, as one instance uses it.
pub(crate) struct Shared {
    db: DatabaseConnection,
    kind: &'static str,
    /// `max_in_flight`.
    max: i32,
    /// `max_requests_per_second` (0: unlimited).
    per_second: u32,
    /// This instance, as `provider_slots.holder` names it.
    holder: Uuid,
    /// How long a slot is leased.
    lease: Duration,
    /// One attempt's timeout: a request started at `t` is over by `t + timeout`.
    timeout: Duration,
    /// Slots this instance holds and no request uses now.
    idle: std::sync::Mutex<Vec<Held>>,
    /// A slot was given back here.
    returned: tokio::sync::Notify,
    /// One request at a time asks the database for a slot; the others wait for it or for a
    /// slot given back here.
    asking: tokio::sync::Mutex<()>,
    /// [`Shared::own_pool`] as sea-orm's connection, once the kind's rows exist.
    ready: tokio::sync::OnceCell<DatabaseConnection>,
    /// See [`Shared::own_pool`].
    pool: std::sync::OnceLock<sea_orm::sqlx::PgPool>,
    /// A request asked for a slot: the pause listener starts, if it is not running.
    asked: tokio::sync::Notify,
    /// When a request last asked for a slot.
    last_asked: std::sync::Mutex<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    slot: i32,
    until: DateTime<Utc>,
    idle_since: Instant,
}

/// A slot a request holds while it is at the provider; given back to the instance's idle
/// slots when dropped.
pub(crate) struct SlotPermit {
    shared: Arc<Shared>,
    slot: i32,
    until: DateTime<Utc>,
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        self.shared.give_back(Held {
            slot: self.slot,
            until: self.until,
            idle_since: Instant::now(),
        });
    }
}

impl Shared {
    pub(crate) fn new(
        db: DatabaseConnection,
        kind: &'static str,
        max_in_flight: usize,
        per_second: u32,
        lease: Duration,
        timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            db,
            kind,
            max: i32::try_from(max_in_flight.max(1)).unwrap_or(i32::MAX),
            per_second,
            holder: Uuid::new_v4(),
            lease,
            timeout,
            idle: std::sync::Mutex::new(Vec::new()),
            returned: tokio::sync::Notify::new(),
            asking: tokio::sync::Mutex::new(()),
            ready: tokio::sync::OnceCell::new(),
            pool: std::sync::OnceLock::new(),
            asked: tokio::sync::Notify::new(),
            last_asked: std::sync::Mutex::new(Instant::now()),
        })
    }

    pub(crate) fn kind(&self) -> &'static str {
        self.kind
    }

    /// Resolves once a request asks for a slot (at once if one did since the last call).
    pub(crate) async fn wanted(&self) {
        self.asked.notified().await;
    }

    /// How long since a request last asked for a slot.
    pub(crate) fn unused_for(&self) -> Duration {
        self.last_asked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .elapsed()
    }

    /// The budget's own connections (two at most: the pause listener holds one, the budget's
    /// statements share the other), opened on first use on the email sync's thread, each
    /// closed after 5 s unused: slot leases and pauses never queue behind the claims and
    /// outcome writes of the email sync's pool (they did, and the PostgreSQL Mailchimp drain
    /// lost a tenth of its rate), and an idle instance holds one connection more, not three.
    pub(crate) fn own_pool(&self) -> &sea_orm::sqlx::PgPool {
        self.pool.get_or_init(|| {
            let options = self
                .db
                .get_postgres_connection_pool()
                .connect_options()
                .as_ref()
                .clone();
            sea_orm::sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .min_connections(0)
                .idle_timeout(Duration::from_secs(5))
                .connect_lazy_with(options)
        })
    }

    fn statement(sql: &str, values: Vec<Value>) -> Statement {
        Statement::from_sql_and_values(DatabaseBackend::Postgres, sql, values)
    }

    /// The budget's connections, the kind's budget row and slots created the first time.
    async fn ensure(&self) -> Result<&DatabaseConnection, DbErr> {
        self.ready
            .get_or_try_init(|| async {
                let db = sea_orm::SqlxPostgresConnector::from_sqlx_postgres_pool(
                    self.own_pool().clone(),
                );
                db.execute_raw(Self::statement(
                    r#"INSERT INTO "provider_budget" ("kind") VALUES ($1) ON CONFLICT ("kind") DO NOTHING"#,
                    vec![self.kind.into()],
                ))
                .await?;
                db.execute_raw(Self::statement(
                    r#"INSERT INTO "provider_slots" ("kind", "slot") SELECT $1, generate_series(0, $2 - 1) ON CONFLICT DO NOTHING"#,
                    vec![self.kind.into(), self.max.into()],
                ))
                .await?;
                Ok::<DatabaseConnection, DbErr>(db)
            })
            .await
    }

    /// A slot for one request that must start by `send_by`: one of this instance's idle slots
    /// whose lease covers the request, else one from the database (a free one, or an idle one
    /// of ours leased anew); waits while every slot is taken. `Err(wait)`: none came in time,
    /// or the database did not answer.
    pub(crate) async fn slot(
        self: &Arc<Self>,
        send_by: DateTime<Utc>,
    ) -> Result<SlotPermit, Duration> {
        *self
            .last_asked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
        self.asked.notify_one();
        let db = match self.ensure().await {
            Ok(db) => db,
            Err(e) => {
                tracing::warn!(error = %e, "cannot set up the shared provider budget; the request waits");
                return Err(NO_SLOT_RETRY);
            }
        };
        loop {
            let now = Utc::now();
            if now > send_by {
                return Err(NO_SLOT_RETRY);
            }
            let renewable = match self.take_idle(now) {
                Ok(held) => return Ok(self.permit(held)),
                Err(renewable) => renewable,
            };
            let asked = match self.asking.try_lock() {
                Ok(_asking) => Some(self.acquire(db, now, &renewable).await),
                Err(_) => None,
            };
            match asked {
                Some(Ok(Some(held))) => {
                    self.forget_idle(held.slot);
                    // There may be more free: the next waiting request asks at once, not at its
                    // next poll (a burst of requests leases its slots one statement after
                    // another, not one poll after another).
                    self.returned.notify_one();
                    return Ok(self.permit(held));
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "cannot lease a provider slot; the request is due again shortly");
                    return Err(NO_SLOT_RETRY);
                }
                Some(Ok(None)) | None => {}
            }
            tokio::select! {
                () = self.returned.notified() => {}
                () = tokio::time::sleep(SLOT_POLL) => {}
            }
        }
    }

    fn permit(self: &Arc<Self>, held: Held) -> SlotPermit {
        SlotPermit {
            shared: Arc::clone(self),
            slot: held.slot,
            until: held.until,
        }
    }

    /// An idle slot whose lease covers a request started at `now`; else the idle slots whose
    /// lease still runs (to be leased anew). Slots whose lease has passed are no longer ours.
    fn take_idle(&self, now: DateTime<Utc>) -> Result<Held, Vec<i32>> {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        idle.retain(|held| !slot_is_free(Some(held.until), now));
        if let Some(place) = idle
            .iter()
            .position(|held| slot_covers(held.until, now, self.timeout))
        {
            return Ok(idle.swap_remove(place));
        }
        Err(idle.iter().map(|held| held.slot).collect())
    }

    fn forget_idle(&self, slot: i32) {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|held| held.slot != slot);
    }

    fn give_back(&self, held: Held) {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(held);
        self.returned.notify_one();
    }

    /// Leases one slot until `now + lease`: one of `renewable` (ours, idle, its lease too
    /// short for a request) first, else a free one (never leased, given back, or its lease
    /// passed: a dead instance's).
    async fn acquire(
        &self,
        db: &DatabaseConnection,
        now: DateTime<Utc>,
        renewable: &[i32],
    ) -> Result<Option<Held>, DbErr> {
        let until = now + chrono::Duration::from_std(self.lease).unwrap_or_default();
        // Our own slots by number: integers of our own, never input.
        let ours = if renewable.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = renewable.iter().map(i32::to_string).collect();
            format!(r#" OR ("holder" = $1 AND "slot" IN ({}))"#, list.join(","))
        };
        let sql = format!(
            r#"UPDATE "provider_slots" AS s SET "holder" = $1, "lease_until" = $2
               FROM (SELECT "kind", "slot" FROM "provider_slots"
                     WHERE "kind" = $3 AND "slot" < $4
                       AND ("holder" IS NULL OR "lease_until" IS NULL OR "lease_until" <= $5{ours})
                     ORDER BY ("holder" = $1) IS TRUE DESC, "slot"
                     LIMIT 1 FOR UPDATE SKIP LOCKED) AS free
               WHERE s."kind" = free."kind" AND s."slot" = free."slot"
               RETURNING s."slot""#
        );
        let row = db
            .query_one_raw(Self::statement(
                &sql,
                vec![
                    self.holder.into(),
                    until.into(),
                    self.kind.into(),
                    self.max.into(),
                    now.into(),
                ],
            ))
            .await?;
        Ok(match row {
            Some(row) => Some(Held {
                slot: row.try_get::<i32>("", "slot")?,
                until,
                idle_since: Instant::now(),
            }),
            None => None,
        })
    }

    /// Gives back the slots idle here for [`IDLE_SLOT`] or more (every idle one, with
    /// `all`), so that another instance may use them.
    pub(crate) async fn release_idle(&self, all: bool) {
        let released: Vec<i32> = {
            let mut idle = self
                .idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (gone, kept): (Vec<Held>, Vec<Held>) = idle
                .drain(..)
                .partition(|held| all || held.idle_since.elapsed() >= IDLE_SLOT);
            *idle = kept;
            gone.into_iter().map(|held| held.slot).collect()
        };
        if released.is_empty() {
            return;
        }
        let list: Vec<String> = released.iter().map(i32::to_string).collect();
        let sql = format!(
            r#"UPDATE "provider_slots" SET "holder" = NULL, "lease_until" = NULL
               WHERE "kind" = $1 AND "holder" = $2 AND "slot" IN ({})"#,
            list.join(",")
        );
        let Ok(db) = self.ensure().await else {
            return;
        };
        if let Err(e) = db
            .execute_raw(Self::statement(
                &sql,
                vec![self.kind.into(), self.holder.into()],
            ))
            .await
        {
            // They come back when their lease ends.
            tracing::debug!(error = %e, slots = released.len(), "cannot give provider slots back");
        }
    }

    /// After a drain: the budget's connections close, and the email sync's pool with them
    /// (this budget holds a handle of it, which would otherwise keep its connections open
    /// after the email sync let go of it).
    pub(crate) async fn close(&self) {
        if let Some(pool) = self.pool.get() {
            pool.close().await;
        }
        self.db.get_postgres_connection_pool().close().await;
    }

    /// Waits for this request's turn in the shared requests-a-second allowance; `Err(wait)` if
    /// it would come after `send_by`.
    pub(crate) async fn pace(&self, send_by: DateTime<Utc>) -> Result<(), Duration> {
        if self.per_second == 0 {
            return Ok(());
        }
        let db = match self.ensure().await {
            Ok(db) => db,
            Err(e) => {
                tracing::warn!(error = %e, "cannot set up the shared provider budget; the request waits");
                return Err(NO_SLOT_RETRY);
            }
        };
        let interval = 1_000_000 / i64::from(self.per_second);
        let now = Utc::now();
        let row = db
            .query_one_raw(Self::statement(
                r#"UPDATE "provider_budget"
                   SET "tat" = GREATEST(COALESCE("tat", $1), $1) + $2 * INTERVAL '1 microsecond'
                   WHERE "kind" = $3 RETURNING "tat""#,
                vec![now.into(), interval.into(), self.kind.into()],
            ))
            .await;
        let tat = match row {
            Ok(Some(row)) => row.try_get::<DateTime<Utc>>("", "tat").ok(),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take a turn in the shared requests-a-second allowance");
                return Err(NO_SLOT_RETRY);
            }
        };
        let Some(tat) = tat else {
            return Err(NO_SLOT_RETRY);
        };
        // One second's burst: the turn is one second before the theoretical arrival time.
        let turn = tat - chrono::Duration::seconds(1);
        let now = Utc::now();
        if turn <= now {
            return Ok(());
        }
        if turn > send_by {
            return Err((turn - now).to_std().unwrap_or(NO_SLOT_RETRY));
        }
        tokio::time::sleep((turn - now).to_std().unwrap_or_default()).await;
        Ok(())
    }

    /// Records the provider's pause until `until` for every instance, and announces it.
    pub(crate) async fn record_pause(&self, until: DateTime<Utc>) {
        let Ok(db) = self.ensure().await else {
            return;
        };
        let recorded = db
            .execute_raw(Self::statement(
                r#"UPDATE "provider_budget" SET "paused_until" = GREATEST(COALESCE("paused_until", $1), $1) WHERE "kind" = $2"#,
                vec![until.into(), self.kind.into()],
            ))
            .await;
        let payload = format!("{} {}", self.kind, until.timestamp_millis());
        let announced = db
            .execute_raw(Self::statement(
                "SELECT pg_notify($1, $2)",
                vec![SHARED_PAUSE_CHANNEL.into(), payload.into()],
            ))
            .await;
        if let Err(e) = recorded.and(announced) {
            tracing::warn!(error = %e, "cannot share the provider's pause; the other instances learn it from their own 429s");
        }
    }

    /// The pause recorded for this kind, if it lasts.
    /// Read before every claim, on the email sync's own connections (the claim's, right
    /// after): the budget's are for instances that are sending.
    pub(crate) async fn paused_until(&self) -> Option<DateTime<Utc>> {
        let row = self
            .db
            .query_one_raw(Self::statement(
                r#"SELECT "paused_until" FROM "provider_budget" WHERE "kind" = $1"#,
                vec![self.kind.into()],
            ))
            .await
            .ok()??;
        row.try_get::<Option<DateTime<Utc>>>("", "paused_until")
            .ok()
            .flatten()
            .filter(|until| *until > Utc::now())
    }
}

/// Reads an announcement on [`SHARED_PAUSE_CHANNEL`]: the kind and until when.
pub(crate) fn read_announcement(payload: &str) -> Option<(&str, DateTime<Utc>)> {
    let (kind, millis) = payload.split_once(' ')?;
    let until = DateTime::from_timestamp_millis(millis.trim().parse().ok()?)?;
    Some((kind, until))
}
