//! The transactional outbox: a user is never stored without its outbox row.

use sea_orm::ConnectionTrait;
use serde_json::Value;

use crate::helpers::{TestApp, registration, spawn_app};

#[actix_web::test]
async fn each_registration_writes_one_pending_outbox_row_with_the_webhook_data() {
    let app = spawn_app().await;

    let body: Value = app
        .post_registration(&registration(7))
        .await
        .json()
        .await
        .expect("json");

    let rows = app.outbox_rows().await;
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.user_id.to_string(), body["id"].as_str().expect("id"));
    assert_ne!(
        row.status,
        entity::email_outbox::Status::Delivered,
        "no provider listens in this test"
    );
    let payload: Value = serde_json::from_str(&row.payload).expect("payload is JSON");
    assert_eq!(payload["user_id"], body["id"]);
    assert_eq!(payload["username"], "user7");
    assert_eq!(payload["email"], "user7@example.com");
    let registered_at =
        chrono::DateTime::parse_from_rfc3339(payload["registered_at"].as_str().expect("time"))
            .expect("RFC 3339");
    let created_at =
        chrono::DateTime::parse_from_rfc3339(body["created_at"].as_str().expect("time"))
            .expect("RFC 3339");
    assert_eq!(registered_at, created_at);
}

/// Makes every outbox insert fail inside the database, as a full disk or a bug would.
async fn break_outbox_inserts(app: &TestApp) {
    let statements: &[&str] = if app.is_postgres {
        &[
            "CREATE FUNCTION refuse_outbox() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'injected outbox failure'; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER refuse_outbox BEFORE INSERT ON email_outbox FOR EACH ROW EXECUTE FUNCTION refuse_outbox()",
        ]
    } else {
        &[
            "CREATE TRIGGER refuse_outbox BEFORE INSERT ON email_outbox BEGIN SELECT RAISE(ABORT, 'injected outbox failure'); END",
        ]
    };
    for sql in statements {
        app.db
            .execute_unprepared(sql)
            .await
            .expect("trigger created");
    }
}

async fn repair_outbox_inserts(app: &TestApp) {
    let sql = if app.is_postgres {
        "DROP TRIGGER refuse_outbox ON email_outbox"
    } else {
        "DROP TRIGGER refuse_outbox"
    };
    app.db
        .execute_unprepared(sql)
        .await
        .expect("trigger dropped");
}

#[actix_web::test]
async fn a_failing_outbox_insert_stores_no_user_and_the_next_registration_works() {
    let app = spawn_app().await;
    break_outbox_inserts(&app).await;

    let response = app.post_registration(&registration(1)).await;

    // The database refused the transaction: the server's condition, 503, never a 500.
    assert_eq!(response.status().as_u16(), 503);
    let body: Value = response.json().await.expect("problem");
    assert!(!body.to_string().contains("correct horse"));
    assert_eq!(app.user_count().await, 0, "no user without its outbox row");
    assert!(app.outbox_rows().await.is_empty());

    repair_outbox_inserts(&app).await;
    let response = app.post_registration(&registration(1)).await;
    assert_eq!(
        response.status().as_u16(),
        201,
        "the same registration succeeds afterwards"
    );
    assert_eq!(app.user_count().await, 1);
    assert_eq!(app.outbox_rows().await.len(), 1);
}
