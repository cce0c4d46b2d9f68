//! The HTML sign-up form (SPEC §2.2): works without JavaScript, POST/redirect/GET.

use actix_web::cookie::{Cookie, SameSite, time::Duration as CookieDuration};
use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use super::error::{ApiError, html_error};
use super::observe::RequestId;
use super::pages::{self, FormView};
use super::{AppState, csrf};
use crate::domain::FieldError;
use crate::registrar::{Fields, RegistrationError, Submission};
use crate::store::{self, Outcome};

/// The posted form. Absent fields are empty strings, so they get the same field messages as
/// empty ones. No `Debug`: it holds the password.
#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct RegisterForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf_token: String,
}

impl RegisterForm {
    fn fields(&self) -> Fields<'_> {
        Fields {
            username: &self.username,
            email: &self.email,
            password: &self.password,
        }
    }
}

#[utoipa::path(get, path = "/", tag = "form",
    responses((status = 303, description = "To the form", headers(("Location" = String, description = "/register")))))]
pub(super) async fn root() -> HttpResponse {
    see_other("/register")
}

/// The sign-up form (HTML; works without JavaScript).
#[utoipa::path(get, path = "/register", tag = "form",
    responses((status = 200, description = "The form, with a csrf_token bound to a cookie", body = String, content_type = "text/html")))]
pub(super) async fn show(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let (session, is_new) = browser_session(&request, &state);
    let view = FormView {
        csrf_token: state.csrf.issue(&session),
        ..FormView::default()
    };
    with_session_cookie(
        pages::register(StatusCode::OK, &view),
        &state,
        &session,
        is_new,
    )
}

