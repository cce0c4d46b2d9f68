//! Resend's webhooks (`POST /hooks/resend`), delivered by Svix: the signature scheme is Standard
//! Webhooks' with `svix-` headers (`svix-id`, `svix-timestamp`, `svix-signature`), so signup's
//! own verifier checks it with the `whsec_` secret. The body is `{"type", "created_at", "data"}`
//! (Resend's "Event Types"): `email.bounced` (the recipient's server refused it permanently) and
//! `email.complained` set those states for each address in `data.to`; `contact.created` and
//! `contact.updated` say `data.unsubscribed`; every other type is not about consent.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::{ConsentState, Event, Rejected};
use crate::email::webhook::{VerifyError, verify};

/// The kind, as routes, metrics and the consent table name it.
pub(crate) const KIND: &str = "resend";

/// The `svix-…` headers of one request.
pub(crate) struct Headers<'a> {
    pub(crate) id: Option<&'a str>,
    pub(crate) timestamp: Option<&'a str>,
    pub(crate) signature: Option<&'a str>,
}

#[derive(Deserialize)]
struct Body {
    #[serde(rename = "type")]
    kind: String,
    created_at: DateTime<Utc>,
    data: Data,
}

#[derive(Deserialize)]
struct Data {
    /// Email events: the recipients.
    #[serde(default)]
    to: Vec<String>,
    /// Contact events: the contact's address and whether it unsubscribed.
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    unsubscribed: Option<bool>,
}

/// The events `body` carries, one per address, if Resend signed it with `key` within 5
/// minutes of `now`. Each event's id is the delivery's `svix-id` and the address's place in it.
pub(crate) fn read(
    headers: &Headers<'_>,
    body: &[u8],
    key: &[u8],
    now: DateTime<Utc>,
) -> Result<Vec<Event>, Rejected> {
    let text = std::str::from_utf8(body)
        .map_err(|_| Rejected::Malformed(KIND, "the body is not UTF-8".into()))?;
    verify(
        key,
        headers.id,
        headers.timestamp,
        headers.signature,
        text,
        now,
    )
    .map_err(|e| match e {
        VerifyError::MissingHeader => Rejected::Unsigned,
        VerifyError::BadTimestamp | VerifyError::StaleTimestamp => Rejected::StaleTimestamp,
        VerifyError::NoMatch => Rejected::BadSignature,
    })?;
    let id = headers.id.unwrap_or_default();
    if id.is_empty() || id.len() > 100 {
        return Err(Rejected::Malformed(
            KIND,
            "svix-id must be 1 to 100 characters".into(),
        ));
    }
    let body: Body =
        serde_json::from_str(text).map_err(|e| Rejected::Malformed(KIND, e.to_string()))?;
    let (addresses, state) = match body.kind.as_str() {
        "email.bounced" => (body.data.to, Some(ConsentState::Bounced)),
        "email.complained" => (body.data.to, Some(ConsentState::Complained)),
        "contact.created" | "contact.updated" => (
            body.data.email.into_iter().collect(),
            body.data.unsubscribed.map(|unsubscribed| {
                if unsubscribed {
                    ConsentState::Unsubscribed
                } else {
                    ConsentState::Subscribed
                }
            }),
        ),
        _ => (body.data.to, None),
    };
    Ok(addresses
        .into_iter()
        .enumerate()
        .map(|(n, email)| Event {
            id: format!("{id}#{n}"),
            email,
            state,
            at: body.created_at,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::email::webhook::sign;

    const KEY: &[u8] = b"a resend webhook key";

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("a time")
    }

    fn read_signed(body: &str, at: DateTime<Utc>) -> Result<Vec<Event>, Rejected> {
        let signature = sign(KEY, "msg_1", at.timestamp(), body);
        let timestamp = at.timestamp().to_string();
        let headers = Headers {
            id: Some("msg_1"),
            timestamp: Some(&timestamp),
            signature: Some(&signature),
        };
        read(&headers, body.as_bytes(), KEY, now())
    }

    #[test]
    fn bounces_complaints_and_contact_updates_are_read() {
        let bounced = r#"{"type":"email.bounced","created_at":"2027-01-15T08:00:00.000Z","data":{"email_id":"e","from":"Acme <a@acme.test>","to":["A@Example.com","b@example.com"],"subject":"Hi","bounce":{"message":"550"}}}"#;
        let events = read_signed(bounced, now()).expect("read");
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].id, "msg_1#0");
        assert_eq!(events[1].email, "b@example.com");
        assert!(
            events
                .iter()
                .all(|e| e.state == Some(ConsentState::Bounced))
        );

        let updated = r#"{"type":"contact.updated","created_at":"2027-01-15T08:00:00Z","data":{"id":"c","audience_id":"a","email":"a@example.com","unsubscribed":true}}"#;
        let events = read_signed(updated, now()).expect("read");
        assert_eq!(events[0].state, Some(ConsentState::Unsubscribed));

        let delivered = r#"{"type":"email.delivered","created_at":"2027-01-15T08:00:00Z","data":{"to":["a@example.com"]}}"#;
        assert_eq!(read_signed(delivered, now()).expect("read")[0].state, None);
    }

    #[test]
    fn a_wrong_key_an_old_signature_or_missing_headers_are_refused() {
        let body = r#"{"type":"email.complained","created_at":"2027-01-15T08:00:00Z","data":{"to":["a@example.com"]}}"#;
        assert_eq!(
            read_signed(body, now() - chrono::Duration::minutes(6)),
            Err(Rejected::StaleTimestamp)
        );
        let headers = Headers {
            id: Some("msg_1"),
            timestamp: None,
            signature: None,
        };
        assert_eq!(
            read(&headers, body.as_bytes(), KEY, now()),
            Err(Rejected::Unsigned)
        );
        let timestamp = now().timestamp().to_string();
        let forged = sign(b"another key", "msg_1", now().timestamp(), body);
        let headers = Headers {
            id: Some("msg_1"),
            timestamp: Some(&timestamp),
            signature: Some(&forged),
        };
        assert_eq!(
            read(&headers, body.as_bytes(), KEY, now()),
            Err(Rejected::BadSignature)
        );
    }
}
