//! `/health/live` and `/health/ready`.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{spawn_app, spawn_app_with, wait_until};

#[actix_web::test]
async fn liveness_is_200_ok() {
    let app = spawn_app().await;

    let response = app.get("/health/live").await;

    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body, serde_json::json!({"status": "ok"}));
}

#[actix_web::test]
async fn readiness_reports_database_actor_and_outbox_counts() {
    // Nothing listens at the provider's address; a threshold no test reaches keeps the circuit
    // closed, so the body's circuit is known.
    let app = spawn_app_with(|s| {
        s.email_sync.circuit_breaker.failure_threshold =
            std::num::NonZeroU32::new(1_000_000).expect("not zero")
    })
    .await;
    app.register_all(0..3).await;
    // The counts are the outbox gauges, refreshed by the email sync every poll interval here.
    wait_until(
        "readiness counts 3 pending rows",
        Duration::from_secs(30),
        || async {
            let body: Value = app.get("/health/ready").await.json().await.expect("json");
            body["email_sync"]["pending"] == 3
        },
    )
    .await;

    let response = app.get("/health/ready").await;

    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["database"], "up");
    assert_eq!(body["registration"], "up");
    assert_eq!(body["email_sync"]["pending"], 3);
    assert_eq!(body["email_sync"]["dead"], 0);
    assert_eq!(body["email_sync"]["circuit"], "closed");
}

#[actix_web::test]
async fn readiness_is_503_while_liveness_stays_200_when_the_database_is_gone() {
    let app = spawn_app().await;
    app.server_db.close_by_ref().await.expect("the pool closes");

    let ready = app.get("/health/ready").await;
    let live = app.get("/health/live").await;

    assert_eq!(ready.status().as_u16(), 503);
    let body: Value = ready.json().await.expect("json");
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["database"], "down");
    assert_eq!(
        live.status().as_u16(),
        200,
        "liveness never touches the database"
    );
}
