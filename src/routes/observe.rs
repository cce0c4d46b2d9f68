//! Every request: a request id (the client's `X-Request-Id` if sensible, else a new one, sent
//! back in the response), a span in the client's trace (its `traceparent`) or a new one (SPEC
//! §9), one log line, and the HTTP metrics labelled by route *pattern*.

use std::future::{Ready, ready};
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use tracing::Instrument;

use super::AppState;
use crate::telemetry::trace::{TraceParent, name_exported, request_span};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The request being served: its id, and its span's trace context, which a registration stores
/// on its outbox row.
#[derive(Debug, Clone)]
pub(super) struct RequestId(pub crate::registrar::Origin);

impl FromRequest for RequestId {
    type Error = actix_web::Error;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let id = req
            .extensions()
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(|| {
                RequestId(crate::registrar::Origin {
                    request_id: uuid::Uuid::new_v4().to_string(),
                    trace: None,
                })
            });
        ready(Ok(id))
    }
}

/// A client's id is kept if it is 1–128 visible ASCII characters; anything else is replaced,
/// so that log lines cannot be forged or bloated through it.
fn acceptable(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// The `method` label: one of a fixed set, so that no request can add a label value (a client
/// inventing 4000-character methods would otherwise grow every scrape without bound).
pub(super) fn method_label(method: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

pub(crate) async fn observe(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    let method = method_label(request.method());
    let metrics = request
        .app_data::<web::Data<AppState>>()
        .map(|state| state.metrics.clone());
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        trace_id = tracing::field::Empty,
        otel.name = tracing::field::Empty,
        otel.kind = tracing::field::Empty,
    );
    let incoming = request
        .headers()
        .get(&TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse);
    name_exported(&span, format_args!("{method} {}", request.path()), "server");
    let trace = request_span(&span, incoming.as_ref());
    span.record("trace_id", tracing::field::display(trace.trace_id()));
    request
        .extensions_mut()
        .insert(RequestId(crate::registrar::Origin {
            request_id: id.clone(),
            trace: Some(trace),
        }));

    let mut response = next.call(request).instrument(span.clone()).await?;

    // The pattern ("/admin/email-sync/jobs/{id}"), never the raw path with its ids.
    let route = response
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let status = response.status().as_u16();
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let elapsed = started.elapsed();
    if let Some(metrics) = metrics {
        metrics
            .http_requests
            .with_label_values(&[method, route.as_str(), &status.to_string()])
            .inc();
        metrics
            .http_duration
            .with_label_values(&[method, route.as_str()])
            .observe(elapsed.as_secs_f64());
    }
    tracing::info!(
        parent: &span,
        method,
        route,
        status,
        elapsed_ms = elapsed.as_secs_f64() * 1e3,
        "request"
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    #[test]
    fn methods_outside_the_fixed_set_are_labelled_other() {
        use actix_web::http::Method;
        assert_eq!(super::method_label(&Method::POST), "POST");
        assert_eq!(super::method_label(&Method::TRACE), "other");
        let invented = Method::from_bytes(&[b'X'; 4000]).expect("a valid token");
        assert_eq!(super::method_label(&invented), "other");
    }

    #[test]
    fn only_short_visible_request_ids_are_kept() {
        assert!(super::acceptable("abc-123"));
        assert!(!super::acceptable(""));
        assert!(!super::acceptable("has space"));
        assert!(!super::acceptable("line\nbreak"));
        assert!(!super::acceptable(&"x".repeat(129)));
    }
}
