//! The operator console over HTTP (SPEC §7): sign-in, sessions, CSRF, the pages and their
//! actions. The same flows in a real browser are in `browser.rs`.

use std::time::Duration;

use entity::email_outbox::Status;
use reqwest::redirect::Policy;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{TestApp, hidden_value, spawn_app, spawn_app_with, use_provider, wait_until};

pub const TOKEN: &str = "console-admin-token-0123456789abcdef";

/// Every console page a signed-out browser may ask for.
const PAGES: [&str; 6] = [
    "/admin",
    "/admin/jobs?status=dead",
    "/admin/jobs?status=pending",
    "/admin/search",
    "/admin/search?q=a@example.com",
    "/admin/users/00000000-0000-0000-0000-000000000000/erase",
];

/// Every console action, posted without a session.
const ACTIONS: [&str; 5] = [
    "/admin/logout",
    "/admin/jobs/00000000-0000-0000-0000-000000000000/retry",
    "/admin/retry-dead",
    "/admin/users/00000000-0000-0000-0000-000000000000/erase",
    "/admin/login",
];

pub async fn console_app(provider: Option<&MockServer>) -> TestApp {
    let uri = provider.map(|p| p.uri());
    spawn_app_with(move |s| {
        if let Some(uri) = uri {
            use_provider(s, &uri);
        }
        s.admin.token = Some(TOKEN.into());
    })
    .await
}

/// A browser of the console: keeps cookies, does not follow redirects.
pub(crate) struct Browser<'a> {
    app: &'a TestApp,
    client: reqwest::Client,
}

impl<'a> Browser<'a> {
    fn new(app: &'a TestApp) -> Self {
        let client = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(Policy::none())
            .build()
            .expect("client");
        Self { app, client }
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.app.url(path))
            .send()
            .await
            .expect("sent")
    }

    pub(crate) async fn text(&self, path: &str) -> String {
        let response = self.get(path).await;
        assert_eq!(response.status(), 200, "GET {path}");
        response.text().await.expect("body")
    }

    async fn post(&self, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
        self.client
            .post(self.app.url(path))
            .form(fields)
            .send()
            .await
            .expect("sent")
    }

    /// Signs in with `token`; the response of the sign-in POST.
    async fn sign_in_with(&self, token: &str) -> reqwest::Response {
        let page = self.text("/admin/login").await;
        let csrf = hidden_value(&page, "csrf_token").expect("the sign-in form's token");
        self.post("/admin/login", &[("token", token), ("csrf_token", &csrf)])
            .await
    }

    pub(crate) async fn signed_in(app: &'a TestApp) -> Self {
        let browser = Self::new(app);
        let response = browser.sign_in_with(TOKEN).await;
        assert_eq!(response.status(), 303);
        assert_eq!(location(&response), "/admin");
        browser
    }

    /// A CSRF token from a page of the signed-in console.
    async fn csrf(&self) -> String {
        hidden_value(&self.text("/admin").await, "csrf_token").expect("csrf token")
    }
}

fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

async fn dead_app(provider: &MockServer, n: usize) -> TestApp {
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400))
        .mount(provider)
        .await;
    let app = console_app(Some(provider)).await;
    app.register_all(0..n).await;
    wait_until("the jobs are dead", Duration::from_secs(30), || async {
        app.outbox_with(Status::Dead).await.len() == n
    })
    .await;
    app
}

async fn provider_recovers(provider: &MockServer) {
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(204))
        .with_priority(1)
        .mount(provider)
        .await;
}

#[actix_web::test]
async fn without_an_admin_token_the_console_does_not_exist() {
    let app = spawn_app().await;
    let browser = Browser::new(&app);
    for path in PAGES.iter().chain(["/admin/login"].iter()) {
        assert_eq!(browser.get(path).await.status(), 404, "GET {path}");
    }
    for path in ACTIONS {
        assert_eq!(browser.post(path, &[]).await.status(), 404, "POST {path}");
    }
}

