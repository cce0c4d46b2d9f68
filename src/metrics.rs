//! Prometheus metrics (SPEC §4.2), in a registry owned by one application: several apps in one
//! process (tests) each count their own.
//!
//! Every label value the SPEC lists is created at start-up, so a series exists at 0 before the
//! first event and `rate()` and alerts work from the first scrape.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::email::CircuitState;

/// Request latencies: 1 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Registration → provider acknowledgement: 100 ms (provider up) to 3 days (max_elapsed).
const LAG_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 10_800.0, 43_200.0, 86_400.0, 259_200.0,
];

/// `outcome` label values of `signup_registrations_total`.
pub const OUTCOMES: [&str; 5] = [
    "created",
    "username_taken",
    "email_taken",
    "invalid",
    "error",
];
/// `result` label values of `signup_email_sync_attempts_total`.
pub const RESULTS: [&str; 4] = ["delivered", "transient", "permanent", "suppressed"];
const STATES: [CircuitState; 3] = [
    CircuitState::Closed,
    CircuitState::Open,
    CircuitState::HalfOpen,
];

/// The SPEC §4.2 metrics of one application, in a registry of its own (several applications
/// in one test process must not share a global recorder).
pub struct Metrics {
    /// What `/metrics` renders.
    registry: Registry,
    /// `signup_registrations_total{outcome}`: counted by the registration pipeline.
    pub registrations: IntCounterVec,
    /// `signup_registration_duration_seconds`: request received → reply, registration only.
    pub registration_duration: Histogram,
    /// `signup_registration_batch_size`: registrations per transaction of the group commit
    /// (beyond SPEC §4.2: shows whether batches form, and how large, under load).
    pub batch_size: Histogram,
    /// `signup_email_sync_attempts_total{result}`: one per delivery attempt's outcome.
    pub sync_attempts: IntCounterVec,
    /// `signup_email_sync_dead_total`: rows given up on (permanent answer, or exhausted).
    pub sync_dead: IntCounter,
    /// `signup_erasures_total`: users erased (SPEC §6), by the admin API or the command line
    /// of this process.
    pub erasures: IntCounter,
    /// `signup_email_sync_delivery_lag_seconds`: registration → provider acknowledged.
    pub delivery_lag: Histogram,
    /// `signup_email_outbox_pending`: refreshed from the database by the email sync (≤ 5 s old).
    pub outbox_pending: IntGauge,
    /// `signup_email_outbox_dead`: as `outbox_pending`.
    pub outbox_dead: IntGauge,
    /// `signup_email_outbox_oldest_pending_age_seconds`: how long the oldest pending row has
    /// waited (0 with none); refreshed as `outbox_pending`.
    pub oldest_pending: Gauge,
    /// `signup_ready`: 1 while readiness holds (database and registrations up), else 0; set
    /// by every readiness probe and every scrape.
    pub ready: IntGauge,
    /// `signup_email_circuit_state{state}`: 1 for the current state; set through
    /// [`Metrics::set_circuit`] only, so exactly one state is 1.
    circuit_state: IntGaugeVec,
    /// `signup_email_sync_wakeups_dropped_total`: the email sync's mailbox was full.
    pub wakeups_dropped: IntCounter,
    /// `signup_email_sync_claims_released_total`: claimed rows given back unsent (SPEC §3.5.1).
    pub claims_released: IntCounter,
    /// `signup_database_file_ok`: 0 once the SQLite file at `database.url` is not the one the
    /// server opened (removed, replaced, its WAL deleted), else 1; set with readiness.
    pub database_file_ok: IntGauge,
    /// `signup_provider_events_total{kind,outcome}`: events the providers sent (SPEC §8):
    /// `applied`, `ignored` (a replay, an older event, an unknown address, not about consent)
    /// or `rejected` (signature, timestamp or body refused).
    pub provider_events: IntCounterVec,
    /// `signup_consent_state{state}`: contacts per consent state (SPEC §8), refreshed with the
    /// outbox gauges.
    pub consent_state: IntGaugeVec,
    /// `signup_http_requests_total{method,route,status}`: every request, by route pattern.
    pub http_requests: IntCounterVec,
    /// `signup_http_request_duration_seconds{method,route}`.
    pub http_duration: HistogramVec,
    /// The last hour of this instance's email sync, minute by minute, for the console.
    pub activity: crate::activity::Activity,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let registrations = IntCounterVec::new(
            Opts::new("signup_registrations_total", "Registrations by outcome."),
            &["outcome"],
        )?;
        let registration_duration = Histogram::with_opts(
            HistogramOpts::new(
                "signup_registration_duration_seconds",
                "Registration route: request received to reply.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let sync_attempts = IntCounterVec::new(
            Opts::new(
                "signup_email_sync_attempts_total",
                "Delivery attempts to the email provider by result.",
            ),
            &["result"],
        )?;
        let sync_dead =
            IntCounter::new("signup_email_sync_dead_total", "Outbox rows given up on.")?;
        let erasures = IntCounter::new(
            "signup_erasures_total",
            "Users erased, here and (queued) at the provider.",
        )?;
        let delivery_lag = Histogram::with_opts(
            HistogramOpts::new(
                "signup_email_sync_delivery_lag_seconds",
                "Registration to provider acknowledgement.",
            )
            .buckets(LAG_BUCKETS.to_vec()),
        )?;
        let outbox_pending = IntGauge::new(
            "signup_email_outbox_pending",
            "Outbox rows waiting for delivery.",
        )?;
        let outbox_dead = IntGauge::new(
            "signup_email_outbox_dead",
            "Dead outbox rows waiting for an operator.",
        )?;
        let oldest_pending = Gauge::new(
            "signup_email_outbox_oldest_pending_age_seconds",
            "How long the oldest pending outbox row has waited (0 with none).",
        )?;
        let ready = IntGauge::new(
            "signup_ready",
            "1 while readiness holds (database and registrations up), else 0.",
        )?;
        let circuit_state = IntGaugeVec::new(
            Opts::new(
                "signup_email_circuit_state",
                "1 for the email provider circuit's current state.",
            ),
            &["state"],
        )?;
        let wakeups_dropped = IntCounter::new(
            "signup_email_sync_wakeups_dropped_total",
            "Wake-ups dropped because the email sync mailbox was full (the poll finds the rows).",
        )?;
        let claims_released = IntCounter::new(
            "signup_email_sync_claims_released_total",
            "Claimed outbox rows given back unsent (open circuit, provider pause, shutdown, or a lease too short to send them).",
        )?;
        let database_file_ok = IntGauge::new(
            "signup_database_file_ok",
            "0 once the SQLite file at database.url is not the one the server opened (removed, replaced, its WAL deleted): restart on the right file.",
        )?;
        database_file_ok.set(1);
        let http_requests = IntCounterVec::new(
            Opts::new(
                "signup_http_requests_total",
                "HTTP requests by method, route pattern and status.",
            ),
            &["method", "route", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "signup_http_request_duration_seconds",
                "HTTP request duration.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["method", "route"],
        )?;

        registry.register(Box::new(registrations.clone()))?;
        registry.register(Box::new(registration_duration.clone()))?;
        let batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "signup_registration_batch_size",
                "Registrations committed per transaction by the RegistrationActor.",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]),
        )?;
        registry.register(Box::new(batch_size.clone()))?;
        registry.register(Box::new(sync_attempts.clone()))?;
        registry.register(Box::new(sync_dead.clone()))?;
        registry.register(Box::new(erasures.clone()))?;
        registry.register(Box::new(delivery_lag.clone()))?;
        registry.register(Box::new(outbox_pending.clone()))?;
        registry.register(Box::new(outbox_dead.clone()))?;
        registry.register(Box::new(oldest_pending.clone()))?;
        registry.register(Box::new(ready.clone()))?;
        registry.register(Box::new(circuit_state.clone()))?;
        registry.register(Box::new(wakeups_dropped.clone()))?;
        registry.register(Box::new(claims_released.clone()))?;
        registry.register(Box::new(database_file_ok.clone()))?;
        let provider_events = IntCounterVec::new(
            Opts::new(
                "signup_provider_events_total",
                "Events the email providers sent, by kind and outcome.",
            ),
            &["kind", "outcome"],
        )?;
        registry.register(Box::new(provider_events.clone()))?;
        for kind in ["mailchimp", "sendgrid", "brevo", "resend", "mailgun"] {
            for outcome in ["applied", "ignored", "rejected"] {
                provider_events.with_label_values(&[kind, outcome]);
            }
        }
        let consent_state = IntGaugeVec::new(
            Opts::new(
                "signup_consent_state",
                "Contacts per consent state, as the providers last told it.",
            ),
            &["state"],
        )?;
        registry.register(Box::new(consent_state.clone()))?;
        for state in crate::consent::ConsentState::ALL {
            consent_state.with_label_values(&[state.as_str()]).set(0);
        }
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        // process_cpu_seconds_total, process_resident_memory_bytes, … (Linux).
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;

        for outcome in OUTCOMES {
            registrations.with_label_values(&[outcome]);
        }
        for result in RESULTS {
            sync_attempts.with_label_values(&[result]);
        }
        let metrics = Self {
            activity: crate::activity::Activity::default(),
            registry,
            registrations,
            registration_duration,
            batch_size,
            sync_attempts,
            sync_dead,
            erasures,
            delivery_lag,
            outbox_pending,
            outbox_dead,
            oldest_pending,
            ready,
            circuit_state,
            wakeups_dropped,
            claims_released,
            database_file_ok,
            provider_events,
            consent_state,
            http_requests,
            http_duration,
        };
        metrics.set_circuit(CircuitState::Closed);
        Ok(metrics)
    }

    /// 1 for `current`, 0 for the other states.
    pub(crate) fn set_circuit(&self, current: CircuitState) {
        for state in STATES {
            self.circuit_state
                .with_label_values(&[state.as_str()])
                .set(i64::from(state == current));
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        String::from_utf8(buffer).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_series_exists_at_zero_from_the_start() {
        let text = Metrics::new().expect("metrics").render().expect("text");
        for outcome in OUTCOMES {
            assert!(
                text.contains(&format!(
                    "signup_registrations_total{{outcome=\"{outcome}\"}} 0"
                )),
                "{outcome}"
            );
        }
        for result in RESULTS {
            assert!(text.contains(&format!(
                "signup_email_sync_attempts_total{{result=\"{result}\"}} 0"
            )));
        }
        assert!(text.contains("signup_email_circuit_state{state=\"closed\"} 1"));
        assert!(text.contains("signup_email_circuit_state{state=\"half_open\"} 0"));
        for name in [
            "signup_email_sync_dead_total 0",
            "signup_email_outbox_pending 0",
            "signup_email_outbox_dead 0",
            "signup_email_sync_wakeups_dropped_total 0",
            "signup_email_sync_claims_released_total 0",
            "signup_registration_duration_seconds_count 0",
            "signup_email_sync_delivery_lag_seconds_count 0",
        ] {
            assert!(text.contains(name), "{name}");
        }
    }

    #[test]
    fn two_registries_count_separately() {
        let a = Metrics::new().expect("a");
        let b = Metrics::new().expect("b");
        a.wakeups_dropped.inc();
        assert!(
            a.render()
                .expect("a")
                .contains("signup_email_sync_wakeups_dropped_total 1")
        );
        assert!(
            b.render()
                .expect("b")
                .contains("signup_email_sync_wakeups_dropped_total 0")
        );
    }
}
