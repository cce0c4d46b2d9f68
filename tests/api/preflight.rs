//! `signup --version` and `signup check` (SPEC §9): what the systemd unit runs before it starts
//! the server.

use std::process::{Command, Output};

fn signup(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_signup"));
    // The developer's own SIGNUP_ variables must not leak into these runs.
    for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("SIGNUP_")) {
        command.env_remove(name);
    }
    command
        .args(args)
        .current_dir(dir)
        .envs(env.iter().copied())
        .output()
        .expect("signup runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn the_version_names_the_release_and_the_commit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = signup(dir.path(), &["--version"], &[]);
    assert!(output.status.success());
    let line = text(&output);
    assert!(
        line.starts_with(&format!("signup {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{line}"
    );
}

#[test]
fn check_passes_a_good_configuration_and_opens_the_database_starting_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("signup.db");
    let url = format!("sqlite://{}", db.display());
    let output = signup(dir.path(), &["check"], &[("SIGNUP_DATABASE__URL", &url)]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(
        text(&output).contains("configuration valid"),
        "{}",
        text(&output)
    );
    // Nothing listens: check starts no server (the default port stays free to bind).
    assert!(std::net::TcpListener::bind("127.0.0.1:0").is_ok());
}

#[test]
fn check_exits_78_naming_every_bad_key_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = signup(
        dir.path(),
        &["check"],
        &[
            ("SIGNUP_EMAIL_SYNC__LEASE", "2s"),
            ("SIGNUP_ADMIN__TOKEN", "short"),
            ("SIGNUP_EMAIL_SYNC__RETRY__RANDOMIZATION", "2"),
        ],
    );
    assert_eq!(output.status.code(), Some(78), "{}", text(&output));
    let said = text(&output);
    for key in [
        "email_sync.lease",
        "admin.token",
        "email_sync.retry.randomization",
    ] {
        assert!(said.contains(key), "names {key}: {said}");
    }
}

#[test]
fn check_exits_78_when_the_database_cannot_be_opened() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!(
        "sqlite://{}",
        dir.path().join("no-such-dir").join("signup.db").display()
    );
    let output = signup(dir.path(), &["check"], &[("SIGNUP_DATABASE__URL", &url)]);
    assert_eq!(output.status.code(), Some(78), "{}", text(&output));
    assert!(text(&output).contains("database.url"), "{}", text(&output));
}

/// Runs `signup doctor` off the test's runtime (which serves the fakes) with `env` on a
/// migrated SQLite file: its exit status and output.
async fn doctor(env: Vec<(String, String)>) -> (bool, String) {
    actix_web::rt::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("signup.db").display());
        let mut env: Vec<(String, String)> = env;
        env.push(("SIGNUP_DATABASE__URL".into(), url));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let migrated = signup(dir.path(), &["migrate"], &env);
        assert!(migrated.status.success(), "{}", text(&migrated));
        let output = signup(dir.path(), &["doctor"], &env);
        (output.status.success(), text(&output))
    })
    .await
    .expect("the command's thread")
}

/// Each kind's read-only call, as its reference documents it: method, path and credentials.
fn kinds() -> Vec<(
    &'static str,
    wiremock::MockBuilder,
    Vec<(&'static str, &'static str)>,
)> {
    use wiremock::matchers::{header, header_exists, method, path};
    let basic = |user: &str| {
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:key-1"))
        )
    };
    vec![
        (
            "webhook",
            wiremock::Mock::given(method("POST"))
                .and(path("/webhook"))
                .and(header_exists("webhook-signature")),
            vec![],
        ),
        (
            "mailchimp",
            wiremock::Mock::given(method("GET"))
                .and(path("/3.0/lists/list1"))
                .and(header("authorization", basic("signup").as_str())),
            vec![
                ("LIST_ID", "list1"),
                ("WEBHOOK_SECRET", "mailchimp-hook-secret"),
            ],
        ),
        (
            "sendgrid",
            wiremock::Mock::given(method("GET"))
                .and(path("/v3/scopes"))
                .and(header("authorization", "Bearer key-1")),
            vec![(
                "WEBHOOK_PUBLIC_KEY",
                "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEjTJWvupQqEb/+AWaDfRADDu35jM8f0ABgTTvWeFHfySTctPb14vkrMSpM7fJaUGg+rGtereGsjhSLqbrjDAxHQ==",
            )],
        ),
        (
            "brevo",
            wiremock::Mock::given(method("GET"))
                .and(path("/v3/account"))
                .and(header("api-key", "key-1")),
            vec![("WEBHOOK_TOKEN", "brevo-hook-token")],
        ),
        (
            "resend",
            wiremock::Mock::given(method("GET"))
                .and(path("/domains"))
                .and(header("authorization", "Bearer key-1")),
            vec![("WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")],
        ),
        (
            "mailgun",
            wiremock::Mock::given(method("GET"))
                .and(path("/v3/lists/news@mg.example.com"))
                .and(header("authorization", basic("api").as_str())),
            vec![
                ("LIST", "news@mg.example.com"),
                ("WEBHOOK_SIGNING_KEY", "mailgun-signing-key"),
            ],
        ),
    ]
}

