//! The registration's database work: check a batch of candidates for uniqueness and insert the
//! accepted users, their outbox rows and idempotency keys in one transaction. Called only by the
//! RegistrationActor, one batch at a time.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, SubsecRound, Utc};
use entity::{email_outbox, idempotency_key, user};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbErr,
    EntityTrait, QueryFilter, QuerySelect, SqlErr, SqliteTransactionMode, TransactionOptions,
    TransactionTrait,
};
use uuid::Uuid;

use crate::domain::{Email, Username};
use crate::email::UserRegistered;
use crate::idempotency::{IdempotencyKey, KEY_TTL};

/// One registration waiting to be committed (validated, password already hashed).
#[derive(Debug, Clone)]
pub struct Candidate {
    pub username: Username,
    pub email: Email,
    pub password_hash: String,
    pub idempotency: Option<IdempotencyKey>,
    /// The HTTP request's id, for the log line that links it to its outbox row.
    pub request_id: String,
}

/// A user as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredUser {
    pub id: Uuid,
    pub username: String,
    pub email: String,
    pub created_at: DateTime<Utc>,
}

impl From<user::Model> for RegisteredUser {
    fn from(m: user::Model) -> Self {
        Self {
            id: m.id,
            username: m.username,
            email: m.email,
            created_at: m.created_at,
        }
    }
}

/// What became of one candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new user (and outbox row) was committed.
    Created(RegisteredUser),
    /// The idempotency key had already created this user: nothing new was written.
    Replayed(RegisteredUser),
    UsernameTaken,
    /// Also when both are taken: the email wins.
    EmailTaken,
    /// The key was used before for a different request.
    IdempotencyKeyReused,
}

/// Registers `candidates` in order, as if one after the other: a later candidate that repeats
/// an earlier one's username or email is refused exactly as it would be a moment later.
///
/// Either every accepted candidate is committed or none is (`Err`).
pub(crate) async fn register_batch(
    db: &DatabaseConnection,
    candidates: &[Candidate],
) -> Result<Vec<Outcome>, DbErr> {
    match try_batch(db, candidates).await {
        Err(e) if is_unique_violation(&e) => {
            // Another instance on the same PostgreSQL inserted a name or address between our
            // check and our insert. Replay the batch one by one: each check then sees the rival.
            let mut outcomes = Vec::with_capacity(candidates.len());
            for candidate in candidates {
                outcomes.push(register_one(db, candidate).await?);
            }
            Ok(outcomes)
        }
        other => other,
    }
}

/// How often one registration is tried alone after losing a uniqueness race. Each try's check
/// sees the rivals committed so far, so a second loss needs another instance to commit the
/// same name in that very moment again; after this many the violated index itself is the
/// answer.
const LOST_RACE_TRIES: u32 = 4;

/// Alone, a lost race can only repeat if the rival keeps winning; after a few tries the
/// violated index itself tells which field is taken.
async fn register_one(db: &DatabaseConnection, candidate: &Candidate) -> Result<Outcome, DbErr> {
    let single = std::slice::from_ref(candidate);
    let mut tries = 0;
    loop {
        tries += 1;
        match try_batch(db, single).await {
            Ok(mut outcomes) => return Ok(outcomes.remove(0)),
            Err(e) if is_unique_violation(&e) && tries < LOST_RACE_TRIES => continue,
            Err(e) => {
                return match e.sql_err() {
                    Some(SqlErr::UniqueConstraintViolation(m)) if EMAIL_UNIQUE.named_in(&m) => {
                        Ok(Outcome::EmailTaken)
                    }
                    Some(SqlErr::UniqueConstraintViolation(m)) if USERNAME_UNIQUE.named_in(&m) => {
                        Ok(Outcome::UsernameTaken)
                    }
                    _ => Err(e),
                };
            }
        }
    }
}

/// A unique index of `users`, as the databases name it in a violation's message: PostgreSQL by
/// the index's name (given in migration m20261126_000001), SQLite by `table.column`.
struct UniqueIndex {
    name: &'static str,
    column: &'static str,
}

impl UniqueIndex {
    fn named_in(&self, message: &str) -> bool {
        message.contains(&format!("\"{}\"", self.name))
            || message.contains(&format!("failed: {}", self.column))
    }
}

const EMAIL_UNIQUE: UniqueIndex = UniqueIndex {
    name: "users_email_normalized_key",
    column: "users.email_normalized",
};
const USERNAME_UNIQUE: UniqueIndex = UniqueIndex {
    name: "users_username_normalized_key",
    column: "users.username_normalized",
};

