//! HTTP routes: the JSON API, the HTML form, health. Handlers parse, call the [`Registrar`]
//! or a query, and shape the answer; they hold no business rules.

mod admin;
mod console;
mod console_views;
pub(crate) mod csrf;
pub(crate) mod error;
mod form;
mod health;
mod hooks;
mod limits;
mod observe;
pub(crate) mod openapi;
mod pages;
mod registrations;

use actix_web::middleware::from_fn;
use actix_web::web;
use sea_orm::DatabaseConnection;

use std::sync::Arc;

use crate::actors::WakeUp;
use crate::metrics::Metrics;
use crate::registrar::Registrar;
use crate::routes::error::{ApiError, form_error, json_error};

/// Shared by every worker (cheap clones of handles).
#[derive(Clone)]
pub(crate) struct AppState {
    pub db: DatabaseConnection,
    pub registrar: Registrar,
    /// Counters, and the email sync's published state: read without waiting on any actor.
    pub metrics: Arc<Metrics>,
    /// The EmailSyncActor's mailbox, for operators' retries (`try_send` only).
    pub email_sync: actix::Recipient<WakeUp>,
    /// Per-client limiter of the registration routes; None when `rate_limit.per_minute = 0`.
    pub limiter: Option<Arc<crate::rate_limit::ClientLimiter>>,
    /// Per-client limiter of the console's sign-in (always on).
    pub sign_in_limiter: Arc<crate::rate_limit::ClientLimiter>,
    /// `server.request_timeout`: the deadline for a request body.
    pub request_timeout: std::time::Duration,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<crate::configuration::TrustedProxy>,
    /// `admin.token`; the admin routes are 404 while it is None.
    pub admin_token: Option<secrecy::SecretString>,
    /// Signs the form's CSRF tokens and the welcome cookie (stored in the database).
    pub csrf: csrf::CsrfKey,
    /// The form's cookie names and attributes, from `server.public_url`.
    pub cookies: csrf::CookiePolicy,
    /// Readiness: a registration commit older than this is a stalled database.
    pub deadline: std::time::Duration,
    /// The RegistrationActor's commit state, for readiness.
    pub commit_watch: Arc<crate::actors::CommitWatch>,
    /// The `/hooks/…` routes' credentials and keys (SPEC §8).
    pub inbound: crate::consent::Inbound,
    /// The email provider's circuit, as the EmailSyncActor last published it.
    pub circuit: tokio::sync::watch::Receiver<crate::email::CircuitState>,
}

/// `n` random bytes from the OS-seeded generator.
pub(crate) fn random_bytes(n: usize) -> Vec<u8> {
    use rand::RngCore;
    let mut buf = vec![0u8; n];
    rand::rng().fill_bytes(&mut buf);
    buf
}

pub(crate) use observe::observe;

/// Mounts every route; `max_body_bytes` bounds JSON and form bodies (413 beyond).
pub(crate) fn configure(cfg: &mut web::ServiceConfig, max_body_bytes: usize) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(max_body_bytes)
            .error_handler(move |e, _| json_error(e, max_body_bytes).into()),
    )
    .app_data(
        web::FormConfig::default()
            .limit(max_body_bytes)
            .error_handler(move |e, _| form_error(e, max_body_bytes).into()),
    )
    .app_data(
        web::QueryConfig::default()
            .error_handler(|e, _| ApiError::BadRequest(format!("invalid query: {e}")).into()),
    )
    .app_data(web::PathConfig::default().error_handler(|_, _| ApiError::NotFound.into()))
    .route("/", web::get().to(form::root))
    .service(
        web::resource("/register")
            .route(web::get().to(form::show))
            .route(web::post().to(form::submit))
            .wrap(from_fn(limits::limit_form))
            .wrap(from_fn(limits::body_deadline)),
    )
    .route("/register/welcome", web::get().to(form::welcome))
    .service(
        web::scope("/hooks")
            .app_data(web::PayloadConfig::new(max_body_bytes))
            .route("/brevo", web::post().to(hooks::brevo))
            .route("/mailchimp/{secret}", web::post().to(hooks::mailchimp))
            .route(
                "/mailchimp/{secret}",
                web::get().to(hooks::mailchimp_validator),
            )
            .route("/mailgun", web::post().to(hooks::mailgun))
            .route("/resend", web::post().to(hooks::resend))
            .route("/sendgrid", web::post().to(hooks::sendgrid))
            .wrap(from_fn(limits::limit_api))
            .wrap(from_fn(limits::body_deadline))
            .wrap(from_fn(hooks::count_refused)),
    )
    .service(
        web::resource("/api/v1/registrations")
            .route(web::post().to(registrations::create))
            .wrap(from_fn(limits::limit_api))
            .wrap(from_fn(limits::body_deadline)),
    )
    .route(
        "/api/v1/registrations/{id}",
        web::get().to(admin::get_registration),
    )
    .route("/admin", web::get().to(console::overview))
    .service(
        web::resource("/admin/login")
            .route(web::get().to(console::show_login))
            .route(web::post().to(console::login)),
    )
    .route("/admin/logout", web::post().to(console::logout))
    .route("/admin/jobs", web::get().to(console::jobs))
    .route("/admin/jobs/{id}/retry", web::post().to(console::retry))
    .route("/admin/retry-dead", web::post().to(console::retry_dead))
    .route("/admin/search", web::get().to(console::search))
    .service(
        web::resource("/admin/users/{id}/erase")
            .route(web::get().to(console::confirm_erase))
            .route(web::post().to(console::erase)),
    )
    .route("/admin/users/{id}", web::delete().to(admin::erase_user))
    .route("/admin/email-sync/jobs", web::get().to(admin::list_jobs))
    .route("/admin/email-sync/jobs/{id}", web::get().to(admin::get_job))
    .route(
        "/admin/email-sync/jobs/{id}/retry",
        web::post().to(admin::retry_job),
    )
    .route(
        "/admin/email-sync/retry-dead",
        web::post().to(admin::retry_dead),
    )
    .route("/health/live", web::get().to(health::live))
    .route("/health/ready", web::get().to(health::ready))
    .route("/metrics", web::get().to(health::metrics))
    .route("/api/openapi.json", web::get().to(openapi::document))
    .default_service(web::to(not_found));
}

async fn not_found() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}
