//! Real email providers' APIs (SPEC §5), against local fakes that check method, path, auth and
//! body and answer as each provider's reference documents. No test reaches the internet.

use std::time::Duration;

use entity::email_outbox::Status;
use serde_json::json;
use wiremock::matchers::{body_json, body_string, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{TestApp, spawn_app_with, use_provider, use_provider_kind, wait_until};

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
        use signup::configuration::ProviderKind;
        let kind = match kind.as_str() {
            "brevo" => ProviderKind::Brevo,
            "mailchimp" => ProviderKind::Mailchimp,
            "sendgrid" => ProviderKind::Sendgrid,
            "mailgun" => ProviderKind::Mailgun,
            _ => ProviderKind::Resend,
        };
        use_provider_kind(s, kind, &base, KEY);
        s.email_sync.sendgrid.list_ids = vec!["l-1".into()];
        s.email_sync.brevo.list_ids = vec![3, 7];
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
async fn mailchimp_compliance_state_records_the_persons_consent_and_the_row_is_done_as_suppressed()
{
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

    // SPEC §8: the answer sets the person's consent instead of leaving only a dead row.
    wait_until("the row is done", Duration::from_secs(30), || async {
        app.outbox_rows().await[0].status == Status::Delivered
    })
    .await;
    let row = &app.outbox_rows().await[0];
    assert!(
        row.last_error
            .as_deref()
            .is_some_and(|e| e.contains("suppressed") && e.contains("Member In Compliance State")),
        "{:?}",
        row.last_error
    );
    wait_until(
        "the consent is recorded",
        Duration::from_secs(30),
        || async {
            use sea_orm::EntityTrait;
            entity::consent::Entity::find()
                .all(&app.db)
                .await
                .expect("consent")
                .iter()
                .any(|c| c.state == "unsubscribed" && c.source == "provider answer")
        },
    )
    .await;
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

/// The request bodies `provider` received, as JSON (none that is not).
async fn json_bodies(provider: &MockServer) -> Vec<serde_json::Value> {
    provider
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter_map(|r| serde_json::from_slice(&r.body).ok())
        .collect()
}

#[actix_web::test]
async fn mailchimp_batch_answer_with_member_errors_completes_each_row_by_its_own_outcome() {
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/3.0/lists/list1"))
        .and(header("authorization", basic("signup", KEY).as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "new_members": [{"email_address": "user1@example.com"}, {"email_address": "user4@example.com"}],
            "updated_members": [],
            "errors": [
                {"email_address": "User2@Example.com", "error": "user2@example.com looks fake or invalid, please enter a real email address.", "error_code": "ERROR_GENERIC"},
                {"email_address": "user3@example.com", "error": "user3@example.com has signed up to a lot of lists very recently; we're not allowing more signups for now", "error_code": "ERROR_GENERIC"},
            ],
            "total_created": 2, "total_updated": 0, "error_count": 2,
        })))
        .expect(1)
        .mount(&provider)
        .await;
    let app = app_with("mailchimp", &provider, |s| {
        s.email_sync.retry.max_interval = Duration::from_secs(7200);
    })
    .await;

    app.register_directly(1..5, 4).await;

    wait_until(
        "every row has its outcome",
        Duration::from_secs(30),
        || async { app.outbox_rows().await.iter().all(|r| r.attempts == 1) },
    )
    .await;
    let bodies = json_bodies(&provider).await;
    let members = bodies[0]["members"].as_array().expect("members");
    assert_eq!(members.len(), 4, "one request for the four rows");
    assert_eq!(bodies[0]["update_existing"], true);
    for member in members {
        assert_eq!(member["status_if_new"], "pending");
        assert!(member.get("status").is_none(), "never `status`: {member}");
        assert!(member["merge_fields"]["USERNAME"].is_string());
    }
    let by_user = |n: usize| {
        let user = app.outbox_rows();
        async move {
            let payload = format!("user{n}@example.com");
            user.await
                .into_iter()
                .find(|r| r.payload.contains(&payload))
                .expect("the row")
        }
    };
    assert_eq!(by_user(1).await.status, Status::Delivered);
    assert_eq!(by_user(4).await.status, Status::Delivered);
    let fake = by_user(2).await;
    assert_eq!(fake.status, Status::Dead);
    assert!(
        fake.last_error
            .as_deref()
            .is_some_and(|e| e.contains("looks fake or invalid")),
        "{:?}",
        fake.last_error
    );
    let busy = by_user(3).await;
    assert_eq!(busy.status, Status::Pending);
    assert!(busy.next_attempt_at - chrono::Utc::now() > chrono::Duration::minutes(55));
}

/// SendGrid as it refuses a request with one bad contact: 400 for the whole request.
struct RefusesUser3;

impl wiremock::Respond for RefusesUser3 {
    fn respond(&self, request: &wiremock::Request) -> ResponseTemplate {
        let body = String::from_utf8_lossy(&request.body);
        if body.contains("\"user3@example.com\"") {
            ResponseTemplate::new(400).set_body_json(
                json!({"errors": [{"field": "contacts[0].email", "message": "invalid email"}]}),
            )
        } else {
            ResponseTemplate::new(202).set_body_json(json!({"job_id": "j"}))
        }
    }
}