#[actix_web::test]
async fn signed_out_every_console_page_and_action_leads_to_the_sign_in() {
    let app = console_app(None).await;
    let browser = Browser::new(&app);
    for path in PAGES {
        let response = browser.get(path).await;
        assert_eq!(response.status(), 303, "GET {path}");
        assert_eq!(location(&response), "/admin/login", "GET {path}");
    }
    for path in ACTIONS.iter().filter(|p| **p != "/admin/login") {
        let response = browser.post(path, &[("csrf_token", "x")]).await;
        assert_eq!(response.status(), 303, "POST {path}");
        assert_eq!(location(&response), "/admin/login");
    }
    // A malformed action is refused as such first, signed in or not.
    for path in ACTIONS {
        let response = browser
            .client
            .post(app.url(path))
            .body("{}")
            .header("content-type", "application/json")
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 415, "POST {path}");
    }
    // The bearer token of the API is not a console session.
    let response = app
        .client
        .get(app.url("/admin"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("sent");
    assert_eq!(location(&response), "/admin/login");
}

#[actix_web::test]
async fn signing_in_sets_a_strict_http_only_twelve_hour_session_and_signing_out_ends_it() {
    let app = console_app(None).await;
    let browser = Browser::new(&app);
    let response = browser.sign_in_with(TOKEN).await;
    assert_eq!(response.status(), 303);
    let cookie = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("signup_console="))
        .expect("a session cookie")
        .to_owned();
    for attribute in [
        "HttpOnly",
        "SameSite=Strict",
        "Max-Age=43200",
        "Path=/admin",
    ] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    assert!(
        !cookie.contains(TOKEN),
        "the cookie does not carry the token"
    );

    let overview = browser.get("/admin").await;
    assert_eq!(overview.status(), 200);
    let csp = overview
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    let page = overview.text().await.expect("body");
    assert!(
        page.contains("Email sync") && page.contains("<svg"),
        "the overview"
    );
    // Signed in, the sign-in page sends you on.
    assert_eq!(location(&browser.get("/admin/login").await), "/admin");

    let csrf = hidden_value(&page, "csrf_token").expect("sign-out form token");
    let out = browser
        .post("/admin/logout", &[("csrf_token", &csrf)])
        .await;
    assert_eq!(out.status(), 303);
    assert_eq!(location(&out), "/admin/login");
    assert_eq!(location(&browser.get("/admin").await), "/admin/login");
}

#[actix_web::test]
async fn a_wrong_token_shows_the_page_again_and_repeated_tries_are_rate_limited() {
    let app = console_app(None).await;
    let browser = Browser::new(&app);
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let response = browser.sign_in_with("not-the-token").await;
        statuses.push(response.status().as_u16());
        let page = response.text().await.expect("body");
        assert!(page.contains("That is not the admin token."), "{page:.400}");
        assert!(page.contains("name=\"token\""), "the sign-in form again");
    }
    assert_eq!(statuses, [401; 5]);
    assert_eq!(location(&browser.get("/admin").await), "/admin/login");

    // The sixth try within the minute, even with the right token, waits.
    let limited = browser.sign_in_with(TOKEN).await;
    assert_eq!(limited.status(), 429);
    let retry_after: u64 = limited
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=12).contains(&retry_after), "{retry_after}");
    assert!(
        limited
            .text()
            .await
            .expect("body")
            .contains("Too many sign-in attempts")
    );
    assert_eq!(location(&browser.get("/admin").await), "/admin/login");
}

#[actix_web::test]
async fn a_forged_or_stale_session_cookie_or_a_missing_csrf_token_is_refused() {
    let app = console_app(None).await;
    // A cookie made up by the client, or one of the right shape with another tag.
    for forged in [
        "x".to_owned(),
        format!("{}.9999999999.AAAA", "a".repeat(43)),
    ] {
        let response = app
            .client
            .get(app.url("/admin"))
            .header("cookie", format!("signup_console={forged}"))
            .send()
            .await
            .expect("sent");
        assert_eq!(location(&response), "/admin/login", "{forged}");
    }
    // No sign-in without the sign-in form's own token.
    let browser = Browser::new(&app);
    let response = browser
        .post("/admin/login", &[("token", TOKEN), ("csrf_token", "")])
        .await;
    assert_eq!(response.status(), 403);
    assert_eq!(location(&browser.get("/admin").await), "/admin/login");

    // Signed in: an action without the session's token changes nothing.
    let browser = Browser::signed_in(&app).await;
    app.register_all(0..1).await;
    let user_id = app.outbox_rows().await[0].user_id;
    let erase = format!("/admin/users/{user_id}/erase");
    for token in ["", "wrong", &Browser::signed_in(&app).await.csrf().await] {
        let response = browser.post(&erase, &[("csrf_token", token)]).await;
        assert_eq!(response.status(), 403, "token {token:?}");
    }
    assert_eq!(app.user_count().await, 1, "nobody was erased");
}

