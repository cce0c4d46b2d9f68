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
    if let Some(status) = options.status {
        say(options, format_args!("ANSWERED {status} webhook-id={id}"));
        return HttpResponse::build(
            actix_web::http::StatusCode::from_u16(status)
                .unwrap_or(actix_web::http::StatusCode::BAD_REQUEST),
        )
        .finish();
    }
    if options.fail_rate > 0.0 && rand::rng().random::<f64>() < options.fail_rate {
        say(options, format_args!("FAILED 503 webhook-id={id}"));
        return HttpResponse::ServiceUnavailable().finish();
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
    }
    HttpResponse::NoContent().finish()
}

/// A provider's contacts API, as its reference documents it: the route, the credentials (when
/// `--api-key` is given), the body's email and name, and the documented success answer.
fn provider_api(options: &MockOptions, request: &HttpRequest, body: &str) -> HttpResponse {
    use actix_web::http::Method;
    let kind = options.kind;
    let path = request.path();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let route_ok = match kind {
        ProviderKind::Mailchimp => {
            request.method() == Method::PUT
                && matches!(segments.as_slice(), ["3.0", "lists", _, "members", _])
        }
        ProviderKind::Sendgrid => {
            request.method() == Method::PUT && path == "/v3/marketing/contacts"
        }
        ProviderKind::Brevo => request.method() == Method::POST && path == "/v3/contacts",
        ProviderKind::Resend => request.method() == Method::POST && path == "/contacts",
        ProviderKind::Mailgun => {
            request.method() == Method::POST
                && matches!(segments.as_slice(), ["v3", "lists", _, "members"])
        }
        ProviderKind::Webhook => false,
    };
    if !route_ok {
        say(
            options,
            format_args!("NOT FOUND {} {path}", request.method()),
        );
        return HttpResponse::NotFound().finish();
    }
    if let Some(key) = &options.api_key
        && !authorized(kind, request, key)
    {
        say(options, format_args!("REJECTED {path}: wrong credentials"));
        return HttpResponse::Unauthorized().finish();
    }
    if let Some(status) = options.status {
        say(options, format_args!("ANSWERED {status} {path}"));
        return HttpResponse::build(
            actix_web::http::StatusCode::from_u16(status)
                .unwrap_or(actix_web::http::StatusCode::BAD_REQUEST),
        )
        .finish();
    }
    if options.fail_rate > 0.0 && rand::rng().random::<f64>() < options.fail_rate {
        say(options, format_args!("FAILED 503 {path}"));
        return HttpResponse::ServiceUnavailable().finish();
    }
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let email = match kind {
        ProviderKind::Mailchimp => json["email_address"].as_str().map(str::to_owned),
        ProviderKind::Sendgrid => json["contacts"][0]["email"].as_str().map(str::to_owned),
        ProviderKind::Mailgun => url::form_urlencoded::parse(body.as_bytes())
            .find(|(k, _)| k == "address")
            .map(|(_, v)| v.into_owned()),
        _ => json["email"].as_str().map(str::to_owned),
    };
    let Some(email) = email else {
        say(
            options,
            format_args!("REFUSED 400 {path}: no email address"),
        );
        return HttpResponse::BadRequest().body("no email address");
    };
    if kind == ProviderKind::Mailchimp
        && segments.last() != Some(&crate::email::provider::subscriber_hash(&email).as_str())
    {
        return HttpResponse::BadRequest().body("the member hash is not the email's");
    }
    say(options, format_args!("DELIVERED {kind:?} email={email}"));
    match kind {
        ProviderKind::Sendgrid => {
            HttpResponse::Accepted().json(serde_json::json!({"job_id": uuid::Uuid::new_v4()}))
        }
        ProviderKind::Brevo => HttpResponse::Created().json(serde_json::json!({"id": 1})),
        ProviderKind::Resend => HttpResponse::Created()
            .json(serde_json::json!({"object": "contact", "id": uuid::Uuid::new_v4()})),
        ProviderKind::Mailgun => HttpResponse::Ok()
            .json(serde_json::json!({"message": "Mailing list member has been created"})),
        _ => HttpResponse::Ok()
            .json(serde_json::json!({"email_address": email, "status": "pending"})),
    }
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
