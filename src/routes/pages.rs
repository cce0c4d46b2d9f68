//! Server-rendered pages (askama templates in `templates/`, HTML-escaped by default) and the
//! headers every page carries.

use std::sync::LazyLock;

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use actix_web::http::header;
use askama::Template;
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::domain::FieldError;

/// The one stylesheet, inlined so pages need no external asset.
const STYLE: &str = include_str!("../../templates/style.css");

/// `Content-Security-Policy` of every page: nothing loads from anywhere, the inline stylesheet
/// is allowed by its hash, forms post only here, and no site may frame us.
static PAGE_CSP: LazyLock<String> = LazyLock::new(|| csp_for(STYLE));

/// The console's stylesheet, inlined as the form's.
const CONSOLE_STYLE: &str = include_str!("../../templates/console/console.css");

/// The console's CSP: the form's, with the console's stylesheet hash.
static CONSOLE_CSP: LazyLock<String> = LazyLock::new(|| csp_for(CONSOLE_STYLE));

fn csp_for(style: &str) -> String {
    let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(style.as_bytes()));
    format!(
        "default-src 'none'; style-src 'sha256-{hash}'; form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'"
    )
}

/// What the form shows: values to keep and a message per field.
#[derive(Default)]
pub(super) struct FormView {
    pub username: String,
    pub email: String,
    pub csrf_token: String,
    pub errors: Vec<FieldError>,
    /// A message for the whole form (e.g. "try again in a moment").
    pub notice: Option<String>,
}

impl FormView {
    fn error(&self, field: &str) -> Option<&str> {
        self.errors
            .iter()
            .find(|e| e.field == field)
            .map(|e| e.message.as_str())
    }
}

#[derive(Template)]
#[template(path = "register.html")]
struct RegisterPage<'a> {
    style: &'a str,
    view: &'a FormView,
    username_error: Option<&'a str>,
    email_error: Option<&'a str>,
    password_error: Option<&'a str>,
}

#[derive(Template)]
#[template(path = "welcome.html")]
struct WelcomePage<'a> {
    style: &'a str,
    username: &'a str,
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage<'a> {
    style: &'a str,
    title: &'a str,
    message: &'a str,
}

pub(super) fn register(status: StatusCode, view: &FormView) -> HttpResponse {
    let page = RegisterPage {
        style: STYLE,
        view,
        username_error: view.error("username"),
        email_error: view.error("email"),
        password_error: view.error("password"),
    };
    html(status, page.render())
}

pub(super) fn welcome(username: &str) -> HttpResponse {
    html(
        StatusCode::OK,
        WelcomePage {
            style: STYLE,
            username,
        }
        .render(),
    )
}

pub(super) fn message(status: StatusCode, title: &str, message: &str) -> HttpResponse {
    html(
        status,
        MessagePage {
            style: STYLE,
            title,
            message,
        }
        .render(),
    )
}

fn html(status: StatusCode, body: askama::Result<String>) -> HttpResponse {
    html_with(&PAGE_CSP, status, body)
}

fn html_with(csp: &str, status: StatusCode, body: askama::Result<String>) -> HttpResponse {
    match body {
        Ok(body) => HttpResponse::build(status)
            .insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8"))
            .insert_header((header::CONTENT_SECURITY_POLICY, csp))
            .insert_header((header::REFERRER_POLICY, "no-referrer"))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .body(body),
        Err(e) => {
            tracing::error!(error = %e, "page rendering failed");
            HttpResponse::InternalServerError().finish()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The operator console's pages (routes in `console`).

use super::console_views::{JobRow, JobsView, OverviewView, SearchView};
use crate::store::RegisteredUser;

#[derive(Template)]
#[template(path = "console/login.html")]
struct ConsoleLogin<'a> {
    style: &'a str,
    csrf_token: &'a str,
    problem: Option<&'a str>,
}

#[derive(Template)]
#[template(path = "console/message.html")]
struct ConsoleMessage<'a> {
    style: &'a str,
    heading: &'a str,
    message: &'a str,
}

#[derive(Template)]
#[template(path = "console/overview.html")]
struct ConsoleOverview<'a> {
    style: &'a str,
    nav: &'a str,
    csrf_token: &'a str,
    notice: Option<String>,
    circuit: &'a str,
    circuit_class: &'a str,
    circuit_since: &'a str,
    circuit_for: &'a str,
    pending: u64,
    dead: u64,
    oldest_pending: &'a str,
    lag_p50: &'a str,
    lag_p99: &'a str,
    delivered_total: u64,
    failed_total: u64,
    chart: &'a str,
    instance: &'a str,
}

