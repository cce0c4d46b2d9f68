//! The EmailSyncActor against a provider faked by wiremock on loopback (SPEC §3).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use entity::email_outbox::Status;
use serde_json::Value;
use signup::startup::Hooks;
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{
    SECRET, TestApp, spawn_app_with, spawn_app_with_hooks, use_provider, wait_until,
};

use crate::helpers::PATIENCE;

pub(crate) async fn app_with_provider(
    provider: &MockServer,
    adjust: impl FnOnce(&mut signup::configuration::Settings),
) -> TestApp {
    let uri = provider.uri();
    spawn_app_with(move |s| {
        use_provider(s, &uri);
        adjust(s);
    })
    .await
}

pub(crate) fn accepting() -> Mock {
    Mock::given(method("POST"))
        .and(path("/webhook"))
        .respond_with(ResponseTemplate::new(204))
}

pub(crate) fn answering(status: u16) -> Mock {
    Mock::given(method("POST"))
        .and(path("/webhook"))
        .respond_with(ResponseTemplate::new(status))
}

/// The `webhook-id`s the provider received after its first `skip` requests, with how often.
async fn ids_received(provider: &MockServer, skip: usize) -> HashMap<String, usize> {
    let mut ids = HashMap::new();
    let requests = provider.received_requests().await.unwrap_or_default();
    for request in requests.into_iter().skip(skip) {
        let id = request
            .headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok());
        *ids.entry(id.unwrap_or("").to_string()).or_insert(0) += 1;
    }
    ids
}

async fn requests_received(provider: &MockServer) -> usize {
    provider.received_requests().await.map_or(0, |r| r.len())
}

async fn readiness(app: &TestApp) -> Value {
    app.get("/health/ready")
        .await
        .json()
        .await
        .expect("readiness JSON")
}

#[actix_web::test]
async fn each_registered_user_is_delivered_once_signed_and_exactly_per_the_spec() {
    let provider = MockServer::start().await;
    accepting().mount(&provider).await;
    let app = app_with_provider(&provider, |_| {}).await;

    app.register_all(0..3).await;
    app.wait_all_delivered(3).await;

    let rows = app.outbox_rows().await;
    let verifier = standardwebhooks::Webhook::new(SECRET).expect("secret");
    // Only this app's rows: wiremock pools its servers, so a port may have served another
    // test's server a moment before, and a straggler of that test may still arrive.
    let own = |r: &wiremock::Request| {
        r.headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|id| rows.iter().any(|row| row.id.to_string() == id))
    };
    let requests: Vec<wiremock::Request> = provider
        .received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|r| own(r))
        .collect();
    assert_eq!(requests.len(), 3, "each row exactly once");
    for request in requests {
        // An implementation that is not signup's: the `standardwebhooks` crate.
        verifier
            .verify(&request.body, &request.headers)
            .expect("a valid Standard Webhooks signature");
        assert_eq!(request.headers["content-type"], "application/json");
        let id = request.headers["webhook-id"].to_str().expect("ascii");
        let row = rows
            .iter()
            .find(|r| r.id.to_string() == id)
            .expect("webhook-id is an outbox row id");
        let body: Value = serde_json::from_slice(&request.body).expect("JSON body");
        let keys: Vec<&str> = body
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["data", "timestamp", "type"]);
        assert_eq!(body["type"], "user.registered");
        assert!(
            chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().expect("ts")).is_ok()
        );
        let mut data_keys: Vec<&str> = body["data"]
            .as_object()
            .expect("data")
            .keys()
            .map(String::as_str)
            .collect();
        data_keys.sort();
        assert_eq!(data_keys, ["email", "registered_at", "user_id", "username"]);
        assert_eq!(body["data"]["user_id"], row.user_id.to_string());
        let n = body["data"]["username"]
            .as_str()
            .expect("username")
            .trim_start_matches("user")
            .to_string();
        assert_eq!(body["data"]["email"], format!("user{n}@example.com"));
        let timestamp: i64 = request.headers["webhook-timestamp"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("integer");
        assert!((timestamp - chrono::Utc::now().timestamp()).abs() < 60);
        assert!(row.delivered_at.is_some() && row.attempts == 1 && row.last_status == Some(204));
    }
}

