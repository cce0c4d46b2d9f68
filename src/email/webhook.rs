//! Standard Webhooks (SPEC §3.1): the signing key, the signature, its verification and the
//! body. The `webhook` adapter (`provider::webhook`) signs with it; `mock-provider` verifies.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::Sha256;

use super::event::{Event, WebhookBody};

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("expected whsec_<base64>")]
    Format,
}

/// The webhook signing key (`email_sync.secret`), decoded once from `whsec_<base64>` when the
/// configuration is read. Never printed.
#[derive(Clone)]
pub struct WebhookKey(std::sync::Arc<SecretSlice<u8>>);

impl WebhookKey {
    /// A random key: webhooks the provider cannot verify (when no secret is configured).
    pub(crate) fn random() -> Self {
        use rand::RngCore;
        let mut bytes = vec![0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self::from_bytes(bytes)
    }

    fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(std::sync::Arc::new(SecretSlice::from(bytes)))
    }

    pub(crate) fn expose(&self) -> &[u8] {
        self.0.expose_secret()
    }
}

impl std::fmt::Debug for WebhookKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookKey(…)")
    }
}

impl std::str::FromStr for WebhookKey {
    type Err = SecretError;

    fn from_str(secret: &str) -> Result<Self, SecretError> {
        decode_secret(secret).map(Self::from_bytes)
    }
}

impl<'de> serde::Deserialize<'de> for WebhookKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = secrecy::SecretString::deserialize(deserializer)?;
        text.expose_secret()
            .parse()
            .map_err(|_| serde::de::Error::custom("expected whsec_<base64>"))
    }
}

/// Decodes `whsec_<base64>` into the HMAC key.
pub fn decode_secret(secret: &str) -> Result<Vec<u8>, SecretError> {
    let encoded = secret.strip_prefix("whsec_").ok_or(SecretError::Format)?;
    let key = STANDARD.decode(encoded).map_err(|_| SecretError::Format)?;
    if key.is_empty() {
        return Err(SecretError::Format);
    }
    Ok(key)
}

/// `v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &str) -> String {
    // HMAC takes keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The webhook body for an outbox row's `event` and `payload`, at attempt time `now`.
pub(crate) fn body(
    event: entity::email_outbox::EventType,
    payload: &str,
    now: DateTime<Utc>,
) -> Result<String, serde_json::Error> {
    serde_json::to_string(&WebhookBody::new(Event::from_row(event, payload)?, now))
}

/// Why a webhook's signature was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum VerifyError {
    #[error("webhook-id, webhook-timestamp or webhook-signature is missing")]
    MissingHeader,
    #[error("webhook-timestamp is not a number of seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is more than 5 minutes from now")]
    StaleTimestamp,
    #[error("no signature matches")]
    NoMatch,
}

/// How far a webhook's timestamp may be from the receiver's clock (the Standard Webhooks
/// libraries' tolerance): an older request is a replay.
const TIMESTAMP_TOLERANCE_SECS: i64 = 5 * 60;

/// Checks a received webhook as a Standard Webhooks receiver does: a `v1,` signature among the
/// space-separated ones that matches (in constant time), a timestamp within 5 minutes of `now`.
pub(crate) fn verify(
    key: &[u8],
    id: Option<&str>,
    timestamp: Option<&str>,
    signatures: Option<&str>,
    body: &str,
    now: DateTime<Utc>,
) -> Result<(), VerifyError> {
    let (Some(id), Some(timestamp), Some(signatures)) = (id, timestamp, signatures) else {
        return Err(VerifyError::MissingHeader);
    };
    let seconds: i64 = timestamp.parse().map_err(|_| VerifyError::BadTimestamp)?;
    if (now.timestamp() - seconds).abs() > TIMESTAMP_TOLERANCE_SECS {
        return Err(VerifyError::StaleTimestamp);
    }
    let expected = sign(key, id, seconds, body);
    let matches = signatures.split_whitespace().any(|given| {
        use subtle::ConstantTimeEq;
        given.len() == expected.len() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
    });
    if matches {
        Ok(())
    } else {
        Err(VerifyError::NoMatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_matches_the_standard_webhooks_example() {
        // The example from the Standard Webhooks specification's reference tests.
        let key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("valid secret");
        let body = r#"{"test": 2432232314}"#;
        let signature = sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn malformed_secrets_are_refused() {
        for bad in [
            "",
            "whsec_",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_!!!",
        ] {
            assert!(decode_secret(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_signature_verifies_only_with_its_key_id_body_and_a_recent_timestamp() {
        let key = b"a key of our own";
        let now = Utc::now();
        let ts = now.timestamp();
        let body = r#"{"type":"user.registered"}"#;
        let signature = sign(key, "msg_1", ts, body);
        let ts_text = ts.to_string();
        let check = |key: &[u8], id: &str, ts: &str, sig: &str, body: &str| {
            verify(key, Some(id), Some(ts), Some(sig), body, now)
        };
        assert_eq!(check(key, "msg_1", &ts_text, &signature, body), Ok(()));
        let several = format!("v1,bm90IGl0 {signature}");
        assert_eq!(
            check(key, "msg_1", &ts_text, &several, body),
            Ok(()),
            "one of several"
        );
        let cases = [
            (
                check(b"another key", "msg_1", &ts_text, &signature, body),
                VerifyError::NoMatch,
                "another key",
            ),
            (
                check(key, "msg_2", &ts_text, &signature, body),
                VerifyError::NoMatch,
                "another id",
            ),
            (
                check(key, "msg_1", &ts_text, &signature, "{}"),
                VerifyError::NoMatch,
                "another body",
            ),
            (
                check(
                    key,
                    "msg_1",
                    &(ts - 600).to_string(),
                    &sign(key, "msg_1", ts - 600, body),
                    body,
                ),
                VerifyError::StaleTimestamp,
                "ten minutes old",
            ),
            (
                check(key, "msg_1", "soon", &signature, body),
                VerifyError::BadTimestamp,
                "not a number",
            ),
            (
                verify(key, None, Some(&ts_text), Some(&signature), body, now),
                VerifyError::MissingHeader,
                "no id",
            ),
        ];
        for (result, expected, why) in cases {
            assert_eq!(result, Err(expected), "{why}");
        }
    }

    #[test]
    fn the_body_wraps_the_payload_as_user_registered() {
        let now = Utc::now();
        let body = body(
            entity::email_outbox::EventType::UserRegistered,
            r#"{"user_id":"00000000-0000-0000-0000-000000000000","username":"a","email":"a@b.co","registered_at":"2026-11-30T12:00:00.000000Z"}"#,
            now,
        )
        .expect("json");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["type"], "user.registered");
        assert_eq!(v["data"]["username"], "a");
        assert!(DateTime::parse_from_rfc3339(v["timestamp"].as_str().expect("ts")).is_ok());
    }
}
