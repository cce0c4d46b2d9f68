//! Erasure (SPEC §6): one transaction removes a person from signup and queues their removal at
//! the provider. The user row and its idempotency keys are deleted; every undelivered outbox
//! row of theirs is cancelled (one whose delivery is in flight keeps its lease, so what follows
//! still waits for it); every remaining row of theirs is scrubbed of username and email; and a
//! `user.deleted` row is written, after all of them in the user's order. The username and email
//! are free again at once.

use chrono::{DateTime, SubsecRound, Utc};
use entity::email_outbox::{self, EventType, Status};
use entity::{idempotency_key, user};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use sea_orm::{SqliteTransactionMode, TransactionOptions};
use uuid::Uuid;

use crate::email::event::{UserDeleted, scrubbed_payload};

/// Whom to erase: the user's id, or the address they registered with (in any case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    Id(Uuid),
    Email(String),
}

impl std::str::FromStr for Who {
    type Err = std::convert::Infallible;

    /// A UUID is an id; anything else is an address.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match Uuid::parse_str(text.trim()) {
            Ok(id) => Who::Id(id),
            Err(_) => Who::Email(text.trim().to_owned()),
        })
    }
}

/// What an erasure did.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Erased {
    /// The erased user.
    pub user_id: Uuid,
    /// The `user.deleted` job that removes them at the provider.
    pub deletion_job: Uuid,
    /// Undelivered rows of theirs that will now never be sent.
    pub cancelled: u64,
    /// Rows of theirs scrubbed of username and email (the cancelled ones included).
    pub scrubbed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum EraseError {
    /// No such user (never registered, or erased already).
    #[error("no such user")]
    NotFound,
    #[error(transparent)]
    Database(#[from] DbErr),
}

/// Erases `who` as of `now`, in one transaction.
pub async fn erase(
    db: &DatabaseConnection,
    who: &Who,
    now: DateTime<Utc>,
) -> Result<Erased, EraseError> {
    let now = now.trunc_subsecs(6);
    // Before the transaction: on SQLite it may write the key (the first time), and the
    // transaction below holds the one write lock.
    let contact = crate::outbox::ContactKey::load_or_create(db).await?;
    // IMMEDIATE on SQLite: this transaction reads, then writes (see `store`).
    let txn = db
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        })
        .await?;
    // Locked on PostgreSQL: a provider event about the person (which may write their next
    // outbox row, SPEC §8) waits for the erasure, or the erasure for it, and sees its rows.
    let found = match who {
        Who::Id(id) => {
            user::Entity::find_by_id(*id)
                .lock_exclusive()
                .one(&txn)
                .await?
        }
        Who::Email(email) => {
            let normalized = crate::domain::normalized_email(email);
            user::Entity::find()
                .filter(user::Column::EmailNormalized.eq(normalized))
                .lock_exclusive()
                .one(&txn)
                .await?
        }
    };
    let Some(person) = found else {
        return Err(EraseError::NotFound);
    };
    let rows = email_outbox::Entity::find()
        .filter(email_outbox::Column::UserId.eq(person.id))
        .order_by_asc(email_outbox::Column::Seq)
        .all(&txn)
        .await?;
    let (mut cancelled, mut scrubbed) = (0, 0);
    let mut last_seq = 0;
    for row in rows {
        last_seq = last_seq.max(row.seq);
        let mut update = email_outbox::ActiveModel {
            id: Set(row.id),
            payload: Set(scrubbed_payload(person.id)),
            ..Default::default()
        };
        if matches!(row.status, Status::Pending | Status::Dead) {
            // Its lease (if its delivery is in flight) stays: the deletion waits for it.
            update.status = Set(Status::Cancelled);
            cancelled += 1;
        }
        if let Some(error) = &row.last_error
            && names(error, &person)
        {
            update.last_error = Set(Some(
                "(the provider's message named the erased user; removed)".into(),
            ));
        }
        update.update(&txn).await?;
        scrubbed += 1;
    }
    idempotency_key::Entity::delete_many()
        .filter(idempotency_key::Column::UserId.eq(person.id))
        .exec(&txn)
        .await?;
    user::Entity::delete_by_id(person.id).exec(&txn).await?;
    crate::consent::store::forget(&txn, &contact.of(&person.email_normalized)).await?;
    // Time-ordered like every outbox id.
    let deletion_job = Uuid::now_v7();
    let deleted = UserDeleted {
        user_id: person.id,
        email: person.email.clone(),
    };
    crate::outbox::new_row(
        deletion_job,
        person.id,
        EventType::UserDeleted,
        deleted.to_payload(),
        last_seq + 1,
        contact.of(&person.email_normalized),
        now,
    )
    .insert(&txn)
    .await?;
    txn.commit().await?;
    Ok(Erased {
        user_id: person.id,
        deletion_job,
        cancelled,
        scrubbed,
    })
}

/// Whether `text` names the person: their address or username, in any case.
fn names(text: &str, person: &user::Model) -> bool {
    let text = text.to_lowercase();
    text.contains(&person.email.to_lowercase())
        || text.contains(&person.email_normalized)
        || text.contains(&person.username_normalized)
}

/// Overwrites what the database still holds of erased values on disk (SPEC §6, "no copy on
/// disk"). Every SQLite connection runs with `secure_delete` (deleted content is overwritten
/// with zeros in the database file), but the WAL keeps the old page images until a checkpoint
/// copies the pages back and `TRUNCATE` empties it: done here, after an erasure commits and
/// after a deletion's delivery scrubs its last copy of the address. A checkpoint that readers
/// keep from finishing is tried again, a few times over about 10 s, then left to the next one
/// (logged). On PostgreSQL the tables that held the person are vacuumed, so that the deleted
/// tuples' space is reclaimed and overwritten by later writes.
pub async fn forget_on_disk(db: &DatabaseConnection) {
    use sea_orm::ConnectionTrait;
    if crate::database::is_postgres(db) {
        let vacuum = "VACUUM users, idempotency_keys, email_outbox, consent, provider_events";
        if let Err(e) = db.execute_unprepared(vacuum).await {
            tracing::warn!(error = %e, "cannot vacuum after an erasure; autovacuum will reclaim the space later");
        }
        return;
    }
    let checkpoint = sea_orm::Statement::from_string(
        sea_orm::DatabaseBackend::Sqlite,
        "PRAGMA wal_checkpoint(TRUNCATE)",
    );
    for attempt in 1..=CHECKPOINT_TRIES {
        match db.query_one_raw(checkpoint.clone()).await {
            // (busy, log frames, checkpointed frames): busy = 0 means done and truncated.
            Ok(Some(row)) if row.try_get_by_index::<i64>(0).is_ok_and(|busy| busy == 0) => {
                tracing::info!("{CHECKPOINTED}");
                return;
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, attempt, "WAL checkpoint failed"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(attempt))).await;
    }
    tracing::warn!(
        "cannot checkpoint the WAL after an erasure (readers kept it busy); the next erasure, delivered deletion or a restart will"
    );
}

/// What [`forget_on_disk`] logs once the WAL is checkpointed and truncated.
pub const CHECKPOINTED: &str =
    "erased values are overwritten on disk: the WAL is checkpointed and truncated";

/// Tries of [`forget_on_disk`]'s checkpoint: 200 ms, 400 ms, … apart, about 9 s in all.
const CHECKPOINT_TRIES: u32 = 9;
