//! The operator console (SPEC §7): server-rendered pages under `/admin` that work without
//! JavaScript, for the people on call. Present only when `admin.token` is set (404 otherwise).
//!
//! Signing in with the admin token sets a session cookie signed with the server key and bound
//! to the token (changing `admin.token` signs everyone out), `HttpOnly`, `SameSite=Strict`,
//! 12 h, and records the session (`sessions`): signing out revokes it for every instance. Every state-changing form carries a CSRF token bound to the session. Sign-in
//! attempts are rate-limited per client address. Retry, retry-all and erase do what the admin
//! API does (`outbox::requeue`, `outbox::requeue_all_dead`, `erasure::erase`).

use std::fmt::Write as _;

use actix_web::cookie::{Cookie, SameSite, time::Duration as CookieDuration};
use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use chrono::{DateTime, Utc};
use entity::email_outbox::Status;
use sea_orm::DbErr;
use serde::Deserialize;
use uuid::Uuid;

use super::admin::{REQUEUE_BATCH, token_digest, token_matches, wake};
use super::console_views::{JobRow, JobsView, OverviewView, SearchView};
use super::error::{ApiError, html_error};
use super::{AppState, csrf, pages};
use crate::activity::{MINUTES, MinuteCounts, Snapshot};
use crate::email::CircuitState;
use crate::erasure::{EraseError, Who};
use crate::outbox::{self, Requeue};
use crate::store;

/// How long a console session lasts.
const SESSION_HOURS: i64 = 12;
/// Jobs per page.
const PAGE: u64 = 50;

/// Why a console request is not served.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConsoleError {
    /// `admin.token` is unset: the console does not exist.
    #[error("not found")]
    NotFound,
    /// No valid session: to the sign-in page.
    #[error("sign in first")]
    SignIn,
    /// A form without this session's CSRF token.
    #[error("this form has expired")]
    Expired,
    #[error(transparent)]
    Database(#[from] DbErr),
}

impl ResponseError for ConsoleError {
    fn status_code(&self) -> StatusCode {
        match self {
            ConsoleError::NotFound => StatusCode::NOT_FOUND,
            ConsoleError::SignIn => StatusCode::SEE_OTHER,
            ConsoleError::Expired => StatusCode::FORBIDDEN,
            ConsoleError::Database(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            ConsoleError::NotFound => ApiError::NotFound.error_response(),
            ConsoleError::SignIn => see_other("/admin/login"),
            // A page without the navigation: its sign-out form would need the token that failed.
            ConsoleError::Expired => pages::console_message(
                StatusCode::FORBIDDEN,
                "This form has expired",
                "Go back, reload the page and try again.",
            ),
            ConsoleError::Database(e) => {
                html_error(&ApiError::Unavailable(Box::new(e.clone())), |status| {
                    pages::console_message(
                        status,
                        "The database did not answer",
                        "Nothing was changed. Try again in a moment.",
                    )
                })
            }
        }
    }
}

impl From<EraseError> for ConsoleError {
    fn from(e: EraseError) -> Self {
        match e {
            EraseError::NotFound => ConsoleError::NotFound,
            EraseError::Database(e) => ConsoleError::Database(e),
        }
    }
}

/// How any console form's body is refused before anything else looks at it (OpenAPI only).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum FormRefused<'p> {
    /// Unreadable form body
    #[response(status = 400, content_type = "application/problem+json")]
    Unreadable(crate::routes::error::Problem<'p>),
    /// Body over server.max_body_bytes
    #[response(status = 413, content_type = "application/problem+json")]
    TooLarge(crate::routes::error::Problem<'p>),
    /// Not application/x-www-form-urlencoded
    #[response(status = 415, content_type = "application/problem+json")]
    NotAForm(crate::routes::error::Problem<'p>),
}

/// How a console page is refused: signed out, or no console at all (OpenAPI only).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum PageRefused<'p> {
    /// Signed out: to the sign-in page
    #[response(status = 303, headers(("Location" = String, description = "/admin/login")))]
    SignIn,
    /// admin.token is not set
    #[response(status = 404, content_type = "application/problem+json")]
    NotFound(crate::routes::error::Problem<'p>),
}

/// [`ConsoleError::Expired`] (OpenAPI only).
#[derive(utoipa::IntoResponses)]
#[response(
    status = 403,
    description = "No CSRF token of this session; nothing changed",
    content_type = "text/html"
)]
#[allow(dead_code)]
struct Expired(String);

/// [`ConsoleError::Database`] (OpenAPI only).
#[derive(utoipa::IntoResponses)]
#[response(
    status = 503,
    description = "The database did not answer; nothing changed",
    content_type = "text/html",
    headers(("Retry-After" = String, description = "Seconds"))
)]
#[allow(dead_code)]
struct Unavailable(String);

