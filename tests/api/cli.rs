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
