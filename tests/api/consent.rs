//! Consent (SPEC §8): the providers' events about a person, verified first, applied in event
//! time, idempotent by id, and counted. Each event here is built as the provider documents it
//! and signed independently of signup's own code.

use chrono::{DateTime, Duration, Utc};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::admin::TOKEN;
use crate::helpers::{
    PATIENCE, TestApp, registration, spawn_app, spawn_app_with, use_provider_kind, wait_until,
};

pub const MAILGUN_KEY: &str = "mailgun-webhook-signing-key-0123456789";
pub const BREVO_TOKEN: &str = "brevo-webhook-token-0123456789abcdef";
pub const MAILCHIMP_SECRET: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822c";
/// A Svix secret as Resend shows it.
pub const RESEND_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

pub async fn app() -> TestApp {
    spawn_app_with(|s| {
        s.email_sync.mailgun.webhook_signing_key = MAILGUN_KEY.into();
        s.email_sync.resend.webhook_secret = Some(RESEND_SECRET.parse().expect("a whsec_ secret"));
        s.email_sync.mailchimp.webhook_secret = MAILCHIMP_SECRET.into();
        s.email_sync.brevo.webhook_token = BREVO_TOKEN.into();
        s.admin.token = Some(TOKEN.into());
    })
    .await
}

/// A Mailgun webhook body (its "Securing Webhooks" page): the hex HMAC-SHA256 of
/// `timestamp ‖ token`, and the event's data.
pub fn mailgun_event(key: &str, signed_at: DateTime<Utc>, data: Value) -> Value {
    let timestamp = signed_at.timestamp().to_string();
    let token = "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0";
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("any key");
    mac.update(timestamp.as_bytes());
    mac.update(token.as_bytes());
    let signature: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    json!({
        "signature": {"timestamp": timestamp, "token": token, "signature": signature},
        "event-data": data,
    })
}

/// `event-data` of an event of `kind` about `recipient` at `at`, with `id`.
pub fn data(kind: &str, id: &str, recipient: &str, at: DateTime<Utc>) -> Value {
    json!({
        "event": kind,
        "id": id,
        "timestamp": at.timestamp_millis() as f64 / 1000.0,
        "recipient": recipient,
        "log-level": "warn",
        "message": {"headers": {"message-id": "20130503182626.18666.16540@example.com"}},
    })
}

pub async fn post_mailgun(app: &TestApp, body: &Value) -> reqwest::Response {
    app.client
        .post(app.url("/hooks/mailgun"))
        .json(body)
        .send()
        .await
        .expect("sent")
}

/// Registers user `n` and answers its id. A 503 (shed on a loaded machine; nothing stored,
/// SPEC §4.7) is sent again, as a client would.
pub async fn register(app: &TestApp, n: usize) -> String {
    for _ in 0..20 {
        let response = app.post_registration(&registration(n)).await;
        if response.status() == 503 {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            continue;
        }
        let created: Value = response.json().await.expect("json");
        return created["id"].as_str().expect("an id").to_owned();
    }
    panic!("registration {n} was shed 20 times")
}

