//! Resend's contacts API.

use super::*;

/// `email_sync.resend`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResendSettings {
    /// The API key (bearer); required with `kind = "resend"`.
    pub api_key: SecretString,
    /// The API's base URL; tests point it at a local fake.
    #[serde(deserialize_with = "required_http_url")]
    pub base_url: Url,
    /// The webhook's signing secret as Resend shows it (`whsec_…`): set, `POST /hooks/resend`
    /// takes Resend's events (SPEC §8); unset, that route is 404.
    pub webhook_secret: Option<crate::email::webhook::WebhookKey>,
}

impl Default for ResendSettings {
    fn default() -> Self {
        Self {
            api_key: SecretString::from(""),
            base_url: Url::parse("https://api.resend.com")
                .unwrap_or_else(|_| unreachable!("a valid URL")),
            webhook_secret: None,
        }
    }
}

impl ResendSettings {
    /// The first required key that is not set (checked at start-up).
    pub(crate) fn missing(&self) -> Missing {
        missing_key(&self.api_key)
    }
}

/// Resend (`email_sync.kind = "resend"`): `POST /contacts` `{"email", "first_name", "unsubscribed":
/// false}`; 201 is delivered, and so is an answer saying the contact already exists (a retry of
/// a request whose answer was lost); a 429 carries `retry-after` or `ratelimit-reset`.
pub type Resend = Api<ResendSettings>;

impl Resend {
    pub(crate) fn from_settings(
        settings: &ResendSettings,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
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
        let request = self
            .client
            .post(self.endpoint.clone())
            .bearer_auth(self.settings.api_key.expose_secret())
            .json(&body);
        let response = match sent(request).await {
            Ok(response) => response,
            Err(failed) => return failed,
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