#[actix_web::test]
async fn dead_jobs_are_listed_with_their_error_and_retried_one_at_a_time_or_all_at_once() {
    let provider = MockServer::start().await;
    let app = dead_app(&provider, 3).await;
    let browser = Browser::signed_in(&app).await;

    let overview = browser.text("/admin").await;
    assert!(
        overview.contains(r#"<span class="value">3</span>"#),
        "3 dead on the overview"
    );
    assert!(
        overview.contains("failed: 3"),
        "the chart counts the failures"
    );

    let page = browser.text("/admin/jobs?status=dead").await;
    let rows = app.outbox_rows().await;
    for row in &rows {
        assert!(
            page.contains(&format!("id=\"job-{}\"", row.id)),
            "row {}",
            row.id
        );
    }
    assert!(
        page.contains("provider refused the message: 400 Bad Request"),
        "the provider's answer: {page}"
    );
    assert!(page.contains("user0@example.com"));
    assert!(page.contains("Retry all dead"));

    provider_recovers(&provider).await;
    let csrf = hidden_value(&page, "csrf_token").expect("token");
    let first = rows[0].id;
    let response = browser
        .post(
            &format!("/admin/jobs/{first}/retry"),
            &[("csrf_token", &csrf), ("back", "dead")],
        )
        .await;
    assert_eq!(response.status(), 303);
    assert_eq!(location(&response), "/admin/jobs?status=dead&done=retried");
    wait_until(
        "the retried job is delivered",
        Duration::from_secs(30),
        || async {
            app.outbox_rows()
                .await
                .iter()
                .any(|r| r.id == first && r.status == Status::Delivered)
        },
    )
    .await;
    let after = browser.text(&location(&response)).await;
    assert!(after.contains("The job is due again"), "the notice");
    assert!(!after.contains(&format!("job-{first}")), "no longer dead");

    let response = browser
        .post("/admin/retry-dead", &[("csrf_token", &csrf)])
        .await;
    assert_eq!(
        location(&response),
        "/admin/jobs?status=dead&done=requeued-2"
    );
    app.wait_all_delivered(3).await;
    let empty = browser.text("/admin/jobs?status=dead").await;
    assert!(empty.contains("No dead jobs."));
    // A delivered job cannot be retried.
    let again = browser
        .post(
            &format!("/admin/jobs/{first}/retry"),
            &[("csrf_token", &csrf), ("back", "dead")],
        )
        .await;
    assert_eq!(again.status(), 409);
}

#[actix_web::test]
async fn job_pages_are_newest_first_and_page_without_skipping_or_repeating() {
    let app = console_app(None).await;
    // Nothing listens at the test settings' provider: the jobs stay pending.
    app.register_directly(0..120, 120).await;
    let browser = Browser::signed_in(&app).await;
    let mut seen = Vec::new();
    let mut path = "/admin/jobs?status=pending".to_owned();
    loop {
        let page = browser.text(&path).await;
        seen.extend(
            page.match_indices("id=\"job-")
                .map(|(at, _)| page[at + 8..at + 44].to_owned()),
        );
        let Some(older) = page.find("\" id=\"older\"") else {
            break;
        };
        let at = page[..older].rfind("href=\"").expect("the link's href") + 6;
        path = page[at..older].replace("&#38;", "&").replace("&amp;", "&");
        assert!(
            path.starts_with("/admin/jobs?status=pending&before="),
            "{path}"
        );
    }
    assert_eq!(seen.len(), 120, "every job once");
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 120, "none twice");
    let rows = app.outbox_rows().await;
    let newest = rows
        .iter()
        .max_by_key(|r| (r.created_at, r.id))
        .expect("rows");
    assert_eq!(seen[0], newest.id.to_string(), "newest first");
}