pub async fn consent_of(app: &TestApp, id: &str) -> Value {
    let (status, body) = app
        .admin_json(reqwest::Method::GET, &format!("/api/v1/registrations/{id}"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["consent"].clone()
}

async fn events_counted(app: &TestApp, outcome: &str) -> f64 {
    let text = app.get("/metrics").await.text().await.expect("text");
    let wanted = format!("signup_provider_events_total{{kind=\"mailgun\",outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&wanted))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[actix_web::test]
async fn a_mailgun_unsubscribe_sets_the_persons_consent() {
    let app = app().await;
    let id = register(&app, 1).await;
    assert_eq!(
        consent_of(&app, &id).await["state"],
        Value::Null,
        "nothing said yet"
    );

    let at = Utc::now() - Duration::seconds(10);
    let body = mailgun_event(
        MAILGUN_KEY,
        Utc::now(),
        data("unsubscribed", "ev-1", "User1@Example.com", at),
    );
    let response = post_mailgun(&app, &body).await;
    assert_eq!(response.status().as_u16(), 200);

    let consent = consent_of(&app, &id).await;
    assert_eq!(consent["state"], "unsubscribed", "{consent}");
    assert_eq!(consent["source"], "provider event");
    assert_eq!(events_counted(&app, "applied").await, 1.0);
    wait_until("the consent gauge counts them", PATIENCE, || async {
        let text = app.get("/metrics").await.text().await.expect("text");
        text.lines()
            .any(|line| line == "signup_consent_state{state=\"unsubscribed\"} 1")
    })
    .await;
}

#[actix_web::test]
async fn a_permanent_failure_is_a_bounce_and_a_temporary_one_changes_nothing() {
    let app = app().await;
    let id = register(&app, 1).await;
    let now = Utc::now();
    let mut temporary = data("failed", "ev-t", "user1@example.com", now);
    temporary["severity"] = "temporary".into();
    assert_eq!(
        post_mailgun(&app, &mailgun_event(MAILGUN_KEY, now, temporary))
            .await
            .status()
            .as_u16(),
        200
    );
    assert_eq!(consent_of(&app, &id).await["state"], Value::Null);

    let mut permanent = data("failed", "ev-p", "user1@example.com", now);
    permanent["severity"] = "permanent".into();
    assert_eq!(
        post_mailgun(&app, &mailgun_event(MAILGUN_KEY, now, permanent))
            .await
            .status()
            .as_u16(),
        200
    );
    assert_eq!(consent_of(&app, &id).await["state"], "bounced");
}

/// Every request that is not a verified, new, newer event about a known person changes
/// nothing, and each is counted.
#[actix_web::test]
async fn forged_stale_replayed_older_unknown_oversized_and_malformed_events_change_nothing() {
    let app = app().await;
    let id = register(&app, 1).await;
    let now = Utc::now();
    let first = mailgun_event(
        MAILGUN_KEY,
        now,
        data("complained", "ev-1", "user1@example.com", now),
    );
    assert_eq!(post_mailgun(&app, &first).await.status().as_u16(), 200);
    assert_eq!(consent_of(&app, &id).await["state"], "complained");

    let refused: [(&str, Value, u16); 4] = [
        (
            "another key",
            mailgun_event(
                "not-the-key",
                now,
                data("unsubscribed", "ev-2", "user1@example.com", now),
            ),
            401,
        ),
        (
            "signed ten minutes ago",
            mailgun_event(
                MAILGUN_KEY,
                now - Duration::minutes(10),
                data("unsubscribed", "ev-3", "user1@example.com", now),
            ),
            401,
        ),
        (
            "no signature",
            json!({"event-data": data("unsubscribed", "ev-4", "user1@example.com", now)}),
            400,
        ),
        ("not an event", json!({"hello": "world"}), 400),
    ];
    for (what, body, status) in refused {
        assert_eq!(
            post_mailgun(&app, &body).await.status().as_u16(),
            status,
            "{what}"
        );
    }
    let mut tampered = mailgun_event(
        MAILGUN_KEY,
        now,
        data("unsubscribed", "ev-5", "user1@example.com", now),
    );
    tampered["signature"]["token"] = "another-token-the-provider-did-not-sign-000000000000".into();
    assert_eq!(
        post_mailgun(&app, &tampered).await.status().as_u16(),
        401,
        "a token it did not sign"
    );
    assert_eq!(events_counted(&app, "rejected").await, 5.0);

    let ignored = [
        ("a replay", first.clone()),
        (
            "an older event",
            mailgun_event(
                MAILGUN_KEY,
                now,
                data(
                    "unsubscribed",
                    "ev-6",
                    "user1@example.com",
                    now - Duration::hours(1),
                ),
            ),
        ),
        (
            "an unknown address",
            mailgun_event(
                MAILGUN_KEY,
                now,
                data("unsubscribed", "ev-7", "nobody@example.com", now),
            ),
        ),
        (
            "not about consent",
            mailgun_event(
                MAILGUN_KEY,
                now,
                data(
                    "delivered",
                    "ev-8",
                    "user1@example.com",
                    now + Duration::seconds(1),
                ),
            ),
        ),
    ];
    for (what, body) in ignored {
        let response = post_mailgun(&app, &body).await;
        assert_eq!(response.status().as_u16(), 200, "{what}");
        let taken: Value = response.json().await.expect("json");
        assert_eq!(taken["outcomes"], json!(["ignored"]), "{what}");
    }
    assert_eq!(events_counted(&app, "ignored").await, 4.0);

    let huge = json!({"padding": "x".repeat(64 * 1024)});
    assert_eq!(post_mailgun(&app, &huge).await.status().as_u16(), 413);

    let consent = consent_of(&app, &id).await;
    assert_eq!(consent["state"], "complained", "{consent}");
    assert_eq!(events_counted(&app, "applied").await, 1.0);
}

#[actix_web::test]
async fn without_its_signing_key_the_mailgun_route_is_404() {
    let app = spawn_app().await;
    let now = Utc::now();
    let body = mailgun_event(
        MAILGUN_KEY,
        now,
        data("unsubscribed", "ev-1", "user1@example.com", now),
    );
    assert_eq!(post_mailgun(&app, &body).await.status().as_u16(), 404);
}

/// Erasure deletes a person's consent history, except that an address whose person declined
/// stays declined (SPEC §8): registered again, it shows the kept state, and nothing else of
/// the history (a bounce is not kept).
#[actix_web::test]
async fn erasure_keeps_only_a_declined_addresss_suppression() {
    let app = app().await;
    let now = Utc::now();
    let declined = register(&app, 1).await;
    let bounced = register(&app, 2).await;
    let mut hard = data("failed", "ev-2", "user2@example.com", now);
    hard["severity"] = "permanent".into();
    for body in [
        mailgun_event(
            MAILGUN_KEY,
            now,
            data("unsubscribed", "ev-1", "user1@example.com", now),
        ),
        mailgun_event(MAILGUN_KEY, now, hard),
    ] {
        assert_eq!(post_mailgun(&app, &body).await.status().as_u16(), 200);
    }
    for id in [&declined, &bounced] {
        let (status, _) = app
            .admin_json(reqwest::Method::DELETE, &format!("/admin/users/{id}"))
            .await;
        assert_eq!(status, 202);
    }

    let again = register(&app, 1).await;
    assert_eq!(consent_of(&app, &again).await["state"], "unsubscribed");
    let again = register(&app, 2).await;
    assert_eq!(consent_of(&app, &again).await["state"], Value::Null);
}

/// Posts Resend's `body` signed as Svix signs it (the `standardwebhooks` crate, not signup's
/// code) with `secret`, id `id`, at `signed_at`.
pub async fn post_resend(
    app: &TestApp,
    secret: &str,
    id: &str,
    signed_at: DateTime<Utc>,
    body: &Value,
) -> reqwest::Response {
    let body = body.to_string();
    let signature = standardwebhooks::Webhook::new(secret)
        .expect("secret")
        .sign(id, signed_at.timestamp(), body.as_bytes())
        .expect("signed");
    app.client
        .post(app.url("/hooks/resend"))
        .header("content-type", "application/json")
        .header("svix-id", id)
        .header("svix-timestamp", signed_at.timestamp().to_string())
        .header("svix-signature", signature)
        .body(body)
        .send()
        .await
        .expect("sent")
}

/// Resend's documented `email.complained`, and `contact.updated` with `unsubscribed`.
pub fn resend_event(kind: &str, at: DateTime<Utc>, email: &str) -> Value {
    let data = if kind.starts_with("contact.") {
        json!({"id": "479e3145-dd38-476b-932c-529ceb705947", "audience_id": "78261eea-8f8b-4381-83c6-79fa7120f1cf", "email": email, "first_name": "Steve", "unsubscribed": true, "created_at": at.to_rfc3339()})
    } else {
        json!({"created_at": at.to_rfc3339(), "email_id": "56761188-7520-42d8-8898-ff6fc54ce618", "from": "Acme <onboarding@resend.dev>", "to": [email], "subject": "Sending this example"})
    };
    json!({"type": kind, "created_at": at.to_rfc3339(), "data": data})
}

#[actix_web::test]
async fn resend_complaints_and_unsubscribes_apply_and_forgeries_change_nothing() {
    let app = app().await;
    let id = register(&app, 1).await;
    let now = Utc::now();

    let forged = post_resend(
        &app,
        "whsec_bm90IHRoZSBzZWNyZXQgYXQgYWxsIG5vLW5vLW5v",
        "msg_0",
        now,
        &resend_event("email.complained", now, "user1@example.com"),
    )
    .await;
    assert_eq!(forged.status().as_u16(), 401);
    let stale = post_resend(
        &app,
        RESEND_SECRET,
        "msg_0",
        now - Duration::minutes(6),
        &resend_event("email.complained", now, "user1@example.com"),
    )
    .await;
    assert_eq!(stale.status().as_u16(), 401);
    assert_eq!(consent_of(&app, &id).await["state"], Value::Null);

    let earlier = now - Duration::seconds(30);
    let unsubscribed = resend_event("contact.updated", earlier, "user1@example.com");
    assert_eq!(
        post_resend(&app, RESEND_SECRET, "msg_1", now, &unsubscribed)
            .await
            .status()
            .as_u16(),
        200
    );
    assert_eq!(consent_of(&app, &id).await["state"], "unsubscribed");

    let complained = resend_event("email.complained", now, "USER1@example.com");
    let response = post_resend(&app, RESEND_SECRET, "msg_2", now, &complained).await;
    assert_eq!(response.status().as_u16(), 200);
    let taken: Value = response.json().await.expect("json");
    assert_eq!(taken["outcomes"], json!(["applied"]));
    assert_eq!(consent_of(&app, &id).await["state"], "complained");

    // The same delivery again (Svix retries with the same id), and the older event again
    // under a new id: nothing changes.
    let replay = post_resend(&app, RESEND_SECRET, "msg_2", now, &complained).await;
    let taken: Value = replay.json().await.expect("json");
    assert_eq!(taken["outcomes"], json!(["ignored"]));
    let older = post_resend(&app, RESEND_SECRET, "msg_3", now, &unsubscribed).await;
    let taken: Value = older.json().await.expect("json");
    assert_eq!(taken["outcomes"], json!(["ignored"]));
    assert_eq!(consent_of(&app, &id).await["state"], "complained");
}

#[actix_web::test]
async fn an_unknown_kinds_hook_is_404() {
    let app = app().await;
    let response = app
        .client
        .post(app.url("/hooks/postmark"))
        .json(&json!({}))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 404);
}

/// The end-to-end promise of SPEC §8 ("never undone"): a person who unsubscribed at Resend,
/// was erased, and whose address is registered again is not subscribed again: the provider
/// never gets a second upsert, and the new row is done as `suppressed`.
#[actix_web::test]
async fn an_address_that_unsubscribed_is_never_subscribed_again_even_after_erasure() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/contacts"))
        .respond_with(
            ResponseTemplate::new(201).set_body_json(json!({"object": "contact", "id": "c-1"})),
        )
        .mount(&provider)
        .await;
    Mock::given(method("DELETE"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"object": "contact", "deleted": true})),
        )
        .mount(&provider)
        .await;
    let base = provider.uri();
    let app = spawn_app_with(move |s| {
        use_provider_kind(
            s,
            signup::configuration::ProviderKind::Resend,
            &base,
            "re_key",
        );
        s.email_sync.resend.webhook_secret = Some(RESEND_SECRET.parse().expect("a whsec_ secret"));
        s.admin.token = Some(TOKEN.into());
    })
    .await;
    let upserts = || async {
        provider
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter(|r| r.method.as_str() == "POST")
            .count()
    };

    let id = register(&app, 1).await;
    wait_until("the upsert reached Resend", PATIENCE, || async {
        upserts().await == 1
    })
    .await;
    let now = Utc::now();
    let unsubscribed = resend_event("contact.updated", now, "user1@example.com");
    assert_eq!(
        post_resend(&app, RESEND_SECRET, "msg_1", now, &unsubscribed)
            .await
            .status()
            .as_u16(),
        200
    );
    let (status, _) = app
        .admin_json(reqwest::Method::DELETE, &format!("/admin/users/{id}"))
        .await;
    assert_eq!(status, 202);

    let again = register(&app, 1).await;
    app.wait_all_delivered(3).await;
    assert_eq!(upserts().await, 1, "the address was not subscribed again");
    let rows = app.outbox_rows().await;
    let new_row = rows
        .iter()
        .find(|r| r.user_id.to_string() == again)
        .expect("the new registration's row");
    assert!(
        new_row
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("suppressed")),
        "{new_row:?}"
    );
    assert_eq!(new_row.attempts, 0, "no request, no attempt");
    assert_eq!(consent_of(&app, &again).await["state"], "unsubscribed");
}

