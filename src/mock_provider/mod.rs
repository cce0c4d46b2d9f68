//! `signup mock-provider`: a local stand-in for the email provider, for trying signup out and
//! for benchmarks. It verifies Standard Webhooks signatures as a receiver does (the tests check
//! signup's signatures with an independent implementation, the `standardwebhooks` crate),
//! reads the body as the same event types signup sends, prints each delivery, and can be told
//! to be slow, to fail a fraction of requests, or to always answer one status.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use rand::Rng;

use crate::configuration::ProviderKind;
use crate::email::{Event, WebhookBody};

mod send_event;
#[cfg(test)]
pub(crate) use send_event::mailgun_body;
pub use send_event::{
    EventToSend, SignedRequest, base_of, configured_credential, send, sendgrid_public_key, signed,
};

/// How the mock behaves.
#[derive(Debug, Clone)]
pub struct MockOptions {
    pub bind: String,
    /// `whsec_…`; when set, requests with a bad signature get 401.
    pub secret: Option<String>,
    /// Fraction (0–1) of requests answered 503.
    pub fail_rate: f64,
    /// Delay before answering.
    pub latency: Duration,
    /// Answer every request with this status instead.
    pub status: Option<u16>,
    /// Print nothing per request (benchmarks).
    pub quiet: bool,
    /// Which API to speak: Standard Webhooks, or a provider's contacts API (SPEC §5).
    pub kind: ProviderKind,
    /// With a provider kind: the key requests must carry (as that provider checks it); unset
    /// accepts any.
    pub api_key: Option<String>,
}

struct MockState {
    options: MockOptions,
    /// The HMAC key from `--secret`; None accepts any signature.
    key: Option<Vec<u8>>,
    seen: Mutex<HashSet<String>>,
}

/// Serves until interrupted.
pub async fn run(options: MockOptions) -> std::io::Result<()> {
    let key = match &options.secret {
        Some(secret) => Some(crate::email::webhook::decode_secret(secret).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("--secret: {e}"))
        })?),
        None => None,
    };
    let bind = options.bind.clone();
    let state = web::Data::new(MockState {
        options,
        key,
        seen: Mutex::new(HashSet::new()),
    });
    println!("mock provider listening on http://{bind} (any path)");
    HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .default_service(web::to(receive))
    })
    .workers(2)
    .bind(&bind)?
    .run()
    .await
}

async fn receive(
    request: HttpRequest,
    body: web::Bytes,
    state: web::Data<MockState>,
) -> HttpResponse {
    let options = &state.options;
    if !options.latency.is_zero() {
        tokio::time::sleep(options.latency).await;
    }
    let id = header(&request, "webhook-id").unwrap_or("-").to_string();
    let text = String::from_utf8_lossy(&body);
    if options.kind != ProviderKind::Webhook {
        return provider_api(options, &request, &text);
    }
    if let Some(key) = &state.key {
        let verified = crate::email::webhook::verify(
            key,
            header(&request, "webhook-id"),
            header(&request, "webhook-timestamp"),
            header(&request, "webhook-signature"),
            &text,
            chrono::Utc::now(),
        );
        if let Err(e) = verified {
            say(options, format_args!("REJECTED webhook-id={id}: {e}"));
            return HttpResponse::Unauthorized().body(format!("signature: {e}"));
        }
    }
    if let Some(forced) = forced_answer(options, &format!("webhook-id={id}")) {
        return forced;
    }
    // A body that is not an event signup sends is refused, as a provider would (permanent).
    let event = match serde_json::from_str::<WebhookBody>(&text) {
        Ok(body) => body.event,
        Err(e) => {
            say(options, format_args!("REFUSED 400 webhook-id={id}: {e}"));
            return HttpResponse::BadRequest().body(format!("not an event: {e}"));
        }
    };
    let repeat = match state.seen.lock() {
        Ok(mut seen) => !seen.insert(id.clone()),
        Err(_) => false,
    };
    let repeat = if repeat { " (repeat)" } else { "" };
    match event {
        Event::UserRegistered(user) => say(
            options,
            format_args!(
                "DELIVERED webhook-id={id} type=user.registered user={} email={}{repeat}",
                user.username, user.email
            ),
        ),
        Event::UserDeleted(user) => say(
            options,
            format_args!(
                "DELIVERED webhook-id={id} type=user.deleted user_id={} email={}{repeat}",
                user.user_id, user.email
            ),
        ),
        Event::UserConsentChanged(change) => say(
            options,
            format_args!(
                "DELIVERED webhook-id={id} type=user.consent_changed user_id={} email={} state={} provider={}{repeat}",
                change.user_id,
                change.email,
                change.state.as_str(),
                change.provider
            ),
        ),
    }
    HttpResponse::NoContent().finish()
}

