//! The email provider, whichever kind `email_sync.kind` names (SPEC §5): one small trait that
//! turns due rows into requests and the answers into one outcome per row, in §3.2's classes.
//! The outbox, retry schedule, circuit breaker, dead letters and operator tools are the same for
//! every kind.
//!
//! Built from each provider's published API reference and tested against local fakes that
//! check method, path, auth and body: no provider is reachable from where signup is built.

use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use secrecy::ExposeSecret;
use uuid::Uuid;

use super::event::{Event, UserDeleted, UserRegistered};
use super::import::{self, EarlierUpsert, Job};
use super::webhook::{self, AttemptOutcome, WebhookProvider, parse_retry_after};
use crate::configuration::{
    BrevoSettings, MailchimpErase, MailchimpSettings, MailgunSettings, ResendSettings,
    SendgridSettings,
};
use entity::email_outbox::EventType;

/// One due row: its outbox id (the delivery's idempotency key), its event and stored payload,
/// and for a deletion, the last upsert of its contact that may still be landing (SPEC §6).
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: Uuid,
    pub event: EventType,
    pub payload: String,
    pub upsert: Option<EarlierUpsert>,
}

/// A provider's API as the EmailSyncActor uses it.
pub trait Adapter {
    /// One attempt for each of `rows`, each request admitted by `gate`: the outcomes, one per
    /// row, in order.
    fn deliver(
        &self,
        rows: &[Delivery],
        gate: &Gate,
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

impl Adapter for Provider {
    async fn deliver(&self, rows: &[Delivery], gate: &Gate) -> Vec<AttemptOutcome> {
        match self {
            Provider::Webhook(p) => {
                one_by_one(rows, gate, |row| {
                    p.deliver_payload(row.id, row.event, &row.payload)
                })
                .await
            }
            Provider::Brevo(p) => contacts_one_by_one(p, rows, gate).await,
            Provider::Resend(p) => contacts_one_by_one(p, rows, gate).await,
            Provider::Mailchimp(p) => bisecting(p, rows, gate).await,
            Provider::Sendgrid(p) => bisecting(p, rows, gate).await,
            Provider::Mailgun(p) => bisecting(p, rows, gate).await,
        }
    }
}

/// Admits requests to the provider: at most `email_sync.max_requests_per_second` across every
/// delivery in flight (a `governor` token bucket, one token per request whatever the rows it
/// carries), and none while the provider has told us to wait (a 429 with its reset header):
/// that pause holds for every request, so no other row spends an attempt on a certain 429.
pub struct Gate {
    /// None: unlimited.
    pace: Option<governor::DefaultDirectRateLimiter>,
    /// Until when the provider asked every request to wait.
    paused_until: std::sync::Mutex<Option<Instant>>,
}

impl Gate {
    /// At most `per_second` requests a second (0: unlimited), with no burst beyond one
    /// second's worth.
    pub fn new(per_second: u32) -> Self {
        let pace = std::num::NonZeroU32::new(per_second)
            .map(|n| governor::RateLimiter::direct(governor::Quota::per_second(n)));
        Self {
            pace,
            paused_until: std::sync::Mutex::new(None),
        }
    }

    /// Waits for the next request's turn; `Err(wait)` while the provider's pause lasts.
    pub async fn admit(&self) -> Result<(), Duration> {
        self.check_pause()?;
        if let Some(pace) = &self.pace {
            pace.until_ready().await;
        }
        // A 429 may have come back while this request waited for its token.
        self.check_pause()
    }

    fn check_pause(&self) -> Result<(), Duration> {
        match self.paused_until() {
            Some(until) => Err(until.saturating_duration_since(Instant::now())),
            None => Ok(()),
        }
    }

    /// Until when requests wait for the provider's rate-limit reset, if they do now.
    pub fn paused_until(&self) -> Option<Instant> {
        let paused = self
            .paused_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        paused.filter(|until| *until > Instant::now())
    }

    /// Notes what a request came to: a 429 that says when the limit resets pauses every
    /// request until then.
    pub fn observe<'a>(&self, outcomes: impl IntoIterator<Item = &'a AttemptOutcome>) {
        let reset = outcomes
            .into_iter()
            .filter_map(AttemptOutcome::rate_limit_reset)
            .max();
        if let Some(wait) = reset {
            let until = Instant::now() + wait;
            let mut paused = self
                .paused_until
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if paused.is_none_or(|at| at < until) {
                *paused = Some(until);
            }
        }
    }
}

/// The configured provider behind its [`Gate`].
pub struct Paced {
    provider: Provider,
    gate: Gate,
}

impl Paced {
    /// `provider` at most `per_second` requests a second (0: unlimited).
    pub fn new(provider: Provider, per_second: u32) -> Self {
        Self {
            provider,
            gate: Gate::new(per_second),
        }
    }

