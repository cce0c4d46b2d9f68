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
use secrecy::ExposeSecret;
use uuid::Uuid;

use super::event::UserRegistered;
use super::webhook::{self, AttemptOutcome, WebhookProvider, parse_retry_after};
use crate::configuration::{
    BrevoSettings, MailchimpSettings, MailgunSettings, ResendSettings, SendgridSettings,
};

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
    /// Mailchimp's list members API.
    Mailchimp(Mailchimp),
    /// SendGrid's marketing contacts API.
    Sendgrid(Sendgrid),
    /// Mailgun's mailing list members API.
    Mailgun(Mailgun),
}

impl Provider {
    /// Requests that delivering `rows` takes: every kind takes one contact per request today.
    fn requests(&self, rows: &[Delivery]) -> usize {
        rows.len()
    }

    /// `email_sync.max_requests_per_second` unless set: the provider's documented limit
    /// (Brevo 10/s on contacts, Resend 5/s per team), else unlimited (0).
    pub fn default_requests_per_second(kind: crate::configuration::ProviderKind) -> u32 {
        use crate::configuration::ProviderKind as K;
        match kind {
            K::Brevo => 10,
            K::Resend => 5,
            K::Webhook | K::Mailchimp | K::Sendgrid | K::Mailgun => 0,
        }
    }
}

/// A provider held to `email_sync.max_requests_per_second`, across every delivery in flight.
pub struct Paced {
    provider: Provider,
    /// None: unlimited.
    pace: Option<governor::DefaultDirectRateLimiter>,
}

impl Paced {
    /// `provider` at most `per_second` requests a second (0: unlimited), with no burst beyond
    /// one second's worth.
    pub fn new(provider: Provider, per_second: u32) -> Self {
        let pace = std::num::NonZeroU32::new(per_second)
            .map(|n| governor::RateLimiter::direct(governor::Quota::per_second(n)));
        Self { provider, pace }
    }
}

impl Adapter for Paced {
    async fn deliver(&self, rows: &[Delivery]) -> Vec<AttemptOutcome> {
        if let Some(pace) = &self.pace {
            let requests = u32::try_from(self.provider.requests(rows)).unwrap_or(u32::MAX);
            if let Some(n) = std::num::NonZeroU32::new(requests) {
                // More requests at once than a second allows cannot be waited for: they go.
                let _ = pace.until_n_ready(n).await;
            }
        }
        self.provider.deliver(rows).await
    }
}

impl Adapter for Provider {
    async fn deliver(&self, rows: &[Delivery]) -> Vec<AttemptOutcome> {
        match self {
            Provider::Webhook(p) => p.deliver(rows).await,
            Provider::Brevo(p) => p.deliver(rows).await,
            Provider::Resend(p) => p.deliver(rows).await,
            Provider::Mailchimp(p) => p.deliver(rows).await,
            Provider::Sendgrid(p) => p.deliver(rows).await,
            Provider::Mailgun(p) => p.deliver(rows).await,
        }
    }
}

/// A contacts API that takes one person per request: a batch is its rows one after the other,
/// each row's payload read as the user it announces.
pub trait OneAtATime {
    /// One attempt to add or update `user` at the provider.
    fn send(
        &self,
        user: UserRegistered,
    ) -> impl std::future::Future<Output = AttemptOutcome> + Send;
}

impl<T: OneAtATime + Sync> Adapter for T {
    async fn deliver(&self, rows: &[Delivery]) -> Vec<AttemptOutcome> {
        let mut outcomes = Vec::with_capacity(rows.len());
        for row in rows {
            outcomes.push(match event(row) {
                Ok(user) => self.send(user).await,
                Err(unreadable) => unreadable,
            });
        }
        outcomes
    }
}

impl Adapter for WebhookProvider {
    async fn deliver(&self, rows: &[Delivery]) -> Vec<AttemptOutcome> {
        let mut outcomes = Vec::with_capacity(rows.len());
        for row in rows {
            outcomes.push(self.deliver_payload(row.id, &row.payload).await);
        }
        outcomes
    }
}

