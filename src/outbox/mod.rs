//! The transactional outbox (`email_outbox`): one row per event for the email provider,
//! written in the user's transaction. Two sides use it: the EmailSyncActor claims, delivers and
//! records (`delivery`), operators list and replay (`operator`).

mod contact;
mod delivery;
mod operator;

pub(crate) use contact::{ContactKey, load_or_create_server_key};
pub use delivery::*;
pub(crate) use operator::*;

use chrono::{DateTime, Utc};
use entity::email_outbox::{self, EventType, Status};
use sea_orm::ActiveValue::Set;
use uuid::Uuid;

/// A new row, due at once: `event` about `user_id` and `contact` (a [`ContactKey`] hash), the
/// user's `seq`-th row, written at `now` with `payload`.
pub(crate) fn new_row(
    id: Uuid,
    user_id: Uuid,
    event: EventType,
    payload: String,
    seq: i32,
    contact: String,
    now: DateTime<Utc>,
) -> email_outbox::ActiveModel {
    email_outbox::ActiveModel {
        id: Set(id),
        user_id: Set(user_id),
        payload: Set(payload),
        status: Set(Status::Pending),
        attempts: Set(0),
        next_attempt_at: Set(now),
        locked_until: Set(None),
        last_error: Set(None),
        last_status: Set(None),
        created_at: Set(now),
        delivered_at: Set(None),
        retry_from: Set(None),
        event: Set(event),
        seq: Set(seq),
        contact: Set(Some(contact)),
        claimed_at: Set(None),
        provider_job: Set(None),
        traceparent: Set(None),
    }
}
