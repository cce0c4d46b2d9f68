//! The admin API (SPEC §4.3): failed syncs listed, inspected and replayed. Present only when
//! `admin.token` is set (404 otherwise); every call needs `Authorization: Bearer <token>`.

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::Utc;
use entity::email_outbox::Status;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use crate::actors::WakeUp;
use crate::outbox::{self, Requeue};
use crate::routes::error::ApiError;
use crate::store;

/// Dead rows requeued per statement by retry-dead.
pub(super) const REQUEUE_BATCH: u64 = 5000;

/// An authorized operator. Taking it as a handler's first argument is the admin routes' check:
/// 404 while `admin.token` is unset, 401 without the right bearer token.
pub(super) struct Admin;

impl actix_web::FromRequest for Admin {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(request: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        std::future::ready(match request.app_data::<web::Data<AppState>>() {
            Some(state) => authorize(request, state).map(|()| Admin),
            None => Err(ApiError::NotFound),
        })
    }
}

/// 404 without a configured token, 401 without the right one.
fn authorize(request: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let Some(token) = &state.admin_token else {
        return Err(ApiError::NotFound);
    };
    // The scheme is case-insensitive (RFC 9110 §11.1): `bearer x` is `Bearer x`.
    let given = request
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, credentials)| credentials.trim())
        .unwrap_or_default();
    if token_matches(token, given) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// Whether `given` is the admin `token`. Hashing both sides first makes the comparison
/// constant-time in the length too. An empty token never matches, whatever the configuration
/// says (it is refused at start-up too).
pub(super) fn token_matches(token: &secrecy::SecretString, given: &str) -> bool {
    let given_digest = Sha256::digest(given.as_bytes());
    !given.is_empty() && bool::from(token_digest(token).ct_eq(&given_digest))
}

/// The admin token's SHA-256: what console sessions are bound to.
pub(super) fn token_digest(token: &secrecy::SecretString) -> [u8; 32] {
    Sha256::digest(token.expose_secret().as_bytes()).into()
}

pub(super) fn wake(state: &AppState) {
    if state.email_sync.try_send(WakeUp).is_err() {
        state.metrics.wakeups_dropped.inc();
    }
}

/// A page of jobs, newest first.
#[derive(Serialize, ToSchema)]
pub(super) struct JobPage {
    jobs: Vec<outbox::Job>,
    /// Pass as `before` for the next page; null on the last one.
    next: Option<Uuid>,
}

/// How many dead jobs were made due.
#[derive(Serialize, ToSchema)]
pub(super) struct Requeued {
    requeued: u64,
}

/// A registration and its email sync job.
#[derive(Serialize, ToSchema)]
pub(super) struct RegistrationDetail {
    id: Uuid,
    username: String,
    email: String,
    created_at: chrono::DateTime<Utc>,
    /// Null once a delivered job has passed `email_sync.retention`.
    email_sync: Option<SyncSummary>,
    /// What the provider last said about this person's consent (SPEC §8); `state` null until
    /// it says anything.
    consent: crate::consent::store::Consent,
}

#[derive(Serialize, ToSchema)]
pub(super) struct SyncSummary {
    id: Uuid,
    status: &'static str,
    attempts: i32,
    last_error: Option<String>,
    delivered_at: Option<chrono::DateTime<Utc>>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// pending, dead, delivered or cancelled (empty: all).
    #[param(pattern = "^(|pending|dead|delivered|cancelled)$")]
    status: Option<String>,
    /// 1–500, default 50.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u64>,
    /// A job id (the `next` of the previous page): list jobs older than it. Empty: from the
    /// newest.
    #[param(
        pattern = "^$|^[0-9a-fA-F]{32}$|^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    before: Option<String>,
}

#[utoipa::path(get, path = "/admin/email-sync/jobs", tag = "admin", params(ListQuery),
    security(("bearer" = [])),
    responses((status = 200, description = "A page of jobs", body = JobPage), (status = 400, description = "Bad status, limit or before", body = crate::routes::error::Problem, content_type = "application/problem+json"), (status = 401, description = "Missing or wrong bearer token", body = crate::routes::error::Problem, content_type = "application/problem+json"), (status = 404, description = "Not found, or admin.token is not set", body = crate::routes::error::Problem, content_type = "application/problem+json"), (status = 503, description = "The database did not answer", body = crate::routes::error::Problem, content_type = "application/problem+json")))]
