use std::sync::Once;

use sea_orm::{ConnectionTrait, Database, DatabaseConnection, EntityTrait, PaginatorTrait};
use secrecy::SecretString;
use serde_json::{Value, json};
use signup::configuration::{PasswordSettings, Settings};
use signup::startup::{Application, Hooks};
use tempfile::TempDir;

/// Which database the suite runs on: SQLite (default) or PostgreSQL (`TEST_DATABASE=postgres`,
/// with `TEST_POSTGRES_URL` naming a role that may create databases).
pub enum TestDatabase {
    Sqlite,
    Postgres(String),
}

impl TestDatabase {
    pub fn from_env() -> Self {
        match std::env::var("TEST_DATABASE").as_deref() {
            Ok("postgres") => match std::env::var("TEST_POSTGRES_URL") {
                Ok(url) => TestDatabase::Postgres(url),
                Err(_) => panic!("TEST_DATABASE=postgres needs TEST_POSTGRES_URL"),
            },
            Ok("sqlite") | Err(_) => TestDatabase::Sqlite,
            Ok(other) => panic!("TEST_DATABASE must be sqlite or postgres, not {other}"),
        }
    }
}

static TRACING: Once = Once::new();

/// Logs only when `TEST_LOG` is set.
fn init_tracing() {
    TRACING.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            // The writer lives as long as the test process.
            if let Ok(telemetry) = signup::telemetry::init(&Default::default(), &Default::default())
            {
                std::mem::forget(telemetry);
            }
        }
    });
}

pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// The database's URL (for the command line).
    pub database_url: String,
    /// A connection of the test's own, for arranging and asserting.
    pub db: DatabaseConnection,
    /// The server's own pool: closing it makes the database "unavailable" to the server.
    pub server_db: DatabaseConnection,
    /// No redirects followed, cookies kept (like a browser).
    pub client: reqwest::Client,
    pub is_postgres: bool,
    /// The application's metrics.
    pub metrics: std::sync::Arc<signup::metrics::Metrics>,
    /// The server's EmailSyncActor, to drive delivery step by step.
    pub email_sync: actix::Addr<signup::actors::EmailSyncActor>,
    /// The server's turns at writing to SQLite.
    pub write_turns: signup::database::WriteTurns,
    /// Keeps the SQLite file alive for the test's duration.
    _dir: Option<TempDir>,
}

/// Settings every test starts from: a free port, cheap hashing, no rate limit.
pub fn test_settings() -> Settings {
    let mut settings = Settings::default();
    settings.server.bind = ([127, 0, 0, 1], 0).into();
    settings.server.workers = 2;
    settings.password = PasswordSettings {
        // Room for the concurrency tests' 200 requests at once: they test uniqueness, not
        // shedding.
        max_waiting: 1024,
        ..PasswordSettings::new(1024, 1, 1).expect("valid parameters")
    };
    settings.rate_limit.per_minute = 0;
    settings.database.acquire_timeout = std::time::Duration::from_secs(2);
    // Nothing listens here: tests that watch deliveries point this at their own mock.
    settings.email_sync.url = url("http://127.0.0.1:9/webhook");
    settings
}

/// `text` as a URL (test settings).
pub fn url(text: &str) -> reqwest::Url {
    reqwest::Url::parse(text).expect("a URL")
}

/// Points `settings` at a fake provider of `kind` at `base`: every kind's section gets that
/// base URL and `key` (Mailchimp's list `list1`, Mailgun's `news@mg.example.com`).
pub fn use_provider_kind(
    settings: &mut Settings,
    kind: signup::configuration::ProviderKind,
    base: &str,
    key: &str,
) {
    use_provider(settings, base);
    let sync = &mut settings.email_sync;
    sync.kind = kind;
    sync.mailchimp.api_key = key.into();
    sync.mailchimp.base_url = Some(url(base));
    sync.mailchimp.list_id = "list1".into();
    sync.sendgrid.api_key = key.into();
    sync.sendgrid.base_url = url(base);
    sync.mailgun.api_key = key.into();
    sync.mailgun.base_url = url(base);
    sync.mailgun.list = "news@mg.example.com".into();
    sync.brevo.api_key = key.into();
    sync.brevo.base_url = url(base);
    sync.resend.api_key = key.into();
    sync.resend.base_url = url(base);
}

