//! The admin API and `signup outbox` (SPEC §4.3, §4.4).

use entity::email_outbox::{self, Status};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
use serde_json::Value;
use std::time::Duration;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{TestApp, spawn_app, spawn_app_with, use_provider, wait_until};

pub(crate) const TOKEN: &str = "s3cret-admin-token-0123456789abcdef";

async fn admin_app(provider: Option<&MockServer>) -> TestApp {
    let uri = provider.map(|p| p.uri());
    spawn_app_with(move |s| {
        if let Some(uri) = uri {
            use_provider(s, &uri);
        }
        s.admin.token = Some(TOKEN.into());
    })
    .await
}

impl TestApp {
    pub(crate) async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("sent")
    }

    pub(crate) async fn admin_json(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
        let response = self.admin(method, path, Some(TOKEN)).await;
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Arranges row `id` as dead after 30 failed attempts.
    async fn mark_dead(&self, id: uuid::Uuid) {
        email_outbox::Entity::update_many()
            .set(email_outbox::ActiveModel {
                status: Set(Status::Dead),
                attempts: Set(30),
                last_error: Set(Some("provider answered 503".into())),
                last_status: Set(Some(503)),
                ..Default::default()
            })
            .filter(email_outbox::Column::Id.eq(id))
            .exec(&self.db)
            .await
            .expect("arranged");
    }
}

const ROUTES: [(&str, &str); 5] = [
    ("GET", "/admin/email-sync/jobs"),
    (
        "GET",
        "/admin/email-sync/jobs/00000000-0000-0000-0000-000000000000",
    ),
    (
        "POST",
        "/admin/email-sync/jobs/00000000-0000-0000-0000-000000000000/retry",
    ),
    ("POST", "/admin/email-sync/retry-dead"),
    (
        "GET",
        "/api/v1/registrations/00000000-0000-0000-0000-000000000000",
    ),
];

#[actix_web::test]
async fn admin_routes_are_404_when_no_token_is_configured() {
    let app = spawn_app().await;
    for (method, path) in ROUTES {
        let response = app
            .admin(method.parse().expect("method"), path, Some("anything"))
            .await;
        assert_eq!(response.status().as_u16(), 404, "{method} {path}");
    }
}

#[actix_web::test]
async fn admin_routes_are_401_without_or_with_a_wrong_token() {
    let app = admin_app(None).await;
    for (method, path) in ROUTES {
        for token in [
            None,
            Some("wrong"),
            Some("s3cret-admin-token-0123456789abcdef-but-longer"),
            Some(""),
        ] {
            let response = app
                .admin(method.parse().expect("method"), path, token)
                .await;
            assert_eq!(response.status().as_u16(), 401, "{method} {path} {token:?}");
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
        }
    }
}

#[actix_web::test]
async fn the_bearer_scheme_is_matched_in_any_case() {
    let app = admin_app(None).await;
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let response = app
            .client
            .get(app.url("/admin/email-sync/jobs"))
            .header("authorization", format!("{scheme} {TOKEN}"))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status().as_u16(), 200, "{scheme}");
    }
    let response = app
        .client
        .get(app.url("/admin/email-sync/jobs"))
        .header("authorization", format!("Basic {TOKEN}"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 401, "another scheme");
}

#[actix_web::test]
async fn jobs_are_listed_newest_first_filtered_and_paged() {
    let app = admin_app(None).await;
    app.register_all(0..5).await;
    let mut rows = app.outbox_rows().await;
    rows.sort_by_key(|r| r.created_at);
    app.mark_dead(rows[1].id).await;
    app.mark_dead(rows[3].id).await;

    let (status, all) = app
        .admin_json(reqwest::Method::GET, "/admin/email-sync/jobs")
        .await;
    assert_eq!(status, 200);
    assert_eq!(all["jobs"].as_array().map(Vec::len), Some(5));
    assert_eq!(all["next"], Value::Null);
    let first = &all["jobs"][0];
    for member in [
        "id",
        "user_id",
        "email",
        "status",
        "attempts",
        "last_error",
        "last_status",
        "next_attempt_at",
        "created_at",
        "delivered_at",
    ] {
        assert!(first.get(member).is_some(), "job member {member}");
    }

    let (_, dead) = app
        .admin_json(reqwest::Method::GET, "/admin/email-sync/jobs?status=dead")
        .await;
    let ids: Vec<&str> = dead["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(|j| j["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        [rows[3].id.to_string(), rows[1].id.to_string()],
        "dead ones, newest first"
    );
    assert_eq!(dead["jobs"][0]["email"], "user3@example.com");
    assert_eq!(dead["jobs"][0]["last_status"], 503);

    let mut seen = Vec::new();
    let mut path = "/admin/email-sync/jobs?limit=2".to_string();
    loop {
        let (_, page) = app.admin_json(reqwest::Method::GET, &path).await;
        seen.extend(
            page["jobs"]
                .as_array()
                .expect("jobs")
                .iter()
                .map(|j| j["id"].as_str().unwrap_or("").to_string()),
        );
        match page["next"].as_str() {
            Some(next) => path = format!("/admin/email-sync/jobs?limit=2&before={next}"),
            None => break,
        }
    }
    let expected: Vec<String> = rows.iter().rev().map(|r| r.id.to_string()).collect();
    assert_eq!(seen, expected, "pages neither skip nor repeat");

    let (bad, _) = app
        .admin_json(reqwest::Method::GET, "/admin/email-sync/jobs?status=weird")
        .await;
    assert_eq!(bad, 400);
    let (one, job) = app
        .admin_json(
            reqwest::Method::GET,
            &format!("/admin/email-sync/jobs/{}", rows[1].id),
        )
        .await;
    assert_eq!((one, job["status"].as_str()), (200, Some("dead")));
    let (missing, _) = app
        .admin_json(
            reqwest::Method::GET,
            &format!("/admin/email-sync/jobs/{}", uuid::Uuid::new_v4()),
        )
        .await;
    assert_eq!(missing, 404);
}

