//! Property test of the consent store through its routes, on the suite's database (SQLite, or
//! PostgreSQL in CI's second pass): any set of provider events about a person, from two kinds,
//! sent in any order with replays mixed in, one after another or all at once, ends in the state of the newest event (event time,
//! then event id), the one SPEC §8 rule. The seed of a failing case is printed by proptest.

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::admin::TOKEN;
use crate::consent::{MAILGUN_KEY, data, mailgun_event};
use crate::helpers::{registration, serve_in_thread};

const MAILCHIMP_SECRET: &str = "consent-order-mailchimp-secret-0123456789";

/// One provider event: Mailgun's (its own id) or Mailchimp's (named by the body's hash).
#[derive(Debug, Clone)]
struct ProviderEvent {
    mailchimp: bool,
    at: DateTime<Utc>,
    /// Which of the kind's three consent events.
    which: usize,
    /// Mailgun's event id; for Mailchimp, what makes the body (and so its id) differ.
    tag: String,
}

impl ProviderEvent {
    /// The state it sets, as the registration view names it.
    fn state(&self) -> &'static str {
        if self.mailchimp {
            ["subscribed", "unsubscribed", "cleaned"][self.which]
        } else {
            ["unsubscribed", "complained", "bounced"][self.which]
        }
    }

    /// The route, its content type and body, and the event id signup will know it by. Event
    /// ids are unique at the provider, so Mailgun's are made unique per person.
    fn request(&self, email: &str, person: usize) -> (String, &'static str, String, String) {
        if self.mailchimp {
            let kind = ["subscribe", "unsubscribe", "cleaned"][self.which];
            let body = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("type", kind)
                .append_pair("fired_at", &self.at.format("%Y-%m-%d %H:%M:%S").to_string())
                .append_pair("data[id]", &self.tag)
                .append_pair("data[list_id]", "a6b5da1054")
                .append_pair("data[email]", email)
                .finish();
            let id: String = Sha256::digest(body.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            (
                format!("/hooks/mailchimp/{MAILCHIMP_SECRET}"),
                "application/x-www-form-urlencoded",
                body,
                id,
            )
        } else {
            let kind = ["unsubscribed", "complained", "failed"][self.which];
            let id = format!("p{person}-{}", self.tag);
            let mut event = data(kind, &id, email, self.at);
            if kind == "failed" {
                event["severity"] = "permanent".into();
            }
            (
                "/hooks/mailgun".into(),
                "application/json",
                mailgun_event(MAILGUN_KEY, Utc::now(), event).to_string(),
                id,
            )
        }
    }
}

/// A set of events, the order they are sent in (with some sent twice: replays), and whether
/// they are sent all at once (as a provider's parallel deliveries reach several workers).
fn schedules() -> impl Strategy<Value = Vec<ProviderEvent>> {
    let event = (any::<bool>(), 0i64..12, 0usize..3, "[a-f]{1,2}").prop_map(
        |(mailchimp, offset, which, tag)| ProviderEvent {
            mailchimp,
            at: DateTime::from_timestamp(1_800_000_000 + offset, 0).unwrap_or_default(),
            which,
            tag,
        },
    );
    (
        proptest::collection::vec(event, 1..8),
        proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
    )
        .prop_flat_map(|(mut events, replays)| {
            // One event per id: two different events under one id is not something a provider
            // sends, and which of them arrived first would decide the state.
            let mut ids = std::collections::HashSet::new();
            events.retain(|e| ids.insert((e.mailchimp, e.tag.clone())));
            let mut sent = events.clone();
            sent.extend(
                replays
                    .iter()
                    .map(|i| events[i.index(events.len())].clone()),
            );
            Just(sent).prop_shuffle()
        })
}

#[test]
fn any_order_of_provider_events_with_replays_ends_in_the_newest_events_state() {
    // The server runs in an actix System of its own thread; proptest drives it from here.
    let served = serve_in_thread(|s| {
        s.email_sync.mailgun.webhook_signing_key = MAILGUN_KEY.into();
        s.email_sync.mailchimp.webhook_secret = MAILCHIMP_SECRET.into();
        s.admin.token = Some(TOKEN.into());
    });
    let address = served.address.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = reqwest::Client::new();
    let person = std::cell::Cell::new(0);

    let config = ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    };
    proptest!(config, |(sent in schedules(), at_once in any::<bool>())| {
        person.set(person.get() + 1);
        let (id, email) = runtime.block_on(register(&client, &address, person.get()));
        // What SPEC §8 says the state is: of each event id's first arrival (a later one is a
        // replay), the newest by (event time, event id).
        let requests: Vec<_> = sent.iter().map(|e| e.request(&email, person.get())).collect();
        let post = |(path, content_type, body, _): (String, &'static str, String, String)| {
            let request = client
                .post(format!("{address}{path}"))
                .header("content-type", content_type)
                .body(body);
            async move { request.send().await.map(|r| r.status().as_u16()) }
        };
        let statuses: Vec<u16> = runtime.block_on(async {
            if at_once {
                futures::future::join_all(requests.iter().cloned().map(post)).await
            } else {
                let mut statuses = Vec::new();
                for request in requests.iter().cloned() {
                    statuses.push(post(request).await);
                }
                statuses
            }
        })
        .into_iter()
        .map(|status| status.expect("answered"))
        .collect();
        prop_assert!(statuses.iter().all(|s| *s == 200), "{:?}", statuses);
        // What SPEC §8 says the state is: the newest event by (event time, event id).
        let newest = sent
            .iter()
            .zip(&requests)
            .map(|(event, (_, _, _, id))| (event.at, id.clone(), event.state()))
            .max_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let (at, _, state) = newest.expect("at least one event");
        let consent = runtime.block_on(consent_of(&client, &address, &id));
        prop_assert_eq!(&consent["state"], state, "sent {:?} (at once: {}): {}", sent, at_once, consent);
        prop_assert_eq!(&consent["source"], "provider event");
        let changed_at = consent["changed_at"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        prop_assert_eq!(changed_at, Some(at));
    });

    drop(served);
}

/// Registers person `n`: their id and address.
async fn register(client: &reqwest::Client, address: &str, n: usize) -> (String, String) {
    let body = registration(n);
    let created: Value = client
        .post(format!("{address}/api/v1/registrations"))
        .json(&body)
        .send()
        .await
        .expect("answered")
        .json()
        .await
        .expect("json");
    let id = created["id"].as_str().expect("registered").to_owned();
    (id, body["email"].as_str().unwrap_or_default().to_owned())
}

async fn consent_of(client: &reqwest::Client, address: &str, id: &str) -> Value {
    let body: Value = client
        .get(format!("{address}/api/v1/registrations/{id}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("answered")
        .json()
        .await
        .expect("json");
    body["consent"].clone()
}