#[actix_web::test]
async fn with_the_provider_down_registrations_succeed_and_every_user_is_delivered_once_it_is_back()
{
    let provider = MockServer::start().await;
    answering(503).mount(&provider).await;
    let app = app_with_provider(&provider, |_| {}).await;

    app.register_all(0..8).await;
    wait_until("attempts have failed", PATIENCE, || async {
        app.outbox_rows()
            .await
            .iter()
            .any(|r| r.attempts >= 1 && r.last_status == Some(503))
    })
    .await;
    assert_eq!(
        readiness(&app).await["status"],
        "ok",
        "the provider never fails readiness"
    );

    // The provider recovers: a mock that outranks the 503 one. Counting from after it is
    // mounted, every request was answered 204 (a reset would answer 404 for a moment).
    accepting().with_priority(1).mount(&provider).await;
    let before = requests_received(&provider).await;
    app.wait_all_delivered(8).await;

    // This app's rows only (a pooled mock port may get a straggler of another test).
    let own: Vec<String> = app
        .outbox_rows()
        .await
        .iter()
        .map(|r| r.id.to_string())
        .collect();
    let mut after = ids_received(&provider, before).await;
    after.retain(|id, _| own.contains(id));
    assert_eq!(
        after.len(),
        8,
        "every row delivered after recovery: {after:?}"
    );
    assert!(after.values().all(|n| *n == 1), "none twice: {after:?}");
}

#[actix_web::test]
async fn with_the_provider_refusing_connections_rows_wait_and_are_delivered_when_it_listens() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let address = listener.local_addr().expect("address");
    drop(listener);
    let app = spawn_app_with(|s| use_provider(s, &format!("http://{address}"))).await;

    app.register_all(0..3).await;
    wait_until("a connection failure is recorded", PATIENCE, || async {
        app.outbox_rows().await.iter().any(|r| {
            r.last_error
                .as_deref()
                .is_some_and(|e| e.contains("connection"))
        })
    })
    .await;

    let listener = std::net::TcpListener::bind(address).expect("the same port again");
    let provider = MockServer::builder().listener(listener).start().await;
    accepting().mount(&provider).await;
    app.wait_all_delivered(3).await;
}

#[actix_web::test]
async fn a_provider_slower_than_the_timeout_is_retried_without_touching_registrations() {
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(204).set_delay(Duration::from_secs(5)))
        .mount(&provider)
        .await;
    let app = app_with_provider(&provider, |s| {
        s.email_sync.timeout = Duration::from_millis(300)
    })
    .await;

    app.register_all(0..3).await;
    wait_until(
        "an attempt times out and is rescheduled",
        PATIENCE,
        || async {
            app.outbox_rows().await.iter().any(|r| {
                r.status == Status::Pending
                    && r.last_error
                        .as_deref()
                        .is_some_and(|e| e.contains("timed out"))
            })
        },
    )
    .await;
    app.register_all(99..100).await;
}

