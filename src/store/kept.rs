//! SQLite's kept connection: the writer's transaction on it begun and committed by hand, and
//! the transaction a batch runs in on either database.

use super::*;

/// Where a batch's statements run, in its transaction.
pub(super) enum BatchTransaction<'k> {
    /// sea-orm's, on a connection of the pool (PostgreSQL).
    Pool(DatabaseTransaction),
    /// SQLite: the writer's kept connection, the transaction begun by hand.
    Kept(Kept<'k>),
}

impl BatchTransaction<'_> {
    /// Runs `statement`, returning its rows.
    pub(super) async fn run(&mut self, statement: Statement) -> Result<Vec<QueryResult>, DbErr> {
        match self {
            Self::Pool(txn) => txn.query_all_raw(statement).await,
            Self::Kept(conn) => conn.run(statement).await,
        }
    }

    pub(super) async fn commit(self) -> Result<(), DbErr> {
        match self {
            Self::Pool(txn) => txn.commit().await,
            Self::Kept(mut conn) => {
                conn.run(Statement::from_string(DbBackend::Sqlite, "COMMIT"))
                    .await?;
                conn.keep();
                Ok(())
            }
        }
    }
}

/// The writer's SQLite connection for one batch, whose transaction is begun and committed by
/// hand. It goes back to [`Writer::kept`] only through [`Kept::keep`], after its COMMIT;
/// otherwise (an error, or dropped part way) it is closed, never used again: sqlx counts only
/// the transactions it began itself, so one left open here would be invisible to its checks,
/// and closing rolls it back.
pub(super) struct Kept<'k> {
    conn: SqliteConnection,
    kept: &'k Mutex<Option<SqliteConnection>>,
}

impl<'k> Kept<'k> {
    /// The kept connection, or a new one: opened by the pool, with its options, and detached
    /// from it (a connection held for good would make `Pool::close` wait forever).
    pub(super) async fn take(
        kept: &'k Mutex<Option<SqliteConnection>>,
        pool: &SqlitePool,
    ) -> Result<Self, DbErr> {
        let held = kept.lock().unwrap_or_else(PoisonError::into_inner).take();
        let conn = match held {
            Some(conn) => conn,
            None => pool.acquire().await.map_err(acquire_error)?.detach(),
        };
        Ok(Self { conn, kept })
    }

    /// Runs `statement`, bound as sea-orm binds it; its rows.
    pub(super) async fn run(&mut self, statement: Statement) -> Result<Vec<QueryResult>, DbErr> {
        let values = statement.values.unwrap_or(Values(Vec::new()));
        let rows = sqlx::query_with(sqlx::AssertSqlSafe(statement.sql), SqlxValues(values))
            .fetch_all(&mut self.conn)
            .await
            .map_err(|e| DbErr::Exec(RuntimeErr::SqlxError(Arc::new(e))))?;
        Ok(rows.into_iter().map(QueryResult::from).collect())
    }

    /// Committed, no transaction open: keep the connection for the next batch. (Dropped
    /// instead, the connection closes, and SQLite rolls back whatever transaction it had open.)
    pub(super) fn keep(self) {
        *self.kept.lock().unwrap_or_else(PoisonError::into_inner) = Some(self.conn);
    }
}

/// As sea-orm reports a pool that gives no connection, so that `is_unreachable` and readiness
/// read it the same.
pub(super) fn acquire_error(e: sqlx::Error) -> DbErr {
    match e {
        sqlx::Error::PoolTimedOut => DbErr::ConnectionAcquire(ConnAcquireErr::Timeout),
        sqlx::Error::PoolClosed => DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed),
        e => DbErr::Conn(RuntimeErr::SqlxError(Arc::new(e))),
    }
}
