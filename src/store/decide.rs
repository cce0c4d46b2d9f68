//! What one batch decides for each candidate (taken, replayed, created) and the statements
//! that carry it out.

use super::*;
use crate::telemetry::trace::TraceParent;

/// What a batch decided for each candidate, and the rows that carry it out.
pub(super) struct Decided<'a> {
    pub(super) outcomes: Vec<Outcome>,
    users: Vec<user::ActiveModel>,
    outbox: Vec<email_outbox::ActiveModel>,
    new_keys: Vec<idempotency_key::ActiveModel>,
    /// (candidate, user id, outbox id) of each user created, for the log.
    pub(super) created_log: Vec<(&'a Candidate, Uuid, Uuid)>,
}

/// Decides each candidate in order, as if one after the other: against the keys known and the
/// (username, email) pairs registered before the batch, and the batch's own earlier members.
pub(super) fn decide<'a>(
    candidates: &'a [Candidate],
    mut known_keys: HashMap<String, (String, RegisteredUser)>,
    taken: Vec<(String, String)>,
    contact: &ContactKey,
) -> Decided<'a> {
    let mut taken_usernames = HashSet::new();
    let mut taken_emails = HashSet::new();
    for (username, email) in taken {
        taken_usernames.insert(username);
        taken_emails.insert(email);
    }
    // Truncated to microseconds: PostgreSQL stores no finer, and a replay must show the same
    // `created_at` as the first answer.
    let now = Utc::now().trunc_subsecs(6);
    let mut decided = Decided {
        outcomes: Vec::with_capacity(candidates.len()),
        users: Vec::new(),
        outbox: Vec::new(),
        new_keys: Vec::new(),
        created_log: Vec::new(),
    };
    for candidate in candidates {
        if let Some(key) = &candidate.idempotency
            && let Some((fingerprint, user)) = known_keys.get(&key.key)
        {
            decided.outcomes.push(if *fingerprint == key.fingerprint {
                Outcome::Replayed(user.clone())
            } else {
                Outcome::IdempotencyKeyReused
            });
            continue;
        }
        if taken_emails.contains(candidate.email.normalized()) {
            decided.outcomes.push(Outcome::EmailTaken);
            continue;
        }
        if taken_usernames.contains(candidate.username.normalized()) {
            decided.outcomes.push(Outcome::UsernameTaken);
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
        decided.users.push(user::ActiveModel {
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
        let about = contact.of(candidate.email.normalized());
        decided.outbox.push(new_outbox_row(
            outbox_id,
            &created,
            about,
            candidate.trace.as_ref(),
        ));
        decided.created_log.push((candidate, created.id, outbox_id));
        if let Some(key) = &candidate.idempotency {
            decided.new_keys.push(idempotency_key::ActiveModel {
                key: Set(key.key.clone()),
                fingerprint: Set(key.fingerprint.clone()),
                user_id: Set(created.id),
                created_at: Set(now),
            });
            known_keys.insert(key.key.clone(), (key.fingerprint.clone(), created.clone()));
        }
        decided.outcomes.push(Outcome::Created(created));
    }
    decided
}

impl Decided<'_> {
    /// The inserts that carry out the decisions (none if nobody was created).
    pub(super) fn inserts(&mut self, backend: DbBackend) -> Vec<Statement> {
        let mut inserts = Vec::new();
        if !self.users.is_empty() {
            let users = std::mem::take(&mut self.users);
            inserts.push(user::Entity::insert_many(users).build(backend));
            let outbox = std::mem::take(&mut self.outbox);
            inserts.push(email_outbox::Entity::insert_many(outbox).build(backend));
        }
        if !self.new_keys.is_empty() {
            let keys = std::mem::take(&mut self.new_keys);
            inserts.push(idempotency_key::Entity::insert_many(keys).build(backend));
        }
        inserts
    }
}

/// One line per user created, once committed.
pub(super) fn log_created(created: &[(&Candidate, Uuid, Uuid)]) {
    for (candidate, user_id, outbox_id) in created {
        // Deliveries log the outbox id: this line links them to the request.
        tracing::info!(
            request_id = %candidate.request_id,
            %user_id,
            %outbox_id,
            email = %candidate.email.masked(),
            "registered"
        );
    }
}

/// The outbox row announcing `user`: due at once, attempt 0, in the trace of the request that
/// registered them (SPEC §9).
pub(super) fn new_outbox_row(
    id: Uuid,
    user: &RegisteredUser,
    contact: String,
    trace: Option<&TraceParent>,
) -> email_outbox::ActiveModel {
    let payload = UserRegistered {
        user_id: user.id,
        username: user.username.clone(),
        email: user.email.clone(),
        registered_at: user.created_at,
    };
    // A new user's first row (an erased user's name or address registering again is a new
    // user, with a new id).
    let mut row = crate::outbox::new_row(
        id,
        user.id,
        email_outbox::EventType::UserRegistered,
        payload.to_payload(),
        1,
        contact,
        user.created_at,
    );
    row.traceparent = Set(trace.map(TraceParent::header));
    row
}

/// The candidates' idempotency keys.
pub(super) fn keys_of(candidates: &[Candidate]) -> Vec<&str> {
    candidates
        .iter()
        .filter_map(|c| c.idempotency.as_ref().map(|k| k.key.as_str()))
        .collect()
}

/// An expired key may be used again: its old row must not block the new one.
pub(super) fn delete_expired_keys(keys: &[&str]) -> DeleteMany<idempotency_key::Entity> {
    idempotency_key::Entity::delete_many()
        .filter(idempotency_key::Column::Key.is_in(keys.iter().copied()))
        .filter(idempotency_key::Column::CreatedAt.lt(Utc::now() - KEY_TTL))
}

/// The rows of the keys among `keys` used before.
pub(super) fn key_rows(keys: &[&str]) -> Select<idempotency_key::Entity> {
    idempotency_key::Entity::find().filter(idempotency_key::Column::Key.is_in(keys.iter().copied()))
}

/// The users those keys created.
pub(super) fn users_with_keys(rows: &[idempotency_key::Model]) -> Select<user::Entity> {
    user::Entity::find().filter(user::Column::Id.is_in(rows.iter().map(|r| r.user_id)))
}

/// Each known key with its fingerprint and user.
pub(super) fn known_keys(
    rows: Vec<idempotency_key::Model>,
    users: Vec<user::Model>,
) -> HashMap<String, (String, RegisteredUser)> {
    let users: HashMap<Uuid, user::Model> = users.into_iter().map(|u| (u.id, u)).collect();
    rows.into_iter()
        .filter_map(|r| {
            let user = users.get(&r.user_id)?.clone();
            Some((r.key, (r.fingerprint, user.into())))
        })
        .collect()
}

/// The (username, email) pairs registered under any of the candidates' names.
pub(super) fn taken_names(candidates: &[Candidate]) -> Select<user::Entity> {
    let usernames: Vec<&str> = candidates.iter().map(|c| c.username.normalized()).collect();
    let emails: Vec<&str> = candidates.iter().map(|c| c.email.normalized()).collect();
    user::Entity::find()
        .select_only()
        .column(user::Column::UsernameNormalized)
        .column(user::Column::EmailNormalized)
        .filter(
            Condition::any()
                .add(user::Column::UsernameNormalized.is_in(usernames))
                .add(user::Column::EmailNormalized.is_in(emails)),
        )
}

pub(super) fn models<M: FromQueryResult>(rows: Vec<QueryResult>) -> Result<Vec<M>, DbErr> {
    rows.iter()
        .map(|row| M::from_query_result(row, ""))
        .collect()
}

pub(super) fn pairs(rows: Vec<QueryResult>) -> Result<Vec<(String, String)>, DbErr> {
    rows.iter()
        .map(QueryResult::try_get_many_by_index)
        .collect()
}