#[actix_web::test]
async fn the_circuit_opens_after_the_threshold_lets_only_probes_through_and_closes_on_success() {
    let provider = MockServer::start().await;
    answering(503).mount(&provider).await;
    let app = app_with_provider(&provider, |s| {
        // One at a time, so the count of requests is exact.
        s.email_sync.max_in_flight = Some(std::num::NonZeroUsize::MIN);
        s.email_sync.circuit_breaker.failure_threshold =
            std::num::NonZeroU32::new(3).expect("not zero");
        // Long enough that a slow, shared machine still sees it open before the probe: the
        // full suite on 2 cores once took 1.8 s to notice the opening.
        s.email_sync.circuit_breaker.open_for = Duration::from_secs(6);
        s.email_sync.circuit_breaker.max_open_for = Duration::from_secs(12);
    })
    .await;

    app.register_all(0..5).await;
    wait_until("the circuit opens", PATIENCE, || async {
        readiness(&app).await["email_sync"]["circuit"] == "open"
    })
    .await;
    assert_eq!(requests_received(&provider).await, 3, "threshold reached");
    // The third outcome is stored just after the circuit opens.
    let attempts_stored = || async {
        app.outbox_rows()
            .await
            .iter()
            .map(|r| r.attempts)
            .sum::<i32>()
    };
    wait_until("the three attempts are stored", PATIENCE, || async {
        attempts_stored().await == 3
    })
    .await;

    // While open, nothing reaches the provider and no attempt is spent, although rows are due
    // (the core's own tests walk the open circuit step by step).
    assert!(app.due_at(chrono::Utc::now()).await > 0);
    assert_eq!(requests_received(&provider).await, 3);
    assert_eq!(attempts_stored().await, 3);

    // After open_for, one probe; it fails, and the circuit opens again (for twice as long).
    wait_until("a probe is sent", PATIENCE, || async {
        requests_received(&provider).await == 4
    })
    .await;
    wait_until("the failed probe opens it again", PATIENCE, || async {
        readiness(&app).await["email_sync"]["circuit"] == "open"
    })
    .await;
    assert_eq!(requests_received(&provider).await, 4, "a single probe");

    // The provider recovers: the next probe succeeds, the circuit closes, the backlog drains.
    // A mock that outranks the 503 one (a reset would answer 404 to a retry in flight).
    accepting().with_priority(1).mount(&provider).await;
    app.wait_all_delivered(5).await;
    assert_eq!(readiness(&app).await["email_sync"]["circuit"], "closed");
}

#[actix_web::test]
async fn a_400_answer_makes_the_row_dead_at_once_and_it_is_not_retried() {
    let provider = MockServer::start().await;
    answering(400).mount(&provider).await;
    let app = app_with_provider(&provider, |_| {}).await;

    app.register_all(0..1).await;
    wait_until("the row is dead", PATIENCE, || async {
        app.outbox_with(Status::Dead).await.len() == 1
    })
    .await;
    // A day later it is still not due: a dead row waits for an operator.
    let due = app
        .due_at(chrono::Utc::now() + chrono::Duration::days(1))
        .await;

    assert_eq!(due, 0, "a dead row is never due");
    let row = &app.outbox_rows().await[0];
    assert_eq!((row.attempts, row.last_status), (1, Some(400)));
    assert!(row.last_error.is_some());
    wait_until("readiness counts the dead row", PATIENCE, || async {
        readiness(&app).await["email_sync"]["dead"] == 1
    })
    .await;
}

#[actix_web::test]
async fn a_401_or_404_answer_is_retried_and_names_the_setting_to_check() {
    for status in [401, 404] {
        let provider = MockServer::start().await;
        answering(status).mount(&provider).await;
        let app = app_with_provider(&provider, |_| {}).await;

        app.register_all(0..1).await;
        wait_until("the row is retried", PATIENCE, || async {
            app.outbox_rows()
                .await
                .first()
                .is_some_and(|r| r.attempts >= 2)
        })
        .await;

        let row = &app.outbox_rows().await[0];
        assert_eq!(row.status, Status::Pending, "{status} is not permanent");
        assert_eq!(row.last_status, Some(i32::from(status)));
        assert!(
            row.last_error
                .as_deref()
                .is_some_and(|e| e.contains("email_sync.url")),
            "{:?}",
            row.last_error
        );
    }
}

