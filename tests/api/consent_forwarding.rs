//! Kind `webhook` forwards each applied consent change as a signed `user.consent_changed`,
//! through the outbox, in order with the person's other rows (SPEC §8); the other kinds keep
//! the change and send nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{Duration, Utc};
use entity::email_outbox::{EventType, Status};
use serde_json::Value;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::admin::TOKEN;
use crate::consent::{MAILGUN_KEY, data, mailgun_event, post_mailgun, register};
use crate::helpers::{
    PATIENCE, SECRET, TestApp, spawn_app_with, use_provider, use_provider_kind, wait_until,
};

/// A webhook receiver that notes every request's body as it arrives and answers 503 to
/// `user.registered` while `down`, 200 to everything else.
struct Receiver {
    arrivals: Arc<Mutex<Vec<Request>>>,
    down: Arc<AtomicBool>,
}

impl Respond for Receiver {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
        self.arrivals
            .lock()
            .expect("not poisoned")
            .push(request.clone());
        if body["type"] == "user.registered" && self.down.load(Ordering::SeqCst) {
            ResponseTemplate::new(503)
        } else {
            ResponseTemplate::new(200)
        }
    }
}

async fn rows_of(app: &TestApp) -> Vec<entity::email_outbox::Model> {
    let mut rows = app.outbox_rows().await;
    rows.sort_by_key(|row| row.seq);
    rows
}

#[actix_web::test]
async fn kind_webhook_forwards_each_applied_change_signed_and_after_the_registration() {
    let provider = MockServer::start().await;
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let down = Arc::new(AtomicBool::new(true));
    Mock::given(wiremock::matchers::any())
        .respond_with(Receiver {
            arrivals: arrivals.clone(),
            down: down.clone(),
        })
        .mount(&provider)
        .await;
    let app = spawn_app_with(|s| {
        use_provider(s, &provider.uri());
        s.email_sync.mailgun.webhook_signing_key = MAILGUN_KEY.into();
        s.admin.token = Some(TOKEN.into());
    })
    .await;

    let id = register(&app, 1).await;
    wait_until(
        "the registration's first attempt failed",
        PATIENCE,
        || async { app.outbox_rows().await.iter().any(|row| row.attempts >= 1) },
    )
    .await;

    // While the registration is still undelivered: an unsubscribe, an older bounce (ignored),
    // the unsubscribe again (a replay, ignored), then a complaint.
    let now = Utc::now();
    let unsubscribed = data(
        "unsubscribed",
        "ev-1",
        "User1@Example.com",
        now - Duration::seconds(20),
    );
    let mut older = data(
        "failed",
        "ev-0",
        "user1@example.com",
        now - Duration::seconds(60),
    );
    older["severity"] = "permanent".into();
    let complained = data(
        "complained",
        "ev-2",
        "user1@example.com",
        now - Duration::seconds(5),
    );
    for (event, outcome) in [
        (unsubscribed.clone(), "applied"),
        (older, "ignored"),
        (unsubscribed, "ignored"),
        (complained, "applied"),
    ] {
        let response = post_mailgun(&app, &mailgun_event(MAILGUN_KEY, Utc::now(), event)).await;
        assert_eq!(response.status().as_u16(), 200);
        let taken: Value = response.json().await.expect("json");
        assert_eq!(taken["outcomes"][0], outcome, "{taken}");
    }
    let rows = rows_of(&app).await;
    let events: Vec<EventType> = rows.iter().map(|row| row.event).collect();
    assert_eq!(
        events,
        [
            EventType::UserRegistered,
            EventType::UserConsentChanged,
            EventType::UserConsentChanged
        ],
        "one row per applied change, none for the older event or the replay"
    );
    assert!(
        rows.iter().all(|row| row.contact == rows[0].contact),
        "every row is about the same contact"
    );

    down.store(false, Ordering::SeqCst);
    wait_until("every row is delivered", PATIENCE, || async {
        let rows = app.outbox_rows().await;
        rows.len() == 3 && rows.iter().all(|row| row.status == Status::Delivered)
    })
    .await;

    let own: Vec<String> = rows.iter().map(|row| row.id.to_string()).collect();
    let arrivals: Vec<Request> = arrivals
        .lock()
        .expect("not poisoned")
        .iter()
        .filter(|r| {
            r.headers
                .get("webhook-id")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|id| own.iter().any(|own| own == id))
        })
        .cloned()
        .collect();
    let verifier = standardwebhooks::Webhook::new(SECRET).expect("secret");
    let mut bodies = Vec::new();
    for request in &arrivals {
        verifier
            .verify(&request.body, &request.headers)
            .expect("a valid Standard Webhooks signature");
        let body: Value = serde_json::from_slice(&request.body).expect("JSON body");
        bodies.push(body);
    }
    let types: Vec<&str> = bodies
        .iter()
        .map(|b| b["type"].as_str().unwrap_or("?"))
        .collect();
    let first_change = types
        .iter()
        .position(|t| *t == "user.consent_changed")
        .expect("the changes were forwarded");
    assert!(
        types[..first_change]
            .iter()
            .all(|t| *t == "user.registered")
            && types[first_change..] == ["user.consent_changed", "user.consent_changed"],
        "the registration (retried) first, then each change once, in order: {types:?}"
    );
    let changes: Vec<&Value> = bodies[first_change..].iter().map(|b| &b["data"]).collect();
    assert_eq!(changes[0]["state"], "unsubscribed");
    assert_eq!(changes[1]["state"], "complained");
    for change in &changes {
        assert_eq!(change["user_id"], id.as_str());
        assert_eq!(change["email"], "user1@example.com");
        assert_eq!(change["source"], "provider event");
        assert_eq!(change["provider"], "mailgun");
    }
    let changed_at = |change: &Value| {
        chrono::DateTime::parse_from_rfc3339(change["changed_at"].as_str().expect("a time"))
            .expect("RFC 3339")
            .timestamp()
    };
    assert_eq!(
        changed_at(changes[0]),
        (now - Duration::seconds(20)).timestamp()
    );
    assert_eq!(
        changed_at(changes[1]),
        (now - Duration::seconds(5)).timestamp()
    );

    // The admin job view shows the contact's consent.
    let (status, job) = app
        .admin_json(
            reqwest::Method::GET,
            &format!("/admin/email-sync/jobs/{}", rows[2].id),
        )
        .await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["event"], "user.consent_changed");
    assert_eq!(job["consent"]["state"], "complained", "{job}");
    assert_eq!(job["consent"]["source"], "provider event");
}