/// How long a test waits for something the server does on its own before it fails: long
/// enough for a slow, shared machine, never a measure of speed.
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// The signing secret of the tests' provider.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Points the email sync at `base` (a mock's URI) with timings short enough for tests.
pub fn use_provider(settings: &mut Settings, base: &str) {
    use std::time::Duration;
    let sync = &mut settings.email_sync;
    sync.url = url(&format!("{base}/webhook"));
    sync.secret = Some(SECRET.parse().expect("a whsec_ secret"));
    // Long enough that a delivery on a loaded 2-core machine (the whole suite at once) is not
    // cut off and sent again: the tests that count deliveries expect each row exactly once.
    // Tests of a slow provider set a shorter one.
    sync.timeout = Duration::from_secs(5);
    sync.poll_interval = Duration::from_millis(200);
    sync.retry.initial_interval = Duration::from_millis(100);
    sync.retry.max_interval = Duration::from_millis(500);
    sync.circuit_breaker.open_for = Duration::from_millis(500);
    sync.circuit_breaker.max_open_for = Duration::from_secs(2);
}

/// Polls `check` every 50 ms until it holds; panics naming `what` after `limit`.
pub async fn wait_until<F, Fut>(what: &str, limit: std::time::Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + limit;
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts the server with `adjust`ed test settings on a fresh database.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_with_hooks(adjust, Hooks::default()).await
}

/// As [`spawn_app_with`], with test seams in the email sync.
pub async fn spawn_app_with_hooks(adjust: impl FnOnce(&mut Settings), hooks: Hooks) -> TestApp {
    init_tracing();
    let mut settings = test_settings();
    let (url, dir, _) = fresh_database().await;
    settings.database.url = SecretString::from(url.clone());
    adjust(&mut settings);
    // The test opens what the server uses, also when `adjust` chose another database.
    let url = {
        use secrecy::ExposeSecret;
        settings.database.url.expose_secret().to_owned()
    };
    let is_postgres = url.starts_with("postgres");
    let app = Application::build_with_hooks(settings, hooks)
        .await
        .expect("the application starts");
    let metrics = app.metrics();
    let email_sync = app.email_sync();
    let write_turns = app.write_turns();
    let port = app.port();
    let server_db = app.db().clone();
    actix_web::rt::spawn(app.run_until_stopped());
    let db = Database::connect(&url)
        .await
        .expect("the test connects to its database");
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .build()
        .expect("a reqwest client");
    TestApp {
        address: format!("http://127.0.0.1:{port}"),

        db,
        server_db,
        database_url: url,
        client,
        is_postgres,
        metrics,
        email_sync,
        write_turns,
        _dir: dir,
    }
}

/// A database no other test uses: a new SQLite file, or a new PostgreSQL database.
pub async fn fresh_database() -> (String, Option<TempDir>, bool) {
    match TestDatabase::from_env() {
        TestDatabase::Sqlite => {
            let dir = tempfile::tempdir().expect("a temp dir");
            let url = format!("sqlite://{}", dir.path().join("signup.db").display());
            (url, Some(dir), false)
        }
        TestDatabase::Postgres(admin_url) => (fresh_postgres(&admin_url).await, None, true),
    }
}

