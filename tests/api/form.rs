//! The HTML form over plain HTTP (SPEC §2.2); `browser.rs` drives it in Chromium.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::Mac;
use serde_json::Value;

use crate::helpers::{hidden_value, registration, spawn_app, spawn_app_with};

const PASSWORD: &str = "correct horse battery";

#[actix_web::test]
async fn the_root_redirects_to_the_form() {
    let app = spawn_app().await;

    let response = app.get("/").await;

    assert!(response.status().is_redirection());
    assert_eq!(response.headers()["location"], "/register");
}

#[actix_web::test]
async fn the_form_has_labelled_inputs_a_csrf_token_and_security_headers() {
    let app = spawn_app().await;

    let response = app.get("/register").await;

    assert_eq!(response.status().as_u16(), 200);
    let headers = response.headers().clone();
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("text/html")
    );
    let csp = headers["content-security-policy"].to_str().unwrap_or("");
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert!(headers.contains_key("referrer-policy"));
    assert_eq!(headers["x-frame-options"], "DENY");
    let cookie = headers["set-cookie"].to_str().unwrap_or("");
    assert!(
        cookie.starts_with("signup_csrf=") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let page = response.text().await.expect("html");
    for field in ["username", "email", "password"] {
        assert!(
            page.contains(&format!("<label for=\"{field}\">")),
            "label for {field}"
        );
        assert!(
            page.contains(&format!("id=\"{field}\" name=\"{field}\"")),
            "input {field}"
        );
    }
    assert!(hidden_value(&page, "csrf_token").is_some_and(|t| t.len() > 20));
    assert!(page.contains("type=\"submit\""));
    assert!(!page.contains("<script"), "works without JavaScript");
}

#[actix_web::test]
async fn a_submission_redirects_to_a_welcome_page_that_greets_the_user() {
    let app = spawn_app().await;
    let token = app.csrf_token().await;

    let response = app
        .post_form(&[
            ("username", "Grace"),
            ("email", "grace@example.com"),
            ("password", PASSWORD),
            ("csrf_token", &token),
        ])
        .await;

    assert_eq!(response.status().as_u16(), 303);
    assert_eq!(response.headers()["location"], "/register/welcome");
    let welcome = app.get("/register/welcome").await;
    assert_eq!(welcome.status().as_u16(), 200);
    assert!(
        welcome
            .text()
            .await
            .expect("html")
            .contains("Welcome, Grace!")
    );
    assert_eq!(app.user_count().await, 1);
}

#[actix_web::test]
async fn resubmitting_the_same_form_after_success_redirects_again_and_creates_nothing() {
    let app = spawn_app().await;
    let token = app.csrf_token().await;
    let fields = [
        ("username", "Grace"),
        ("email", "grace@example.com"),
        ("password", PASSWORD),
        ("csrf_token", &token),
    ];
    assert_eq!(app.post_form(&fields).await.status().as_u16(), 303);

    let again = app.post_form(&fields).await;

    assert_eq!(again.status().as_u16(), 303, "not a 409");
    assert_eq!(again.headers()["location"], "/register/welcome");
    assert!(
        app.get("/register/welcome")
            .await
            .text()
            .await
            .expect("html")
            .contains("Welcome, Grace!")
    );
    assert_eq!(app.user_count().await, 1);
    assert_eq!(app.outbox_rows().await.len(), 1);
}

#[actix_web::test]
async fn a_new_form_from_the_same_browser_registers_someone_new() {
    let app = spawn_app().await;
    let first = app.csrf_token().await;
    app.post_form(&[
        ("username", "Grace"),
        ("email", "grace@example.com"),
        ("password", PASSWORD),
        ("csrf_token", &first),
    ])
    .await;

    let second = app.csrf_token().await;
    let response = app
        .post_form(&[
            ("username", "Alan"),
            ("email", "alan@example.com"),
            ("password", PASSWORD),
            ("csrf_token", &second),
        ])
        .await;

    assert_ne!(first, second);
    assert_eq!(response.status().as_u16(), 303);
    assert!(
        app.get("/register/welcome")
            .await
            .text()
            .await
            .expect("html")
            .contains("Welcome, Alan!")
    );
    assert_eq!(app.user_count().await, 2);
}

