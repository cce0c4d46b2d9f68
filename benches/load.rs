//! `cargo bench --bench load`: signup measured against its own limits, on SQLite and (with
//! `BENCH_POSTGRES_URL`, a role that may create databases) PostgreSQL, all on this machine.
//!
//! For each database:
//! - end to end through HTTP, negligible hashing (argon2 m=8 KiB, t=1), provider up: successful
//!   registrations a second (2xx only; errors counted beside), p50, p99;
//! - the raw loops: the server's registration transaction straight on the database, no HTTP, no
//!   actors, one registration a transaction and K a transaction, K the mean batch the server
//!   formed under that load (read from its `signup_registration_batch_size`); end to end is
//!   compared with both;
//! - the HTTP ceiling: `GET /health/live` on the same server, same load generator and
//!   concurrency;
//! - p99 with the provider answering 503, refusing connections, and taking 2 s;
//! - end to end with OWASP hashing (m=19456 KiB, t=2, p=1, 1000 registrations) against the
//!   hash bound (cores ÷ one hash's time, timed after that server is gone, nothing else running);
//! - OWASP hashing offered 4 × what the hashing threads take: shedding against queueing;
//! - the database's outcome-write limit (claim + mark delivered, no HTTP), and the drain after
//!   an outage, webhook (one row per request) and Mailchimp (500 per request), each against
//!   min(in flight × batch ÷ provider latency, that limit), in flight and batch as the server's
//!   own settings make them;
//! - resident memory against one baseline (the provider-up server idle): after its load, and a
//!   server draining 1 000 000 pending registrations.
//!
//! The server and the provider (`signup mock-provider`) run as processes of their own, the
//! release binary, without the caller's `SIGNUP_…` variables and each in a directory of its
//! own; the load comes from this process. Knobs: BENCH_REQUESTS (10000), BENCH_CONCURRENCY (64),
//! BENCH_PENDING_ROWS (1000000), BENCH_OWASP_REQUESTS (1000), BENCH_ONLY=owasp (the hashing
//! line) or BENCH_ONLY=cheap (the raw, first end-to-end and ceiling lines) or
//! BENCH_ONLY=overload (BENCH_FLOOD_REQUESTS 3000, BENCH_FLOOD_CONCURRENCY 2 × 64 × cores) or
//! BENCH_ONLY=drain (BENCH_DRAIN_ROWS 100000 for the batched one) or BENCH_ONLY=raw (the raw
//! loop alone at each K of BENCH_RAW_K, default 1,16,32).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use argon2::{Algorithm, Argon2, Block, Params, Version};
use futures::StreamExt;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use secrecy::SecretString;
use signup::configuration::DatabaseSettings;
use signup::domain::{Email, Username};
use signup::internals::Writer;
use signup::store::Candidate;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const BIN: &str = env!("CARGO_BIN_EXE_signup");

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn wait_listening(port: u16) {
    for _ in 0..300 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("nothing listens on {port}");
}

/// A child process, killed on drop (then its working directory is removed).
struct Process {
    child: Child,
    /// Its working directory, removed after it.
    _dir: tempfile::TempDir,
}

/// The release binary, isolated as the tests isolate it: none of the caller's `SIGNUP_…`
/// variables, and a working directory of its own (no `config.toml` found by accident).
fn signup_command() -> (Command, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a working directory");
    let mut command = Command::new(BIN);
    command.current_dir(dir.path());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SIGNUP_") {
            command.env_remove(name);
        }
    }
    (command, dir)
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// Resident memory in MiB, from /proc.
    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    }
}

/// `signup mock-provider` on `port`.
async fn provider(port: u16, latency_ms: u64, status: Option<u16>) -> Process {
    let (mut command, dir) = signup_command();
    command
        .args([
            "mock-provider",
            // A real provider's printing costs this machine nothing.
            "--quiet",
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--secret",
            SECRET,
        ])
        .args(["--latency-ms", &latency_ms.to_string()]);
    if let Some(status) = status {
        command.args(["--status", &status.to_string()]);
    }
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mock-provider");
    wait_listening(port).await;
    Process { child, _dir: dir }
}

/// Hashing cost for the server.
#[derive(Clone, Copy)]
enum Hashing {
    /// argon2id m=8 KiB, t=1: negligible next to the rest of a registration.
    Cheap,
    Owasp,
}

/// `signup serve` on a fresh port against `database_url`.
async fn server(database_url: &str, provider_port: u16, hashing: Hashing) -> (Process, String) {
    server_with(database_url, provider_port, hashing, &[]).await
}

