//! `POST /api/v1/registrations` (SPEC §2.1).

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::AppState;
use super::observe::RequestId;
use crate::registrar::{Fields, Submission};
use crate::routes::error::ApiError;
use crate::store::{Outcome, RegisteredUser};

/// The request body. Unknown members are ignored; missing ones or wrong types are 400.
/// No `Debug`: it holds the password.
#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct RegistrationRequest {
    // The schema constraints below are never stricter than the server: schemathesis sends
    // values that break them and expects a 4xx. Rules the server applies after trimming
    // (lengths, the email's shape) are described, not encoded; a 422 lists what failed.
    /// 3–32 of a–z, 0–9, `_`, `-`, `.` (either case), starting with a letter or digit, after
    /// trimming surrounding spaces; unique case-insensitively.
    #[schema(
        example = "ada_lovelace",
        pattern = "^\\s*[A-Za-z0-9][A-Za-z0-9_.-]{2,31}\\s*$"
    )]
    pub username: String,
    /// At most 254 characters after trimming, one `@`, a non-empty local part, a domain with a
    /// dot, no spaces or control characters; unique case-insensitively.
    #[schema(example = "ada@example.com")]
    pub email: String,
    /// 8–128 characters, not the username or the email.
    #[schema(example = "correct horse battery", min_length = 8, max_length = 128, format = Password)]
    pub password: String,
}

impl RegistrationRequest {
    fn fields(&self) -> Fields<'_> {
        Fields {
            username: &self.username,
            email: &self.email,
            password: &self.password,
        }
    }
}

/// The 201 body.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct RegistrationResponse {
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

/// Registers a user, synchronously: the answer says whether the account exists now.
#[utoipa::path(
    post,
    path = "/api/v1/registrations",
    tag = "registration",
    request_body(content = RegistrationRequest, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, description = "1–255 visible ASCII characters; a retry with the same key and request within 24 h gets the first response", pattern = "^[!-~]{1,255}$", min_length = 1, max_length = 255)),
    responses(
        (status = 201, description = "Created", body = RegistrationResponse, headers(("Location" = String, description = "/api/v1/registrations/{id}"))),
        (status = 400, description = "Malformed JSON, a missing field, a wrong type, a malformed Idempotency-Key", body = crate::routes::error::Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive within server.request_timeout", body = crate::routes::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "username_taken or email_taken", body = crate::routes::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over server.max_body_bytes", body = crate::routes::error::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not application/json", body = crate::routes::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid (every failing field listed) or idempotency_key_reused", body = crate::routes::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "rate_limited", body = crate::routes::error::Problem, content_type = "application/problem+json", headers(("Retry-After" = String, description = "seconds"))),
        (status = 503, description = "unavailable: the database did not answer; nothing was written", body = crate::routes::error::Problem, content_type = "application/problem+json", headers(("Retry-After" = String, description = "seconds"))),
    )
)]
pub(super) async fn create(
    request: HttpRequest,
    state: web::Data<AppState>,
    request_id: RequestId,
    body: web::Json<RegistrationRequest>,
) -> Result<HttpResponse, ApiError> {
    let submission = match request.headers().get("idempotency-key") {
        None => Submission::Plain,
        Some(value) => Submission::Api {
            key: crate::idempotency::parse_header(value.as_bytes())
                .map_err(|e| ApiError::BadRequest(e.to_string()))?
                .to_owned(),
        },
    };
    let body = body.into_inner();
    let outcome = state
        .registrar
        .register(body.fields(), submission, &request_id.0)
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
        // The registrar answers a withdrawn registration as the deadline it is.
        Outcome::Withdrawn => Err(crate::registrar::RegistrationError::DeadlinePassed.into()),
    }
}
