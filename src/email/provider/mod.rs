//! The email provider, whichever kind `email_sync.kind` names (SPEC §5): one small trait that
//! turns due rows into requests and the answers into one outcome per row, in §3.2's classes.
//! The outbox, retry schedule, circuit breaker, dead letters and operator tools are the same for
//! every kind.
//!
//! One file per provider kind (`brevo`, `resend`, `mailchimp`, `sendgrid`, `mailgun`); the
//! gate in front of them all (`gate`); one-at-a-time and batched sending (`batching`).
//!
//! Built from each provider's published API reference and tested against local fakes that
//! check method, path, auth and body: no provider is reachable from where signup is built.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tracing::Instrument;
use uuid::Uuid;

use super::event::{Event, UserDeleted, UserRegistered};
use super::import::{self, EarlierUpsert, Job};
use super::outcome::{self, AttemptOutcome, client, parse_retry_after};
use crate::settings_de::{http_url, required_http_url};
use entity::email_outbox::EventType;

mod batching;
mod brevo;
mod gate;
mod mailchimp;
mod mailgun;
mod probe;
mod resend;
mod sendgrid;
mod webhook;

pub(crate) use batching::{BatchAnswer, InBatches, OneAtATime};
use batching::{bisecting, contacts_one_by_one};
pub use brevo::{Brevo, BrevoSettings};
pub(crate) use gate::Gate;
pub use gate::Paced;
use gate::one_by_one;
pub use mailchimp::{Mailchimp, MailchimpErase, MailchimpSettings, StatusIfNew, subscriber_hash};
pub use mailgun::{Mailgun, MailgunSettings};
pub use resend::{Resend, ResendSettings};
pub use sendgrid::{EventWebhookKey, Sendgrid, SendgridSettings};
pub use webhook::WebhookProvider;

/// `email_sync.kind`: which provider's API deliveries speak (SPEC §5).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Standard Webhooks to `email_sync.url`.
    Webhook,
    /// Brevo's contacts API (`email_sync.brevo`).
    Brevo,
    /// Resend's contacts API (`email_sync.resend`).
    Resend,
    /// Mailchimp's list members API (`email_sync.mailchimp`).
    Mailchimp,
    /// SendGrid's marketing contacts API (`email_sync.sendgrid`).
    Sendgrid,
    /// Mailgun's mailing list members API (`email_sync.mailgun`).
    Mailgun,
}

impl ProviderKind {
    /// As `email_sync.kind` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Webhook => "webhook",
            ProviderKind::Brevo => "brevo",
            ProviderKind::Resend => "resend",
            ProviderKind::Mailchimp => "mailchimp",
            ProviderKind::Sendgrid => "sendgrid",
            ProviderKind::Mailgun => "mailgun",
        }
    }

    /// The most rows one request may carry: the API's batch limit (SPEC §5; SendGrid's own
    /// is 30 000 contacts / 6 MB, held to 1000 so a request stays far below the size limit),
    /// 1 where the API takes one contact per request.
    pub fn batch_limit(self) -> usize {
        match self {
            ProviderKind::Mailchimp => 500,
            ProviderKind::Sendgrid | ProviderKind::Mailgun => 1000,
            ProviderKind::Webhook | ProviderKind::Brevo | ProviderKind::Resend => 1,
        }
    }

    /// Requests in flight at once unless `email_sync.max_in_flight` says: Mailchimp allows 10
    /// concurrent connections per key (more are 429); the others document no such limit.
    pub(crate) fn default_in_flight(self) -> usize {
        match self {
            ProviderKind::Mailchimp => 10,
            _ => 16,
        }
    }

    /// `email_sync.max_requests_per_second` unless set: the provider's documented limit
    /// (Brevo 10/s on contacts, Resend 5/s per team), else unlimited (0).
    pub(crate) fn default_requests_per_second(self) -> u32 {
        match self {
            ProviderKind::Brevo => 10,
            ProviderKind::Resend => 5,
            _ => 0,
        }
    }
}

/// One due row: its outbox id (the delivery's idempotency key), its event and stored payload,
/// and for a deletion, the last upsert of its contact that may still be landing (SPEC §6).
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub id: Uuid,
    pub event: EventType,
    pub payload: String,
    pub upsert: Option<EarlierUpsert>,
    /// For an upsert: the state of an address whose person declined (SPEC §8), which no
    /// delivery may subscribe again; the kinds that would, skip it.
    pub(crate) suppressed: Option<&'static str>,
    /// The trace context of the request that wrote the row (SPEC §9).
    pub(crate) trace: Option<crate::telemetry::trace::TraceParent>,
}

/// A provider's API as the EmailSyncActor uses it.
pub(crate) trait Adapter {
    /// One attempt for each of `rows`, each request admitted by `gate`: the outcomes, one per
    /// row, in order.
    fn deliver(
        &self,
        rows: &[Delivery],
        gate: &Gate<'_>,
    ) -> impl std::future::Future<Output = Vec<AttemptOutcome>> + Send;
}

