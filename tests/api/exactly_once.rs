//! SPEC §5's promise at volume: with each provider kind, a run of 10 000 registrations reaches
//! the provider exactly once per row (batched where the API batches), through transient
//! failures, on SQLite and (with `TEST_DATABASE=postgres`) PostgreSQL. The fake provider counts
//! the addresses it accepted; the outbox must end with every row delivered.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use entity::email_outbox::{self, Status};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::json;
use signup::configuration::ProviderKind;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::helpers::{spawn_app_with, use_provider_kind, wait_until};

const USERS: usize = 10_000;
/// Every this many requests, the fake answers 503 (a transient failure: retried, not counted).
const FAIL_EVERY: usize = 7;

/// A provider of `kind` that reads each request as that API's (the mock provider's own
/// reading), counts every address of a request it accepts, and fails one request in
/// [`FAIL_EVERY`].
struct Counting {
    kind: ProviderKind,
    requests: AtomicUsize,
    accepted: std::sync::Arc<Mutex<HashMap<String, u32>>>,
}

impl Respond for Counting {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        if n % FAIL_EVERY == FAIL_EVERY / 2 {
            return ResponseTemplate::new(503);
        }
        let path = request.url.path();
        let batch = match self.kind {
            ProviderKind::Mailchimp => !path.contains("/members/"),
            ProviderKind::Mailgun => path.ends_with("members.json"),
            ProviderKind::Sendgrid => true,
            _ => false,
        };
        let body = String::from_utf8_lossy(&request.body);
        let Ok(emails) = signup::mock_provider::addresses(self.kind, batch, &body) else {
            return ResponseTemplate::new(400);
        };
        if emails.is_empty() {
            return ResponseTemplate::new(400);
        }
        let mut accepted = self.accepted.lock().expect("not poisoned");
        for email in emails {
            *accepted.entry(email).or_default() += 1;
        }
        match self.kind {
            ProviderKind::Webhook => ResponseTemplate::new(204),
            ProviderKind::Mailchimp => ResponseTemplate::new(200)
                .set_body_json(json!({"new_members": [], "updated_members": [], "errors": []})),
            ProviderKind::Sendgrid => {
                ResponseTemplate::new(202).set_body_json(json!({"job_id": "j"}))
            }
            ProviderKind::Mailgun => ResponseTemplate::new(200)
                .set_body_json(json!({"message": "Mailing list has been updated"})),
            ProviderKind::Brevo | ProviderKind::Resend => {
                ResponseTemplate::new(201).set_body_json(json!({"id": 1}))
            }
        }
    }
}

async fn every_row_reaches_the_provider_exactly_once(kind: ProviderKind) {
    let provider = MockServer::start().await;
    let accepted = std::sync::Arc::new(Mutex::new(HashMap::new()));
    Mock::given(wiremock::matchers::any())
        .respond_with(Counting {
            kind,
            requests: AtomicUsize::new(0),
            accepted: std::sync::Arc::clone(&accepted),
        })
        .mount(&provider)
        .await;
    let base = provider.uri();
    let app = spawn_app_with(move |s| {
        use_provider_kind(s, kind, &base, "test-key");
        // Unpaced: Brevo's and Resend's 10/s and 5/s would make this a half-hour test.
        s.email_sync.max_requests_per_second = Some(0);
    })
    .await;

    app.register_directly(0..USERS, 1000).await;

    let count = |status: Status| {
        email_outbox::Entity::find()
            .filter(email_outbox::Column::Status.eq(status))
            .count(&app.db)
    };
    wait_until(
        &format!("{USERS} rows delivered ({kind:?})"),
        Duration::from_secs(240),
        || async { count(Status::Delivered).await.expect("counts") == USERS as u64 },
    )
    .await;
    assert_eq!(count(Status::Dead).await.expect("counts"), 0);
    assert_eq!(count(Status::Pending).await.expect("counts"), 0);
    let accepted = accepted.lock().expect("not poisoned").clone();
    assert_eq!(accepted.len(), USERS, "every user reached the provider");
    let repeated: Vec<_> = accepted.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        repeated.is_empty(),
        "accepted more than once: {:?}",
        &repeated[..repeated.len().min(5)]
    );
    let requests = provider.received_requests().await.map_or(0, |r| r.len());
    if kind.batch_limit() > 1 {
        assert!(
            requests < USERS / 10,
            "{kind:?} batches: {requests} requests for {USERS} rows"
        );
    }
}

#[actix_web::test]
async fn webhook_delivers_a_10000_registration_run_exactly_once_per_row() {
    every_row_reaches_the_provider_exactly_once(ProviderKind::Webhook).await;
}

#[actix_web::test]
async fn mailchimp_delivers_a_10000_registration_run_exactly_once_per_row() {
    every_row_reaches_the_provider_exactly_once(ProviderKind::Mailchimp).await;
}

#[actix_web::test]
async fn sendgrid_delivers_a_10000_registration_run_exactly_once_per_row() {
    every_row_reaches_the_provider_exactly_once(ProviderKind::Sendgrid).await;
}

#[actix_web::test]
async fn mailgun_delivers_a_10000_registration_run_exactly_once_per_row() {
    every_row_reaches_the_provider_exactly_once(ProviderKind::Mailgun).await;
}

#[actix_web::test]
async fn brevo_delivers_a_10000_registration_run_exactly_once_per_row() {
    every_row_reaches_the_provider_exactly_once(ProviderKind::Brevo).await;
}

#[actix_web::test]
async fn resend_delivers_a_10000_registration_run_exactly_once_per_row() {
    every_row_reaches_the_provider_exactly_once(ProviderKind::Resend).await;
}
