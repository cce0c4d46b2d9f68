//! Real email providers' APIs (SPEC §5), against local fakes that check method, path, auth and
//! body and answer as each provider's reference documents. No test reaches the internet.

use std::time::Duration;

use entity::email_outbox::Status;
use secrecy::SecretString;
use serde_json::json;
use wiremock::matchers::{body_json, body_string, header, method, path};
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
        use signup::configuration::ProviderKind;
        s.email_sync.kind = match kind.as_str() {
            "brevo" => ProviderKind::Brevo,
            "mailchimp" => ProviderKind::Mailchimp,
            "sendgrid" => ProviderKind::Sendgrid,
            "mailgun" => ProviderKind::Mailgun,
            _ => ProviderKind::Resend,
        };
        s.email_sync.mailchimp.api_key = SecretString::from(KEY);
        s.email_sync.mailchimp.base_url = Some(url(&base));
        s.email_sync.mailchimp.list_id = "list1".into();
        s.email_sync.sendgrid.api_key = SecretString::from(KEY);
        s.email_sync.sendgrid.base_url = url(&base);
        s.email_sync.sendgrid.list_ids = vec!["l-1".into()];
        s.email_sync.mailgun.api_key = SecretString::from(KEY);
        s.email_sync.mailgun.base_url = url(&base);
        s.email_sync.mailgun.list = "news@mg.example.com".into();
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

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

#[actix_web::test]
async fn mailchimp_gets_an_upsert_of_the_member_by_its_hash_without_a_status() {
    let provider = MockServer::start().await;
    let hash = signup::email::provider::subscriber_hash("user1@example.com");
    Mock::given(method("PUT"))
        .and(path(format!("/3.0/lists/list1/members/{hash}")))
        .and(header("authorization", basic("signup", KEY).as_str()))
        .and(body_json(json!({
            "email_address": "user1@example.com",
            "status_if_new": "pending",
            "merge_fields": {"USERNAME": "user1"},
        })))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"id": hash, "status": "pending"})),
        )
        .expect(1)
        .mount(&provider)
        .await;
    let app = app_for("mailchimp", &provider).await;

    app.register_all(1..2).await;

    app.wait_all_delivered(1).await;
}

#[actix_web::test]
async fn mailchimp_compliance_state_makes_the_row_dead_with_the_providers_title() {
    let provider = MockServer::start().await;
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "type": "https://mailchimp.com/developer/marketing/docs/errors/",
            "title": "Member In Compliance State",
            "status": 400,
            "detail": "user1@example.com is already a list member in compliance state due to unsubscribe, bounce, or compliance review.",
        })))
        .expect(1)
        .mount(&provider)
        .await;
    let app = app_for("mailchimp", &provider).await;

    app.register_all(1..2).await;

    wait_until("the row is dead", Duration::from_secs(30), || async {
        app.outbox_rows().await[0].status == Status::Dead
    })
    .await;
    let row = &app.outbox_rows().await[0];
    assert_eq!(row.last_status, Some(400));
    assert!(
        row.last_error
            .as_deref()
            .is_some_and(|e| e.contains("Member In Compliance State")),
        "{:?}",
        row.last_error
    );
}

#[actix_web::test]
async fn sendgrid_202_counts_as_delivered_and_its_429_reset_is_an_epoch() {
    let provider = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path("/v3/marketing/contacts"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .and(body_json(json!({
            "list_ids": ["l-1"],
            "contacts": [{"email": "user1@example.com", "first_name": "user1"}],
        })))
        .respond_with(ResponseTemplate::new(202).set_body_json(json!({"job_id": "j-1"})))
        .expect(1)
        .mount(&provider)
        .await;
    let reset = chrono::Utc::now().timestamp() + 3000;
    Mock::given(method("PUT"))
        .and(body_json(json!({
            "list_ids": ["l-1"],
            "contacts": [{"email": "user2@example.com", "first_name": "user2"}],
        })))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("x-ratelimit-reset", reset.to_string().as_str()),
        )
        .mount(&provider)
        .await;
    let app = app_with("sendgrid", &provider, |s| {
        s.email_sync.retry.max_interval = Duration::from_secs(7200);
    })
    .await;

    app.register_all(1..3).await;

    wait_until(
        "one delivered, one rate-limited",
        Duration::from_secs(30),
        || async {
            let rows = app.outbox_rows().await;
            rows.iter().any(|r| r.status == Status::Delivered)
                && rows.iter().any(|r| r.last_status == Some(429))
        },
    )
    .await;
    let limited = app
        .outbox_rows()
        .await
        .into_iter()
        .find(|r| r.last_status == Some(429))
        .expect("the rate-limited row");
    let wait = limited.next_attempt_at - chrono::Utc::now();
    assert!(
        wait > chrono::Duration::seconds(2900),
        "next attempt in {wait}"
    );
}

#[actix_web::test]
async fn mailgun_gets_a_form_upsert_of_the_list_member_with_basic_auth() {
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v3/lists/news@mg.example.com/members"))
        .and(header("authorization", basic("api", KEY).as_str()))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(body_string(
            "address=user1%40example.com&name=user1&upsert=yes",
        ))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"message": "Mailing list member has been created"})),
        )
        .expect(1)
        .mount(&provider)
        .await;
    let app = app_for("mailgun", &provider).await;

    app.register_all(1..2).await;

    app.wait_all_delivered(1).await;
}

#[actix_web::test]
async fn max_requests_per_second_paces_every_delivery_in_flight_together() {
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&provider)
        .await;
    let base = provider.uri();
    let app = spawn_app_with(move |s| {
        use_provider(s, &base);
        // Two a second, six rows, sixteen deliveries allowed in flight at once.
        s.email_sync.max_requests_per_second = Some(2);
    })
    .await;
    let started = std::time::Instant::now();

    app.register_all(1..7).await;
    app.wait_all_delivered(6).await;

    // A burst of two, then one every 500 ms: the sixth no sooner than 2 s after the first.
    // (A lower bound only: a slow machine can only take longer.)
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900),
        "six deliveries in {took:?}"
    );
}
