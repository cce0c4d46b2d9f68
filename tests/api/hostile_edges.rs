//! The hostile edges of SPEC §4.7: labels a client cannot grow, proxies that append header
//! lines, forged CSRF tokens and welcome cookies, concurrent replays of one key, secrets in
//! provider URLs, markup in addresses, and overload.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::helpers::{
    TestApp, problem, registration, spawn_app, spawn_app_with, use_provider, wait_until,
};

#[actix_web::test]
async fn invented_http_methods_are_counted_as_other_and_add_no_label() {
    let app = spawn_app().await;
    let invented = "X".repeat(4000);
    for n in 0..20 {
        let method = reqwest::Method::from_bytes(format!("{invented}{n}").as_bytes())
            .expect("a valid token");
        app.client
            .request(method, app.url("/health/live"))
            .send()
            .await
            .expect("answered");
    }

    let scrape = app.get("/metrics").await.text().await.expect("text");

    assert!(
        !scrape.contains(&invented),
        "an invented method became a label"
    );
    assert!(
        scrape.contains(r#"method="other""#),
        "counted as other: {}",
        scrape.len()
    );
    assert!(scrape.len() < 200_000, "scrape of {} bytes", scrape.len());
}

/// Rate limit with a burst of 1; every 127.x peer is a trusted proxy (a CIDR range).
async fn behind_a_proxy() -> TestApp {
    spawn_app_with(|s| {
        s.rate_limit.per_minute = 60;
        s.rate_limit.burst = 1;
        s.server.trusted_proxies = vec!["127.0.0.0/8".parse().expect("a range")];
    })
    .await
}

#[actix_web::test]
async fn a_proxy_that_appends_its_own_forwarded_for_line_is_read_to_the_last_line() {
    let app = behind_a_proxy().await;
    // Each client wrote "1.1.1.1" itself; the proxy (HAProxy's option forwardfor) appended a
    // second line with the address it saw.
    let from = |client: &'static str, n: usize| {
        app.client
            .post(app.url("/api/v1/registrations"))
            .header("x-forwarded-for", "1.1.1.1")
            .header("x-forwarded-for", client)
            .json(&registration(n))
            .send()
    };

    let first = from("203.0.113.1", 1).await.expect("sent");
    let again = from("203.0.113.1", 2).await.expect("sent");
    let other = from("203.0.113.2", 3).await.expect("sent");

    assert_eq!(first.status().as_u16(), 201);
    assert_eq!(
        again.status().as_u16(),
        429,
        "the same client, over its burst"
    );
    assert_eq!(
        other.status().as_u16(),
        201,
        "another client has an allowance of its own, whatever it wrote in its own line"
    );
}

type HmacSha256 = Hmac<Sha256>;

#[actix_web::test]
async fn a_csrf_token_computed_from_a_chosen_cookie_is_refused() {
    let app = spawn_app().await;
    // The attacker picks the cookie value and computes nonce.HMAC(cookie, nonce) itself.
    let session = URL_SAFE_NO_PAD.encode([7u8; 32]);
    let nonce = URL_SAFE_NO_PAD.encode([9u8; 16]);
    let mut mac = HmacSha256::new_from_slice(session.as_bytes()).expect("any key length");
    mac.update(nonce.as_bytes());
    let token = format!(
        "{nonce}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    );
    let browser = reqwest::Client::new();

    for cookie in [format!("signup_csrf={session}"), "signup_csrf=x".into()] {
        let response = browser
            .post(app.url("/register"))
            .header("cookie", &cookie)
            .form(&[
                ("username", "mallory"),
                ("email", "mallory@example.com"),
                ("password", "correct horse battery"),
                ("csrf_token", &token),
            ])
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status().as_u16(), 403, "{cookie}");
    }
    assert_eq!(app.user_count().await, 0);
}

#[actix_web::test]
async fn form_nonces_of_the_wrong_shape_are_403_never_503() {
    let app = spawn_app().await;
    let token = app.csrf_token().await;
    let (_, tag) = token.split_once('.').expect("nonce.tag");
    let cases = [
        (format!("{}.{tag}", "n".repeat(310)), "310 characters"),
        (format!("abc\0def.{tag}"), "a NUL byte"),
        (format!(".{tag}"), "empty"),
    ];
    for (csrf, why) in cases {
        let response = app
            .post_form(&[
                ("username", "mallory"),
                ("email", "mallory@example.com"),
                ("password", "correct horse battery"),
                ("csrf_token", &csrf),
            ])
            .await;
        assert_eq!(response.status().as_u16(), 403, "{why}");
    }
    assert_eq!(app.user_count().await, 0);
}

#[actix_web::test]
async fn a_welcome_cookie_naming_someone_else_greets_nobody() {
    let app = spawn_app().await;
    let created: Value = app
        .post_registration(&registration(1))
        .await
        .json()
        .await
        .expect("json");
    let id = created["id"].as_str().expect("an id");
    let stranger = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");

    let response = stranger
        .get(app.url("/register/welcome"))
        .header("cookie", format!("signup_welcome={id}"))
        .send()
        .await
        .expect("sent");

    assert_eq!(response.status().as_u16(), 303, "to the form");
    assert_eq!(response.headers()["location"], "/register");
}

