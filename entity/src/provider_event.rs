//! An event a provider sent (SPEC §8), remembered by its id so that a replay changes nothing.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "provider_events")]
pub struct Model {
    /// The provider kind (`mailgun`, …).
    #[sea_orm(primary_key, auto_increment = false)]
    pub kind: String,
    /// The provider's id of the event.
    #[sea_orm(primary_key, auto_increment = false)]
    pub event_id: String,
    /// The contact it was about, if known (erasure deletes a person's events by it).
    pub contact: Option<String>,
    pub received_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