#[derive(Template)]
#[template(path = "console/jobs.html")]
struct ConsoleJobs<'a> {
    style: &'a str,
    nav: &'a str,
    csrf_token: &'a str,
    notice: Option<String>,
    heading: &'a str,
    empty: &'a str,
    show_retry_all: bool,
    jobs: &'a [JobRow],
    back: &'a str,
    next_page: Option<&'a str>,
    not_first_page: bool,
    first_page: &'a str,
}

#[derive(Template)]
#[template(path = "console/search.html")]
struct ConsoleSearch<'a> {
    style: &'a str,
    nav: &'a str,
    csrf_token: &'a str,
    notice: Option<String>,
    query: &'a str,
    user: Option<&'a RegisteredUser>,
    registered: &'a str,
    consent: &'a str,
    message: Option<&'a str>,
    jobs: &'a [JobRow],
    back: &'a str,
}

#[derive(Template)]
#[template(path = "console/erase.html")]
struct ConsoleErase<'a> {
    style: &'a str,
    nav: &'a str,
    csrf_token: &'a str,
    notice: Option<String>,
    user: &'a RegisteredUser,
    registered: &'a str,
}

fn console_html(status: StatusCode, body: askama::Result<String>) -> HttpResponse {
    html_with(&CONSOLE_CSP, status, body)
}

pub(super) fn console_login(
    status: StatusCode,
    csrf_token: &str,
    problem: Option<&str>,
) -> HttpResponse {
    console_html(
        status,
        ConsoleLogin {
            style: CONSOLE_STYLE,
            csrf_token,
            problem,
        }
        .render(),
    )
}

pub(super) fn console_message(status: StatusCode, heading: &str, message: &str) -> HttpResponse {
    console_html(
        status,
        ConsoleMessage {
            style: CONSOLE_STYLE,
            heading,
            message,
        }
        .render(),
    )
}

pub(super) fn console_overview(csrf_token: &str, view: &OverviewView) -> HttpResponse {
    console_html(
        StatusCode::OK,
        ConsoleOverview {
            style: CONSOLE_STYLE,
            nav: "overview",
            csrf_token,
            notice: None,
            circuit: view.circuit,
            circuit_class: view.circuit_class,
            circuit_since: &view.circuit_since,
            circuit_for: &view.circuit_for,
            pending: view.pending,
            dead: view.dead,
            oldest_pending: &view.oldest_pending,
            lag_p50: &view.lag_p50,
            lag_p99: &view.lag_p99,
            delivered_total: view.delivered_total,
            failed_total: view.failed_total,
            chart: &view.chart,
            instance: &view.instance,
        }
        .render(),
    )
}

pub(super) fn console_jobs(csrf_token: &str, view: &JobsView) -> HttpResponse {
    console_html(
        StatusCode::OK,
        ConsoleJobs {
            style: CONSOLE_STYLE,
            nav: view.nav,
            csrf_token,
            notice: view.notice.clone(),
            heading: view.heading,
            empty: view.empty,
            show_retry_all: view.show_retry_all,
            jobs: &view.jobs,
            back: &view.back,
            next_page: view.next_page.as_deref(),
            not_first_page: view.not_first_page,
            first_page: &view.first_page,
        }
        .render(),
    )
}

pub(super) fn console_search(csrf_token: &str, view: &SearchView) -> HttpResponse {
    console_html(
        StatusCode::OK,
        ConsoleSearch {
            style: CONSOLE_STYLE,
            nav: "search",
            csrf_token,
            notice: view.notice.clone(),
            query: &view.query,
            user: view.user.as_ref(),
            registered: &view.registered,
            consent: &view.consent,
            message: view.message.as_deref(),
            jobs: &view.jobs,
            back: &view.back,
        }
        .render(),
    )
}

pub(super) fn console_erase(csrf_token: &str, user: &RegisteredUser) -> HttpResponse {
    console_html(
        StatusCode::OK,
        ConsoleErase {
            style: CONSOLE_STYLE,
            nav: "search",
            csrf_token,
            notice: None,
            user,
            registered: &user.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
        }
        .render(),
    )
}