/// Mailchimp's documented form (its "Webhooks" guide), `type` about `email` fired at `at`.
pub fn mailchimp_form(kind: &str, email: &str, at: DateTime<Utc>) -> Vec<(String, String)> {
    [
        ("type", kind.to_owned()),
        ("fired_at", at.format("%Y-%m-%d %H:%M:%S").to_string()),
        ("data[action]", "unsub".into()),
        ("data[reason]", "manual".into()),
        ("data[id]", "8a25ff1d98".into()),
        ("data[list_id]", "a6b5da1054".into()),
        ("data[email]", email.to_owned()),
        ("data[email_type]", "html".into()),
        ("data[merges][EMAIL]", email.to_owned()),
        ("data[ip_opt]", "10.20.10.30".into()),
        ("data[campaign_id]", "cb398d21d2".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

pub async fn post_mailchimp(
    app: &TestApp,
    secret: &str,
    form: &[(String, String)],
) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/hooks/mailchimp/{secret}")))
        .form(form)
        .send()
        .await
        .expect("sent")
}

#[actix_web::test]
async fn mailchimp_events_come_to_their_secret_url_and_its_validator_is_answered() {
    let app = app().await;
    let id = register(&app, 1).await;
    let at = Utc::now() - Duration::minutes(1);

    let validator = app
        .get(&format!("/hooks/mailchimp/{MAILCHIMP_SECRET}"))
        .await;
    assert_eq!(
        validator.status().as_u16(),
        200,
        "Mailchimp's validator GET"
    );
    assert_eq!(
        app.get("/hooks/mailchimp/guessed").await.status().as_u16(),
        401
    );

    let unsubscribe = mailchimp_form("unsubscribe", "user1@example.com", at);
    let wrong = post_mailchimp(&app, "guessed", &unsubscribe).await;
    assert_eq!(wrong.status().as_u16(), 401);
    assert_eq!(
        consent_of(&app, &id).await["state"],
        Value::Null,
        "nothing changed"
    );

    let response = post_mailchimp(&app, MAILCHIMP_SECRET, &unsubscribe).await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(consent_of(&app, &id).await["state"], "unsubscribed");
    let again = post_mailchimp(&app, MAILCHIMP_SECRET, &unsubscribe).await;
    let taken: Value = again.json().await.expect("json");
    assert_eq!(
        taken["outcomes"],
        json!(["ignored"]),
        "the same delivery again"
    );

    let cleaned = mailchimp_form("cleaned", "user1@example.com", at + Duration::seconds(1));
    assert_eq!(
        post_mailchimp(&app, MAILCHIMP_SECRET, &cleaned)
            .await
            .status()
            .as_u16(),
        200
    );
    assert_eq!(consent_of(&app, &id).await["state"], "cleaned");
}

#[actix_web::test]
async fn without_its_secret_the_mailchimp_route_is_404() {
    let app = spawn_app().await;
    let form = mailchimp_form("unsubscribe", "user1@example.com", Utc::now());
    assert_eq!(
        post_mailchimp(&app, "anything", &form)
            .await
            .status()
            .as_u16(),
        404
    );
    assert_eq!(
        app.get("/hooks/mailchimp/anything").await.status().as_u16(),
        404
    );
}

/// Brevo's documented marketing event `kind` about `email` at `at`.
pub fn brevo_event(kind: &str, email: &str, at: DateTime<Utc>) -> Value {
    json!({
        "id": 123456,
        "camp_id": 12,
        "email": email,
        "campaign name": "My First Campaign",
        "date_sent": "2020-10-09 00:00:00",
        "date_event": "2020-10-09 00:00:00",
        "event": kind,
        "tag": "",
        "ts_sent": at.timestamp() - 60,
        "ts_event": at.timestamp(),
        "ts": at.timestamp() + 3600,
    })
}

pub async fn post_brevo(
    app: &TestApp,
    authorization: Option<&str>,
    body: &Value,
) -> reqwest::Response {
    let mut request = app.client.post(app.url("/hooks/brevo")).json(body);
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    request.send().await.expect("sent")
}

#[actix_web::test]
async fn brevo_events_are_taken_with_the_configured_token_only() {
    let app = app().await;
    let id = register(&app, 1).await;
    let at = Utc::now() - Duration::minutes(1);
    let spam = brevo_event("spam", "user1@example.com", at);
    let bearer = format!("Bearer {BREVO_TOKEN}");

    assert_eq!(post_brevo(&app, None, &spam).await.status().as_u16(), 401);
    assert_eq!(
        post_brevo(&app, Some("Bearer guessed"), &spam)
            .await
            .status()
            .as_u16(),
        401
    );
    assert_eq!(
        consent_of(&app, &id).await["state"],
        Value::Null,
        "nothing changed"
    );

    let response = post_brevo(&app, Some(&bearer), &spam).await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(consent_of(&app, &id).await["state"], "complained");
    let replay: Value = post_brevo(&app, Some(&bearer), &spam)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(replay["outcomes"], json!(["ignored"]));

    let batch = json!([
        brevo_event("opened", "user1@example.com", at + Duration::seconds(5)),
        brevo_event(
            "unsubscribe",
            "user1@example.com",
            at + Duration::seconds(10)
        ),
    ]);
    let taken: Value = post_brevo(&app, Some(&bearer), &batch)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(taken["outcomes"], json!(["ignored", "applied"]));
    assert_eq!(consent_of(&app, &id).await["state"], "unsubscribed");
}

/// SendGrid's Signed Event Webhook, with a key pair of the test's own: the public key given as
/// SendGrid shows it (base64 DER), each request signed over `timestamp ‖ body`.
#[actix_web::test]
async fn sendgrid_signed_events_apply_per_event_and_a_forged_batch_changes_nothing() {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use p256::ecdsa::SigningKey;
    use p256::pkcs8::EncodePublicKey;
    let signing = SigningKey::from_slice(&[42u8; 32]).expect("a scalar");
    let shown = STANDARD.encode(
        signing
            .verifying_key()
            .to_public_key_der()
            .expect("der")
            .as_bytes(),
    );
    let app = spawn_app_with(move |s| {
        s.email_sync.sendgrid.webhook_public_key = Some(shown.parse().expect("the key"));
        s.admin.token = Some(TOKEN.into());
    })
    .await;
    let (one, two) = (register(&app, 1).await, register(&app, 2).await);
    let now = Utc::now();
    let body = json!([
        {"email": "user1@example.com", "timestamp": now.timestamp() - 5, "event": "spamreport", "sg_event_id": "sg-1", "sg_message_id": "m1"},
        {"email": "user2@example.com", "timestamp": now.timestamp() - 4, "event": "bounce", "type": "bounce", "reason": "550 5.1.1 no such user", "sg_event_id": "sg-2"},
        {"email": "user2@example.com", "timestamp": now.timestamp() - 3, "event": "delivered", "sg_event_id": "sg-3"},
    ])
    .to_string();
    let post = |signer: SigningKey, body: String| post_sendgrid(&app, signer, now, body);

    let forger = SigningKey::from_slice(&[43u8; 32]).expect("a scalar");
    assert_eq!(post(forger, body.clone()).await.status().as_u16(), 401);
    assert_eq!(
        consent_of(&app, &one).await["state"],
        Value::Null,
        "nothing changed"
    );

    let response = post(signing.clone(), body.clone()).await;
    assert_eq!(response.status().as_u16(), 200);
    let taken: Value = response.json().await.expect("json");
    assert_eq!(taken["outcomes"], json!(["applied", "applied", "ignored"]));
    assert_eq!(consent_of(&app, &one).await["state"], "complained");
    assert_eq!(consent_of(&app, &two).await["state"], "bounced");
}

/// The console's search shows the person's consent: state, since when, and who said it.
#[actix_web::test]
async fn the_console_shows_a_persons_consent() {
    let app = spawn_app_with(|s| {
        s.email_sync.mailgun.webhook_signing_key = MAILGUN_KEY.into();
        s.admin.token = Some(crate::console::TOKEN.into());
    })
    .await;
    register(&app, 1).await;
    let browser = crate::console::Browser::signed_in(&app).await;
    let page = browser.text("/admin/search?q=user1@example.com").await;
    assert!(page.contains("not known yet"), "{page}");

    let now = Utc::now();
    let body = mailgun_event(
        MAILGUN_KEY,
        now,
        data("unsubscribed", "ev-1", "user1@example.com", now),
    );
    assert_eq!(post_mailgun(&app, &body).await.status().as_u16(), 200);
    let page = browser.text("/admin/search?q=user1@example.com").await;
    assert!(
        page.contains("unsubscribed since") && page.contains("(provider event)"),
        "{page}"
    );
}

/// Double opt-in (SPEC §8): with `status_if_new = "pending"` Mailchimp asks a new member to
/// confirm; the person is `pending` from the upsert until Mailchimp's `subscribe` event.
#[actix_web::test]
async fn a_double_opt_in_is_pending_until_mailchimps_subscribe_event() {
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let provider = MockServer::start().await;
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"id": "62eeb292278cc15f5817cb78f7790b08", "email_address": "user1@example.com", "status": "pending"}),
        ))
        .mount(&provider)
        .await;
    let base = provider.uri();
    let app = spawn_app_with(move |s| {
        use_provider_kind(
            s,
            signup::configuration::ProviderKind::Mailchimp,
            &base,
            "key-us1",
        );
        s.email_sync.mailchimp.webhook_secret = MAILCHIMP_SECRET.into();
        s.admin.token = Some(TOKEN.into());
    })
    .await;
    let id = register(&app, 1).await;
    app.wait_all_delivered(1).await;
    wait_until("the person is pending", PATIENCE, || async {
        consent_of(&app, &id).await["state"] == "pending"
    })
    .await;
    assert_eq!(consent_of(&app, &id).await["source"], "provider answer");

    // Mailchimp's clock may be behind ours: its word still replaces signup's own inference.
    let confirmed = mailchimp_form(
        "subscribe",
        "user1@example.com",
        Utc::now() - Duration::minutes(1),
    );
    assert_eq!(
        post_mailchimp(&app, MAILCHIMP_SECRET, &confirmed)
            .await
            .status()
            .as_u16(),
        200
    );
    let consent = consent_of(&app, &id).await;
    assert_eq!(consent["state"], "subscribed", "{consent}");
    assert_eq!(consent["source"], "provider event");
}

/// Posts `body` to SendGrid's route signed by `signer` as SendGrid signs (ECDSA P-256 over
/// `timestamp ‖ body`, base64 DER), at `signed_at`.
pub async fn post_sendgrid(
    app: &TestApp,
    signer: p256::ecdsa::SigningKey,
    signed_at: DateTime<Utc>,
    body: String,
) -> reqwest::Response {
    use base64::Engine;
    use p256::ecdsa::Signature;
    use p256::ecdsa::signature::Signer;
    let timestamp = signed_at.timestamp().to_string();
    let signature: Signature = signer.sign(format!("{timestamp}{body}").as_bytes());
    app.client
        .post(app.url("/hooks/sendgrid"))
        .header("content-type", "application/json")
        .header(
            "X-Twilio-Email-Event-Webhook-Signature",
            base64::engine::general_purpose::STANDARD.encode(signature.to_der()),
        )
        .header("X-Twilio-Email-Event-Webhook-Timestamp", timestamp)
        .body(body)
        .send()
        .await
        .expect("sent")
}