pub(super) async fn list_jobs(
    _admin: Admin,
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // Parsed after authorizing: without a token the route does not exist (404), and a bad
    // query must not tell otherwise.
    let query = web::Query::<ListQuery>::from_query(request.query_string())
        .map_err(|e| ApiError::BadRequest(format!("invalid query: {e}")))?;
    let status = match query.status.as_deref() {
        None | Some("") => None,
        Some("pending") => Some(Status::Pending),
        Some("dead") => Some(Status::Dead),
        Some("cancelled") => Some(Status::Cancelled),
        Some("delivered") => Some(Status::Delivered),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "status must be pending, dead, delivered or cancelled".into(),
            ));
        }
    };
    let before = match query.before.as_deref() {
        None | Some("") => None,
        Some(id) => Some(
            Uuid::parse_str(id)
                .map_err(|_| ApiError::BadRequest("before must be a job id".into()))?,
        ),
    };
    let limit = query.limit.unwrap_or(50);
    if limit == 0 || limit > outbox::MAX_PAGE {
        return Err(ApiError::BadRequest(format!(
            "limit must be 1–{}",
            outbox::MAX_PAGE
        )));
    }
    let (jobs, next) = outbox::list(&state.db, status, limit, before).await?;
    Ok(HttpResponse::Ok().json(JobPage { jobs, next }))
}

fn job_id(path: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(path).map_err(|_| ApiError::NotFound)
}

#[utoipa::path(get, path = "/admin/email-sync/jobs/{id}", tag = "admin",
    params(("id" = String, Path, description = "Job (outbox row) id")), security(("bearer" = [])),
    responses((status = 200, description = "The job, with its contact's consent", body = JobDetail), (status = 401, description = "Missing or wrong bearer token", body = crate::routes::error::Problem, content_type = "application/problem+json"), (status = 404, description = "Not found, or admin.token is not set", body = crate::routes::error::Problem, content_type = "application/problem+json"), (status = 503, description = "The database did not answer", body = crate::routes::error::Problem, content_type = "application/problem+json")))]
pub(super) async fn get_job(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let job = outbox::find(&state.db, job_id(&path)?)
        .await?
        .ok_or(ApiError::NotFound)?;
    let consent = match &job.contact {
        Some(contact) => crate::consent::store::of_contact(&state.db, contact).await?,
        None => crate::consent::store::Consent::unknown(),
    };
    Ok(HttpResponse::Ok().json(JobDetail { job, consent }))
}

/// One job, with its contact's consent (SPEC §8).
#[derive(Serialize, ToSchema)]
pub(super) struct JobDetail {
    #[serde(flatten)]
    job: outbox::Job,
    /// What the provider last said about the contact's consent; `state` null until it says
    /// anything. An erased person's kept suppression entry shows here too.
    consent: crate::consent::store::Consent,
}

#[utoipa::path(post, path = "/admin/email-sync/jobs/{id}/retry", tag = "admin",
    params(("id" = String, Path, description = "Job (outbox row) id")), security(("bearer" = [])),
    responses((status = 202, description = "Due now, attempts reset", body = outbox::Job), (status = 401, description = "Missing or wrong bearer token", body = crate::routes::error::Problem, content_type = "application/problem+json"), (status = 404, description = "Not found, or admin.token is not set", body = crate::routes::error::Problem, content_type = "application/problem+json"), (status = 409, description = "Delivered already, or cancelled by an erasure", body = crate::routes::error::Problem, content_type = "application/problem+json"), (status = 503, description = "The database did not answer", body = crate::routes::error::Problem, content_type = "application/problem+json")))]
pub(super) async fn retry_job(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = job_id(&path)?;
    let job = match outbox::requeue(&state.db, id, Utc::now()).await? {
        Requeue::Due(job) => job,
        Requeue::Delivered | Requeue::Cancelled => return Err(ApiError::NotRetryable),
        Requeue::NotFound => return Err(ApiError::NotFound),
    };
    wake(&state);
    tracing::info!(outbox_id = %id, "operator requeued a job");
    Ok(HttpResponse::Accepted().json(job))
}

