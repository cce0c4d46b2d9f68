//! A contact's consent state as the provider last told it (SPEC §8). Keyed by the contact's
//! keyed hash (as `email_outbox.contact`): the row holds no address, so the suppression entry
//! erasure keeps says nothing about who it was.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "consent")]
pub struct Model {
    /// HMAC-SHA256 (hex) of the normalised email with the server's contact key.
    #[sea_orm(primary_key, auto_increment = false)]
    pub contact: String,
    /// `pending`, `subscribed`, `unsubscribed`, `bounced`, `complained` or `cleaned`.
    pub state: String,
    /// When the state changed: the event's own time for a provider event.
    pub changed_at: DateTimeUtc,
    /// `provider event`, `provider answer` or `operator`.
    pub source: String,
    /// The provider kind that said it, for a provider event or answer.
    pub kind: Option<String>,
    /// The provider's id of the event that set it.
    pub event_id: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
