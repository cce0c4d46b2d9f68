//! The HTTP boundary's one error type. Every failure a handler can meet becomes one of these
//! variants, and this file alone turns them into answers: RFC 9457 problem responses for the
//! API (SPEC §2.1), and for the form's and the console's HTML pages the same status and
//! `Retry-After` around the page they render ([`html_error`]).

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::domain::FieldError;
use crate::error_chain::error_chain;
use crate::registrar::RegistrationError;

/// Seconds a client should wait before retrying after a 503 (the API's and the form's).
pub(crate) const RETRY_AFTER_UNAVAILABLE: &str = "2";

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// 400 `bad_request`: malformed JSON, a missing field, a wrong type.
    #[error("{0}")]
    BadRequest(String),
    /// 401 `unauthorized` with `WWW-Authenticate: Bearer`: admin routes without the token.
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// 401 `unauthorized`: a provider's event whose signature or timestamp does not hold
    /// (SPEC §8); nothing changed.
    #[error("{0}")]
    BadSignature(String),
    /// 404 `not_found`.
    #[error("not found")]
    NotFound,
    /// 409 `not_retryable`: the job was delivered already, or cancelled by an erasure.
    #[error(
        "this job was delivered, or cancelled when its user was erased; there is nothing to retry"
    )]
    NotRetryable,
    /// 409 `username_taken`.
    #[error("this username is already taken")]
    UsernameTaken,
    /// 409 `email_taken`.
    #[error("an account with this email address already exists")]
    EmailTaken,
    /// 408 `request_timeout`: the body did not arrive within `server.request_timeout`.
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    /// 413 `payload_too_large`.
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// 415 `unsupported_media_type`.
    #[error("expected Content-Type: {expected}")]
    UnsupportedMediaType { expected: &'static str },
    /// 422 `invalid`, every failing field listed.
    #[error("some fields are invalid")]
    Invalid(Vec<FieldError>),
    /// 422 `idempotency_key_reused`.
    #[error("this Idempotency-Key was used for a different request")]
    IdempotencyKeyReused,
    /// 429 `rate_limited` with `Retry-After`: too many registrations from one client address.
    #[error("too many registrations from this address; retry in {retry_after} s")]
    RateLimited { retry_after: u64 },
    /// 503 `unavailable` with `Retry-After`: the database (or the actor) did not answer.
    /// Nothing was half-written.
    #[error("the service is temporarily unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// 503 `unavailable` with `Retry-After`: the registration's COMMIT began in time but had not
    /// finished a deadline later (SPEC §4.7): whether it is stored is not known, and the answer
    /// says so, and that the same registration again is safe (it gets the account if it exists).
    #[error(
        "the database has not confirmed this registration in time; it may have been stored: registering again with the same username, email and password is safe"
    )]
    Unconfirmed,
    /// 500 `internal`: a bug, never bad input.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Each way a registration fails, as its HTTP answer.
impl From<RegistrationError> for ApiError {
    fn from(e: RegistrationError) -> Self {
        use RegistrationError as R;
        match e {
            R::Invalid(errors) => ApiError::Invalid(errors),
            R::Overloaded(e) => ApiError::Unavailable(Box::new(e)),
            e @ R::DeadlinePassed => ApiError::Unavailable(Box::new(e)),
            // Unknown whether stored: 503, saying so, and that a retry with the same details
            // gets the account if it was (201, the same Location).
            R::CommitUnconfirmed => ApiError::Unconfirmed,
            R::Unavailable(e) => ApiError::Unavailable(e),
            R::Hashing(e) => ApiError::Internal(Box::new(e)),
        }
    }
}

/// A database that refused or did not answer is the server's condition: 503, never 500.
impl From<sea_orm::DbErr> for ApiError {
    fn from(e: sea_orm::DbErr) -> Self {
        ApiError::Unavailable(Box::new(e))
    }
}

/// An RFC 9457 problem document (`application/problem+json`).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Problem<'a> {
    /// A URI naming the kind of problem, e.g. `urn:signup:problem:email_taken`.
    #[serde(rename = "type")]
    kind: String,
    /// The HTTP reason phrase.
    title: &'a str,
    /// The HTTP status code.
    status: u16,
    /// A sentence for people; never echoes the password.
    detail: String,
    /// Stable and machine-readable: `bad_request`, `username_taken`, `email_taken`, `invalid`,
    /// `idempotency_key_reused`, `rate_limited`, `unavailable`, …
    code: &'a str,
    /// The field a 409 is about (`username` or `email`).
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    /// Every failing field of a 422 `invalid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a [FieldError]>,
}

impl ApiError {
    /// The stable, machine-readable `code` member.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized | ApiError::BadSignature(_) => "unauthorized",
            ApiError::NotFound => "not_found",
            ApiError::NotRetryable => "not_retryable",
            ApiError::UsernameTaken => "username_taken",
            ApiError::EmailTaken => "email_taken",
            ApiError::RequestTimeout => "request_timeout",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType { .. } => "unsupported_media_type",
            ApiError::Invalid(_) => "invalid",
            ApiError::IdempotencyKeyReused => "idempotency_key_reused",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Unavailable(_) | ApiError::Unconfirmed => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    /// `Retry-After`'s value, where the status asks the client to come back: a 429's wait, a
    /// 503's [`RETRY_AFTER_UNAVAILABLE`].
    fn retry_after(&self) -> Option<String> {
        match self {
            ApiError::RateLimited { retry_after } => Some(retry_after.to_string()),
            ApiError::Unavailable(_) | ApiError::Unconfirmed => {
                Some(RETRY_AFTER_UNAVAILABLE.to_owned())
            }
            _ => None,
        }
    }