#[actix_web::test]
async fn search_finds_a_user_by_email_or_id_and_erases_them_after_a_confirmation() {
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&provider)
        .await;
    let app = console_app(Some(&provider)).await;
    app.register_all(0..2).await;
    app.wait_all_delivered(2).await;
    let browser = Browser::signed_in(&app).await;
    let user_id = app
        .outbox_rows()
        .await
        .into_iter()
        .find(|r| r.payload.contains("user1@"))
        .expect("user1's row")
        .user_id;

    for query in ["USER1@example.com", &user_id.to_string()] {
        let page = browser.text(&format!("/admin/search?q={query}")).await;
        assert!(page.contains("id=\"user\""), "found by {query}");
        assert!(page.contains("user1@example.com") && page.contains(&user_id.to_string()));
        assert!(page.contains("user.registered") && page.contains("delivered"));
        assert!(!page.contains("user0@example.com"), "only that user");
    }
    let none = browser.text("/admin/search?q=nobody@example.com").await;
    assert!(none.contains("No user registered with this address or id."));

    // The Erase link leads to a confirmation; only its form erases.
    let confirm = browser.text(&format!("/admin/users/{user_id}/erase")).await;
    assert!(confirm.contains("cannot be undone"));
    assert_eq!(app.user_count().await, 2, "a GET erases nothing");
    let csrf = hidden_value(&confirm, "csrf_token").expect("token");
    let response = browser
        .post(
            &format!("/admin/users/{user_id}/erase"),
            &[("csrf_token", &csrf)],
        )
        .await;
    assert_eq!(response.status(), 303);
    assert_eq!(
        location(&response),
        format!("/admin/search?q={user_id}&done=erased")
    );
    assert_eq!(app.user_count().await, 1);
    let after = browser.text(&location(&response)).await;
    assert!(after.contains("Erased."), "the notice");
    assert!(after.contains("user.deleted"), "the deletion job is listed");
    assert!(!after.contains("id=\"user\""), "no user any more");
    // Once the provider has removed them, nothing of theirs is left to show.
    app.wait_all_delivered(3).await;
    let later = browser.text(&format!("/admin/search?q={user_id}")).await;
    assert!(later.contains("(erased)") && later.contains("user.deleted"));
    assert!(!later.contains("user1@example.com"), "{later}");
    assert_eq!(
        browser
            .get(&format!("/admin/users/{user_id}/erase"))
            .await
            .status(),
        404,
        "erased already"
    );
}

#[actix_web::test]
async fn changing_the_admin_token_signs_every_console_session_out() {
    let app = console_app(None).await;
    let response = Browser::new(&app).sign_in_with(TOKEN).await;
    let session = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix("signup_console="))
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let open = |app: &TestApp| {
        app.client
            .get(app.url("/admin"))
            .header("cookie", format!("signup_console={session}"))
            .send()
    };
    assert_eq!(open(&app).await.expect("sent").status(), 200);

    // The same database (so the same server key), another token: the cookie no longer opens.
    let url = app.database_url.clone();
    let other = spawn_app_with(move |s| {
        s.database.url = url.into();
        s.admin.token = Some("another-admin-token-0123456789abcdef".into());
    })
    .await;
    assert_eq!(location(&open(&other).await.expect("sent")), "/admin/login");
}

/// Sign-out ends the session on the server: a copy of the cookie taken before it no longer
/// opens the console, on this instance or on another one sharing the database (SPEC §7). The
/// session used to be a stateless signed cookie, good for 12 h whatever sign-out did.
#[actix_web::test]
async fn a_cookie_copied_before_sign_out_opens_nothing_after_it_on_any_instance() {
    let app = console_app(None).await;
    let database = app.database_url.clone();
    let other = spawn_app_with(move |s| {
        s.database.url = database.clone().into();
        s.admin.token = Some(TOKEN.into());
    })
    .await;
    let browser = Browser::new(&app);
    let response = browser.sign_in_with(TOKEN).await;
    let copied = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("signup_console="))
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let bare = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("client");
    let with_copy = |instance: &TestApp| {
        bare.get(instance.url("/admin"))
            .header("cookie", copied.clone())
            .send()
    };
    for instance in [&app, &other] {
        let before = with_copy(instance).await.expect("sent");
        assert_eq!(before.status(), 200, "the copy works before sign-out");
    }

    let csrf = browser.csrf().await;
    let out = browser
        .post("/admin/logout", &[("csrf_token", &csrf)])
        .await;
    assert_eq!(out.status(), 303);

    for (name, instance) in [("this instance", &app), ("another instance", &other)] {
        let after = with_copy(instance).await.expect("sent");
        assert_eq!(
            location(&after),
            "/admin/login",
            "{name}: the copied cookie after sign-out"
        );
    }
}