/// The form's submission: POST/redirect/GET.
#[utoipa::path(post, path = "/register", tag = "form",
    request_body(content = RegisterForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Registered (or the same form again): to the welcome page", headers(("Location" = String, description = "/register/welcome"))),
        (status = 400, description = "Unreadable form body", body = crate::routes::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Missing or wrong CSRF token; nothing created", body = String, content_type = "text/html"),
        (status = 408, description = "The body did not arrive within server.request_timeout", body = crate::routes::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The form again: username or email taken", body = String, content_type = "text/html"),
        (status = 413, description = "Body over server.max_body_bytes", body = crate::routes::error::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not application/x-www-form-urlencoded", body = crate::routes::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "The form again: a message by each invalid field", body = String, content_type = "text/html"),
        (status = 429, description = "The form again: too many sign-ups from this address", body = String, content_type = "text/html"),
        (status = 503, description = "The form again: try again in a moment", body = String, content_type = "text/html"),
    ))]
pub(super) async fn submit(
    request: HttpRequest,
    state: web::Data<AppState>,
    request_id: RequestId,
    form: web::Form<RegisterForm>,
) -> HttpResponse {
    let form = form.into_inner();
    let session = request
        .cookie(state.cookies.session())
        .map(|c| c.value().to_owned());
    let Some(nonce) = session
        .as_deref()
        .and_then(|s| state.csrf.verify(s, &form.csrf_token))
    else {
        return pages::message(
            StatusCode::FORBIDDEN,
            "This form has expired",
            "Please reload the sign-up page and submit it again. (Cookies must be enabled.)",
        );
    };
    let session = session.unwrap_or_default();
    // The nonce names this rendering of the form: a resubmission replays the first outcome.
    let key = Submission::Form {
        nonce: nonce.to_owned(),
    };
    let result = state
        .registrar
        .register(form.fields(), key, &request_id.0)
        .await;
    let again = |status: StatusCode, errors: Vec<FieldError>, notice: Option<String>| {
        let view = FormView {
            username: form.username.trim().to_owned(),
            email: form.email.trim().to_owned(),
            csrf_token: state.csrf.issue(&session),
            errors,
            notice,
        };
        pages::register(status, &view)
    };
    match result {
        Ok(Outcome::Created(user) | Outcome::Replayed(user)) => {
            let mut response = see_other("/register/welcome");
            let cookies = state.cookies;
            let cookie = Cookie::build(cookies.welcome(), state.csrf.sign_welcome(user.id))
                .path(cookies.path())
                .http_only(true)
                .secure(cookies.secure)
                .same_site(SameSite::Lax)
                .max_age(CookieDuration::hours(1))
                .finish();
            if let Err(e) = response.add_cookie(&cookie) {
                tracing::warn!(error = %e, "cannot set the welcome cookie");
            }
            response
        }
        Ok(Outcome::UsernameTaken) => again(
            StatusCode::CONFLICT,
            vec![FieldError::new(
                "username",
                "taken",
                "This username is already taken.",
            )],
            None,
        ),
        Ok(Outcome::EmailTaken) => again(
            StatusCode::CONFLICT,
            vec![FieldError::new(
                "email",
                "taken",
                "An account with this email address already exists.",
            )],
            None,
        ),
        Ok(Outcome::IdempotencyKeyReused) => again(
            StatusCode::CONFLICT,
            Vec::new(),
            Some("This form was already used. Please submit it again.".into()),
        ),
        Err(RegistrationError::Invalid(errors)) => {
            again(StatusCode::UNPROCESSABLE_ENTITY, errors, None)
        }
        Ok(Outcome::Withdrawn) | Err(_) => {
            let e = ApiError::from(result.err().unwrap_or(RegistrationError::DeadlinePassed));
            html_error(&e, |status| {
                again(
                    status,
                    Vec::new(),
                    Some("We could not complete your registration just now. Please try again in a moment.".into()),
                )
            })
        }
    }
}

/// The form again, with 429, `Retry-After` and a message (the rate limit's answer).
pub(super) fn rate_limited(
    request: &HttpRequest,
    state: &AppState,
    retry_after: u64,
) -> HttpResponse {
    let (session, is_new) = browser_session(request, state);
    let view = FormView {
        csrf_token: state.csrf.issue(&session),
        notice: Some(format!(
            "Too many sign-ups from your network just now. Please try again in {retry_after} seconds."
        )),
        ..FormView::default()
    };
    html_error(&ApiError::RateLimited { retry_after }, |status| {
        with_session_cookie(pages::register(status, &view), state, &session, is_new)
    })
}

/// Greets the person this browser just registered.
#[utoipa::path(get, path = "/register/welcome", tag = "form",
    responses(
        (status = 200, description = "Welcome, <name>!", body = String, content_type = "text/html"),
        (status = 303, description = "Nobody registered from this browser: to the form", headers(("Location" = String, description = "/register"))),
        (status = 503, description = "The account exists; the page cannot be shown just now", body = String, content_type = "text/html"),
    ))]
pub(super) async fn welcome(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let id = request
        .cookie(state.cookies.welcome())
        .and_then(|c| state.csrf.open_welcome(c.value()));
    let Some(id) = id else {
        return see_other("/register");
    };
    match store::find_user(&state.db, id).await {
        Ok(Some(user)) => pages::welcome(&user.username),
        Ok(None) => see_other("/register"),
        Err(e) => html_error(&ApiError::from(e), |status| {
            pages::message(
                status,
                "Welcome!",
                "Your account exists. This page could not be shown just now; please reload it.",
            )
        }),
    }
}

/// The browser's session id, or a new one (true) to be set.
fn browser_session(request: &HttpRequest, state: &AppState) -> (String, bool) {
    match request.cookie(state.cookies.session()) {
        Some(c) if csrf::is_session_id(c.value()) => (c.value().to_owned(), false),
        _ => (csrf::new_session(), true),
    }
}

fn with_session_cookie(
    mut response: HttpResponse,
    state: &AppState,
    session: &str,
    is_new: bool,
) -> HttpResponse {
    if is_new {
        let cookies = state.cookies;
        let cookie = Cookie::build(cookies.session(), session.to_owned())
            .path(cookies.path())
            .http_only(true)
            .secure(cookies.secure)
            .same_site(SameSite::Strict)
            .finish();
        if let Err(e) = response.add_cookie(&cookie) {
            tracing::warn!(error = %e, "cannot set the CSRF cookie");
        }
    }
    response
}

fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location))
        .finish()
}