#[actix_web::test]
async fn a_batch_refused_as_a_whole_is_split_in_halves_down_to_the_rows_the_provider_refuses() {
    let provider = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path("/v3/marketing/contacts"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .respond_with(RefusesUser3)
        .mount(&provider)
        .await;
    let app = app_for("sendgrid", &provider).await;

    app.register_directly(1..9, 8).await;

    wait_until(
        "every row has its outcome",
        Duration::from_secs(30),
        || async { app.outbox_rows().await.iter().all(|r| r.attempts == 1) },
    )
    .await;
    let rows = app.outbox_rows().await;
    let dead: Vec<_> = rows.iter().filter(|r| r.status == Status::Dead).collect();
    assert_eq!(dead.len(), 1, "only the refused row is dead");
    assert!(dead[0].payload.contains("user3@example.com"));
    assert_eq!(dead[0].last_status, Some(400));
    assert_eq!(
        rows.iter()
            .filter(|r| r.status == Status::Delivered)
            .count(),
        7
    );
    // 8 → 4 + 4 (one refused); that 4 → 2 + 2 (one refused); that 2 → 1 + 1 (one refused).
    // Rows due at the same moment come in any order, so which half holds user3 varies.
    let mut sizes: Vec<usize> = json_bodies(&provider)
        .await
        .iter()
        .map(|b| b["contacts"].as_array().map_or(0, Vec::len))
        .collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [1, 1, 2, 2, 4, 4, 8]);
}

#[actix_web::test]
async fn mailgun_batch_goes_to_members_json_as_a_form_with_a_json_array() {
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v3/lists/news@mg.example.com/members.json"))
        .and(header("authorization", basic("api", KEY).as_str()))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"list": {"members_count": 3}, "message": "Mailing list has been updated", "task-id": "t1"}),
        ))
        .expect(1)
        .mount(&provider)
        .await;
    let app = app_for("mailgun", &provider).await;

    app.register_directly(1..4, 3).await;

    app.wait_all_delivered(3).await;
    let request = &provider.received_requests().await.expect("recorded")[0];
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&request.body)
        .into_owned()
        .collect();
    assert!(form.contains(&("upsert".into(), "yes".into())), "{form:?}");
    let members = &form
        .iter()
        .find(|(k, _)| k == "members")
        .expect("members")
        .1;
    let mut members: Vec<serde_json::Value> = serde_json::from_str(members).expect("a JSON array");
    // Rows due at the same moment come in any order.
    members.sort_by_key(|m| m["address"].as_str().map(str::to_owned));
    assert_eq!(
        members,
        [
            json!({"address": "user1@example.com", "name": "user1"}),
            json!({"address": "user2@example.com", "name": "user2"}),
            json!({"address": "user3@example.com", "name": "user3"}),
        ]
    );
}

/// Brevo while its rate limit holds: every request in the next `for` is answered 429 with the
/// reset in seconds, as Brevo does; then 201.
struct RateLimitedFor {
    started: std::sync::OnceLock<std::time::Instant>,
    window: Duration,
}

impl wiremock::Respond for RateLimitedFor {
    fn respond(&self, _: &wiremock::Request) -> ResponseTemplate {
        let started = *self.started.get_or_init(std::time::Instant::now);
        let left = self.window.saturating_sub(started.elapsed());
        if left.is_zero() {
            ResponseTemplate::new(201).set_body_json(json!({"id": 1}))
        } else {
            let seconds = left.as_secs() + 1;
            ResponseTemplate::new(429)
                .insert_header("x-sib-ratelimit-reset", seconds.to_string().as_str())
        }
    }
}

#[actix_web::test]
async fn a_429_reset_pauses_the_whole_provider_without_spending_other_rows_attempts() {
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v3/contacts"))
        .respond_with(RateLimitedFor {
            started: std::sync::OnceLock::new(),
            window: Duration::from_secs(2),
        })
        .mount(&provider)
        .await;
    let app = app_with("brevo", &provider, |s| {
        // One request at a time, unpaced: whatever holds the other rows back is the pause.
        s.email_sync.max_in_flight = Some(std::num::NonZeroUsize::MIN);
        s.email_sync.max_requests_per_second = Some(0);
    })
    .await;

    app.register_directly(1..5, 4).await;

    wait_until("the 429 is recorded", Duration::from_secs(30), || async {
        app.outbox_rows()
            .await
            .iter()
            .any(|r| r.last_status == Some(429))
    })
    .await;
    app.wait_all_delivered(4).await;
    let attempts: Vec<i32> = app.outbox_rows().await.iter().map(|r| r.attempts).collect();
    assert_eq!(
        attempts.iter().sum::<i32>(),
        5,
        "one 429, then each row once: {attempts:?}"
    );
    assert_eq!(provider.received_requests().await.map_or(0, |r| r.len()), 5);
}
