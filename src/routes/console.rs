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
use super::{AppState, csrf, pages};
use crate::activity::{MINUTES, MinuteCounts, Snapshot};
use crate::email::CircuitState;
use crate::erasure::{EraseError, Who};
use crate::error::{ApiError, RETRY_AFTER_UNAVAILABLE};
use crate::outbox::{self, Requeue};
use crate::store;

/// How long a console session lasts.
const SESSION_HOURS: i64 = 12;
/// Jobs per page.
const PAGE: u64 = 50;

/// Why a console request is not served.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
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
                tracing::warn!(error = %e, "console: the database did not answer");
                let mut response = pages::console_message(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The database did not answer",
                    "Nothing was changed. Try again in a moment.",
                );
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    header::HeaderValue::from_static(RETRY_AFTER_UNAVAILABLE),
                );
                response
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
    Unreadable(crate::error::Problem<'p>),
    /// Body over server.max_body_bytes
    #[response(status = 413, content_type = "application/problem+json")]
    TooLarge(crate::error::Problem<'p>),
    /// Not application/x-www-form-urlencoded
    #[response(status = 415, content_type = "application/problem+json")]
    NotAForm(crate::error::Problem<'p>),
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
    NotFound(crate::error::Problem<'p>),
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
pub struct Operator {
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
pub struct Action(Option<Operator>);

impl actix_web::FromRequest for Action {
    type Error = ConsoleError;
    type Future = futures_util::future::LocalBoxFuture<'static, Result<Self, ConsoleError>>;

    fn from_request(request: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let request = request.clone();
        Box::pin(async move {
            match request.app_data::<web::Data<AppState>>() {
                Some(state) => match signed_in(&request, state).await {
                    Ok(operator) => Ok(Action(Some(operator))),
                    Err(ConsoleError::SignIn) => Ok(Action(None)),
                    Err(e) => Err(e),
                },
                None => Err(ConsoleError::NotFound),
            }
        })
    }
}

impl Action {
    /// The operator, once the form is read; to the sign-in without a session.
    fn operator(self) -> Result<Operator, ConsoleError> {
        self.0.ok_or(ConsoleError::SignIn)
    }
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

// ---------------------------------------------------------------------------------------------
// Sign-in and sign-out

/// The sign-in form. No `Debug`: it holds the token.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct SignInForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf_token: String,
}

/// The sign-in page, with a CSRF token bound to a cookie of its own.
fn login_page(
    request: &HttpRequest,
    state: &AppState,
    status: StatusCode,
    problem: Option<&str>,
) -> HttpResponse {
    let existing = request
        .cookie(state.cookies.console_login())
        .map(|c| c.value().to_owned())
        .filter(|v| csrf::is_session_id(v));
    let session = existing.clone().unwrap_or_else(csrf::new_session);
    let mut response = pages::console_login(status, &state.csrf.issue(&session), problem);
    if existing.is_none() {
        let cookie = cookie(
            state,
            state.cookies.console_login(),
            session,
            CookieDuration::hours(1),
        );
        add_cookie(&mut response, &cookie);
    }
    response
}

/// `GET /admin/login`: the console's sign-in page.
#[utoipa::path(get, path = "/admin/login", tag = "console",
    responses(
        (status = 200, description = "The sign-in form, with a csrf_token bound to a cookie", body = String, content_type = "text/html"),
        (status = 303, description = "Signed in already: to the overview", headers(("Location" = String, description = "/admin"))),
        (status = 404, description = "admin.token is not set", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn show_login(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    match signed_in(&request, &state).await {
        Ok(_) => Ok(see_other("/admin")),
        Err(ConsoleError::SignIn) => Ok(login_page(&request, &state, StatusCode::OK, None)),
        Err(e) => Err(e),
    }
}

/// `POST /admin/login`: the admin token in, a session cookie out.
#[utoipa::path(post, path = "/admin/login", tag = "console",
    request_body(content = SignInForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Signed in: a session cookie, to the overview", headers(("Location" = String, description = "/admin"))),
        FormRefused,
        (status = 401, description = "The page again: not the admin token", body = String, content_type = "text/html"),
        (status = 403, description = "The page again: the sign-in form's CSRF token is missing or wrong", body = String, content_type = "text/html"),
        (status = 404, description = "admin.token is not set", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "The page again: too many sign-in attempts from this address", body = String, content_type = "text/html", headers(("Retry-After" = String, description = "Seconds"))),
    ))]
pub async fn login(
    request: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<SignInForm>,
) -> Result<HttpResponse, ConsoleError> {
    let token = state.admin_token.as_ref().ok_or(ConsoleError::NotFound)?;
    let client = super::limits::client_of(&request, &state);
    if let Some(client) = client
        && let Err(wait) = state.sign_in_limiter.check(client)
    {
        let retry_after = wait.as_secs_f64().ceil().max(1.0) as u64;
        tracing::warn!(%client, "console: too many sign-in attempts");
        let mut response = login_page(
            &request,
            &state,
            StatusCode::TOO_MANY_REQUESTS,
            Some(&format!(
                "Too many sign-in attempts from your address. Try again in {retry_after} s."
            )),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(retry_after));
        return Ok(response);
    }
    let login_session = request
        .cookie(state.cookies.console_login())
        .map(|c| c.value().to_owned())
        .unwrap_or_default();
    if state
        .csrf
        .verify(&login_session, &form.csrf_token)
        .is_none()
    {
        return Ok(login_page(
            &request,
            &state,
            StatusCode::FORBIDDEN,
            Some("This sign-in form has expired. Please try again. (Cookies must be enabled.)"),
        ));
    }
    if !token_matches(token, form.token.trim()) {
        tracing::warn!(client = ?client, "console: wrong admin token");
        return Ok(login_page(
            &request,
            &state,
            StatusCode::UNAUTHORIZED,
            Some("That is not the admin token."),
        ));
    }
    // A fresh session id: nothing from before the sign-in carries over. Recorded, so that
    // signing out can end it on every instance.
    let now = Utc::now();
    let expires = now + chrono::Duration::hours(SESSION_HOURS);
    let new_session = csrf::new_session();
    crate::sessions::open(&state.db, &new_session, now, expires).await?;
    let value = state
        .csrf
        .sign_console(&new_session, expires.timestamp(), &token_digest(token));
    let mut response = see_other("/admin");
    let session = cookie(
        &state,
        state.cookies.console(),
        value,
        CookieDuration::hours(SESSION_HOURS),
    );
    add_cookie(&mut response, &session);
    let gone = cookie(
        &state,
        state.cookies.console_login(),
        String::new(),
        CookieDuration::ZERO,
    );
    add_cookie(&mut response, &gone);
    tracing::info!(client = ?client, "console: operator signed in");
    Ok(response)
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct CsrfForm {
    #[serde(default)]
    csrf_token: String,
}

/// `POST /admin/logout`.
#[utoipa::path(post, path = "/admin/logout", tag = "console",
    request_body(content = CsrfForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Signed out (or was not signed in): to the sign-in page", headers(("Location" = String, description = "/admin/login"))),
        FormRefused,
        Expired,
        (status = 404, description = "admin.token is not set", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn logout(
    action: Action,
    state: web::Data<AppState>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, ConsoleError> {
    let operator = action.operator()?;
    operator.check(&state, &form.csrf_token)?;
    crate::sessions::revoke(&state.db, &operator.session, Utc::now()).await?;
    tracing::info!("console: operator signed out");
    let mut response = see_other("/admin/login");
    let gone = cookie(
        &state,
        state.cookies.console(),
        String::new(),
        CookieDuration::ZERO,
    );
    add_cookie(&mut response, &gone);
    Ok(response)
}

// ---------------------------------------------------------------------------------------------
// Overview

/// `GET /admin`.
#[utoipa::path(get, path = "/admin", tag = "console",
    responses(
        (status = 200, description = "The overview", body = String, content_type = "text/html"),
        PageRefused,
        Unavailable,
    ))]
pub async fn overview(
    operator: Operator,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let now = Utc::now();
    let counts = outbox::outbox_counts(&state.db).await?;
    let snapshot = state.metrics.activity.snapshot(now);
    let view = overview_view(&snapshot, &counts, now);
    Ok(pages::console_overview(&operator.csrf_token(&state), &view))
}

fn overview_view(
    snapshot: &Snapshot,
    counts: &outbox::OutboxCounts,
    now: DateTime<Utc>,
) -> OverviewView {
    let seconds = |s: Option<f64>| s.map_or_else(|| "–".to_owned(), short_seconds);
    OverviewView {
        circuit: snapshot.circuit.as_str(),
        circuit_class: match snapshot.circuit {
            CircuitState::Closed => "good",
            CircuitState::HalfOpen => "warn",
            CircuitState::Open => "bad",
        },
        circuit_since: timestamp(snapshot.circuit_since),
        circuit_for: duration(now - snapshot.circuit_since),
        pending: counts.pending,
        dead: counts.dead,
        oldest_pending: counts
            .oldest_pending
            .map_or_else(|| "–".to_owned(), |at| duration(now - at)),
        lag_p50: seconds(snapshot.lag_p50),
        lag_p99: seconds(snapshot.lag_p99),
        delivered_total: snapshot.minutes.iter().map(|m| m.delivered).sum(),
        failed_total: snapshot.minutes.iter().map(|m| m.failed).sum(),
        chart: chart(&snapshot.minutes),
        instance: hostname(),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "this host".to_owned())
}

/// `at` as the console writes times (UTC).
fn timestamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A duration as "4 s", "3 min 20 s", "2 h 5 min", "3 d 4 h".
fn duration(d: chrono::TimeDelta) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        3600..86_400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A lag in seconds, to two significant figures where it matters.
fn short_seconds(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else if s < 60.0 {
        format!("{s:.1} s")
    } else {
        duration(chrono::TimeDelta::seconds(s as i64))
    }
}

/// The chart's size in SVG units.
const CHART_WIDTH: usize = 720;
const CHART_HEIGHT: usize = 180;
const CHART_LEFT: usize = 40;
const CHART_BOTTOM: usize = 20;

/// Deliveries (green) and failed attempts (red) per minute as an SVG bar chart: two bars a
/// minute, oldest on the left, one scale, its top labelled. Drawn with presentation classes
/// only (the page's CSP allows no inline style).
fn chart(minutes: &[MinuteCounts]) -> String {
    let top = minutes
        .iter()
        .map(|m| m.delivered.max(m.failed))
        .max()
        .unwrap_or(0)
        .max(1);
    let plot_h = (CHART_HEIGHT - CHART_BOTTOM - 10) as f64;
    let slot = (CHART_WIDTH - CHART_LEFT) as f64 / MINUTES as f64;
    let base = (CHART_HEIGHT - CHART_BOTTOM) as f64;
    let (delivered, failed): (u64, u64) = minutes
        .iter()
        .fold((0, 0), |(d, f), m| (d + m.delivered, f + m.failed));
    let mut svg = String::with_capacity(16 * 1024);
    let _ = write!(
        svg,
        r#"<svg class="chart" id="chart" viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" role="img" aria-label="Last hour: {delivered} delivered, {failed} failed attempts">"#
    );
    let _ = write!(
        svg,
        r#"<line class="axis" x1="{CHART_LEFT}" y1="{base}" x2="{CHART_WIDTH}" y2="{base}"/><line class="axis" x1="{CHART_LEFT}" y1="10" x2="{CHART_LEFT}" y2="{base}"/>"#
    );
    let _ = write!(
        svg,
        r#"<text x="{}" y="14" text-anchor="end">{top}</text><text x="{}" y="{base}" text-anchor="end">0</text>"#,
        CHART_LEFT - 4,
        CHART_LEFT - 4
    );
    for (i, m) in minutes.iter().enumerate() {
        let x = CHART_LEFT as f64 + i as f64 * slot;
        let bar = (slot - 2.0) / 2.0;
        let _ = write!(
            svg,
            r#"<g><title>{} UTC: {} delivered, {} failed</title>"#,
            m.at.format("%H:%M"),
            m.delivered,
            m.failed
        );
        for (n, class, dx) in [
            (m.delivered, "delivered", 1.0),
            (m.failed, "failed", 1.0 + bar),
        ] {
            let h = n as f64 / top as f64 * plot_h;
            if n > 0 {
                let _ = write!(
                    svg,
                    r#"<rect class="{class}" x="{:.1}" y="{:.1}" width="{bar:.1}" height="{:.1}"/>"#,
                    x + dx,
                    base - h.max(1.0),
                    h.max(1.0)
                );
            }
        }
        svg.push_str("</g>");
    }
    for (i, label) in [
        (0, "−60 min"),
        (MINUTES / 2, "−30 min"),
        (MINUTES - 1, "now"),
    ] {
        let x = CHART_LEFT as f64 + i as f64 * slot + slot / 2.0;
        let anchor = if i == MINUTES - 1 { "end" } else { "middle" };
        let _ = write!(
            svg,
            r#"<text x="{x:.1}" y="{}" text-anchor="{anchor}">{label}</text>"#,
            CHART_HEIGHT - 4
        );
    }
    svg.push_str("</svg>");
    svg
}

// ---------------------------------------------------------------------------------------------
// Jobs

/// Where a Retry button sends the operator back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Back {
    Dead,
    Pending,
    User(Uuid),
}

impl Back {
    fn parse(text: &str) -> Self {
        match text {
            "pending" => Back::Pending,
            _ => match text.strip_prefix("user:").map(Uuid::parse_str) {
                Some(Ok(id)) => Back::User(id),
                _ => Back::Dead,
            },
        }
    }

    pub fn as_field(&self) -> String {
        match self {
            Back::Dead => "dead".into(),
            Back::Pending => "pending".into(),
            Back::User(id) => format!("user:{id}"),
        }
    }

    fn location(&self, done: &str) -> String {
        match self {
            Back::Dead => format!("/admin/jobs?status=dead&done={done}"),
            Back::Pending => format!("/admin/jobs?status=pending&done={done}"),
            Back::User(id) => format!("/admin/search?q={id}&done={done}"),
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobsQuery {
    /// dead (the default) or pending.
    status: Option<String>,
    /// A job id: list jobs older than it (the "Older" link).
    before: Option<String>,
    /// What the last action did (set by the console's own redirects).
    done: Option<String>,
}

/// What a `done=` in a redirect's query says (a fixed set: nothing a link can make up).
fn notice_of(done: Option<&str>) -> Option<String> {
    let done = done?;
    if done == "retried" {
        return Some("The job is due again; the email sync sends it now.".into());
    }
    if done == "erased" {
        return Some(
            "Erased. Their removal at the email provider is queued as a user.deleted job.".into(),
        );
    }
    let n: u64 = done.strip_prefix("requeued-")?.parse().ok()?;
    Some(format!(
        "{n} dead job{} due again; the email sync sends them at its usual pace.",
        if n == 1 { " is" } else { "s are" }
    ))
}

/// `GET /admin/jobs?status=dead|pending&before=<id>`: newest first, a page at a time.
#[utoipa::path(get, path = "/admin/jobs", tag = "console", params(JobsQuery),
    responses(
        (status = 200, description = "A page of jobs", body = String, content_type = "text/html"),
        PageRefused,
        Unavailable,
    ))]
pub async fn jobs(
    operator: Operator,
    state: web::Data<AppState>,
    query: web::Query<JobsQuery>,
) -> Result<HttpResponse, ConsoleError> {
    let pending = query.status.as_deref() == Some("pending");
    let (status, back) = if pending {
        (Status::Pending, Back::Pending)
    } else {
        (Status::Dead, Back::Dead)
    };
    let before = query
        .before
        .as_deref()
        .and_then(|b| Uuid::parse_str(b).ok());
    let (jobs, next) = outbox::list(&state.db, Some(status), PAGE, before).await?;
    let status_name = status.as_str();
    let view = JobsView {
        nav: status_name,
        heading: if pending { "Pending jobs" } else { "Dead jobs" },
        empty: if pending {
            "Nothing is waiting: every registration is synced."
        } else {
            "No dead jobs."
        },
        show_retry_all: !pending && !jobs.is_empty(),
        jobs: jobs.into_iter().map(JobRow::from).collect(),
        back: back.as_field(),
        next_page: next.map(|id| format!("/admin/jobs?status={status_name}&before={id}")),
        not_first_page: before.is_some(),
        first_page: format!("/admin/jobs?status={status_name}"),
        notice: notice_of(query.done.as_deref()),
    };
    Ok(pages::console_jobs(&operator.csrf_token(&state), &view))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct RetryForm {
    #[serde(default)]
    csrf_token: String,
    #[serde(default)]
    back: String,
}

/// `POST /admin/jobs/{id}/retry`: the admin API's retry, then back where the button was.
#[utoipa::path(post, path = "/admin/jobs/{id}/retry", tag = "console",
    params(("id" = String, Path, description = "Job (outbox row) id")),
    request_body(content = RetryForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Due now: back to the list (or to the search, or to the sign-in when signed out)", headers(("Location" = String, description = "The page the button was on"))),
        FormRefused,
        Expired,
        (status = 404, description = "No such job, or admin.token is not set", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Delivered meanwhile, or cancelled by an erasure", body = String, content_type = "text/html"),
        Unavailable,
    ))]
pub async fn retry(
    action: Action,
    state: web::Data<AppState>,
    path: web::Path<String>,
    form: web::Form<RetryForm>,
) -> Result<HttpResponse, ConsoleError> {
    let operator = action.operator()?;
    operator.check(&state, &form.csrf_token)?;
    let id = Uuid::parse_str(&path).map_err(|_| ConsoleError::NotFound)?;
    let back = Back::parse(&form.back);
    match outbox::requeue(&state.db, id, Utc::now()).await? {
        Requeue::Due(_) => {
            wake(&state);
            tracing::info!(outbox_id = %id, "operator requeued a job (console)");
            Ok(see_other(&back.location("retried")))
        }
        Requeue::Delivered => Ok(pages::console_message(
            StatusCode::CONFLICT,
            "Delivered already",
            "This job was delivered meanwhile; there is nothing to retry.",
        )),
        Requeue::Cancelled => Ok(pages::console_message(
            StatusCode::CONFLICT,
            "Cancelled by an erasure",
            "This job's user was erased; it is never sent.",
        )),
        Requeue::NotFound => Err(ConsoleError::NotFound),
    }
}

/// `POST /admin/retry-dead`.
#[utoipa::path(post, path = "/admin/retry-dead", tag = "console",
    request_body(content = CsrfForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Every dead job is due: to the dead jobs (or to the sign-in when signed out)", headers(("Location" = String, description = "/admin/jobs?status=dead&done=requeued-N"))),
        FormRefused,
        Expired,
        (status = 404, description = "admin.token is not set", body = crate::error::Problem, content_type = "application/problem+json"),
        Unavailable,
    ))]
pub async fn retry_dead(
    action: Action,
    state: web::Data<AppState>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, ConsoleError> {
    let operator = action.operator()?;
    operator.check(&state, &form.csrf_token)?;
    let requeued = outbox::requeue_all_dead(&state.db, Utc::now(), REQUEUE_BATCH).await?;
    wake(&state);
    tracing::info!(requeued, "operator requeued every dead job (console)");
    Ok(see_other(&format!(
        "/admin/jobs?status=dead&done=requeued-{requeued}"
    )))
}

// ---------------------------------------------------------------------------------------------
// Search and erase

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// An email address (any case) or a user id.
    q: Option<String>,
    /// What the last action did (set by the console's own redirects).
    done: Option<String>,
}

/// `GET /admin/search?q=<email or user id>`.
#[utoipa::path(get, path = "/admin/search", tag = "console", params(SearchQuery),
    responses(
        (status = 200, description = "The user and their jobs", body = String, content_type = "text/html"),
        PageRefused,
        Unavailable,
    ))]
pub async fn search(
    operator: Operator,
    state: web::Data<AppState>,
    query: web::Query<SearchQuery>,
) -> Result<HttpResponse, ConsoleError> {
    let text = query.q.as_deref().unwrap_or_default().trim().to_owned();
    let mut view = SearchView {
        query: text.clone(),
        user: None,
        registered: String::new(),
        message: None,
        jobs: Vec::new(),
        back: String::new(),
        notice: notice_of(query.done.as_deref()),
    };
    if !text.is_empty() {
        let (user, user_id) = match text.parse::<Who>() {
            Ok(Who::Id(id)) => (store::find_user(&state.db, id).await?, Some(id)),
            Ok(Who::Email(email)) => {
                let user = store::find_user_by_email(&state.db, &email).await?;
                let id = user.as_ref().map(|u| u.id);
                (user, id)
            }
            Err(never) => match never {},
        };
        if let Some(id) = user_id {
            view.jobs = outbox::jobs_of_user(&state.db, id)
                .await?
                .into_iter()
                .map(JobRow::from)
                .collect();
            view.back = Back::User(id).as_field();
        }
        view.message = match (&user, view.jobs.is_empty()) {
            (Some(_), _) => None,
            (None, false) => Some("No user has this id now (erased); their jobs are below.".into()),
            (None, true) => Some("No user registered with this address or id.".into()),
        };
        view.registered = user
            .as_ref()
            .map(|u| u.created_at.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        view.user = user;
    }
    Ok(pages::console_search(&operator.csrf_token(&state), &view))
}

/// `GET /admin/users/{id}/erase`: what will happen, and the button.
#[utoipa::path(get, path = "/admin/users/{id}/erase", tag = "console",
    params(("id" = String, Path, description = "The user's id")),
    responses(
        (status = 200, description = "What an erasure does, and its button", body = String, content_type = "text/html"),
        (status = 303, description = "Signed out: to the sign-in page", headers(("Location" = String, description = "/admin/login"))),
        (status = 404, description = "No such user, or admin.token is not set", body = crate::error::Problem, content_type = "application/problem+json"),
        Unavailable,
    ))]
pub async fn confirm_erase(
    operator: Operator,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ConsoleError> {
    let id = Uuid::parse_str(&path).map_err(|_| ConsoleError::NotFound)?;
    let user = store::find_user(&state.db, id)
        .await?
        .ok_or(ConsoleError::NotFound)?;
    Ok(pages::console_erase(&operator.csrf_token(&state), &user))
}

/// `POST /admin/users/{id}/erase`: the admin API's erasure.
#[utoipa::path(post, path = "/admin/users/{id}/erase", tag = "console",
    params(("id" = String, Path, description = "The user's id")),
    request_body(content = CsrfForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Erased: to the search for their id (or to the sign-in when signed out)", headers(("Location" = String, description = "/admin/search?q=<id>&done=erased"))),
        FormRefused,
        Expired,
        (status = 404, description = "No such user (or erased already), or admin.token is not set", body = crate::error::Problem, content_type = "application/problem+json"),
        Unavailable,
    ))]
pub async fn erase(
    action: Action,
    state: web::Data<AppState>,
    path: web::Path<String>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, ConsoleError> {
    let operator = action.operator()?;
    operator.check(&state, &form.csrf_token)?;
    let id = Uuid::parse_str(&path).map_err(|_| ConsoleError::NotFound)?;
    let erased = super::admin::erase(&state, id).await?;
    tracing::info!(user_id = %erased.user_id, deletion_job = %erased.deletion_job, cancelled = erased.cancelled, "operator erased a user (console)");
    Ok(see_other(&format!("/admin/search?q={id}&done=erased")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minute(i: usize, delivered: u64, failed: u64) -> MinuteCounts {
        MinuteCounts {
            at: DateTime::from_timestamp(1_800_000_000 + 60 * i as i64, 0).expect("time"),
            delivered,
            failed,
        }
    }

    #[test]
    fn the_chart_scales_to_the_busiest_minute_and_draws_only_what_happened() {
        let mut minutes: Vec<_> = (0..MINUTES).map(|i| minute(i, 0, 0)).collect();
        minutes[10] = minute(10, 40, 0);
        minutes[59] = minute(59, 10, 20);
        let svg = chart(&minutes);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(
            svg.matches("<rect").count(),
            3,
            "one bar per non-zero count"
        );
        assert_eq!(
            svg.matches("<title>").count(),
            MINUTES,
            "a tooltip per minute"
        );
        assert!(
            svg.contains(">40</text>"),
            "the top of the scale is the busiest minute"
        );
        assert!(
            svg.contains("50 delivered, 20 failed"),
            "the summary: {svg:.300}"
        );
        // The 40-delivery bar is full height (150 units), the 10-delivery one a quarter.
        assert!(svg.contains(r#"height="150.0""#));
        assert!(svg.contains(r#"height="37.5""#));
        assert!(
            !svg.contains("style="),
            "no inline style: the CSP refuses it"
        );
    }

    #[test]
    fn an_empty_hour_is_an_empty_chart_not_a_division_by_zero() {
        let minutes: Vec<_> = (0..MINUTES).map(|i| minute(i, 0, 0)).collect();
        let svg = chart(&minutes);
        assert_eq!(svg.matches("<rect").count(), 0);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn durations_read_as_people_say_them() {
        let s = chrono::TimeDelta::seconds;
        assert_eq!(duration(s(4)), "4 s");
        assert_eq!(duration(s(200)), "3 min 20 s");
        assert_eq!(duration(s(7500)), "2 h 5 min");
        assert_eq!(duration(s(3 * 86_400 + 4 * 3600)), "3 d 4 h");
        assert_eq!(duration(s(-5)), "0 s", "a clock step back is not negative");
        assert_eq!(short_seconds(0.25), "250 ms");
        assert_eq!(short_seconds(32.9), "32.9 s");
    }

    #[test]
    fn a_back_field_only_leads_to_console_pages() {
        let id = Uuid::now_v7();
        assert_eq!(Back::parse("pending"), Back::Pending);
        assert_eq!(Back::parse(&format!("user:{id}")), Back::User(id));
        for other in ["", "dead", "https://evil.example/", "user:nope", "//evil"] {
            assert_eq!(Back::parse(other), Back::Dead, "{other}");
        }
        assert!(
            Back::parse("//evil")
                .location("retried")
                .starts_with("/admin/")
        );
    }

    #[test]
    fn a_done_parameter_shows_only_messages_of_the_console_s_own() {
        assert!(notice_of(Some("retried")).is_some());
        assert_eq!(
            notice_of(Some("requeued-3")).as_deref(),
            Some("3 dead jobs are due again; the email sync sends them at its usual pace.")
        );
        for other in ["<script>", "requeued-x", "requeued-", ""] {
            assert_eq!(notice_of(Some(other)), None, "{other}");
        }
    }
}
