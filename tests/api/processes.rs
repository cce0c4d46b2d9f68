//! signup as real processes: killed with SIGKILL and restarted, and two instances sharing one
//! PostgreSQL.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use entity::email_outbox::Status;
use sea_orm::{Database, EntityTrait};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{
    SECRET, fresh_postgres, outbox_rows, postgres_admin_url, registration, wait_all_delivered,
    wait_until,
};

/// A `signup serve` child process, killed (SIGKILL) on drop.
pub(crate) struct ServerProcess {
    child: Child,
    pub(crate) base: String,
    _dir: tempfile::TempDir,
}

impl ServerProcess {
    async fn start(database_url: &str, provider: &str) -> Self {
        Self::start_with(database_url, provider, &[]).await
    }

    /// As [`start`](Self::start), with more `SIGNUP_…` settings.
    pub(crate) async fn start_with(
        database_url: &str,
        provider: &str,
        extra: &[(&str, &str)],
    ) -> Self {
        // The test's HTTP clients need the process's TLS provider like the server's do.
        signup::startup::install_crypto_provider();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        // A directory of its own: the repository's config.toml must not be picked up.
        let dir = tempfile::tempdir().expect("temp dir");
        let mut command = Command::new(env!("CARGO_BIN_EXE_signup"));
        for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("SIGNUP_")) {
            command.env_remove(name);
        }
        let settings = [
            ("SIGNUP_SERVER__BIND", format!("127.0.0.1:{port}")),
            ("SIGNUP_SERVER__WORKERS", "2".into()),
            ("SIGNUP_DATABASE__URL", database_url.into()),
            ("SIGNUP_PASSWORD__ARGON2_M_KIB", "1024".into()),
            ("SIGNUP_PASSWORD__ARGON2_T", "1".into()),
            ("SIGNUP_RATE_LIMIT__PER_MINUTE", "0".into()),
            ("SIGNUP_EMAIL_SYNC__URL", format!("{provider}/webhook")),
            ("SIGNUP_EMAIL_SYNC__SECRET", SECRET.into()),
            ("SIGNUP_EMAIL_SYNC__POLL_INTERVAL", "200ms".into()),
            ("SIGNUP_EMAIL_SYNC__TIMEOUT", "2s".into()),
            ("SIGNUP_EMAIL_SYNC__LEASE", "5s".into()),
            ("SIGNUP_EMAIL_SYNC__RETRY__INITIAL_INTERVAL", "100ms".into()),
            ("SIGNUP_EMAIL_SYNC__RETRY__MAX_INTERVAL", "500ms".into()),
            (
                "SIGNUP_EMAIL_SYNC__CIRCUIT_BREAKER__OPEN_FOR",
                "300ms".into(),
            ),
            (
                "SIGNUP_EMAIL_SYNC__CIRCUIT_BREAKER__MAX_OPEN_FOR",
                "1s".into(),
            ),
            ("SIGNUP_LOG__LEVEL", "error".into()),
        ];
        let child = command
            .arg("serve")
            .current_dir(dir.path())
            .envs(settings)
            .envs(extra.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("server.log")).expect("log file"))
            .spawn()
            .expect("signup starts");
        let server = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let client = reqwest::Client::new();
        let live = format!("{}/health/live", server.base);
        wait_until(
            "the server process answers",
            Duration::from_secs(30),
            || {
                let request = client.get(&live).send();
                async move { request.await.is_ok_and(|r| r.status().is_success()) }
            },
        )
        .await;
        server
    }

    /// What the server has logged so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("server.log")).unwrap_or_default()
    }

    pub(crate) async fn register(&self, n: usize) {
        let response = reqwest::Client::new()
            .post(format!("{}/api/v1/registrations", self.base))
            .json(&registration(n))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status().as_u16(), 201, "registration {n}");
    }

    /// SIGTERM, then waits (at most 60 s) for the exit status.
    pub(crate) async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIGTERM sent");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }
}

impl ServerProcess {
    /// `DELETE /admin/users/{user}` with the admin `token`: 202.
    pub(crate) async fn erase(&self, user: impl std::fmt::Display, token: &str) {
        let response = reqwest::Client::new()
            .delete(format!("{}/admin/users/{user}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status().as_u16(), 202);
    }
}

/// Waits (30 s at most) until a `user.deleted` row in `db` is delivered.
pub(crate) async fn wait_deletion_delivered(db: &sea_orm::DatabaseConnection) {
    wait_until(
        "the deletion is delivered",
        Duration::from_secs(30),
        || async {
            outbox_rows(db).await.iter().any(|r| {
                r.event == entity::email_outbox::EventType::UserDeleted
                    && r.status == Status::Delivered
            })
        },
    )
    .await;
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn ids_received(provider: &MockServer) -> Vec<String> {
    provider
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter_map(|r| {
            r.headers
                .get("webhook-id")
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        })
        .collect()
}

#[actix_web::test]
async fn a_server_killed_with_sigkill_loses_no_pending_sync() {
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&provider)
        .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("signup.db").display());
    let server = ServerProcess::start(&url, &provider.uri()).await;
    for n in 0..10 {
        server.register(n).await;
    }
    let db = Database::connect(&url)
        .await
        .expect("the test opens the database");
    wait_until(
        "deliveries have failed",
        Duration::from_secs(30),
        || async { outbox_rows(&db).await.iter().any(|r| r.attempts >= 1) },
    )
    .await;

    server.kill();
    // Nothing is in flight now: what arrives from here on comes from the restarted server, and
    // a mock that outranks the failing one accepts it.
    let before_restart = ids_received(&provider).await.len();
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(204))
        .with_priority(1)
        .mount(&provider)
        .await;
    let _restarted = ServerProcess::start(&url, &provider.uri()).await;