/// As [`server`], with more `SIGNUP_…` settings.
async fn server_with(
    database_url: &str,
    provider_port: u16,
    hashing: Hashing,
    extra: &[(&str, &str)],
) -> (Process, String) {
    let port = free_port();
    let (m, t) = match hashing {
        Hashing::Cheap => ("8", "1"),
        Hashing::Owasp => ("19456", "2"),
    };
    let (mut command, dir) = signup_command();
    let child = command
        .arg("serve")
        .env("SIGNUP_SERVER__BIND", format!("127.0.0.1:{port}"))
        .env("SIGNUP_DATABASE__URL", database_url)
        .env("SIGNUP_PASSWORD__ARGON2_M_KIB", m)
        .env("SIGNUP_PASSWORD__ARGON2_T", t)
        .env("SIGNUP_RATE_LIMIT__PER_MINUTE", "0")
        .env(
            "SIGNUP_EMAIL_SYNC__URL",
            format!("http://127.0.0.1:{provider_port}/webhook"),
        )
        .env("SIGNUP_EMAIL_SYNC__SECRET", SECRET)
        .env("SIGNUP_EMAIL_SYNC__CIRCUIT_BREAKER__OPEN_FOR", "1s")
        // Logging as shipped (`info`: a line per request and per registration), to /dev/null.
        .envs(extra.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("signup serve");
    wait_listening(port).await;
    (
        Process { child, _dir: dir },
        format!("http://127.0.0.1:{port}"),
    )
}

/// Every database this run created, removed at its end.
static CREATED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Removes the SQLite files and drops the PostgreSQL databases this run created.
async fn remove_databases(postgres_admin: Option<&str>) {
    let urls = std::mem::take(&mut *CREATED.lock().unwrap_or_else(|e| e.into_inner()));
    let admin = match postgres_admin {
        Some(admin) => Database::connect(admin).await.ok(),
        None => None,
    };
    for url in urls {
        if let Some(path) = url.strip_prefix("sqlite://") {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{path}{suffix}"));
            }
        } else if let (Some(admin), Some((_, name))) = (&admin, url.rsplit_once('/')) {
            let _ = admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
        }
    }
}

/// A fresh, migrated database: a temp SQLite file, or a new PostgreSQL database.
async fn fresh_database(postgres_admin: Option<&str>) -> String {
    let url = match postgres_admin {
        None => format!(
            "sqlite://{}/signup-bench-{}.db",
            std::env::temp_dir().display(),
            uuid::Uuid::new_v4().simple()
        ),
        Some(admin) => {
            let name = format!("signup_bench_{}", uuid::Uuid::new_v4().simple());
            let db = Database::connect(admin)
                .await
                .expect("BENCH_POSTGRES_URL connects");
            db.execute_unprepared(&format!("CREATE DATABASE {name}"))
                .await
                .expect("create database");
            let base = admin.rsplit_once('/').map_or(admin, |(base, _)| base);
            format!("{base}/{name}")
        }
    };
    let (mut command, _dir) = signup_command();
    let status = command
        .arg("migrate")
        .env("SIGNUP_DATABASE__URL", &url)
        .env("SIGNUP_LOG__LEVEL", "error")
        .status()
        .expect("signup migrate");
    assert!(status.success(), "migrations");
    CREATED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(url.clone());
    url
}

async fn connect(url: &str) -> DatabaseConnection {
    let settings = DatabaseSettings {
        url: SecretString::from(url.to_owned()),
        max_connections: std::num::NonZeroU32::new(4).expect("not zero"),
        ..DatabaseSettings::default()
    };
    signup::database::connect(&settings)
        .await
        .expect("connects")
}

