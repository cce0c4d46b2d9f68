//! `signup doctor`'s look at the provider (SPEC §9): one read-only call per kind that says
//! whether the configured credentials work, and if not which key to fix.

use super::*;

/// What the call said: `Ok(what was checked)`, or `Err(what to fix)`.
pub(crate) type Probed = Result<String, String>;

impl Provider {
    /// One read-only call with the configured credentials: the webhook kind a signed `ping`;
    /// Mailchimp `GET /3.0/lists/{list_id}`; SendGrid `GET /v3/scopes`; Brevo
    /// `GET /v3/account`; Resend `GET /domains`; Mailgun `GET /v3/lists/{list}`.
    pub(crate) async fn probe(&self) -> Probed {
        match self {
            Provider::Webhook(p) => {
                verdict(
                    p.ping(),
                    "POST email_sync.url (a signed ping)",
                    "email_sync.secret (the receiver refused the signature) or email_sync.url",
                    "email_sync.url",
                )
                .await
            }
            Provider::Mailchimp(p) => {
                let request = p
                    .client
                    .get(p.endpoint.clone())
                    .basic_auth("signup", Some(p.settings.api_key.expose_secret()));
                verdict(
                    request,
                    "Mailchimp GET /3.0/lists/{list_id}",
                    "email_sync.mailchimp.api_key",
                    "email_sync.mailchimp.list_id (no such audience) or email_sync.mailchimp.api_key's data center",
                )
                .await
            }
            Provider::Sendgrid(p) => {
                let request = p
                    .client
                    .get(join(&p.settings.base_url, "v3/scopes"))
                    .bearer_auth(p.settings.api_key.expose_secret());
                verdict(
                    request,
                    "SendGrid GET /v3/scopes",
                    "email_sync.sendgrid.api_key",
                    "email_sync.sendgrid.base_url",
                )
                .await
            }
            Provider::Brevo(p) => {
                let request = p
                    .client
                    .get(join(&p.settings.base_url, "v3/account"))
                    .header("api-key", p.settings.api_key.expose_secret())
                    .header("accept", "application/json");
                verdict(
                    request,
                    "Brevo GET /v3/account",
                    "email_sync.brevo.api_key",
                    "email_sync.brevo.base_url",
                )
                .await
            }
            Provider::Resend(p) => {
                let request = p
                    .client
                    .get(join(&p.settings.base_url, "domains"))
                    .bearer_auth(p.settings.api_key.expose_secret());
                verdict(
                    request,
                    "Resend GET /domains",
                    "email_sync.resend.api_key (a full-access key: a sending-only key cannot read domains)",
                    "email_sync.resend.base_url",
                )
                .await
            }
            Provider::Mailgun(p) => {
                let request = p
                    .client
                    .get(p.endpoint.clone())
                    .basic_auth("api", Some(p.settings.api_key.expose_secret()));
                verdict(
                    request,
                    "Mailgun GET /v3/lists/{list}",
                    "email_sync.mailgun.api_key",
                    "email_sync.mailgun.list (no such mailing list) or email_sync.mailgun.base_url (the EU region is api.eu.mailgun.net)",
                )
                .await
            }
        }
    }
}

/// Sends `request` (the call `what`) and says what its answer means: 2xx the credentials
/// work; 401/403 fix `credential`; 404 fix `not_found`; no answer within the timeout says so.
async fn verdict(
    request: reqwest::RequestBuilder,
    what: &str,
    credential: &str,
    not_found: &str,
) -> Probed {
    let response = match sent(request).await {
        Ok(response) => response,
        Err(AttemptOutcome::Transient { error, .. }) => {
            return Err(format!(
                "{what}: no answer ({error}): check that the provider is reachable from here"
            ));
        }
        Err(other) => return Err(format!("{what}: {other:?}")),
    };
    let status = response.status();
    match status.as_u16() {
        200..=299 => Ok(format!("{what}: {status}")),
        401 | 403 => Err(format!("{what}: answered {status}: check {credential}")),
        404 => Err(format!("{what}: answered {status}: check {not_found}")),
        _ => Err(format!("{what}: answered {status}")),
    }
}
