//! Erasure (SPEC §6): a user removed here and, in order, at the provider, with no copy of their
//! username or address left anywhere once the deletion is delivered.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use entity::email_outbox::{self, EventType, Status};
use sea_orm::{ConnectionTrait, EntityTrait, Statement};
use serde_json::{Value, json};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::helpers::{TestApp, spawn_app_with, use_provider, use_provider_kind, wait_until};

pub const TOKEN: &str = "s3cret-admin-token-0123456789abcdef";
use crate::helpers::PATIENCE;

/// A webhook receiver that notes each event's type as it arrives, and holds its answer to a
/// `user.registered` for `hold` (a delivery in flight).
pub struct Recording {
    pub arrivals: Arc<Mutex<Vec<(String, Instant)>>>,
    pub hold: Duration,
}

impl Respond for Recording {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let kind = body["type"].as_str().unwrap_or("?").to_owned();
        let held = kind == "user.registered";
        self.arrivals
            .lock()
            .expect("not poisoned")
            .push((kind, Instant::now()));
        let answer = ResponseTemplate::new(204);
        if held {
            answer.set_delay(self.hold)
        } else {
            answer
        }
    }
}

/// From now on `provider` answers every request with `status`.
async fn answer_all(provider: &MockServer, status: u16) {
    provider.reset().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(status))
        .mount(provider)
        .await;
}

/// The provider saw a registration, then a deletion, and the deletion no sooner than `hold`
/// after the registration (that is, after the registration's answer).
pub fn assert_the_deletion_came_second(arrivals: &Mutex<Vec<(String, Instant)>>, hold: Duration) {
    let arrivals = arrivals.lock().expect("not poisoned").clone();
    let kinds: Vec<&str> = arrivals.iter().map(|(kind, _)| kind.as_str()).collect();
    assert_eq!(kinds, ["user.registered", "user.deleted"]);
    let waited = arrivals[1].1 - arrivals[0].1;
    assert!(
        waited >= hold - Duration::from_millis(50),
        "the deletion went {waited:?} after the registration, before its answer"
    );
}

async fn erasing_app(provider: &MockServer) -> TestApp {
    let base = provider.uri();
    spawn_app_with(move |s| {
        use_provider(s, &base);
        s.admin.token = Some(TOKEN.into());
    })
    .await
}

