//! `POST /api/v1/registrations` (SPEC §2.1).

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use super::observe::RequestId;
use crate::error::ApiError;
use crate::registration::Submission;
use crate::store::{Outcome, RegisteredUser};

/// The request body. Unknown members are ignored; missing ones or wrong types are 400.
/// No `Debug`: it holds the password.
#[derive(Deserialize)]
pub struct RegistrationRequest {
    pub username: String,
    pub email: String,
    pub password: String,
}

/// The 201 body.
#[derive(Serialize)]
pub struct RegistrationResponse {
    pub id: Uuid,
    pub username: String,
    pub email: String,
    pub created_at: DateTime<Utc>,
}

impl From<RegisteredUser> for RegistrationResponse {
    fn from(u: RegisteredUser) -> Self {
        Self {
            id: u.id,
            username: u.username,
            email: u.email,
            created_at: u.created_at,
        }
    }
}

pub async fn create(
    request: HttpRequest,
    state: web::Data<AppState>,
    request_id: RequestId,
    body: web::Json<RegistrationRequest>,
) -> Result<HttpResponse, ApiError> {
    let submission = match request.headers().get("idempotency-key") {
        None => Submission::Plain,
        Some(value) => Submission::Api {
            key: idempotency_key(value.as_bytes())?.to_owned(),
        },
    };
    let body = body.into_inner();
    let outcome = state
        .registrar
        .register(
            &body.username,
            &body.email,
            &body.password,
            submission,
            &request_id.0,
        )
        .await?;
    match outcome {
        Outcome::Created(user) | Outcome::Replayed(user) => Ok(HttpResponse::Created()
            .insert_header((
                header::LOCATION,
                format!("/api/v1/registrations/{}", user.id),
            ))
            .json(RegistrationResponse::from(user))),
        Outcome::UsernameTaken => Err(ApiError::UsernameTaken),
        Outcome::EmailTaken => Err(ApiError::EmailTaken),
        Outcome::IdempotencyKeyReused => Err(ApiError::IdempotencyKeyReused),
    }
}

/// An `Idempotency-Key` is 1–255 visible ASCII characters.
fn idempotency_key(value: &[u8]) -> Result<&str, ApiError> {
    let valid = (1..=255).contains(&value.len()) && value.iter().all(|b| b.is_ascii_graphic());
    match std::str::from_utf8(value) {
        Ok(key) if valid => Ok(key),
        _ => Err(ApiError::BadRequest(
            "Idempotency-Key must be 1–255 visible ASCII characters".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn idempotency_keys_are_1_to_255_visible_ascii_characters() {
        assert!(super::idempotency_key(b"a").is_ok());
        assert!(super::idempotency_key(&[b'k'; 255]).is_ok());
        assert!(super::idempotency_key(b"").is_err());
        assert!(super::idempotency_key(&[b'k'; 256]).is_err());
        assert!(super::idempotency_key(b"has space").is_err());
        assert!(super::idempotency_key("é".as_bytes()).is_err());
    }
}
