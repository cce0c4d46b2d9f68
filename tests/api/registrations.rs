//! `POST /api/v1/registrations`: every row of SPEC §2.1's table, every field rule of §2.

use sea_orm::EntityTrait;
use serde_json::{Value, json};

use crate::helpers::{problem, registration, spawn_app};

fn id_of(body: &Value) -> uuid::Uuid {
    uuid::Uuid::parse_str(body["id"].as_str().expect("an id")).expect("a UUID")
}

#[actix_web::test]
async fn a_valid_registration_returns_201_with_location_and_the_user() {
    let app = spawn_app().await;

    let response = app
        .post_registration(&json!({
            "username": "  Alice_01 ",
            "email": "Alice@Example.COM",
            "password": "correct horse battery",
        }))
        .await;

    assert_eq!(response.status().as_u16(), 201);
    let location = response.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_string();
    let body: Value = response.json().await.expect("json");
    assert_eq!(location, format!("/api/v1/registrations/{}", id_of(&body)));
    assert_eq!(
        body["username"], "Alice_01",
        "the person's spelling, trimmed"
    );
    assert_eq!(body["email"], "Alice@Example.COM");
    let created_at = body["created_at"].as_str().expect("created_at");
    assert!(
        chrono::DateTime::parse_from_rfc3339(created_at).is_ok(),
        "{created_at}"
    );
    assert!(body.get("password").is_none() && body.get("password_hash").is_none());

    let user = entity::user::Entity::find_by_id(id_of(&body))
        .one(&app.db)
        .await
        .expect("query")
        .expect("the user is stored");
    assert_eq!(user.username_normalized, "alice_01");
    assert_eq!(user.email_normalized, "alice@example.com");
    assert!(
        user.password_hash.starts_with("$argon2id$"),
        "stored as argon2id PHC"
    );
    assert!(!user.password_hash.contains("correct horse"));
}

#[actix_web::test]
async fn registration_returns_409_when_the_username_is_taken_in_another_case() {
    let app = spawn_app().await;
    app.register_all(1..2).await;

    let response = app
        .post_registration(&json!({"username": "USER1", "email": "other@example.com", "password": "correct horse battery"}))
        .await;

    let body = problem(response, 409, "username_taken").await;
    assert_eq!(body["field"], "username");
    assert_eq!(app.user_count().await, 1);
}

#[actix_web::test]
async fn registration_returns_409_when_the_email_is_taken_in_another_case() {
    let app = spawn_app().await;
    app.register_all(1..2).await;

    let response = app
        .post_registration(&json!({"username": "someone", "email": "User1@EXAMPLE.com", "password": "correct horse battery"}))
        .await;

    let body = problem(response, 409, "email_taken").await;
    assert_eq!(body["field"], "email");
    assert_eq!(app.user_count().await, 1);
}

#[actix_web::test]
async fn when_both_are_taken_the_email_wins() {
    let app = spawn_app().await;
    app.register_all(1..2).await;
    // Another person (another password): the same one retrying would get their account back.
    let mut both_taken = registration(1);
    both_taken["password"] = "someone else entirely".into();

    let response = app.post_registration(&both_taken).await;

    problem(response, 409, "email_taken").await;
}