/// A provider's contacts API, as its reference documents it: the route (one contact, or the
/// batch route where the API has one), the credentials (when `--api-key` is given), the body's
/// addresses, the batch limit, and the documented answers. An address whose local part starts
/// with `invalid` is refused as the provider refuses a bad address: a member error in
/// Mailchimp's batch answer, a 400 for the whole request elsewhere.
fn provider_api(options: &MockOptions, request: &HttpRequest, body: &str) -> HttpResponse {
    use actix_web::http::Method;
    let kind = options.kind;
    let path = request.path();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = request.method();
    if let Some(answer) = erasure_api(options, request, &segments, body) {
        return answer;
    }
    // Which route: None = not this API's; Some(true) = its batch route.
    let batch = match kind {
        ProviderKind::Mailchimp => match segments.as_slice() {
            ["3.0", "lists", _, "members", _] if method == Method::PUT => Some(false),
            ["3.0", "lists", _] if method == Method::POST => Some(true),
            _ => None,
        },
        ProviderKind::Sendgrid => {
            (method == Method::PUT && path == "/v3/marketing/contacts").then_some(true)
        }
        ProviderKind::Brevo => (method == Method::POST && path == "/v3/contacts").then_some(false),
        ProviderKind::Resend => (method == Method::POST && path == "/contacts").then_some(false),
        ProviderKind::Mailgun => match segments.as_slice() {
            ["v3", "lists", _, "members"] if method == Method::POST => Some(false),
            ["v3", "lists", _, "members.json"] if method == Method::POST => Some(true),
            _ => None,
        },
        ProviderKind::Webhook => None,
    };
    let Some(batch) = batch else {
        say(options, format_args!("NOT FOUND {method} {path}"));
        return HttpResponse::NotFound().finish();
    };
    if let Some(key) = &options.api_key
        && !authorized(kind, request, key)
    {
        say(options, format_args!("REJECTED {path}: wrong credentials"));
        return HttpResponse::Unauthorized().finish();
    }
    if let Some(forced) = forced_answer(options, path) {
        return forced;
    }
    let emails = match addresses(kind, batch, body) {
        Ok(emails) if !emails.is_empty() => emails,
        Ok(_) | Err(_) => {
            say(
                options,
                format_args!("REFUSED 400 {path}: no email address"),
            );
            return HttpResponse::BadRequest().body("no email address");
        }
    };
    if emails.len() > kind.batch_limit().max(1) && kind != ProviderKind::Sendgrid
        || emails.len() > 30_000
    {
        say(
            options,
            format_args!("REFUSED 400 {path}: {} members", emails.len()),
        );
        return HttpResponse::BadRequest().body("too many members in one request");
    }
    if kind == ProviderKind::Mailchimp
        && !batch
        && segments.last() != Some(&crate::email::provider::subscriber_hash(&emails[0]).as_str())
    {
        return HttpResponse::BadRequest().body("the member hash is not the email's");
    }
    let refused: Vec<&String> = emails.iter().filter(|e| e.starts_with("invalid")).collect();
    if kind == ProviderKind::Mailchimp && batch {
        for email in &emails {
            if !refused.contains(&email) {
                say(options, format_args!("DELIVERED {kind:?} email={email}"));
            }
        }
        let members = |list: Vec<&String>| -> Vec<serde_json::Value> {
            list.into_iter()
                .map(|e| serde_json::json!({"email_address": e, "status": "subscribed"}))
                .collect()
        };
        let errors: Vec<_> = refused
            .iter()
            .map(|e| serde_json::json!({"email_address": e, "error": format!("{e} looks fake or invalid, please enter a real email address."), "error_code": "ERROR_GENERIC", "field": "email_address", "field_message": ""}))
            .collect();
        let created = members(emails.iter().filter(|e| !refused.contains(e)).collect());
        return HttpResponse::Ok().json(serde_json::json!({
            "total_created": created.len(),
            "total_updated": 0,
            "error_count": errors.len(),
            "new_members": created,
            "updated_members": [],
            "errors": errors,
        }));
    }
    if let Some(email) = refused.first() {
        say(options, format_args!("REFUSED 400 {path}: {email}"));
        return match kind {
            ProviderKind::Mailchimp => HttpResponse::BadRequest()
                .content_type("application/problem+json")
                .json(serde_json::json!({"type": "https://mailchimp.com/developer/marketing/docs/errors/", "title": "Invalid Resource", "status": 400, "detail": format!("{email} looks fake or invalid, please enter a real email address.")})),
            ProviderKind::Sendgrid => {
                let place = emails.iter().position(|e| e == *email).unwrap_or(0);
                HttpResponse::BadRequest().json(serde_json::json!({"errors": [{"field": format!("contacts[{place}].email"), "message": "invalid email"}]}))
            }
            ProviderKind::Brevo => HttpResponse::BadRequest()
                .json(serde_json::json!({"code": "invalid_parameter", "message": "email is not valid"})),
            ProviderKind::Resend => HttpResponse::UnprocessableEntity()
                .json(serde_json::json!({"statusCode": 422, "name": "validation_error", "message": "Invalid `email` field."})),
            _ => HttpResponse::BadRequest()
                .json(serde_json::json!({"message": format!("'{email}' is not a valid address")})),
        };
    }
    for email in &emails {
        say(options, format_args!("DELIVERED {kind:?} email={email}"));
    }
    match kind {
        ProviderKind::Sendgrid => {
            HttpResponse::Accepted().json(serde_json::json!({"job_id": uuid::Uuid::new_v4()}))
        }
        ProviderKind::Brevo => HttpResponse::Created().json(serde_json::json!({"id": 1})),
        ProviderKind::Resend => HttpResponse::Created()
            .json(serde_json::json!({"object": "contact", "id": uuid::Uuid::new_v4()})),
        ProviderKind::Mailgun if batch => HttpResponse::Ok().json(serde_json::json!({
            "list": {"members_count": emails.len()},
            "message": "Mailing list has been updated",
            "task-id": uuid::Uuid::new_v4().simple().to_string(),
        })),
        ProviderKind::Mailgun => HttpResponse::Ok()
            .json(serde_json::json!({"message": "Mailing list member has been created"})),
        _ => HttpResponse::Ok()
            .json(serde_json::json!({"email_address": emails[0], "status": "pending"})),
    }
}

