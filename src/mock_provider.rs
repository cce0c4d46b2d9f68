//! `signup mock-provider`: a local stand-in for the email provider, for trying signup out and
//! for benchmarks. It verifies Standard Webhooks signatures with an implementation of its own
//! (the `standardwebhooks` crate, not signup's signing code), prints each delivery, and can be
//! told to be slow, to fail a fraction of requests, or to always answer one status.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use rand::Rng;

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
    verifier: Option<standardwebhooks::Webhook>,
    seen: Mutex<HashSet<String>>,
}

/// Serves until interrupted.
pub async fn run(options: MockOptions) -> std::io::Result<()> {
    let verifier = match &options.secret {
        Some(secret) => Some(standardwebhooks::Webhook::new(secret).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("--secret: {e}"))
        })?),
        None => None,
    };
    let bind = options.bind.clone();
    let state = web::Data::new(MockState {
        options,
        verifier,
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
    if let Some(verifier) = &state.verifier {
        let mut headers = http::HeaderMap::new();
        for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            if let Some(value) =
                header(&request, name).and_then(|v| http::HeaderValue::from_str(v).ok())
            {
                headers.insert(name, value);
            }
        }
        if let Err(e) = verifier.verify(&body, &headers) {
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
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let repeat = match state.seen.lock() {
        Ok(mut seen) => !seen.insert(id.clone()),
        Err(_) => false,
    };
    say(
        options,
        format_args!(
            "DELIVERED webhook-id={id} type={} user={} email={}{}",
            event["type"].as_str().unwrap_or("?"),
            event["data"]["username"].as_str().unwrap_or("?"),
            event["data"]["email"].as_str().unwrap_or("?"),
            if repeat { " (repeat)" } else { "" },
        ),
    );
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