/// The server's registration transaction straight on the database, `per_commit`
/// registrations per transaction (1: one at a time; the server's mean batch: its group commit),
/// sequentially, no HTTP, no actors: registrations per second.
async fn raw_loop(url: &str, n: usize, per_commit: usize) -> f64 {
    let db = connect(url).await;
    let hash = "$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".to_string();
    let all: Vec<Candidate> = (0..n)
        .map(|i| Candidate {
            username: Username::parse(&format!("raw{i}")).expect("username"),
            email: Email::parse(&format!("raw{i}@example.com")).expect("email"),
            password_hash: hash.clone(),
            idempotency: None,
            request_id: String::new(),
            trace: None,
            ticket: Default::default(),
        })
        .collect();
    // One writer for the whole loop, as the RegistrationActor has (on SQLite it keeps its
    // connection from batch to batch).
    let writer = Writer::new(db.clone());
    let started = Instant::now();
    for batch in all.chunks(per_commit.max(1)) {
        writer.register_batch(batch).await.expect("committed");
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let _ = db.close().await;
    rate
}

/// BENCH_ONLY=raw: the raw loop alone at each K of BENCH_RAW_K (default 1,16,32), on a fresh
/// database each, to set beside `benches/wrk/abba.sh` figures taken in the same minutes (its
/// 32 clients form batches of ~16).
async fn raw_lines(postgres: Option<&str>, requests: usize) {
    let ks = std::env::var("BENCH_RAW_K").unwrap_or_else(|_| "1,16,32".into());
    for k in ks.split(',').filter_map(|k| k.trim().parse::<usize>().ok()) {
        let rate = raw_loop(&fresh_database(postgres).await, requests, k).await;
        println!(
            "  {:<34} {rate:>7.0} reg/s  ({:.2} ms a transaction)",
            format!("raw loop, group commit of {k}"),
            k as f64 / rate * 1e3
        );
    }
}

struct Report {
    per_second: f64,
    p50: Duration,
    p99: Duration,
    errors: usize,
}

/// `requests` registrations, `concurrency` at a time; `offset` keeps users unique.
async fn load(base: &str, requests: usize, concurrency: usize, offset: usize) -> Report {
    let (results, elapsed) = register_timed(base, requests, concurrency, offset).await;
    report(&results, elapsed, 201)
}

/// Answers of status `ok` a second, the latencies of all, and how many were not `ok`.
fn report(results: &[(Duration, u16)], elapsed: Duration, ok: u16) -> Report {
    let mut latencies: Vec<Duration> = results.iter().map(|(d, _)| *d).collect();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let errors = results.iter().filter(|(_, status)| *status != ok).count();
    Report {
        per_second: (results.len() - errors) as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
        errors,
    }
}

/// The HTTP ceiling: `GET /health/live` (no database, no actor) from the same load generator
/// at the same concurrency.
async fn ceiling(base: &str, requests: usize, concurrency: usize) -> Report {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .expect("client");
    let url = format!("{base}/health/live");
    let started = Instant::now();
    let results: Vec<(Duration, u16)> = futures::stream::iter(0..requests)
        .map(|_| {
            let request = client.get(&url).send();
            async move {
                let t = Instant::now();
                let status = request.await.map_or(0, |r| r.status().as_u16());
                (t.elapsed(), status)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    report(&results, started.elapsed(), 200)
}

/// Latencies of a flood, split by answer.
struct Flood {
    /// 201s.
    accepted: Vec<Duration>,
    /// 503s (shed).
    shed: Vec<Duration>,
    /// Anything else, or no answer.
    other: usize,
    elapsed: Duration,
}

/// `requests` registrations, `concurrency` at a time, timed per answer and split by it.
async fn flood(base: &str, requests: usize, concurrency: usize, offset: usize) -> Flood {
    let (results, elapsed) = register_timed(base, requests, concurrency, offset).await;
    let pick = |code: u16| {
        let mut v: Vec<Duration> = results
            .iter()
            .filter(|(_, s)| *s == code)
            .map(|(d, _)| *d)
            .collect();
        v.sort();
        v
    };
    Flood {
        accepted: pick(201),
        shed: pick(503),
        other: results
            .iter()
            .filter(|(_, s)| *s != 201 && *s != 503)
            .count(),
        elapsed,
    }
}

/// Sends `requests` registrations (users `bench<offset + i>`), `concurrency` at a time: each
/// answer's latency and status (0: no answer), and the whole run's time.
async fn register_timed(
    base: &str,
    requests: usize,
    concurrency: usize,
    offset: usize,
) -> (Vec<(Duration, u16)>, Duration) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .expect("client");
    let url = format!("{base}/api/v1/registrations");
    let started = Instant::now();
    let results = futures::stream::iter(0..requests)
        .map(|i| {
            let client = client.clone();
            let url = url.clone();
            async move {
                let n = offset + i;
                let body = serde_json::json!({
                    "username": format!("bench{n}"),
                    "email": format!("bench{n}@example.com"),
                    "password": "correct horse battery",
                });
                let t = Instant::now();
                let status = client
                    .post(&url)
                    .json(&body)
                    .send()
                    .await
                    .map_or(0, |r| r.status().as_u16());
                (t.elapsed(), status)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    (results, started.elapsed())
}

/// The `q` quantile of sorted `latencies` in ms, or NaN when there are none.
fn quantile_ms(latencies: &[Duration], q: f64) -> f64 {
    if latencies.is_empty() {
        return f64::NAN;
    }
    let i = ((latencies.len() as f64 * q) as usize).min(latencies.len() - 1);
    latencies[i].as_secs_f64() * 1e3
}

fn flood_line(name: &str, f: &Flood) {
    println!(
        "  {name:<34} {:>5} accepted {:>6.0}/s p99 {:>7.0} ms | {:>5} shed (503) p99 {:>6.1} ms | other {}",
        f.accepted.len(),
        f.accepted.len() as f64 / f.elapsed.as_secs_f64(),
        quantile_ms(&f.accepted, 0.99),
        f.shed.len(),
        quantile_ms(&f.shed, 0.99),
        f.other
    );
}

fn line(name: &str, r: &Report, extra: &str) {
    println!(
        "  {name:<34} {:>7.0} ok/s  p50 {:>7.2} ms  p99 {:>8.2} ms  errors {:<3} {extra}",
        r.per_second,
        r.p50.as_secs_f64() * 1e3,
        r.p99.as_secs_f64() * 1e3,
        r.errors
    );
}

/// The OWASP parameters: m=19456 KiB, t=2, p=1.
fn owasp_params() -> Params {
    Params::new(19_456, 2, 1, Some(32)).expect("params")
}

/// One OWASP argon2id hash the way the server hashes: the RustCrypto crate, into working memory
/// that is reused from hash to hash.
fn owasp_hash(blocks: &mut [Block], i: usize) {
    let mut out = [0u8; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, owasp_params())
        .hash_password_into_with_memory(
            b"correct horse battery",
            &(i as u128).to_le_bytes(),
            &mut out,
            blocks,
        )
        .expect("hash");
}

/// The median of 11 timings of `f`, after one untimed call.
fn median_seconds(mut f: impl FnMut(usize)) -> f64 {
    f(0);
    let mut times: Vec<f64> = (1..=11)
        .map(|i| {
            let t = Instant::now();
            f(i);
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Seconds of one OWASP hash, one thread, nothing else running (median of 11).
fn owasp_hash_seconds() -> f64 {
    let mut blocks = vec![Block::default(); owasp_params().block_count()];
    median_seconds(|i| owasp_hash(&mut blocks, i))
}

/// Seconds of one OWASP hash by the C reference implementation (libargon2, as the Python peer
/// uses through argon2-cffi), when the shared library is installed.
fn reference_hash_seconds() -> Option<f64> {
    type HashRaw = unsafe extern "C" fn(
        u32,
        u32,
        u32,
        *const u8,
        usize,
        *const u8,
        usize,
        *mut u8,
        usize,
    ) -> i32;
    // SAFETY: loading libargon2 runs no initialisers beyond the C runtime's; the symbol has the
    // signature of `argon2id_hash_raw` in argon2.h, and every pointer passed below is valid for
    // the length passed with it.
    unsafe {
        let library = libloading::Library::new("libargon2.so.1").ok()?;
        let hash_raw = library.get::<HashRaw>(b"argon2id_hash_raw\0").ok()?;
        let password = b"correct horse battery";
        let mut failed = false;
        let seconds = median_seconds(|i| {
            let salt = (i as u128).to_le_bytes();
            let mut out = [0u8; 32];
            let status = hash_raw(
                2,
                19_456,
                1,
                password.as_ptr(),
                password.len(),
                salt.as_ptr(),
                salt.len(),
                out.as_mut_ptr(),
                out.len(),
            );
            failed |= status != 0;
        });
        (!failed).then_some(seconds)
    }
}

/// OWASP hashes per second with one thread per core, each hashing `n` passwords into memory of
/// its own that it reuses, as the server's hashing threads do.
fn parallel_hash_rate(cores: usize, n: usize) -> f64 {
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..cores {
            scope.spawn(move || {
                let mut blocks = vec![Block::default(); owasp_params().block_count()];
                for i in 0..n {
                    owasp_hash(&mut blocks, i);
                }
            });
        }
    });
    (cores * n) as f64 / started.elapsed().as_secs_f64()
}

async fn count_delivered(db: &DatabaseConnection) -> u64 {
    use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
    entity::email_outbox::Entity::find()
        .filter(entity::email_outbox::Column::Status.eq(entity::email_outbox::Status::Delivered))
        .count(db)
        .await
        .unwrap_or(0)
}

/// Registrations straight into the database (the registration's own transaction), 1000 per
/// commit: a backlog of pending outbox rows with real payloads, stored while no provider
/// answered.
async fn seed_registrations(url: &str, rows: usize) {
    let db = connect(url).await;
    let hash = "$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".to_string();
    let all: Vec<Candidate> = (0..rows)
        .map(|i| Candidate {
            username: Username::parse(&format!("drain{i}")).expect("username"),
            email: Email::parse(&format!("drain{i}@example.com")).expect("email"),
            password_hash: hash.clone(),
            idempotency: None,
            request_id: String::new(),
            trace: None,
            ticket: Default::default(),
        })
        .collect();
    let writer = Writer::new(db.clone());
    for chunk in all.chunks(1000) {
        writer.register_batch(chunk).await.expect("committed");
    }
    let _ = db.close().await;
}

/// What the database can take of the email sync's own writes: claim 5000 due rows, mark them
/// delivered as requests of 500 would be (one transaction per claim), until `rows` are done,
/// with no HTTP in between. Rows a second.
async fn outcome_write_limit(postgres: Option<&str>, rows: usize) -> f64 {
    use signup::outbox::{Completion, Finished, claim, complete_all};
    let url = fresh_database(postgres).await;
    seed_registrations(&url, rows).await;
    let db = connect(&url).await;
    let started = Instant::now();
    let mut done = 0;
    loop {
        let now = chrono::Utc::now();
        let claims = claim(
            &db,
            env_or("BENCH_CLAIM", 5000),
            Duration::from_secs(60),
            now,
        )
        .await
        .expect("claims");
        if claims.is_empty() {
            break;
        }
        done += claims.len();
        let finished: Vec<Finished> = claims
            .into_iter()
            .map(|claimed| Finished {
                attempts: claimed.row.attempts + 1,
                claimed,
                completion: Completion::Delivered {
                    status: 200,
                    job: None,
                },
                at: now,
            })
            .collect();
        complete_all(&db, &finished).await.expect("stored");
    }
    let _ = db.close().await;
    done as f64 / started.elapsed().as_secs_f64()
}

/// The outcome-write limit, then the drain after an outage: `webhook_rows` one per request,
/// `BENCH_DRAIN_ROWS` (100 000) batched.
async fn drain_lines(postgres: Option<&str>, webhook_rows: usize) {
    let rows = env_or("BENCH_DRAIN_ROWS", 100_000);
    // This VM's speed drifts by tens of percent within a minute: the limit and the batched
    // drain are measured in turns, three times each, and their medians compared.
    let (mut limits, mut rates) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        limits.push(outcome_write_limit(postgres, rows).await);
        rates.push(drain(postgres, Drain::Mailchimp, rows).await);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let limit = median(limits.clone());
    println!(
        "  {:<34} {limit:>7.0} rows/s  (claim 5000 + mark delivered, no HTTP; median of {:.0?})",
        "outcome-write limit", limits
    );
    drain_line(
        Drain::Webhook,
        drain(postgres, Drain::Webhook, webhook_rows).await,
        limit,
    );
    let rate = median(rates.clone());
    drain_line(Drain::Mailchimp, rate, limit);
    println!("      mailchimp drain runs {rates:.0?}");
}

/// A drain line: `rate` against min(in flight × batch ÷ latency, the outcome-write `limit`),
/// in flight and batch as the server's settings make them for the kind.
fn drain_line(kind: Drain, rate: f64, limit: f64) {
    use signup::configuration::{ProviderKind, Settings};
    let (name, provider_kind) = match kind {
        Drain::Webhook => ("drain after outage, webhook", ProviderKind::Webhook),
        Drain::Mailchimp => ("drain after outage, mailchimp", ProviderKind::Mailchimp),
    };
    let mut sync = Settings::default().email_sync;
    sync.kind = provider_kind;
    let (in_flight, batch) = (sync.in_flight(), sync.batch());
    let api_bound = (in_flight * batch) as f64 / DRAIN_LATENCY.as_secs_f64();
    let bound = api_bound.min(limit);
    println!(
        "  {name:<34} {rate:>7.0} deliveries/s  bound min({in_flight} × {batch} / {} ms = \
         {api_bound:.0}/s, outcome writes {limit:.0}/s), ratio {:.2}",
        DRAIN_LATENCY.as_millis(),
        rate / bound
    );
}

/// The provider of a drain line.
#[derive(Clone, Copy)]
enum Drain {
    /// Standard Webhooks: one row per request, 16 in flight.
    Webhook,
    /// Mailchimp's batch subscribe: up to 500 rows per request, 10 in flight.
    Mailchimp,
}

/// Drain after an outage: `rows` registrations pending, then the provider (`signup
/// mock-provider`, 50 ms per answer) and the server start; deliveries a second between 10 % and
/// 90 % of the backlog, against min(in flight × batch ÷ latency, the outcome-write limit).
/// The mock provider's answer time in the drain lines.
const DRAIN_LATENCY: Duration = Duration::from_millis(50);

async fn drain(postgres: Option<&str>, kind: Drain, rows: usize) -> f64 {
    let latency = DRAIN_LATENCY;
    let url = fresh_database(postgres).await;
    seed_registrations(&url, rows).await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let settings = match kind {
        Drain::Webhook => vec![],
        Drain::Mailchimp => vec![
            ("SIGNUP_EMAIL_SYNC__KIND", "mailchimp"),
            ("SIGNUP_EMAIL_SYNC__MAILCHIMP__API_KEY", "bench-us1"),
            ("SIGNUP_EMAIL_SYNC__MAILCHIMP__LIST_ID", "list1"),
            ("SIGNUP_EMAIL_SYNC__MAILCHIMP__BASE_URL", base.as_str()),
        ],
    };
    let (mut command, dir) = signup_command();
    command.args([
        "mock-provider",
        "--quiet",
        "--bind",
        &format!("127.0.0.1:{port}"),
    ]);
    command.args(["--latency-ms", &latency.as_millis().to_string()]);
    match kind {
        Drain::Webhook => command.args(["--secret", SECRET]),
        Drain::Mailchimp => command.args(["--kind", "mailchimp"]),
    };
    let _provider = Process {
        child: command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mock-provider"),
        _dir: dir,
    };
    wait_listening(port).await;
    let (_server, _) = server_with(&url, port, Hashing::Cheap, &settings).await;
    let backlog = rows as u64;
    let (low, high) = (backlog / 10, backlog * 9 / 10);
    let mut window_start = None;
    let mut delivered = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    // One connection, a count every 200 ms: a poll must not compete with what it measures (the
    // rate is taken between two counts, so their spacing costs no accuracy).
    let db = connect(&url).await;
    while Instant::now() < deadline && delivered < high {
        delivered = count_delivered(&db).await;
        if window_start.is_none() && delivered >= low {
            window_start = Some((Instant::now(), delivered));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = db.close().await;
    match window_start {
        Some((t, from)) if delivered >= high => {
            (delivered - from) as f64 / t.elapsed().as_secs_f64()
        }
        _ => {
            println!("  drain: {delivered} of {backlog} delivered in 300 s");
            f64::NAN
        }
    }
}

async fn run(label: &str, postgres: Option<&str>) {
    // Enough that p99 rests on ~100 samples and a run outlasts a WAL checkpoint or two.
    let requests = env_or("BENCH_REQUESTS", 10_000);
    let concurrency = env_or("BENCH_CONCURRENCY", 64);
    let pending_rows = env_or("BENCH_PENDING_ROWS", 1_000_000);
    println!("\n{label}");

    // BENCH_ONLY=owasp runs just the hashing line, BENCH_ONLY=cheap just the raw and the first
    // end-to-end lines (for quick experiments on one path).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let (only_owasp, only_cheap) = (only == "owasp", only == "cheap");
    if only == "drain" {
        drain_lines(postgres, requests).await;
        return;
    }
    if only == "overload" {
        overload(postgres).await;
        return;
    }
    if only == "raw" {
        raw_lines(postgres, requests).await;
        return;
    }
    // Servers settle this long (gauge refreshes, pool connections) before memory is read.
    let settle = Duration::from_secs(10);
    let mut memory = None;
    if !only_owasp {
        memory = Some(cheap_lines(postgres, requests, concurrency, settle, only_cheap).await);
    }
    if only_cheap {
        return;
    }
    owasp_lines(postgres, concurrency).await;
    if only_owasp {
        return;
    }
    overload(postgres).await;
    drain_lines(postgres, requests).await;
    if let Some((idle, loaded)) = memory {
        memory_line(postgres, pending_rows, idle, loaded, settle).await;
    }
}

/// End to end with negligible hashing (m=8 KiB), provider up, against the raw loops at one registration per
/// transaction and at the server's own mean batch, and against the HTTP ceiling; then p99 with
/// the provider down, refusing and slow. Returns the provider-up server's resident memory idle
/// (after `settle`) and after the load.
async fn cheap_lines(
    postgres: Option<&str>,
    requests: usize,
    concurrency: usize,
    settle: Duration,
    only_up: bool,
) -> (f64, f64) {
    let (up_port, down_port, slow_port) = (free_port(), free_port(), free_port());
    let _up = provider(up_port, 0, None).await;
    let _down = provider(down_port, 0, Some(503)).await;
    let _slow = provider(slow_port, 2000, None).await;

    let url = fresh_database(postgres).await;
    let (up_server, base) = server(&url, up_port, Hashing::Cheap).await;
    tokio::time::sleep(settle).await;
    let idle = up_server.rss_mib();
    load(&base, 300, concurrency, 1_000_000).await; // warm-up
    let (sum_before, count_before) = batch_totals(&base).await;
    let up = load(&base, requests, concurrency, 0).await;
    let (sum_after, count_after) = batch_totals(&base).await;
    let loaded = up_server.rss_mib();
    let http = ceiling(&base, requests, concurrency).await;
    drop(up_server);
    let commits = count_after - count_before;
    let mean_batch = (sum_after - sum_before) / commits;
    let single = raw_loop(&fresh_database(postgres).await, requests, 1).await;
    let per_commit = mean_batch.round().max(1.0) as usize;
    let group = raw_loop(&fresh_database(postgres).await, requests, per_commit).await;

    println!(
        "  {:<34} {single:>7.0} reg/s  (check + insert user + outbox row, one registration a transaction)",
        "raw loop, 1 per transaction"
    );
    println!(
        "  {:<34} {group:>7.0} reg/s  (the same, {per_commit} a transaction: the server's mean \
         batch in the line below, {mean_batch:.1} over {commits:.0} commits)",
        format!("raw loop, group commit of {per_commit}")
    );
    line(
        "e2e, provider up",
        &up,
        &format!(
            "÷ group-commit raw {:.2}, ÷ 1-per-txn raw {:.2}",
            up.per_second / group,
            up.per_second / single
        ),
    );
    line(
        "HTTP ceiling: GET /health/live",
        &http,
        &format!("e2e ÷ ceiling {:.2}", up.per_second / http.per_second),
    );
    if only_up {
        return (idle, loaded);
    }
    for (name, port) in [
        ("e2e, provider 503", down_port),
        ("e2e, provider refusing", free_port()),
        ("e2e, provider slow (2 s)", slow_port),
    ] {
        let url = fresh_database(postgres).await;
        let (server, base) = server(&url, port, Hashing::Cheap).await;
        load(&base, 300, concurrency, 1_000_000).await; // warm-up
        let (sum_before, count_before) = batch_totals(&base).await;
        let report = load(&base, requests, concurrency, 0).await;
        let (sum_after, count_after) = batch_totals(&base).await;
        drop(server);
        // With the provider down no deliveries are written meanwhile, so this server forms
        // batches of its own size: the registration path against the database at that size.
        let own_batch = ((sum_after - sum_before) / (count_after - count_before))
            .round()
            .max(1.0) as usize;
        let own_group = raw_loop(&fresh_database(postgres).await, requests, own_batch).await;
        let extra = format!(
            "p99 / p99(up) {:.2}, ÷ group-commit raw at its own batch {:.2} (K = {own_batch}: {own_group:.0} reg/s)",
            report.p99.as_secs_f64() / up.p99.as_secs_f64(),
            report.per_second / own_group
        );
        line(name, &report, &extra);
    }
    (idle, loaded)
}

/// `signup_registration_batch_size`'s sum and count on the server's `/metrics`.
async fn batch_totals(base: &str) -> (f64, f64) {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (
        value("signup_registration_batch_size_sum"),
        value("signup_registration_batch_size_count"),
    )
}

/// End to end with OWASP hashing against the hash bound; the hash timings are taken after the
/// server and its provider are gone, with nothing else running.
async fn owasp_lines(postgres: Option<&str>, concurrency: usize) {
    let requests = env_or("BENCH_OWASP_REQUESTS", 1000);
    let owasp = {
        let port = free_port();
        let _up = provider(port, 0, None).await;
        let url = fresh_database(postgres).await;
        let (_server, base) = server(&url, port, Hashing::Owasp).await;
        load(&base, 20, concurrency, 1_000_000).await;
        load(&base, requests, concurrency, 0).await
    };
    let hash = owasp_hash_seconds();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let bound = cores as f64 / hash;
    let parallel = parallel_hash_rate(cores, 50);
    let reference = reference_hash_seconds();
    line(
        &format!("e2e OWASP argon2id ({requests} reg)"),
        &owasp,
        &format!("÷ hash bound {:.2}", owasp.per_second / bound),
    );
    println!(
        "      hash bound {cores} cores / {:.1} ms = {bound:.0}/s; {cores} threads hashing alone \
         {parallel:.0}/s (ratio {:.2})",
        hash * 1e3,
        owasp.per_second / parallel
    );
    match reference {
        Some(seconds) => println!(
            "      C reference (libargon2) {:.1} ms: bound {:.0}/s (ratio {:.2})",
            seconds * 1e3,
            cores as f64 / seconds,
            owasp.per_second * seconds / cores as f64
        ),
        None => println!("      C reference: libargon2.so.1 not installed"),
    }
}

/// Resident memory against one baseline: the provider-up server idle on an empty database
/// (`idle`), after its load (`loaded`), and a server working through `rows` pending
/// registrations (provider up, 50 ms an answer), its largest figure over 20 s of the drain.
async fn memory_line(
    postgres: Option<&str>,
    rows: usize,
    idle: f64,
    loaded: f64,
    settle: Duration,
) {
    let url = fresh_database(postgres).await;
    seed_registrations(&url, rows).await;
    let port = free_port();
    let _provider = provider(port, 50, None).await;
    let (backlog_server, _) = server(&url, port, Hashing::Cheap).await;
    let mut largest = f64::NAN;
    let until = Instant::now() + 2 * settle;
    while Instant::now() < until {
        largest = largest.max(backlog_server.rss_mib());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(backlog_server);
    let db = connect(&url).await;
    let delivered = count_delivered(&db).await;
    let _ = db.close().await;
    println!(
        "  {:<34} idle {idle:.1} MiB (the baseline); after the load {loaded:.1} MiB ({:.2}); \
         draining {rows} pending {largest:.1} MiB at most ({:.2}, {delivered} delivered in {:.0} s)",
        "resident memory",
        loaded / idle,
        largest / idle,
        (2 * settle).as_secs_f64()
    );
}

/// OWASP hashing offered 4 × what saturates the server's hashing threads: 256 connections
/// (2 × 64 per core), where the OWASP line's 64 already keep both threads busy. The shipped
/// shedding (`max_waiting` 64 per core, deadline 5 s), against the queueing before it
/// (`max_waiting` so large that nothing is shed, and no deadline).
async fn overload(postgres: Option<&str>) {
    let provider_port = free_port();
    let _up = provider(provider_port, 0, None).await;
    let requests = env_or("BENCH_FLOOD_REQUESTS", 3000);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let connections = env_or("BENCH_FLOOD_CONCURRENCY", 2 * 64 * cores);
    // "Before": nothing shed and no deadline, as the server queued before SPEC §4.7.
    for (name, max_waiting, deadline) in [
        ("OWASP flood, shedding (default)", "0", "5s"),
        ("OWASP flood, queueing (before)", "1000000", "1h"),
    ] {
        let url = fresh_database(postgres).await;
        let (_server, base) = server_with(
            &url,
            provider_port,
            Hashing::Owasp,
            &[
                ("SIGNUP_PASSWORD__MAX_WAITING", max_waiting),
                ("SIGNUP_REGISTRATION__DEADLINE", deadline),
            ],
        )
        .await;
        load(&base, 20, 8, 1_000_000).await; // warm-up
        let result = flood(&base, requests, connections, 0).await;
        flood_line(&format!("{name}, {connections} conns"), &result);
    }
}

fn main() {
    actix_web::rt::System::new().block_on(async {
        signup::startup::install_crypto_provider();
        println!(
            "signup load benchmark: {} cores; release binary {BIN}",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        run("SQLite (WAL, synchronous=FULL)", None).await;
        remove_databases(None).await;
        match std::env::var("BENCH_POSTGRES_URL") {
            Ok(admin) => {
                run("PostgreSQL", Some(&admin)).await;
                remove_databases(Some(&admin)).await;
            }
            Err(_) => println!(
                "\nPostgreSQL: skipped (set BENCH_POSTGRES_URL to a role that may create databases)"
            ),
        }
    });
}
