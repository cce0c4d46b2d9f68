//! Idempotent submissions: the form's nonce and the API's `Idempotency-Key` name a submission,
//! so that a repeat lands on the first outcome instead of creating anything (SPEC §2.1, §2.2).
//! The key is written in the user's own transaction (`store`); a repeat is recognised here
//! before hashing, or by the transaction itself when two arrive at once.

use chrono::Utc;
use entity::{idempotency_key, user};
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QuerySelect};

use crate::domain::NewRegistration;
use crate::domain::RegisteredUser;

/// A submission's key and the fingerprint of what it asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// Namespaced, e.g. `form:<nonce>`.
    pub key: String,
    /// Equal fingerprints mean "the same request".
    pub fingerprint: String,
}

/// Namespace of the API's `Idempotency-Key`s among the stored keys.
pub(crate) const API_KEY_PREFIX: &str = "api:";

/// SHA-256 of the normalised username and email.
pub(crate) fn fingerprint(new: &NewRegistration) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(new.username.normalized())
        .chain_update([0u8])
        .chain_update(new.email.normalized())
        .finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// How long an idempotency key is remembered.
pub(crate) const KEY_TTL: chrono::Duration = chrono::Duration::hours(24);

/// A key used within the last 24 h: its fingerprint, its user and the user's password hash.
pub(crate) async fn find_key(
    db: &DatabaseConnection,
    key: &str,
) -> Result<Option<(String, RegisteredUser, String)>, DbErr> {
    let Some(row) = idempotency_key::Entity::find_by_id(key.to_owned())
        .filter(idempotency_key::Column::CreatedAt.gte(Utc::now() - KEY_TTL))
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    let user = user::Entity::find_by_id(row.user_id).one(db).await?;
    Ok(user.map(|u| {
        let hash = u.password_hash.clone();
        (row.fingerprint, u.into(), hash)
    }))
}

/// Deletes keys older than 24 h, `batch` at a time. Returns how many.
pub(crate) async fn delete_expired_keys(db: &DatabaseConnection, batch: u64) -> Result<u64, DbErr> {
    let mut total = 0;
    loop {
        let old: Vec<String> = idempotency_key::Entity::find()
            .select_only()
            .column(idempotency_key::Column::Key)
            .filter(idempotency_key::Column::CreatedAt.lt(Utc::now() - KEY_TTL))
            .limit(batch)
            .into_tuple()
            .all(db)
            .await?;
        if old.is_empty() {
            return Ok(total);
        }
        let n = old.len() as u64;
        idempotency_key::Entity::delete_many()
            .filter(idempotency_key::Column::Key.is_in(old))
            .exec(db)
            .await?;
        total += n;
        if n < batch {
            return Ok(total);
        }
    }
}

/// A malformed `Idempotency-Key` header (400).
#[derive(Debug, thiserror::Error)]
#[error("Idempotency-Key must be 1–255 visible ASCII characters")]
pub(crate) struct MalformedKey;

/// An `Idempotency-Key` header's value: 1–255 visible ASCII characters (SPEC §2.1), so that the
/// stored key (`api:` + it) fits its column.
pub(crate) fn parse_header(value: &[u8]) -> Result<&str, MalformedKey> {
    let valid = (1..=255).contains(&value.len()) && value.iter().all(|b| b.is_ascii_graphic());
    match std::str::from_utf8(value) {
        Ok(key) if valid => Ok(key),
        _ => Err(MalformedKey),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn idempotency_keys_are_1_to_255_visible_ascii_characters() {
        assert!(super::parse_header(b"a").is_ok());
        assert!(super::parse_header(&[b'k'; 255]).is_ok());
        assert!(super::parse_header(b"").is_err());
        assert!(super::parse_header(&[b'k'; 256]).is_err());
        assert!(super::parse_header(b"has space").is_err());
        assert!(super::parse_header("é".as_bytes()).is_err());
    }
}
