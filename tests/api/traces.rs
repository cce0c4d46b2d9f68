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

/// Registers person 1 at `base` with the caller's `traceparent`: 201.
async fn register_in_callers_trace(client: &reqwest::Client, base: &str) {
    let response = client
        .post(format!(
            "{}/api/v1/registrations",
            base.trim_end_matches('/')
        ))
        .header("traceparent", callers_traceparent())
        .json(&registration(1))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 201);
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

    register_in_callers_trace(&app.client, &app.url("")).await;
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
    let provider = MockServer::start().await;
    accepting().mount(&provider).await;
    let attempt = exported_trace(&provider, &[], "deliver user.registered").await;
    // The provider got the attempt's own span as its traceparent.
    let sent = webhook_traceparents(&provider).await;
    let attempt_span = attempt["spanId"].as_str().unwrap_or_default().to_owned();
    assert!(
        sent.iter()
            .any(|t| parts(t) == (CALLER_TRACE.to_owned(), attempt_span.clone())),
        "sent {sent:?}, attempt {attempt}"
    );
}

/// A kind that sends batches (Mailchimp): the batch's span is in the trace of its one row.
#[actix_web::test]
async fn with_an_otlp_endpoint_a_batch_kinds_delivery_is_linked_to_the_registration() {
    let provider = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "id": "h", "status": "subscribed",
            "new_members": [], "updated_members": [], "errors": [],
        })))
        .mount(&provider)
        .await;
    let uri = provider.uri();
    exported_trace(
        &provider,
        &[
            ("SIGNUP_EMAIL_SYNC__KIND", "mailchimp"),
            ("SIGNUP_EMAIL_SYNC__MAILCHIMP__API_KEY", "key-us1"),
            ("SIGNUP_EMAIL_SYNC__MAILCHIMP__BASE_URL", &uri),
            ("SIGNUP_EMAIL_SYNC__MAILCHIMP__LIST_ID", "list1"),
        ],
        "deliver batch",
    )
    .await;
    let requests = provider.received_requests().await.unwrap_or_default();
    assert!(
        requests
            .iter()
            .any(|r| r.url.path().starts_with("/3.0/lists/list1")),
        "Mailchimp was called: {:?}",
        requests
            .iter()
            .map(|r| r.url.path().to_owned())
            .collect::<Vec<_>>()
    );
}

/// Starts `signup serve` (its provider at `provider`, `settings` added) exporting to a fake
/// collector, registers someone in the caller's trace, and waits for the request's span and the
/// delivery attempt's (named with `attempt_name`): both in the caller's trace, the attempt the
/// request's child and linked to it. The attempt's span.
async fn exported_trace(
    provider: &MockServer,
    settings: &[(&str, &str)],
    attempt_name: &str,
) -> Value {
    let collector = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/traces"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({})))
        .mount(&collector)
        .await;
    let (database_url, _dir, _) = fresh_database().await;
    let collector_uri = collector.uri();
    let mut settings = settings.to_vec();
    settings.extend([
        ("SIGNUP_TELEMETRY__OTLP_ENDPOINT", collector_uri.as_str()),
        // The batch processor's delay (the SDK's own variable): spans leave within 200 ms.
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ]);
    let server = ServerProcess::start_with(&database_url, &provider.uri(), &settings).await;
    register_in_callers_trace(&reqwest::Client::new(), &server.base).await;

    let in_trace = |spans: &[Value], name: &str| {
        spans
            .iter()
            .find(|s| {
                s["traceId"] == CALLER_TRACE && s["name"].as_str().is_some_and(|n| n.contains(name))
            })
            .cloned()
    };
    const REQUEST: &str = "POST /api/v1/registrations";
    wait_until(
        "the collector has the request's and the attempt's spans",
        PATIENCE,
        || async {
            let spans = exported_spans(&collector).await;
            in_trace(&spans, REQUEST).is_some() && in_trace(&spans, attempt_name).is_some()
        },
    )
    .await;
    let spans = exported_spans(&collector).await;
    let named = |name: &str| in_trace(&spans, name).expect("found above");
    let request = named(REQUEST);
    let attempt = named(attempt_name);
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
    drop(server);
    attempt
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