    /// One attempt for each of `rows` (one request, or several if a batch is split).
    pub async fn deliver(&self, rows: &[Delivery]) -> Vec<AttemptOutcome> {
        self.provider.deliver(rows, &self.gate).await
    }
}

/// `rows` one request each, in order, each admitted by `gate`.
async fn one_by_one<'r, F, Fut>(rows: &'r [Delivery], gate: &Gate, send: F) -> Vec<AttemptOutcome>
where
    F: Fn(&'r Delivery) -> Fut,
    Fut: std::future::Future<Output = AttemptOutcome>,
{
    let mut outcomes = Vec::with_capacity(rows.len());
    for row in rows {
        let outcome = match gate.admit().await {
            Ok(()) => send(row).await,
            Err(retry_after) => AttemptOutcome::NotSent { retry_after },
        };
        gate.observe([&outcome]);
        outcomes.push(outcome);
    }
    outcomes
}

/// A contacts API that takes one person per request.
pub trait OneAtATime {
    /// One attempt to add or update `user` at the provider.
    fn send(
        &self,
        user: &UserRegistered,
    ) -> impl std::future::Future<Output = AttemptOutcome> + Send;

    /// One attempt to remove an erased user from the provider (SPEC §6); "not found" there is
    /// already gone: delivered, unless `earlier`, the last upsert of the address, may still be
    /// landing at a provider that imports asynchronously.
    fn erase(
        &self,
        user: &UserDeleted,
        earlier: Option<&EarlierUpsert>,
    ) -> impl std::future::Future<Output = AttemptOutcome> + Send;
}

/// Each row's payload read as the user it announces, sent one request each.
async fn contacts_one_by_one<A: OneAtATime + Sync>(
    api: &A,
    rows: &[Delivery],
    gate: &Gate,
) -> Vec<AttemptOutcome> {
    one_by_one(rows, gate, |row| async move {
        match event(row) {
            Ok(Event::UserRegistered(user)) => api.send(&user).await,
            Ok(Event::UserDeleted(user)) => api.erase(&user, row.upsert.as_ref()).await,
            Err(unreadable) => unreadable,
        }
    })
    .await
}

/// What the answer to a batch request says.
#[derive(Debug)]
pub enum BatchAnswer {
    /// One outcome per member, in order (a 200 listing per-member errors).
    Each(Vec<AttemptOutcome>),
    /// The request as a whole: the same outcome for every member.
    Whole(AttemptOutcome),
}

/// A contacts API that also takes many people in one request.
pub trait InBatches: OneAtATime {
    /// One request adding or updating every one of `users` (at least two).
    fn send_batch(
        &self,
        users: &[UserRegistered],
    ) -> impl std::future::Future<Output = BatchAnswer> + Send;
}

/// `rows` in one batch request; a batch refused as a whole with a permanent answer (a 400 or
/// 413 about some member, most likely) is split in halves and each half sent again, down to
/// single rows, so that only the rows the provider refuses go dead. Any other answer to the
/// whole batch (delivered, transient) is every row's.
async fn bisecting<A: InBatches + Sync>(
    api: &A,
    rows: &[Delivery],
    gate: &Gate,
) -> Vec<AttemptOutcome> {
    let mut outcomes: Vec<Option<AttemptOutcome>> = vec![None; rows.len()];
    // The readable rows: their users, and where each one's outcome goes.
    let mut users = Vec::with_capacity(rows.len());
    let mut places = Vec::with_capacity(rows.len());
    // Erasures go one request each (no provider batches them), after the batch.
    let mut erasures = Vec::new();
    for (place, row) in rows.iter().enumerate() {
        match event(row) {
            Ok(Event::UserRegistered(user)) => {
                users.push(user);
                places.push(place);
            }
            Ok(Event::UserDeleted(user)) => erasures.push((place, user, row.upsert.as_ref())),
            Err(unreadable) => outcomes[place] = Some(unreadable),
        }
    }
    // Parts of `users` still to send, the next one last.
    let mut parts: Vec<std::ops::Range<usize>> = Vec::new();
    parts.push(0..users.len());
    while let Some(part) = parts.pop() {
        let members = &users[part.clone()];
        let answer = match (members, gate.admit().await) {
            ([], _) => continue,
            (_, Err(retry_after)) => BatchAnswer::Whole(AttemptOutcome::NotSent { retry_after }),
            ([one], Ok(())) => BatchAnswer::Whole(api.send(one).await),
            (_, Ok(())) => api.send_batch(members).await,
        };
        match answer {
            BatchAnswer::Each(each) if each.len() == members.len() => {
                gate.observe(&each);
                for (place, outcome) in places[part].iter().zip(each) {
                    outcomes[*place] = Some(outcome);
                }
            }
            BatchAnswer::Each(each) => {
                let whole = AttemptOutcome::Transient {
                    status: None,
                    error: format!(
                        "the provider answered for {} of the {} members sent",
                        each.len(),
                        members.len()
                    ),
                    retry_after: None,
                    misconfigured: false,
                };
                for place in &places[part] {
                    outcomes[*place] = Some(whole.clone());
                }
            }
            BatchAnswer::Whole(AttemptOutcome::Permanent { .. }) if members.len() > 1 => {
                let middle = part.start + members.len() / 2;
                parts.push(middle..part.end);
                parts.push(part.start..middle);
            }
            BatchAnswer::Whole(whole) => {
                gate.observe([&whole]);
                for place in &places[part] {
                    outcomes[*place] = Some(whole.clone());
                }
            }
        }
    }
    for (place, user, earlier) in erasures {
        let outcome = match gate.admit().await {
            Ok(()) => api.erase(&user, earlier).await,
            Err(retry_after) => AttemptOutcome::NotSent { retry_after },
        };
        gate.observe([&outcome]);
        outcomes[place] = Some(outcome);
    }
    outcomes
        .into_iter()
        .map(|outcome| {
            outcome.unwrap_or_else(|| AttemptOutcome::Transient {
                status: None,
                error: "the provider adapter gave no outcome".into(),
                retry_after: None,
                misconfigured: false,
            })
        })
        .collect()
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

/// The event a row announces, or the permanent outcome of a payload nobody can read.
fn event(row: &Delivery) -> Result<Event, AttemptOutcome> {
    Event::from_row(row.event, &row.payload).map_err(|e| AttemptOutcome::Permanent {
        status: 0,
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
    match request.send().await {
        Ok(response) if response.status() == StatusCode::NOT_FOUND => {
            AttemptOutcome::delivered(404)
        }
        Ok(response) => classify(response.status(), response.headers(), reset_header, setting),
        Err(e) => request_failed(e),
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
    async fn send(&self, user: &UserRegistered) -> AttemptOutcome {
        let mut attributes = serde_json::Map::new();
        attributes.insert(
            self.settings.username_attribute.clone(),
            serde_json::Value::String(user.username.clone()),
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

    /// `DELETE /v3/contacts/{email}`.
    async fn erase(&self, user: &UserDeleted, _: Option<&EarlierUpsert>) -> AttemptOutcome {
        let request = self
            .client
            .delete(with_segments(&self.endpoint, &[&user.email]))
            .header("api-key", self.settings.api_key.expose_secret())
            .header("accept", "application/json");
        erase_request(request, "x-sib-ratelimit-reset", "email_sync.brevo.api_key").await
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
    async fn send(&self, user: &UserRegistered) -> AttemptOutcome {
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
                return AttemptOutcome::delivered(status.as_u16());
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

    /// `DELETE /contacts/{email}`.
    async fn erase(&self, user: &UserDeleted, _: Option<&EarlierUpsert>) -> AttemptOutcome {
        let request = self
            .client
            .delete(with_segments(&self.endpoint, &[&user.email]))
            .bearer_auth(self.settings.api_key.expose_secret());
        erase_request(request, "ratelimit-reset", "email_sync.resend.api_key").await
    }
}

/// Mailchimp (`email_sync.kind = "mailchimp"`): `PUT /3.0/lists/{list_id}/members/{md5 of the
/// lower-cased email}`, an idempotent upsert (a POST on an existing member is 400 "Member
/// Exists"). Sends `status_if_new` only: `status` would re-subscribe someone who unsubscribed.
/// Basic auth, any user name, the API key as password.
pub type Mailchimp = Api<MailchimpSettings>;

impl Mailchimp {
    pub fn new(settings: &MailchimpSettings, timeout: Duration) -> Result<Self, reqwest::Error> {
        let list = join(
            &settings.api_base(),
            &format!("3.0/lists/{}", settings.list_id),
        );
        Self::at(list, settings, timeout)
    }

    /// One member as Mailchimp's bodies carry it: `status_if_new` only, never `status`.
    fn member(&self, user: &UserRegistered) -> serde_json::Value {
        let mut merge_fields = serde_json::Map::new();
        merge_fields.insert(
            self.settings.username_merge_field.clone(),
            serde_json::Value::String(user.username.clone()),
        );
        serde_json::json!({
            "email_address": user.email,
            "status_if_new": self.settings.status_if_new.as_str(),
            "merge_fields": merge_fields,
        })
    }

    /// Sends `request` with the key; the status, headers and body of the answer.
    async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, HeaderMap, String), AttemptOutcome> {
        let response = request
            .basic_auth("signup", Some(self.settings.api_key.expose_secret()))
            .send()
            .await
            .map_err(request_failed)?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.map_err(request_failed)?;
        Ok((status, headers, text))
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

/// Mailchimp's answers beyond §3.2: a 400 is judged by [`mailchimp_refusal`].
fn mailchimp_outcome(status: StatusCode, headers: &HeaderMap, body: &str) -> AttemptOutcome {
    if status == StatusCode::BAD_REQUEST {
        let problem: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let title = problem["title"].as_str().unwrap_or("Bad Request");
        let detail = problem["detail"].as_str().unwrap_or("");
        return mailchimp_refusal(&format!("{title}: {detail}"));
    }
    classify(
        status,
        headers,
        "x-ratelimit-reset",
        "email_sync.mailchimp.api_key",
    )
}

/// What Mailchimp refusing one member means, from its words (a 400's title and detail, or a
/// batch answer's member error): an address that "signed up to a lot of lists very recently"
/// may be tried again, no sooner than an hour; everything else (compliance state, permanently
/// deleted or forgotten, fake or invalid, validation) is final, kept with Mailchimp's words.
fn mailchimp_refusal(words: &str) -> AttemptOutcome {
    if words.contains("signed up to a lot of lists very recently") {
        return AttemptOutcome::Transient {
            status: Some(400),
            error: format!("Mailchimp: {words}"),
            retry_after: Some(Duration::from_secs(3600)),
            misconfigured: false,
        };
    }
    AttemptOutcome::Permanent {
        status: 400,
        error: format!("Mailchimp: {words}"),
    }
}

/// The outcome of each of `users` in Mailchimp's 200 answer to a batch subscribe: a member
/// its `errors[]` names (by address, in any case) is refused as [`mailchimp_refusal`] says;
/// every other member was added or updated.
fn mailchimp_batch_outcomes(users: &[UserRegistered], body: &str) -> BatchAnswer {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(default)]
        errors: Vec<MemberError>,
    }
    #[derive(serde::Deserialize)]
    struct MemberError {
        email_address: String,
        #[serde(default)]
        error: String,
        #[serde(default)]
        error_code: String,
    }
    let Ok(answer) = serde_json::from_str::<Answer>(body) else {
        return BatchAnswer::Whole(AttemptOutcome::Transient {
            status: Some(200),
            error: "Mailchimp answered the batch with an unreadable body".into(),
            retry_after: None,
            misconfigured: false,
        });
    };
    let refused: std::collections::HashMap<String, MemberError> = answer
        .errors
        .into_iter()
        .map(|e| (e.email_address.to_lowercase(), e))
        .collect();
    BatchAnswer::Each(
        users
            .iter()
            .map(|user| match refused.get(&user.email.to_lowercase()) {
                Some(e) => mailchimp_refusal(&format!("{} ({})", e.error, e.error_code)),
                None => AttemptOutcome::delivered(200),
            })
            .collect(),
    )
}

impl OneAtATime for Mailchimp {
    async fn send(&self, user: &UserRegistered) -> AttemptOutcome {
        let url = join(
            &self.endpoint,
            &format!("members/{}", subscriber_hash(&user.email)),
        );
        let request = self.client.put(url).json(&self.member(user));
        match self.exchange(request).await {
            Ok((status, headers, text)) => mailchimp_outcome(status, &headers, &text),
            Err(failed) => failed,
        }
    }

    /// `POST …/members/{hash}/actions/delete-permanent` (`erase = "permanent"`) or
    /// `DELETE …/members/{hash}` (`erase = "archive"`).
    async fn erase(&self, user: &UserDeleted, _: Option<&EarlierUpsert>) -> AttemptOutcome {
        let hash = subscriber_hash(&user.email);
        let request = match self.settings.erase {
            MailchimpErase::Permanent => self.client.post(with_segments(
                &self.endpoint,
                &["members", &hash, "actions", "delete-permanent"],
            )),
            MailchimpErase::Archive => self
                .client
                .delete(with_segments(&self.endpoint, &["members", &hash])),
        };
        let request = request.basic_auth("signup", Some(self.settings.api_key.expose_secret()));
        erase_request(request, "x-ratelimit-reset", "email_sync.mailchimp.api_key").await
    }
}

impl InBatches for Mailchimp {
    /// `POST /3.0/lists/{list_id}` `{"members": [...], "update_existing": true}`.
    async fn send_batch(&self, users: &[UserRegistered]) -> BatchAnswer {
        let members: Vec<_> = users.iter().map(|user| self.member(user)).collect();
        let body = serde_json::json!({"members": members, "update_existing": true});
        let request = self.client.post(self.endpoint.clone()).json(&body);
        match self.exchange(request).await {
            Ok((status, _, text)) if status.is_success() => mailchimp_batch_outcomes(users, &text),
            Ok((status, headers, text)) => {
                BatchAnswer::Whole(mailchimp_outcome(status, &headers, &text))
            }
            Err(failed) => BatchAnswer::Whole(failed),
        }
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

    /// `PUT /v3/marketing/contacts` with `users` and the lists: one request for one or many.
    /// The 202's `job_id` is kept with the rows: a later deletion waits for that import.
    async fn put_contacts(&self, users: &[UserRegistered]) -> AttemptOutcome {
        let contacts: Vec<_> = users
            .iter()
            .map(|user| {
                let mut contact = serde_json::Map::new();
                contact.insert(
                    "email".into(),
                    serde_json::Value::String(user.email.clone()),
                );
                contact.insert(
                    self.settings.username_field.clone(),
                    serde_json::Value::String(user.username.clone()),
                );
                contact
            })
            .collect();
        let body = serde_json::json!({"list_ids": self.settings.list_ids, "contacts": contacts});
        let response = match self
            .client
            .put(self.endpoint.clone())
            .bearer_auth(self.settings.api_key.expose_secret())
            .json(&body)
            .send()
            .await
        {
            Ok(response) => response,
            Err(e) => return request_failed(e),
        };
        let status = response.status();
        let mut outcome = classify(status, response.headers(), "", SENDGRID_KEY);
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
        if let AttemptOutcome::Delivered { job, .. } = &mut outcome {
            // Accepted whatever the body says; without a readable `job_id` a deletion waits
            // out `import_window` instead of polling the job.
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            *job = body["job_id"]
                .as_str()
                .filter(|id| !id.is_empty() && id.len() <= 128)
                .map(str::to_owned);
        }
        outcome
    }

    /// Where import job `id` stands (`GET /v3/marketing/contacts/imports/{id}`): `pending` is
    /// running; `completed`, `errored` and `failed` are finished; a job SendGrid no longer
    /// knows (404) is unknown. Any other answer is the attempt's outcome.
    async fn import_job(&self, id: &str) -> Result<Job, AttemptOutcome> {
        let request = self
            .client
            .get(with_segments(&self.endpoint, &["imports", id]))
            .bearer_auth(self.settings.api_key.expose_secret());
        let response = request.send().await.map_err(request_failed)?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(Job::Unknown);
        }
        if !status.is_success() {
            return Err(classify(status, response.headers(), "", SENDGRID_KEY));
        }
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        Ok(match body["status"].as_str() {
            Some("completed" | "errored" | "failed") => Job::Finished,
            // "pending", or a state this adapter does not know: wait (the retry schedule
            // bounds it).
            _ => Job::Running,
        })
    }

    /// The id of the contact with `email`, if SendGrid finds one, and the search's status.
    /// `POST /v3/marketing/contacts/search/emails` takes addresses of at most 100 characters;
    /// longer ones (signup accepts up to 254) go to `search/identifiers/email`. Both answer 404
    /// when nothing matches and list matches under `result`, keyed by address.
    async fn find_contact(&self, email: &str) -> Result<(u16, Option<String>), AttemptOutcome> {
        let search = if email.chars().count() <= SEARCH_EMAILS_MAX_CHARS {
            self.client
                .post(with_segments(&self.endpoint, &["search", "emails"]))
                .json(&serde_json::json!({ "emails": [email] }))
        } else {
            self.client
                .post(with_segments(
                    &self.endpoint,
                    &["search", "identifiers", "email"],
                ))
                .json(&serde_json::json!({ "identifiers": [email] }))
        };
        let response = search
            .bearer_auth(self.settings.api_key.expose_secret())
            .send()
            .await
            .map_err(request_failed)?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Ok((404, None));
        }
        if !status.is_success() {
            return Err(classify(status, response.headers(), "", SENDGRID_KEY));
        }
        let found: serde_json::Value = response.json().await.unwrap_or_default();
        let id = found["result"]
            .as_object()
            .and_then(|result| {
                result
                    .iter()
                    .find(|(address, _)| address.eq_ignore_ascii_case(email))
            })
            .and_then(|(_, entry)| entry["contact"]["id"].as_str().map(str::to_owned));
        Ok((status.as_u16(), id))
    }
}

/// The setting a refused SendGrid key points at.
const SENDGRID_KEY: &str = "email_sync.sendgrid.api_key";

/// The longest address `search/emails` takes (SPEC §6).
const SEARCH_EMAILS_MAX_CHARS: usize = 100;

impl OneAtATime for Sendgrid {
    async fn send(&self, user: &UserRegistered) -> AttemptOutcome {
        self.put_contacts(std::slice::from_ref(user)).await
    }

    /// Waits until the last upsert's import job has finished (SPEC §6), looks the contact's id
    /// up, then `DELETE /v3/marketing/contacts?ids=<id>` (202: accepted). A contact SendGrid
    /// does not find is already gone only once no import of the address can still create it.
    async fn erase(&self, user: &UserDeleted, earlier: Option<&EarlierUpsert>) -> AttemptOutcome {
        let job = match earlier.and_then(|e| e.job.as_deref()) {
            Some(id) => match self.import_job(id).await {
                Ok(Job::Running) => {
                    return import::not_yet(200, &format!("SendGrid import job {id} is pending"));
                }
                Ok(job) => job,
                Err(outcome) => return outcome,
            },
            None => Job::Unknown,
        };
        let (status, id) = match self.find_contact(&user.email).await {
            Ok(found) => found,
            Err(outcome) => return outcome,
        };
        let Some(id) = id else {
            return if import::absent_is_gone(
                earlier,
                job,
                chrono::Utc::now(),
                self.settings.import_window,
            ) {
                AttemptOutcome::delivered(status)
            } else {
                import::not_yet(status, "SendGrid does not find the contact")
            };
        };
        let mut delete = self.endpoint.clone();
        delete.query_pairs_mut().append_pair("ids", &id);
        let request = self
            .client
            .delete(delete)
            .bearer_auth(self.settings.api_key.expose_secret());
        erase_request(request, "", SENDGRID_KEY).await
    }
}

impl InBatches for Sendgrid {
    /// The same route with every contact; 202 accepts them all, a 400/413 refuses the request
    /// (and is split by the caller).
    async fn send_batch(&self, users: &[UserRegistered]) -> BatchAnswer {
        BatchAnswer::Whole(self.put_contacts(users).await)
    }
}

/// Mailgun (`email_sync.kind = "mailgun"`): `POST /v3/lists/{list}/members`, a form with
/// `address`, `name` and `upsert=yes`; Basic auth `api:<key>`. A 404 is transient (its lists
/// are eventually consistent), as §3.2 already has it.
pub type Mailgun = Api<MailgunSettings>;

impl Mailgun {
    pub fn new(settings: &MailgunSettings, timeout: Duration) -> Result<Self, reqwest::Error> {
        let list = format!("v3/lists/{}", settings.list);
        Self::at(join(&settings.base_url, &list), settings, timeout)
    }
}

impl OneAtATime for Mailgun {
    /// `POST /v3/lists/{list}/members`, form `address`, `name`, `upsert=yes`.
    async fn send(&self, user: &UserRegistered) -> AttemptOutcome {
        let form = [
            ("address", user.email.as_str()),
            ("name", user.username.as_str()),
            ("upsert", "yes"),
        ];
        let request = self
            .client
            .post(join(&self.endpoint, "members"))
            .basic_auth("api", Some(self.settings.api_key.expose_secret()))
            .form(&form);
        attempt(request, "", "email_sync.mailgun.api_key").await
    }

    /// `DELETE /v3/lists/{list}/members/{address}`. Its lists are eventually consistent: a
    /// 404 within `import_window` of the address's last upsert may only mean the list has not
    /// caught up, and is asked again (SPEC §6).
    async fn erase(&self, user: &UserDeleted, earlier: Option<&EarlierUpsert>) -> AttemptOutcome {
        let request = self
            .client
            .delete(with_segments(&self.endpoint, &["members", &user.email]))
            .basic_auth("api", Some(self.settings.api_key.expose_secret()));
        match erase_request(request, "", "email_sync.mailgun.api_key").await {
            AttemptOutcome::Delivered { status: 404, .. }
                if !import::absent_is_gone(
                    earlier,
                    Job::Unknown,
                    chrono::Utc::now(),
                    self.settings.import_window,
                ) =>
            {
                import::not_yet(404, "Mailgun's list does not show the member")
            }
            outcome => outcome,
        }
    }
}

impl InBatches for Mailgun {
    /// `POST /v3/lists/{list}/members.json`, form `members` (a JSON array of `{address, name}`)
    /// and `upsert=yes`: the list takes them all or refuses the request.
    async fn send_batch(&self, users: &[UserRegistered]) -> BatchAnswer {
        let members: Vec<_> = users
            .iter()
            .map(|user| serde_json::json!({"address": user.email, "name": user.username}))
            .collect();
        let members = serde_json::Value::Array(members).to_string();
        let form = [("members", members.as_str()), ("upsert", "yes")];
        let request = self
            .client
            .post(join(&self.endpoint, "members.json"))
            .basic_auth("api", Some(self.settings.api_key.expose_secret()))
            .form(&form);
        BatchAnswer::Whole(attempt(request, "", "email_sync.mailgun.api_key").await)
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
        // After a permanent delete (erasure), the same address signing up again: final, so the
        // operator sees it dead instead of a retry loop.
        let forgotten = mailchimp_outcome(
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            &body(
                "Forgotten Email Not Subscribed",
                "x@example.com was permanently deleted and cannot be re-imported. The contact must re-subscribe to get back on the list.",
            ),
        );
        assert!(
            matches!(&forgotten, AttemptOutcome::Permanent { status: 400, error } if error.contains("Forgotten Email Not Subscribed")),
            "{forgotten:?}"
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

    #[tokio::test]
    async fn a_429_with_a_reset_holds_every_request_back_until_then_and_nothing_else_does() {
        let gate = Gate::new(0);
        assert_eq!(gate.admit().await, Ok(()));
        let limited = |status, retry_after| AttemptOutcome::Transient {
            status: Some(status),
            error: "limited".into(),
            retry_after,
            misconfigured: false,
        };
        // A 503 asking to wait, or a 429 without a reset: that row's matter, not a pause.
        gate.observe([
            &limited(503, Some(Duration::from_secs(60))),
            &limited(429, None),
        ]);
        assert_eq!(gate.admit().await, Ok(()));
        gate.observe([&limited(429, Some(Duration::from_secs(60)))]);
        let held = gate.admit().await.expect_err("paused");
        assert!(held > Duration::from_secs(58) && held <= Duration::from_secs(60));
        // The rows a paused request would have carried are not sent, and say for how long.
        let rows = [Delivery {
            id: Uuid::nil(),
            event: EventType::UserRegistered,
            payload: "{}".into(),
            upsert: None,
        }];
        let outcomes = one_by_one(&rows, &gate, |_| async {
            panic!("nothing is sent while paused")
        })
        .await;
        assert!(
            matches!(outcomes[..], [AttemptOutcome::NotSent { retry_after }] if retry_after > Duration::from_secs(58)),
            "{outcomes:?}"
        );
    }

    #[test]
    fn mailchimp_batch_member_errors_are_read_per_member_by_address_in_any_case() {
        let user = |n: u32| UserRegistered {
            user_id: Uuid::nil(),
            username: format!("user{n}"),
            email: format!("user{n}@example.com"),
            registered_at: chrono::Utc::now(),
        };
        let body = serde_json::json!({
            "new_members": [], "updated_members": [],
            "errors": [{"email_address": "USER2@example.com", "error": "USER2@example.com was permanently deleted and cannot be re-imported", "error_code": "ERROR_CONTACT_EXISTS"}],
        })
        .to_string();
        let BatchAnswer::Each(outcomes) = mailchimp_batch_outcomes(&[user(1), user(2)], &body)
        else {
            panic!("a 200 answer is per member")
        };
        assert_eq!(outcomes[0], AttemptOutcome::delivered(200));
        assert!(
            matches!(&outcomes[1], AttemptOutcome::Permanent { error, .. } if error.contains("permanently deleted")),
            "{outcomes:?}"
        );
        let unreadable = mailchimp_batch_outcomes(&[user(1)], "<html>");
        assert!(
            matches!(
                unreadable,
                BatchAnswer::Whole(AttemptOutcome::Transient { .. })
            ),
            "{unreadable:?}"
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
