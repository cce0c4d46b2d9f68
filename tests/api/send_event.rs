//! `signup mock-provider send-event`: a person tries the consent loop by hand (SPEC §8). The
//! binary signs each kind's event with the credential from signup's own configuration (here,
//! the environment) and the running server applies it.

use serde_json::Value;

use crate::admin::TOKEN;
use crate::helpers::spawn_app_with;

const MAILGUN_KEY: &str = "mailgun-webhook-signing-key-by-hand";
const BREVO_TOKEN: &str = "brevo-webhook-token-by-hand";
const MAILCHIMP_SECRET: &str = "mailchimp-webhook-secret-by-hand";
const RESEND_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Runs `signup mock-provider send-event` with `args` (off the test's runtime, which serves
/// the app), configured by the environment as an operator would: its exit status and output.
async fn send_event(args: &[&str]) -> (bool, String) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let dir = tempfile::tempdir().expect("a temp dir");
    let output = actix_web::rt::task::spawn_blocking(move || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_signup"));
        for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("SIGNUP_")) {
            command.env_remove(name);
        }
        command
            .current_dir(dir.path())
            .env(
                "SIGNUP_EMAIL_SYNC__MAILGUN__WEBHOOK_SIGNING_KEY",
                MAILGUN_KEY,
            )
            .env("SIGNUP_EMAIL_SYNC__BREVO__WEBHOOK_TOKEN", BREVO_TOKEN)
            .env(
                "SIGNUP_EMAIL_SYNC__MAILCHIMP__WEBHOOK_SECRET",
                MAILCHIMP_SECRET,
            )
            .env("SIGNUP_EMAIL_SYNC__RESEND__WEBHOOK_SECRET", RESEND_SECRET)
            .args(["mock-provider", "send-event"])
            .args(&args)
            .output()
            .expect("signup runs")
    })
    .await
    .expect("the command's thread");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[actix_web::test]
async fn each_kinds_event_sent_by_hand_is_verified_and_applied() {
    let sendgrid_key = signup::mock_provider::sendgrid_public_key();
    let app = spawn_app_with(move |s| {
        s.email_sync.mailgun.webhook_signing_key = MAILGUN_KEY.into();
        s.email_sync.brevo.webhook_token = BREVO_TOKEN.into();
        s.email_sync.mailchimp.webhook_secret = MAILCHIMP_SECRET.into();
        s.email_sync.resend.webhook_secret = Some(RESEND_SECRET.parse().expect("a whsec_ secret"));
        s.email_sync.sendgrid.webhook_public_key = Some(sendgrid_key.parse().expect("the key"));
        s.admin.token = Some(TOKEN.into());
    })
    .await;
    let cases = [
        ("mailchimp", "unsubscribe", "unsubscribed"),
        ("sendgrid", "spamreport", "complained"),
        ("brevo", "hardBounce", "bounced"),
        ("resend", "email.complained", "complained"),
        ("mailgun", "failed", "bounced"),
    ];
    for (n, (kind, event, state)) in cases.into_iter().enumerate() {
        let id = crate::consent::register(&app, n).await;
        let email = format!("user{n}@example.com");
        let (ok, output) = send_event(&[
            "--kind",
            kind,
            "--type",
            event,
            "--email",
            &email,
            "--seconds-ago",
            "5",
            "--to",
            &app.address,
        ])
        .await;
        assert!(ok, "{kind}: {output}");
        assert!(output.contains("applied"), "{kind}: {output}");
        let (_, registration) = app
            .admin_json(reqwest::Method::GET, &format!("/api/v1/registrations/{id}"))
            .await;
        let consent: &Value = &registration["consent"];
        assert_eq!(consent["state"], state, "{kind}: {consent}");
        assert_eq!(consent["source"], "provider event");
    }

    // A wrong credential is refused by the server, and the command says so.
    let (ok, output) = send_event(&[
        "--kind",
        "mailgun",
        "--type",
        "unsubscribed",
        "--email",
        "user0@example.com",
        "--secret",
        "not-the-key",
        "--to",
        &app.address,
    ])
    .await;
    assert!(!ok, "{output}");
    assert!(output.contains("401"), "{output}");
}
