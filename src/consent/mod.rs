//! Consent: what the provider tells us back (SPEC §8). A person unsubscribes, their address
//! bounces or is cleaned, they report spam, they confirm a double opt-in: the provider sends an
//! event, signup verifies it (each kind's file), keeps the contact's state (`store`), and never
//! undoes it.
//!
//! The rule that decides between two statements about one contact is here, pure: events are
//! idempotent by id and applied in event time, so that any order of the same events ends in the
//! state of the newest.

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretSlice, SecretString};

use crate::configuration::EmailSyncSettings;
use crate::database::WriteTurns;
use crate::email::provider::ProviderKind;
use crate::outbox::ContactKey;

pub(crate) mod brevo;
pub(crate) mod mailchimp;
pub(crate) mod mailgun;
pub(crate) mod resend;
pub(crate) mod sendgrid;
pub(crate) mod store;

pub(crate) use crate::domain::{ConsentState, Source};

/// Each kind's inbound-hook credential (SPEC §8): unset (or empty), its `/hooks/<kind>` route
/// is 404 and `signup doctor` says so.
#[derive(Clone)]
pub(crate) struct HookCredentials {
    /// `email_sync.brevo.webhook_token`.
    pub(crate) brevo: Option<SecretSlice<u8>>,
    /// `email_sync.mailchimp.webhook_secret`.
    pub(crate) mailchimp: Option<SecretSlice<u8>>,
    /// `email_sync.mailgun.webhook_signing_key`.
    pub(crate) mailgun: Option<SecretSlice<u8>>,
    /// `email_sync.sendgrid.webhook_public_key`.
    pub(crate) sendgrid: Option<crate::email::provider::EventWebhookKey>,
    /// `email_sync.resend.webhook_secret`.
    pub(crate) resend: Option<crate::email::webhook::WebhookKey>,
}

impl HookCredentials {
    pub(crate) fn from_settings(sync: &EmailSyncSettings) -> Self {
        let credential = |secret: &SecretString| {
            let bytes = secret.expose_secret().as_bytes();
            (!bytes.is_empty()).then(|| SecretSlice::from(bytes.to_vec()))
        };
        Self {
            brevo: credential(&sync.brevo.webhook_token),
            mailchimp: credential(&sync.mailchimp.webhook_secret),
            mailgun: credential(&sync.mailgun.webhook_signing_key),
            resend: sync.resend.webhook_secret.clone(),
            sendgrid: sync.sendgrid.webhook_public_key.clone(),
        }
    }

    /// Whether `kind`'s hook takes events; kind webhook has none.
    pub(crate) fn is_on(&self, kind: ProviderKind) -> bool {
        match kind {
            ProviderKind::Webhook => false,
            ProviderKind::Brevo => self.brevo.is_some(),
            ProviderKind::Mailchimp => self.mailchimp.is_some(),
            ProviderKind::Mailgun => self.mailgun.is_some(),
            ProviderKind::Resend => self.resend.is_some(),
            ProviderKind::Sendgrid => self.sendgrid.is_some(),
        }
    }
}

/// What the `/hooks/…` routes need: each kind's credential, the key that turns an address into
/// its contact, and SQLite's write turns.
#[derive(Clone)]
pub(crate) struct Inbound {
    pub(crate) credentials: HookCredentials,
    pub(crate) contacts: ContactKey,
    pub(crate) turns: WriteTurns,
    /// Kind `webhook`: each applied change is forwarded as `user.consent_changed` (SPEC §8).
    pub(crate) forward: bool,
}

impl Inbound {
    pub(crate) fn from_settings(
        sync: &EmailSyncSettings,
        contacts: ContactKey,
        turns: WriteTurns,
    ) -> Self {
        Self {
            credentials: HookCredentials::from_settings(sync),
            contacts,
            turns,
            forward: sync.kind == ProviderKind::Webhook,
        }
    }
}

/// What one verified event about an address says, before it is matched to a contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event {
    /// The provider's id of the event: a replay of it changes nothing.
    pub(crate) id: String,
    /// The address, as the provider wrote it.
    pub(crate) email: String,
    /// The state it puts the contact in; none for an event that says nothing about consent
    /// (delivered, opened, a temporary failure): remembered, not applied.
    pub(crate) state: Option<ConsentState>,
    pub(crate) at: DateTime<Utc>,
}

