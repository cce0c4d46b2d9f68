//! `GET /metrics`, read by a real Prometheus text parser.

use prometheus_parse::{Scrape, Value};
use serde_json::json;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{TestApp, registration, spawn_app, spawn_app_with, use_provider};

async fn scrape(app: &TestApp) -> Scrape {
    let response = app.get("/metrics").await;
    assert_eq!(response.status().as_u16(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("text/plain")
    );
    let text = response.text().await.expect("text");
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("valid exposition format")
}

/// The value of the sample `name` whose labels include `labels`.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(_) | Value::Summary(_) => f64::NAN,
        })
}

fn histogram_count(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .and_then(|s| match &s.value {
            Value::Histogram(buckets) => buckets.last().map(|b| b.count as u64),
            _ => None,
        })
}

#[actix_web::test]
async fn every_listed_series_is_exported_at_zero_from_start_up() {
    let app = spawn_app().await;

    let scrape = scrape(&app).await;

    for outcome in signup::metrics::OUTCOMES {
        assert_eq!(
            value(
                &scrape,
                "signup_registrations_total",
                &[("outcome", outcome)]
            ),
            Some(0.0),
            "{outcome}"
        );
    }
    for result in signup::metrics::RESULTS {
        assert_eq!(
            value(
                &scrape,
                "signup_email_sync_attempts_total",
                &[("result", result)]
            ),
            Some(0.0),
            "{result}"
        );
    }
    for (state, v) in [("closed", 1.0), ("open", 0.0), ("half_open", 0.0)] {
        assert_eq!(
            value(&scrape, "signup_email_circuit_state", &[("state", state)]),
            Some(v),
            "{state}"
        );
    }
    for name in [
        "signup_email_sync_dead_total",
        "signup_email_outbox_pending",
        "signup_email_outbox_dead",
        "signup_email_sync_wakeups_dropped_total",
        "signup_email_sync_claims_released_total",
    ] {
        assert_eq!(value(&scrape, name, &[]), Some(0.0), "{name}");
    }
    assert_eq!(
        histogram_count(&scrape, "signup_registration_duration_seconds", &[]),
        Some(0)
    );
    assert_eq!(
        histogram_count(&scrape, "signup_email_sync_delivery_lag_seconds", &[]),
        Some(0)
    );
    assert!(value(&scrape, "process_resident_memory_bytes", &[]).is_some_and(|v| v > 0.0));
}

#[actix_web::test]
async fn registration_counters_move_by_exactly_what_happened() {
    let app = spawn_app().await;

    app.register_all(0..2).await;
    let taken_name = json!({"username": "user0", "email": "fresh@example.com", "password": "correct horse battery"});
    assert_eq!(
        app.post_registration(&taken_name).await.status().as_u16(),
        409
    );
    // Both taken, by someone else (another password: the same person would get 201).
    let both_taken = json!({"username": "user1", "email": "user1@example.com", "password": "someone else entirely"});
    assert_eq!(
        app.post_registration(&both_taken).await.status().as_u16(),
        409
    );
    let invalid = json!({"username": "x", "email": "y", "password": "z"});
    assert_eq!(app.post_registration(&invalid).await.status().as_u16(), 422);
    assert_eq!(app.get("/nope/123").await.status().as_u16(), 404);

    let scrape = scrape(&app).await;
    let count = |outcome| {
        value(
            &scrape,
            "signup_registrations_total",
            &[("outcome", outcome)],
        )
    };
    assert_eq!(count("created"), Some(2.0));
    assert_eq!(count("username_taken"), Some(1.0));
    assert_eq!(count("email_taken"), Some(1.0));
    assert_eq!(count("invalid"), Some(1.0));
    assert_eq!(count("error"), Some(0.0));
    assert_eq!(
        histogram_count(&scrape, "signup_registration_duration_seconds", &[]),
        Some(5)
    );
    let route = [("method", "POST"), ("route", "/api/v1/registrations")];
    let http = |status| {
        value(
            &scrape,
            "signup_http_requests_total",
            &[route[0], route[1], ("status", status)],
        )
    };
    assert_eq!(http("201"), Some(2.0));
    assert_eq!(http("409"), Some(2.0));
    assert_eq!(http("422"), Some(1.0));
    assert_eq!(
        histogram_count(&scrape, "signup_http_request_duration_seconds", &route),
        Some(5)
    );
    assert_eq!(
        value(
            &scrape,
            "signup_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ),
        Some(1.0),
        "unknown paths share one label"
    );
    assert!(
        scrape
            .samples
            .iter()
            .all(|s| !s.labels.get("route").unwrap_or("").contains("nope")),
        "raw paths never become labels"
    );
}

#[actix_web::test]
async fn delivery_counters_and_outbox_gauges_follow_the_email_sync() {
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&provider)
        .await;
    let uri = provider.uri();
    let app = spawn_app_with(move |s| use_provider(s, &uri)).await;

    app.register_all(0..3).await;
    app.wait_all_delivered(3).await;

    crate::helpers::wait_until(
        "the gauges are refreshed",
        std::time::Duration::from_secs(10),
        || async {
            let scrape = scrape(&app).await;
            value(&scrape, "signup_email_outbox_pending", &[]) == Some(0.0)
                && value(
                    &scrape,
                    "signup_email_sync_attempts_total",
                    &[("result", "delivered")],
                ) == Some(3.0)
        },
    )
    .await;
    let scrape = scrape(&app).await;
    assert_eq!(
        histogram_count(&scrape, "signup_email_sync_delivery_lag_seconds", &[]),
        Some(3)
    );
}

