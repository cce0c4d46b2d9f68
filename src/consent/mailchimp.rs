//! Mailchimp's webhooks (`POST /hooks/mailchimp/{secret}`): form-encoded, `type` =
//! `subscribe` | `unsubscribe` | `profile` | `upemail` | `cleaned` | `campaign`, `fired_at`
//! (`2009-03-26 21:35:57`, GMT), `data[email]`, `data[list_id]`, … (Mailchimp's "Webhooks"
//! guide). Mailchimp signs nothing: the secret path segment is the credential, compared in
//! constant time; its validator's `GET` on the same URL answers 200. Mailchimp sends no event
//! id either: a delivery is named by the SHA-256 of its body, so the same delivery again is a
//! replay.

use chrono::NaiveDateTime;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{ConsentState, Event, Rejected};

/// The kind, as routes, metrics and the consent table name it.
pub(crate) const KIND: &str = "mailchimp";

/// Whether `given` is the configured secret path segment (in constant time).
pub(crate) fn authorized(given: &str, secret: &[u8]) -> bool {
    given.len() == secret.len() && bool::from(given.as_bytes().ct_eq(secret))
}

/// The event a form-encoded `body` carries.
pub(crate) fn read(body: &[u8]) -> Result<Event, Rejected> {
    let mut kind = None;
    let mut fired_at = None;
    let mut email = None;
    for (key, value) in url::form_urlencoded::parse(body) {
        match key.as_ref() {
            "type" => kind = Some(value.into_owned()),
            "fired_at" => fired_at = Some(value.into_owned()),
            "data[email]" => email = Some(value.into_owned()),
            _ => {}
        }
    }
    let missing = |what: &str| Rejected::Malformed(KIND, format!("no `{what}`"));
    let kind = kind.ok_or_else(|| missing("type"))?;
    let email = email.ok_or_else(|| missing("data[email]"))?;
    let fired_at = fired_at.ok_or_else(|| missing("fired_at"))?;
    let at = NaiveDateTime::parse_from_str(&fired_at, "%Y-%m-%d %H:%M:%S")
        .map_err(|_| {
            Rejected::Malformed(
                KIND,
                format!("`fired_at` is not `YYYY-MM-DD HH:MM:SS`: {fired_at:?}"),
            )
        })?
        .and_utc();
    let state = match kind.as_str() {
        "subscribe" => Some(ConsentState::Subscribed),
        "unsubscribe" => Some(ConsentState::Unsubscribed),
        "cleaned" => Some(ConsentState::Cleaned),
        _ => None,
    };
    Ok(Event {
        id: hex::encode(Sha256::digest(body)),
        email,
        state,
        at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_unsubscribe_is_read() {
        let body = b"type=unsubscribe&fired_at=2009-03-26+21%3A40%3A57&data%5Baction%5D=unsub&data%5Breason%5D=manual&data%5Bid%5D=8a25ff1d98&data%5Blist_id%5D=a6b5da1054&data%5Bemail%5D=api%2Bunsub%40mailchimp.com&data%5Bemail_type%5D=html";
        let event = read(body).expect("read");
        assert_eq!(event.email, "api+unsub@mailchimp.com");
        assert_eq!(event.state, Some(ConsentState::Unsubscribed));
        assert_eq!(event.at.to_rfc3339(), "2009-03-26T21:40:57+00:00");
        assert_eq!(event.id.len(), 64);
        assert_eq!(
            read(body).expect("read").id,
            event.id,
            "the same delivery, the same id"
        );
    }

    #[test]
    fn subscribe_and_cleaned_set_their_states_and_profile_changes_nothing() {
        let state = |kind: &str| {
            let body =
                format!("type={kind}&fired_at=2009-03-26+21%3A40%3A57&data%5Bemail%5D=a%40b.co");
            read(body.as_bytes()).expect("read").state
        };
        assert_eq!(state("subscribe"), Some(ConsentState::Subscribed));
        assert_eq!(state("cleaned"), Some(ConsentState::Cleaned));
        assert_eq!(state("profile"), None);
        assert_eq!(state("upemail"), None);
    }

    #[test]
    fn a_body_without_its_fields_is_malformed_and_the_secret_must_match_exactly() {
        assert!(matches!(
            read(b"type=unsubscribe"),
            Err(Rejected::Malformed(..))
        ));
        assert!(matches!(
            read(b"type=unsubscribe&fired_at=yesterday&data%5Bemail%5D=a%40b.co"),
            Err(Rejected::Malformed(..))
        ));
        assert!(authorized("s3cret", b"s3cret"));
        assert!(!authorized("s3cre", b"s3cret"));
        assert!(!authorized("s3cret!", b"s3cret"));
    }
}