#[actix_web::test]
async fn a_429_retry_after_is_honoured() {
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "2"))
        .up_to_n_times(1)
        .mount(&provider)
        .await;
    accepting().mount(&provider).await;
    let app = app_with_provider(&provider, |s| {
        s.email_sync.retry.max_interval = Duration::from_secs(10)
    })
    .await;

    app.register_all(0..1).await;
    wait_until("the 429 is recorded", PATIENCE, || async {
        app.outbox_rows()
            .await
            .first()
            .is_some_and(|r| r.last_status == Some(429) || r.status == Status::Delivered)
    })
    .await;

    let row = app.outbox_rows().await.remove(0);
    assert_eq!(
        row.status,
        Status::Pending,
        "not retried before Retry-After (backoff alone is 100 ms)"
    );
    let wait = row.next_attempt_at - row.created_at;
    assert!(
        wait >= chrono::Duration::milliseconds(1900),
        "next attempt {wait:?} after registration"
    );
    app.wait_all_delivered(1).await;
}

#[actix_web::test]
async fn a_failing_row_does_not_delay_the_others() {
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_string_contains("poison"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&provider)
        .await;
    accepting().mount(&provider).await;
    let app = app_with_provider(&provider, |_| {}).await;
    let poison = serde_json::json!({"username": "poison", "email": "poison@example.com", "password": "correct horse battery"});
    assert_eq!(app.post_registration(&poison).await.status().as_u16(), 201);

    app.register_all(0..6).await;

    wait_until("the others are delivered", PATIENCE, || async {
        app.outbox_with(Status::Delivered).await.len() == 6
    })
    .await;
    let pending = app.outbox_with(Status::Pending).await;
    assert_eq!(pending.len(), 1);
    assert!(pending[0].payload.contains("poison") && pending[0].attempts >= 1);
}

#[actix_web::test]
async fn a_panic_in_delivery_code_is_contained_and_delivery_resumes() {
    let provider = MockServer::start().await;
    accepting().mount(&provider).await;
    let panics = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&panics);
    let hooks = Hooks {
        before_delivery: Some(Arc::new(move |_| {
            if counter.fetch_add(1, Ordering::SeqCst) < 2 {
                panic!("injected delivery panic");
            }
        })),
    };
    let uri = provider.uri();
    let app = spawn_app_with_hooks(move |s| use_provider(s, &uri), hooks).await;

    app.register_all(0..3).await;
    app.wait_all_delivered(3).await;

    assert!(
        panics.load(Ordering::SeqCst) >= 3,
        "the hook ran, and panicked twice"
    );
    let retried = app
        .outbox_rows()
        .await
        .iter()
        .filter(|r| r.attempts >= 2)
        .count();
    assert_eq!(
        retried, 2,
        "each panicked attempt counted as a failed attempt"
    );
    app.register_all(50..51).await;
    assert_eq!(readiness(&app).await["status"], "ok");
}

#[actix_web::test]
async fn with_the_mailbox_full_wake_ups_are_dropped_and_counted_and_the_poll_delivers() {
    let provider = MockServer::start().await;
    accepting().mount(&provider).await;
    let stalled = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&stalled);
    // The first delivery stalls the EmailSyncActor's thread, so its mailbox stops draining.
    let hooks = Hooks {
        before_delivery: Some(Arc::new(move |_| {
            if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                std::thread::sleep(Duration::from_millis(1500));
            }
        })),
    };
    let uri = provider.uri();
    let app = spawn_app_with_hooks(
        move |s| {
            use_provider(s, &uri);
            s.email_sync.mailbox_capacity = std::num::NonZeroUsize::MIN;
        },
        hooks,
    )
    .await;

    app.register_all(0..1).await;
    wait_until("the actor is stalled", PATIENCE, || async {
        stalled.load(Ordering::SeqCst) > 0
    })
    .await;
    app.register_all(1..10).await;

    assert!(
        app.metrics.wakeups_dropped.get() >= 1,
        "dropped wake-ups are counted"
    );
    app.wait_all_delivered(10).await;
}

