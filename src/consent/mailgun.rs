//! Mailgun's webhooks (`POST /hooks/mailgun`): a JSON body carrying its own signature,
//! `{"signature": {"timestamp", "token", "signature"}, "event-data": {…}}`, where `signature` is
//! the hex HMAC-SHA256 of `timestamp ‖ token` with the webhook signing key (Mailgun's "Securing
//! Webhooks"). `unsubscribed` and `complained` set their states; `failed` with
//! `severity = "permanent"` is a hard bounce; every other event is not about consent.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::{ConsentState, Event, Rejected, fresh};

/// The kind, as routes, metrics and the consent table name it.
pub(crate) const KIND: &str = "mailgun";

#[derive(Deserialize)]
struct Body {
    signature: Signature,
    #[serde(rename = "event-data")]
    event_data: EventData,
}

#[derive(Deserialize)]
struct Signature {
    timestamp: String,
    token: String,
    signature: String,
}

#[derive(Deserialize)]
struct EventData {
    id: String,
    event: String,
    /// Unix seconds, with a fraction.
    timestamp: f64,
    recipient: String,
    #[serde(default)]
    severity: Option<String>,
}

/// The event `body` carries, if Mailgun signed it with `signing_key` within 5 minutes of `now`.
pub(crate) fn read(body: &[u8], signing_key: &[u8], now: DateTime<Utc>) -> Result<Event, Rejected> {
    let body: Body = serde_json::from_slice(body).map_err(|e| malformed(&e))?;
    verify(&body.signature, signing_key, now)?;
    let data = body.event_data;
    let state = match (data.event.as_str(), data.severity.as_deref()) {
        ("unsubscribed", _) => Some(ConsentState::Unsubscribed),
        ("complained", _) => Some(ConsentState::Complained),
        ("failed", Some("permanent")) => Some(ConsentState::Bounced),
        _ => None,
    };
    let at = DateTime::from_timestamp_millis((data.timestamp * 1000.0) as i64)
        .ok_or_else(|| Rejected::Malformed(KIND, "event-data.timestamp is out of range".into()))?;
    if data.id.is_empty() || data.id.len() > 128 {
        return Err(Rejected::Malformed(
            KIND,
            "event-data.id must be 1 to 128 characters".into(),
        ));
    }
    Ok(Event {
        id: data.id,
        email: data.recipient,
        state,
        at,
    })
}

fn verify(signature: &Signature, signing_key: &[u8], now: DateTime<Utc>) -> Result<(), Rejected> {
    if signature.signature.is_empty() {
        return Err(Rejected::Unsigned);
    }
    let timestamp: i64 = signature
        .timestamp
        .parse()
        .map_err(|_| Rejected::StaleTimestamp)?;
    let expected = hex::decode(&signature.signature).map_err(|_| Rejected::BadSignature)?;
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = Hmac::<Sha256>::new_from_slice(signing_key).expect("HMAC takes any key length");
    mac.update(signature.timestamp.as_bytes());
    mac.update(signature.token.as_bytes());
    mac.verify_slice(&expected)
        .map_err(|_| Rejected::BadSignature)?;
    fresh(timestamp, now)
}

fn malformed(e: &serde_json::Error) -> Rejected {
    Rejected::Malformed(KIND, e.to_string())
}

/// A body as Mailgun would send it, signed with `signing_key`.
#[cfg(test)]
pub(crate) fn signed_body(
    signing_key: &[u8],
    event: &str,
    severity: Option<&str>,
    id: &str,
    recipient: &str,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> String {
    let event = crate::mock_provider::EventToSend {
        kind: crate::configuration::ProviderKind::Mailgun,
        event_type: event.into(),
        email: recipient.into(),
        at,
        id: id.into(),
    };
    crate::mock_provider::mailgun_body(signing_key, &event, severity, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"key-0123456789abcdef";

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("a time")
    }

    #[test]
    fn a_signed_unsubscribe_is_read() {
        let at = now() - chrono::Duration::seconds(30);
        let body = signed_body(
            KEY,
            "unsubscribed",
            None,
            "ev-1",
            "A@Example.com",
            at,
            now(),
        );
        let event = read(body.as_bytes(), KEY, now()).expect("read");
        assert_eq!(event.id, "ev-1");
        assert_eq!(event.email, "A@Example.com");
        assert_eq!(event.state, Some(ConsentState::Unsubscribed));
        assert_eq!(event.at, at);
    }

    #[test]
    fn only_a_permanent_failure_is_a_bounce() {
        let body = |severity| signed_body(KEY, "failed", severity, "e", "a@b.co", now(), now());
        let state = |body: String| read(body.as_bytes(), KEY, now()).expect("read").state;
        assert_eq!(state(body(Some("permanent"))), Some(ConsentState::Bounced));
        assert_eq!(state(body(Some("temporary"))), None);
        let delivered = signed_body(KEY, "delivered", None, "e", "a@b.co", now(), now());
        assert_eq!(state(delivered), None);
    }

    #[test]
    fn another_key_a_tampered_body_or_an_old_timestamp_is_refused() {
        let body = signed_body(KEY, "complained", None, "e", "a@b.co", now(), now());
        assert_eq!(
            read(body.as_bytes(), b"another key", now()),
            Err(Rejected::BadSignature)
        );
        let tampered = body.replace(
            &format!("\"timestamp\":\"{}\"", now().timestamp()),
            &format!("\"timestamp\":\"{}\"", now().timestamp() + 1),
        );
        assert_eq!(
            read(tampered.as_bytes(), KEY, now()),
            Err(Rejected::BadSignature)
        );
        let later = now() + chrono::Duration::minutes(6);
        assert_eq!(
            read(body.as_bytes(), KEY, later),
            Err(Rejected::StaleTimestamp)
        );
        let unsigned = body.replace("\"signature\":\"", "\"signature\":\"\",\"x\":\"");
        assert_eq!(
            read(unsigned.as_bytes(), KEY, now()),
            Err(Rejected::Unsigned)
        );
        assert!(matches!(
            read(b"{\"event-data\": {}}", KEY, now()),
            Err(Rejected::Malformed(..))
        ));
    }
}
