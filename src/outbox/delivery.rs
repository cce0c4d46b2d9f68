//! Outbox queries of the delivery side: claim due rows with a lease, record each attempt's
//! outcome, release claims, delete old delivered rows. SQLite and PostgreSQL.
//!
//! Why a lease (`locked_until`) rather than a lock held for the whole delivery: a delivery can
//! take the provider's full timeout, and holding a transaction open that long would block other
//! instances and, on SQLite, every writer. The lease value doubles as the claim's token: every
//! update is conditioned on it, so an instance whose lease expired (and whose row another
//! instance took over) cannot overwrite the newer claim.

use chrono::{DateTime, SubsecRound, Utc};
use entity::email_outbox::{self, EventType, Status};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseBackend, DatabaseConnection, DbErr,
    EntityTrait, FromQueryResult, QueryFilter, QueryOrder, QueryTrait, Statement, TransactionTrait,
};
use uuid::Uuid;

use crate::database::is_postgres;

/// A claimed row: deliver it, then record the outcome with its `lease`.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub row: email_outbox::Model,
    /// The `locked_until` this claim set; the token of every later update.
    pub lease: DateTime<Utc>,
}

/// Claims up to `limit` due rows, oldest due first, for `lease` from `now`.
///
/// On PostgreSQL `FOR UPDATE SKIP LOCKED` lets several instances claim concurrently without
/// waiting on or double-claiming each other's rows. On SQLite the single statement runs in the
/// database's one write transaction at a time, which gives the same guarantee.
pub async fn claim(
    db: &DatabaseConnection,
    limit: usize,
    lease: std::time::Duration,
    now: DateTime<Utc>,
) -> Result<Vec<Claimed>, DbErr> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let now = now.trunc_subsecs(6);
    let until = (now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(60)))
        .trunc_subsecs(6);
    let limit = limit as i64;
    // Order per user and per provider contact (SPEC §6): a row is due only once no earlier row
    // of its user, and no earlier-written deletion about the same contact (the keyed hash of
    // the normalised email, of any user), is pending or still leased by anyone (a cancelled row
    // whose delivery is in flight included). So a deletion never overtakes the registration it
    // undoes, and an erased person's deletion reaches the provider before the registration of
    // whoever takes the address next. Earlier deletions are enough: an address belongs to one
    // live user at a time, so any earlier row about it of another user is an erased user's,
    // whose deletion stays pending behind it (the simulation walks this rule). Written order:
    // SQLite's rowid (one writer at a time), PostgreSQL's `written` sequence. Rows from before
    // `contact` existed (NULL) match no other row here and keep the per-user order.
    let statement = claim_statement(db, until, now, limit);
    let mut rows = email_outbox::Model::find_by_statement(statement)
        .all(db)
        .await?;
    rows.sort_by_key(|r| r.next_attempt_at);
    Ok(rows
        .into_iter()
        .map(|row| Claimed { row, lease: until })
        .collect())
}

/// The claim statement (one statement on both databases): rows due at `now`, oldest due
/// first, none while an earlier row of its user or about its contact is pending or leased.
fn claim_statement(
    db: &DatabaseConnection,
    until: DateTime<Utc>,
    now: DateTime<Utc>,
    limit: i64,
) -> Statement {
    if is_postgres(db) {
        Statement::from_sql_and_values(
            DatabaseBackend::Postgres,
            "UPDATE email_outbox SET locked_until = $1, claimed_at = $2 WHERE id IN (\
               SELECT o.id FROM email_outbox o \
               WHERE o.status = 'pending' AND o.next_attempt_at <= $2 \
                 AND (o.locked_until IS NULL OR o.locked_until <= $2) \
                 AND NOT EXISTS (SELECT 1 FROM email_outbox e \
                   WHERE e.user_id = o.user_id AND e.seq < o.seq \
                     AND (e.status = 'pending' OR e.locked_until > $2)) \
                 AND NOT EXISTS (SELECT 1 FROM email_outbox e \
                   WHERE e.contact = o.contact AND e.event = 'user.deleted' \
                     AND e.written < o.written \
                     AND (e.status = 'pending' OR e.locked_until > $2)) \
               ORDER BY o.next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING *",
            [until.into(), now.into(), limit.into()],
        )
    } else {
        Statement::from_sql_and_values(
            DatabaseBackend::Sqlite,
            "UPDATE email_outbox SET locked_until = ?1, claimed_at = ?2 WHERE id IN (\
               SELECT o.id FROM email_outbox o \
               WHERE o.status = 'pending' AND o.next_attempt_at <= ?2 \
                 AND (o.locked_until IS NULL OR o.locked_until <= ?2) \
                 AND NOT EXISTS (SELECT 1 FROM email_outbox e \
                   WHERE e.user_id = o.user_id AND e.seq < o.seq \
                     AND (e.status = 'pending' OR e.locked_until > ?2)) \
                 AND NOT EXISTS (SELECT 1 FROM email_outbox e \
                   WHERE e.contact = o.contact AND e.event = 'user.deleted' \
                     AND e.rowid < o.rowid \
                     AND (e.status = 'pending' OR e.locked_until > ?2)) \
               ORDER BY o.next_attempt_at LIMIT ?3) \
             RETURNING *",
            [until.into(), now.into(), limit.into()],
        )
    }
}

