//! Connecting to SQLite or PostgreSQL, and applying migrations.

use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::sqlx::{self, Postgres, Sqlite};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr, SqliteTransactionMode,
    TransactionOptions, TransactionTrait,
};
use secrecy::ExposeSecret;

use crate::configuration::DatabaseSettings;

/// How long a SQLite statement waits for another connection's write lock before failing.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

mod turns;
pub use turns::{Turn, WriteTurns, Writes};

/// Opens a pool with no statement timeouts, for migrations and the command line. On SQLite the
/// file is created if missing and put in WAL mode, so readers (readiness, the email sync) never
/// wait for the RegistrationActor's writes.
pub async fn connect(settings: &DatabaseSettings) -> Result<DatabaseConnection, DatabaseError> {
    connect_with(settings, &PoolTuning::default()).await
}

/// What one pool needs beyond [`DatabaseSettings`].
#[derive(Debug, Clone, Default)]
pub(crate) struct PoolTuning {
    /// Pool size instead of `database.max_connections`.
    pub max_connections: Option<u32>,
    /// SQLite's page cache per connection in KiB (default 2 MiB). The email sync's pool scans
    /// the outbox index for its gauges; with a big backlog every one of its connections would
    /// otherwise keep 2 MiB of pages it rarely needs again.
    pub sqlite_cache_kib: Option<u32>,
    /// How long a statement may wait: PostgreSQL's `statement_timeout` and `lock_timeout`,
    /// and SQLite's busy timeout (at most [`SQLITE_BUSY_TIMEOUT`]). A statement stuck behind a
    /// lock or a stalled server then fails instead of holding the RegistrationActor's single
    /// commit turn far beyond `registration.deadline`.
    pub statement_timeout: Option<Duration>,
}

/// Opens a pool tuned by `tuning`.
///
/// Every pool closes a connection that comes back to it still inside a transaction (see
/// [`close_if_in_transaction`]): after a failed COMMIT or ROLLBACK such a connection would
/// otherwise be handed out again, and sea-orm would run the next "transaction" on it as a
/// savepoint of one that never ends.
pub(crate) async fn connect_with(
    settings: &DatabaseSettings,
    tuning: &PoolTuning,
) -> Result<DatabaseConnection, DatabaseError> {
    let url = settings.url.expose_secret();
    // Create a missing file, unless the URL chose a mode itself (`?mode=ro` must stay read-only
    // so that `check_writable` can refuse it).
    let create = !url.contains("mode=");
    let cache_kib = tuning.sqlite_cache_kib;
    let busy_timeout = tuning
        .statement_timeout
        .map_or(SQLITE_BUSY_TIMEOUT, |t| t.min(SQLITE_BUSY_TIMEOUT));
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(
            tuning
                .max_connections
                .unwrap_or(settings.max_connections.get()),
        )
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
                .busy_timeout(busy_timeout)
                .foreign_keys(true)
                // Deleted content is zeroed, not only unlinked: erasure leaves no bytes (SPEC §6).
                .pragma("secure_delete", "ON");
            match cache_kib {
                // Negative: a size in KiB rather than in pages.
                Some(kib) => opts.pragma("cache_size", format!("-{kib}")),
                None => opts,
            }
        })
        // SQLite runs the rollback that dropping a transaction queued on its worker thread:
        // wait for it (a ping, in-process) before judging; PostgreSQL's drop lowers the depth at
        // once. No ping before handing a SQLite connection out (sqlx's default): it lives in
        // this process, and each ping costs two thread wake-ups per registration batch.
        .map_sqlx_sqlite_pool_opts(|pool| {
            pool.test_before_acquire(false)
                .after_release(|conn, _| Box::pin(close_if_in_transaction::<Sqlite>(conn, true)))
        })
        .map_sqlx_postgres_pool_opts(|pool| {
            pool.after_release(|conn, _| Box::pin(close_if_in_transaction::<Postgres>(conn, false)))
        });
    if let Some(timeout) = tuning.statement_timeout {
        let ms = timeout.as_millis().to_string();
        options.map_sqlx_postgres_opts(move |opts| {
            opts.options([
                ("statement_timeout", ms.as_str()),
                ("lock_timeout", ms.as_str()),
            ])
        });
    }
    Database::connect(options)
        .await
        .map_err(|source| DatabaseError::Connect {
            url: redacted(settings.url.expose_secret()),
            source,
        })
}

