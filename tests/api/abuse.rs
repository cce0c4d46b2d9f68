//! Abuse and bad input: rate limits, huge and slow bodies (SPEC §2.1, §2.2).

use std::io::{Read, Write};
use std::time::Duration;

use crate::helpers::{TestApp, hidden_value, problem, registration, spawn_app_with};

/// Rate limit 60/min with a burst of 3; the test client is a trusted proxy, so that
/// `X-Forwarded-For` can stand for several client addresses.
async fn limited_app() -> TestApp {
    spawn_app_with(|s| {
        s.rate_limit.per_minute = 60;
        s.rate_limit.burst = 3;
        s.server.trusted_proxies = vec!["127.0.0.1".parse().expect("ip")];
    })
    .await
}

async fn register_from(app: &TestApp, client: &str, n: usize) -> reqwest::Response {
    app.client
        .post(app.url("/api/v1/registrations"))
        .header("x-forwarded-for", client)
        .json(&registration(n))
        .send()
        .await
        .expect("sent")
}

#[actix_web::test]
async fn a_flood_from_one_address_gets_429_after_the_burst_while_another_still_registers() {
    let app = limited_app().await;

    for n in 0..3 {
        assert_eq!(
            register_from(&app, "203.0.113.1", n)
                .await
                .status()
                .as_u16(),
            201,
            "within the burst"
        );
    }
    let flooded = register_from(&app, "203.0.113.1", 3).await;
    let other = register_from(&app, "203.0.113.2", 4).await;

    let retry_after: u64 = flooded.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    problem(flooded, 429, "rate_limited").await;
    assert_eq!(
        other.status().as_u16(),
        201,
        "another address is unaffected"
    );
    assert_eq!(app.user_count().await, 4);
}

#[actix_web::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let app = spawn_app_with(|s| {
        s.rate_limit.per_minute = 60;
        s.rate_limit.burst = 2;
    })
    .await;

    let statuses = futures::future::join_all((0..4).map(|n| {
        // A different claimed client each time: without trust, all are 127.0.0.1.
        register_from(
            &app,
            match n {
                0 => "198.51.100.1",
                1 => "198.51.100.2",
                2 => "198.51.100.3",
                _ => "198.51.100.4",
            },
            n,
        )
    }))
    .await
    .iter()
    .map(|r| r.status().as_u16())
    .collect::<Vec<_>>();

    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        2,
        "{statuses:?}"
    );
}

#[actix_web::test]
async fn the_form_answers_a_flood_with_429_and_the_page_again() {
    let app = limited_app().await;
    let token = app.csrf_token().await;
    let mut last = None;
    for n in 0..4 {
        let response = app
            .client
            .post(app.url("/register"))
            .header("x-forwarded-for", "203.0.113.9")
            .form(&[
                ("username", format!("former{n}").as_str()),
                ("email", format!("former{n}@example.com").as_str()),
                ("password", "correct horse battery"),
                ("csrf_token", token.as_str()),
            ])
            .send()
            .await
            .expect("sent");
        last = Some(response);
    }
    let response = last.expect("responses");

    assert_eq!(response.status().as_u16(), 429);
    assert!(response.headers().contains_key("retry-after"));
    let page = response.text().await.expect("html");
    assert!(page.contains("Too many sign-ups"), "a message");
    assert!(
        hidden_value(&page, "csrf_token").is_some(),
        "the form again"
    );
}

#[actix_web::test]
async fn the_rate_limit_does_not_apply_to_reading_the_form_or_health() {
    let app = limited_app().await;
    for _ in 0..10 {
        assert_eq!(app.get("/register").await.status().as_u16(), 200);
        assert_eq!(app.get("/health/live").await.status().as_u16(), 200);
    }
}

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
