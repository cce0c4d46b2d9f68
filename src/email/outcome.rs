//! What one attempt at the provider came to (SPEC §3.2), for every provider kind: the outcome,
//! the classification of an HTTP answer, `Retry-After`, and the HTTP client every adapter
//! shares.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AttemptOutcome {
    /// 2xx. `job`: the provider's job that applies it later, where it imports asynchronously
    /// (SendGrid's `job_id`); a deletion of the same contact waits for it (SPEC §6).
    Delivered { status: u16, job: Option<String> },
    /// Worth retrying; counts against the circuit breaker. `status`: none when no answer came
    /// (a timeout, a refused connection).
    Transient {
        status: Option<u16>,
        error: String,
        /// The provider's `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// 401/403/404/410 (or a redirect): the endpoint or its credentials are wrong, not the
    /// message. Retried like [`AttemptOutcome::Transient`] (an operator may fix the setting
    /// meanwhile) and counts against the circuit breaker, but logged as the operator's matter.
    Misconfigured { status: Option<u16>, error: String },
    /// Any other 4xx: the message itself is refused; retrying cannot help. `status`: none when
    /// the request could not even be built (a stored payload nobody can read).
    Permanent { status: Option<u16>, error: String },
    /// The provider refused the member because the person declined (Mailchimp's "Member In
    /// Compliance State", "Forgotten Email Not Subscribed"): the contact's consent becomes
    /// `state` (SPEC §8), and the row is done as suppressed, not dead.
    Declined {
        status: u16,
        state: &'static str,
        error: String,
    },
    /// Not sent, on purpose, for `reason`: an upsert of an address whose person declined
    /// (unsubscribed, complained, cleaned; SPEC §8, "never undone"), or an event this kind has
    /// no call for. The row is done, delivered without a request; the circuit is not touched.
    Suppressed { reason: String },
    /// Not sent: the provider told every request to wait (a 429's reset), for `retry_after`
    /// from now. No attempt is spent and the circuit is not touched.
    NotSent { retry_after: Duration },
    /// The provider answered, but has not finished an earlier request about the same contact
    /// (an import still running, so "not found" may only mean "not imported yet"): asked again
    /// later. An attempt is spent, so the retry schedule bounds the wait; the provider is up, so
    /// the circuit counts it as an answer.
    NotYet {
        status: u16,
        error: String,
        retry_after: Option<Duration>,
    },
}

impl AttemptOutcome {
    /// Delivered, with no job to wait for.
    pub(crate) fn delivered(status: u16) -> Self {
        AttemptOutcome::Delivered { status, job: None }
    }

    /// What stands for a row the adapter gave no outcome for (a bug): tried again.
    pub(crate) fn no_outcome() -> Self {
        AttemptOutcome::Transient {
            status: None,
            error: "the provider adapter gave no outcome".into(),
            retry_after: None,
        }
    }

    /// An attempt that got no usable answer and is retried: what the circuit breaker counts
    /// as the provider failing.
    pub(crate) fn is_failure(&self) -> bool {
        matches!(
            self,
            AttemptOutcome::Transient { .. } | AttemptOutcome::Misconfigured { .. }
        )
    }

    /// How long the provider asked every request to wait: a 429 that says when its limit
    /// resets. Such a pause holds for every request, not only this row's.
    pub(crate) fn rate_limit_reset(&self) -> Option<Duration> {
        match self {
            AttemptOutcome::Transient {
                status: Some(429),
                retry_after: Some(wait),
                ..
            } if !wait.is_zero() => Some(*wait),
            _ => None,
        }
    }
}

/// Judges an HTTP answer.
pub(crate) fn classify(
    status: StatusCode,
    headers: &HeaderMap,
    now: std::time::SystemTime,
) -> AttemptOutcome {
    let code = status.as_u16();
    if status.is_success() {
        return AttemptOutcome::delivered(code);
    }
    let retry_after = matches!(code, 429 | 503)
        .then(|| headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()))
        .flatten()
        .and_then(|v| parse_retry_after(v, now));
    match code {
        401 | 403 | 404 | 410 => AttemptOutcome::Misconfigured {
            status: Some(code),
            error: format!(
                "provider answered {status}: check email_sync.url and email_sync.secret"
            ),
        },
        408 | 425 | 429 | 500..=599 => AttemptOutcome::Transient {
            status: Some(code),
            error: format!("provider answered {status}"),
            retry_after,
        },
        400..=499 => AttemptOutcome::Permanent {
            status: Some(code),
            error: format!("provider refused the message: {status}"),
        },
        // 1xx/3xx (redirects are not followed: a moved endpoint is a configuration matter).
        _ => AttemptOutcome::Misconfigured {
            status: Some(code),
            error: format!("unexpected answer {status}: check email_sync.url"),
        },
    }
}

/// `Retry-After` as delay-seconds or an HTTP date.
pub(crate) fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The HTTP client every adapter uses: the attempt timeout, no redirects.
pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("signup/", env!("CARGO_PKG_VERSION")))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_per_the_spec() {
        let now = std::time::SystemTime::now();
        let h = HeaderMap::new();
        let class = |code: u16| classify(StatusCode::from_u16(code).expect("status"), &h, now);
        for code in [200, 201, 202, 204] {
            assert_eq!(class(code), AttemptOutcome::delivered(code), "{code}");
        }
        for code in [408, 425, 429, 500, 502, 503, 504] {
            assert!(
                matches!(class(code), AttemptOutcome::Transient { .. }),
                "{code}"
            );
        }
        for code in [401, 403, 404, 410] {
            assert!(
                matches!(class(code), AttemptOutcome::Misconfigured { .. }),
                "{code}"
            );
        }
        for code in [400, 409, 413, 415, 422] {
            assert!(
                matches!(class(code), AttemptOutcome::Permanent { .. }),
                "{code}"
            );
        }
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_an_http_date() {
        let now = std::time::SystemTime::now();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        let parsed = parse_retry_after(&later, now).expect("date");
        assert!(
            parsed <= Duration::from_secs(90) && parsed >= Duration::from_secs(88),
            "{parsed:?}"
        );
        assert_eq!(parse_retry_after("soon", now), None);

        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "30".parse().expect("header"));
        let outcome = classify(StatusCode::TOO_MANY_REQUESTS, &headers, now);
        assert!(
            matches!(outcome, AttemptOutcome::Transient { retry_after: Some(d), .. } if d == Duration::from_secs(30))
        );
    }
}