/// The settings that point `kind` at `base`.
fn settings_for(kind: &str, base: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = vec![
        ("SIGNUP_EMAIL_SYNC__KIND".to_owned(), kind.to_owned()),
        ("SIGNUP_EMAIL_SYNC__TIMEOUT".to_owned(), "2s".to_owned()),
        ("SIGNUP_EMAIL_SYNC__LEASE".to_owned(), "10s".to_owned()),
    ];
    if kind == "webhook" {
        env.push(("SIGNUP_EMAIL_SYNC__URL".into(), format!("{base}/webhook")));
        env.push((
            "SIGNUP_EMAIL_SYNC__SECRET".into(),
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
        ));
    } else {
        let section = kind.to_uppercase();
        env.push((
            format!("SIGNUP_EMAIL_SYNC__{section}__API_KEY"),
            "key-1".into(),
        ));
        env.push((
            format!("SIGNUP_EMAIL_SYNC__{section}__BASE_URL"),
            base.into(),
        ));
        for (key, value) in extra {
            env.push((
                format!("SIGNUP_EMAIL_SYNC__{section}__{key}"),
                (*value).into(),
            ));
        }
    }
    env
}

#[actix_web::test]
async fn doctor_passes_each_kind_whose_credentials_work_and_names_the_key_of_a_401() {
    for (kind, call, extra) in kinds() {
        let good = wiremock::MockServer::start().await;
        call.respond_with(
            wiremock::ResponseTemplate::new(200).set_body_json(serde_json::json!({})),
        )
        .expect(1)
        .mount(&good)
        .await;
        let (ok, said) = doctor(settings_for(kind, &good.uri(), &extra)).await;
        assert!(ok, "{kind}: {said}");
        assert!(said.contains("credentials work"), "{kind}: {said}");
        assert!(!said.contains("FAIL"), "{kind}: {said}");
        good.verify().await;

        let refusing = wiremock::MockServer::start().await;
        wiremock::Mock::given(wiremock::matchers::any())
            .respond_with(wiremock::ResponseTemplate::new(401))
            .mount(&refusing)
            .await;
        let (ok, said) = doctor(settings_for(kind, &refusing.uri(), &extra)).await;
        assert!(!ok, "{kind}: a 401 fails: {said}");
        let key = if kind == "webhook" {
            "email_sync.secret".to_owned()
        } else {
            format!("email_sync.{kind}.api_key")
        };
        assert!(
            said.contains("401") && said.contains(&key),
            "{kind}: names {key}: {said}"
        );
    }
}

#[actix_web::test]
async fn doctor_says_an_unreachable_provider_did_not_answer_within_the_timeout() {
    // Accepts connections and never answers: the request can only time out.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let base = format!("http://{}", silent.local_addr().expect("address"));
    let (ok, said) = doctor(settings_for("brevo", &base, &[("WEBHOOK_TOKEN", "t")])).await;
    assert!(!ok, "{said}");
    assert!(
        said.contains("no answer") && said.contains("timed out"),
        "{said}"
    );
    drop(silent);
}

#[actix_web::test]
async fn doctor_fails_a_database_with_pending_migrations_and_an_unset_consent_hook() {
    let provider = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::any())
        .respond_with(wiremock::ResponseTemplate::new(200))
        .mount(&provider)
        .await;
    let env = settings_for("brevo", &provider.uri(), &[]);
    let said = actix_web::rt::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("fresh.db").display());
        let mut env: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        env.push(("SIGNUP_DATABASE__URL", &url));
        let output = signup(dir.path(), &["doctor"], &env);
        assert!(!output.status.success(), "{}", text(&output));
        text(&output)
    })
    .await
    .expect("the command's thread");
    assert!(said.contains("migration(s) pending"), "{said}");
    assert!(said.contains("email_sync.brevo.webhook_token"), "{said}");
}