#[actix_web::test]
async fn cookies_are_secure_by_the_configured_public_url_never_by_a_request_header() {
    let plain = spawn_app().await;
    let forged_https = plain
        .client
        .get(plain.url("/register"))
        .header("x-forwarded-proto", "https")
        .header("forwarded", "proto=https")
        .send()
        .await
        .expect("sent");
    let cookie = forged_https.headers()["set-cookie"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(cookie.starts_with("signup_csrf="), "{cookie}");
    assert!(!cookie.contains("Secure"), "{cookie}");

    let public = spawn_app_with(|s| {
        s.server.public_url = Some(crate::helpers::url("https://signup.example"))
    })
    .await;
    let response = public.get("/register").await;
    let cookie = response.headers()["set-cookie"].to_str().expect("ascii");
    assert!(cookie.starts_with("__Host-signup_csrf="), "{cookie}");
    assert!(cookie.contains("Secure"), "{cookie}");
    assert!(
        cookie.contains("Path=/;") || cookie.ends_with("Path=/"),
        "{cookie}"
    );
}

#[actix_web::test]
async fn concurrent_requests_with_one_key_and_different_passwords_get_one_account() {
    let app = spawn_app().await;
    for round in 0..10 {
        let key = format!("race-{round}");
        let body = |password: &str| json!({"username": format!("racer{round}"), "email": format!("racer{round}@example.com"), "password": password});
        let send = |password: &'static str| {
            app.client
                .post(app.url("/api/v1/registrations"))
                .header("idempotency-key", &key)
                .json(&body(password))
                .send()
        };

        let (a, b) = futures::join!(send("first password 1"), send("second password 2"));

        let mut statuses = [
            a.expect("sent").status().as_u16(),
            b.expect("sent").status().as_u16(),
        ];
        statuses.sort_unstable();
        assert_eq!(
            statuses,
            [201, 422],
            "round {round}: only the password that created the account replays"
        );
    }
    assert_eq!(app.user_count().await, 10);
}

#[actix_web::test]
async fn a_secret_in_the_provider_url_never_reaches_the_stored_error() {
    let app = spawn_app_with(|s| {
        // Nothing listens on port 9: every attempt fails with "connection refused".
        use_provider(s, "http://user:pw-in-userinfo@127.0.0.1:9");
        s.email_sync.url =
            crate::helpers::url("http://user:pw-in-userinfo@127.0.0.1:9/hook?api_key=key-in-query");
    })
    .await;
    app.register_all(1..2).await;

    wait_until("an attempt failed", Duration::from_secs(20), || async {
        app.outbox_rows()
            .await
            .iter()
            .any(|r| r.last_error.is_some())
    })
    .await;

    let rows = app.outbox_rows().await;
    let error = rows[0].last_error.clone().unwrap_or_default();
    for secret in ["key-in-query", "api_key", "pw-in-userinfo"] {
        assert!(!error.contains(secret), "{secret} in {error:?}");
    }
    assert!(!error.is_empty());
}

#[actix_web::test]
async fn addresses_with_markup_or_invisible_characters_are_422() {
    let app = spawn_app().await;
    let cases = [
        (r#""><script>alert(1)</script>@x.co"#, "markup"),
        ("ab\u{202E}moc@x.co", "a bidi override"),
        ("a\u{200B}b@x.co", "a zero-width space"),
        (
            &"İ".repeat(200) as &str,
            "200 × İ: longer than 254 once lower-cased",
        ),
    ];
    for (email, why) in cases {
        let email = if email.contains('@') {
            email.to_owned()
        } else {
            format!("{email}@x.co")
        };
        let response = app
            .post_registration(&json!({"username": "someone", "email": email, "password": "correct horse battery"}))
            .await;
        let body = problem(response, 422, "invalid").await;
        assert_eq!(body["errors"][0]["field"], "email", "{why}");
    }
    assert_eq!(app.user_count().await, 0);
}

#[actix_web::test]
async fn a_flood_beyond_max_waiting_is_shed_at_once_with_503() {
    let app = spawn_app_with(|s| {
        // Slow hashes, one waiting place: most of a burst cannot even queue.
        s.password = signup::configuration::PasswordSettings {
            max_waiting: 1,
            ..signup::configuration::PasswordSettings::new(32 * 1024, 3, 1).expect("valid")
        };
    })
    .await;
    let requests = 30;

    let responses = futures::future::join_all((0..requests).map(|n| {
        let app = &app;
        async move { app.post_registration(&registration(n)).await }
    }))
    .await;

    let mut created = 0;
    let mut shed = 0;
    for response in responses {
        match response.status().as_u16() {
            201 => created += 1,
            503 => {
                assert!(response.headers().contains_key("retry-after"));
                problem(response, 503, "unavailable").await;
                shed += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(shed > 0, "nothing was shed: {created} created");
    assert!(created > 0, "nothing was accepted");
    assert_eq!(
        app.user_count().await,
        created as u64,
        "a shed request stores nothing"
    );
}
