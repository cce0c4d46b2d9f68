//! The gate in front of the provider: pacing across every request, and the provider's own pause
//! (a 429 with its reset) held for every request.

use chrono::{DateTime, Utc};

use tracing::Instrument;

use super::*;
use crate::budget::{Budget, Permit};
use crate::telemetry::trace::{self, TraceParent};

/// Admits the requests of one delivery to the provider: each waits for its turn in the
/// [`Budget`] (the pace, the provider's pause, and with several instances a shared slot), and
/// must get it by `send_by`, the latest moment its rows' leases let it start.
pub(crate) struct Gate<'b> {
    budget: &'b Budget,
    send_by: DateTime<Utc>,
}

impl<'b> Gate<'b> {
    pub(crate) fn new(budget: &'b Budget, send_by: DateTime<Utc>) -> Self {
        Self { budget, send_by }
    }

    /// Waits for the next request's turn: its permit, held while it is at the provider;
    /// `Err(wait)` while the provider's pause lasts or if the turn would come too late.
    pub(crate) async fn admit(&self) -> Result<Permit, Duration> {
        self.budget.admit(self.send_by).await
    }

    /// Notes what a request came to: a 429 that says when the limit resets pauses every
    /// request until then.
    pub(crate) async fn observe<'a>(&self, outcomes: impl IntoIterator<Item = &'a AttemptOutcome>) {
        self.budget.observe(outcomes).await;
    }
}

/// The configured provider behind its [`Budget`].
pub struct Paced {
    provider: Provider,
    budget: Budget,
}

impl Paced {
    pub(crate) fn new(provider: Provider, budget: Budget) -> Self {
        Self { provider, budget }
    }

    /// One attempt for each of `rows` (one request, or several if a batch is split), each
    /// request started by `send_by`.
    pub(crate) async fn deliver(
        &self,
        rows: &[Delivery],
        send_by: DateTime<Utc>,
    ) -> Vec<AttemptOutcome> {
        let gate = Gate::new(&self.budget, send_by);
        self.provider.deliver(rows, &gate).await
    }

    pub(crate) fn budget(&self) -> &Budget {
        &self.budget
    }
}

/// `rows` one request each, in order, each admitted by `gate`.
pub(super) async fn one_by_one<'r, F, Fut>(
    rows: &'r [Delivery],
    gate: &Gate<'_>,
    send: F,
) -> Vec<AttemptOutcome>
where
    F: Fn(&'r Delivery, TraceParent) -> Fut,
    Fut: std::future::Future<Output = AttemptOutcome>,
{
    let mut outcomes = Vec::with_capacity(rows.len());
    for row in rows {
        let outcome = match gate.admit().await {
            Ok(_permit) => {
                let span = attempt_span(row);
                trace::name_exported(
                    &span,
                    format_args!("deliver {}", row.event.as_str()),
                    "client",
                );
                let trace = trace::attempt_span(&span, &row.trace);
                let outcome = send(row, trace).instrument(span).await;
                gate.observe([&outcome]).await;
                outcome
            }
            Err(retry_after) => AttemptOutcome::NotSent { retry_after },
        };
        outcomes.push(outcome);
    }
    outcomes
}

/// The span of one row's delivery attempt (SPEC §9): in the trace of the request that wrote the
/// row, linked to its span.
pub(super) fn attempt_span(row: &Delivery) -> tracing::Span {
    tracing::info_span!(
        "email_sync.attempt",
        outbox_id = %row.id,
        otel.name = tracing::field::Empty,
        otel.kind = tracing::field::Empty,
    )
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[tokio::test]
    async fn the_rows_of_a_paused_request_are_not_sent_and_say_for_how_long() {
        let budget = Budget::local(0);
        budget.pause_until(Instant::now() + Duration::from_secs(60));
        let gate = Gate::new(&budget, Utc::now() + chrono::Duration::minutes(1));
        let rows = [Delivery {
            id: Uuid::nil(),
            event: EventType::UserRegistered,
            payload: "{}".into(),
            upsert: None,
            suppressed: None,
            trace: None,
        }];
        let outcomes = one_by_one(&rows, &gate, |_, _| async {
            panic!("nothing is sent while paused")
        })
        .await;
        assert!(
            matches!(outcomes[..], [AttemptOutcome::NotSent { retry_after }] if retry_after > Duration::from_secs(58)),
            "{outcomes:?}"
        );
    }
}