/// The configured provider.
pub(crate) enum Provider {
    /// Standard Webhooks (SPEC §3.1).
    Webhook(WebhookProvider),
    /// Brevo's contacts API.
    Brevo(Brevo),
    /// Resend's contacts API.
    Resend(Resend),
    /// Mailchimp's list members API.
    Mailchimp(Mailchimp),
    /// SendGrid's marketing contacts API.
    Sendgrid(Sendgrid),
    /// Mailgun's mailing list members API.
    Mailgun(Mailgun),
}

impl Adapter for Provider {
    async fn deliver(&self, rows: &[Delivery], gate: &Gate<'_>) -> Vec<AttemptOutcome> {
        if rows.iter().all(|row| self.unsent(row).is_none()) {
            return self.send(rows, gate).await;
        }
        let sendable: Vec<Delivery> = rows
            .iter()
            .filter(|row| self.unsent(row).is_none())
            .cloned()
            .collect();
        let mut sent = self.send(&sendable, gate).await.into_iter();
        rows.iter()
            .map(|row| match self.unsent(row) {
                Some(outcome) => outcome,
                None => sent.next().unwrap_or_else(AttemptOutcome::no_outcome),
            })
            .collect()
    }
}

impl Provider {
    /// The outcome of a row this kind does not send, done without a request:
    /// - never undone (SPEC §8): an upsert of a declined address. Mailchimp's is sent: its
    ///   `status_if_new` never changes an existing member's status;
    /// - `user.consent_changed`, news for kind `webhook` only: a contacts API has no call for
    ///   it (rows written while the kind was `webhook`, delivered after it changed).
    fn unsent(&self, row: &Delivery) -> Option<AttemptOutcome> {
        if let Some(state) = row.suppressed
            && !matches!(self, Provider::Mailchimp(_))
        {
            return Some(AttemptOutcome::Suppressed {
                reason: format!("the address is {state} (SPEC §8); not sent to the provider"),
            });
        }
        (row.event == EventType::UserConsentChanged && !matches!(self, Provider::Webhook(_)))
            .then(|| AttemptOutcome::Suppressed {
                reason: "user.consent_changed is forwarded by kind webhook only; this kind's API has no call for it".into(),
            })
    }
}

impl Provider {
    /// One attempt for each of `rows`, by the kind's API.
    async fn send(&self, rows: &[Delivery], gate: &Gate<'_>) -> Vec<AttemptOutcome> {
        if rows.is_empty() {
            return Vec::new();
        }
        match self {
            Provider::Webhook(p) => {
                one_by_one(rows, gate, |row, trace| {
                    p.deliver_payload(row.id, row.event, &row.payload, trace)
                })
                .await
            }
            Provider::Brevo(p) => contacts_one_by_one(p, rows, gate).await,
            Provider::Resend(p) => contacts_one_by_one(p, rows, gate).await,
            Provider::Mailchimp(p) => bisecting(p, rows, gate).instrument(batch_span(rows)).await,
            Provider::Sendgrid(p) => bisecting(p, rows, gate).instrument(batch_span(rows)).await,
            Provider::Mailgun(p) => bisecting(p, rows, gate).instrument(batch_span(rows)).await,
        }
    }
}

/// The span of a batch's delivery attempt (SPEC §9): its own trace, linked to the span of each
/// request that wrote one of its rows.
fn batch_span(rows: &[Delivery]) -> tracing::Span {
    use crate::telemetry::trace;
    let span = tracing::info_span!(
        "email_sync.attempt",
        rows = rows.len(),
        otel.name = tracing::field::Empty,
        otel.kind = tracing::field::Empty,
    );
    trace::name_exported(&span, "deliver batch", "client");
    trace::attempt_span(&span, rows.iter().filter_map(|row| row.trace.as_ref()));
    span
}

/// Sends `request`: its answer, or the transient outcome of a request that got none.
async fn sent(request: reqwest::RequestBuilder) -> Result<reqwest::Response, AttemptOutcome> {
    request.send().await.map_err(request_failed)
}

/// Sends `request` and classifies its answer (§3.2, the provider's `reset_header` on 429).
async fn attempt(
    request: reqwest::RequestBuilder,
    reset_header: &str,
    setting: &str,
) -> AttemptOutcome {
    match sent(request).await {
        Ok(response) => classify(response.status(), response.headers(), reset_header, setting),
        Err(failed) => failed,
    }
}

/// The event a row announces, or the permanent outcome of a payload nobody can read.
fn event(row: &Delivery) -> Result<Event, AttemptOutcome> {
    Event::from_row(row.event, &row.payload).map_err(|e| AttemptOutcome::Permanent {
        status: None,
        error: format!("stored payload is not a {} event: {e}", row.event.as_str()),
    })
}