/// A new, empty PostgreSQL database; returns its URL. Its name carries this process's id, so a
/// later run can tell it is no longer used (see [`drop_stale_databases`]).
pub async fn fresh_postgres(admin_url: &str) -> String {
    let name = format!(
        "signup_test_{}_{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    let admin = Database::connect(admin_url)
        .await
        .expect("TEST_POSTGRES_URL accepts connections");
    static SWEPT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    SWEPT.get_or_init(|| drop_stale_databases(&admin)).await;
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .expect("the test role may create databases");
    admin.close().await.ok();
    with_database(admin_url, &name)
}

/// Drops the test databases of earlier test processes that no longer run (once per process):
/// a test cannot drop its own database while its server still holds connections, so each run
/// cleans up after the ones before it. Linux only (it asks /proc); elsewhere it leaves them.
async fn drop_stale_databases(admin: &DatabaseConnection) {
    if !std::path::Path::new("/proc/self").exists() {
        return;
    }
    let Ok(rows) = admin
        .query_all_raw(sea_orm::Statement::from_string(
            admin.get_database_backend(),
            "SELECT datname FROM pg_database WHERE datname LIKE 'signup\\_test\\_%'",
        ))
        .await
    else {
        return;
    };
    for row in rows {
        let Ok(name) = row.try_get::<String>("", "datname") else {
            continue;
        };
        // signup_test_<pid>_<uuid>; a name without a pid predates them and is stale too.
        let pid = name
            .split('_')
            .nth(2)
            .filter(|_| name.split('_').count() == 4);
        let running = pid.is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if !running {
            let _ = admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await;
        }
    }
}

/// `TEST_POSTGRES_URL` for tests that need PostgreSQL whatever the suite runs on. `None` (the
/// test skips, saying why) when it is not set, except under `CI=true`, where that is a failure.
pub fn postgres_admin_url() -> Option<String> {
    match std::env::var("TEST_POSTGRES_URL") {
        Ok(url) => Some(url),
        Err(_) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true but TEST_POSTGRES_URL is not set: this test needs PostgreSQL")
        }
        Err(_) => {
            eprintln!(
                "skipping: TEST_POSTGRES_URL is not set (a PostgreSQL role that may create databases)"
            );
            None
        }
    }
}

/// `postgres://u:p@host:5432/anything?x` → `postgres://u:p@host:5432/<name>?x`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{host_part}/{name}?{q}"),
        None => format!("{host_part}/{name}"),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn post_registration(&self, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url("/api/v1/registrations"))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn post_raw(
        &self,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.client
            .post(self.url("/api/v1/registrations"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
    }

    /// GET /register and return the form's CSRF token (the cookie is kept by the client).
    pub async fn csrf_token(&self) -> String {
        let page = self.get("/register").await.text().await.expect("page");
        hidden_value(&page, "csrf_token").expect("the form has a csrf_token")
    }

    pub async fn post_form(&self, fields: &[(&str, &str)]) -> reqwest::Response {
        self.client
            .post(self.url("/register"))
            .form(fields)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn user_count(&self) -> u64 {
        entity::user::Entity::find()
            .count(&self.db)
            .await
            .expect("count users")
    }

    pub async fn outbox_rows(&self) -> Vec<entity::email_outbox::Model> {
        outbox_rows(&self.db).await
    }

    /// Outbox rows with `status`.
    pub async fn outbox_with(
        &self,
        status: entity::email_outbox::Status,
    ) -> Vec<entity::email_outbox::Model> {
        self.outbox_rows()
            .await
            .into_iter()
            .filter(|r| r.status == status)
            .collect()
    }

    /// Waits until every outbox row is delivered and there are `n` of them.
    pub async fn wait_all_delivered(&self, n: usize) {
        wait_all_delivered(&self.db, n, std::time::Duration::from_secs(30)).await;
    }

    /// How many outbox rows a claim at `now` could take: pending, due, and not leased. Reads
    /// only: what the delivery core then does with them is its own unit tests' and the
    /// simulation's business.
    pub async fn due_at(&self, now: chrono::DateTime<chrono::Utc>) -> usize {
        self.outbox_rows()
            .await
            .iter()
            .filter(|r| {
                r.status == entity::email_outbox::Status::Pending
                    && r.next_attempt_at <= now
                    && r.locked_until.is_none_or(|until| until <= now)
            })
            .count()
    }

    /// The retention sweep as of `now`; how many delivered rows it deleted.
    pub async fn sweep_delivered_at(&self, now: chrono::DateTime<chrono::Utc>) -> u64 {
        self.email_sync
            .send(signup::actors::SweepDelivered { now })
            .await
            .expect("the email sync answers")
    }

    /// Registers users `range` and asserts each got 201.
    pub async fn register_all(&self, range: std::ops::Range<usize>) {
        for n in range {
            let status = self
                .post_registration(&registration(n))
                .await
                .status()
                .as_u16();
            assert_eq!(status, 201, "registration {n}");
        }
    }
}

impl TestApp {
    /// Stores users `range` (as [`registration`] names them) straight into the database, the
    /// registration's own transaction, `chunk` per commit: each chunk's outbox rows appear at
    /// once, so the email sync claims them together (batches), and thousands take seconds.
    pub async fn register_directly(&self, range: std::ops::Range<usize>, chunk: usize) {
        let all: Vec<_> = range
            .map(|n| candidate(&format!("user{n}"), &format!("user{n}@example.com")))
            .collect();
        // One writer, as the server has: on SQLite it keeps its connection between chunks.
        let writer = signup::internals::Writer::new(self.db.clone());
        for part in all.chunks(chunk) {
            let outcomes = writer.register_batch(part).await.expect("committed");
            assert!(
                outcomes
                    .iter()
                    .all(|o| matches!(o, signup::store::Outcome::Created(_))),
                "every user is new"
            );
        }
    }
}

/// A registration as the RegistrationActor hands it to the store (a cheap, fixed hash).
pub fn candidate(username: &str, email: &str) -> signup::store::Candidate {
    signup::store::Candidate {
        username: signup::domain::Username::parse(username).expect("username"),
        email: signup::domain::Email::parse(email).expect("email"),
        password_hash: "$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".into(),
        idempotency: None,
        request_id: "test".into(),
        trace: None,
        ticket: Default::default(),
    }
}

/// A TestApp that goes away stops its email sync at once: it runs on a thread of its own and
/// would otherwise go on delivering until the test's System ends, to a mock server port that
/// wiremock may already have handed to another test.
impl Drop for TestApp {
    fn drop(&mut self) {
        self.email_sync.do_send(signup::actors::Drain {
            grace: std::time::Duration::ZERO,
        });
    }
}

/// A valid registration body; `n` makes the username and email unique.
pub fn registration(n: usize) -> Value {
    json!({
        "username": format!("user{n}"),
        "email": format!("user{n}@example.com"),
        "password": "correct horse battery",
    })
}

/// The `value` of `<input … name="{name}" value="…">` in `html`.
pub fn hidden_value(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\""))?;
    let rest = &html[at..];
    let start = rest.find("value=\"")? + "value=\"".len();
    let end = rest[start..].find('"')?;
    Some(rest[start..start + end].to_string())
}

