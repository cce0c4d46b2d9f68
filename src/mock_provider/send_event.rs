//! `signup mock-provider send-event`: one provider event about an address, in the shape that
//! provider documents and signed as it signs, sent to a signup's `/hooks/<kind>` (SPEC §8), so
//! that a person can try the consent loop by hand.
//!
//! The credential is the one signup is configured with (its own config and environment), as
//! the provider would hold it; SendGrid signs with a private key signup never sees, so the
//! mock signs with a fixed key of its own and prints the public key to configure.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::EncodePublicKey;
use sha2::{Digest, Sha256};

use crate::configuration::ProviderKind;

/// One event to send.
#[derive(Debug, Clone)]
pub struct EventToSend {
    pub kind: ProviderKind,
    /// The provider's own name of the event (`unsubscribe` for Mailchimp, `spamreport` for
    /// SendGrid, `unsubscribed` for Brevo, `email.complained` for Resend, `failed` for Mailgun…).
    pub event_type: String,
    pub email: String,
    /// When it happened (the event's own time).
    pub at: DateTime<Utc>,
    /// The provider's event id, where it sends one (random unless given).
    pub id: String,
}

/// A request as the provider would make it.
#[derive(Debug, Clone)]
pub struct SignedRequest {
    /// Below the signup's base URL: `/hooks/<kind>` (Mailchimp's with its secret).
    pub path: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

/// The key the mock signs SendGrid's events with: fixed, so that the public key to configure
/// stays the same (a stand-in for SendGrid's own key pair; never a production credential).
fn sendgrid_signing_key() -> SigningKey {
    let seed = Sha256::digest(b"signup mock-provider: SendGrid Signed Event Webhook key");
    SigningKey::from_slice(&seed)
        .expect("this digest is a valid P-256 scalar (the tests sign with it)")
}

/// The mock's SendGrid verification key as SendGrid shows it (base64 DER): the value of
/// `email_sync.sendgrid.webhook_public_key` that accepts the mock's events.
pub fn sendgrid_public_key() -> String {
    let der = sendgrid_signing_key()
        .verifying_key()
        .to_public_key_der()
        .map(|der| der.as_bytes().to_vec())
        .unwrap_or_default();
    STANDARD.encode(der)
}

/// `event` signed with `credential` (the kind's `webhook_…` setting; ignored for SendGrid) at
/// `now`, as its provider would send it.
pub fn signed(
    event: &EventToSend,
    credential: &str,
    now: DateTime<Utc>,
) -> Result<SignedRequest, String> {
    let json = vec![("content-type", "application/json".to_owned())];
    match event.kind {
        ProviderKind::Mailchimp => {
            if credential.is_empty() {
                return Err("Mailchimp's URL carries email_sync.mailchimp.webhook_secret: set it".into());
            }
            Ok(SignedRequest {
                path: format!("/hooks/mailchimp/{credential}"),
                headers: vec![(
                    "content-type",
                    "application/x-www-form-urlencoded".to_owned(),
                )],
                body: mailchimp_form(event),
            })
        }
        ProviderKind::Sendgrid => {
            let body = serde_json::json!([{
                "email": event.email,
                "timestamp": event.at.timestamp(),
                "event": event.event_type,
                "type": (event.event_type == "bounce").then_some("bounce"),
                "sg_event_id": event.id,
                "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
            }])
            .to_string();
            let timestamp = now.timestamp().to_string();
            let signature: Signature =
                sendgrid_signing_key().sign(format!("{timestamp}{body}").as_bytes());
            let mut headers = json;
            headers.push((
                "x-twilio-email-event-webhook-signature",
                STANDARD.encode(signature.to_der()),
            ));
            headers.push(("x-twilio-email-event-webhook-timestamp", timestamp));
            Ok(SignedRequest {
                path: "/hooks/sendgrid".into(),
                headers,
                body,
            })
        }
        ProviderKind::Brevo => {
            if credential.is_empty() {
                return Err("Brevo sends email_sync.brevo.webhook_token as its bearer token: set it".into());
            }
            let body = serde_json::json!({
                "id": 1_234_567,
                "email": event.email,
                "event": event.event_type,
                "date_event": event.at.format("%Y-%m-%d %H:%M:%S").to_string(),
                "ts_event": event.at.timestamp(),
                "ts": now.timestamp(),
                "tag": "",
            })
            .to_string();
            let mut headers = json;
            headers.push(("authorization", format!("Bearer {credential}")));
            Ok(SignedRequest {
                path: "/hooks/brevo".into(),
                headers,
                body,
            })
        }
        ProviderKind::Resend => {
            let key: crate::email::webhook::WebhookKey = credential
                .parse()
                .map_err(|e| format!("email_sync.resend.webhook_secret: {e}"))?;
            let body = resend_body(event).to_string();
            let id = format!("msg_{}", event.id);
            let timestamp = now.timestamp();
            let signature = crate::email::webhook::sign(key.expose(), &id, timestamp, &body);
            let mut headers = json;
            headers.push(("svix-id", id));
            headers.push(("svix-timestamp", timestamp.to_string()));
            headers.push(("svix-signature", signature));
            Ok(SignedRequest {
                path: "/hooks/resend".into(),
                headers,
                body,
            })
        }
        ProviderKind::Mailgun => {
            if credential.is_empty() {
                return Err("Mailgun signs with email_sync.mailgun.webhook_signing_key: set it".into());
            }
            Ok(SignedRequest {
                path: "/hooks/mailgun".into(),
                headers: json,
                body: mailgun_body(
                    credential.as_bytes(),
                    event,
                    (event.event_type == "failed").then_some("permanent"),
                    now,
                ),
            })
        }
        ProviderKind::Webhook => Err(
            "--kind webhook has no events to send back: pick mailchimp, sendgrid, brevo, resend or mailgun"
                .into(),
        ),
    }
}

/// Mailchimp's form (its "Webhooks" guide): `type`, `fired_at` (UTC, to the second) and the
/// member's `data[…]`.
fn mailchimp_form(event: &EventToSend) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("type", &event.event_type)
        .append_pair(
            "fired_at",
            &event.at.format("%Y-%m-%d %H:%M:%S").to_string(),
        )
        .append_pair("data[action]", "unsub")
        .append_pair("data[reason]", "manual")
        .append_pair("data[id]", &event.id)
        .append_pair("data[list_id]", "a6b5da1054")
        .append_pair("data[email]", &event.email)
        .append_pair("data[email_type]", "html")
        .append_pair("data[merges][EMAIL]", &event.email)
        .finish()
}