fn is_unique_violation(e: &DbErr) -> bool {
    matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

/// One transaction: look up keys and taken names, decide each candidate, insert the winners.
async fn try_batch(
    db: &DatabaseConnection,
    candidates: &[Candidate],
) -> Result<Vec<Outcome>, DbErr> {
    // IMMEDIATE on SQLite: take the write lock at BEGIN. A deferred transaction that reads and
    // then writes fails with SQLITE_BUSY (not waiting) if another connection wrote in between.
    let txn = db
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        })
        .await?;

    let keys: Vec<&str> = candidates
        .iter()
        .filter_map(|c| c.idempotency.as_ref().map(|k| k.key.as_str()))
        .collect();
    if !keys.is_empty() {
        // An expired key may be used again: its old row must not block the new one.
        idempotency_key::Entity::delete_many()
            .filter(idempotency_key::Column::Key.is_in(keys.iter().copied()))
            .filter(idempotency_key::Column::CreatedAt.lt(Utc::now() - KEY_TTL))
            .exec(&txn)
            .await?;
    }
    let mut known_keys = known_keys(&txn, &keys).await?;
    let (mut taken_usernames, mut taken_emails) = taken(&txn, candidates).await?;

    // Truncated to microseconds: PostgreSQL stores no finer, and a replay must show the same
    // `created_at` as the first answer.
    let now = Utc::now().trunc_subsecs(6);
    let mut outcomes = Vec::with_capacity(candidates.len());
    let mut users = Vec::new();
    let mut outbox = Vec::new();
    let mut new_keys = Vec::new();
    let mut created_log = Vec::new();
    for candidate in candidates {
        if let Some(key) = &candidate.idempotency
            && let Some((fingerprint, user)) = known_keys.get(&key.key)
        {
            outcomes.push(if *fingerprint == key.fingerprint {
                Outcome::Replayed(user.clone())
            } else {
                Outcome::IdempotencyKeyReused
            });
            continue;
        }
        if taken_emails.contains(candidate.email.normalized()) {
            outcomes.push(Outcome::EmailTaken);
            continue;
        }
        if taken_usernames.contains(candidate.username.normalized()) {
            outcomes.push(Outcome::UsernameTaken);
            continue;
        }
        let created = RegisteredUser {
            // Time-ordered, as the outbox ids: a new user is an append to the primary key's
            // index and to the outbox's `(user_id, seq)` index, not a write into a random page
            // of each (the id shows when the account was made, as `created_at` does).
            id: Uuid::now_v7(),
            username: candidate.username.as_str().to_owned(),
            email: candidate.email.as_str().to_owned(),
            created_at: now,
        };
        taken_emails.insert(candidate.email.normalized().to_owned());
        taken_usernames.insert(candidate.username.normalized().to_owned());
        users.push(user::ActiveModel {
            id: Set(created.id),
            username: Set(created.username.clone()),
            username_normalized: Set(candidate.username.normalized().to_owned()),
            email: Set(created.email.clone()),
            email_normalized: Set(candidate.email.normalized().to_owned()),
            password_hash: Set(candidate.password_hash.clone()),
            created_at: Set(now),
        });
        // Time-ordered: new rows land at the end of the primary key's index, not all over it.
        let outbox_id = Uuid::now_v7();
        outbox.push(new_outbox_row(outbox_id, &created));
        created_log.push((candidate, created.id, outbox_id));
        if let Some(key) = &candidate.idempotency {
            new_keys.push(idempotency_key::ActiveModel {
                key: Set(key.key.clone()),
                fingerprint: Set(key.fingerprint.clone()),
                user_id: Set(created.id),
                created_at: Set(now),
            });
            known_keys.insert(key.key.clone(), (key.fingerprint.clone(), created.clone()));
        }
        outcomes.push(Outcome::Created(created));
    }

    if !users.is_empty() {
        user::Entity::insert_many(users)
            .exec_without_returning(&txn)
            .await?;
        email_outbox::Entity::insert_many(outbox)
            .exec_without_returning(&txn)
            .await?;
        if !new_keys.is_empty() {
            idempotency_key::Entity::insert_many(new_keys)
                .exec_without_returning(&txn)
                .await?;
        }
    }
    txn.commit().await?;
    for (candidate, user_id, outbox_id) in created_log {
        // Deliveries log the outbox id: this line links them to the request.
        tracing::info!(
            request_id = %candidate.request_id,
            %user_id,
            %outbox_id,
            email = %candidate.email.masked(),
            "registered"
        );
    }
    Ok(outcomes)
}

