//! The registration pipeline shared by the JSON API and the HTML form:
//! validate → hash (hashing threads, in parallel) → RegistrationActor (serialized) → outcome.

use std::sync::Arc;
use std::time::Instant;

use actix::Addr;

use crate::actors::{RegisterUser, RegistrationActor, RegistrationError};
use crate::domain::NewRegistration;
use crate::error::ApiError;
use crate::hashing::PasswordHasher;
use crate::metrics::Metrics;
use crate::store::{self, Candidate, IdempotencyKey, Outcome};

/// What makes a submission safe to repeat.
#[derive(Debug, Clone)]
pub enum Submission {
    /// No key: a repeat is a new registration attempt (and 409s).
    Plain,
    /// The HTML form's nonce: a repeat lands on the first outcome, whatever was edited.
    Form { nonce: String },
    /// The API's `Idempotency-Key`: a repeat of the same request gets the first 201; the same
    /// key with another request is 422 `idempotency_key_reused`.
    Api { key: String },
}

/// What the routes need to register someone.
#[derive(Clone)]
pub struct Registrar {
    pub hasher: PasswordHasher,
    pub actor: Addr<RegistrationActor>,
    pub metrics: Arc<Metrics>,
    /// For idempotency-key lookups (reads only; writes go through the actor).
    pub db: sea_orm::DatabaseConnection,
}

impl Registrar {
    /// Registers the raw fields. Bad input is `ApiError::Invalid` and touches nothing; a taken
    /// name or address is an `Outcome`, not an error.
    /// `request_id` follows the registration into the actor's log lines.
    pub async fn register(
        &self,
        username: &str,
        email: &str,
        password: &str,
        submission: Submission,
        request_id: &str,
    ) -> Result<Outcome, ApiError> {
        let started = Instant::now();
        let result = self
            .register_unmeasured(username, email, password, submission, request_id)
            .await;
        let outcome = match &result {
            Ok(Outcome::Created(_) | Outcome::Replayed(_)) => "created",
            Ok(Outcome::UsernameTaken) => "username_taken",
            Ok(Outcome::EmailTaken) => "email_taken",
            Ok(Outcome::IdempotencyKeyReused) | Err(ApiError::Invalid(_)) => "invalid",
            Err(_) => "error",
        };
        self.metrics
            .registrations
            .with_label_values(&[outcome])
            .inc();
        self.metrics
            .registration_duration
            .observe(started.elapsed().as_secs_f64());
        result
    }

    async fn register_unmeasured(
        &self,
        username: &str,
        email: &str,
        password: &str,
        submission: Submission,
        request_id: &str,
    ) -> Result<Outcome, ApiError> {
        let new = NewRegistration::parse(username, email, password).map_err(ApiError::Invalid)?;
        let idempotency = match submission {
            Submission::Plain => None,
            Submission::Form { nonce } => Some(IdempotencyKey {
                key: format!("form:{nonce}"),
                fingerprint: String::new(),
            }),
            Submission::Api { key } => {
                let key = IdempotencyKey {
                    key: format!("api:{key}"),
                    fingerprint: fingerprint(&new),
                };
                if let Some(outcome) = self.replay(&key, &new).await? {
                    return Ok(outcome);
                }
                Some(key)
            }
        };
        let password_hash = self
            .hasher
            .hash(new.password)
            .await
            .map_err(|e| ApiError::Internal(Box::new(e)))?;
        let candidate = Candidate {
            username: new.username,
            email: new.email,
            password_hash,
            idempotency,
            request_id: request_id.to_owned(),
        };
        self.actor
            .send(RegisterUser(candidate))
            .await
            // The actor's mailbox is closed or full: a transient condition, never the client's fault.
            .map_err(|e| ApiError::Unavailable(Box::new(e)))?
            .map_err(|RegistrationError::Unavailable(e)| ApiError::Unavailable(e.into()))
    }
}

impl Registrar {
    /// The answer to a repeated API key, if the key was used before (and is not expired).
    /// A repeat must be the same request: same username and email (the fingerprint) and the
    /// same password, checked against the stored argon2 hash, so no fast hash of the password
    /// is ever stored.
    async fn replay(
        &self,
        key: &IdempotencyKey,
        new: &NewRegistration,
    ) -> Result<Option<Outcome>, ApiError> {
        let known = store::find_key(&self.db, &key.key)
            .await
            .map_err(|e| ApiError::Unavailable(Box::new(e)))?;
        let Some((fingerprint, user, password_hash)) = known else {
            return Ok(None);
        };
        if fingerprint != key.fingerprint {
            return Ok(Some(Outcome::IdempotencyKeyReused));
        }
        let same_password = self
            .hasher
            .verify(new.password.expose(), &password_hash)
            .await
            .map_err(|e| ApiError::Internal(Box::new(e)))?;
        Ok(Some(if same_password {
            Outcome::Replayed(user)
        } else {
            Outcome::IdempotencyKeyReused
        }))
    }
}

/// SHA-256 of the normalised username and email.
fn fingerprint(new: &NewRegistration) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(new.username.normalized())
        .chain_update([0u8])
        .chain_update(new.email.normalized())
        .finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
