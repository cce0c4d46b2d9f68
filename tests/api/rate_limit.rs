//! The rate limit (SPEC §2.2): 429 with `Retry-After` for one client address past its burst,
//! the form's page again, and who the client is behind trusted and untrusted proxies.

use crate::helpers::{TestApp, hidden_value, problem, registration, spawn_app_with};

/// Rate limit 60/min with a burst of 3; the test client is a trusted proxy, so that
/// `X-Forwarded-For` can stand for several client addresses.
pub(crate) async fn limited_app() -> TestApp {
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

/// Rate limit with a burst of 1; every 127.x peer is a trusted proxy (a CIDR range).
async fn behind_a_proxy() -> TestApp {
    spawn_app_with(|s| {
        s.rate_limit.per_minute = 60;
        s.rate_limit.burst = 1;
        s.server.trusted_proxies = vec!["127.0.0.0/8".parse().expect("a range")];
    })
    .await
}

#[actix_web::test]
async fn a_proxy_that_appends_its_own_forwarded_for_line_is_read_to_the_last_line() {
    let app = behind_a_proxy().await;
    // Each client wrote "1.1.1.1" itself; the proxy (HAProxy's option forwardfor) appended a
    // second line with the address it saw.
    let from = |client: &'static str, n: usize| {
        app.client
            .post(app.url("/api/v1/registrations"))
            .header("x-forwarded-for", "1.1.1.1")
            .header("x-forwarded-for", client)
            .json(&registration(n))
            .send()
    };

    let first = from("203.0.113.1", 1).await.expect("sent");
    let again = from("203.0.113.1", 2).await.expect("sent");
    let other = from("203.0.113.2", 3).await.expect("sent");

    assert_eq!(first.status().as_u16(), 201);
    assert_eq!(
        again.status().as_u16(),
        429,
        "the same client, over its burst"
    );
    assert_eq!(
        other.status().as_u16(),
        201,
        "another client has an allowance of its own, whatever it wrote in its own line"
    );
}

/// The providers' event routes are rate-limited like the form (SPEC §8): a flood from one
/// address gets 429 before any body is read.
#[actix_web::test]
async fn the_provider_event_routes_are_rate_limited_like_the_form() {
    let app = limited_app().await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let response = app
            .client
            .post(app.url("/hooks/mailgun"))
            .header("x-forwarded-for", "203.0.113.9")
            .json(&serde_json::json!({}))
            .send()
            .await
            .expect("sent");
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [404, 404, 404, 429], "the burst is 3");
}
