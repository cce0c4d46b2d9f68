//! A signed-in operator console session (SPEC §7), stored so that signing out ends it on every
//! instance: the cookie names a session, this row says whether it still holds.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "console_sessions")]
pub struct Model {
    /// SHA-256 (hex) of the session id the cookie carries: the table alone opens nothing.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub created_at: DateTimeUtc,
    /// Refreshed at most every few minutes while the operator uses the console.
    pub last_seen_at: DateTimeUtc,
    pub expires_at: DateTimeUtc,
    /// Set by signing out: the session opens nothing any more.
    pub revoked_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
