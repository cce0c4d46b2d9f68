//! SendGrid's Signed Event Webhook (`POST /hooks/sendgrid`): a JSON array of events, each with
//! `email`, `timestamp` (Unix seconds), `event` and `sg_event_id`, signed with ECDSA P-256 over
//! `timestamp ‖ raw body`; the signature (base64 DER) and timestamp come in
//! `X-Twilio-Email-Event-Webhook-Signature` and `…-Timestamp`, and the public key is the one
//! SendGrid shows for the webhook (base64 DER), per SendGrid's "Event Webhook Security
//! Features". `bounce` (type `bounce`, not `blocked`) is a hard bounce, `spamreport` a
//! complaint, `unsubscribe` and `group_unsubscribe` an unsubscribe; `dropped` says which list
//! kept the message back; every other event is not about consent.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use serde::Deserialize;

use super::{ConsentState, Event, Rejected, fresh};

/// The kind, as routes, metrics and the consent table name it.
pub(crate) const KIND: &str = "sendgrid";

/// The signature and timestamp headers of one request.
pub(crate) struct Headers<'a> {
    pub(crate) signature: Option<&'a str>,
    pub(crate) timestamp: Option<&'a str>,
}

#[derive(Deserialize)]
struct Raw {
    email: String,
    timestamp: i64,
    event: String,
    sg_event_id: String,
    /// `bounce` events: `bounce` (hard) or `blocked` (temporary).
    #[serde(default, rename = "type")]
    bounce_type: Option<String>,
    /// `dropped` events: which suppression list kept the message back.
    #[serde(default)]
    reason: Option<String>,
}

/// The events `body` carries, if SendGrid signed it with the key of `key` within 5 minutes of
/// `now`.
pub(crate) fn read(
    headers: &Headers<'_>,
    body: &[u8],
    key: &VerifyingKey,
    now: DateTime<Utc>,
) -> Result<Vec<Event>, Rejected> {
    let (Some(signature), Some(timestamp)) = (headers.signature, headers.timestamp) else {
        return Err(Rejected::Unsigned);
    };
    let signature = STANDARD
        .decode(signature.trim())
        .ok()
        .and_then(|der| Signature::from_der(&der).ok())
        .ok_or(Rejected::BadSignature)?;
    // (r, s) and (r, n − s) verify alike; the verifier takes the low-s form.
    let signature = signature.normalize_s().unwrap_or(signature);
    let mut signed = timestamp.as_bytes().to_vec();
    signed.extend_from_slice(body);
    key.verify(&signed, &signature)
        .map_err(|_| Rejected::BadSignature)?;
    fresh(
        timestamp.parse().map_err(|_| Rejected::StaleTimestamp)?,
        now,
    )?;
    let events: Vec<Raw> =
        serde_json::from_slice(body).map_err(|e| Rejected::Malformed(KIND, e.to_string()))?;
    events
        .into_iter()
        .map(|raw| {
            if raw.sg_event_id.is_empty() || raw.sg_event_id.len() > 128 {
                return Err(Rejected::Malformed(
                    KIND,
                    "sg_event_id must be 1 to 128 characters".into(),
                ));
            }
            let at = DateTime::from_timestamp(raw.timestamp, 0)
                .ok_or_else(|| Rejected::Malformed(KIND, "timestamp is out of range".into()))?;
            Ok(Event {
                state: state_of(&raw),
                id: raw.sg_event_id,
                email: raw.email,
                at,
            })
        })
        .collect()
}

fn state_of(raw: &Raw) -> Option<ConsentState> {
    match raw.event.as_str() {
        "bounce" if raw.bounce_type.as_deref() != Some("blocked") => Some(ConsentState::Bounced),
        "spamreport" => Some(ConsentState::Complained),
        "unsubscribe" | "group_unsubscribe" => Some(ConsentState::Unsubscribed),
        "dropped" => match raw.reason.as_deref() {
            Some("Unsubscribed Address") => Some(ConsentState::Unsubscribed),
            Some("Spam Reporting Address") => Some(ConsentState::Complained),
            Some("Bounced Address") => Some(ConsentState::Bounced),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::Signer;
    use p256::pkcs8::EncodePublicKey;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("a time")
    }

    fn keys() -> (SigningKey, VerifyingKey) {
        let signing = SigningKey::from_slice(&[7u8; 32]).expect("a scalar");
        let verifying = *signing.verifying_key();
        (signing, verifying)
    }

    fn signed(signing: &SigningKey, timestamp: i64, body: &str) -> (String, String) {
        let timestamp = timestamp.to_string();
        let signature: Signature = signing.sign(format!("{timestamp}{body}").as_bytes());
        (STANDARD.encode(signature.to_der()), timestamp)
    }

    const BODY: &str = r#"[{"email":"a@example.com","timestamp":1799999990,"event":"spamreport","sg_event_id":"ev-1","sg_message_id":"m"},{"email":"b@example.com","timestamp":1799999991,"event":"bounce","type":"blocked","sg_event_id":"ev-2"},{"email":"c@example.com","timestamp":1799999992,"event":"dropped","reason":"Unsubscribed Address","sg_event_id":"ev-3"}]"#;

    #[test]
    fn a_signed_batch_is_read_with_the_key_as_sendgrid_shows_it() {
        let (signing, verifying) = keys();
        let shown = STANDARD.encode(verifying.to_public_key_der().expect("der").as_bytes());
        let key: crate::email::provider::EventWebhookKey = shown.parse().expect("the key");
        let key = key.0;
        let (signature, timestamp) = signed(&signing, now().timestamp(), BODY);
        let headers = Headers {
            signature: Some(&signature),
            timestamp: Some(&timestamp),
        };
        let events = read(&headers, BODY.as_bytes(), &key, now()).expect("read");
        let states: Vec<_> = events.iter().map(|e| e.state).collect();
        assert_eq!(
            states,
            [
                Some(ConsentState::Complained),
                None,
                Some(ConsentState::Unsubscribed)
            ]
        );
        assert_eq!(events[0].id, "ev-1");
    }

    #[test]
    fn another_key_a_changed_body_or_an_old_timestamp_is_refused() {
        let (signing, verifying) = keys();
        let (signature, timestamp) = signed(&signing, now().timestamp(), BODY);
        let headers = Headers {
            signature: Some(&signature),
            timestamp: Some(&timestamp),
        };
        let other = *SigningKey::from_slice(&[9u8; 32])
            .expect("a scalar")
            .verifying_key();
        assert_eq!(
            read(&headers, BODY.as_bytes(), &other, now()),
            Err(Rejected::BadSignature)
        );
        let changed = BODY.replace("spamreport", "delivered");
        assert_eq!(
            read(&headers, changed.as_bytes(), &verifying, now()),
            Err(Rejected::BadSignature)
        );
        let (old, then) = signed(&signing, now().timestamp() - 600, BODY);
        let headers = Headers {
            signature: Some(&old),
            timestamp: Some(&then),
        };
        assert_eq!(
            read(&headers, BODY.as_bytes(), &verifying, now()),
            Err(Rejected::StaleTimestamp)
        );
        let unsigned = Headers {
            signature: None,
            timestamp: Some(&then),
        };
        assert_eq!(
            read(&unsigned, BODY.as_bytes(), &verifying, now()),
            Err(Rejected::Unsigned)
        );
        assert!(
            "bm90IGEga2V5"
                .parse::<crate::email::provider::EventWebhookKey>()
                .is_err()
        );
    }
}
