//! `GET /health/live` and `GET /health/ready` (SPEC §4.1).

use std::time::Duration;

use actix_web::{HttpResponse, web};
use serde_json::json;

use super::AppState;
use crate::actors::Ping;
use crate::outbox;

/// How long readiness waits for the database and for the RegistrationActor.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Prometheus text exposition (SPEC §4.2).
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    match state.metrics.render() {
        Ok(text) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4; charset=utf-8")
            .body(text),
        Err(e) => {
            tracing::error!(error = %e, "cannot render metrics");
            HttpResponse::InternalServerError().finish()
        }
    }
}

/// Alive while the process can serve. Touches nothing else: on SQLite a database probe would
/// queue behind writes and make a busy server look dead.
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready when the database answers and the RegistrationActor replies, each within 1 s.
/// The email provider never makes this fail.
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let database = tokio::time::timeout(PROBE_TIMEOUT, state.db.ping()).await;
    let database_up = matches!(database, Ok(Ok(())));
    let actor = tokio::time::timeout(PROBE_TIMEOUT, state.registration_actor.send(Ping)).await;
    let registration_up = matches!(actor, Ok(Ok(())));
    let (pending, dead) = if database_up {
        match tokio::time::timeout(PROBE_TIMEOUT, outbox::outbox_counts(&state.db)).await {
            Ok(Ok(counts)) => (json!(counts.0), json!(counts.1)),
            _ => (json!(null), json!(null)),
        }
    } else {
        (json!(null), json!(null))
    };
    let ok = database_up && registration_up;
    let body = json!({
        "status": if ok { "ok" } else { "unavailable" },
        "database": if database_up { "up" } else { "down" },
        "registration": if registration_up { "up" } else { "down" },
        "email_sync": {"circuit": state.metrics.circuit().as_str(), "pending": pending, "dead": dead},
    });
    if ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
