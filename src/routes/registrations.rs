//! `POST /api/v1/registrations` (SPEC §2.1).

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use super::observe::RequestId;
use crate::error::ApiError;
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
    state: web::Data<AppState>,
    request_id: RequestId,
    body: web::Json<RegistrationRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let outcome = state
        .registrar
        .register(
            &body.username,
            &body.email,
            &body.password,
            None,
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