/// The database's plan for the claim statement (SQLite `EXPLAIN QUERY PLAN`, PostgreSQL
/// `EXPLAIN` with sequential scans priced out, as on a table large enough to need an index),
/// one line per step: what an operator or a test reads to see which indexes the claim walks.
pub async fn claim_plan(db: &DatabaseConnection) -> Result<String, DbErr> {
    let now = Utc::now().trunc_subsecs(6);
    let claim = claim_statement(db, now, now, 1);
    let postgres = is_postgres(db);
    let explain = Statement {
        sql: format!(
            "{} {}",
            if postgres {
                "EXPLAIN"
            } else {
                "EXPLAIN QUERY PLAN"
            },
            claim.sql
        ),
        ..claim
    };
    let txn = db.begin().await?;
    if postgres {
        txn.execute_unprepared("SET LOCAL enable_seqscan = off")
            .await?;
    }
    let rows = txn.query_all_raw(explain).await?;
    txn.rollback().await?;
    let column = if postgres { "QUERY PLAN" } else { "detail" };
    rows.iter()
        .map(|row| row.try_get::<String>("", column))
        .collect::<Result<Vec<_>, _>>()
        .map(|lines| lines.join("\n"))
}

/// How an attempt ended, as stored.
#[derive(Debug, Clone)]
pub enum Completion {
    /// `job`: the provider's import job that applies it later, if it named one (SPEC §6).
    Delivered {
        status: u16,
        job: Option<String>,
    },
    Retry {
        at: DateTime<Utc>,
        status: Option<u16>,
        error: String,
    },
    Dead {
        status: Option<u16>,
        error: String,
    },
    /// Done without a request: an upsert of an address whose person declined (SPEC §8). Stored
    /// as delivered, with `reason` as its `last_error`.
    Suppressed {
        reason: String,
    },
    /// Not attempted (the provider asked every request to wait): due again at `at`.
    Deferred {
        at: DateTime<Utc>,
    },
}

/// A delivery attempt whose outcome is to be stored: attempt number `attempts` of a claimed row,
/// ended at `at` (for a deferred row, `attempts` is the row's own: none was spent).
#[derive(Debug, Clone)]
pub struct Finished {
    pub claimed: Claimed,
    pub attempts: i32,
    pub completion: Completion,
    pub at: DateTime<Utc>,
}

