//! Rate limiting of the registration routes (JSON and form), before their bodies are read.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{HttpMessage, ResponseError, web};

use super::{AppState, form};
use crate::rate_limit::client_address;
use crate::routes::error::ApiError;

/// How a route answers a client over its rate: the page again, or a problem document.
#[derive(Clone, Copy)]
enum Answer {
    Page,
    Problem,
}

/// Rate limit of `POST /register`: over it, the form again with 429.
pub(super) async fn limit_form(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    limit(request, next, Answer::Page).await
}

/// Rate limit of `POST /api/v1/registrations`: over it, a 429 problem.
pub(super) async fn limit_api(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    limit(request, next, Answer::Problem).await
}

/// The client's address as the rate limits see it (see [`client_address`]).
pub(super) fn client_of(
    request: &actix_web::HttpRequest,
    state: &AppState,
) -> Option<std::net::IpAddr> {
    // Every header line, in order: a proxy may append a line of its own.
    let forwarded = request
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok());
    let peer = request.peer_addr().map(|a| a.ip());
    client_address(peer, forwarded, &state.trusted_proxies)
}

async fn limit(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
    answer: Answer,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let state = request.app_data::<web::Data<AppState>>().cloned();
    let verdict = match (&state, request.method() == Method::POST) {
        (Some(state), true) => match &state.limiter {
            Some(limiter) => match client_of(request.request(), state) {
                Some(client) => limiter.check(client),
                None => Ok(()),
            },
            None => Ok(()),
        },
        _ => Ok(()),
    };
    let Err(wait) = verdict else {
        return Ok(next.call(request).await?.map_into_boxed_body());
    };
    let retry_after = wait.as_secs_f64().ceil().max(1.0) as u64;
    let (http_request, _) = request.into_parts();
    let response = match (answer, state) {
        (Answer::Page, Some(state)) => form::rate_limited(&http_request, &state, retry_after),
        _ => ApiError::RateLimited { retry_after }.error_response(),
    };
    Ok(ServiceResponse::new(http_request, response))
}

/// Puts a deadline of `server.request_timeout` on reading the request body: a client that
/// trickles its body (slowloris) gets 408 instead of holding the connection open.
pub(super) async fn body_deadline(
    mut request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let timeout = request
        .app_data::<web::Data<AppState>>()
        .map_or(std::time::Duration::from_secs(10), |s| s.request_timeout);
    let deadline = tokio::time::Instant::now() + timeout;
    let payload = request.take_payload();
    let timed = futures_util::stream::unfold(Some(payload), move |state| async move {
        let mut payload = state?;
        match tokio::time::timeout_at(deadline, futures_util::StreamExt::next(&mut payload)).await {
            Ok(Some(chunk)) => Some((chunk, Some(payload))),
            Ok(None) => None,
            Err(_) => Some((
                Err(actix_web::error::PayloadError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "request body timed out",
                ))),
                None,
            )),
        }
    });
    request.set_payload(actix_web::dev::Payload::Stream {
        payload: Box::pin(timed),
    });
    next.call(request).await
}
