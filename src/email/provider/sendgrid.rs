//! SendGrid's marketing contacts API, its asynchronous imports included (SPEC §6).

use super::*;

/// `email_sync.sendgrid`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SendgridSettings {
    /// The API key (bearer); required with `kind = "sendgrid"`.
    pub api_key: SecretString,
    /// Lists every contact is added to (SendGrid list ids).
    pub list_ids: Vec<String>,
    /// The API's base URL; tests point it at a local fake.
    #[serde(deserialize_with = "required_http_url")]
    pub base_url: Url,
    /// The contact field that receives the username (`first_name`, or a custom field).
    pub username_field: String,
    /// How long after an upsert whose import job is unknown (its answer was lost) a contact
    /// that is not found may only be not imported yet: a deletion waits that long (SPEC §6).
    /// An upsert answered with its `job_id` is waited for by polling the job instead.
    #[serde(with = "humantime_serde")]
    pub import_window: Duration,
    /// The Signed Event Webhook's public key as SendGrid shows it (base64 DER). Set,
    /// `POST /hooks/sendgrid` takes SendGrid's events (SPEC §8); unset, that route is 404.
    pub webhook_public_key: Option<EventWebhookKey>,
}

/// SendGrid's Signed Event Webhook public key: ECDSA P-256, given as SendGrid shows it (the
/// base64 of its DER), parsed when the settings are read.
#[derive(Clone)]
pub struct EventWebhookKey(pub(crate) p256::ecdsa::VerifyingKey);

impl std::fmt::Debug for EventWebhookKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventWebhookKey(P-256)")
    }
}

impl std::str::FromStr for EventWebhookKey {
    type Err = String;

    fn from_str(base64_der: &str) -> Result<Self, Self::Err> {
        use base64::Engine;
        use p256::pkcs8::DecodePublicKey;
        let der = base64::engine::general_purpose::STANDARD
            .decode(base64_der.trim())
            .map_err(|e| format!("not base64: {e}"))?;
        p256::ecdsa::VerifyingKey::from_public_key_der(&der)
            .map(Self)
            .map_err(|e| format!("not a P-256 public key in DER: {e}"))
    }
}

impl<'de> Deserialize<'de> for EventWebhookKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Default for SendgridSettings {
    fn default() -> Self {
        Self {
            api_key: SecretString::from(""),
            list_ids: Vec::new(),
            base_url: Url::parse("https://api.sendgrid.com")
                .unwrap_or_else(|_| unreachable!("a valid URL")),
            username_field: "first_name".into(),
            import_window: Duration::from_secs(30 * 60),
            webhook_public_key: None,
        }
    }
}

impl SendgridSettings {
    /// The first required key that is not set (checked at start-up).
    pub(crate) fn missing(&self) -> Missing {
        missing_key(&self.api_key)
    }
}

/// SendGrid (`email_sync.kind = "sendgrid"`): `PUT /v3/marketing/contacts` with the contact and
/// the lists; 202 `{job_id}` means accepted, processed later: delivered (a courier that counted
/// 202 as failure sent one duplicate per retry). A 429 carries `X-RateLimit-Reset`, an epoch.
pub type Sendgrid = Api<SendgridSettings>;

impl Sendgrid {
    pub(crate) fn from_settings(
        settings: &SendgridSettings,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
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
        let request = self
            .client
            .put(self.endpoint.clone())
            .bearer_auth(self.settings.api_key.expose_secret())
            .json(&body);
        let response = match sent(request).await {
            Ok(response) => response,
            Err(failed) => return failed,
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
        let response = sent(request).await?;
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
        let response = sent(search.bearer_auth(self.settings.api_key.expose_secret())).await?;
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
