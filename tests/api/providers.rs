//! Real email providers' APIs (SPEC §5), against local fakes that check method, path, auth and
//! body and answer as each provider's reference documents. No test reaches the internet.

use std::time::Duration;

use entity::email_outbox::Status;
use secrecy::SecretString;
use serde_json::json;
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{TestApp, spawn_app_with, url, use_provider, wait_until};

const KEY: &str = "xkeysib-test-key";

async fn app_for(kind: &str, provider: &MockServer) -> TestApp {
    app_with(kind, provider, |_| {}).await
}

async fn app_with(
    kind: &str,
    provider: &MockServer,
    adjust: impl FnOnce(&mut signup::configuration::Settings),
) -> TestApp {
    let base = provider.uri();
    let kind = kind.to_owned();
    spawn_app_with(move |s| {
        use_provider(s, &base);
        s.email_sync.kind = match kind.as_str() {
            "brevo" => signup::configuration::ProviderKind::Brevo,
            _ => signup::configuration::ProviderKind::Resend,
        };
        s.email_sync.brevo.api_key = SecretString::from(KEY);
        s.email_sync.brevo.base_url = url(&base);
        s.email_sync.brevo.list_ids = vec![3, 7];
        s.email_sync.resend.api_key = SecretString::from(KEY);
        s.email_sync.resend.base_url = url(&base);
        adjust(s);
    })
    .await
}

#[actix_web::test]
async fn brevo_gets_an_upsert_of_the_contact_with_its_key_lists_and_username_attribute() {
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v3/contacts"))
        .and(header("api-key", KEY))
        .and(body_json(json!({
            "email": "user1@example.com",
            "attributes": {"USERNAME": "user1"},
            "listIds": [3, 7],
            "updateEnabled": true,
        })))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 42})))
        .expect(1)
        .mount(&provider)
        .await;
    let app = app_for("brevo", &provider).await;

    app.register_all(1..2).await;

    app.wait_all_delivered(1).await;
    assert_eq!(app.outbox_rows().await[0].last_status, Some(201));
}

#[actix_web::test]
async fn brevo_429_waits_for_its_ratelimit_reset_header() {
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("x-sib-ratelimit-reset", "3000"))
        .mount(&provider)
        .await;
    let app = app_with("brevo", &provider, |s| {
        s.email_sync.retry.max_interval = Duration::from_secs(7200);
    })
    .await;

    app.register_all(1..2).await;

    wait_until("the 429 is recorded", Duration::from_secs(30), || async {
        app.outbox_rows().await[0].last_status == Some(429)
    })
    .await;
    let row = &app.outbox_rows().await[0];
    assert_eq!(row.status, Status::Pending);
    // The backoff alone would retry in about 100 ms; the header asked for 3000 s.
    let wait = row.next_attempt_at - chrono::Utc::now();
    assert!(
        wait > chrono::Duration::seconds(2900),
        "next attempt in {wait}, not after the provider's reset"
    );
}

#[actix_web::test]
async fn resend_gets_the_contact_with_a_bearer_key_and_already_exists_counts_as_delivered() {
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/contacts"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .and(body_json(json!({
            "email": "user1@example.com",
            "first_name": "user1",
            "unsubscribed": false,
        })))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": "c1"})))
        .expect(1)
        .mount(&provider)
        .await;
    Mock::given(method("POST"))
        .and(path("/contacts"))
        .and(body_json(json!({
            "email": "user2@example.com",
            "first_name": "user2",
            "unsubscribed": false,
        })))
        .respond_with(ResponseTemplate::new(409).set_body_json(
            json!({"statusCode": 409, "name": "validation_error", "message": "Contact already exists"}),
        ))
        .expect(1)
        .mount(&provider)
        .await;
    let app = app_for("resend", &provider).await;

    app.register_all(1..3).await;

    app.wait_all_delivered(2).await;
}

#[actix_web::test]
async fn a_provider_kind_without_its_api_key_stops_start_up_naming_the_key() {
    let err = signup::configuration::Settings::from_sources(
        "[email_sync]\nkind = \"brevo\"\n",
        "test.toml",
        [],
    )
    .expect_err("no key")
    .to_string();
    assert!(err.contains("email_sync.brevo.api_key"), "{err}");
}
