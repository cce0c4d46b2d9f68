//! Traces across the asynchronous boundary (SPEC §9): a registration's W3C trace context is
//! stored on its outbox row, each delivery attempt is a span of that trace linked to it, the
//! webhook kind sends it on as `traceparent`, and with `telemetry.otlp_endpoint` the spans reach
//! a collector as one trace. On SQLite, and on PostgreSQL when the suite runs there.

use serde_json::Value;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::email_sync::{accepting, app_with_provider};
use crate::helpers::{PATIENCE, fresh_database, registration, wait_until};
use crate::processes::ServerProcess;

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn callers_traceparent() -> String {
    format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01")
}

/// `00-<trace>-<span>-<flags>` split, or a failure naming the header.
fn parts(traceparent: &str) -> (String, String) {
    let fields: Vec<&str> = traceparent.split('-').collect();
    assert!(
        fields.len() == 4
            && fields[0] == "00"
            && fields[1].len() == 32
            && fields[2].len() == 16
            && fields[1..]
                .iter()
                .all(|f| f.bytes().all(|b| b.is_ascii_hexdigit())),
        "not a W3C traceparent: {traceparent:?}"
    );
    (fields[1].to_owned(), fields[2].to_owned())
}

async fn webhook_traceparents(provider: &MockServer) -> Vec<String> {
    provider
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.url.path() == "/webhook")
        .filter_map(|r| {
            r.headers
                .get("traceparent")?
                .to_str()
                .ok()
                .map(str::to_owned)
        })
        .collect()
}

#[actix_web::test]
async fn the_provider_gets_the_registrations_trace_and_the_row_keeps_it() {
    let provider = MockServer::start().await;
    accepting().mount(&provider).await;
    let app = app_with_provider(&provider, |_| {}).await;

    let response = app
        .client
        .post(app.url("/api/v1/registrations"))
        .header("traceparent", callers_traceparent())
        .json(&registration(1))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 201);
    // Without one: a new trace, carried the same way.
    assert_eq!(
        app.post_registration(&registration(2))
            .await
            .status()
            .as_u16(),
        201
    );
    wait_until("both delivered", PATIENCE, || async {
        webhook_traceparents(&provider).await.len() >= 2
    })
    .await;

    let rows = app.outbox_rows().await;
    let stored = |n: usize| {
        let user = format!("user{n}");
        rows.iter()
            .find(|row| row.payload.contains(&format!("\"{user}\"")))
            .and_then(|row| row.traceparent.clone())
            .unwrap_or_else(|| panic!("{user}'s row has a traceparent: {rows:?}"))
    };
    let (trace, request_span) = parts(&stored(1));
    assert_eq!(trace, CALLER_TRACE, "the row is in the caller's trace");
    assert_ne!(
        request_span, CALLER_SPAN,
        "the request's own span, not the caller's"
    );
    let (other_trace, _) = parts(&stored(2));
    assert_ne!(
        other_trace, CALLER_TRACE,
        "no traceparent: a trace of its own"
    );

    let sent = webhook_traceparents(&provider).await;
    let mut sent_traces: Vec<String> = sent.iter().map(|t| parts(t).0).collect();
    sent_traces.sort();
    let mut expected = vec![CALLER_TRACE.to_owned(), other_trace];
    expected.sort();
    assert_eq!(
        sent_traces, expected,
        "each delivery carries its registration's trace"
    );
    let to_caller = sent
        .iter()
        .map(|t| parts(t))
        .find(|(trace, _)| trace == CALLER_TRACE)
        .expect("the caller's trace was sent");
    assert_ne!(
        to_caller.1, request_span,
        "the attempt is a span of its own"
    );
}

#[actix_web::test]
async fn with_an_otlp_endpoint_a_registration_and_its_delivery_arrive_as_one_linked_trace() {
    let collector = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/traces"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({})))
        .mount(&collector)
        .await;
    let provider = MockServer::start().await;
    accepting().mount(&provider).await;
    let (database_url, _dir, _) = fresh_database().await;
    let server = ServerProcess::start_with(
        &database_url,
        &provider.uri(),
        &[
            ("SIGNUP_TELEMETRY__OTLP_ENDPOINT", &collector.uri()),
            // The batch processor's delay (the SDK's own variable): spans leave within 200 ms.
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
    )
    .await;
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/registrations", server.base))
        .header("traceparent", callers_traceparent())
        .json(&registration(1))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 201);

    let in_trace = |spans: &[Value], name: &str| {
        spans
            .iter()
            .find(|s| {
                s["traceId"] == CALLER_TRACE && s["name"].as_str().is_some_and(|n| n.contains(name))
            })
            .cloned()
    };
    wait_until(
        "the collector has the request's and the attempt's spans",
        PATIENCE,
        || async {
            let spans = exported_spans(&collector).await;
            in_trace(&spans, "/api/v1/registrations").is_some()
                && in_trace(&spans, "deliver").is_some()
        },
    )
    .await;
    let spans = exported_spans(&collector).await;
    let named = |name: &str| in_trace(&spans, name).expect("found above");
    let request = named("/api/v1/registrations");
    let attempt = named("deliver");
    assert_eq!(
        request["parentSpanId"], CALLER_SPAN,
        "the request joins the caller's trace"
    );
    assert_eq!(attempt["parentSpanId"], request["spanId"], "{attempt}");
    let links = attempt["links"].as_array().cloned().unwrap_or_default();
    assert!(
        links
            .iter()
            .any(|l| l["traceId"] == CALLER_TRACE && l["spanId"] == request["spanId"]),
        "the attempt is linked to the registration's span: {attempt}"
    );
    // The provider got the attempt's own span as its traceparent.
    let sent = webhook_traceparents(&provider).await;
    assert!(
        sent.iter().any(|t| parts(t)
            == (
                CALLER_TRACE.to_owned(),
                attempt["spanId"].as_str().unwrap_or_default().to_owned()
            )),
        "sent {sent:?}, attempt {attempt}"
    );
    drop(server);
}

/// Every span the collector received (OTLP JSON: resourceSpans → scopeSpans → spans).
async fn exported_spans(collector: &MockServer) -> Vec<Value> {
    let mut spans = Vec::new();
    for request in collector.received_requests().await.unwrap_or_default() {
        let Ok(body) = serde_json::from_slice::<Value>(&request.body) else {
            continue;
        };
        for resource in body["resourceSpans"].as_array().into_iter().flatten() {
            for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                spans.extend(scope["spans"].as_array().into_iter().flatten().cloned());
            }
        }
    }
    spans
}
