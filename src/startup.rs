//! Building the application: connect, migrate, start the actors (once, outside the HTTP
//! server's per-worker factory), bind, serve.

use std::net::TcpListener;

use actix::{Actor, Addr};
use actix_web::dev::Server;
use actix_web::middleware::DefaultHeaders;
use actix_web::{App, HttpServer, web};
use sea_orm::{DatabaseConnection, DbErr};

use crate::actors::RegistrationActor;
use crate::actors::email_sync::PendingOnlyActor;
use crate::configuration::Settings;
use crate::database;
use crate::hashing::{HashError, PasswordHasher};
use crate::registration::Registrar;
use crate::routes::{self, AppState};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot open the database: {0}")]
    Database(#[source] DbErr),
    #[error("cannot apply migrations: {0}")]
    Migrate(#[source] DbErr),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Hashing(#[from] HashError),
}

/// A built, bound, not yet running server.
pub struct Application {
    port: u16,
    server: Server,
    db: DatabaseConnection,
}

impl Application {
    /// Connects, migrates and binds. Must run inside an actix `System` (`#[actix_web::main]`,
    /// `#[actix_web::test]`).
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let db = database::connect(&settings.database)
            .await
            .map_err(StartupError::Database)?;
        database::migrate(&db)
            .await
            .map_err(StartupError::Migrate)?;
        Self::build_with_db(settings, db).await
    }

    /// As [`build`](Self::build), on an already migrated connection.
    pub async fn build_with_db(
        settings: Settings,
        db: DatabaseConnection,
    ) -> Result<Self, StartupError> {
        let listener =
            TcpListener::bind(&settings.server.bind).map_err(|source| StartupError::Bind {
                addr: settings.server.bind.clone(),
                source,
            })?;
        let port = listener
            .local_addr()
            .map_err(|source| StartupError::Bind {
                addr: settings.server.bind.clone(),
                source,
            })?
            .port();

        // Started here, once: an actor started inside the HttpServer factory would exist once
        // per worker, and registrations would no longer be serialized.
        let email_sync = PendingOnlyActor.start().recipient();
        let registration_actor: Addr<RegistrationActor> =
            RegistrationActor::new(db.clone(), settings.registration.max_batch, email_sync).start();
        let state = AppState {
            db: db.clone(),
            registrar: Registrar {
                hasher: PasswordHasher::new(&settings.password)?,
                actor: registration_actor.clone(),
            },
            registration_actor,
        };

        let max_body = settings.server.max_body_bytes;
        let data = web::Data::new(state);
        let server = HttpServer::new(move || {
            App::new()
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
        .listen(listener)
        .map_err(|source| StartupError::Bind {
            addr: settings.server.bind.clone(),
            source,
        })?
        .run();
        Ok(Self { port, server, db })
    }

    /// The bound port (useful with `bind = "127.0.0.1:0"`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The application's database connection.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Serves until SIGTERM/SIGINT (or the server handle is stopped).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}