/// Registers `username`/`email` over HTTP (with an idempotency key, so that table has a row
/// too) and answers the new user's id.
pub async fn register(app: &TestApp, username: &str, email: &str) -> uuid::Uuid {
    let response = app
        .client
        .post(app.url("/api/v1/registrations"))
        .header("Idempotency-Key", format!("key-{username}"))
        .json(&json!({"username": username, "email": email, "password": "correct horse battery"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 201);
    let body: Value = response.json().await.expect("json");
    body["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("the new user's id")
}

async fn erase(app: &TestApp, id: uuid::Uuid) -> (u16, Value) {
    let response = app
        .client
        .delete(app.url(&format!("/admin/users/{id}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("sent");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

async fn rows_of(app: &TestApp, event: EventType) -> Vec<email_outbox::Model> {
    app.outbox_rows()
        .await
        .into_iter()
        .filter(|r| r.event == event)
        .collect()
}

/// Every row of every table, as text (lower-cased), whichever database.
async fn every_table_as_text(app: &TestApp) -> Vec<(String, String)> {
    let backend = app.db.get_database_backend();
    let tables_sql = if app.is_postgres {
        "SELECT table_name AS name FROM information_schema.tables WHERE table_schema = 'public'"
    } else {
        "SELECT name FROM sqlite_master WHERE type = 'table'"
    };
    let tables: Vec<String> = app
        .db
        .query_all_raw(Statement::from_string(backend, tables_sql))
        .await
        .expect("tables")
        .iter()
        .map(|row| row.try_get::<String>("", "name").expect("a name"))
        .collect();
    assert!(tables.iter().any(|t| t == "users"), "{tables:?}");
    let mut rows = Vec::new();
    for table in tables {
        let sql = if app.is_postgres {
            format!("SELECT lower(t::text) AS line FROM \"{table}\" t")
        } else {
            let columns: Vec<String> = app
                .db
                .query_all_raw(Statement::from_string(
                    backend,
                    format!("SELECT name FROM pragma_table_info('{table}')"),
                ))
                .await
                .expect("columns")
                .iter()
                .map(|row| row.try_get::<String>("", "name").expect("a name"))
                .collect();
            let quoted: Vec<String> = columns.iter().map(|c| format!("quote(\"{c}\")")).collect();
            format!(
                "SELECT lower({}) AS line FROM \"{table}\"",
                quoted.join(" || ',' || ")
            )
        };
        for row in app
            .db
            .query_all_raw(Statement::from_string(backend, sql))
            .await
            .expect("rows")
        {
            rows.push((
                table.clone(),
                row.try_get::<String>("", "line").expect("text"),
            ));
        }
    }
    rows
}

/// The tables (and rows) that hold `needle` (in any case).
async fn holding(app: &TestApp, needle: &str) -> Vec<(String, String)> {
    let needle = needle.to_lowercase();
    every_table_as_text(app)
        .await
        .into_iter()
        .filter(|(_, line)| line.contains(&needle))
        .collect()
}

#[actix_web::test]
async fn after_an_erasure_no_table_holds_the_person_and_they_may_register_again_at_once() {
    let provider = MockServer::start().await;
    answer_all(&provider, 204).await;
    let app = erasing_app(&provider).await;
    let (username, email) = ("Erasable_Person", "Erasable.Person@Example.com");
    let id = register(&app, username, email).await;
    app.wait_all_delivered(1).await;
    assert!(!holding(&app, email).await.is_empty(), "stored before");
    // The provider is down: the deletion stays pending, as the only holder of the address.
    answer_all(&provider, 503).await;

    let (status, erased) = erase(&app, id).await;

    assert_eq!(status, 202, "{erased}");
    assert_eq!(erased["user_id"], id.to_string());
    let left = holding(&app, email).await;
    assert_eq!(left.len(), 1, "only the pending user.deleted row: {left:?}");
    assert_eq!(left[0].0, "email_outbox");
    assert!(left[0].1.contains("user.deleted"), "{left:?}");
    assert!(
        holding(&app, username).await.is_empty(),
        "no username anywhere"
    );
    // The username and address are free again at once: a new person, a new id.
    let again = register(&app, username, email).await;
    assert_ne!(again, id);
    assert_eq!(erase(&app, id).await.0, 404, "erased already");
    assert_eq!(erase(&app, again).await.0, 202);

    answer_all(&provider, 204).await;
    wait_until("both deletions are delivered", PATIENCE, || async {
        rows_of(&app, EventType::UserDeleted)
            .await
            .iter()
            .all(|r| r.status == Status::Delivered)
    })
    .await;
    let left = holding(&app, email).await;
    assert!(left.is_empty(), "nothing holds the address: {left:?}");
    assert!(holding(&app, username).await.is_empty());
    // The provider was told, with the address it knows, signed as every webhook is.
    let deletions: Vec<Value> = provider
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
        .filter(|b| b["type"] == "user.deleted")
        .collect();
    assert!(
        deletions
            .iter()
            .any(|b| b["data"]["user_id"] == id.to_string() && b["data"]["email"] == email),
        "{deletions:?}"
    );
    assert!(
        app.metrics
            .render()
            .is_ok_and(|text| text.contains("signup_erasures_total 2")),
        "erasures counted"
    );
}

#[actix_web::test]
async fn a_deletion_waits_for_the_registration_in_flight_and_arrives_second() {
    let provider = MockServer::start().await;
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let hold = Duration::from_secs(2);
    Mock::given(wiremock::matchers::any())
        .respond_with(Recording {
            arrivals: Arc::clone(&arrivals),
            hold,
        })
        .mount(&provider)
        .await;
    let app = erasing_app(&provider).await;
    let id = register(&app, "inflight", "inflight@example.com").await;
    wait_until(
        "the registration's delivery is in flight",
        PATIENCE,
        || async { !arrivals.lock().expect("not poisoned").is_empty() },
    )
    .await;

    let (status, _) = erase(&app, id).await;
    assert_eq!(status, 202);
    wait_until("the deletion is delivered", PATIENCE, || async {
        rows_of(&app, EventType::UserDeleted)
            .await
            .iter()
            .any(|r| r.status == Status::Delivered)
    })
    .await;

    assert_the_deletion_came_second(&arrivals, hold);
    let registration = &rows_of(&app, EventType::UserRegistered).await[0];
    assert_eq!(registration.status, Status::Cancelled);
    assert_eq!(registration.locked_until, None, "its lease was let go");
}

#[actix_web::test]
async fn each_provider_kind_removes_an_erased_user_with_its_own_call_and_404_is_already_gone() {
    use signup::configuration::{MailchimpErase, ProviderKind};
    use wiremock::matchers::{header, method, path, query_param};
    let key = "erase-test-key";
    let hash = signup::email::provider::subscriber_hash("user1@example.com");
    let basic = |user: &str| {
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{key}"))
        )
    };
    let bearer = format!("Bearer {key}");
    // (kind, Mailchimp's erase mode, method, path, header, value, answer)
    let cases: Vec<(
        ProviderKind,
        MailchimpErase,
        &str,
        String,
        &str,
        String,
        u16,
    )> = vec![
        (
            ProviderKind::Mailchimp,
            MailchimpErase::Permanent,
            "POST",
            format!("/3.0/lists/list1/members/{hash}/actions/delete-permanent"),
            "authorization",
            basic("signup"),
            204,
        ),
        (
            ProviderKind::Mailchimp,
            MailchimpErase::Archive,
            "DELETE",
            format!("/3.0/lists/list1/members/{hash}"),
            "authorization",
            basic("signup"),
            404,
        ),
        (
            ProviderKind::Brevo,
            MailchimpErase::Permanent,
            "DELETE",
            "/v3/contacts/user1@example.com".into(),
            "api-key",
            key.into(),
            204,
        ),
        (
            ProviderKind::Resend,
            MailchimpErase::Permanent,
            "DELETE",
            "/contacts/user1@example.com".into(),
            "authorization",
            bearer.clone(),
            200,
        ),
        (
            ProviderKind::Mailgun,
            MailchimpErase::Permanent,
            "DELETE",
            "/v3/lists/news@mg.example.com/members/user1@example.com".into(),
            "authorization",
            basic("api"),
            404,
        ),
        (
            ProviderKind::Sendgrid,
            MailchimpErase::Permanent,
            "DELETE",
            "/v3/marketing/contacts".into(),
            "authorization",
            bearer.clone(),
            202,
        ),
    ];
    for (kind, mode, verb, route, name, value, answer) in cases {
        let provider = MockServer::start().await;
        let base = provider.uri();
        // Registrations are accepted whatever the route.
        Mock::given(method("PUT"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({})))
            .mount(&provider)
            .await;
        Mock::given(method("POST"))
            .and(wiremock::matchers::path_regex(
                "^/(v3/contacts|contacts|v3/lists/[^/]+/members)$",
            ))
            .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 1})))
            .mount(&provider)
            .await;
        if kind == ProviderKind::Sendgrid {
            Mock::given(method("POST"))
                .and(path("/v3/marketing/contacts/search/emails"))
                .and(header("authorization", bearer.as_str()))
                .and(wiremock::matchers::body_json(
                    json!({"emails": ["user1@example.com"]}),
                ))
                .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                    "result": {"user1@example.com": {"contact": {"id": "sg-contact-1"}}}
                })))
                .expect(1)
                .mount(&provider)
                .await;
        }
        let mut erase_call = Mock::given(method(verb))
            .and(path(route.as_str()))
            .and(header(name, value.as_str()));
        if kind == ProviderKind::Sendgrid {
            erase_call = erase_call.and(query_param("ids", "sg-contact-1"));
        }
        erase_call
            .respond_with(ResponseTemplate::new(answer))
            .expect(1)
            .named(format!("{kind:?} erase"))
            .mount(&provider)
            .await;
        let app = spawn_app_with(move |s| {
            use_provider_kind(s, kind, &base, key);
            s.email_sync.mailchimp.erase = mode;
            // Mailgun's 404 right after the upsert is "not in the list yet" within this window
            // (imports.rs); here it stands for a member the list no longer has.
            s.email_sync.mailgun.import_window = std::time::Duration::ZERO;
        })
        .await;
        app.register_all(1..2).await;
        app.wait_all_delivered(1).await;
        let user = app.outbox_rows().await[0].user_id;

        signup::erasure::erase(&app.db, &signup::erasure::Who::Id(user), chrono::Utc::now())
            .await
            .expect("erased");
        app.email_sync.do_send(signup::actors::WakeUp);

        wait_until(
            &format!("{kind:?}: the deletion is delivered"),
            PATIENCE,
            || async {
                rows_of(&app, EventType::UserDeleted)
                    .await
                    .iter()
                    .any(|r| r.status == Status::Delivered)
            },
        )
        .await;
        let deletion = &rows_of(&app, EventType::UserDeleted).await[0];
        assert_eq!(deletion.last_status, Some(i32::from(answer)), "{kind:?}");
        provider.verify().await;
    }
}