/// A signed-in operator: taking it as an argument is a console route's check. Holds the
/// session id that the page's CSRF tokens are bound to.
pub(super) struct Operator {
    session: String,
}

impl actix_web::FromRequest for Operator {
    type Error = ConsoleError;
    type Future = futures_util::future::LocalBoxFuture<'static, Result<Self, ConsoleError>>;

    fn from_request(request: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let request = request.clone();
        Box::pin(async move {
            match request.app_data::<web::Data<AppState>>() {
                Some(state) => signed_in(&request, state).await,
                None => Err(ConsoleError::NotFound),
            }
        })
    }
}

/// An action's check: 404 without `admin.token` as for pages, but a signed-out browser is
/// sent to the sign-in only after its form was read, so that a malformed request is refused as
/// such (400, 413, 415) whoever sends it.
pub(super) struct Action(Option<Operator>);

impl actix_web::FromRequest for Action {
    type Error = ConsoleError;
    type Future = futures_util::future::LocalBoxFuture<'static, Result<Self, ConsoleError>>;

    fn from_request(request: &HttpRequest, payload: &mut actix_web::dev::Payload) -> Self::Future {
        let operator = Operator::from_request(request, payload);
        Box::pin(async move {
            match operator.await {
                Ok(operator) => Ok(Action(Some(operator))),
                Err(ConsoleError::SignIn) => Ok(Action(None)),
                Err(e) => Err(e),
            }
        })
    }
}

impl Action {
    /// The operator, once the form is read; to the sign-in without a session.
    fn operator(self) -> Result<Operator, ConsoleError> {
        self.0.ok_or(ConsoleError::SignIn)
    }

    /// The operator, if the form carries this session's CSRF token: every action's check.
    fn checked(self, state: &AppState, csrf_token: &str) -> Result<Operator, ConsoleError> {
        let operator = self.operator()?;
        operator.check(state, csrf_token)?;
        Ok(operator)
    }
}

/// A console path's `{id}`: a malformed one names nothing, 404.
fn path_id(path: &str) -> Result<Uuid, ConsoleError> {
    Uuid::parse_str(path).map_err(|_| ConsoleError::NotFound)
}

/// The operator a request's cookie signs in: a cookie signed for the current `admin.token`,
/// not expired, whose session the database still holds open (signing out revokes it there,
/// for every instance).
async fn signed_in(request: &HttpRequest, state: &AppState) -> Result<Operator, ConsoleError> {
    let token = state.admin_token.as_ref().ok_or(ConsoleError::NotFound)?;
    let cookie = request
        .cookie(state.cookies.console())
        .ok_or(ConsoleError::SignIn)?;
    let now = Utc::now();
    let session = state
        .csrf
        .open_console(cookie.value(), now.timestamp(), &token_digest(token))
        .ok_or(ConsoleError::SignIn)?
        .to_owned();
    if !crate::sessions::is_open(&state.db, &session, now).await? {
        return Err(ConsoleError::SignIn);
    }
    Ok(Operator { session })
}

impl Operator {
    fn csrf_token(&self, state: &AppState) -> String {
        state.csrf.issue(&self.session)
    }

    /// Ok if `token` was issued for this session.
    fn check(&self, state: &AppState, token: &str) -> Result<(), ConsoleError> {
        state
            .csrf
            .verify(&self.session, token)
            .map(|_| ())
            .ok_or(ConsoleError::Expired)
    }
}

fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

fn cookie<'c>(
    state: &AppState,
    name: &'c str,
    value: String,
    max_age: CookieDuration,
) -> Cookie<'c> {
    Cookie::build(name, value)
        .path(state.cookies.console_path())
        .http_only(true)
        .secure(state.cookies.secure)
        .same_site(SameSite::Strict)
        .max_age(max_age)
        .finish()
}

fn add_cookie(response: &mut HttpResponse, cookie: &Cookie<'_>) {
    if let Err(e) = response.add_cookie(cookie) {
        tracing::warn!(error = %e, "cannot set a console cookie");
    }
}

mod jobs;
mod overview;
mod search;
mod sign_in;

pub(super) use jobs::*;
pub(super) use overview::*;
pub(super) use search::*;
pub(super) use sign_in::*;