/// Asserts a problem+json response and returns its body.
pub async fn problem(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "status");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.expect("a JSON problem");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status, "{body}");
    for member in ["type", "title", "detail"] {
        assert!(body[member].is_string(), "problem member {member}: {body}");
    }
    body
}

/// Every outbox row of `db`.
pub async fn outbox_rows(db: &DatabaseConnection) -> Vec<entity::email_outbox::Model> {
    entity::email_outbox::Entity::find()
        .all(db)
        .await
        .expect("outbox rows")
}

/// Waits until `db` holds `n` outbox rows, every one delivered.
pub async fn wait_all_delivered(db: &DatabaseConnection, n: usize, limit: std::time::Duration) {
    use entity::email_outbox::Status;
    wait_until(&format!("{n} rows are delivered"), limit, || async {
        let rows = outbox_rows(db).await;
        rows.len() == n && rows.iter().all(|r| r.status == Status::Delivered)
    })
    .await;
}

/// A server in an actix System of its own thread, for a test driven from a plain thread (a
/// proptest): its address and database. Dropping it stops the server and waits for its thread.
pub struct ServedApp {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    pub database_url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Starts the server with `adjust`ed test settings in a thread of its own.
pub fn serve_in_thread(adjust: impl FnOnce(&mut Settings) + Send + 'static) -> ServedApp {
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let app = spawn_app_with(adjust).await;
            let _ = tx.send((app.address.clone(), app.database_url.clone()));
            // Keep the app (and its database) alive until the test has looked at it.
            let _ = stopped.await;
            drop(app);
        });
    });
    let (address, database_url) = rx.recv().expect("the server started");
    signup::startup::install_crypto_provider();
    ServedApp {
        address,
        database_url,
        stop: Some(stop),
        thread: Some(thread),
    }
}

impl Drop for ServedApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
