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