/// The outbox row announcing `user`: due at once, attempt 0.
fn new_outbox_row(id: Uuid, user: &RegisteredUser) -> email_outbox::ActiveModel {
    let payload = UserRegistered {
        user_id: user.id,
        username: user.username.clone(),
        email: user.email.clone(),
        registered_at: user.created_at,
    };
    email_outbox::ActiveModel {
        id: Set(id),
        user_id: Set(user.id),
        payload: Set(payload.to_payload()),
        status: Set(email_outbox::Status::Pending),
        attempts: Set(0),
        next_attempt_at: Set(user.created_at),
        locked_until: Set(None),
        last_error: Set(None),
        last_status: Set(None),
        created_at: Set(user.created_at),
        delivered_at: Set(None),
        retry_from: Set(None),
        event: Set(email_outbox::EventType::UserRegistered),
        // A new user's first row (an erased user's name or address registering again is a
        // new user, with a new id).
        seq: Set(1),
    }
}

/// Keys among `keys` used before, with their fingerprint and user.
async fn known_keys<C: ConnectionTrait>(
    db: &C,
    keys: &[&str],
) -> Result<HashMap<String, (String, RegisteredUser)>, DbErr> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = idempotency_key::Entity::find()
        .filter(idempotency_key::Column::Key.is_in(keys.iter().copied()))
        .all(db)
        .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.user_id).collect();
    let users: HashMap<Uuid, user::Model> = user::Entity::find()
        .filter(user::Column::Id.is_in(ids))
        .all(db)
        .await?
        .into_iter()
        .map(|u| (u.id, u))
        .collect();
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let user = users.get(&r.user_id)?.clone();
            Some((r.key, (r.fingerprint, user.into())))
        })
        .collect())
}

/// The normalised usernames and emails among the candidates' that are already registered.
async fn taken<C: ConnectionTrait>(
    db: &C,
    candidates: &[Candidate],
) -> Result<(HashSet<String>, HashSet<String>), DbErr> {
    let usernames: Vec<&str> = candidates.iter().map(|c| c.username.normalized()).collect();
    let emails: Vec<&str> = candidates.iter().map(|c| c.email.normalized()).collect();
    let rows: Vec<(String, String)> = user::Entity::find()
        .select_only()
        .column(user::Column::UsernameNormalized)
        .column(user::Column::EmailNormalized)
        .filter(
            Condition::any()
                .add(user::Column::UsernameNormalized.is_in(usernames.iter().copied()))
                .add(user::Column::EmailNormalized.is_in(emails.iter().copied())),
        )
        .into_tuple()
        .all(db)
        .await?;
    let mut taken_usernames = HashSet::new();
    let mut taken_emails = HashSet::new();
    for (username, email) in rows {
        taken_usernames.insert(username);
        taken_emails.insert(email);
    }
    Ok((taken_usernames, taken_emails))
}

/// The user with `id`, if registered.
pub async fn find_user(db: &DatabaseConnection, id: Uuid) -> Result<Option<RegisteredUser>, DbErr> {
    Ok(user::Entity::find_by_id(id).one(db).await?.map(Into::into))
}

/// The user registered with `email`, in any case.
pub async fn find_user_by_email(
    db: &DatabaseConnection,
    email: &str,
) -> Result<Option<RegisteredUser>, DbErr> {
    let normalized = crate::domain::Email::parse(email)
        .map(|e| e.normalized().to_owned())
        .unwrap_or_else(|_| email.trim().to_lowercase());
    Ok(user::Entity::find()
        .filter(user::Column::EmailNormalized.eq(normalized))
        .one(db)
        .await?
        .map(Into::into))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_violation_is_told_apart_by_the_index_each_database_names() {
        let cases = [
            (
                r#"duplicate key value violates unique constraint "users_email_normalized_key""#,
                true,
                false,
                "PostgreSQL, email",
            ),
            (
                r#"duplicate key value violates unique constraint "users_username_normalized_key""#,
                false,
                true,
                "PostgreSQL, username",
            ),
            (
                "UNIQUE constraint failed: users.email_normalized",
                true,
                false,
                "SQLite, email",
            ),
            (
                "UNIQUE constraint failed: users.username_normalized",
                false,
                true,
                "SQLite, username",
            ),
            (
                r#"duplicate key value violates unique constraint "idempotency_keys_pkey" (email)"#,
                false,
                false,
                "another index whose message happens to say email",
            ),
        ];
        for (message, email, username, why) in cases {
            assert_eq!(EMAIL_UNIQUE.named_in(message), email, "{why}");
            assert_eq!(USERNAME_UNIQUE.named_in(message), username, "{why}");
        }
    }
}
