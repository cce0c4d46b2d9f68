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

fn header<'r>(request: &'r HttpRequest, name: &str) -> Option<&'r str> {
    request.headers().get(name).and_then(|v| v.to_str().ok())
}

fn say(options: &MockOptions, line: std::fmt::Arguments<'_>) {
    if !options.quiet {
        println!("{line}");
    }
}
