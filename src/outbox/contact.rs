//! The provider contact an outbox row is about, as a keyed hash: rows about the same contact
//! (the same normalised email, across users) are delivered in the order they were written
//! (SPEC §6), and the claim finds the earlier ones by this column's index.
//!
//! Why a keyed hash and not the address: erasure scrubs the address from every row of the
//! erased user, and a plain hash of an address is a way back to it (hash the candidates). The
//! key is the server's own, stored in `server_keys` (shared by every instance on the database,
//! so all of them key a contact alike) and never leaves it.

use chrono::Utc;
use entity::server_key;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, ConnectionTrait, DbErr, EntityTrait};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::Sha256;

/// The row of `server_keys` holding this key.
const KEY_NAME: &str = "outbox_contact";

/// Keys a contact for the outbox's `contact` column.
#[derive(Clone)]
pub(crate) struct ContactKey(SecretSlice<u8>);

impl std::fmt::Debug for ContactKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContactKey(…)")
    }
}

impl ContactKey {
    /// The stored key, generated and stored first by whichever instance needs it first.
    pub(crate) async fn load_or_create<C: ConnectionTrait>(db: &C) -> Result<Self, DbErr> {
        Ok(Self(SecretSlice::from(
            load_or_create_server_key(db, KEY_NAME).await?,
        )))
    }

    /// The `contact` of a row about `normalized_email` (hex of HMAC-SHA256).
    pub(crate) fn of(&self, normalized_email: &str) -> String {
        // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.expose_secret())
            .expect("HMAC takes any key length");
        mac.update(normalized_email.as_bytes());
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// The server key named `name`, generated and stored first if no instance has yet. Instances
/// starting together agree: only one insert wins, and each reads it back. Once it exists this
/// is one read (an erasure asks for it each time: no write of its own on SQLite's one lock).
pub(crate) async fn load_or_create_server_key<C: ConnectionTrait>(
    db: &C,
    name: &str,
) -> Result<Vec<u8>, DbErr> {
    if let Some(stored) = server_key::Entity::find_by_id(name.to_owned())
        .one(db)
        .await?
    {
        return Ok(stored.secret);
    }
    let mut secret = vec![0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let fresh = server_key::ActiveModel {
        name: Set(name.to_owned()),
        secret: Set(secret),
        created_at: Set(Utc::now()),
    };
    server_key::Entity::insert(fresh)
        .on_conflict(
            OnConflict::column(server_key::Column::Name)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    let stored = server_key::Entity::find_by_id(name.to_owned())
        .one(db)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("server_keys: {name}")))?;
    Ok(stored.secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contact_is_keyed_by_the_server_key_and_does_not_show_the_address() {
        let key = ContactKey(SecretSlice::from(vec![7u8; 32]));
        let other = ContactKey(SecretSlice::from(vec![8u8; 32]));

        let alice = key.of("alice@example.com");

        assert_eq!(alice, key.of("alice@example.com"), "stable");
        assert_ne!(alice, key.of("bob@example.com"));
        assert_ne!(
            alice,
            other.of("alice@example.com"),
            "another key, another value"
        );
        assert_eq!(alice.len(), 64);
        assert!(!alice.contains("alice"));
    }
}
