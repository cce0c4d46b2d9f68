//! A submission that created a user, remembered by its key so that a retried submission (the
//! form posted twice with one CSRF nonce, or an API request with an `Idempotency-Key`) answers
//! with the first outcome instead of creating anything. Written in the user's transaction.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "idempotency_keys")]
pub struct Model {
    /// Namespaced key, e.g. `form:<nonce>` or `api:<Idempotency-Key>`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub key: String,
    /// SHA-256 of the normalised request, to tell a replay from a reuse with another body.
    pub fingerprint: String,
    /// The user the first submission created.
    pub user_id: Uuid,
    /// When the key was first used; keys expire after 24 h.
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