#[actix_web::test]
async fn a_missing_or_wrong_csrf_token_is_403_and_creates_nothing() {
    let app = spawn_app().await;
    let token = app.csrf_token().await;
    let other_browser = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .expect("client");
    let cases: Vec<(&reqwest::Client, String, &str)> = vec![
        (&app.client, String::new(), "missing token"),
        (&app.client, "forged.token".into(), "forged token"),
        (&app.client, format!("{token}x"), "tampered token"),
        (
            &other_browser,
            token.clone(),
            "a valid token without its cookie",
        ),
    ];
    for (client, csrf, why) in cases {
        let response = client
            .post(app.url("/register"))
            .form(&[
                ("username", "mallory"),
                ("email", "m@example.com"),
                ("password", PASSWORD),
                ("csrf_token", &csrf),
            ])
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status().as_u16(), 403, "{why}");
    }
    assert_eq!(app.user_count().await, 0);
}

#[actix_web::test]
async fn a_taken_email_shows_the_form_again_with_409_a_message_by_the_field_and_the_username_kept()
{
    let app = spawn_app().await;
    let token = app.csrf_token().await;
    app.post_form(&[
        ("username", "Grace"),
        ("email", "grace@example.com"),
        ("password", PASSWORD),
        ("csrf_token", &token),
    ])
    .await;

    let token = app.csrf_token().await;
    let response = app
        .post_form(&[
            ("username", "grace2"),
            ("email", "GRACE@example.com"),
            ("password", PASSWORD),
            ("csrf_token", &token),
        ])
        .await;

    assert_eq!(response.status().as_u16(), 409);
    let page = response.text().await.expect("html");
    assert!(
        page.contains("id=\"email-error\""),
        "message tied to the email field"
    );
    assert!(page.contains("already exists"));
    assert!(page.contains("aria-describedby=\"email-error\" aria-invalid=\"true\""));
    assert_eq!(
        hidden_value(&page, "username").as_deref(),
        Some("grace2"),
        "username kept"
    );
    assert_eq!(
        hidden_value(&page, "email").as_deref(),
        Some("GRACE@example.com"),
        "email kept"
    );
    assert!(!page.contains(PASSWORD), "the password is never sent back");
    assert_eq!(app.user_count().await, 1);
}

#[actix_web::test]
async fn invalid_fields_show_the_form_again_with_422_and_a_message_per_field() {
    let app = spawn_app().await;
    let token = app.csrf_token().await;

    let response = app
        .post_form(&[
            ("username", "x"),
            ("email", "nope"),
            ("password", "short"),
            ("csrf_token", &token),
        ])
        .await;

    assert_eq!(response.status().as_u16(), 422);
    let page = response.text().await.expect("html");
    for field in ["username", "email", "password"] {
        assert!(
            page.contains(&format!("id=\"{field}-error\"")),
            "message for {field}"
        );
    }
    assert!(
        !page.contains("value=\"short\""),
        "the password is never sent back"
    );
    assert_eq!(app.user_count().await, 0);
}

#[actix_web::test]
async fn user_input_is_html_escaped() {
    let app = spawn_app().await;
    let token = app.csrf_token().await;
    let evil = "\"><script>alert(1)</script>";

    let response = app
        .post_form(&[
            ("username", evil),
            ("email", evil),
            ("password", PASSWORD),
            ("csrf_token", &token),
        ])
        .await;

    assert_eq!(response.status().as_u16(), 422);
    let page = response.text().await.expect("html");
    assert!(!page.contains("<script>"), "escaped");
    assert!(
        page.contains("&lt;script&gt;") || page.contains("&#60;script&#62;"),
        "shown as text"
    );
}

#[actix_web::test]
async fn the_welcome_page_without_a_registration_redirects_to_the_form() {
    let app = spawn_app().await;

    let response = app.get("/register/welcome").await;

    assert!(response.status().is_redirection());
    assert_eq!(response.headers()["location"], "/register");
}

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

type HmacSha256 = hmac::Hmac<sha2::Sha256>;
