//! Each row's outcome counted and logged.

use super::*;

impl EmailSyncActor {
    /// Counts and logs one row's outcome.
    pub(super) fn note_outcome(&self, noted: &Noted) {
        let Noted {
            claimed,
            outcome,
            attempts,
            gave_up,
            dead,
        } = noted;
        let (id, attempts, now) = (claimed.row.id, *attempts, Utc::now());
        if *dead {
            self.metrics.sync_dead.inc();
        }
        if *gave_up {
            tracing::error!(outbox_id = %id, attempts, "giving up on a row after email_sync.retry.max_attempts / max_elapsed; it is dead until an operator retries it");
        }
        match outcome {
            AttemptOutcome::Delivered { .. } => {
                self.metrics
                    .sync_attempts
                    .with_label_values(&["delivered"])
                    .inc();
                let lag = (now - claimed.row.created_at).to_std().unwrap_or_default();
                self.metrics.delivery_lag.observe(lag.as_secs_f64());
                self.metrics.activity.delivered(now, lag);
                tracing::info!(outbox_id = %id, attempts, "delivered to the email provider");
            }
            AttemptOutcome::Permanent { status, error } => {
                self.metrics
                    .sync_attempts
                    .with_label_values(&["permanent"])
                    .inc();
                self.metrics.activity.failed(now);
                // Providers quote the address in their messages: masked here, whole in the row.
                let error = crate::domain::mask_addresses_in(error);
                tracing::error!(outbox_id = %id, ?status, %error, "the provider refused a row permanently; it is dead until an operator retries it");
            }
            AttemptOutcome::Transient { status, error, .. }
            | AttemptOutcome::Misconfigured { status, error } => {
                self.metrics
                    .sync_attempts
                    .with_label_values(&["transient"])
                    .inc();
                self.metrics.activity.failed(now);
                let error = crate::domain::mask_addresses_in(error);
                if matches!(outcome, AttemptOutcome::Misconfigured { .. }) {
                    tracing::error!(outbox_id = %id, ?status, %error, "email provider rejects our requests: check email_sync.kind and its section's base_url and api_key (webhook: email_sync.url and email_sync.secret)");
                } else {
                    tracing::warn!(outbox_id = %id, ?status, %error, attempts, "delivery failed; will retry");
                }
            }
            AttemptOutcome::NotYet { status, error, .. } => {
                // Counted as a retry; the provider is up, so not as a failure.
                self.metrics
                    .sync_attempts
                    .with_label_values(&["transient"])
                    .inc();
                tracing::info!(outbox_id = %id, status, %error, attempts, "the provider is not done with an earlier request about this contact; will ask again");
            }
            AttemptOutcome::Declined {
                status,
                state,
                error,
            } => {
                self.metrics
                    .sync_attempts
                    .with_label_values(&["suppressed"])
                    .inc();
                let error = crate::domain::mask_addresses_in(error);
                tracing::info!(outbox_id = %id, status, state, %error, "the provider says the person declined: their consent is recorded and the row is done (SPEC §8)");
            }
            AttemptOutcome::Suppressed { reason } => {
                self.metrics
                    .sync_attempts
                    .with_label_values(&["suppressed"])
                    .inc();
                tracing::info!(outbox_id = %id, %reason, "not sent: the row is done without a request");
            }
            AttemptOutcome::NotSent { retry_after } => {
                tracing::debug!(outbox_id = %id, ?retry_after, "not sent: the provider asked us to wait for its rate limit");
            }
        }
    }
}
