//! The email provider, whichever kind `email_sync.kind` names (SPEC §5): one small trait that
//! turns due rows into requests and the answers into one outcome per row, in §3.2's classes.
//! The outbox, retry schedule, circuit breaker, dead letters and operator tools are the same for
//! every kind.
//!
//! Built from each provider's published API reference and tested against local fakes that
//! check method, path, auth and body: no provider is reachable from where signup is built.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use super::event::UserRegistered;
use super::webhook::{self, AttemptOutcome, WebhookProvider, parse_retry_after};

/// One due row: its outbox id (the delivery's idempotency key) and its stored payload.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: Uuid,
    pub payload: String,
}

/// A provider's API as the EmailSyncActor uses it.
pub trait Adapter {
    /// One attempt for each of `rows`: the outcomes, one per row, in order.
    fn deliver(
        &self,
        rows: &[Delivery],
    ) -> impl std::future::Future<Output = Vec<AttemptOutcome>> + Send;
}

/// The configured provider.
pub enum Provider {
    /// Standard Webhooks (SPEC §3.1).
    Webhook(WebhookProvider),
    /// Brevo's contacts API.
    Brevo(Brevo),
    /// Resend's contacts API.
    Resend(Resend),
}

impl Adapter for Provider {
    async fn deliver(&self, rows: &[Delivery]) -> Vec<AttemptOutcome> {
        match self {
            Provider::Webhook(p) => p.deliver(rows).await,
            Provider::Brevo(p) => p.deliver(rows).await,
            Provider::Resend(p) => p.deliver(rows).await,
        }
    }
}

impl Adapter for WebhookProvider {
    async fn deliver(&self, rows: &[Delivery]) -> Vec<AttemptOutcome> {
        let mut outcomes = Vec::with_capacity(rows.len());
        for row in rows {
            outcomes.push(self.deliver_one(row.id, &row.payload).await);
        }
        outcomes
    }
}

/// The user a row announces, or the permanent outcome of a payload nobody can read.
fn event(row: &Delivery) -> Result<UserRegistered, AttemptOutcome> {
    UserRegistered::from_payload(&row.payload).map_err(|e| AttemptOutcome::Permanent {
        status: 0,
        error: format!("stored payload is not an event: {e}"),
    })
}

/// The HTTP client every adapter uses: the attempt timeout, no redirects.
pub fn client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("signup/", env!("CARGO_PKG_VERSION")))
        .build()
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
    let mut outcome = webhook::classify(status, headers, SystemTime::now());
    if let AttemptOutcome::Transient {
        retry_after,
        misconfigured,
        error,
        ..
    } = &mut outcome
    {
        if status == StatusCode::TOO_MANY_REQUESTS {
            *retry_after = reset_after(headers, reset_header).or(*retry_after);
        }
        if *misconfigured {
            *error = format!("provider answered {status}: check {setting}");
        }
    }
    outcome
}

/// A failed request, without its URL (it may hold credentials).
fn request_failed(e: reqwest::Error) -> AttemptOutcome {
    AttemptOutcome::Transient {
        status: None,
        error: format!(
            "request failed: {}",
            crate::error::error_chain(&e.without_url())
        ),
        retry_after: None,
        misconfigured: false,
    }
}

/// Brevo (`email_sync.kind = "brevo"`): `POST /v3/contacts` with `updateEnabled: true` (an
/// upsert: without it a repeat is 400 `duplicate_parameter`), one contact per request; 201 or
/// 204 is delivered; a 429 carries `x-sib-ratelimit-reset` (seconds).
pub struct Brevo {
    client: reqwest::Client,
    /// `email_sync.brevo.base_url` + `/v3/contacts`.
    contacts: Url,
    api_key: SecretString,
    list_ids: Vec<u64>,
    /// The contact attribute that receives the username, e.g. `USERNAME`.
    username_attribute: String,
}