/// Resend's event: `contact.*` carry the contact (unsubscribed), `email.*` the message's
/// recipients.
fn resend_body(event: &EventToSend) -> serde_json::Value {
    let created_at = event.at.to_rfc3339();
    let data = if event.event_type.starts_with("contact.") {
        serde_json::json!({"id": event.id, "email": event.email, "unsubscribed": true, "created_at": created_at})
    } else {
        serde_json::json!({"email_id": event.id, "from": "Acme <onboarding@resend.dev>", "to": [event.email], "subject": "Welcome", "created_at": created_at})
    };
    serde_json::json!({"type": event.event_type, "created_at": created_at, "data": data})
}

/// Mailgun's webhook body (its "Securing Webhooks" page): `signature` (the hex HMAC-SHA256 of
/// `timestamp ‖ token` with the signing key) and `event-data`, with `severity` for a `failed`
/// event (`permanent`: a hard bounce).
pub(crate) fn mailgun_body(
    signing_key: &[u8],
    event: &EventToSend,
    severity: Option<&str>,
    now: DateTime<Utc>,
) -> String {
    let timestamp = now.timestamp().to_string();
    let token = hex::encode(Sha256::digest(format!(
        "{}{}",
        event.id,
        now.timestamp_nanos_opt().unwrap_or_default()
    )));
    let mut mac = match Hmac::<Sha256>::new_from_slice(signing_key) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.as_bytes());
    mac.update(token.as_bytes());
    let signature = hex::encode(mac.finalize().into_bytes());
    let mut data = serde_json::json!({
        "id": event.id,
        "event": event.event_type,
        "timestamp": event.at.timestamp_millis() as f64 / 1000.0,
        "recipient": event.email,
        "log-level": "warn",
    });
    if let Some(severity) = severity {
        data["severity"] = severity.into();
    }
    serde_json::json!({
        "signature": {"timestamp": timestamp, "token": token, "signature": signature},
        "event-data": data,
    })
    .to_string()
}

/// The credential signup is configured with for `kind`'s events, as the provider holds it
/// (Resend's as its `whsec_` text); empty if unset.
pub fn configured_credential(
    sync: &crate::configuration::EmailSyncSettings,
    kind: ProviderKind,
) -> String {
    use secrecy::ExposeSecret;
    match kind {
        ProviderKind::Mailchimp => sync.mailchimp.webhook_secret.expose_secret().to_owned(),
        ProviderKind::Brevo => sync.brevo.webhook_token.expose_secret().to_owned(),
        ProviderKind::Mailgun => sync.mailgun.webhook_signing_key.expose_secret().to_owned(),
        ProviderKind::Resend => sync
            .resend
            .webhook_secret
            .as_ref()
            .map(|key| format!("whsec_{}", STANDARD.encode(key.expose())))
            .unwrap_or_default(),
        ProviderKind::Sendgrid | ProviderKind::Webhook => String::new(),
    }
}