#[actix_web::test]
async fn a_failed_attempt_is_due_again_only_at_the_retry_time_stored_on_its_row() {
    let provider = MockServer::start().await;
    // The first attempt fails; its retry is an hour away, and nothing polls before then.
    answering(503)
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&provider)
        .await;
    accepting().mount(&provider).await;
    let app = app_with_provider(&provider, |s| {
        s.email_sync.poll_interval = Duration::from_secs(3600);
        s.email_sync.retry.initial_interval = Duration::from_secs(3600);
        s.email_sync.retry.max_interval = Duration::from_secs(3600);
        s.email_sync.retry.randomization = 0.0;
    })
    .await;
    app.register_all(0..1).await;
    wait_until("the first attempt is recorded", PATIENCE, || async {
        app.outbox_rows().await[0].attempts == 1
    })
    .await;

    let now = app.due_at(chrono::Utc::now()).await;
    let later = app
        .due_at(chrono::Utc::now() + chrono::Duration::hours(2))
        .await;

    assert_eq!(now, 0, "the retry is not due yet");
    assert_eq!(later, 1, "due at its stored retry time");
    let row = &app.outbox_rows().await[0];
    assert_eq!((row.status, row.attempts), (Status::Pending, 1));
}

/// A delivery that finishes while a claim waits for SQLite's write lock has its outcome stored
/// after the claim; a shutdown then must still store it. It used to wait for a store that
/// never came: the drain hung until the process's own deadline and the row stayed claimed.
#[actix_web::test]
async fn a_drain_during_a_claim_stores_the_outcome_that_finished_meanwhile() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    use signup::actors::{Drain, WakeUp};

    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/webhook"))
        .respond_with(ResponseTemplate::new(204).set_delay(Duration::from_millis(1000)))
        .mount(&provider)
        .await;
    let app = app_with_provider(&provider, |_| {}).await;
    if app.is_postgres {
        println!("skipped: SQLite only (PostgreSQL lets a claim and a write run at once)");
        return;
    }
    assert_eq!(
        app.post_registration(&crate::helpers::registration(0))
            .await
            .status(),
        201
    );
    wait_until("the delivery started", PATIENCE, || async {
        requests_received(&provider).await == 1
    })
    .await;

    // Hold SQLite's write lock, so that the next claim waits in the busy handler.
    let lock = app.db.begin().await.expect("begin");
    lock.execute_unprepared("CREATE TABLE hold_the_write_lock (x INTEGER)")
        .await
        .expect("take the write lock");
    app.email_sync.do_send(WakeUp);
    // The delivery finishes meanwhile; its outcome waits for the claim.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let drain = app.email_sync.send(Drain {
        grace: Duration::from_secs(1),
    });
    let drained =
        actix_web::rt::spawn(
            async move { tokio::time::timeout(Duration::from_secs(10), drain).await },
        );
    tokio::time::sleep(Duration::from_millis(200)).await;
    lock.rollback().await.expect("rollback");

    let drained = drained.await.expect("the drain task");
    assert!(drained.is_ok(), "the drain finished");
    let rows = app.outbox_rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, Status::Delivered, "the outcome was stored");
    assert!(rows[0].locked_until.is_none(), "no row left claimed");
}

#[actix_web::test]
async fn a_secret_in_the_provider_url_never_reaches_the_stored_error() {
    let app = spawn_app_with(|s| {
        // Nothing listens on port 9: every attempt fails with "connection refused".
        use_provider(s, "http://user:pw-in-userinfo@127.0.0.1:9");
        s.email_sync.url =
            crate::helpers::url("http://user:pw-in-userinfo@127.0.0.1:9/hook?api_key=key-in-query");
    })
    .await;
    app.register_all(1..2).await;

    wait_until("an attempt failed", Duration::from_secs(20), || async {
        app.outbox_rows()
            .await
            .iter()
            .any(|r| r.last_error.is_some())
    })
    .await;

    let rows = app.outbox_rows().await;
    let error = rows[0].last_error.clone().unwrap_or_default();
    for secret in ["key-in-query", "api_key", "pw-in-userinfo"] {
        assert!(!error.contains(secret), "{secret} in {error:?}");
    }
    assert!(!error.is_empty());
}
