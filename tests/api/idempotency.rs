//! `Idempotency-Key` on `POST /api/v1/registrations` (SPEC §2.1).

use sea_orm::{ActiveValue::Set, EntityTrait};
use serde_json::{Value, json};

use crate::helpers::{TestApp, problem, registration, spawn_app};

async fn post_with_key(app: &TestApp, key: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(app.url("/api/v1/registrations"))
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .expect("sent")
}

#[actix_web::test]
async fn a_retry_with_the_same_key_gets_the_first_response_and_creates_nothing() {
    let app = spawn_app().await;

    let first = post_with_key(&app, "key-1", &registration(1)).await;
    let first_location = first.headers()["location"].clone();
    let first_body: Value = first.json().await.expect("json");
    let again = post_with_key(&app, "key-1", &registration(1)).await;

    assert_eq!(again.status().as_u16(), 201);
    assert_eq!(again.headers()["location"], first_location);
    assert_eq!(
        again.json::<Value>().await.expect("json"),
        first_body,
        "same body"
    );
    assert_eq!(app.user_count().await, 1);
    assert_eq!(app.outbox_rows().await.len(), 1);
}

#[actix_web::test]
async fn the_same_key_with_a_different_body_is_422() {
    let app = spawn_app().await;
    assert_eq!(
        post_with_key(&app, "key-2", &registration(1))
            .await
            .status()
            .as_u16(),
        201
    );
    let mut other_password = registration(1);
    other_password["password"] = json!("a different password");
    let cases = [
        (registration(2), "other user"),
        (other_password, "same user, other password"),
    ];

    for (body, why) in cases {
        let response = post_with_key(&app, "key-2", &body).await;
        assert_eq!(response.status().as_u16(), 422, "{why}");
        problem(response, 422, "idempotency_key_reused").await;
    }
    assert_eq!(app.user_count().await, 1);
}

#[actix_web::test]
async fn two_concurrent_requests_with_one_key_never_create_two_users() {
    let app = spawn_app().await;

    let body = registration(1);
    let (a, b) = tokio::join!(
        post_with_key(&app, "key-3", &body),
        post_with_key(&app, "key-3", &body)
    );

    // Both are the same request: both get the first 201, with the same user.
    let statuses = [a.status().as_u16(), b.status().as_u16()];
    assert_eq!(statuses, [201, 201]);
    let a: Value = a.json().await.expect("json");
    let b: Value = b.json().await.expect("json");
    assert_eq!(a["id"], b["id"]);
    assert_eq!(app.user_count().await, 1);
}

#[actix_web::test]
async fn a_key_older_than_24_hours_is_forgotten() {
    let app = spawn_app().await;
    assert_eq!(
        post_with_key(&app, "key-4", &registration(1))
            .await
            .status()
            .as_u16(),
        201
    );
    entity::idempotency_key::Entity::update_many()
        .set(entity::idempotency_key::ActiveModel {
            created_at: Set(chrono::Utc::now() - chrono::Duration::hours(25)),
            ..Default::default()
        })
        .exec(&app.db)
        .await
        .expect("aged");

    let reused = post_with_key(&app, "key-4", &registration(2)).await;

    assert_eq!(reused.status().as_u16(), 201, "a new request, not a reuse");
    assert_eq!(app.user_count().await, 2);
}

#[actix_web::test]
async fn a_malformed_key_is_400_and_creates_nothing() {
    let app = spawn_app().await;
    for key in ["", "has space", &"k".repeat(256)] {
        let response = post_with_key(&app, key, &registration(1)).await;
        problem(response, 400, "bad_request").await;
    }
    assert_eq!(app.user_count().await, 0);
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