#[actix_web::test]
async fn invalid_fields_return_422_listing_every_failing_field() {
    let app = spawn_app().await;
    let long_email = format!("{}@example.com", "a".repeat(243));
    let long_password = "p".repeat(129);
    let long_username = "u".repeat(33);
    // (username, email, password, the failing fields with their codes, what the case shows)
    let cases: Vec<(&str, &str, &str, Vec<(&str, &str)>, &str)> = vec![
        (
            "ab",
            "ok@example.com",
            "correct horse",
            vec![("username", "too_short")],
            "username under 3",
        ),
        (
            &long_username,
            "ok@example.com",
            "correct horse",
            vec![("username", "too_long")],
            "username over 32",
        ),
        (
            "bad name",
            "ok@example.com",
            "correct horse",
            vec![("username", "invalid_characters")],
            "space in username",
        ),
        (
            "émile",
            "ok@example.com",
            "correct horse",
            vec![("username", "invalid_characters")],
            "non a–z letter",
        ),
        (
            "_lead",
            "ok@example.com",
            "correct horse",
            vec![("username", "invalid_start")],
            "leading underscore",
        ),
        (
            "",
            "ok@example.com",
            "correct horse",
            vec![("username", "required")],
            "empty username",
        ),
        (
            "valid",
            "",
            "correct horse",
            vec![("email", "required")],
            "empty email",
        ),
        (
            "valid",
            &long_email,
            "correct horse",
            vec![("email", "too_long")],
            "email over 254",
        ),
        (
            "valid",
            "no-at.example.com",
            "correct horse",
            vec![("email", "invalid")],
            "no @",
        ),
        (
            "valid",
            "a@b@example.com",
            "correct horse",
            vec![("email", "invalid")],
            "two @",
        ),
        (
            "valid",
            "@example.com",
            "correct horse",
            vec![("email", "invalid")],
            "empty local part",
        ),
        (
            "valid",
            "a@localhost",
            "correct horse",
            vec![("email", "invalid")],
            "domain without a dot",
        ),
        (
            "valid",
            "a b@example.com",
            "correct horse",
            vec![("email", "invalid")],
            "space in email",
        ),
        (
            "valid",
            "a\u{1}b@example.com",
            "correct horse",
            vec![("email", "invalid")],
            "control character",
        ),
        (
            "valid",
            "ok@example.com",
            "Zq7!x",
            vec![("password", "too_short")],
            "password under 8",
        ),
        (
            "valid",
            "ok@example.com",
            &long_password,
            vec![("password", "too_long")],
            "password over 128",
        ),
        (
            "valid",
            "ok@example.com",
            "",
            vec![("password", "required")],
            "empty password",
        ),
        (
            "samesame",
            "ok@example.com",
            "SameSame",
            vec![("password", "same_as_identity")],
            "password = username",
        ),
        (
            "valid",
            "ok@example.com",
            "ok@example.com",
            vec![("password", "same_as_identity")],
            "password = email",
        ),
        (
            "x",
            "nope",
            "1",
            vec![
                ("username", "too_short"),
                ("email", "invalid"),
                ("password", "too_short"),
            ],
            "all three at once",
        ),
    ];
    for (username, email, password, expected, why) in cases {
        let response = app
            .post_registration(&json!({"username": username, "email": email, "password": password}))
            .await;

        let body = problem(response, 422, "invalid").await;
        let errors: Vec<(String, String)> = body["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("{why}: errors array in {body}"))
            .iter()
            .map(|e| {
                (
                    e["field"].as_str().unwrap_or("").into(),
                    e["code"].as_str().unwrap_or("").into(),
                )
            })
            .collect();
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(f, c)| (f.to_string(), c.to_string()))
            .collect();
        assert_eq!(errors, expected, "{why}");
        for e in body["errors"].as_array().into_iter().flatten() {
            assert!(
                e["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{why}: a message per error"
            );
        }
        // Distinctive passwords only: "short" would match the code "too_short".
        if password.len() >= 5 {
            assert!(
                !body.to_string().contains(password),
                "{why}: the body echoes the password"
            );
        }
    }
    assert_eq!(app.user_count().await, 0, "bad input changes nothing");
}

#[actix_web::test]
async fn malformed_bodies_return_400() {
    let app = spawn_app().await;
    let cases = [
        ("{\"username\": \"abc\",", "truncated JSON"),
        ("not json at all", "not JSON"),
        (
            "{\"username\": \"abcd\", \"email\": \"a@b.co\"}",
            "missing password",
        ),
        (
            "{\"username\": 5, \"email\": \"a@b.co\", \"password\": \"correct horse\"}",
            "number for a string",
        ),
        (
            "{\"username\": null, \"email\": \"a@b.co\", \"password\": \"correct horse\"}",
            "null for a string",
        ),
        ("[]", "array instead of object"),
        ("", "empty body"),
    ];
    for (body, why) in cases {
        let response = app.post_raw("application/json", body).await;
        assert_eq!(response.status().as_u16(), 400, "{why}");
        problem(response, 400, "bad_request").await;
    }
    assert_eq!(app.user_count().await, 0);
}

#[actix_web::test]
async fn a_password_of_the_wrong_type_is_not_echoed_in_the_error() {
    let app = spawn_app().await;

    let response = app
        .post_raw(
            "application/json",
            r#"{"username": "abcd", "email": "a@b.co", "password": 987654321}"#,
        )
        .await;

    let body = problem(response, 400, "bad_request").await;
    assert!(!body.to_string().contains("987654321"), "{body}");
}

#[actix_web::test]
async fn unknown_fields_are_ignored() {
    let app = spawn_app().await;
    let mut body = registration(1);
    body["newsletter"] = json!(true);

    let response = app.post_registration(&body).await;

    assert_eq!(response.status().as_u16(), 201);
}

#[actix_web::test]
async fn a_wrong_content_type_returns_415() {
    let app = spawn_app().await;
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/xml",
    ] {
        let response = app
            .post_raw(content_type, registration(1).to_string())
            .await;
        problem(response, 415, "unsupported_media_type").await;
    }
    assert_eq!(app.user_count().await, 0);
}

#[actix_web::test]
async fn a_body_over_the_configured_limit_returns_413() {
    let app = spawn_app().await;
    let limit = crate::helpers::test_settings().server.max_body_bytes.get();
    let mut body = registration(1);
    body["padding"] = json!("x".repeat(limit));

    let response = app.post_registration(&body).await;

    problem(response, 413, "payload_too_large").await;
    assert_eq!(app.user_count().await, 0);
}

#[actix_web::test]
async fn a_body_just_under_the_configured_limit_is_accepted() {
    let app = spawn_app().await;
    let limit = crate::helpers::test_settings().server.max_body_bytes.get();
    let mut body = registration(1);
    let room = limit - body.to_string().len() - r#","padding":"""#.len() - 1;
    body["padding"] = json!("x".repeat(room));
    assert_eq!(body.to_string().len(), limit - 1);

    let response = app.post_registration(&body).await;

    assert_eq!(response.status().as_u16(), 201);
}

#[actix_web::test]
async fn registration_returns_503_with_retry_after_when_the_database_is_unavailable() {
    let app = spawn_app().await;
    app.server_db.close_by_ref().await.expect("the pool closes");

    let started = std::time::Instant::now();
    let response = app.post_registration(&registration(1)).await;

    assert!(
        response.headers().contains_key("retry-after"),
        "Retry-After"
    );
    problem(response, 503, "unavailable").await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "answered quickly"
    );
    assert_eq!(app.user_count().await, 0, "nothing half-written");
}

#[actix_web::test]
async fn unknown_routes_are_404_problems() {
    let app = spawn_app().await;

    let response = app.get("/nope").await;

    problem(response, 404, "not_found").await;
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
