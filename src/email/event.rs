//! The events signup sends to the email provider, as one set of types used by everyone who
//! writes or reads them: the registration's transaction (the outbox row's payload), the
//! webhook sender, the operators' views of a job, and the mock provider.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `user.registered`: somebody's account now exists. Stored as the outbox row's payload, in
/// the user's own transaction, and sent as the event's `data`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UserRegistered {
    pub user_id: Uuid,
    /// As the person spelled it.
    pub username: String,
    /// As the person spelled it.
    pub email: String,
    /// RFC 3339 with microseconds, as stored.
    #[serde(with = "rfc3339_micros")]
    pub registered_at: DateTime<Utc>,
}

/// `user.deleted`: the user was erased here; remove them at the provider (SPEC §6). Stored as
/// the erasure's outbox row's payload until delivered, then scrubbed of the address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UserDeleted {
    pub user_id: Uuid,
    /// The address the provider knows them by.
    pub email: String,
}

impl UserDeleted {
    /// The outbox row's payload.
    pub(crate) fn to_payload(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// `user.consent_changed`: the provider told us the user's consent changed (SPEC §8). Written
/// with the change, in the consent's transaction, when `email_sync.kind` is `webhook`; sent in
/// order with the user's other rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UserConsentChanged {
    pub user_id: Uuid,
    /// The address the provider knows them by, as the person spelled it.
    pub email: String,
    /// The new state (SPEC §8).
    pub state: crate::domain::ConsentState,
    /// When the provider says it changed (the event's time), RFC 3339 with microseconds.
    #[serde(with = "rfc3339_micros")]
    pub changed_at: DateTime<Utc>,
    /// Who said it (`provider event`).
    pub source: crate::domain::Source,
    /// Which provider said it (`mailchimp`, `sendgrid`, …).
    pub provider: String,
}

impl UserConsentChanged {
    /// The outbox row's payload.
    pub(crate) fn to_payload(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// What is left of a payload once its user is erased: the id only (SPEC §6).
pub(crate) fn scrubbed_payload(user_id: Uuid) -> String {
    serde_json::json!({ "user_id": user_id, "erased": true }).to_string()
}

/// An event by its type, the way the Standard Webhooks body names it (`type` and `data`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
// Named as the events are (`user.registered`, `user.deleted`, `user.consent_changed`).
#[allow(clippy::enum_variant_names)]
pub(crate) enum Event {
    #[serde(rename = "user.registered")]
    UserRegistered(UserRegistered),
    #[serde(rename = "user.deleted")]
    UserDeleted(UserDeleted),
    #[serde(rename = "user.consent_changed")]
    UserConsentChanged(UserConsentChanged),
}

impl Event {
    /// The event an outbox row of `event` type carries in `payload`.
    pub(crate) fn from_row(
        event: entity::email_outbox::EventType,
        payload: &str,
    ) -> Result<Self, serde_json::Error> {
        use entity::email_outbox::EventType as T;
        Ok(match event {
            T::UserRegistered => Event::UserRegistered(serde_json::from_str(payload)?),
            T::UserDeleted => Event::UserDeleted(serde_json::from_str(payload)?),
            T::UserConsentChanged => Event::UserConsentChanged(serde_json::from_str(payload)?),
        })
    }
}

/// The webhook body (SPEC §3.1): the event, and when this attempt was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WebhookBody {
    #[serde(flatten)]
    pub event: Event,
    /// RFC 3339, whole seconds: this attempt's time.
    #[serde(with = "rfc3339_secs")]
    pub timestamp: DateTime<Utc>,
}

/// `DateTime<Utc>` as RFC 3339 with a fixed number of fractional digits.
macro_rules! rfc3339_with {
    ($name:ident, $format:expr) => {
        mod $name {
            use chrono::{DateTime, Utc};
            use serde::{Deserialize, Deserializer, Serializer};

            pub(super) fn serialize<S: Serializer>(
                at: &DateTime<Utc>,
                s: S,
            ) -> Result<S::Ok, S::Error> {
                s.serialize_str(&at.to_rfc3339_opts($format, true))
            }

            pub(super) fn deserialize<'de, D: Deserializer<'de>>(
                d: D,
            ) -> Result<DateTime<Utc>, D::Error> {
                let text = String::deserialize(d)?;
                DateTime::parse_from_rfc3339(&text)
                    .map(|at| at.with_timezone(&Utc))
                    .map_err(serde::de::Error::custom)
            }
        }
    };
}
rfc3339_with!(rfc3339_micros, chrono::SecondsFormat::Micros);
rfc3339_with!(rfc3339_secs, chrono::SecondsFormat::Secs);

impl UserRegistered {
    /// The outbox row's payload.
    pub(crate) fn to_payload(&self) -> String {
        // Serializing plain strings and numbers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads an outbox row's payload.
    #[cfg(test)]
    pub(crate) fn from_payload(payload: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(payload)
    }
}

impl WebhookBody {
    /// The body of one attempt at `now`.
    pub(crate) fn new(event: Event, now: DateTime<Utc>) -> Self {
        Self {
            event,
            timestamp: now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn alice() -> UserRegistered {
        UserRegistered {
            user_id: Uuid::nil(),
            username: "Alice".into(),
            email: "alice@example.com".into(),
            registered_at: Utc
                .with_ymd_and_hms(2026, 11, 30, 12, 0, 0)
                .single()
                .expect("a time"),
        }
    }

    #[test]
    fn a_payload_reads_back_as_written_and_keeps_its_stored_shape() {
        let payload = alice().to_payload();
        assert_eq!(
            payload,
            r#"{"user_id":"00000000-0000-0000-0000-000000000000","username":"Alice","email":"alice@example.com","registered_at":"2026-11-30T12:00:00.000000Z"}"#
        );
        assert_eq!(
            UserRegistered::from_payload(&payload).expect("reads"),
            alice()
        );
    }

    #[test]
    fn the_webhook_body_names_the_type_and_carries_the_data_and_the_attempt_time() {
        let now = Utc
            .with_ymd_and_hms(2026, 12, 1, 8, 30, 0)
            .single()
            .expect("a time");
        let body = WebhookBody::new(Event::UserRegistered(alice()), now);
        let json: serde_json::Value = serde_json::to_value(&body).expect("json");
        assert_eq!(json["type"], "user.registered");
        assert_eq!(json["timestamp"], "2026-12-01T08:30:00Z");
        assert_eq!(json["data"]["email"], "alice@example.com");
        let back: WebhookBody = serde_json::from_value(json).expect("reads back");
        assert_eq!(back, body);
    }
}