/// Stores the outcomes of several attempts in one transaction (one commit, one fsync), answering
/// for each whether its claim still held. On SQLite every write transaction takes the one write
/// lock the registrations commit under, so one per delivery would make deliveries compete with
/// sign-ups; batched, a burst of deliveries costs a few commits. If the transaction fails,
/// nothing is stored: the leases expire and the rows are attempted again (at least once).
pub async fn complete_all(
    db: &DatabaseConnection,
    finished: &[Finished],
) -> Result<Vec<bool>, DbErr> {
    if let [one] = finished {
        // A statement on its own is already a transaction; BEGIN/COMMIT would only add trips.
        return Ok(vec![complete(db, one).await?]);
    }
    let txn = db.begin().await?;
    let mut stored = vec![false; finished.len()];
    // Rows delivered by one request share their claim, status and time: one UPDATE each such
    // group (a batch of 500 is one statement, not 500 round trips); the rest one by one.
    let mut groups: Vec<(DeliveredGroup, Vec<usize>)> = Vec::new();
    for (place, one) in finished.iter().enumerate() {
        match &one.completion {
            Completion::Delivered { status, job }
                if one.claimed.row.event == EventType::UserRegistered =>
            {
                let key = DeliveredGroup {
                    lease: one.claimed.lease,
                    status: *status,
                    job: job.clone(),
                    at: one.at,
                };
                match groups.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, places)) => places.push(place),
                    None => groups.push((key, vec![place])),
                }
            }
            _ => stored[place] = complete(&txn, one).await?,
        }
    }
    for (group, places) in groups {
        for chunk in places.chunks(DELIVERED_PER_STATEMENT) {
            let ids: Vec<Uuid> = chunk.iter().map(|p| finished[*p].claimed.row.id).collect();
            let updated = deliver_many(&txn, &group, &ids).await?;
            for place in chunk {
                stored[*place] = updated.contains(&finished[*place].claimed.row.id);
            }
            if updated.len() < ids.len() {
                let lost: Vec<Uuid> = ids.into_iter().filter(|id| !updated.contains(id)).collect();
                let_go_of_cancelled(&txn, &lost, group.lease, group.job.as_deref()).await?;
            }
        }
    }
    txn.commit().await?;
    Ok(stored)
}

/// Rows per UPDATE of delivered rows: well within SQLite's and PostgreSQL's bound parameters.
const DELIVERED_PER_STATEMENT: usize = 500;

/// What rows delivered by one request have in common.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DeliveredGroup {
    lease: DateTime<Utc>,
    status: u16,
    job: Option<String>,
    at: DateTime<Utc>,
}

