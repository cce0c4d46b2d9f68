//! Building the application: connect, migrate, start the actors (once, outside the HTTP
//! server's per-worker factory), bind, serve.

use std::net::TcpListener;
use std::sync::Arc;

use actix::{Addr, Arbiter, Supervisor};
use actix_web::dev::Server;
use actix_web::middleware::DefaultHeaders;
use actix_web::{App, HttpServer, web};
use sea_orm::{DatabaseConnection, DbErr};

use crate::actors::{CommitWatch, DeliveryHook, Drain, EmailSyncActor, RegistrationActor};
use crate::budget::{Budget, Shared};
use crate::configuration::ProviderKind;
use crate::configuration::Settings;
use crate::database::{self, WriteTurns};
use crate::email::provider::{Brevo, Mailchimp, Mailgun, Paced, Resend, Sendgrid};
use crate::email::{CircuitState, Provider, WebhookProvider};
use crate::hashing::{HashError, PasswordHasher};
use crate::metrics::Metrics;
use crate::registrar::Registrar;
use crate::routes::csrf::{CookiePolicy, CsrfKey};
use crate::routes::{self, AppState};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Database(#[from] database::DatabaseError),
    #[error("the database cannot be written (database.url): {0}")]
    ReadOnly(#[source] DbErr),
    #[error("cannot apply migrations to the database (database.url): {0}")]
    Migrate(#[source] DbErr),
    #[error("cannot listen on {addr} (server.bind): {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Hashing(#[from] HashError),
    #[error("cannot create the metrics registry: {0}")]
    Metrics(#[source] prometheus::Error),
    #[error("cannot build the email provider client: {0}")]
    Provider(#[source] reqwest::Error),
    #[error("cannot read or store the server's keys (database.url): {0}")]
    ServerKey(#[source] DbErr),
}

/// Connections of the EmailSyncActor's own pool. Its database work is one claim at a time, one
/// write of outcomes at a time, and the gauge refresh and retention sweep now and then: four
/// lets all of them run at once without taking connections from the request path's pool.
const EMAIL_SYNC_CONNECTIONS: u32 = 4;

/// SQLite page cache per connection of the EmailSyncActor's pool (SQLite's default is 2 MiB).
/// Its queries walk the outbox's indexes, not whole tables: 128 KiB holds their hot pages, and
/// with a backlog of a million rows the default let each connection keep 2 MiB it did not
/// need (measured in the benchmark's memory line).
const EMAIL_SYNC_CACHE_KIB: u32 = 128;

/// Seams for tests; all empty in production.
#[derive(Default, Clone)]
pub struct Hooks {
    /// Runs in each delivery task before its attempt.
    pub before_delivery: Option<DeliveryHook>,
}

/// A built, bound, not yet running server.
pub struct Application {
    port: u16,
    server: Server,
    db: DatabaseConnection,
    metrics: Arc<Metrics>,
    /// Drained after the HTTP server stops.
    email_sync: Addr<EmailSyncActor>,
    /// The SQLite writers' turns, shared by the RegistrationActor and the email sync.
    write_turns: WriteTurns,
    /// How long in-flight work may take to finish at shutdown.
    shutdown_grace: std::time::Duration,
    /// Halts the email sync when the server's future ends or is dropped.
    email_sync_halt: HaltOnDrop,
    /// Whether the database file is the one opened (SQLite), for the reopen watch.
    commit_watch: Arc<CommitWatch>,
    /// What it takes to build this application again on the same socket (a reopen).
    rebuild: Rebuild,
}

/// The settings, test seams and a handle on the bound socket: a reopen builds the application
/// again from these, and the socket stays bound (connections wait in its backlog) meanwhile.
struct Rebuild {
    settings: Settings,
    hooks: Hooks,
    listener: TcpListener,
}

/// How one run of the server ended.
enum Ended {
    /// Shut down (a signal, or the shutdown future).
    Stopped,
    /// The database file was replaced and the right one is back: build again on it.
    Reopen,
}

/// How often a server whose database file is not the one it opened looks for the right one.
const REOPEN_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Halts the EmailSyncActor on drop: it lives on an Arbiter of its own and would otherwise
/// outlive its server (in tests, where several apps run in one process). The Arbiter is not
/// stopped: tearing its runtime down under in-flight database futures would make them drop
/// pooled connections outside any runtime (a panic in a destructor). Halted, the actor starts
/// no work, cancels its HTTP requests and releases their claims on its own thread.
struct HaltOnDrop(Addr<EmailSyncActor>);

impl Drop for HaltOnDrop {
    fn drop(&mut self) {
        self.0.do_send(Drain {
            grace: std::time::Duration::ZERO,
        });
    }
}

impl Application {
    /// Connects, migrates and binds. Must run inside an actix `System` (`#[actix_web::main]`,
    /// `#[actix_web::test]`).
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        Self::build_with_hooks(settings, Hooks::default()).await
    }

    /// As [`build`](Self::build), with test seams.
    pub async fn build_with_hooks(settings: Settings, hooks: Hooks) -> Result<Self, StartupError> {
        Self::build_on(settings, hooks, None).await
    }

    /// As [`build_with_hooks`](Self::build_with_hooks), on `listener` if given (a reopen keeps
    /// its socket), else binding `server.bind`.
    async fn build_on(
        settings: Settings,
        hooks: Hooks,
        listener: Option<TcpListener>,
    ) -> Result<Self, StartupError> {
        // Migrations may take longer than a registration's deadline: a pool of their own,
        // without the request pool's statement timeouts.
        let migrator = database::connect(&settings.database)
            .await
            .map_err(StartupError::Database)?;
        database::migrate(&migrator)
            .await
            .map_err(StartupError::Migrate)?;
        migrator.close().await.map_err(StartupError::Migrate)?;
        let db = database::connect_with(
            &settings.database,
            &database::PoolTuning {
                statement_timeout: Some(settings.registration.deadline),
                ..Default::default()
            },
        )
        .await
        .map_err(StartupError::Database)?;
        database::check_writable(&db)
            .await
            .map_err(StartupError::ReadOnly)?;
        Self::build_with_db_on(settings, db, hooks, listener).await
    }

    async fn build_with_db_on(
        settings: Settings,
        db: DatabaseConnection,
        hooks: Hooks,
        listener: Option<TcpListener>,
    ) -> Result<Self, StartupError> {
        install_crypto_provider();
        let listener = match listener {
            Some(listener) => listener,
            None => {
                TcpListener::bind(settings.server.bind).map_err(|source| StartupError::Bind {
                    addr: settings.server.bind,
                    source,
                })?
            }
        };
        let kept = listener.try_clone().map_err(|source| StartupError::Bind {
            addr: settings.server.bind,
            source,
        })?;
        let rebuild_hooks = hooks.clone();
        let port = listener
            .local_addr()
            .map_err(|source| StartupError::Bind {
                addr: settings.server.bind,
                source,
            })?
            .port();

        // Started here, once: an actor started inside the HttpServer factory would exist once
        // per worker, and registrations would no longer be serialized.
        let metrics = Arc::new(Metrics::new().map_err(StartupError::Metrics)?);
        // A pool of its own: the email sync can neither exhaust the request path's connections
        // nor share their I/O driver (a sqlx connection's socket belongs to the runtime that
        // opened it, and each Arbiter runs its own).
        let sync_db = database::connect_with(
            &settings.database,
            &database::PoolTuning {
                max_connections: Some(EMAIL_SYNC_CONNECTIONS),
                sqlite_cache_kib: Some(EMAIL_SYNC_CACHE_KIB),
                statement_timeout: None,
            },
        )
        .await?;
        let (circuit_tx, circuit) = tokio::sync::watch::channel(CircuitState::Closed);
        // One set of turns for both writers of the same SQLite file.
        let turns = WriteTurns::for_database(&db);
        let email_sync = start_email_sync(
            &settings,
            sync_db,
            circuit_tx,
            Arc::clone(&metrics),
            hooks,
            turns.clone(),
        )?;
        let commit_watch = Arc::new(CommitWatch::watching(crate::db_file::DbFile::of(&db)));
        let registrations = RegistrationActor::new(
            db.clone(),
            settings.registration.max_batch,
            email_sync.clone().recipient(),
            Arc::clone(&metrics),
            Arc::clone(&commit_watch),
            turns.clone(),
        )
        .launch();
        let csrf = CsrfKey::load_or_create(&db)
            .await
            .map_err(StartupError::ServerKey)?;
        if let Some(file) = commit_watch.file() {
            // A file put back at the path must hold this database's key.
            file.remember_key(csrf.bytes());
        }
        let watched = Arc::clone(&commit_watch);
        let cookies = CookiePolicy {
            secure: settings
                .server
                .public_url
                .as_ref()
                .is_some_and(|url| url.scheme() == "https"),
        };
        let limiter = crate::rate_limit::ClientLimiter::new(&settings.rate_limit).map(Arc::new);
        let sign_in_limiter = Arc::new(crate::rate_limit::ClientLimiter::sign_in());
        let state = AppState {
            db: db.clone(),
            registrar: Registrar {
                hasher: PasswordHasher::new(&settings.password)?,
                registrations,
                metrics: Arc::clone(&metrics),
                db: db.clone(),
                deadline: settings.registration.deadline,
            },
            metrics: Arc::clone(&metrics),
            email_sync: email_sync.clone().recipient(),
            admin_token: settings.admin.token.clone(),
            limiter: limiter.clone(),
            sign_in_limiter: Arc::clone(&sign_in_limiter),
            trusted_proxies: settings.server.trusted_proxies.clone(),
            request_timeout: settings.server.request_timeout,
            csrf,
            cookies,
            deadline: settings.registration.deadline,
            commit_watch,
            circuit,
            inbound: crate::consent::Inbound::from_settings(
                &settings.email_sync,
                crate::outbox::ContactKey::load_or_create(&db)
                    .await
                    .map_err(StartupError::ServerKey)?,
                turns.clone(),
            ),
        };

        let max_body = settings.server.max_body_bytes.get();
        let data = web::Data::new(state);
        let server = HttpServer::new(move || {
            App::new()
                .wrap(actix_web::middleware::from_fn(routes::observe))
                .wrap(
                    DefaultHeaders::new()
                        .add(("X-Content-Type-Options", "nosniff"))
                        .add(("Referrer-Policy", "no-referrer"))
                        .add(("X-Frame-Options", "DENY"))
                        .add((
                            "Content-Security-Policy",
                            "default-src 'none'; frame-ancestors 'none'",
                        )),
                )
                .app_data(data.clone())
                .configure(|cfg| routes::configure(cfg, max_body))
        })
        .workers(settings.workers())
        .shutdown_timeout(settings.server.shutdown_grace.as_secs())
        // Headers must arrive within request_timeout (bodies: see routes::limits).
        .client_request_timeout(settings.server.request_timeout)
        // Signals are handled in `run_until_stopped`, which drains the email sync after the
        // HTTP server: actix-server's own handling would stop the whole System first.
        .disable_signals()
        .listen(listener)
        .map_err(|source| StartupError::Bind {
            addr: settings.server.bind,
            source,
        })?
        .run();
        Ok(Self {
            port,
            server,
            db,
            metrics,
            email_sync_halt: HaltOnDrop(email_sync.clone()),
            email_sync,
            write_turns: turns,
            shutdown_grace: settings.server.shutdown_grace,
            commit_watch: watched,
            rebuild: Rebuild {
                settings,
                hooks: rebuild_hooks,
                listener: kept,
            },
        })
    }

    /// The bound port (useful with `bind = "127.0.0.1:0"`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The application's database connection.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// The EmailSyncActor, for tests that wake it, drain it or sweep its outbox.
    pub fn email_sync(&self) -> Addr<EmailSyncActor> {
        self.email_sync.clone()
    }

    /// This process's turns at writing to SQLite (a test holds one to see who waits for it).
    pub fn write_turns(&self) -> WriteTurns {
        self.write_turns.clone()
    }

    /// The application's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Serves until SIGTERM/SIGINT (or the server handle is stopped): then stops accepting,
    /// lets in-flight requests finish (up to `server.shutdown_grace`), and drains the email
    /// sync: in-flight deliveries finish within the same grace, the rest are released.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// As [`run_until_stopped`](Self::run_until_stopped), with the shutdown signal given as a
    /// future.
    ///
    /// On SQLite, if the database file was removed or replaced under the server and the right
    /// one is back at the path (the same database, whole), the server stops as for a shutdown
    /// and builds itself again on it, on the same socket (see [`crate::db_file`]).
    pub(crate) async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<()> {
        let mut app = self;
        tokio::pin!(shutdown);
        loop {
            let Rebuild {
                settings,
                hooks,
                listener,
            } = match app.run_once(shutdown.as_mut()).await? {
                (Ended::Stopped, _) => return Ok(()),
                (Ended::Reopen, rebuild) => rebuild,
            };
            tracing::warn!("the right database file is back at database.url: reopening it");
            app = Self::build_on(settings, hooks, Some(listener))
                .await
                .map_err(std::io::Error::other)?;
            tracing::info!("reopened the database file; serving again");
        }
    }

    /// Serves until the shutdown future ends or a reopen is due; then stops as for a shutdown.
    async fn run_once(
        self,
        shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> std::io::Result<(Ended, Rebuild)> {
        let _halt = self.email_sync_halt;
        let handle = self.server.handle();
        let mut server = self.server;
        let watch = self.commit_watch;
        let reopen = async move {
            loop {
                tokio::time::sleep(REOPEN_POLL).await;
                let Some(file) = watch.file() else {
                    return std::future::pending::<()>().await;
                };
                if watch.file_ok().is_err() && file.replacement_ready().await {
                    return;
                }
            }
        };
        let ended = tokio::select! {
            result = &mut server => {
                result?;
                return Ok((Ended::Stopped, self.rebuild));
            }
            () = shutdown => {
                tracing::info!("shutting down: no new connections; finishing requests in flight");
                Ended::Stopped
            }
            () = reopen => Ended::Reopen,
        };
        // Graceful: in-flight requests get up to server.shutdown_grace. The server future
        // itself carries out the stop, so both are awaited together.
        let (_, result) = tokio::join!(handle.stop(true), &mut server);
        result?;
        let grace = self.shutdown_grace;
        let drained = self.email_sync.send(Drain { grace });
        if tokio::time::timeout(grace + std::time::Duration::from_secs(5), drained)
            .await
            .is_err()
        {
            tracing::warn!(
                "email sync did not drain in time; unreleased claims expire after email_sync.lease"
            );
        }
        if matches!(ended, Ended::Reopen) {
            // Its connections hold the old, unlinked file open: let them go before the new
            // pool opens the path (the email sync's pool goes with its halted actor).
            let closing = self.db.close();
            if tokio::time::timeout(grace, closing).await.is_err() {
                tracing::warn!("the old database pool did not close in time");
            }
        }
        Ok((ended, self.rebuild))
    }
}

/// One TLS crypto provider (ring) for the whole binary, installed before any client is built.
pub fn install_crypto_provider() {
    // Err means one is installed already (a second app in the same test process).
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Starts the EmailSyncActor on an Arbiter (thread) of its own, under a Supervisor: its
/// mailbox, timers, retries and circuit breaker never share a thread with the request path.
fn start_email_sync(
    settings: &Settings,
    db: DatabaseConnection,
    circuit: tokio::sync::watch::Sender<CircuitState>,
    metrics: Arc<Metrics>,
    hooks: Hooks,
    turns: WriteTurns,
) -> Result<Addr<EmailSyncActor>, StartupError> {
    let sync = settings.email_sync.clone();
    let key = match sync.secret.clone() {
        Some(key) => key,
        None => {
            tracing::warn!(
                "email_sync.secret is not set: webhooks are signed with a random key the provider cannot verify; \
                 set SIGNUP_EMAIL_SYNC__SECRET=whsec_..."
            );
            crate::email::webhook::WebhookKey::random()
        }
    };
    let per_second = sync.requests_per_second();
    // Several instances may share a PostgreSQL: the provider's budget is theirs together
    // (SPEC §3.6). SQLite is one process.
    let budget = if crate::database::is_postgres(&db) {
        Budget::shared(Shared::new(
            db.clone(),
            sync.kind.as_str(),
            sync.in_flight(),
            per_second,
            sync.lease,
            sync.timeout,
        ))
    } else {
        Budget::local(per_second)
    };
    let provider = Arc::new(Paced::new(provider_of(&sync, key)?, budget));
    let arbiter = Arbiter::new();
    let addr = Supervisor::start_in_arbiter(&arbiter.handle(), move |_| {
        EmailSyncActor::new(
            db,
            provider,
            sync,
            circuit,
            metrics,
            hooks.before_delivery,
            turns,
        )
    });
    Ok(addr)
}

/// The provider `email_sync.kind` names, built from its settings as deliveries use it;
/// `key` signs the webhook kind's requests.
pub(crate) fn provider_of(
    sync: &crate::configuration::EmailSyncSettings,
    key: crate::email::webhook::WebhookKey,
) -> Result<Provider, StartupError> {
    match sync.kind {
        ProviderKind::Webhook => {
            WebhookProvider::new(sync.url.clone(), key, sync.timeout).map(Provider::Webhook)
        }
        ProviderKind::Brevo => Brevo::from_settings(&sync.brevo, sync.timeout).map(Provider::Brevo),
        ProviderKind::Resend => {
            Resend::from_settings(&sync.resend, sync.timeout).map(Provider::Resend)
        }
        ProviderKind::Mailchimp => {
            Mailchimp::from_settings(&sync.mailchimp, sync.timeout).map(Provider::Mailchimp)
        }
        ProviderKind::Sendgrid => {
            Sendgrid::from_settings(&sync.sendgrid, sync.timeout).map(Provider::Sendgrid)
        }
        ProviderKind::Mailgun => {
            Mailgun::from_settings(&sync.mailgun, sync.timeout).map(Provider::Mailgun)
        }
    }
    .map_err(StartupError::Provider)
}

/// Resolves on SIGTERM or SIGINT.
pub(crate) async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the server");
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