    /// Logs what the operator should see: the server's own conditions (503, 500), not the
    /// client's mistakes.
    fn log(&self) {
        match self {
            ApiError::Unavailable(e) => {
                tracing::warn!(error = %error_chain(e.as_ref()), "answering 503")
            }
            ApiError::Unconfirmed => {
                tracing::warn!(
                    "answering 503: the registration's COMMIT has not finished a deadline after the deadline"
                )
            }
            ApiError::Internal(e) => {
                tracing::error!(error = %error_chain(e.as_ref()), "answering 500")
            }
            _ => {}
        }
    }

    fn field(&self) -> Option<&'static str> {
        match self {
            ApiError::UsernameTaken => Some("username"),
            ApiError::EmailTaken => Some("email"),
            _ => None,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized | ApiError::BadSignature(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::NotRetryable => StatusCode::CONFLICT,
            ApiError::UsernameTaken | ApiError::EmailTaken => StatusCode::CONFLICT,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Invalid(_) | ApiError::IdempotencyKeyReused => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) | ApiError::Unconfirmed => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        self.log();
        let problem = Problem {
            kind: format!("urn:signup:problem:{}", self.code()),
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: self.to_string(),
            code: self.code(),
            field: self.field(),
            errors: match self {
                ApiError::Invalid(errors) => Some(errors),
                _ => None,
            },
        };
        let mut response = HttpResponse::build(status);
        response.insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        ));
        if matches!(self, ApiError::Unauthorized) {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        if let Some(retry_after) = self.retry_after() {
            response.insert_header((header::RETRY_AFTER, retry_after));
        }
        response.body(serde_json::to_string(&problem).unwrap_or_default())
    }
}

/// `error` answered with an HTML page instead of a problem document: `page` renders it for the
/// status, and the answer carries the same `Retry-After` and is logged the same way as the
/// API's. The form and the console answer their errors through it.
pub(crate) fn html_error(
    error: &ApiError,
    page: impl FnOnce(StatusCode) -> HttpResponse,
) -> HttpResponse {
    error.log();
    let mut response = page(error.status_code());
    if let Some(value) = error
        .retry_after()
        .and_then(|v| HeaderValue::from_str(&v).ok())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// Maps actix-web's JSON extractor failures onto the problem types (SPEC §2.1).
pub(crate) fn json_error(error: actix_web::error::JsonPayloadError, limit: usize) -> ApiError {
    use actix_web::error::JsonPayloadError as J;
    match error {
        J::ContentType => ApiError::UnsupportedMediaType {
            expected: "application/json",
        },
        J::Overflow { .. } | J::OverflowKnownLength { .. } => ApiError::PayloadTooLarge { limit },
        J::Payload(actix_web::error::PayloadError::Overflow) => ApiError::PayloadTooLarge { limit },
        J::Payload(actix_web::error::PayloadError::Io(e))
            if e.kind() == std::io::ErrorKind::TimedOut =>
        {
            ApiError::RequestTimeout
        }
        J::Deserialize(e) => ApiError::BadRequest(describe_json_error(&e)),
        other => ApiError::BadRequest(format!("unreadable body: {other}")),
    }
}

/// Maps the URL-encoded form extractor's failures the same way.
pub(crate) fn form_error(error: actix_web::error::UrlencodedError, limit: usize) -> ApiError {
    use actix_web::error::UrlencodedError as U;
    match error {
        U::ContentType => ApiError::UnsupportedMediaType {
            expected: "application/x-www-form-urlencoded",
        },
        U::Overflow { .. } => ApiError::PayloadTooLarge { limit },
        U::Payload(actix_web::error::PayloadError::Overflow) => ApiError::PayloadTooLarge { limit },
        U::Payload(actix_web::error::PayloadError::Io(e))
            if e.kind() == std::io::ErrorKind::TimedOut =>
        {
            ApiError::RequestTimeout
        }
        other => ApiError::BadRequest(format!("invalid form body: {other}")),
    }
}

/// serde_json's message without the offending value: "invalid type: integer `12345678`" could
/// echo a password sent with the wrong type.
fn describe_json_error(e: &serde_json::Error) -> String {
    let at = format!("at line {} column {}", e.line(), e.column());
    match e.classify() {
        serde_json::error::Category::Data => {
            let message = e.to_string();
            if let Some(expected) = message.split(", expected ").nth(1) {
                let expected = expected.split(" at line").next().unwrap_or(expected);
                format!("a field has the wrong type or value (expected {expected}) {at}")
            } else {
                // "missing field `email`", "duplicate field `email`": no values in them.
                message
            }
        }
        serde_json::error::Category::Syntax => format!("malformed JSON {at}"),
        serde_json::error::Category::Eof => "the JSON body ends too early".to_string(),
        serde_json::error::Category::Io => "the body could not be read".to_string(),
    }
}