/// The pools' `after_release` check: `Ok(false)` (close it) for a connection that is still in
/// a transaction once its queued statements have run.
///
/// How that happens: SQLite rolls a transaction back by itself when its COMMIT fails with
/// SQLITE_FULL or SQLITE_IOERR (disk full, I/O error); the ROLLBACK that follows then fails
/// ("no transaction is active"); sqlx lowers its transaction depth only after a *successful*
/// COMMIT or ROLLBACK, so the connection believes it is still inside a transaction. Handed out
/// again, sea-orm's next BEGIN becomes a SAVEPOINT, its COMMIT a RELEASE, and registrations are
/// acknowledged that no transaction ever ends, while the write lock stays held. A lost
/// PostgreSQL connection fails the ping and is closed by sqlx itself.
async fn close_if_in_transaction<DB>(
    conn: &mut DB::Connection,
    settle_first: bool,
) -> Result<bool, sqlx::Error>
where
    DB: sqlx::Database,
{
    use sqlx::Connection;
    // A transaction that was committed or rolled back has left depth 0 already; only one that
    // was dropped (rollback queued, depth still 1) or whose COMMIT failed is in doubt.
    if settle_first && conn.is_in_transaction() {
        // Runs the rollback that dropping the transaction queued, so the state below is settled.
        conn.ping().await?;
    }
    if conn.is_in_transaction() {
        tracing::warn!(
            "closing a database connection whose COMMIT or ROLLBACK failed (disk full? I/O error?)"
        );
        return Ok(false);
    }
    Ok(true)
}

#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// The file or server cannot be opened (missing directory, read-only file, refused, bad
    /// credentials…). The message names the database, without its password.
    #[error("cannot open the database {url} (database.url): {source}")]
    Connect { url: String, source: DbErr },
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub(crate) fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            // Only fails for URLs that cannot carry a password, which this one does.
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Fails if the database cannot be written (a read-only SQLite file or mount, `?mode=ro`, a
/// PostgreSQL standby): better a clear start-up error than every registration answered 503.
/// Run after migrating: it rewrites the migration table's rows in place and rolls back.
pub(crate) async fn check_writable(db: &DatabaseConnection) -> Result<(), DbErr> {
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

/// Writes a few KiB and commits (then removes them in the same transaction): succeeds only
/// if a registration could be written now. Readiness runs it while registrations are failing,
/// to see a full disk come back (or a lock go away) without waiting for someone to register.
/// It takes the locks a registration takes: SQLite's write lock (IMMEDIATE), and on PostgreSQL
/// the lock an INSERT takes on `users` and `email_outbox`, so a table locked against writers
/// fails the probe as it fails registrations (within the pool's `lock_timeout`).
pub(crate) async fn probe_write(db: &DatabaseConnection) -> Result<(), DbErr> {
    let postgres = is_postgres(db);
    let filler = if postgres {
        "decode(repeat('00', 8192), 'hex')"
    } else {
        "zeroblob(8192)"
    };
    let txn = db
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        })
        .await?;
    if postgres {
        txn.execute_unprepared("LOCK TABLE users, email_outbox IN ROW EXCLUSIVE MODE")
            .await?;
    }
    txn.execute_unprepared(&format!(
        "INSERT INTO write_probe (id, filler) VALUES (1, {filler})"
    ))
    .await?;
    txn.execute_unprepared("DELETE FROM write_probe").await?;
    txn.commit().await
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