    wait_all_delivered(&db, 10, Duration::from_secs(60)).await;
    let received: Vec<String> = ids_received(&provider)
        .await
        .into_iter()
        .skip(before_restart)
        .collect();
    for row in outbox_rows(&db).await {
        assert!(
            received.contains(&row.id.to_string()),
            "{} delivered with its webhook-id",
            row.id
        );
    }
}

#[actix_web::test]
async fn two_instances_on_one_postgresql_deliver_every_user_exactly_once() {
    let Some(admin) = postgres_admin_url() else {
        return;
    };
    let url = fresh_postgres(&admin).await;
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(204).set_delay(Duration::from_millis(50)))
        .mount(&provider)
        .await;
    let first = ServerProcess::start(&url, &provider.uri()).await;
    let second = ServerProcess::start(&url, &provider.uri()).await;

    for n in 0..30 {
        let server = if n % 2 == 0 { &first } else { &second };
        server.register(n).await;
    }

    let db = Database::connect(&url).await.expect("the test connects");
    wait_all_delivered(&db, 30, Duration::from_secs(60)).await;
    let received = ids_received(&provider).await;
    let mut unique = received.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 30, "every row delivered");
    assert_eq!(received.len(), 30, "no row attempted by both instances");
}

#[actix_web::test]
async fn with_two_instances_a_deletion_waits_for_the_registration_the_other_one_is_delivering() {
    use crate::erasure::{Recording, TOKEN};
    let Some(admin) = postgres_admin_url() else {
        return;
    };
    let url = fresh_postgres(&admin).await;
    let provider = MockServer::start().await;
    let arrivals = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    // Under the instances' 2 s attempt timeout.
    let hold = Duration::from_millis(1500);
    Mock::given(method("POST"))
        .respond_with(Recording {
            arrivals: std::sync::Arc::clone(&arrivals),
            hold,
        })
        .mount(&provider)
        .await;
    let admin_token = [("SIGNUP_ADMIN__TOKEN", TOKEN)];
    let first = ServerProcess::start_with(&url, &provider.uri(), &admin_token).await;
    let second = ServerProcess::start_with(&url, &provider.uri(), &admin_token).await;
    first.register(7).await;
    wait_until(
        "the registration's delivery is in flight",
        Duration::from_secs(30),
        || async { !arrivals.lock().expect("not poisoned").is_empty() },
    )
    .await;
    let db = Database::connect(&url).await.expect("the test connects");
    let user = outbox_rows(&db).await[0].user_id;

    // Erased through the other instance, which is free to claim the deletion at once.
    second.erase(user, TOKEN).await;
    wait_deletion_delivered(&db).await;

    crate::erasure::assert_the_deletion_came_second(&arrivals, hold);
}

#[actix_web::test]
async fn sigterm_during_concurrent_registrations_exits_0_and_every_answered_one_is_stored() {
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&provider)
        .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("signup.db").display());
    let mut server = ServerProcess::start(&url, &provider.uri()).await;
    let client = reqwest::Client::new();
    let endpoint = format!("{}/api/v1/registrations", server.base);

    let load = futures::future::join_all((0..200).map(|n| {
        let request = client.post(&endpoint).json(&registration(n)).send();
        async move {
            match request.await {
                Ok(response) if response.status().as_u16() == 201 => Some(n),
                _ => None,
            }
        }
    }));
    let (answered, status) = tokio::join!(load, async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        server.terminate().await
    });

    assert!(status.success(), "exit status {status:?}");
    let answered: Vec<usize> = answered.into_iter().flatten().collect();
    assert!(!answered.is_empty(), "the load ran before the signal");
    let db = Database::connect(&url)
        .await
        .expect("the test opens the database");
    let users = entity::user::Entity::find().all(&db).await.expect("users");
    for n in &answered {
        assert!(
            users.iter().any(|u| u.username == format!("user{n}")),
            "user{n} was answered 201"
        );
    }
    let rows = outbox_rows(&db).await;
    assert_eq!(rows.len(), users.len(), "every user has its outbox row");
    assert!(
        rows.iter()
            .all(|r| r.status == Status::Delivered || r.locked_until.is_none()),
        "no row left claimed"
    );
}