#[actix_web::test]
async fn a_contacts_kind_keeps_the_change_and_forwards_nothing() {
    let provider = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(201).set_body_json(serde_json::json!({"id": 1})))
        .mount(&provider)
        .await;
    let app = spawn_app_with(|s| {
        use_provider_kind(
            s,
            signup::configuration::ProviderKind::Brevo,
            &provider.uri(),
            "brevo-key",
        );
        s.email_sync.mailgun.webhook_signing_key = MAILGUN_KEY.into();
        s.admin.token = Some(TOKEN.into());
    })
    .await;
    let id = register(&app, 1).await;
    let event = data("unsubscribed", "ev-1", "user1@example.com", Utc::now());
    let response = post_mailgun(&app, &mailgun_event(MAILGUN_KEY, Utc::now(), event)).await;
    assert_eq!(response.status().as_u16(), 200);

    let (_, registration) = app
        .admin_json(reqwest::Method::GET, &format!("/api/v1/registrations/{id}"))
        .await;
    assert_eq!(registration["consent"]["state"], "unsubscribed");
    let rows = app.outbox_rows().await;
    assert_eq!(rows.len(), 1, "only the registration's row");
    assert_eq!(rows[0].event, EventType::UserRegistered);
    let (status, job) = app
        .admin_json(
            reqwest::Method::GET,
            &format!("/admin/email-sync/jobs/{}", rows[0].id),
        )
        .await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["consent"]["state"], "unsubscribed", "{job}");
}

/// An erasure and a provider event about the same person at once, many times (SPEC §6, §8):
/// whichever commits first, the other sees it. No forwarded change is left pending, and none
/// keeps the erased address; both requests succeed.
#[actix_web::test]
async fn an_erasure_and_a_provider_event_at_once_leave_no_forwarded_address_behind() {
    let app = spawn_app_with(|s| {
        // Nothing listens: rows stay as the two transactions left them.
        s.email_sync.mailgun.webhook_signing_key = MAILGUN_KEY.into();
        s.admin.token = Some(TOKEN.into());
    })
    .await;
    for n in 0..12 {
        let id = register(&app, n).await;
        let email = format!("user{n}@example.com");
        let event = data("unsubscribed", &format!("race-{n}"), &email, Utc::now());
        let body = mailgun_event(MAILGUN_KEY, Utc::now(), event);
        let path = format!("/admin/users/{id}");
        let erase = app.admin(reqwest::Method::DELETE, &path, Some(TOKEN));
        let (erased, hooked) = futures::join!(erase, post_mailgun(&app, &body));
        assert_eq!(erased.status().as_u16(), 202, "round {n}");
        assert_eq!(hooked.status().as_u16(), 200, "round {n}");
        let user_id: uuid::Uuid = id.parse().expect("a uuid");
        for row in rows_of(&app).await.iter().filter(|r| r.user_id == user_id) {
            if row.event == EventType::UserConsentChanged {
                assert_eq!(row.status, Status::Cancelled, "round {n}: {row:?}");
                assert!(!row.payload.contains(&email), "round {n}: {row:?}");
            }
        }
    }
}
