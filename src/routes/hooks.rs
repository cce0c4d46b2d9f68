//! `POST /hooks/{kind}`: the providers' events about consent (SPEC §8). Verification comes
//! before anything else; a refused request changes nothing. Every event is counted in
//! `signup_provider_events_total{kind, outcome}`.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use chrono::Utc;
use secrecy::ExposeSecret;

use super::AppState;
use super::error::ApiError;
use crate::consent::{Event, Rejected, brevo, mailchimp, mailgun, resend, sendgrid, store};
use crate::database::Writes;
use crate::email::provider::ProviderKind;

/// How every `/hooks/…` route refuses a request, changing nothing (OpenAPI only): 400 a body
/// that is not the kind's shape, 401 a missing or wrong credential or signature or a signed
/// timestamp more than 5 minutes away, 404 the kind's credential unset, 413 a body over
/// `server.max_body_bytes`, 429 the form's rate limit, 503 the database did not answer (the
/// provider sends it again).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum HookRefused<'p> {
    /// Not the kind's event body
    #[response(status = 400, content_type = "application/problem+json")]
    Malformed(crate::routes::error::Problem<'p>),
    /// Missing or wrong credential or signature, or a stale timestamp; nothing changed
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthorized(crate::routes::error::Problem<'p>),
    /// The kind's credential is not set
    #[response(status = 404, content_type = "application/problem+json")]
    Off(crate::routes::error::Problem<'p>),
    /// Body over server.max_body_bytes
    #[response(status = 413, content_type = "application/problem+json")]
    TooLarge(crate::routes::error::Problem<'p>),
    /// rate_limited
    #[response(status = 429, content_type = "application/problem+json")]
    RateLimited(crate::routes::error::Problem<'p>),
    /// The database did not answer; nothing changed
    #[response(status = 503, content_type = "application/problem+json")]
    Unavailable(crate::routes::error::Problem<'p>),
}

/// Counts, as `rejected`, the requests to a configured kind's route that were refused before
/// its handler saw them: a body over `server.max_body_bytes` (413), a body that came too
/// slowly (408), the rate limit (429). The handler counts the rest.
pub(super) async fn count_refused(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let state = request.app_data::<web::Data<AppState>>().cloned();
    let kind = state
        .as_ref()
        .and_then(|state| configured_kind(request.path(), &state.inbound));
    let response = next.call(request).await;
    let status = match &response {
        Ok(response) => response.status(),
        Err(e) => e.as_response_error().status_code(),
    };
    if let (Some(state), Some(kind)) = (state, kind)
        && matches!(status.as_u16(), 408 | 413 | 429)
    {
        state
            .metrics
            .provider_events
            .with_label_values(&[kind, "rejected"])
            .inc();
        tracing::warn!(kind, %status, "provider event refused before it was read");
    }
    response
}

/// The kind a `/hooks/<kind>…` path is for, if its credential is set.
fn configured_kind(path: &str, inbound: &crate::consent::Inbound) -> Option<&'static str> {
    let segment = path.strip_prefix("/hooks/")?.split('/').next()?;
    [
        ProviderKind::Brevo,
        ProviderKind::Mailchimp,
        ProviderKind::Mailgun,
        ProviderKind::Resend,
        ProviderKind::Sendgrid,
    ]
    .into_iter()
    .find(|kind| kind.as_str() == segment && inbound.credentials.is_on(*kind))
    .map(ProviderKind::as_str)
}

/// What the route answers for events it took: each one's outcome.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Taken {
    /// `applied` or `ignored`, one per event, in order.
    outcomes: Vec<&'static str>,
}

/// `POST /hooks/brevo`: Brevo's marketing webhook (the credential it was created with).
#[utoipa::path(post, path = "/hooks/brevo", tag = "consent",
    params(("Authorization" = String, Header, description = "`Bearer <email_sync.brevo.webhook_token>`, or Basic credentials whose `user:password` it is")),
    request_body(content = Object, content_type = "application/json", description = "A Brevo marketing event (`event`, `email`, `ts_event`, …), or an array of them"),
    responses(
        (status = 200, description = "Applied or ignored (a replay, an older event, an unknown address, not about consent)", body = Taken),
        HookRefused,
    ))]
pub(crate) async fn brevo(
    request: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> HttpResponse {
    let Some(token) = &state.inbound.credentials.brevo else {
        return ApiError::NotFound.error_response();
    };
    let authorization = header(&request, "authorization");
    let read =
        brevo::authorized(authorization, token.expose_secret()).and_then(|()| brevo::read(&body));
    take(&state, brevo::KIND, read).await
}

/// `POST /hooks/mailchimp/{secret}`: Mailchimp's webhook (form-encoded; the path's secret is
/// its credential).
#[utoipa::path(post, path = "/hooks/mailchimp/{secret}", tag = "consent",
    params(("secret" = String, Path, description = "email_sync.mailchimp.webhook_secret")),
    request_body(content = Object, content_type = "application/x-www-form-urlencoded", description = "Mailchimp's webhook form: `type`, `fired_at`, `data[email]`, …"),
    responses(
        (status = 200, description = "Applied or ignored (a replay, an older event, an unknown address, not about consent)", body = Taken),
        HookRefused,
    ))]