#[actix_web::test]
async fn responses_carry_the_request_id_given_or_a_new_one() {
    let app = spawn_app().await;

    let given = app
        .client
        .get(app.url("/health/live"))
        .header("x-request-id", "trace-42")
        .send()
        .await
        .expect("sent");
    let generated = app.get("/health/live").await;

    assert_eq!(given.headers()["x-request-id"], "trace-42");
    let id = generated.headers()["x-request-id"].to_str().expect("ascii");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
}

/// Every `expr` in a Grafana dashboard, however deep.
fn queries(value: &serde_json::Value, found: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, inner) in map {
                match (key.as_str(), inner) {
                    ("expr", serde_json::Value::String(expr)) => found.push(expr.clone()),
                    _ => queries(inner, found),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| queries(i, found)),
        _ => {}
    }
}

/// The metric names a PromQL expression uses (signup's and the process collector's).
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with("signup_") || word.starts_with("process_"))
        .map(|word| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| word.strip_suffix(suffix))
                .unwrap_or(word)
                .to_owned()
        })
        .collect()
}

#[actix_web::test]
async fn every_dashboard_query_names_an_exported_metric_and_every_signup_metric_is_charted() {
    let app = spawn_app().await;
    // The per-route HTTP series exist once a request has been served.
    app.get("/health/live").await;
    let text = app.get("/metrics").await.text().await.expect("text");
    let exported: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/grafana/signup.json"
        ))
        .expect("the dashboard file"),
    )
    .expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    queries(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "{exprs:?}");

    let mut charted = std::collections::BTreeSet::new();
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "a query that names no metric: {expr}");
        for name in names {
            assert!(
                exported.contains(name.as_str()),
                "{expr} names {name}, which the server does not export"
            );
            charted.insert(name);
        }
    }
    let uncharted: Vec<&&str> = exported
        .iter()
        .filter(|name| name.starts_with("signup_") && !charted.contains(**name))
        .collect();
    assert!(uncharted.is_empty(), "not on the dashboard: {uncharted:?}");
}

#[actix_web::test]
async fn readiness_and_the_oldest_pending_rows_age_are_exported_for_alerts() {
    // A provider that never answers in time: rows stay pending.
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&provider)
        .await;
    let base = provider.uri();
    let app = spawn_app_with(move |s| use_provider(s, &base)).await;
    let scrape_now = scrape(&app).await;
    assert_eq!(value(&scrape_now, "signup_ready", &[]), Some(1.0));
    assert_eq!(
        value(
            &scrape_now,
            "signup_email_outbox_oldest_pending_age_seconds",
            &[]
        ),
        Some(0.0)
    );

    let response = app.post_registration(&registration(1)).await;
    assert_eq!(response.status().as_u16(), 201);
    crate::helpers::wait_until(
        "the oldest pending row's age is exported",
        std::time::Duration::from_secs(30),
        || async {
            value(
                &scrape(&app).await,
                "signup_email_outbox_oldest_pending_age_seconds",
                &[],
            )
            .is_some_and(|age| age > 0.0)
        },
    )
    .await;
    // The database closed under the server: not ready, as the scrape says.
    app.server_db.clone().close().await.expect("closed");
    assert_eq!(value(&scrape(&app).await, "signup_ready", &[]), Some(0.0));
}

#[actix_web::test]
async fn invented_http_methods_are_counted_as_other_and_add_no_label() {
    let app = spawn_app().await;
    let invented = "X".repeat(4000);
    for n in 0..20 {
        let method = reqwest::Method::from_bytes(format!("{invented}{n}").as_bytes())
            .expect("a valid token");
        app.client
            .request(method, app.url("/health/live"))
            .send()
            .await
            .expect("answered");
    }

    let scrape = app.get("/metrics").await.text().await.expect("text");

    assert!(
        !scrape.contains(&invented),
        "an invented method became a label"
    );
    assert!(
        scrape.contains(r#"method="other""#),
        "counted as other: {}",
        scrape.len()
    );
    assert!(scrape.len() < 200_000, "scrape of {} bytes", scrape.len());
}
