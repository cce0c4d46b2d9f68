//! Providers that import asynchronously (SPEC §6). SendGrid accepts an upsert with 202 and a
//! `job_id` and makes the contact searchable only once that import job has finished; Mailgun's
//! lists are eventually consistent. Until then "not found" may only mean "not imported yet": a
//! deletion that took it as "already gone" would be delivered, and the import would then create
//! the contact it was meant to remove.
//!
//! So a deletion carries what the outbox knows of the last upsert of its contact, and "not
//! found" counts as gone only once that upsert cannot still land.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::AttemptOutcome;

/// The last upsert of a deletion's contact that may have reached the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EarlierUpsert {
    /// The provider's import job for it, if the provider accepted it with one (SendGrid).
    pub job: Option<String>,
    /// Until when a request carrying it may have reached the provider: its last claim's lease
    /// end (a request that timed out may still have been accepted).
    pub may_land_until: DateTime<Utc>,
}

/// What the provider says of an import job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Job {
    /// No job known, or the provider no longer knows it: the window decides.
    Unknown,
    /// Not finished: the contact may appear later.
    Running,
    /// Finished (completed, errored or failed): what the provider shows now is final.
    Finished,
}

/// Whether a contact the provider does not find is gone, after `earlier` (if any) and its
/// import `job`: yes when no upsert could still land, or its import finished; otherwise only
/// once `window` has passed since it could last have reached the provider.
pub(crate) fn absent_is_gone(
    earlier: Option<&EarlierUpsert>,
    job: Job,
    now: DateTime<Utc>,
    window: Duration,
) -> bool {
    let Some(earlier) = earlier else {
        return true;
    };
    match job {
        Job::Finished => true,
        Job::Running => false,
        Job::Unknown => {
            let window = chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
            earlier
                .may_land_until
                .checked_add_signed(window)
                // A window past the end of time never ends.
                .is_some_and(|settled| now >= settled)
        }
    }
}

/// The provider answered `status` but may not have applied an earlier upsert yet: `what`.
pub(crate) fn not_yet(status: u16, what: &str) -> AttemptOutcome {
    AttemptOutcome::NotYet {
        status,
        error: format!("{what}: waiting for the provider to finish importing the contact"),
        retry_after: None,
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn not_found_is_gone_only_once_no_upsert_can_still_land() {
        let now = Utc.with_ymd_and_hms(2026, 12, 7, 12, 0, 0).unwrap();
        let window = Duration::from_secs(300);
        let landed = |ago: i64| EarlierUpsert {
            job: None,
            may_land_until: now - chrono::Duration::seconds(ago),
        };
        assert!(absent_is_gone(None, Job::Unknown, now, window), "no upsert");
        let recent = landed(60);
        assert!(!absent_is_gone(Some(&recent), Job::Unknown, now, window));
        assert!(!absent_is_gone(Some(&recent), Job::Running, now, window));
        assert!(absent_is_gone(Some(&recent), Job::Finished, now, window));
        let old = landed(301);
        assert!(absent_is_gone(Some(&old), Job::Unknown, now, window));
        assert!(
            !absent_is_gone(Some(&old), Job::Running, now, window),
            "a job still running is waited for whatever the window"
        );
        let far = EarlierUpsert {
            job: None,
            may_land_until: now,
        };
        assert!(!absent_is_gone(
            Some(&far),
            Job::Unknown,
            now,
            Duration::MAX
        ));
        assert!(absent_is_gone(
            Some(&far),
            Job::Unknown,
            now,
            Duration::ZERO
        ));
    }
}