/// Whether `new` replaces the contact's current state, set at `current_at` by the event
/// `current_id`: newer in event time replaces older; at the same instant the greater event id
/// wins, so that any order of the same events ends alike.
pub(crate) fn supersedes(
    current_at: DateTime<Utc>,
    current_id: Option<&str>,
    new_at: DateTime<Utc>,
    new_id: Option<&str>,
) -> bool {
    (new_at, new_id) > (current_at, current_id)
}

/// Why an inbound request changed nothing before its events were looked at: answered 401
/// (or 400 for a body that is not the kind's shape), counted as `rejected`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Rejected {
    #[error("the signature is missing")]
    Unsigned,
    #[error("the signature does not match")]
    BadSignature,
    #[error("the timestamp is more than 5 minutes from now")]
    StaleTimestamp,
    #[error("the body is not a {0} event: {1}")]
    Malformed(&'static str, String),
}

/// How far a signed timestamp may be from now (SPEC §8).
pub(crate) const TIMESTAMP_TOLERANCE: chrono::Duration = chrono::Duration::minutes(5);

/// Ok if `timestamp` (Unix seconds) is within [`TIMESTAMP_TOLERANCE`] of `now`.
pub(crate) fn fresh(timestamp: i64, now: DateTime<Utc>) -> Result<(), Rejected> {
    match DateTime::from_timestamp(timestamp, 0) {
        Some(at) if (now - at).abs() <= TIMESTAMP_TOLERANCE => Ok(()),
        _ => Err(Rejected::StaleTimestamp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).expect("a time")
    }

    /// Applies `events` in the given order, as the store does, to no state at first.
    fn fold(events: &[(i64, String, ConsentState)]) -> Option<(i64, String, ConsentState)> {
        let mut current: Option<(i64, String, ConsentState)> = None;
        for (time, id, state) in events {
            let replaces = current.as_ref().is_none_or(|(t, i, _)| {
                supersedes(at(*t), Some(i.as_str()), at(*time), Some(id.as_str()))
            });
            if replaces {
                current = Some((*time, id.clone(), *state));
            }
        }
        current
    }

    fn state() -> impl Strategy<Value = ConsentState> {
        proptest::sample::select(ConsentState::ALL.to_vec())
    }

    proptest! {
        /// Any order of a set of events ends in the state of the newest (SPEC §8).
        #[test]
        fn any_order_of_events_ends_in_the_newest(
            events in proptest::collection::vec((0i64..20, "[a-f]{1,3}", state()), 1..12),
            seed in any::<u64>(),
        ) {
            // One event per id, as the store's replay check makes them.
            let mut seen = std::collections::HashSet::new();
            let events: Vec<_> = events.into_iter().filter(|(_, id, _)| seen.insert(id.clone())).collect();
            let newest = events
                .iter()
                .max_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)))
                .cloned();
            let mut shuffled = events.clone();
            let mut rng = seed;
            for i in (1..shuffled.len()).rev() {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (rng >> 33) as usize % (i + 1));
            }
            prop_assert_eq!(fold(&shuffled), newest.clone());
            prop_assert_eq!(fold(&events), newest);
        }
    }

    #[test]
    fn states_and_sources_read_back_as_written() {
        for state in ConsentState::ALL {
            assert_eq!(ConsentState::parse(state.as_str()), Some(state));
        }
        for source in [
            Source::ProviderEvent,
            Source::ProviderAnswer,
            Source::Operator,
        ] {
            assert_eq!(Source::parse(source.as_str()), Some(source));
        }
        let kept: Vec<_> = ConsentState::ALL
            .into_iter()
            .filter(|s| s.suppresses())
            .collect();
        assert_eq!(
            kept,
            [
                ConsentState::Unsubscribed,
                ConsentState::Complained,
                ConsentState::Cleaned
            ]
        );
    }

    #[test]
    fn a_timestamp_is_fresh_within_five_minutes_either_way() {
        let now = at(0);
        assert_eq!(fresh(now.timestamp() - 299, now), Ok(()));
        assert_eq!(fresh(now.timestamp() + 299, now), Ok(()));
        assert_eq!(
            fresh(now.timestamp() - 301, now),
            Err(Rejected::StaleTimestamp)
        );
        assert_eq!(
            fresh(now.timestamp() + 301, now),
            Err(Rejected::StaleTimestamp)
        );
        assert_eq!(fresh(i64::MAX, now), Err(Rejected::StaleTimestamp));
    }
}