/// Marks `ids` delivered, each only if its claim (`group.lease`) still holds; answers the ids
/// it marked.
async fn deliver_many<C: ConnectionTrait>(
    db: &C,
    group: &DeliveredGroup,
    ids: &[Uuid],
) -> Result<std::collections::HashSet<Uuid>, DbErr> {
    #[derive(FromQueryResult)]
    struct Marked {
        id: Uuid,
    }
    let mut update = email_outbox::Entity::update_many()
        .col_expr(email_outbox::Column::Status, Expr::value(Status::Delivered))
        .col_expr(
            email_outbox::Column::DeliveredAt,
            Expr::value(group.at.trunc_subsecs(6)),
        )
        .col_expr(
            email_outbox::Column::LastStatus,
            Expr::value(i32::from(group.status)),
        )
        .col_expr(
            email_outbox::Column::Attempts,
            Expr::col(email_outbox::Column::Attempts).add(1),
        )
        .col_expr(
            email_outbox::Column::ProviderJob,
            Expr::value(group.job.clone()),
        )
        .col_expr(
            email_outbox::Column::LockedUntil,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .filter(email_outbox::Column::Id.is_in(ids.iter().copied()))
        .filter(email_outbox::Column::Status.eq(Status::Pending))
        .filter(email_outbox::Column::LockedUntil.eq(group.lease))
        .into_query();
    update.returning_col(email_outbox::Column::Id);
    let statement = db.get_database_backend().build(&update);
    Ok(Marked::find_by_statement(statement)
        .all(db)
        .await?
        .into_iter()
        .map(|m| m.id)
        .collect())
}

/// Records one attempt's outcome. False if the claim was lost (the lease expired and another
/// instance owns the row now).
async fn complete<C: ConnectionTrait>(db: &C, finished: &Finished) -> Result<bool, DbErr> {
    let Finished {
        claimed,
        attempts,
        completion,
        at: now,
    } = finished;
    let (attempts, now, completion) = (*attempts, *now, completion.clone());
    let job = match &completion {
        Completion::Delivered { job, .. } => job.clone(),
        _ => None,
    };
    let mut update = email_outbox::ActiveModel {
        attempts: Set(attempts),
        locked_until: Set(None),
        ..Default::default()
    };
    match completion {
        Completion::Delivered { status, job } => {
            update.status = Set(Status::Delivered);
            update.provider_job = Set(job);
            update.delivered_at = Set(Some(now.trunc_subsecs(6)));
            update.last_status = Set(Some(i32::from(status)));
            if claimed.row.event == EventType::UserDeleted {
                // The provider has forgotten the person: so does the announcement (SPEC §6).
                update.payload = Set(crate::email::event::scrubbed_payload(claimed.row.user_id));
            }
        }
        Completion::Suppressed { reason } => {
            update.status = Set(Status::Delivered);
            update.delivered_at = Set(Some(now.trunc_subsecs(6)));
            update.last_error = Set(Some(reason));
        }
        Completion::Retry { at, status, error } => {
            update.next_attempt_at = Set(at.trunc_subsecs(6));
            update.last_status = Set(status.map(i32::from));
            update.last_error = Set(Some(error));
        }
        Completion::Dead { status, error } => {
            update.status = Set(Status::Dead);
            update.last_status = Set(status.map(i32::from));
            update.last_error = Set(Some(error));
        }
        Completion::Deferred { at } => {
            update.next_attempt_at = Set(at.trunc_subsecs(6));
        }
    }
    let result = email_outbox::Entity::update_many()
        .set(update)
        .filter(email_outbox::Column::Id.eq(claimed.row.id))
        .filter(email_outbox::Column::Status.eq(Status::Pending))
        .filter(email_outbox::Column::LockedUntil.eq(claimed.lease))
        .exec(db)
        .await?;
    if result.rows_affected == 1 {
        return Ok(true);
    }
    let_go_of_cancelled(db, &[claimed.row.id], claimed.lease, job.as_deref()).await?;
    Ok(false)
}

/// Clears this claim's lease on rows cancelled while their delivery was in flight (their user
/// was erased): nothing else is stored for them, and the user's later rows (the deletion) wait
/// only for the lease to go. Except the provider's import `job`, if the request was accepted
/// with one: the deletion must wait for that import to finish (SPEC §6).
async fn let_go_of_cancelled<C: ConnectionTrait>(
    db: &C,
    ids: &[Uuid],
    lease: DateTime<Utc>,
    job: Option<&str>,
) -> Result<(), DbErr> {
    let mut update = email_outbox::Entity::update_many().col_expr(
        email_outbox::Column::LockedUntil,
        Expr::value(Option::<DateTime<Utc>>::None),
    );
    if let Some(job) = job {
        update = update.col_expr(email_outbox::Column::ProviderJob, Expr::value(job));
    }
    update
        .filter(email_outbox::Column::Id.is_in(ids.iter().copied()))
        .filter(email_outbox::Column::Status.eq(Status::Cancelled))
        .filter(email_outbox::Column::LockedUntil.eq(lease))
        .exec(db)
        .await?;
    Ok(())
}

/// The last upsert of erased `user` that may have reached the provider (SPEC §6): their
/// latest-claimed `user.registered` row, whatever became of it (a cancelled row's request may
/// have landed too). Only this user's: an earlier holder of the address was erased with a
/// deletion that went first and waited for their imports in turn. With it, with its provider import job and until when a request
/// carrying it may have reached the provider: its answer, or else the end of its last claim's
/// `lease`. None if no upsert was ever sent. Walks the (user, seq) index.
pub(crate) async fn last_upsert(
    db: &DatabaseConnection,
    user: Uuid,
    lease: std::time::Duration,
) -> Result<Option<crate::email::import::EarlierUpsert>, DbErr> {
    let last = email_outbox::Entity::find()
        .filter(email_outbox::Column::UserId.eq(user))
        .filter(email_outbox::Column::Event.eq(EventType::UserRegistered))
        .filter(email_outbox::Column::ClaimedAt.is_not_null())
        .order_by_desc(email_outbox::Column::ClaimedAt)
        .one(db)
        .await?;
    let lease = chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
    Ok(last.and_then(|row| {
        let claimed = row.claimed_at?;
        let lease_end = claimed
            .checked_add_signed(lease)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        // Answered: no request about it can reach the provider after the answer. Otherwise
        // (retried, dead, cancelled in flight, lost with its instance) one may until the lease
        // ended.
        let may_land_until = row
            .delivered_at
            .filter(|_| row.status == Status::Delivered)
            .map_or(lease_end, |answered| Ord::min(answered, lease_end));
        Some(crate::email::import::EarlierUpsert {
            job: row.provider_job,
            may_land_until,
        })
    }))
}

/// Gives claims back without spending an attempt (shutdown, an abandoned delivery).
pub(crate) async fn release(db: &DatabaseConnection, claims: &[Claimed]) -> Result<(), DbErr> {
    for claimed in claims {
        email_outbox::Entity::update_many()
            .col_expr(
                email_outbox::Column::LockedUntil,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .filter(email_outbox::Column::Id.eq(claimed.row.id))
            .filter(email_outbox::Column::LockedUntil.eq(claimed.lease))
            .exec(db)
            .await?;
    }
    Ok(())
}

/// Deletes delivered rows delivered before `cutoff`, and cancelled rows (their user erased)
/// written before it, `batch` at a time so that no statement holds the write lock for long.
/// Returns how many were deleted. One statement per status, so each walks the status index.
pub(crate) async fn delete_delivered_before(
    db: &DatabaseConnection,
    cutoff: DateTime<Utc>,
    batch: u64,
) -> Result<u64, DbErr> {
    let backend = db.get_database_backend();
    let statements: [&str; 2] = if is_postgres(db) {
        [
            "DELETE FROM email_outbox WHERE id IN (SELECT id FROM email_outbox \
             WHERE status = 'delivered' AND delivered_at < $1 LIMIT $2)",
            // A cancelled row's lease (a delivery in flight at the erasure) is long over by then.
            "DELETE FROM email_outbox WHERE id IN (SELECT id FROM email_outbox \
             WHERE status = 'cancelled' AND created_at < $1 \
               AND (locked_until IS NULL OR locked_until < $1) LIMIT $2)",
        ]
    } else {
        [
            "DELETE FROM email_outbox WHERE id IN (SELECT id FROM email_outbox \
             WHERE status = 'delivered' AND delivered_at < ?1 LIMIT ?2)",
            "DELETE FROM email_outbox WHERE id IN (SELECT id FROM email_outbox \
             WHERE status = 'cancelled' AND created_at < ?1 \
               AND (locked_until IS NULL OR locked_until < ?1) LIMIT ?2)",
        ]
    };
    let mut total = 0;
    for sql in statements {
        loop {
            let statement = Statement::from_sql_and_values(
                backend,
                sql,
                [cutoff.into(), (batch as i64).into()],
            );
            let deleted = db.execute_raw(statement).await?.rows_affected();
            total += deleted;
            if deleted < batch {
                break;
            }
        }
    }
    Ok(total)
}

/// The outbox as the gauges show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OutboxCounts {
    pub pending: u64,
    pub dead: u64,
    /// When the oldest pending row was written, if any is pending.
    pub oldest_pending: Option<DateTime<Utc>>,
}

/// Pending and dead rows, and the oldest pending one: readiness and the outbox gauges.
pub(crate) async fn outbox_counts(db: &DatabaseConnection) -> Result<OutboxCounts, DbErr> {
    use sea_orm::{PaginatorTrait, QueryOrder, QuerySelect};
    let count = |status| {
        email_outbox::Entity::find()
            .filter(email_outbox::Column::Status.eq(status))
            .count(db)
    };
    let oldest_pending = email_outbox::Entity::find()
        .select_only()
        .column(email_outbox::Column::CreatedAt)
        .filter(email_outbox::Column::Status.eq(Status::Pending))
        .order_by_asc(email_outbox::Column::CreatedAt)
        .limit(1)
        .into_tuple::<DateTime<Utc>>()
        .one(db)
        .await?;
    Ok(OutboxCounts {
        pending: count(email_outbox::Status::Pending).await?,
        dead: count(email_outbox::Status::Dead).await?,
        oldest_pending,
    })
}
