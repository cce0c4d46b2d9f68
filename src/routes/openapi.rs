//! `GET /api/openapi.json`: the OpenAPI 3 document, generated from the handlers' and types'
//! annotations (utoipa), so it describes what the code does.

use actix_web::HttpResponse;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{admin, console, form, health, hooks, registrations};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "signup",
        description = "A registration server: sign-ups are answered synchronously; the email \
                       provider is synced asynchronously and never affects these answers."
    ),
    paths(
        registrations::create,
        admin::get_registration,
        form::root,
        form::show,
        form::submit,
        form::welcome,
        health::live,
        health::ready,
        health::metrics,
        admin::list_jobs,
        admin::get_job,
        admin::retry_job,
        admin::retry_dead,
        admin::erase_user,
        console::show_login,
        console::login,
        console::logout,
        console::overview,
        console::jobs,
        console::retry,
        console::retry_dead,
        console::search,
        console::confirm_erase,
        console::erase,
        hooks::brevo,
        hooks::mailchimp,
        hooks::mailchimp_validator,
        hooks::mailgun,
        hooks::resend,
        hooks::sendgrid,
        document,
    ),
    modifiers(&Credentials),
    tags(
        (name = "registration", description = "The JSON API"),
        (name = "form", description = "The HTML form"),
        (name = "operations", description = "Health and metrics"),
        (name = "admin", description = "Failed syncs and erasure; only with admin.token set"),
        (name = "consent", description = "The providers' events about consent (SPEC §8); each route only with its credential set"),
        (name = "console", description = "The operator console (HTML, a session cookie from signing in with admin.token); only with admin.token set"),
    )
)]
pub(crate) struct ApiDoc;

/// The two ways in: the JSON admin API takes `admin.token` as a bearer token on every request;
/// the console's pages take the session cookie its sign-in sets (the token is typed once, at
/// `/admin/login`, never sent with a page).
struct Credentials;

impl Modify for Credentials {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        components.add_security_scheme(
            "console_session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "signup_console",
                "The console's session, set by signing in at /admin/login (named \
                 __Host-signup_console when server.public_url is https). Without it a page \
                 answers 303 to the sign-in.",
            ))),
        );
    }
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3", body = Object, content_type = "application/json")))]
pub(crate) async fn document() -> HttpResponse {
    match ApiDoc::openapi().to_json() {
        Ok(json) => HttpResponse::Ok()
            .content_type("application/json")
            .body(json),
        Err(e) => {
            tracing::error!(error = %e, "cannot render the OpenAPI document");
            HttpResponse::InternalServerError().finish()
        }
    }
}
