//! Brevo's contacts API.

use super::*;

/// `email_sync.brevo`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrevoSettings {
    /// The API key (`api-key` header); required with `kind = "brevo"`.
    pub api_key: SecretString,
    /// Lists every contact is added to.
    pub list_ids: Vec<u64>,
    /// The API's base URL; tests point it at a local fake.
    #[serde(deserialize_with = "required_http_url")]
    pub base_url: Url,
    /// The contact attribute that receives the username (create it in Brevo first).
    pub username_attribute: String,
    /// The credential Brevo's webhook is created with: its bearer token, or `user:password`
    /// of its basic credentials. Set, `POST /hooks/brevo` takes Brevo's marketing events
    /// (SPEC §8); unset, that route is 404.
    pub webhook_token: SecretString,
}

impl Default for BrevoSettings {
    fn default() -> Self {
        Self {
            api_key: SecretString::from(""),
            list_ids: Vec::new(),
            base_url: Url::parse("https://api.brevo.com")
                .unwrap_or_else(|_| unreachable!("a valid URL")),
            username_attribute: "USERNAME".into(),
            webhook_token: SecretString::from(""),
        }
    }
}

impl BrevoSettings {
    /// The first required key that is not set (checked at start-up).
    pub(crate) fn missing(&self) -> Missing {
        missing_key(&self.api_key)
    }
}

/// Brevo (`email_sync.kind = "brevo"`): `POST /v3/contacts` with `updateEnabled: true` (an
/// upsert: without it a repeat is 400 `duplicate_parameter`), one contact per request; 201 or
/// 204 is delivered; a 429 carries `x-sib-ratelimit-reset` (seconds).
pub type Brevo = Api<BrevoSettings>;

impl Brevo {
    pub(crate) fn from_settings(
        settings: &BrevoSettings,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
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