pub(crate) async fn mailchimp(
    secret: web::Path<String>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> HttpResponse {
    let Some(key) = &state.inbound.credentials.mailchimp else {
        return ApiError::NotFound.error_response();
    };
    let read = if mailchimp::authorized(&secret, key.expose_secret()) {
        mailchimp::read(&body).map(|event| vec![event])
    } else {
        Err(Rejected::BadSignature)
    };
    take(&state, mailchimp::KIND, read).await
}

/// `GET /hooks/mailchimp/{secret}`: Mailchimp's validator, checking the URL when the webhook
/// is set up.
#[utoipa::path(get, path = "/hooks/mailchimp/{secret}", tag = "consent",
    params(("secret" = String, Path, description = "email_sync.mailchimp.webhook_secret")),
    responses(
        (status = 200, description = "The URL takes Mailchimp's events"),
        (status = 401, description = "Not the configured secret", body = crate::routes::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "email_sync.mailchimp.webhook_secret is not set", body = crate::routes::error::Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn mailchimp_validator(
    secret: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    match &state.inbound.credentials.mailchimp {
        None => ApiError::NotFound.error_response(),
        Some(key) if mailchimp::authorized(&secret, key.expose_secret()) => {
            HttpResponse::Ok().finish()
        }
        Some(_) => ApiError::BadSignature(Rejected::BadSignature.to_string()).error_response(),
    }
}

/// `POST /hooks/mailgun`: Mailgun's webhook (its signature is in the body).
#[utoipa::path(post, path = "/hooks/mailgun", tag = "consent",
    request_body(content = Object, content_type = "application/json", description = "Mailgun's webhook body: `signature` and `event-data`"),
    responses(
        (status = 200, description = "Verified; applied or ignored (a replay, an older event, an unknown address, not about consent)", body = Taken),
        HookRefused,
    ))]
pub(crate) async fn mailgun(body: web::Bytes, state: web::Data<AppState>) -> HttpResponse {
    let Some(key) = &state.inbound.credentials.mailgun else {
        return ApiError::NotFound.error_response();
    };
    let read = mailgun::read(&body, key.expose_secret(), Utc::now());
    take(&state, mailgun::KIND, read.map(|event| vec![event])).await
}

/// `POST /hooks/resend`: Resend's webhook, signed by Svix (Standard Webhooks' scheme).
#[utoipa::path(post, path = "/hooks/resend", tag = "consent",
    params(
        ("svix-id" = String, Header, description = "The delivery's id"),
        ("svix-timestamp" = String, Header, description = "Unix seconds"),
        ("svix-signature" = String, Header, description = "`v1,<base64 HMAC-SHA256>`, space-separated"),
    ),
    request_body(content = Object, content_type = "application/json", description = "Resend's event: `type`, `created_at`, `data`"),
    responses(
        (status = 200, description = "Verified; applied or ignored (a replay, an older event, an unknown address, not about consent)", body = Taken),
        HookRefused,
    ))]
