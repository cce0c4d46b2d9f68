//! The form in a real browser: headless Chromium driven through chromedriver (WebDriver).
//! Skips with a message when chromedriver is not installed, except under `CI=true`, where a
//! browser test that cannot run is a failure.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::helpers::spawn_app;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A chromedriver process, killed on drop.
struct Driver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromedriver_path() -> Option<String> {
    let path = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| CHROMEDRIVER.to_string());
    if std::path::Path::new(&path).exists() {
        Some(path)
    } else if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but {path} is missing: install chromium and chromium-driver");
    } else {
        eprintln!(
            "skipping browser test: {path} not found (apt-get install chromium chromium-driver)"
        );
        None
    }
}

async fn start_driver() -> Option<Driver> {
    let path = chromedriver_path()?;
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new(path)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver {
        child,
        port,
        _profile: tempfile::tempdir().expect("profile dir"),
    };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(driver);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not listen on {port}");
}

async fn browser(driver: &Driver, javascript: bool) -> Client {
    let mut options = json!({
        "args": [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-background-networking", "--disable-component-update", "--no-first-run",
            "--disable-sync", "--disable-quic",
            format!("--user-data-dir={}", driver._profile.path().display()),
        ],
    });
    if let Ok(binary) = std::env::var("CHROME_BINARY") {
        options["binary"] = json!(binary);
    }
    if !javascript {
        options["prefs"] = json!({"profile.managed_default_content_settings.javascript": 2});
    }
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("browserName".into(), json!("chrome"));
    capabilities.insert("goog:chromeOptions".into(), options);
    // The page console's messages (CSP violations included), for `console_errors`.
    capabilities.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a Chromium session")
}

async fn fill_and_submit(client: &Client, username: &str, email: &str, password: &str) {
    for (id, value) in [
        ("username", username),
        ("email", email),
        ("password", password),
    ] {
        let input = client.find(Locator::Id(id)).await.expect("input");
        input.clear().await.expect("clear");
        input.send_keys(value).await.expect("type");
    }
    client
        .find(Locator::Css("button[type=submit]"))
        .await
        .expect("submit button")
        .click()
        .await
        .expect("click");
}

async fn sign_up_flow(javascript: bool) {
    let Some(driver) = start_driver().await else {
        return;
    };
    let app = spawn_app().await;
    let client = browser(&driver, javascript).await;
    let suffix = if javascript { "js" } else { "nojs" };

    // A person opens the form, fills it in, submits, and is welcomed by name.
    client.goto(&app.url("/")).await.expect("open /");
    assert!(
        client
            .current_url()
            .await
            .expect("url")
            .path()
            .ends_with("/register")
    );
    fill_and_submit(
        &client,
        &format!("Ada_{suffix}"),
        &format!("ada_{suffix}@example.com"),
        "correct horse battery",
    )
    .await;
    let heading = client
        .wait()
        .for_element(Locator::Id("welcome"))
        .await
        .expect("welcome page");
    assert_eq!(
        heading.text().await.expect("text"),
        format!("Welcome, Ada_{suffix}!")
    );
    assert!(
        client
            .current_url()
            .await
            .expect("url")
            .path()
            .ends_with("/register/welcome")
    );

    // Someone else tries the same address: the message sits next to the email field and the
    // username they typed is still there.
    client
        .goto(&app.url("/register"))
        .await
        .expect("open the form");
    fill_and_submit(
        &client,
        &format!("ada2_{suffix}"),
        &format!("ADA_{suffix}@example.com"),
        "another good password",
    )
    .await;
    let error = client
        .wait()
        .for_element(Locator::Id("email-error"))
        .await
        .expect("email error");
    assert!(error.text().await.expect("text").contains("already exists"));
    let described_by = client
        .find(Locator::Id("email"))
        .await
        .expect("email input")
        .attr("aria-describedby")
        .await
        .expect("attr");
    assert_eq!(
        described_by.as_deref(),
        Some("email-error"),
        "the error is tied to the field"
    );
    let kept = client
        .find(Locator::Id("username"))
        .await
        .expect("username")
        .prop("value")
        .await
        .expect("value");
    assert_eq!(kept.as_deref(), Some(format!("ada2_{suffix}").as_str()));
    let password = client
        .find(Locator::Id("password"))
        .await
        .expect("password")
        .prop("value")
        .await
        .expect("value");
    assert_eq!(password.as_deref(), Some(""), "the password is not kept");

    client.close().await.expect("close the session");
    assert_eq!(app.user_count().await, 1);
}

#[actix_web::test]
async fn a_person_registers_in_a_real_browser() {
    sign_up_flow(true).await;
}

#[actix_web::test]
async fn a_person_registers_in_a_real_browser_with_javascript_disabled() {
    sign_up_flow(false).await;
}

/// chromedriver's log endpoint: `POST /session/{id}/se/log {"type": "browser"}`, the page
/// console's messages since the last call (fantoccini has no method for it).
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({"type": "browser"}).to_string()),
        )
    }
}

