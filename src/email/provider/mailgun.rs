//! Mailgun's mailing list members API.

use super::*;

/// `email_sync.mailgun`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MailgunSettings {
    /// The API key (Basic `api:<key>`); required with `kind = "mailgun"`.
    pub api_key: SecretString,
    /// The mailing list's address, e.g. `newsletter@mg.example.com`; required with
    /// `kind = "mailgun"`.
    pub list: String,
    /// The API's base URL (`https://api.eu.mailgun.net` in the EU); tests point it at a fake.
    #[serde(deserialize_with = "required_http_url")]
    pub base_url: Url,
    /// How long after an upsert a 404 on deleting the member may only mean the list has not
    /// caught up (Mailgun's lists are eventually consistent): retried, not success (SPEC §6).
    #[serde(with = "humantime_serde")]
    pub import_window: Duration,
    /// Mailgun's HTTP webhook signing key: set, `POST /hooks/mailgun` takes Mailgun's events
    /// (SPEC §8); unset, that route is 404.
    pub webhook_signing_key: SecretString,
}

impl Default for MailgunSettings {
    fn default() -> Self {
        Self {
            api_key: SecretString::from(""),
            list: String::new(),
            base_url: Url::parse("https://api.mailgun.net")
                .unwrap_or_else(|_| unreachable!("a valid URL")),
            import_window: Duration::from_secs(5 * 60),
            webhook_signing_key: SecretString::from(""),
        }
    }
}

impl MailgunSettings {
    /// The first required key that is not set (checked at start-up).
    pub(crate) fn missing(&self) -> Missing {
        missing_key(&self.api_key).or_else(|| missing_text("list", &self.list))
    }
}

/// Mailgun (`email_sync.kind = "mailgun"`): `POST /v3/lists/{list}/members`, a form with
/// `address`, `name` and `upsert=yes`; Basic auth `api:<key>`. A 404 is transient (its lists
/// are eventually consistent), as §3.2 already has it.
pub type Mailgun = Api<MailgunSettings>;

impl Mailgun {
    pub(crate) fn from_settings(
        settings: &MailgunSettings,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
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
