//! A stored user, as the API shows it.

use chrono::{DateTime, Utc};
use entity::user;
use uuid::Uuid;

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
