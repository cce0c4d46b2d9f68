//! Abuse and bad input: huge and slow bodies, malformed JSON, oversized headers (SPEC §2.1).

use std::io::{Read, Write};
use std::time::Duration;

use crate::helpers::{problem, registration, spawn_app_with};
use crate::rate_limit::limited_app;

#[actix_web::test]
async fn a_10_mb_body_is_refused_with_413_without_reading_it_all() {
    let app = limited_app().await;
    let big = format!("{{\"username\": \"{}\"}}", "x".repeat(10 * 1024 * 1024));

    let response = app.post_raw("application/json", big).await;

    problem(response, 413, "payload_too_large").await;
}

#[actix_web::test]
async fn a_slow_body_is_cut_off_while_other_clients_register() {
    let app = spawn_app_with(|s| s.server.request_timeout = Duration::from_secs(2)).await;
    let address = app.address.trim_start_matches("http://").to_string();

    // Slowloris: headers promise a body that arrives a byte at a time, then not at all.
    let slow = std::thread::spawn(move || {
        let mut stream = std::net::TcpStream::connect(&address).expect("connect");
        let body = registration(1).to_string();
        write!(
            stream,
            "POST /api/v1/registrations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
            body.len(),
            &body[..5]
        )
        .expect("write");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let started = std::time::Instant::now();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        (started.elapsed(), answer)
    });
    // Meanwhile others are served.
    app.register_all(2..5).await;

    let (waited, answer) =
        actix_web::rt::task::spawn_blocking(move || slow.join().expect("thread"))
            .await
            .expect("joined");
    assert!(waited < Duration::from_secs(15), "cut off after {waited:?}");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    assert_eq!(app.user_count().await, 3);
}

#[actix_web::test]
async fn json_with_duplicate_keys_or_invalid_utf8_is_400() {
    let app = limited_app().await;
    let duplicate = r#"{"username": "abcd", "username": "efgh", "email": "a@b.co", "password": "correct horse"}"#;
    problem(
        app.post_raw("application/json", duplicate).await,
        400,
        "bad_request",
    )
    .await;
    let mut invalid = br#"{"username": "ab"#.to_vec();
    invalid.extend_from_slice(&[0xff, 0xfe]);
    invalid.extend_from_slice(br#"cd", "email": "a@b.co", "password": "correct horse"}"#);
    problem(
        app.post_raw("application/json", invalid).await,
        400,
        "bad_request",
    )
    .await;
    assert_eq!(app.user_count().await, 0);
}

#[actix_web::test]
async fn oversized_headers_and_urls_are_refused_and_the_server_keeps_serving() {
    let app = limited_app().await;
    // actix-http refuses request heads over 128 KiB (431): per-connection memory is bounded.
    let huge = "x".repeat(200 * 1024);

    let header = app
        .client
        .get(app.url("/health/live"))
        .header("x-junk", &huge)
        .send()
        .await;
    let url = app
        .client
        .get(app.url(&format!("/health/live?{huge}")))
        .send()
        .await;

    for (what, response) in [("header", header), ("url", url)] {
        // Either a 4xx (431/414) or the connection closed: never a 2xx or a 5xx.
        if let Ok(response) = response {
            let status = response.status().as_u16();
            assert!((400..500).contains(&status), "{what}: {status}");
        }
    }
    assert_eq!(app.get("/health/live").await.status().as_u16(), 200);
}