#[utoipa::path(post, path = "/admin/email-sync/retry-dead", tag = "admin", security(("bearer" = [])),
    responses((status = 202, description = "Every dead job is due now", body = Requeued), (status = 401, description = "Missing or wrong bearer token", body = crate::routes::error::Problem, content_type = "application/problem+json"), (status = 404, description = "Not found, or admin.token is not set", body = crate::routes::error::Problem, content_type = "application/problem+json"), (status = 503, description = "The database did not answer", body = crate::routes::error::Problem, content_type = "application/problem+json")))]
pub(super) async fn retry_dead(
    _admin: Admin,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let requeued = outbox::requeue_all_dead(&state.db, Utc::now(), REQUEUE_BATCH).await?;
    wake(&state);
    tracing::info!(requeued, "operator requeued every dead job");
    Ok(HttpResponse::Accepted().json(Requeued { requeued }))
}

#[utoipa::path(delete, path = "/admin/users/{id}", tag = "admin",
    params(("id" = String, Path, description = "The user's id (the registration's id)")), security(("bearer" = [])),
    responses((status = 202, description = "Erased here; the user.deleted job removes them at the provider", body = crate::erasure::Erased), (status = 401, description = "Missing or wrong bearer token", body = crate::routes::error::Problem, content_type = "application/problem+json"), (status = 404, description = "No such user (or erased already), or admin.token is not set", body = crate::routes::error::Problem, content_type = "application/problem+json"), (status = 503, description = "The database did not answer", body = crate::routes::error::Problem, content_type = "application/problem+json")))]
/// `DELETE /admin/users/{id}`: erases the user (SPEC §6).
pub(super) async fn erase_user(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = job_id(&path)?;
    let erased = match erase(&state, id).await {
        Ok(erased) => erased,
        Err(crate::erasure::EraseError::NotFound) => return Err(ApiError::NotFound),
        Err(crate::erasure::EraseError::Database(e)) => return Err(e.into()),
    };
    tracing::info!(user_id = %erased.user_id, deletion_job = %erased.deletion_job, cancelled = erased.cancelled, "operator erased a user");
    Ok(HttpResponse::Accepted().json(erased))
}

/// Erases user `id` (SPEC §6), counts it and wakes the email sync for the deletion job: the
/// admin API's and the console's erasure.
pub(super) async fn erase(
    state: &AppState,
    id: Uuid,
) -> Result<crate::erasure::Erased, crate::erasure::EraseError> {
    let erased = crate::erasure::erase(&state.db, &crate::erasure::Who::Id(id), Utc::now()).await?;
    state.metrics.erasures.inc();
    wake(state);
    // Off the request path: the checkpoint may wait for readers.
    let db = state.db.clone();
    actix_web::rt::spawn(async move { crate::erasure::forget_on_disk(&db).await });
    Ok(erased)
}

/// `GET /api/v1/registrations/{id}`: the registration and its email sync job.
#[utoipa::path(get, path = "/api/v1/registrations/{id}", tag = "admin",
    params(("id" = String, Path, description = "The registration's id (the Location of its 201)")), security(("bearer" = [])),
    responses((status = 200, description = "The registration", body = RegistrationDetail), (status = 401, description = "Missing or wrong bearer token", body = crate::routes::error::Problem, content_type = "application/problem+json"), (status = 404, description = "Not found, or admin.token is not set", body = crate::routes::error::Problem, content_type = "application/problem+json"), (status = 503, description = "The database did not answer", body = crate::routes::error::Problem, content_type = "application/problem+json")))]
pub(super) async fn get_registration(
    _admin: Admin,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = job_id(&path)?;
    let user = store::find_user(&state.db, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let job = outbox::find_for_user(&state.db, id).await?;
    let consent =
        crate::consent::store::of(&state.db, &state.inbound.contacts, &user.email).await?;
    Ok(HttpResponse::Ok().json(RegistrationDetail {
        id: user.id,
        username: user.username,
        email: user.email,
        created_at: user.created_at,
        email_sync: job.map(|j| SyncSummary {
            id: j.id,
            status: j.status,
            attempts: j.attempts,
            last_error: j.last_error,
            delivered_at: j.delivered_at,
        }),
        consent,
    }))
}