#[actix_web::test]
async fn a_retried_dead_job_is_delivered_once_the_provider_accepts() {
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400))
        .mount(&provider)
        .await;
    let app = admin_app(Some(&provider)).await;
    app.register_all(0..1).await;
    wait_until("the job is dead", Duration::from_secs(30), || async {
        app.outbox_with(Status::Dead).await.len() == 1
    })
    .await;
    let id = app.outbox_rows().await[0].id;

    // The provider recovers: a mock that outranks the failing one (a reset would answer 404
    // to a retry in flight).
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(204))
        .with_priority(1)
        .mount(&provider)
        .await;
    let (status, job) = app
        .admin_json(
            reqwest::Method::POST,
            &format!("/admin/email-sync/jobs/{id}/retry"),
        )
        .await;

    assert_eq!(status, 202);
    assert_eq!(job["attempts"], 0);
    app.wait_all_delivered(1).await;
    let (again, _) = app
        .admin_json(
            reqwest::Method::POST,
            &format!("/admin/email-sync/jobs/{id}/retry"),
        )
        .await;
    assert_eq!(again, 409, "a delivered job is not retried");
}

#[actix_web::test]
async fn retry_dead_requeues_every_dead_job() {
    // A provider that never answers within the test: requeued rows keep attempts = 0.
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(204).set_delay(Duration::from_secs(60)))
        .mount(&provider)
        .await;
    let app = admin_app(Some(&provider)).await;
    app.register_all(0..4).await;
    for row in app.outbox_rows().await.iter().take(3) {
        app.mark_dead(row.id).await;
    }

    let (status, body) = app
        .admin_json(reqwest::Method::POST, "/admin/email-sync/retry-dead")
        .await;

    assert_eq!(status, 202);
    assert_eq!(body["requeued"], 3);
    assert!(app.outbox_with(Status::Dead).await.is_empty());
    let requeued: Vec<_> = app
        .outbox_rows()
        .await
        .into_iter()
        .filter(|r| r.retry_from.is_some())
        .collect();
    assert_eq!(requeued.len(), 3, "exactly the dead ones");
    assert!(
        requeued
            .iter()
            .all(|r| r.status == Status::Pending && r.attempts == 0)
    );
}

#[actix_web::test]
async fn a_registration_is_shown_with_its_sync_job_and_without_its_hash() {
    let app = admin_app(None).await;
    let created: Value = app
        .post_registration(&crate::helpers::registration(1))
        .await
        .json()
        .await
        .expect("json");
    let location = format!(
        "/api/v1/registrations/{}",
        created["id"].as_str().expect("id")
    );

    let (status, body) = app.admin_json(reqwest::Method::GET, &location).await;

    assert_eq!(status, 200);
    assert_eq!(body["username"], "user1");
    assert_eq!(body["email_sync"]["status"], "pending");
    assert!(body["email_sync"].get("attempts").is_some());
    assert!(
        !body.to_string().contains("argon2"),
        "never the password hash"
    );
}

#[actix_web::test]
async fn the_command_line_lists_and_retries_jobs_of_a_running_server() {
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400))
        .mount(&provider)
        .await;
    let app = admin_app(Some(&provider)).await;
    app.register_all(0..2).await;
    wait_until("both jobs are dead", Duration::from_secs(30), || async {
        app.outbox_with(Status::Dead).await.len() == 2
    })
    .await;
    let ids: Vec<String> = app
        .outbox_rows()
        .await
        .iter()
        .map(|r| r.id.to_string())
        .collect();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_signup"))
            .args(args)
            .env("SIGNUP_DATABASE__URL", &app.database_url)
            .env("SIGNUP_LOG__LEVEL", "error")
            .current_dir(std::env::temp_dir())
            .output()
            .expect("signup runs")
    };
    let cli = |args: &[&str]| {
        let output = run(args);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let cli_refuses = |args: &[&str]| {
        let output = run(args);
        assert!(!output.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };

    let listed = cli(&["outbox", "list", "--status", "dead"]);
    assert!(ids.iter().all(|id| listed.contains(id)), "{listed}");
    assert!(
        listed.contains("STATUS") && listed.contains("2 job(s)"),
        "{listed}"
    );

    // The provider recovers: a mock that outranks the failing one (a reset would answer 404
    // to a retry in flight).
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(204))
        .with_priority(1)
        .mount(&provider)
        .await;
    cli(&["outbox", "retry", &ids[0]]);
    wait_until(
        "the retried job is delivered",
        Duration::from_secs(30),
        || async { app.outbox_with(Status::Delivered).await.len() == 1 },
    )
    .await;
    let before = app.outbox_with(Status::Delivered).await.remove(0);
    let refused = cli_refuses(&["outbox", "retry", &before.id.to_string()]);
    assert!(refused.contains("was delivered"), "{refused}");
    let after = app.outbox_with(Status::Delivered).await.remove(0);
    assert_eq!(
        (after.id, after.delivered_at),
        (before.id, before.delivered_at),
        "a refused retry leaves the delivered row alone"
    );
    let unknown = uuid::Uuid::new_v4().to_string();
    let refused = cli_refuses(&["outbox", "retry", &unknown]);
    assert!(refused.contains(&format!("no job {unknown}")), "{refused}");
    cli(&["outbox", "retry", "--all-dead"]);
    app.wait_all_delivered(2).await;
}
