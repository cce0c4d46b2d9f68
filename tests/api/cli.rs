//! The `signup` binary: `migrate`, and start-up refusing bad configuration.

use std::process::Command;

fn signup() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_signup"));
    // The developer's own SIGNUP_ variables must not leak into these runs.
    for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("SIGNUP_")) {
        command.env_remove(name);
    }
    command
}

#[test]
fn migrate_creates_the_sqlite_file_and_its_tables() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("fresh.db");

    let output = signup()
        .arg("migrate")
        .current_dir(dir.path())
        .env("SIGNUP_DATABASE__URL", format!("sqlite://{}", db.display()))
        .output()
        .expect("signup runs");

    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(db.exists(), "the database file is created");
    let second = signup()
        .arg("migrate")
        .current_dir(dir.path())
        .env("SIGNUP_DATABASE__URL", format!("sqlite://{}", db.display()))
        .output()
        .expect("signup runs");
    assert!(second.status.success(), "migrating twice is a no-op");
}

#[test]
fn an_unknown_or_invalid_key_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[server]\nbind = \"127.0.0.1:0\"\nworkerz = 3\n")
        .expect("write config");
    let cases: Vec<(Vec<&str>, Vec<(&str, &str)>, &str)> = vec![
        (
            vec!["--config", config.to_str().unwrap_or_default(), "serve"],
            vec![],
            "server.workerz",
        ),
        (
            vec!["serve"],
            vec![("SIGNUP_SERVER__WORKERZ", "3")],
            "SIGNUP_SERVER__WORKERZ",
        ),
        (
            vec!["migrate"],
            vec![("SIGNUP_EMAIL_SYNC__RETRY__MAX_ATTEMPTS", "lots")],
            "email_sync.retry.max_attempts",
        ),
    ];
    for (args, env, expected) in cases {
        let output = signup()
            .args(&args)
            .current_dir(dir.path())
            .envs(env)
            .output()
            .expect("signup runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} must fail");
        assert!(
            stderr.contains(expected),
            "{args:?}: `{stderr}` names {expected}"
        );
    }
}

#[test]
fn a_missing_config_file_is_a_clear_error() {
    let output = signup()
        .args(["--config", "/nonexistent/signup.toml", "migrate"])
        .output()
        .expect("signup runs");

    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/signup.toml"));
}

/// `signup mock-provider`, killed on drop.
struct MockProvider(std::process::Child);

impl MockProvider {
    /// Starts `signup mock-provider --bind 127.0.0.1:<free port> <args>` and waits until it
    /// listens; returns it and its port.
    async fn start(args: &[&str]) -> (Self, u16) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mock = MockProvider(
            signup()
                .args(["mock-provider", "--bind", &format!("127.0.0.1:{port}")])
                .args(args)
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("mock-provider starts"),
        );
        crate::helpers::wait_until(
            "the mock listens",
            std::time::Duration::from_secs(20),
            || async { std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() },
        )
        .await;
        (mock, port)
    }
}

impl Drop for MockProvider {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[actix_web::test]
async fn the_mock_provider_accepts_signed_deliveries_and_rejects_bad_signatures() {
    signup::startup::install_crypto_provider();
    let (_mock, port) = MockProvider::start(&["--secret", crate::helpers::SECRET]).await;
    let url = format!("http://127.0.0.1:{port}/webhook");
    let client = reqwest::Client::new();
    let key = signup::email::webhook::decode_secret(crate::helpers::SECRET).expect("secret");
    let body = r#"{"type":"user.registered","timestamp":"2026-01-01T00:00:00Z","data":{"user_id":"00000000-0000-0000-0000-000000000000","username":"a","email":"a@example.com","registered_at":"2026-01-01T00:00:00.000000Z"}}"#;
    let timestamp = chrono::Utc::now().timestamp();
    let send = |signature: String| {
        client
            .post(&url)
            .header("webhook-id", "msg_1")
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
    };

    let good = send(signup::email::webhook::sign(&key, "msg_1", timestamp, body))
        .await
        .expect("sent");
    let bad = send(signup::email::webhook::sign(
        b"another key",
        "msg_1",
        timestamp,
        body,
    ))
    .await
    .expect("sent");

    assert!(good.status().is_success(), "{}", good.status());
    assert_eq!(bad.status().as_u16(), 401);
}

#[test]
fn an_unusable_sqlite_file_is_a_clear_start_up_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let read_only = dir.path().join("ro.db");
    let created = signup()
        .arg("migrate")
        .current_dir(dir.path())
        .env(
            "SIGNUP_DATABASE__URL",
            format!("sqlite://{}", read_only.display()),
        )
        .output()
        .expect("signup runs");
    assert!(created.status.success());
    let cases = [
        (
            format!("sqlite://{}/missing/dir/signup.db", dir.path().display()),
            "missing directory",
        ),
        // Opened read-only (root ignores file permissions, so the mode is set in the URL).
        (
            format!("sqlite://{}?mode=ro", read_only.display()),
            "read-only database",
        ),
    ];
    for (url, why) in cases {
        let output = signup()
            .arg("serve")
            .current_dir(dir.path())
            .env("SIGNUP_DATABASE__URL", &url)
            .env("SIGNUP_SERVER__BIND", "127.0.0.1:0")
            .output()
            .expect("signup runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{why}: must not start");
        assert!(stderr.contains("database"), "{why}: {stderr}");
        assert!(
            stderr.contains("database.url"),
            "{why}: names the setting: {stderr}"
        );
    }
}

#[actix_web::test]
async fn the_mock_provider_speaks_each_providers_api_as_signups_adapters_do() {
    use signup::configuration::ProviderKind;
    signup::startup::install_crypto_provider();
    let key = "mock-key-123";
    for (name, kind) in [
        ("mailchimp", ProviderKind::Mailchimp),
        ("sendgrid", ProviderKind::Sendgrid),
        ("brevo", ProviderKind::Brevo),
        ("resend", ProviderKind::Resend),
        ("mailgun", ProviderKind::Mailgun),
    ] {
        let (_mock, port) = MockProvider::start(&["--kind", name, "--api-key", key]).await;
        let base = crate::helpers::url(&format!("http://127.0.0.1:{port}"));
        let app = crate::helpers::spawn_app_with(move |s| {
            use secrecy::SecretString;
            s.email_sync.kind = kind;
            s.email_sync.poll_interval = std::time::Duration::from_millis(200);
            s.email_sync.mailchimp.api_key = SecretString::from(key);
            s.email_sync.mailchimp.base_url = Some(base.clone());
            s.email_sync.mailchimp.list_id = "l1".into();
            s.email_sync.sendgrid.api_key = SecretString::from(key);
            s.email_sync.sendgrid.base_url = base.clone();
            s.email_sync.brevo.api_key = SecretString::from(key);
            s.email_sync.brevo.base_url = base.clone();
            s.email_sync.resend.api_key = SecretString::from(key);
            s.email_sync.resend.base_url = base.clone();
            s.email_sync.mailgun.api_key = SecretString::from(key);
            s.email_sync.mailgun.base_url = base.clone();
            s.email_sync.mailgun.list = "news@mg.example.com".into();
        })
        .await;

        app.register_all(1..3).await;

        crate::helpers::wait_all_delivered(&app.db, 2, std::time::Duration::from_secs(30)).await;
        let wrong_key = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}/v3/contacts"))
            .header("api-key", "not the key")
            .json(&serde_json::json!({"email": "x@example.com"}))
            .send()
            .await
            .expect("answered");
        if kind == ProviderKind::Brevo {
            assert_eq!(wrong_key.status().as_u16(), 401, "{name}: wrong key");
        }
    }
}
