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
static PAGE_CSP: LazyLock<String> = LazyLock::new(|| {
    let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(STYLE.as_bytes()));
    format!(
        "default-src 'none'; style-src 'sha256-{hash}'; form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'"
    )
});

/// What the form shows: values to keep and a message per field.
#[derive(Default)]
pub struct FormView {
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

pub fn register(status: StatusCode, view: &FormView) -> HttpResponse {
    let page = RegisterPage {
        style: STYLE,
        view,
        username_error: view.error("username"),
        email_error: view.error("email"),
        password_error: view.error("password"),
    };
    html(status, page.render())
}

pub fn welcome(username: &str) -> HttpResponse {
    html(
        StatusCode::OK,
        WelcomePage {
            style: STYLE,
            username,
        }
        .render(),
    )
}

pub fn message(status: StatusCode, title: &str, message: &str) -> HttpResponse {
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
    match body {
        Ok(body) => HttpResponse::build(status)
            .insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8"))
            .insert_header((header::CONTENT_SECURITY_POLICY, PAGE_CSP.as_str()))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .body(body),
        Err(e) => {
            tracing::error!(error = %e, "page rendering failed");
            HttpResponse::InternalServerError().finish()
        }
    }
}
