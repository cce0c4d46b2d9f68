//! The gate in front of the provider: pacing across every request, and the provider's own pause
//! (a 429 with its reset) held for every request.

use super::*;

/// Admits requests to the provider: at most `email_sync.max_requests_per_second` across every
/// delivery in flight (a `governor` token bucket, one token per request whatever the rows it
/// carries), and none while the provider has told us to wait (a 429 with its reset header):
/// that pause holds for every request, so no other row spends an attempt on a certain 429.
pub struct Gate {
    /// None: unlimited.
    pace: Option<governor::DefaultDirectRateLimiter>,
    /// Until when the provider asked every request to wait.
    paused_until: std::sync::Mutex<Option<Instant>>,
}

impl Gate {
    /// At most `per_second` requests a second (0: unlimited), with no burst beyond one
    /// second's worth.
    pub(crate) fn new(per_second: u32) -> Self {
        let pace = std::num::NonZeroU32::new(per_second)
            .map(|n| governor::RateLimiter::direct(governor::Quota::per_second(n)));
        Self {
            pace,
            paused_until: std::sync::Mutex::new(None),
        }
    }

    /// Waits for the next request's turn; `Err(wait)` while the provider's pause lasts.
    pub(crate) async fn admit(&self) -> Result<(), Duration> {
        self.check_pause()?;
        if let Some(pace) = &self.pace {
            pace.until_ready().await;
        }
        // A 429 may have come back while this request waited for its token.
        self.check_pause()
    }

    fn check_pause(&self) -> Result<(), Duration> {
        match self.paused_until() {
            Some(until) => Err(until.saturating_duration_since(Instant::now())),
            None => Ok(()),
        }
    }

    /// Until when requests wait for the provider's rate-limit reset, if they do now.
    pub(crate) fn paused_until(&self) -> Option<Instant> {
        let paused = self
            .paused_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        paused.filter(|until| *until > Instant::now())
    }

    /// Notes what a request came to: a 429 that says when the limit resets pauses every
    /// request until then.
    pub(crate) fn observe<'a>(&self, outcomes: impl IntoIterator<Item = &'a AttemptOutcome>) {
        let reset = outcomes
            .into_iter()
            .filter_map(AttemptOutcome::rate_limit_reset)
            .max();
        if let Some(wait) = reset {
            let until = Instant::now() + wait;
            let mut paused = self
                .paused_until
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if paused.is_none_or(|at| at < until) {
                *paused = Some(until);
            }
        }
    }
}

/// The configured provider behind its [`Gate`].
pub struct Paced {
    provider: Provider,
    gate: Gate,
}

impl Paced {
    /// `provider` at most `per_second` requests a second (0: unlimited).
    pub(crate) fn new(provider: Provider, per_second: u32) -> Self {
        Self {
            provider,
            gate: Gate::new(per_second),
        }
    }

    /// One attempt for each of `rows` (one request, or several if a batch is split).
    pub(crate) async fn deliver(&self, rows: &[Delivery]) -> Vec<AttemptOutcome> {
        self.provider.deliver(rows, &self.gate).await
    }
}

/// `rows` one request each, in order, each admitted by `gate`.
pub(super) async fn one_by_one<'r, F, Fut>(
    rows: &'r [Delivery],
    gate: &Gate,
    send: F,
) -> Vec<AttemptOutcome>
where
    F: Fn(&'r Delivery) -> Fut,
    Fut: std::future::Future<Output = AttemptOutcome>,
{
    let mut outcomes = Vec::with_capacity(rows.len());
    for row in rows {
        let outcome = match gate.admit().await {
            Ok(()) => send(row).await,
            Err(retry_after) => AttemptOutcome::NotSent { retry_after },
        };
        gate.observe([&outcome]);
        outcomes.push(outcome);
    }
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_429_with_a_reset_holds_every_request_back_until_then_and_nothing_else_does() {
        let gate = Gate::new(0);
        assert_eq!(gate.admit().await, Ok(()));
        let limited = |status, retry_after| AttemptOutcome::Transient {
            status: Some(status),
            error: "limited".into(),
            retry_after,
        };
        // A 503 asking to wait, or a 429 without a reset: that row's matter, not a pause.
        gate.observe([
            &limited(503, Some(Duration::from_secs(60))),
            &limited(429, None),
        ]);
        assert_eq!(gate.admit().await, Ok(()));
        gate.observe([&limited(429, Some(Duration::from_secs(60)))]);
        let held = gate.admit().await.expect_err("paused");
        assert!(held > Duration::from_secs(58) && held <= Duration::from_secs(60));
        // The rows a paused request would have carried are not sent, and say for how long.
        let rows = [Delivery {
            id: Uuid::nil(),
            event: EventType::UserRegistered,
            payload: "{}".into(),
            upsert: None,
            suppressed: None,
        }];
        let outcomes = one_by_one(&rows, &gate, |_| async {
            panic!("nothing is sent while paused")
        })
        .await;
        assert!(
            matches!(outcomes[..], [AttemptOutcome::NotSent { retry_after }] if retry_after > Duration::from_secs(58)),
            "{outcomes:?}"
        );
    }
}
