//! Connecting to SQLite or PostgreSQL, and applying migrations.

use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr, SqliteTransactionMode,
    TransactionOptions, TransactionTrait,
};
use secrecy::ExposeSecret;

use crate::configuration::DatabaseSettings;

/// How long a SQLite statement waits for another connection's write lock before failing.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens the pool. On SQLite the file is created if missing and put in WAL mode, so readers
/// (readiness, the email sync) never wait for the RegistrationActor's writes.
pub async fn connect(settings: &DatabaseSettings) -> Result<DatabaseConnection, DatabaseError> {
    connect_with_cache(settings, None).await
}

/// As [`connect`], with SQLite's page cache per connection capped at `cache_kib` (default
/// 2 MiB). The email sync's pool scans the outbox index for its gauges; with a big backlog
/// every one of its connections would otherwise keep 2 MiB of pages it rarely needs again.
pub async fn connect_with_cache(
    settings: &DatabaseSettings,
    cache_kib: Option<u32>,
) -> Result<DatabaseConnection, DatabaseError> {
    let url = settings.url.expose_secret();
    // Create a missing file, unless the URL chose a mode itself (`?mode=ro` must stay read-only
    // so that `check_writable` can refuse it).
    let create = !url.contains("mode=");
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(settings.max_connections)
        .min_connections(1)
        .acquire_timeout(settings.acquire_timeout)
        .connect_timeout(settings.acquire_timeout)
        // Statements are logged by our own spans; sqlx's per-statement lines are noise.
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(move |opts| {
            let opts = opts
                .create_if_missing(create)
                .journal_mode(SqliteJournalMode::Wal)
                // FULL: a commit is on disk before the 201 is sent, even across a power cut.
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
                .foreign_keys(true);
            match cache_kib {
                // Negative: a size in KiB rather than in pages.
                Some(kib) => opts.pragma("cache_size", format!("-{kib}")),
                None => opts,
            }
        });
    Database::connect(options)
        .await
        .map_err(|source| DatabaseError::Connect {
            url: redacted(settings.url.expose_secret()),
            source,
        })
}

#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// The file or server cannot be opened (missing directory, read-only file, refused, bad
    /// credentials…). The message names the database, without its password.
    #[error("cannot open the database {url} (database.url): {source}")]
    Connect { url: String, source: DbErr },
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub fn redacted(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => match rest[..at].find(':') {
            Some(colon) => format!(
                "{}{}:***{}",
                &url[..scheme_end],
                &rest[..colon],
                &rest[at..]
            ),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// Fails if the database cannot be written (a read-only SQLite file or mount, `?mode=ro`, a
/// PostgreSQL standby): better a clear start-up error than every registration answered 503.
/// Run after migrating: it rewrites the migration table's rows in place and rolls back.
pub async fn check_writable(db: &DatabaseConnection) -> Result<(), DbErr> {
    let txn = db
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        })
        .await?;
    let touched = txn
        .execute_unprepared("UPDATE seaql_migrations SET applied_at = applied_at")
        .await;
    txn.rollback().await?;
    touched.map(|_| ())
}

/// Applies every pending migration.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    Migrator::up(db, None).await
}

/// True for PostgreSQL, false for SQLite.
pub fn is_postgres(db: &DatabaseConnection) -> bool {
    matches!(
        db.get_database_backend(),
        sea_orm::DatabaseBackend::Postgres
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted_from_database_urls() {
        assert_eq!(
            super::redacted("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(super::redacted("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(super::redacted("sqlite://signup.db"), "sqlite://signup.db");
    }
}