/// The URL of a signup listening on `bind` (an unspecified address is reached on loopback).
pub fn base_of(bind: std::net::SocketAddr) -> Result<reqwest::Url, String> {
    let host = match bind.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
        ip if ip.is_unspecified() => "[::1]".to_owned(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    reqwest::Url::parse(&format!("http://{host}:{}/", bind.port())).map_err(|e| e.to_string())
}

/// Sends `request` to the signup at `base`: its status and body.
pub async fn send(base: &reqwest::Url, request: &SignedRequest) -> Result<(u16, String), String> {
    let url = base
        .join(&request.path)
        .map_err(|e| format!("{base}: {e}"))?;
    crate::startup::install_crypto_provider();
    let client = crate::email::outcome::client(std::time::Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let mut builder = client.post(url);
    for (name, value) in &request.headers {
        builder = builder.header(*name, value);
    }
    let response = builder
        .body(request.body.clone())
        .send()
        .await
        .map_err(|e| {
            format!(
                "cannot reach {base}: {}",
                crate::error_chain::error_chain(&e)
            )
        })?;
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    Ok((status, text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consent::{ConsentState, brevo, mailchimp, mailgun, resend, sendgrid};

    fn event(kind: ProviderKind, event_type: &str) -> EventToSend {
        EventToSend {
            kind,
            event_type: event_type.into(),
            email: "Person@Example.com".into(),
            at: Utc::now() - chrono::Duration::seconds(30),
            id: "ev-1".into(),
        }
    }

    fn header<'a>(request: &'a SignedRequest, name: &str) -> Option<&'a str> {
        request
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// What signup's own verifier makes of each kind's event: the round trip a person trying
    /// the loop by hand depends on.
    #[test]
    fn each_kinds_event_is_read_back_by_signups_verifier_as_the_state_it_names() {
        let now = Utc::now();
        let check = |events: Vec<crate::consent::Event>, state: ConsentState| {
            assert_eq!(events.len(), 1);
            assert_eq!(events[0].state, Some(state));
            assert_eq!(events[0].email, "Person@Example.com");
        };

        let request = signed(
            &event(ProviderKind::Mailchimp, "unsubscribe"),
            "s3cret",
            now,
        )
        .expect("signed");
        assert_eq!(request.path, "/hooks/mailchimp/s3cret");
        check(
            vec![mailchimp::read(request.body.as_bytes()).expect("read")],
            ConsentState::Unsubscribed,
        );

        let request =
            signed(&event(ProviderKind::Sendgrid, "spamreport"), "", now).expect("signed");
        let key: crate::email::provider::EventWebhookKey = sendgrid_public_key()
            .parse()
            .expect("the printed key parses");
        let headers = sendgrid::Headers {
            signature: header(&request, "x-twilio-email-event-webhook-signature"),
            timestamp: header(&request, "x-twilio-email-event-webhook-timestamp"),
        };
        check(
            sendgrid::read(&headers, request.body.as_bytes(), &key.0, now).expect("read"),
            ConsentState::Complained,
        );

        let request =
            signed(&event(ProviderKind::Brevo, "unsubscribed"), "tok", now).expect("signed");
        brevo::authorized(header(&request, "authorization"), b"tok").expect("authorized");
        check(
            brevo::read(request.body.as_bytes()).expect("read"),
            ConsentState::Unsubscribed,
        );

        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let request = signed(
            &event(ProviderKind::Resend, "email.complained"),
            secret,
            now,
        )
        .expect("signed");
        let key: crate::email::webhook::WebhookKey = secret.parse().expect("secret");
        let headers = resend::Headers {
            id: header(&request, "svix-id"),
            timestamp: header(&request, "svix-timestamp"),
            signature: header(&request, "svix-signature"),
        };
        check(
            resend::read(&headers, request.body.as_bytes(), key.expose(), now).expect("read"),
            ConsentState::Complained,
        );

        let request =
            signed(&event(ProviderKind::Mailgun, "failed"), "mg-key", now).expect("signed");
        check(
            vec![mailgun::read(request.body.as_bytes(), b"mg-key", now).expect("read")],
            ConsentState::Bounced,
        );
    }

    #[test]
    fn a_missing_credential_or_the_webhook_kind_is_a_clear_error() {
        let now = Utc::now();
        for kind in [
            ProviderKind::Mailchimp,
            ProviderKind::Brevo,
            ProviderKind::Resend,
            ProviderKind::Mailgun,
            ProviderKind::Webhook,
        ] {
            let refused = signed(&event(kind, "unsubscribe"), "", now);
            assert!(refused.is_err(), "{kind:?}: {refused:?}");
        }
    }
}