impl Brevo {
    pub fn new(
        settings: &crate::configuration::BrevoSettings,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            client: client(timeout)?,
            contacts: join(&settings.base_url, "v3/contacts"),
            api_key: settings.api_key.clone(),
            list_ids: settings.list_ids.clone(),
            username_attribute: settings.username_attribute.clone(),
        })
    }

    async fn deliver_one(&self, row: &Delivery) -> AttemptOutcome {
        let user = match event(row) {
            Ok(user) => user,
            Err(outcome) => return outcome,
        };
        let mut attributes = serde_json::Map::new();
        attributes.insert(
            self.username_attribute.clone(),
            serde_json::Value::String(user.username),
        );
        let body = serde_json::json!({
            "email": user.email,
            "attributes": attributes,
            "listIds": self.list_ids,
            "updateEnabled": true,
        });
        match self
            .client
            .post(self.contacts.clone())
            .header("api-key", self.api_key.expose_secret())
            .header("accept", "application/json")
            .json(&body)
            .send()
            .await
        {
            Ok(response) => classify(
                response.status(),
                response.headers(),
                "x-sib-ratelimit-reset",
                "email_sync.brevo.api_key",
            ),
            Err(e) => request_failed(e),
        }
    }
}

impl Adapter for Brevo {
    async fn deliver(&self, rows: &[Delivery]) -> Vec<AttemptOutcome> {
        let mut outcomes = Vec::with_capacity(rows.len());
        for row in rows {
            outcomes.push(self.deliver_one(row).await);
        }
        outcomes
    }
}

/// Resend (`email_sync.kind = "resend"`): `POST /contacts` `{"email", "first_name", "unsubscribed":
/// false}`; 201 is delivered, and so is an answer saying the contact already exists (a retry of
/// a request whose answer was lost); a 429 carries `retry-after` or `ratelimit-reset`.
pub struct Resend {
    client: reqwest::Client,
    /// `email_sync.resend.base_url` + `/contacts`.
    contacts: Url,
    api_key: SecretString,
}

impl Resend {
    pub fn new(
        settings: &crate::configuration::ResendSettings,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            client: client(timeout)?,
            contacts: join(&settings.base_url, "contacts"),
            api_key: settings.api_key.clone(),
        })
    }

    async fn deliver_one(&self, row: &Delivery) -> AttemptOutcome {
        let user = match event(row) {
            Ok(user) => user,
            Err(outcome) => return outcome,
        };
        let body = serde_json::json!({
            "email": user.email,
            "first_name": user.username,
            "unsubscribed": false,
        });
        let response = match self
            .client
            .post(self.contacts.clone())
            .bearer_auth(self.api_key.expose_secret())
            .json(&body)
            .send()
            .await
        {
            Ok(response) => response,
            Err(e) => return request_failed(e),
        };
        let status = response.status();
        let headers = response.headers().clone();
        if matches!(status.as_u16(), 409 | 422) {
            let text = response.text().await.unwrap_or_default();
            if text.to_ascii_lowercase().contains("already exist") {
                return AttemptOutcome::Delivered {
                    status: status.as_u16(),
                };
            }
        }
        let mut outcome = classify(
            status,
            &headers,
            "ratelimit-reset",
            "email_sync.resend.api_key",
        );
        if let AttemptOutcome::Transient { retry_after, .. } = &mut outcome
            && status == StatusCode::TOO_MANY_REQUESTS
            && let Some(asked) = headers
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()))
        {
            *retry_after = Some(asked);
        }
        outcome
    }
}

impl Adapter for Resend {
    async fn deliver(&self, rows: &[Delivery]) -> Vec<AttemptOutcome> {
        let mut outcomes = Vec::with_capacity(rows.len());
        for row in rows {
            outcomes.push(self.deliver_one(row).await);
        }
        outcomes
    }
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
            matches!(&outcome, AttemptOutcome::Transient { misconfigured: true, error, .. } if error.contains("email_sync.brevo.api_key")),
            "{outcome:?}"
        );
    }
}
