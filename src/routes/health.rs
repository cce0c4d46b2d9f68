//! `GET /health/live` and `GET /health/ready` (SPEC §4.1).

use std::time::Duration;

use actix_web::{HttpResponse, web};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;

/// How long readiness waits for the database and for the RegistrationActor.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Prometheus text exposition (SPEC §4.2).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub(super) async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    // `signup_ready` as of this scrape: an alert on readiness needs no blackbox prober.
    let (database_up, registration_up) = probe(&state).await;
    state
        .metrics
        .ready
        .set(i64::from(database_up && registration_up));
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

/// Readiness's two questions: does the database answer, and can registrations be stored?
async fn probe(state: &AppState) -> (bool, bool) {
    let database = tokio::time::timeout(PROBE_TIMEOUT, state.db.ping()).await;
    let database_up = matches!(database, Ok(Ok(())));
    let actor = tokio::time::timeout(PROBE_TIMEOUT, state.registrar.registrations.ping()).await;
    let registration_up = matches!(actor, Ok(Ok(()))) && storing(state).await;
    (database_up, registration_up)
}

/// Liveness body.
#[derive(Serialize, ToSchema)]
pub(super) struct Live {
    /// Always `ok`.
    status: &'static str,
}

/// Readiness body (SPEC §4.1).
#[derive(Serialize, ToSchema)]
pub(super) struct Readiness {
    /// `ok` or `unavailable`.
    status: &'static str,
    /// `up` or `down`.
    database: &'static str,
    /// `up` or `down`: the RegistrationActor answered within 1 s, no commit has been running
    /// for longer than `registration.deadline`, and registrations can be stored.
    registration: &'static str,
    email_sync: EmailSyncHealth,
}

/// The email sync's state; it never makes readiness fail.
#[derive(Serialize, ToSchema)]
pub(super) struct EmailSyncHealth {
    /// `closed`, `open` or `half_open`.
    circuit: &'static str,
    /// Outbox rows waiting, as of the last refresh of the outbox gauges (at most 5 s old);
    /// null when the database did not answer.
    pending: Option<u64>,
    /// Dead outbox rows waiting for an operator, as `pending`.
    dead: Option<u64>,
}

/// Alive while the process can serve. Touches nothing else: on SQLite a database probe would
/// queue behind writes and make a busy server look dead.
#[utoipa::path(get, path = "/health/live", tag = "operations",
    responses((status = 200, description = "The process serves", body = Live)))]
pub(super) async fn live() -> HttpResponse {
    HttpResponse::Ok().json(Live { status: "ok" })
}

/// Whether registrations can be stored now. Not while a commit has been running for longer
/// than `registration.deadline` (a stalled database: each registration would be answered 503),
/// and not while the last registration transaction failed (the database answers reads but
/// cannot store: a full disk), until a write of our own commits again: then registrations work
/// again without waiting for someone to try.
async fn storing(state: &AppState) -> bool {
    let watch = &state.commit_watch;
    let file_ok = watch.file_ok().is_ok();
    state.metrics.database_file_ok.set(i64::from(file_ok));
    if !file_ok {
        return false;
    }
    if watch.commit_age().is_some_and(|age| age > state.deadline) {
        return false;
    }
    if !watch.failing() {
        return true;
    }
    match tokio::time::timeout(PROBE_TIMEOUT, crate::database::probe_write(&state.db)).await {
        Ok(Ok(())) => {
            watch.recovered();
            true
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "readiness: the database still cannot store");
            false
        }
        Err(_) => false,
    }
}

/// Ready when the database answers, the RegistrationActor replies (each within 1 s) and
/// registrations can be stored. The email provider never makes this fail.
#[utoipa::path(get, path = "/health/ready", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready: database or RegistrationActor down", body = Readiness),
    ))]
pub(super) async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let (database_up, registration_up) = probe(&state).await;
    state
        .metrics
        .ready
        .set(i64::from(database_up && registration_up));
    // The counts are the outbox gauges, which the email sync refreshes from its own pool (at
    // least every 5 s), not a COUNT per probe: with a backlog of a million rows a COUNT takes
    // ~50 ms on PostgreSQL, and monitors probe often, from every instance.
    let (pending, dead) = if database_up {
        (
            u64::try_from(state.metrics.outbox_pending.get()).ok(),
            u64::try_from(state.metrics.outbox_dead.get()).ok(),
        )
    } else {
        (None, None)
    };
    let ok = database_up && registration_up;
    let body = Readiness {
        status: if ok { "ok" } else { "unavailable" },
        database: if database_up { "up" } else { "down" },
        registration: if registration_up { "up" } else { "down" },
        email_sync: EmailSyncHealth {
            circuit: state.circuit.borrow().as_str(),
            pending,
            dead,
        },
    };
    if ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