#[actix_web::test]
async fn sigterm_during_slow_deliveries_releases_their_claims_and_exits_0() {
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(204).set_delay(Duration::from_secs(30)))
        .mount(&provider)
        .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("signup.db").display());
    let mut server = ServerProcess::start_with(
        &url,
        &provider.uri(),
        &[
            ("SIGNUP_SERVER__SHUTDOWN_GRACE", "1s"),
            ("SIGNUP_EMAIL_SYNC__TIMEOUT", "60s"),
            ("SIGNUP_EMAIL_SYNC__LEASE", "10m"),
        ],
    )
    .await;
    for n in 0..3 {
        server.register(n).await;
    }
    let db = Database::connect(&url)
        .await
        .expect("the test opens the database");
    wait_until(
        "deliveries are in flight",
        Duration::from_secs(30),
        || async {
            outbox_rows(&db)
                .await
                .iter()
                .filter(|r| r.locked_until.is_some())
                .count()
                == 3
        },
    )
    .await;

    let status = server.terminate().await;

    assert!(status.success(), "exit status {status:?}");
    let rows = outbox_rows(&db).await;
    assert!(
        rows.iter()
            .all(|r| r.locked_until.is_none() && r.status == Status::Pending),
        "claims released"
    );
    assert!(
        rows.iter().all(|r| r.attempts == 0),
        "a released claim spends no attempt"
    );
}

#[actix_web::test]
async fn logs_follow_a_request_into_its_delivery_without_secrets_or_addresses() {
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&provider)
        .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("signup.db").display());
    let server = ServerProcess::start_with(
        &url,
        &provider.uri(),
        &[
            ("SIGNUP_LOG__FORMAT", "json"),
            ("SIGNUP_LOG__LEVEL", "info"),
            (
                "SIGNUP_ADMIN__TOKEN",
                "admin-token-0123456789abcdef-0123456789",
            ),
        ],
    )
    .await;
    let password = "Tr0ub4dor&3-horse";
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/registrations", server.base))
        .header("x-request-id", "req-follow-me")
        .json(&serde_json::json!({"username": "loggy", "email": "loggy.person@example.com", "password": password}))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 201);
    let db = Database::connect(&url)
        .await
        .expect("the test opens the database");
    wait_until("the user is delivered", Duration::from_secs(30), || async {
        outbox_rows(&db)
            .await
            .iter()
            .all(|r| r.status == Status::Delivered)
    })
    .await;
    let outbox_id = outbox_rows(&db).await[0].id.to_string();

    let log = server.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(!lines.is_empty(), "JSON lines: {log}");
    let field =
        |line: &serde_json::Value, name: &str| line["fields"][name].as_str().map(str::to_owned);
    let registered = lines
        .iter()
        .find(|l| field(l, "message").as_deref() == Some("registered"))
        .expect("a registration line");
    assert_eq!(
        field(registered, "request_id").as_deref(),
        Some("req-follow-me")
    );
    assert_eq!(
        field(registered, "outbox_id").as_deref(),
        Some(outbox_id.as_str())
    );
    assert_eq!(
        field(registered, "email").as_deref(),
        Some("l***@example.com"),
        "masked"
    );
    assert!(
        lines.iter().any(|l| field(l, "message").as_deref()
            == Some("delivered to the email provider")
            && field(l, "outbox_id").as_deref() == Some(outbox_id.as_str())),
        "the delivery names the same outbox id"
    );
    assert!(
        lines
            .iter()
            .any(|l| field(l, "message").as_deref() == Some("request")
                && l["span"]["request_id"] == "req-follow-me"),
        "one line per request with its id"
    );
    for secret in [
        password,
        "loggy.person@example.com",
        crate::helpers::SECRET,
        "admin-token-0123456789abcdef-0123456789",
    ] {
        assert!(!log.contains(secret), "the log contains {secret:?}");
    }
}

/// Logs to a file or a pipe (journald) are plain text: no terminal colour codes.
#[actix_web::test]
async fn text_logs_to_a_file_carry_no_colour_codes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("signup.db").display());
    let server = ServerProcess::start_with(
        &url,
        "http://127.0.0.1:9",
        &[
            ("SIGNUP_LOG__FORMAT", "text"),
            ("SIGNUP_LOG__LEVEL", "info"),
        ],
    )
    .await;
    let response = reqwest::get(format!("{}/health/live", server.base))
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 200);
    wait_until("the request is logged", Duration::from_secs(10), || async {
        server.log().contains("/health/live")
    })
    .await;
    let log = server.log();
    assert!(!log.contains('\u{1b}'), "no escape codes: {log:.300}");
}
