//! Outbox queries of the operator side: list and inspect jobs, replay dead ones. Used by the
//! admin API and `signup outbox`; the EmailSyncActor's claims and leases still pace what a
//! replay makes due.

use chrono::{DateTime, SubsecRound, Utc};
use entity::email_outbox::{self, Status};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter, Statement,
};
use uuid::Uuid;

use crate::database::is_postgres;

/// What [`requeue`] did.
#[derive(Debug)]
pub(crate) enum Requeue {
    /// The row is due now with its attempts reset: as it is now.
    Due(Job),
    /// The row was delivered already; it is left alone.
    Delivered,
    /// The row was cancelled by its user's erasure; it is never sent.
    Cancelled,
    NotFound,
}

/// Makes a dead or pending row due now with its attempts reset, in one statement (a row
/// delivered meanwhile is not touched).
pub(crate) async fn requeue(
    db: &DatabaseConnection,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<Requeue, DbErr> {
    let updated = email_outbox::Entity::update_many()
        .set(email_outbox::ActiveModel {
            status: Set(Status::Pending),
            attempts: Set(0),
            next_attempt_at: Set(now.trunc_subsecs(6)),
            locked_until: Set(None),
            retry_from: Set(Some(now.trunc_subsecs(6))),
            ..Default::default()
        })
        .filter(email_outbox::Column::Id.eq(id))
        .filter(email_outbox::Column::Status.is_in([Status::Pending, Status::Dead]))
        .exec_with_returning(db)
        .await?;
    if let Some(row) = updated.into_iter().next() {
        return Ok(Requeue::Due(row.into()));
    }
    // Not pending nor dead: delivered, cancelled (its user was erased), or no such row.
    Ok(match find(db, id).await? {
        Some(job) if job.status == Status::Cancelled.as_str() => Requeue::Cancelled,
        Some(_) => Requeue::Delivered,
        None => Requeue::NotFound,
    })
}

/// An outbox row as operators see it (admin API, command line).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Job {
    pub id: Uuid,
    pub user_id: Uuid,
    /// `user.registered`, `user.deleted` or `user.consent_changed`.
    pub event: &'static str,
    /// Empty once the user is erased (and, for `user.deleted`, once delivered).
    pub email: String,
    pub status: &'static str,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub last_status: Option<i32>,
    pub next_attempt_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    /// The row's contact (a keyed hash of the address): whose consent the job view shows.
    #[serde(skip)]
    pub(crate) contact: Option<String>,
}

impl From<email_outbox::Model> for Job {
    fn from(row: email_outbox::Model) -> Self {
        let email = serde_json::from_str::<serde_json::Value>(&row.payload)
            .ok()
            .and_then(|payload| payload["email"].as_str().map(str::to_owned))
            .unwrap_or_default();
        Self {
            id: row.id,
            user_id: row.user_id,
            event: row.event.as_str(),
            email,
            status: row.status.as_str(),
            attempts: row.attempts,
            last_error: row.last_error,
            last_status: row.last_status,
            next_attempt_at: row.next_attempt_at,
            created_at: row.created_at,
            delivered_at: row.delivered_at,
            contact: row.contact,
        }
    }
}

/// Most jobs one page may hold.
pub(crate) const MAX_PAGE: u64 = 500;

/// A page of jobs, newest first, optionally of one status, strictly older than job `before`.
/// Returns the page and the id to pass as `before` for the next one (None on the last page).
pub(crate) async fn list(
    db: &DatabaseConnection,
    status: Option<Status>,
    limit: u64,
    before: Option<Uuid>,
) -> Result<(Vec<Job>, Option<Uuid>), DbErr> {
    use sea_orm::{Condition, QueryOrder, QuerySelect};
    let limit = limit.clamp(1, MAX_PAGE);
    let mut query = email_outbox::Entity::find();
    if let Some(status) = status {
        query = query.filter(email_outbox::Column::Status.eq(status));
    }
    if let Some(before) = before {
        let Some(anchor) = email_outbox::Entity::find_by_id(before).one(db).await? else {
            return Ok((Vec::new(), None));
        };
        // (created_at, id) < the anchor's: a total order, so pages neither skip nor repeat.
        query = query.filter(
            Condition::any()
                .add(email_outbox::Column::CreatedAt.lt(anchor.created_at))
                .add(
                    Condition::all()
                        .add(email_outbox::Column::CreatedAt.eq(anchor.created_at))
                        .add(email_outbox::Column::Id.lt(anchor.id)),
                ),
        );
    }
    let rows = query
        .order_by_desc(email_outbox::Column::CreatedAt)
        .order_by_desc(email_outbox::Column::Id)
        .limit(limit + 1)
        .all(db)
        .await?;
    let more = rows.len() as u64 > limit;
    let jobs: Vec<Job> = rows
        .into_iter()
        .take(limit as usize)
        .map(Job::from)
        .collect();
    let next = if more {
        jobs.last().map(|j| j.id)
    } else {
        None
    };
    Ok((jobs, next))
}

/// One job.
pub(crate) async fn find(db: &DatabaseConnection, id: Uuid) -> Result<Option<Job>, DbErr> {
    Ok(email_outbox::Entity::find_by_id(id)
        .one(db)
        .await?
        .map(Job::from))
}

/// The job of `user_id`'s registration, if still kept.
pub(crate) async fn find_for_user(
    db: &DatabaseConnection,
    user_id: Uuid,
) -> Result<Option<Job>, DbErr> {
    Ok(email_outbox::Entity::find()
        .filter(email_outbox::Column::UserId.eq(user_id))
        .one(db)
        .await?
        .map(Job::from))
}

/// Every job of `user_id` still kept, newest first (an erased user's rows included).
pub(crate) async fn jobs_of_user(
    db: &DatabaseConnection,
    user_id: Uuid,
) -> Result<Vec<Job>, DbErr> {
    use sea_orm::QueryOrder;
    Ok(email_outbox::Entity::find()
        .filter(email_outbox::Column::UserId.eq(user_id))
        .order_by_desc(email_outbox::Column::Seq)
        .all(db)
        .await?
        .into_iter()
        .map(Job::from)
        .collect())
}

/// Makes every dead row due now with attempts reset, `batch` rows per statement so that no
/// statement holds the write lock for long. It only makes them due: the EmailSyncActor's
/// concurrency and circuit breaker still pace the deliveries. Returns how many were requeued.
pub(crate) async fn requeue_all_dead(
    db: &DatabaseConnection,
    now: DateTime<Utc>,
    batch: u64,
) -> Result<u64, DbErr> {
    let now = now.trunc_subsecs(6);
    let backend = db.get_database_backend();
    let sql = if is_postgres(db) {
        "UPDATE email_outbox SET status = 'pending', attempts = 0, next_attempt_at = $1, \
         retry_from = $1, locked_until = NULL \
         WHERE id IN (SELECT id FROM email_outbox WHERE status = 'dead' LIMIT $2)"
    } else {
        "UPDATE email_outbox SET status = 'pending', attempts = 0, next_attempt_at = ?1, \
         retry_from = ?1, locked_until = NULL \
         WHERE id IN (SELECT id FROM email_outbox WHERE status = 'dead' LIMIT ?2)"
    };
    let mut total = 0;
    loop {
        let statement =
            Statement::from_sql_and_values(backend, sql, [now.into(), (batch as i64).into()]);
        let updated = db.execute_raw(statement).await?.rows_affected();
        total += updated;
        if updated < batch {
            return Ok(total);
        }
    }
}
