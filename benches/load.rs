//! `cargo bench --bench load`: registrations/s and latency with the email provider up, down,
//! refusing connections and slow, and the drain rate after an outage. Everything runs on this
//! machine, on loopback: the server (in-process, on a temp SQLite file, or PostgreSQL with
//! `BENCH_DATABASE_URL`), the provider (`signup mock-provider`'s code, in-process) and the client.
//!
//! Knobs: BENCH_REQUESTS (default 2000), BENCH_CONCURRENCY (32), BENCH_OWASP=1 (OWASP argon2
//! parameters instead of m=1024 KiB, t=1).

use std::net::TcpListener;
use std::time::{Duration, Instant};

use entity::email_outbox;
use futures::StreamExt;
use sea_orm::{ColumnTrait, Database, EntityTrait, PaginatorTrait, QueryFilter};
use secrecy::SecretString;
use signup::configuration::Settings;
use signup::mock_provider::{MockOptions, run as run_mock};
use signup::startup::Application;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

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

/// Starts a mock provider on a free port; returns its base URL.
async fn mock(latency: Duration, status: Option<u16>) -> String {
    let port = free_port();
    let options = MockOptions {
        bind: format!("127.0.0.1:{port}"),
        secret: Some(SECRET.into()),
        fail_rate: 0.0,
        latency,
        status,
        quiet: true,
    };
    actix_web::rt::spawn(async move { run_mock(options).await });
    let base = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    base
}

struct Server {
    base: String,
    database_url: String,
    _dir: tempfile::TempDir,
}

async fn server(provider: &str) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let database_url = std::env::var("BENCH_DATABASE_URL")
        .unwrap_or_else(|_| format!("sqlite://{}", dir.path().join("bench.db").display()));
    let mut settings = Settings::default();
    settings.server.bind = "127.0.0.1:0".into();
    settings.database.url = SecretString::from(database_url.clone());
    settings.database.max_connections = 16;
    settings.rate_limit.per_minute = 0;
    if std::env::var("BENCH_OWASP").is_err() {
        settings.password.argon2_m_kib = 1024;
        settings.password.argon2_t = 1;
    }
    settings.email_sync.url = format!("{provider}/webhook");
    settings.email_sync.secret = Some(SecretString::from(SECRET));
    settings.email_sync.poll_interval = Duration::from_millis(500);
    settings.email_sync.circuit_breaker.open_for = Duration::from_secs(1);
    settings.email_sync.timeout = Duration::from_secs(10);
    settings.log.level = "error".into();
    signup::telemetry::init(&settings.log);
    let app = Application::build(settings)
        .await
        .expect("the server starts");
    let base = format!("http://127.0.0.1:{}", app.port());
    actix_web::rt::spawn(app.run_until_stopped());
    Server {
        base,
        database_url,
        _dir: dir,
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
    let client = reqwest::Client::new();
    let url = format!("{base}/api/v1/registrations");
    let started = Instant::now();
    let results: Vec<(Duration, bool)> = futures::stream::iter(0..requests)
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
                let ok = client
                    .post(&url)
                    .json(&body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().as_u16() == 201);
                (t.elapsed(), ok)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let mut latencies: Vec<Duration> = results.iter().map(|(d, _)| *d).collect();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Report {
        per_second: requests as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
        errors: results.iter().filter(|(_, ok)| !ok).count(),
    }
}

fn print(name: &str, r: &Report) {
    println!(
        "{name:<28} {:>9.0} reg/s   p50 {:>7.2} ms   p99 {:>7.2} ms   errors {}",
        r.per_second,
        r.p50.as_secs_f64() * 1e3,
        r.p99.as_secs_f64() * 1e3,
        r.errors
    );
}

async fn delivered(database_url: &str) -> u64 {
    let Ok(db) = Database::connect(database_url).await else {
        return 0;
    };
    email_outbox::Entity::find()
        .filter(email_outbox::Column::Status.eq(email_outbox::Status::Delivered))
        .count(&db)
        .await
        .unwrap_or(0)
}

fn main() {
    actix_web::rt::System::new().block_on(async {
        signup::startup::install_crypto_provider();
        let requests = env_or("BENCH_REQUESTS", 2000);
        let concurrency = env_or("BENCH_CONCURRENCY", 32);
        println!("signup load: {requests} registrations per scenario, {concurrency} concurrent, cores: {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()));

        let scenarios: Vec<(&str, String)> = vec![
            ("provider up", mock(Duration::ZERO, None).await),
            ("provider down (503)", mock(Duration::ZERO, Some(503)).await),
            ("provider refusing", format!("http://127.0.0.1:{}", free_port())),
            ("provider slow (2 s)", mock(Duration::from_secs(2), None).await),
        ];
        let mut up_p99 = None;
        for (name, provider) in &scenarios {
            let server = server(provider).await;
            load(&server.base, 200, concurrency, 1_000_000).await; // warm-up
            let report = load(&server.base, requests, concurrency, 0).await;
            print(name, &report);
            match up_p99 {
                None => up_p99 = Some(report.p99),
                Some(up) => println!("{:<28} p99 / p99(up) = {:.2}", "", report.p99.as_secs_f64() / up.as_secs_f64()),
            }
        }

        // Drain: register during an outage (nothing listens), then bring the provider up with
        // 50 ms latency and measure deliveries/s between 10 % and 90 % of the backlog.
        let latency = Duration::from_millis(50);
        let port = free_port();
        let provider = format!("http://127.0.0.1:{port}");
        let server = server(&provider).await;
        load(&server.base, requests, concurrency, 0).await;
        let options = MockOptions {
            bind: format!("127.0.0.1:{port}"),
            secret: Some(SECRET.into()),
            fail_rate: 0.0,
            latency,
            status: None,
            quiet: true,
        };
        actix_web::rt::spawn(async move { run_mock(options).await });
        let backlog = requests as u64 + 200;
        let (low, high) = (backlog / 10, backlog * 9 / 10);
        let mut t_low = None;
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut last = 0;
        while Instant::now() < deadline {
            last = delivered(&server.database_url).await;
            if t_low.is_none() && last >= low {
                t_low = Some((Instant::now(), last));
            }
            if last >= high {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        match t_low {
            Some((t, from)) if last >= high => {
                let rate = (last - from) as f64 / t.elapsed().as_secs_f64();
                let bound = 16.0 / latency.as_secs_f64();
                println!(
                    "{:<28} {rate:>9.0} deliveries/s   bound max_in_flight/latency = {bound:.0}/s   ratio {:.2}",
                    "drain after outage", rate / bound
                );
            }
            _ => println!("drain after outage: only {last} of {backlog} delivered in 300 s"),
        }
    });
}
