//! Retention (SPEC §3.3): delivered outbox rows go after `email_sync.retention`; dead rows and
//! users stay.

use std::time::Duration;

use entity::email_outbox::Status;
use wiremock::MockServer;

use crate::email_sync::{accepting, answering, app_with_provider};
use crate::helpers::{PATIENCE, wait_until};

#[actix_web::test]
async fn delivered_rows_are_deleted_after_the_retention_period_and_users_stay() {
    let provider = MockServer::start().await;
    accepting().mount(&provider).await;
    let app = app_with_provider(&provider, |s| {
        s.email_sync.retention = Duration::from_millis(300)
    })
    .await;

    app.register_all(0..3).await;

    wait_until("delivered rows are swept", PATIENCE, || async {
        app.outbox_rows().await.is_empty()
    })
    .await;
    assert_eq!(
        app.user_count().await,
        3,
        "users are never deleted by retention"
    );
}

#[actix_web::test]
async fn dead_rows_are_kept_past_the_retention_period() {
    let provider = MockServer::start().await;
    answering(400).mount(&provider).await;
    let app = app_with_provider(&provider, |s| {
        s.email_sync.retention = Duration::from_millis(200)
    })
    .await;

    app.register_all(0..1).await;
    wait_until("the row is dead", PATIENCE, || async {
        app.outbox_with(Status::Dead).await.len() == 1
    })
    .await;
    let deleted = app
        .sweep_delivered_at(chrono::Utc::now() + chrono::Duration::days(30))
        .await;

    assert_eq!(deleted, 0, "the sweep deletes delivered rows only");
    assert_eq!(
        app.outbox_with(Status::Dead).await.len(),
        1,
        "kept until an operator acts"
    );
}

/// The providers' event ids (kept so that a replay changes nothing, SPEC §8) go after
/// `email_sync.retention` like delivered rows; the consent they set stays.
#[actix_web::test]
async fn provider_event_ids_are_deleted_after_the_retention_period_and_consent_stays() {
    use sea_orm::{EntityTrait, PaginatorTrait};
    const KEY: &str = "mailgun-webhook-signing-key-0123456789";
    let provider = MockServer::start().await;
    accepting().mount(&provider).await;
    let app = app_with_provider(&provider, |s| {
        s.email_sync.retention = Duration::from_millis(300);
        s.email_sync.mailgun.webhook_signing_key = KEY.into();
    })
    .await;
    app.register_all(0..1).await;

    let now = chrono::Utc::now();
    let body = crate::consent::mailgun_event(
        KEY,
        now,
        crate::consent::data("unsubscribed", "ev-1", "user0@example.com", now),
    );
    let response = app
        .client
        .post(app.url("/hooks/mailgun"))
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 200);

    wait_until("the event id is swept", PATIENCE, || async {
        entity::provider_event::Entity::find()
            .count(&app.db)
            .await
            .expect("counts")
            == 0
    })
    .await;
    let consent = entity::consent::Entity::find()
        .all(&app.db)
        .await
        .expect("consent");
    assert_eq!(consent.len(), 1);
    assert_eq!(consent[0].state, "unsubscribed");
}
