//! The registration pipeline shared by the JSON API and the HTML form:
//! validate → hash (blocking pool, in parallel) → RegistrationActor (serialized) → outcome.

use actix::Addr;

use crate::actors::{RegisterUser, RegistrationActor, RegistrationError};
use crate::domain::NewRegistration;
use crate::error::ApiError;
use crate::hashing::PasswordHasher;
use crate::store::{Candidate, IdempotencyKey, Outcome};

/// What the routes need to register someone.
#[derive(Clone)]
pub struct Registrar {
    pub hasher: PasswordHasher,
    pub actor: Addr<RegistrationActor>,
}

impl Registrar {
    /// Registers the raw fields. Bad input is `ApiError::Invalid` and touches nothing; a taken
    /// name or address is an `Outcome`, not an error.
    pub async fn register(
        &self,
        username: &str,
        email: &str,
        password: &str,
        idempotency: Option<IdempotencyKey>,
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
        };
        self.actor
            .send(RegisterUser(candidate))
            .await
            // The actor's mailbox is closed or full: a transient condition, never the client's fault.
            .map_err(|e| ApiError::Unavailable(Box::new(e)))?
            .map_err(|RegistrationError::Unavailable(e)| ApiError::Unavailable(e.into()))
    }
}
