//! `signup outbox list | retry`: the admin API's replay tools on the command line, working on
//! the configured database (also while servers run: claims and retries are row-level).

use std::fmt::Write as _;

use chrono::Utc;
use entity::email_outbox::Status;
use sea_orm::{DatabaseConnection, DbErr};
use uuid::Uuid;

use crate::outbox::{self, Job, Requeue};

#[derive(Debug, thiserror::Error)]
pub enum OutboxCliError {
    #[error("database: {0}")]
    Database(#[from] DbErr),
    #[error("no job {0}")]
    NoSuchJob(Uuid),
    #[error("job {0} was delivered; there is nothing to retry")]
    Delivered(Uuid),
    #[error("job {0} was cancelled when its user was erased; it is never sent")]
    Cancelled(Uuid),
    #[error("unknown status {0:?}: expected pending, dead, delivered or cancelled")]
    Status(String),
}

pub fn parse_status(status: &str) -> Result<Status, OutboxCliError> {
    match status {
        "pending" => Ok(Status::Pending),
        "dead" => Ok(Status::Dead),
        "delivered" => Ok(Status::Delivered),
        "cancelled" => Ok(Status::Cancelled),
        other => Err(OutboxCliError::Status(other.to_owned())),
    }
}

/// A readable table of the newest `limit` jobs.
pub async fn list(
    db: &DatabaseConnection,
    status: Option<Status>,
    limit: u64,
) -> Result<String, OutboxCliError> {
    let (jobs, next) = outbox::list(db, status, limit, None).await?;
    Ok(table(&jobs, next.is_some()))
}

fn table(jobs: &[Job], more: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<36}  {:<15}  {:<9}  {:>8}  {:>6}  {:<20}  {:<20}  {:<30}  LAST ERROR",
        "ID", "EVENT", "STATUS", "ATTEMPTS", "HTTP", "CREATED", "NEXT ATTEMPT", "EMAIL"
    );
    for job in jobs {
        let _ = writeln!(
            out,
            "{:<36}  {:<15}  {:<9}  {:>8}  {:>6}  {:<20}  {:<20}  {:<30}  {}",
            job.id,
            job.event,
            job.status,
            job.attempts,
            job.last_status.map_or("-".to_string(), |s| s.to_string()),
            job.created_at.format("%Y-%m-%d %H:%M:%S"),
            if job.status == "pending" {
                job.next_attempt_at.format("%Y-%m-%d %H:%M:%S").to_string()
            } else {
                "-".into()
            },
            if job.email.is_empty() {
                "-"
            } else {
                &job.email
            },
            job.last_error.as_deref().unwrap_or("-"),
        );
    }
    let _ = writeln!(
        out,
        "{} job(s){}",
        jobs.len(),
        if more { " (more: raise --limit)" } else { "" }
    );
    out
}

/// Makes one dead or pending job due now.
pub async fn retry(db: &DatabaseConnection, id: Uuid) -> Result<String, OutboxCliError> {
    match outbox::requeue(db, id, Utc::now()).await? {
        Requeue::Due(_) => {}
        Requeue::Delivered => return Err(OutboxCliError::Delivered(id)),
        Requeue::Cancelled => return Err(OutboxCliError::Cancelled(id)),
        Requeue::NotFound => return Err(OutboxCliError::NoSuchJob(id)),
    }
    Ok(format!(
        "job {id} is due now (attempts reset); a running server delivers it at its next poll"
    ))
}

/// Makes every dead job due now.
pub async fn retry_all_dead(db: &DatabaseConnection) -> Result<String, OutboxCliError> {
    let n = outbox::requeue_all_dead(db, Utc::now(), 5000).await?;
    Ok(format!(
        "{n} dead job(s) are due now; running servers deliver them at their pace"
    ))
}
