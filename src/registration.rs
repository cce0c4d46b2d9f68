//! The registration pipeline shared by the JSON API and the HTML form:
//! validate → hash (blocking pool, in parallel) → RegistrationActor (serialized) → outcome.

use std::sync::Arc;
use std::time::Instant;

use actix::Addr;

use crate::actors::{RegisterUser, RegistrationActor, RegistrationError};
use crate::domain::NewRegistration;
use crate::error::ApiError;
use crate::hashing::PasswordHasher;
use crate::metrics::Metrics;
use crate::store::{Candidate, IdempotencyKey, Outcome};

/// What the routes need to register someone.
#[derive(Clone)]
pub struct Registrar {
    pub hasher: PasswordHasher,
    pub actor: Addr<RegistrationActor>,
    pub metrics: Arc<Metrics>,
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
        idempotency: Option<IdempotencyKey>,
        request_id: &str,
    ) -> Result<Outcome, ApiError> {
        let started = Instant::now();
        let result = self
            .register_unmeasured(username, email, password, idempotency, request_id)
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
        idempotency: Option<IdempotencyKey>,
        request_id: &str,
    ) -> Result<Outcome, ApiError> {
        let new = NewRegistration::parse(username, email, password).map_err(ApiError::Invalid)?;
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