#[actix_web::test]
async fn signup_users_delete_erases_by_address_and_says_what_it_did() {
    let provider = MockServer::start().await;
    // Down: the registration's job is still undelivered when the person is erased.
    answer_all(&provider, 503).await;
    let app = erasing_app(&provider).await;
    let id = register(&app, "cli_erased", "CLI.Erased@example.com").await;
    let run = |who: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_signup"))
            .args(["users", "delete", who])
            .env("SIGNUP_DATABASE__URL", &app.database_url)
            .env("SIGNUP_LOG__LEVEL", "error")
            .current_dir(std::env::temp_dir())
            .output()
            .expect("signup runs")
    };

    let output = run("cli.erased@EXAMPLE.com");

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(&format!("erased user {id}")), "{stdout}");
    assert!(stdout.contains("user.deleted job"), "{stdout}");
    // The registration's job is cancelled: an operator's retry must not bring it back, and says why.
    let cancelled = rows_of(&app, EventType::UserRegistered).await[0].id;
    let retry = std::process::Command::new(env!("CARGO_BIN_EXE_signup"))
        .args(["outbox", "retry", &cancelled.to_string()])
        .env("SIGNUP_DATABASE__URL", &app.database_url)
        .env("SIGNUP_LOG__LEVEL", "error")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("signup runs");
    assert!(!retry.status.success());
    assert!(
        String::from_utf8_lossy(&retry.stderr).contains("cancelled"),
        "{}",
        String::from_utf8_lossy(&retry.stderr)
    );
    let again = run(&id.to_string());
    assert!(!again.status.success(), "erased already");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("no such user"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(rows_of(&app, EventType::UserDeleted).await.len(), 1);
    assert!(
        email_outbox::Entity::find()
            .all(&app.db)
            .await
            .expect("rows")
            .iter()
            .all(
                |r| !r.payload.to_lowercase().contains("cli.erased@example.com")
                    || r.event == EventType::UserDeleted
            )
    );
}

#[actix_web::test]
async fn cancelled_rows_are_swept_after_the_retention_period_like_delivered_ones() {
    let provider = MockServer::start().await;
    // The provider is down: the registration stays undelivered, and the erasure cancels it.
    answer_all(&provider, 503).await;
    let app = erasing_app(&provider).await;
    let id = register(&app, "swept", "swept@example.com").await;
    assert_eq!(erase(&app, id).await.0, 202);
    wait_until("the registration is cancelled", PATIENCE, || async {
        rows_of(&app, EventType::UserRegistered)
            .await
            .iter()
            .all(|r| r.status == Status::Cancelled && r.locked_until.is_none())
    })
    .await;

    // Retention is 7 days by default: a week and a day later, the sweep takes it.
    let deleted = app
        .sweep_delivered_at(chrono::Utc::now() + chrono::Duration::days(8))
        .await;

    assert_eq!(deleted, 1, "the cancelled row, not the pending deletion");
    assert!(rows_of(&app, EventType::UserRegistered).await.is_empty());
    assert_eq!(rows_of(&app, EventType::UserDeleted).await.len(), 1);
}