/// A provider's erasure routes (SPEC §6), as its reference documents them, with the key
/// checked as for every route: None when the request is not one.
fn erasure_api(
    options: &MockOptions,
    request: &HttpRequest,
    segments: &[&str],
    body: &str,
) -> Option<HttpResponse> {
    use actix_web::http::Method;
    let kind = options.kind;
    let method = request.method();
    let found = match (kind, segments) {
        (
            ProviderKind::Mailchimp,
            [
                "3.0",
                "lists",
                _,
                "members",
                _,
                "actions",
                "delete-permanent",
            ],
        ) => method == Method::POST,
        (ProviderKind::Mailchimp, ["3.0", "lists", _, "members", _]) => method == Method::DELETE,
        (ProviderKind::Sendgrid, ["v3", "marketing", "contacts", "search", "emails"])
        | (
            ProviderKind::Sendgrid,
            [
                "v3",
                "marketing",
                "contacts",
                "search",
                "identifiers",
                "email",
            ],
        ) => method == Method::POST,
        // This mock imports at once: every job it is asked about has completed.
        (ProviderKind::Sendgrid, ["v3", "marketing", "contacts", "imports", _]) => {
            method == Method::GET
        }
        (ProviderKind::Sendgrid, ["v3", "marketing", "contacts"]) => method == Method::DELETE,
        (ProviderKind::Brevo, ["v3", "contacts", _])
        | (ProviderKind::Resend, ["contacts", _])
        | (ProviderKind::Mailgun, ["v3", "lists", _, "members", _]) => method == Method::DELETE,
        _ => false,
    };
    if !found {
        return None;
    }
    if let Some(key) = &options.api_key
        && !authorized(kind, request, key)
    {
        return Some(HttpResponse::Unauthorized().finish());
    }
    let path = request.path();
    if let Some(forced) = forced_answer(options, path) {
        return Some(forced);
    }
    say(options, format_args!("ERASED {kind:?} {method} {path}"));
    Some(match (kind, method == Method::POST) {
        (ProviderKind::Sendgrid, false) if method == Method::GET => {
            let job = segments.last().copied().unwrap_or_default();
            HttpResponse::Ok()
                .json(serde_json::json!({"id": job, "status": "completed", "job_type": "upsert"}))
        }
        // The search finds every address asked for (this mock keeps no contacts).
        (ProviderKind::Sendgrid, true) => {
            let asked: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
            let field = if segments.contains(&"identifiers") {
                "identifiers"
            } else {
                "emails"
            };
            let result: serde_json::Map<String, serde_json::Value> = asked[field]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|email| email.as_str())
                .map(|email| {
                    let contact = serde_json::json!({"contact": {"id": uuid::Uuid::new_v4(), "email": email}});
                    (email.to_owned(), contact)
                })
                .collect();
            HttpResponse::Ok().json(serde_json::json!({ "result": result }))
        }
        (ProviderKind::Sendgrid, false) => {
            HttpResponse::Accepted().json(serde_json::json!({"job_id": uuid::Uuid::new_v4()}))
        }
        (ProviderKind::Resend, _) => {
            HttpResponse::Ok().json(serde_json::json!({"object": "contact", "deleted": true}))
        }
        (ProviderKind::Mailgun, _) => HttpResponse::Ok()
            .json(serde_json::json!({"message": "Mailing list member has been deleted"})),
        _ => HttpResponse::NoContent().finish(),
    })
}

