//! A secret shared by every instance on the database and kept across restarts, by name
//! (`csrf`: signs the form's CSRF tokens and the welcome cookie). Generated once, never rotated
//! in place.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "server_keys")]
pub struct Model {
    /// What the key is for, e.g. `csrf`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    /// The key's bytes.
    pub secret: Vec<u8>,
    /// When the first instance generated it.
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
