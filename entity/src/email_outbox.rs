//! The transactional outbox: one row per registration, written in the same transaction as the
//! user. The database, not an actor's mailbox, is the source of truth for pending syncs.

use sea_orm::entity::prelude::*;

/// Lifecycle of an outbox row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum Status {
    /// Not yet acknowledged by the provider; due at `next_attempt_at`.
    #[sea_orm(string_value = "pending")]
    Pending,
    /// Acknowledged by the provider (2xx) at `delivered_at`.
    #[sea_orm(string_value = "delivered")]
    Delivered,
    /// Given up on (permanent answer, or attempts/time exhausted); waits for an operator.
    #[sea_orm(string_value = "dead")]
    Dead,
    /// Not to be delivered: its user was erased before it was.
    #[sea_orm(string_value = "cancelled")]
    Cancelled,
}

/// Which event a row announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(32))")]
pub enum EventType {
    /// The user's account exists: add them at the provider.
    #[sea_orm(string_value = "user.registered")]
    UserRegistered,
    /// The user was erased: remove them at the provider.
    #[sea_orm(string_value = "user.deleted")]
    UserDeleted,
    /// The provider told us the user's consent changed (SPEC §8): forwarded by kind `webhook`.
    #[sea_orm(string_value = "user.consent_changed")]
    UserConsentChanged,
}

impl EventType {
    /// The event's name, as the webhook body's `type` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::UserRegistered => "user.registered",
            EventType::UserDeleted => "user.deleted",
            EventType::UserConsentChanged => "user.consent_changed",
        }
    }
}

impl Status {
    /// The name used in the database, the admin API and the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Delivered => "delivered",
            Status::Dead => "dead",
            Status::Cancelled => "cancelled",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "email_outbox")]
pub struct Model {
    /// Stable across attempts: sent as `webhook-id`, the delivery's idempotency key.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The user this row is about (who may since have been erased: no foreign key).
    pub user_id: Uuid,
    /// The `data` object of the webhook body, fixed when the row is written (JSON text);
    /// scrubbed of username and email once the user is erased.
    #[sea_orm(column_type = "Text")]
    pub payload: String,
    /// pending | delivered | dead | cancelled.
    pub status: Status,
    /// Attempts made so far (reset by an operator's retry).
    pub attempts: i32,
    /// When the row is next due; oldest due first.
    pub next_attempt_at: DateTimeUtc,
    /// Lease: while in the future, one instance owns the row's delivery.
    pub locked_until: Option<DateTimeUtc>,
    /// The last failure, for operators.
    #[sea_orm(column_type = "Text", nullable)]
    pub last_error: Option<String>,
    /// The provider's last HTTP status, if it answered.
    pub last_status: Option<i32>,
    /// When the registration (and so this row) was committed.
    pub created_at: DateTimeUtc,
    /// When the provider acknowledged it.
    pub delivered_at: Option<DateTimeUtc>,
    /// Start of the retry schedule (`max_elapsed`): NULL = `created_at`; set by an operator's retry.
    pub retry_from: Option<DateTimeUtc>,
    /// The event this row announces.
    pub event: EventType,
    /// The row's place among its user's rows (1, 2, …): it is claimed only once every earlier
    /// row of its user is settled (SPEC §6).
    pub seq: i32,
    /// The provider contact the row is about: a keyed hash of the normalised email
    /// (`outbox::ContactKey`). A row is claimed only once every earlier row about the same
    /// contact, of any user, is settled (SPEC §6). NULL on rows written before it existed.
    pub contact: Option<String>,
    /// When the row was last claimed: a request carrying it may reach the provider until that
    /// claim's lease ends, answered or not.
    pub claimed_at: Option<DateTimeUtc>,
    /// The provider's import job for the row's last accepted upsert (SendGrid's `job_id`): a
    /// later deletion of the contact waits until that import has finished (SPEC §6).
    pub provider_job: Option<String>,
    /// The W3C `traceparent` of the request that wrote the row (SPEC §9): each delivery attempt
    /// is a span linked to it; the webhook kind sends it on (same trace id, the attempt's span).
    pub traceparent: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::user::Entity",
        from = "Column::UserId",
        to = "super::user::Column::Id"
    )]
    User,
}

impl Related<super::user::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::User.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
