//! Brevo's marketing webhooks (`POST /hooks/brevo`): a JSON event (or an array of them, when
//! Brevo batches) with `event` = `unsubscribe` | `hard_bounce` | `spam` | `contact_deleted` | …,
//! `email`, `ts_event` (Unix seconds, UTC), per Brevo's "Marketing webhooks" reference. Brevo
//! signs nothing: the webhook is created with a bearer token or basic credentials, which the
//! request carries in `Authorization`, compared in constant time. Brevo sends no event id
//! either: an event is named by the SHA-256 of its JSON, so the same event again is a replay.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::DateTime;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{ConsentState, Event, Rejected};

/// The kind, as routes, metrics and the consent table name it.
pub(crate) const KIND: &str = "brevo";

/// Whether `authorization` carries the configured `token`: `Bearer <token>`, or Basic
/// credentials whose `user:password` is the token.
pub(crate) fn authorized(authorization: Option<&str>, token: &[u8]) -> Result<(), Rejected> {
    let Some(authorization) = authorization else {
        return Err(Rejected::Unsigned);
    };
    let given = match authorization.split_once(' ') {
        Some((scheme, value)) if scheme.eq_ignore_ascii_case("bearer") => {
            value.trim().as_bytes().to_vec()
        }
        Some((scheme, value)) if scheme.eq_ignore_ascii_case("basic") => STANDARD
            .decode(value.trim())
            .map_err(|_| Rejected::BadSignature)?,
        _ => return Err(Rejected::BadSignature),
    };
    if given.len() == token.len() && bool::from(given.ct_eq(token)) {
        Ok(())
    } else {
        Err(Rejected::BadSignature)
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Body {
    Many(Vec<serde_json::Value>),
    One(serde_json::Value),
}

#[derive(Deserialize)]
struct Marketing {
    event: String,
    email: String,
    ts_event: i64,
}

/// The events a `body` carries.
pub(crate) fn read(body: &[u8]) -> Result<Vec<Event>, Rejected> {
    let malformed = |e: serde_json::Error| Rejected::Malformed(KIND, e.to_string());
    let values = match serde_json::from_slice::<Body>(body).map_err(malformed)? {
        Body::Many(values) => values,
        Body::One(value) => vec![value],
    };
    values
        .into_iter()
        .map(|value| {
            let id = hex::encode(Sha256::digest(value.to_string().as_bytes()));
            let event: Marketing = serde_json::from_value(value).map_err(malformed)?;
            let at = DateTime::from_timestamp(event.ts_event, 0)
                .ok_or_else(|| Rejected::Malformed(KIND, "ts_event is out of range".into()))?;
            let state = match event.event.as_str() {
                "unsubscribe" | "unsubscribed" => Some(ConsentState::Unsubscribed),
                "hard_bounce" | "hardBounce" => Some(ConsentState::Bounced),
                "spam" => Some(ConsentState::Complained),
                _ => None,
            };
            Ok(Event {
                id,
                email: event.email,
                state,
                at,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_spam_event_is_a_complaint() {
        let body = br#"{"id":123456,"camp_id":12,"email":"example@domain.com","campaign name":"My First Campaign","date_sent":"2020-10-09 00:00:00","date_event":"2020-10-09 00:00:00","event":"spam","reason":"spam","tag":"","ts_sent":1604933619,"ts_event":1604933737,"ts":1604937337}"#;
        let events = read(body).expect("read");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].state, Some(ConsentState::Complained));
        assert_eq!(events[0].email, "example@domain.com");
        assert_eq!(events[0].at.timestamp(), 1604933737);
    }

    #[test]
    fn a_batch_is_read_event_by_event_and_others_change_nothing() {
        let body = br#"[{"event":"unsubscribe","email":"a@b.co","ts_event":1},{"event":"hard_bounce","email":"c@d.co","ts_event":2},{"event":"opened","email":"a@b.co","ts_event":3}]"#;
        let states: Vec<_> = read(body)
            .expect("read")
            .into_iter()
            .map(|e| e.state)
            .collect();
        assert_eq!(
            states,
            [
                Some(ConsentState::Unsubscribed),
                Some(ConsentState::Bounced),
                None
            ]
        );
        assert!(matches!(
            read(b"{\"event\":\"spam\"}"),
            Err(Rejected::Malformed(..))
        ));
    }

    #[test]
    fn only_the_configured_token_or_basic_credentials_are_taken() {
        let token = b"brevo-hook-token";
        assert_eq!(authorized(Some("Bearer brevo-hook-token"), token), Ok(()));
        let basic = format!("Basic {}", STANDARD.encode("brevo-hook-token"));
        assert_eq!(authorized(Some(&basic), token), Ok(()));
        assert_eq!(authorized(None, token), Err(Rejected::Unsigned));
        assert_eq!(
            authorized(Some("Bearer brevo-hook-tokeN"), token),
            Err(Rejected::BadSignature)
        );
        assert_eq!(
            authorized(Some("Token brevo-hook-token"), token),
            Err(Rejected::BadSignature)
        );
    }
}