/// The console messages of level WARNING or worse since the last call: script errors, failed
/// loads and Content-Security-Policy violations are all logged there.
async fn console_errors(client: &Client) -> Vec<String> {
    let log = client.issue_cmd(BrowserLog).await.expect("the browser log");
    log.as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|e| matches!(e["level"].as_str(), Some("SEVERE" | "WARNING")))
                .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Where `SCREENSHOTS_DIR` points (the README's pictures are taken this way), if set.
async fn screenshot(client: &Client, name: &str) {
    let Ok(dir) = std::env::var("SCREENSHOTS_DIR") else {
        return;
    };
    let png = client.screenshot().await.expect("a screenshot");
    std::fs::write(std::path::Path::new(&dir).join(name), png).expect("the screenshot is saved");
}

async fn path_of(client: &Client) -> String {
    client.current_url().await.expect("url").path().to_owned()
}

#[actix_web::test]
async fn an_operator_retries_a_dead_job_in_the_console_in_a_real_browser() {
    use entity::email_outbox::Status;
    use wiremock::matchers::{body_string_contains, method};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let Some(driver) = start_driver().await else {
        return;
    };
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_string_contains("refused@"))
        .respond_with(ResponseTemplate::new(400))
        .with_priority(2)
        .mount(&provider)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(204))
        .with_priority(3)
        .mount(&provider)
        .await;
    let app = crate::console::console_app(Some(&provider)).await;
    app.register_all(0..12).await;
    let refused = json!({
        "username": "refused",
        "email": "refused@example.com",
        "password": "correct horse battery",
    });
    assert_eq!(app.post_registration(&refused).await.status(), 201);
    crate::helpers::wait_until("one job is dead", Duration::from_secs(30), || async {
        let rows = app.outbox_rows().await;
        rows.iter()
            .filter(|r| r.status == Status::Delivered)
            .count()
            == 12
            && rows.iter().filter(|r| r.status == Status::Dead).count() == 1
    })
    .await;
    let dead = app.outbox_with(Status::Dead).await[0].id;

    let client = browser(&driver, false).await;
    client
        .set_window_size(1280, 900)
        .await
        .expect("window size");

    // Signed out, the console sends you to the sign-in.
    client.goto(&app.url("/admin")).await.expect("open /admin");
    assert_eq!(path_of(&client).await, "/admin/login");
    client
        .find(Locator::Id("token"))
        .await
        .expect("token field")
        .send_keys(crate::console::TOKEN)
        .await
        .expect("type");
    client
        .find(Locator::Id("sign-in"))
        .await
        .expect("sign-in button")
        .click()
        .await
        .expect("click");
    let dead_tile = client
        .wait()
        .for_element(Locator::Css("#dead .value"))
        .await
        .expect("the overview");
    assert_eq!(path_of(&client).await, "/admin");
    assert_eq!(dead_tile.text().await.expect("text"), "1");
    assert!(client.find(Locator::Id("chart")).await.is_ok(), "the chart");
    screenshot(&client, "console-overview.png").await;

    // The dead job, with the provider's answer.
    client
        .find(Locator::LinkText("Dead"))
        .await
        .expect("nav link")
        .click()
        .await
        .expect("click");
    let row = client
        .wait()
        .for_element(Locator::Id(&format!("job-{dead}")))
        .await
        .expect("the dead row");
    let text = row.text().await.expect("text");
    assert!(text.contains("refused@example.com"), "{text}");
    assert!(text.contains("provider refused the message: 400"), "{text}");
    screenshot(&client, "console-dead.png").await;

    // The provider recovers; Retry.
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(204))
        .with_priority(1)
        .mount(&provider)
        .await;
    client
        .find(Locator::Id(&format!("retry-{dead}")))
        .await
        .expect("Retry")
        .click()
        .await
        .expect("click");
    let notice = client
        .wait()
        .for_element(Locator::Id("notice"))
        .await
        .expect("the notice");
    assert!(notice.text().await.expect("text").contains("due again"));
    app.wait_all_delivered(13).await;
    client
        .goto(&app.url("/admin/search?q=refused@example.com"))
        .await
        .expect("search");
    let row = client
        .wait()
        .for_element(Locator::Id(&format!("job-{dead}")))
        .await
        .expect("the row");
    assert!(row.text().await.expect("text").contains("delivered"));

    // Every console page, without a console error (a CSP violation is one).
    assert_eq!(
        console_errors(&client).await,
        Vec::<String>::new(),
        "so far"
    );
    let user_id = app.outbox_with(Status::Delivered).await[0].user_id;
    let pages = [
        "/admin".to_owned(),
        "/admin/jobs?status=dead".to_owned(),
        "/admin/jobs?status=pending".to_owned(),
        "/admin/search".to_owned(),
        format!("/admin/search?q={user_id}"),
        format!("/admin/users/{user_id}/erase"),
    ];
    for page in &pages {
        client.goto(&app.url(page)).await.expect("open");
        assert_eq!(
            &path_of(&client).await,
            page.split('?').next().unwrap_or(page)
        );
        assert_eq!(
            console_errors(&client).await,
            Vec::<String>::new(),
            "{page}"
        );
    }

    // Sign out: every page leads to the sign-in again.
    client
        .find(Locator::Id("sign-out"))
        .await
        .expect("sign-out")
        .click()
        .await
        .expect("click");
    client
        .wait()
        .for_element(Locator::Id("sign-in"))
        .await
        .expect("the sign-in page");
    for page in &pages {
        client.goto(&app.url(page)).await.expect("open");
        assert_eq!(path_of(&client).await, "/admin/login", "{page}");
    }
    assert_eq!(
        console_errors(&client).await,
        Vec::<String>::new(),
        "sign-in"
    );
    client.close().await.expect("close the session");
}