/// Sends an erasure's `request`: a 404 means the provider does not know the person (any
/// more): already gone, delivered. Anything else as §3.2 and the provider's reset header say.
async fn erase_request(
    request: reqwest::RequestBuilder,
    reset_header: &str,
    setting: &str,
) -> AttemptOutcome {
    match sent(request).await {
        Ok(response) if response.status() == StatusCode::NOT_FOUND => {
            AttemptOutcome::delivered(404)
        }
        Ok(response) => classify(response.status(), response.headers(), reset_header, setting),
        Err(failed) => failed,
    }
}

/// `base` with `segments` appended as path segments, each percent-encoded (an address in a
/// path: `/v3/contacts/a%40b.co`).
fn with_segments(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

/// A provider's rate-limit header as a delay: seconds until the limit resets.
fn reset_after(headers: &HeaderMap, name: &str) -> Option<Duration> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// §3.2's classification, with a provider's own rate-limit reset header read on 429, and the
/// key named in the misconfiguration message.
fn classify(
    status: StatusCode,
    headers: &HeaderMap,
    reset_header: &str,
    setting: &str,
) -> AttemptOutcome {
    let mut outcome = outcome::classify(status, headers, SystemTime::now());
    match &mut outcome {
        AttemptOutcome::Transient { retry_after, .. }
            if status == StatusCode::TOO_MANY_REQUESTS =>
        {
            *retry_after = reset_after(headers, reset_header).or(*retry_after);
        }
        AttemptOutcome::Misconfigured { error, .. } => {
            *error = format!("provider answered {status}: check {setting}");
        }
        _ => {}
    }
    outcome
}

/// A request that got no answer, described without its URL: its query string or user-info may
/// hold the provider's API key, and this text is stored on the row and logged.
fn request_failed(e: reqwest::Error) -> AttemptOutcome {
    let e = e.without_url();
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    AttemptOutcome::Transient {
        status: None,
        error: format!("{kind}: {}", crate::error_chain::error_chain(&e)),
        retry_after: None,
    }
}

/// One provider kind's API: the HTTP client, the URL its requests go to, and the kind's
/// settings (`email_sync.<kind>`).
pub struct Api<S> {
    client: reqwest::Client,
    /// Where requests go: the settings' `base_url` and the API's path.
    endpoint: Url,
    settings: S,
}

impl<S: Clone> Api<S> {
    fn at(endpoint: Url, settings: &S, timeout: Duration) -> Result<Self, reqwest::Error> {
        Ok(Self {
            client: client(timeout)?,
            endpoint,
            settings: settings.clone(),
        })
    }
}

/// A key a section's `missing` names, and what to say about it.
type Missing = Option<(&'static str, &'static str)>;

/// `api_key`, if the section has none: every provider's API needs one.
fn missing_key(api_key: &SecretString) -> Missing {
    api_key.expose_secret().is_empty().then_some((
        "api_key",
        "is required by email_sync.kind; best given in the environment",
    ))
}

/// `key`, if `value` is blank.
fn missing_text(key: &'static str, value: &str) -> Missing {
    value
        .trim()
        .is_empty()
        .then_some((key, "is required by email_sync.kind"))
}

/// `base` with `path` appended below it (a base URL with or without a trailing slash).
fn join(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let joined = format!("{}/{path}", base.path().trim_end_matches('/'));
    url.set_path(&joined);
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_join_below_the_base_url_with_or_without_a_slash() {
        let with = Url::parse("http://127.0.0.1:9/brevo/").expect("url");
        let without = Url::parse("http://127.0.0.1:9/brevo").expect("url");
        assert_eq!(join(&with, "v3/contacts").path(), "/brevo/v3/contacts");
        assert_eq!(join(&without, "v3/contacts").path(), "/brevo/v3/contacts");
        let root = Url::parse("https://api.brevo.com").expect("url");
        assert_eq!(
            join(&root, "v3/contacts").as_str(),
            "https://api.brevo.com/v3/contacts"
        );
    }

    #[test]
    fn a_429_is_retried_after_the_providers_own_reset_header() {
        let mut headers = HeaderMap::new();
        headers.insert("x-sib-ratelimit-reset", "7".parse().expect("value"));
        let outcome = classify(
            StatusCode::TOO_MANY_REQUESTS,
            &headers,
            "x-sib-ratelimit-reset",
            "email_sync.brevo.api_key",
        );
        assert!(
            matches!(outcome, AttemptOutcome::Transient { retry_after: Some(d), .. } if d == Duration::from_secs(7)),
            "{outcome:?}"
        );
        let outcome = classify(
            StatusCode::UNAUTHORIZED,
            &HeaderMap::new(),
            "x-sib-ratelimit-reset",
            "email_sync.brevo.api_key",
        );
        assert!(
            matches!(&outcome, AttemptOutcome::Misconfigured { error, .. } if error.contains("email_sync.brevo.api_key")),
            "{outcome:?}"
        );
    }
}
