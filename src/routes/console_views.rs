//! What each console page shows: the view models its templates (`pages`) render and its
//! handlers (`console`) fill in. Below both, so neither imports the other's way back.

use entity::email_outbox::Status;
use uuid::Uuid;

use crate::outbox::Job;
use crate::store::RegisteredUser;

/// What the overview shows.
pub(super) struct OverviewView {
    pub circuit: &'static str,
    pub circuit_class: &'static str,
    pub circuit_since: String,
    pub circuit_for: String,
    pub pending: u64,
    pub dead: u64,
    pub oldest_pending: String,
    pub lag_p50: String,
    pub lag_p99: String,
    pub delivered_total: u64,
    pub failed_total: u64,
    pub chart: String,
    pub instance: String,
}

/// A job as a table row shows it.
pub(super) struct JobRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub user_short: String,
    pub email: String,
    pub event: &'static str,
    pub status: &'static str,
    pub attempts: i32,
    pub last_answer: String,
    pub created: String,
    pub next_attempt: String,
    pub retryable: bool,
}

impl From<Job> for JobRow {
    fn from(job: Job) -> Self {
        let retryable =
            job.status == Status::Pending.as_str() || job.status == Status::Dead.as_str();
        // The status alone where the error says no more than the status.
        let last_answer = match (job.last_status, job.last_error) {
            (Some(status), Some(error)) if error.contains(&status.to_string()) => error,
            (Some(status), Some(error)) => format!("{status}: {error}"),
            (Some(status), None) => status.to_string(),
            (None, Some(error)) => error,
            (None, None) => String::new(),
        };
        Self {
            id: job.id,
            user_id: job.user_id,
            user_short: job.user_id.simple().to_string()[..8].to_owned(),
            email: job.email,
            event: job.event,
            status: job.status,
            attempts: job.attempts,
            last_answer,
            created: job.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            next_attempt: if job.status == Status::Dead.as_str() {
                "when retried".to_owned()
            } else if retryable {
                job.next_attempt_at.format("%Y-%m-%d %H:%M:%S").to_string()
            } else {
                job.delivered_at
                    .map(|at| format!("delivered {}", at.format("%Y-%m-%d %H:%M:%S")))
                    .unwrap_or_else(|| "–".to_owned())
            },
            retryable,
        }
    }
}

/// What a list page shows.
pub(super) struct JobsView {
    pub nav: &'static str,
    pub heading: &'static str,
    pub empty: &'static str,
    pub show_retry_all: bool,
    pub jobs: Vec<JobRow>,
    pub back: String,
    pub next_page: Option<String>,
    pub not_first_page: bool,
    pub first_page: String,
    pub notice: Option<String>,
}

/// What the search page shows.
pub(super) struct SearchView {
    pub query: String,
    pub user: Option<RegisteredUser>,
    pub registered: String,
    /// The user's consent (SPEC §8): state, when and who said it; "not known yet" until the
    /// provider says anything.
    pub consent: String,
    pub message: Option<String>,
    pub jobs: Vec<JobRow>,
    pub back: String,
    pub notice: Option<String>,
}