/// The addresses a request to `kind`'s API carries (its batch route when `batch`; for the
/// webhook kind, the event's).
pub fn addresses(kind: ProviderKind, batch: bool, body: &str) -> Result<Vec<String>, String> {
    let json = || serde_json::from_str::<serde_json::Value>(body).map_err(|e| e.to_string());
    let form = |field: &str| {
        url::form_urlencoded::parse(body.as_bytes())
            .find(|(k, _)| k == field)
            .map(|(_, v)| v.into_owned())
    };
    let strings = |values: Option<&Vec<serde_json::Value>>, field: &str| {
        values
            .map(|list| {
                list.iter()
                    .filter_map(|v| v[field].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(match (kind, batch) {
        (ProviderKind::Mailchimp, true) => strings(json()?["members"].as_array(), "email_address"),
        (ProviderKind::Mailchimp, false) => json()?["email_address"]
            .as_str()
            .map(str::to_owned)
            .into_iter()
            .collect(),
        (ProviderKind::Sendgrid, _) => strings(json()?["contacts"].as_array(), "email"),
        (ProviderKind::Mailgun, true) => {
            let members = form("members").ok_or("no members")?;
            let members: serde_json::Value =
                serde_json::from_str(&members).map_err(|e| e.to_string())?;
            strings(members.as_array(), "address")
        }
        (ProviderKind::Mailgun, false) => form("address").into_iter().collect(),
        (ProviderKind::Webhook, _) => json()?["data"]["email"]
            .as_str()
            .map(str::to_owned)
            .into_iter()
            .collect(),
        _ => json()?["email"]
            .as_str()
            .map(str::to_owned)
            .into_iter()
            .collect(),
    })
}

/// `--status` (every request answered so) or `--fail-rate` (this one answered 503), for the
/// request `what` names in the output; None: answer it as the API does.
fn forced_answer(options: &MockOptions, what: &str) -> Option<HttpResponse> {
    if let Some(status) = options.status {
        say(options, format_args!("ANSWERED {status} {what}"));
        return Some(
            HttpResponse::build(
                actix_web::http::StatusCode::from_u16(status)
                    .unwrap_or(actix_web::http::StatusCode::BAD_REQUEST),
            )
            .finish(),
        );
    }
    if options.fail_rate > 0.0 && rand::rng().random::<f64>() < options.fail_rate {
        say(options, format_args!("FAILED 503 {what}"));
        return Some(HttpResponse::ServiceUnavailable().finish());
    }
    None
}

/// Whether `request` carries `key` the way `kind` expects it.
fn authorized(kind: ProviderKind, request: &HttpRequest, key: &str) -> bool {
    use base64::Engine;
    let basic = |user: Option<&str>| {
        header(request, "authorization")
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|v| v.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())))
            .is_some_and(|(u, p)| p == key && user.is_none_or(|expected| u == expected))
    };
    match kind {
        ProviderKind::Mailchimp => basic(None),
        ProviderKind::Mailgun => basic(Some("api")),
        ProviderKind::Brevo => header(request, "api-key") == Some(key),
        ProviderKind::Sendgrid | ProviderKind::Resend => {
            header(request, "authorization") == Some(format!("Bearer {key}").as_str())
        }
        ProviderKind::Webhook => true,
    }
}

fn header<'r>(request: &'r HttpRequest, name: &str) -> Option<&'r str> {
    request.headers().get(name).and_then(|v| v.to_str().ok())
}

fn say(options: &MockOptions, line: std::fmt::Arguments<'_>) {
    if !options.quiet {
        println!("{line}");
    }
}
