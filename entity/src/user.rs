//! A registered user. `username_normalized` and `email_normalized` carry the unique indexes;
//! `username` and `email` keep the person's own spelling for display.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    /// Random (v4) id, also the `user_id` sent to the email provider.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The username as typed (trimmed).
    pub username: String,
    /// Lower-cased username; unique.
    #[sea_orm(unique)]
    pub username_normalized: String,
    /// The email address as typed (trimmed).
    pub email: String,
    /// Lower-cased email address; unique.
    #[sea_orm(unique)]
    pub email_normalized: String,
    /// argon2id PHC string; never leaves the server.
    pub password_hash: String,
    /// When the registration was committed.
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::email_outbox::Entity")]
    EmailOutbox,
}

impl Related<super::email_outbox::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::EmailOutbox.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