pub(crate) async fn resend(
    request: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> HttpResponse {
    let Some(key) = &state.inbound.credentials.resend else {
        return ApiError::NotFound.error_response();
    };
    let headers = resend::Headers {
        id: header(&request, "svix-id"),
        timestamp: header(&request, "svix-timestamp"),
        signature: header(&request, "svix-signature"),
    };
    let read = resend::read(&headers, &body, key.expose(), Utc::now());
    take(&state, resend::KIND, read).await
}

/// `POST /hooks/sendgrid`: SendGrid's Signed Event Webhook.
#[utoipa::path(post, path = "/hooks/sendgrid", tag = "consent",
    params(
        ("X-Twilio-Email-Event-Webhook-Signature" = String, Header, description = "base64 DER ECDSA P-256 signature of timestamp ‖ body"),
        ("X-Twilio-Email-Event-Webhook-Timestamp" = String, Header, description = "Unix seconds"),
    ),
    request_body(content = Object, content_type = "application/json", description = "SendGrid's array of events (`email`, `timestamp`, `event`, `sg_event_id`, …)"),
    responses(
        (status = 200, description = "Verified; each event applied or ignored (a replay, an older event, an unknown address, not about consent)", body = Taken),
        HookRefused,
    ))]
pub(crate) async fn sendgrid(
    request: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> HttpResponse {
    let Some(key) = &state.inbound.credentials.sendgrid else {
        return ApiError::NotFound.error_response();
    };
    let headers = sendgrid::Headers {
        signature: header(&request, "x-twilio-email-event-webhook-signature"),
        timestamp: header(&request, "x-twilio-email-event-webhook-timestamp"),
    };
    let read = sendgrid::read(&headers, &body, &key.0, Utc::now());
    take(&state, sendgrid::KIND, read).await
}

/// The header `name`, if present and readable.
fn header<'r>(request: &'r HttpRequest, name: &str) -> Option<&'r str> {
    request
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
}

/// Applies verified `events` of `kind`, or answers why none were taken.
async fn take(
    state: &AppState,
    kind: &'static str,
    events: Result<Vec<Event>, Rejected>,
) -> HttpResponse {
    let counter = |outcome: &str| {
        state
            .metrics
            .provider_events
            .with_label_values(&[kind, outcome])
            .inc();
    };
    let events = match events {
        Ok(events) => events,
        Err(rejected) => {
            counter("rejected");
            tracing::warn!(kind, reason = %rejected, "provider event refused");
            return match rejected {
                Rejected::Malformed(..) => ApiError::BadRequest(rejected.to_string()),
                _ => ApiError::BadSignature(rejected.to_string()),
            }
            .error_response();
        }
    };
    let inbound = &state.inbound;
    let mut outcomes = Vec::with_capacity(events.len());
    for event in &events {
        let applied = inbound
            .turns
            .run(
                Writes::Deliveries,
                store::apply(
                    &state.db,
                    &inbound.contacts,
                    kind,
                    event,
                    Utc::now(),
                    inbound.forward,
                ),
            )
            .await;
        match applied {
            Ok(applied) => {
                counter(applied.outcome());
                if applied == store::Verdict::Applied {
                    tracing::info!(kind, event_id = %event.id, state = ?event.state, "consent changed by the provider");
                    if inbound.forward {
                        // Forwarded as `user.consent_changed`: deliver it now, not at the next poll.
                        super::admin::wake(state);
                    }
                }
                outcomes.push(applied.outcome());
            }
            // Nothing of this event changed; the provider sends it again.
            Err(e) => return ApiError::from(e).error_response(),
        }
    }
    HttpResponse::Ok().json(Taken { outcomes })
}