/// Sends `request` and classifies its answer (§3.2, the provider's `reset_header` on 429).
async fn attempt(
    request: reqwest::RequestBuilder,
    reset_header: &str,
    setting: &str,
) -> AttemptOutcome {
    match request.send().await {
        Ok(response) => classify(response.status(), response.headers(), reset_header, setting),
        Err(e) => request_failed(e),
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

/// Brevo (`email_sync.kind = "brevo"`): `POST /v3/contacts` with `updateEnabled: true` (an
/// upsert: without it a repeat is 400 `duplicate_parameter`), one contact per request; 201 or
/// 204 is delivered; a 429 carries `x-sib-ratelimit-reset` (seconds).
pub type Brevo = Api<BrevoSettings>;

impl Brevo {
    pub fn new(settings: &BrevoSettings, timeout: Duration) -> Result<Self, reqwest::Error> {
        Self::at(join(&settings.base_url, "v3/contacts"), settings, timeout)
    }
}

impl OneAtATime for Brevo {
    async fn send(&self, user: UserRegistered) -> AttemptOutcome {
        let mut attributes = serde_json::Map::new();
        attributes.insert(
            self.settings.username_attribute.clone(),
            serde_json::Value::String(user.username),
        );
        let body = serde_json::json!({
            "email": user.email,
            "attributes": attributes,
            "listIds": self.settings.list_ids,
            "updateEnabled": true,
        });
        let request = self
            .client
            .post(self.endpoint.clone())
            .header("api-key", self.settings.api_key.expose_secret())
            .header("accept", "application/json")
            .json(&body);
        attempt(request, "x-sib-ratelimit-reset", "email_sync.brevo.api_key").await
    }
}

/// Resend (`email_sync.kind = "resend"`): `POST /contacts` `{"email", "first_name", "unsubscribed":
/// false}`; 201 is delivered, and so is an answer saying the contact already exists (a retry of
/// a request whose answer was lost); a 429 carries `retry-after` or `ratelimit-reset`.
pub type Resend = Api<ResendSettings>;

impl Resend {
    pub fn new(settings: &ResendSettings, timeout: Duration) -> Result<Self, reqwest::Error> {
        Self::at(join(&settings.base_url, "contacts"), settings, timeout)
    }
}

impl OneAtATime for Resend {
    async fn send(&self, user: UserRegistered) -> AttemptOutcome {
        let body = serde_json::json!({
            "email": user.email,
            "first_name": user.username,
            "unsubscribed": false,
        });
        let response = match self
            .client
            .post(self.endpoint.clone())
            .bearer_auth(self.settings.api_key.expose_secret())
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

/// Mailchimp (`email_sync.kind = "mailchimp"`): `PUT /3.0/lists/{list_id}/members/{md5 of the
/// lower-cased email}`, an idempotent upsert (a POST on an existing member is 400 "Member
/// Exists"). Sends `status_if_new` only: `status` would re-subscribe someone who unsubscribed.
/// Basic auth, any user name, the API key as password.
pub type Mailchimp = Api<MailchimpSettings>;

impl Mailchimp {
    pub fn new(settings: &MailchimpSettings, timeout: Duration) -> Result<Self, reqwest::Error> {
        // `…/members/`: each member's hash is joined below it.
        let mut members = join(
            &settings.api_base(),
            &format!("3.0/lists/{}/members", settings.list_id),
        );
        members.set_path(&format!("{}/", members.path()));
        Self::at(members, settings, timeout)
    }
}

/// Mailchimp's subscriber hash: MD5 of the lower-cased address, in hex.
pub fn subscriber_hash(email: &str) -> String {
    use md5::{Digest, Md5};
    Md5::digest(email.to_lowercase().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Mailchimp's answers beyond §3.2: a 400 saying the address "signed up to a lot of lists very
/// recently" is temporary (next attempt no sooner than an hour); every other 400 (compliance
/// state, forgotten email, fake or invalid address, validation) is permanent, kept with the
/// problem's title and detail.
fn mailchimp_outcome(status: StatusCode, headers: &HeaderMap, body: &str) -> AttemptOutcome {
    if status == StatusCode::BAD_REQUEST {
        let problem: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let title = problem["title"].as_str().unwrap_or("Bad Request");
        let detail = problem["detail"].as_str().unwrap_or("");
        if detail.contains("signed up to a lot of lists very recently") {
            return AttemptOutcome::Transient {
                status: Some(400),
                error: format!("Mailchimp: {title}: {detail}"),
                retry_after: Some(Duration::from_secs(3600)),
                misconfigured: false,
            };
        }
        return AttemptOutcome::Permanent {
            status: 400,
            error: format!("Mailchimp: {title}: {detail}"),
        };
    }
    classify(
        status,
        headers,
        "x-ratelimit-reset",
        "email_sync.mailchimp.api_key",
    )
}

impl OneAtATime for Mailchimp {
    async fn send(&self, user: UserRegistered) -> AttemptOutcome {
        let mut merge_fields = serde_json::Map::new();
        merge_fields.insert(
            self.settings.username_merge_field.clone(),
            serde_json::Value::String(user.username),
        );
        let body = serde_json::json!({
            "email_address": user.email,
            "status_if_new": self.settings.status_if_new.as_str(),
            "merge_fields": merge_fields,
        });
        let url = match self.endpoint.join(&subscriber_hash(&user.email)) {
            Ok(url) => url,
            Err(e) => {
                return AttemptOutcome::Permanent {
                    status: 0,
                    error: format!("cannot build the member URL: {e}"),
                };
            }
        };
        let response = match self
            .client
            .put(url)
            .basic_auth("signup", Some(self.settings.api_key.expose_secret()))
            .json(&body)
            .send()
            .await
        {
            Ok(response) => response,
            Err(e) => return request_failed(e),
        };
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        mailchimp_outcome(status, &headers, &text)
    }
}

/// SendGrid (`email_sync.kind = "sendgrid"`): `PUT /v3/marketing/contacts` with the contact and
/// the lists; 202 `{job_id}` means accepted, processed later: delivered (a courier that counted
/// 202 as failure sent one duplicate per retry). A 429 carries `X-RateLimit-Reset`, an epoch.
pub type Sendgrid = Api<SendgridSettings>;

impl Sendgrid {
    pub fn new(settings: &SendgridSettings, timeout: Duration) -> Result<Self, reqwest::Error> {
        Self::at(
            join(&settings.base_url, "v3/marketing/contacts"),
            settings,
            timeout,
        )
    }
}

impl OneAtATime for Sendgrid {
    async fn send(&self, user: UserRegistered) -> AttemptOutcome {
        let mut contact = serde_json::Map::new();
        contact.insert("email".into(), serde_json::Value::String(user.email));
        contact.insert(
            self.settings.username_field.clone(),
            serde_json::Value::String(user.username),
        );
        let body = serde_json::json!({"list_ids": self.settings.list_ids, "contacts": [contact]});
        match self
            .client
            .put(self.endpoint.clone())
            .bearer_auth(self.settings.api_key.expose_secret())
            .json(&body)
            .send()
            .await
        {
            Ok(response) => {
                let status = response.status();
                let mut outcome = classify(
                    status,
                    response.headers(),
                    "",
                    "email_sync.sendgrid.api_key",
                );
                if let AttemptOutcome::Transient { retry_after, .. } = &mut outcome
                    && status == StatusCode::TOO_MANY_REQUESTS
                    && let Some(at) = reset_after(response.headers(), "x-ratelimit-reset")
                {
                    // An epoch, not a delay.
                    let now = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default();
                    *retry_after = Some(at.saturating_sub(now));
                }
                outcome
            }
            Err(e) => request_failed(e),
        }
    }
}

/// Mailgun (`email_sync.kind = "mailgun"`): `POST /v3/lists/{list}/members`, a form with
/// `address`, `name` and `upsert=yes`; Basic auth `api:<key>`. A 404 is transient (its lists
/// are eventually consistent), as §3.2 already has it.
pub type Mailgun = Api<MailgunSettings>;

impl Mailgun {
    pub fn new(settings: &MailgunSettings, timeout: Duration) -> Result<Self, reqwest::Error> {
        let members = format!("v3/lists/{}/members", settings.list);
        Self::at(join(&settings.base_url, &members), settings, timeout)
    }
}

impl OneAtATime for Mailgun {
    async fn send(&self, user: UserRegistered) -> AttemptOutcome {
        let form = [
            ("address", user.email.as_str()),
            ("name", user.username.as_str()),
            ("upsert", "yes"),
        ];
        let request = self
            .client
            .post(self.endpoint.clone())
            .basic_auth("api", Some(self.settings.api_key.expose_secret()))
            .form(&form);
        attempt(request, "", "email_sync.mailgun.api_key").await
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
    fn the_mailchimp_subscriber_hash_is_the_md5_of_the_lower_cased_address() {
        // Mailchimp's documented example: "Urist.McVankab@freddiesjokes.com".
        assert_eq!(
            subscriber_hash("Urist.McVankab@freddiesjokes.com"),
            subscriber_hash("urist.mcvankab@freddiesjokes.com")
        );
        assert_eq!(
            subscriber_hash("urist.mcvankab@freddiesjokes.com"),
            "62eeb292278cc15f5817cb78f7790b08"
        );
    }

    #[test]
    fn mailchimp_400s_are_permanent_but_too_many_recent_signups_waits_an_hour() {
        let body = |title: &str, detail: &str| json_body(title, detail);
        let permanent = mailchimp_outcome(
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            &body(
                "Member In Compliance State",
                "x@example.com is in a compliance state",
            ),
        );
        assert!(
            matches!(&permanent, AttemptOutcome::Permanent { status: 400, error } if error.contains("Member In Compliance State")),
            "{permanent:?}"
        );
        let recent = mailchimp_outcome(
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            &body(
                "Invalid Resource",
                "x@example.com has signed up to a lot of lists very recently; we're not allowing more signups for now",
            ),
        );
        assert!(
            matches!(recent, AttemptOutcome::Transient { retry_after: Some(d), .. } if d == Duration::from_secs(3600)),
            "{recent:?}"
        );
    }

    fn json_body(title: &str, detail: &str) -> String {
        serde_json::json!({"type": "https://mailchimp.com/developer/marketing/docs/errors/", "title": title, "status": 400, "detail": detail}).to_string()
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
