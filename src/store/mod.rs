//! The registration's database work: check a batch of candidates for uniqueness and insert the
//! accepted users, their outbox rows and idempotency keys in one transaction. Called only by the
//! RegistrationActor, one batch at a time. `decide`: what a batch decides and the statements
//! that carry it out; `kept`: SQLite's kept connection; `read`: user reads for the routes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{SubsecRound, Utc};
use entity::{email_outbox, idempotency_key, user};
use sea_orm::sea_query::Values;
use sea_orm::sqlx::{self, SqliteConnection, SqlitePool};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnAcquireErr, ConnectionTrait, DatabaseConnection,
    DatabaseTransaction, DbBackend, DbErr, DeleteMany, EntityTrait, FromQueryResult, QueryFilter,
    QueryResult, QuerySelect, QueryTrait, RuntimeErr, Select, SqlErr, Statement, TransactionTrait,
};
use sea_query_sqlx::SqlxValues;
use uuid::Uuid;

use crate::database::is_postgres;
use crate::domain::{Email, Username};
use crate::email::UserRegistered;
use crate::idempotency::{IdempotencyKey, KEY_TTL};
use crate::outbox::ContactKey;

/// One registration waiting to be committed (validated, password already hashed).
#[derive(Debug, Clone)]
pub struct Candidate {
    pub username: Username,
    pub email: Email,
    pub password_hash: String,
    pub idempotency: Option<IdempotencyKey>,
    /// The HTTP request's id, for the log line that links it to its outbox row.
    pub request_id: String,
    /// The request's W3C trace context, stored on the outbox row as its `traceparent` (SPEC §9).
    pub trace: Option<crate::telemetry::trace::TraceParent>,
    /// Shared with the caller: withdrawn before COMMIT if the caller gave up (SPEC §4.7).
    pub ticket: crate::ticket::Ticket,
}

pub(crate) use crate::domain::RegisteredUser;

/// What became of one candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new user (and outbox row) was committed.
    Created(RegisteredUser),
    /// The idempotency key had already created this user: nothing new was written.
    Replayed(RegisteredUser),
    UsernameTaken,
    /// Also when both are taken: the email wins.
    EmailTaken,
    /// The key was used before for a different request.
    IdempotencyKeyReused,
    /// The caller gave up (its deadline passed, its client left) before the COMMIT began:
    /// withdrawn, nothing was stored for it.
    Withdrawn,
}

/// Where the RegistrationActor writes its batches: the pool, and on SQLite one connection kept
/// from batch to batch.
///
/// Why keep one: in WAL mode SQLite drops a connection's whole page cache whenever another
/// connection has committed since its last transaction. Batches handed the pool's connections in
/// turn each found the other's commit and re-read the indexes' pages from the file (strace under
/// load: ~80 `pread`s a commit; ~25 with one connection kept, the rest being other readers').
#[derive(Clone)]
pub struct Writer {
    db: DatabaseConnection,
    /// Keys each outbox row's contact (loaded from the database on the first batch).
    contact: tokio::sync::OnceCell<ContactKey>,
    /// SQLite only: the connection the last batch ran on, if it ended cleanly. Opened by the
    /// pool but no longer counted in it.
    kept: Arc<Mutex<Option<SqliteConnection>>>,
}

impl Writer {
    pub fn new(db: DatabaseConnection) -> Self {
        Self {
            db,
            contact: tokio::sync::OnceCell::new(),
            kept: Arc::default(),
        }
    }

    /// Registers `candidates` in order, as if one after the other: a later candidate that
    /// repeats an earlier one's username or email is refused exactly as it would be a moment
    /// later.
    ///
    /// Either every accepted candidate is committed or none is (`Err`).
    /// A candidate whose caller gave up before the COMMIT began is withdrawn (its transaction
    /// rolled back and the others tried again without it): [`Outcome::Withdrawn`].
    pub async fn register_batch(&self, candidates: &[Candidate]) -> Result<Vec<Outcome>, DbErr> {
        match self.try_live(candidates).await {
            Err(e) if is_unique_violation(&e) => {
                // Another instance on the same PostgreSQL inserted a name or address between
                // our check and our insert. Replay the batch one by one: each check then sees
                // the rival.
                let mut outcomes = Vec::with_capacity(candidates.len());
                for candidate in candidates {
                    outcomes.push(self.register_one(candidate).await?);
                }
                Ok(outcomes)
            }
            other => other,
        }
    }

    /// `candidates` but those whose callers gave up, until a transaction commits with none who
    /// did: each round withdraws at least one, so it ends.
    async fn try_live(&self, candidates: &[Candidate]) -> Result<Vec<Outcome>, DbErr> {
        loop {
            let live: Vec<usize> = (0..candidates.len())
                .filter(|i| !candidates[*i].ticket.gave_up())
                .collect();
            if live.is_empty() {
                return Ok(vec![Outcome::Withdrawn; candidates.len()]);
            }
            let attempt = if live.len() == candidates.len() {
                self.try_batch(candidates).await?
            } else {
                let subset: Vec<Candidate> = live.iter().map(|i| candidates[*i].clone()).collect();
                self.try_batch(&subset).await?
            };
            let Attempt::Committed(outcomes) = attempt else {
                continue;
            };
            let mut all = vec![Outcome::Withdrawn; candidates.len()];
            for (place, outcome) in live.into_iter().zip(outcomes) {
                all[place] = outcome;
            }
            return Ok(all);
        }
    }

    /// Alone, a lost race can only repeat if the rival keeps winning; after a few tries the
    /// violated index itself tells which field is taken.
    async fn register_one(&self, candidate: &Candidate) -> Result<Outcome, DbErr> {
        let single = std::slice::from_ref(candidate);
        let mut tries = 0;
        loop {
            tries += 1;
            match self.try_live(single).await {
                Ok(mut outcomes) => return Ok(outcomes.remove(0)),
                Err(e) if is_unique_violation(&e) && tries < LOST_RACE_TRIES => continue,
                Err(e) => {
                    return if EMAIL_UNIQUE.violated_by(&e) {
                        Ok(Outcome::EmailTaken)
                    } else if USERNAME_UNIQUE.violated_by(&e) {
                        Ok(Outcome::UsernameTaken)
                    } else {
                        Err(e)
                    };
                }
            }
        }
    }

    /// One transaction: look up keys and taken names, decide each candidate, insert the
    /// winners, and commit them unless a winner's caller gave up meanwhile (then roll back:
    /// [`Attempt::Withdrawn`]).
    async fn try_batch(&self, candidates: &[Candidate]) -> Result<Attempt, DbErr> {
        let backend = self.db.get_database_backend();
        let contact = self
            .contact
            .get_or_try_init(|| ContactKey::load_or_create(&self.db))
            .await?;
        let mut txn = self.begin().await?;
        let keys = keys_of(candidates);
        let mut known = HashMap::new();
        if !keys.is_empty() {
            txn.run(delete_expired_keys(&keys).build(backend)).await?;
            let key_rows =
                models::<idempotency_key::Model>(txn.run(key_rows(&keys).build(backend)).await?)?;
            if !key_rows.is_empty() {
                let users = txn.run(users_with_keys(&key_rows).build(backend)).await?;
                known = known_keys(key_rows, models(users)?);
            }
        }
        let taken = pairs(txn.run(taken_names(candidates).build(backend)).await?)?;
        let mut decided = decide(candidates, known, taken, contact);
        for insert in decided.inserts(backend) {
            txn.run(insert).await?;
        }
        // The last moment a caller may give up: from here each winner's answer is the
        // COMMIT's outcome. Dropping the transaction rolls it back.
        let tickets: Vec<&crate::ticket::Ticket> = decided
            .created_log
            .iter()
            .map(|(c, _, _)| &c.ticket)
            .collect();
        let mut entered = Vec::with_capacity(tickets.len());
        for ticket in tickets {
            if !ticket.enter_commit() {
                entered
                    .iter()
                    .for_each(|t: &&crate::ticket::Ticket| t.reopen());
                return Ok(Attempt::Withdrawn);
            }
            entered.push(ticket);
        }
        if let Err(e) = txn.commit().await {
            entered.iter().for_each(|t| t.reopen());
            return Err(e);
        }
        log_created(&decided.created_log);
        Ok(Attempt::Committed(decided.outcomes))
    }

    /// A transaction for one batch: on SQLite on the kept connection, `BEGIN IMMEDIATE` (the
    /// write lock from the start: a deferred transaction that reads and then writes fails with
    /// SQLITE_BUSY, not waiting, if another connection wrote in between).
    async fn begin(&self) -> Result<BatchTransaction<'_>, DbErr> {
        if is_postgres(&self.db) {
            return Ok(BatchTransaction::Pool(self.db.begin().await?));
        }
        let mut conn = Kept::take(&self.kept, self.db.get_sqlite_connection_pool()).await?;
        conn.run(Statement::from_string(DbBackend::Sqlite, "BEGIN IMMEDIATE"))
            .await?;
        Ok(BatchTransaction::Kept(conn))
    }
}

/// How one transaction ended, if not in an error.
enum Attempt {
    Committed(Vec<Outcome>),
    /// A winner's caller gave up before the COMMIT: rolled back, nothing stored.
    Withdrawn,
}

/// How often one registration is tried alone after losing a uniqueness race. Each try's check
/// sees the rivals committed so far, so a second loss needs another instance to commit the
/// same name in that very moment again; after this many the violated index itself is the
/// answer.
const LOST_RACE_TRIES: u32 = 4;

/// A unique index of `users`, as the databases name it in a violation's message: PostgreSQL by
/// the index's name (given in migration m20261126_000001), SQLite by `table.column`.
struct UniqueIndex {
    name: &'static str,
    column: &'static str,
}

impl UniqueIndex {
    /// Whether `e` is a violation of this index: by the constraint the driver names
    /// (PostgreSQL's error carries it), else by the `table.column` SQLite's message lists.
    fn violated_by(&self, e: &DbErr) -> bool {
        let Some(SqlErr::UniqueConstraintViolation(message)) = e.sql_err() else {
            return false;
        };
        match constraint_of(e) {
            Some(constraint) => constraint == self.name,
            None => self.named_in(&message),
        }
    }

    fn named_in(&self, message: &str) -> bool {
        message.contains(&format!("\"{}\"", self.name))
            || message.contains(&format!("failed: {}", self.column))
    }
}

/// The constraint a database error names, where the driver reports one (PostgreSQL).
fn constraint_of(e: &DbErr) -> Option<String> {
    let runtime = match e {
        DbErr::Exec(runtime) | DbErr::Query(runtime) => runtime,
        _ => return None,
    };
    match runtime {
        RuntimeErr::SqlxError(error) => error
            .as_database_error()
            .and_then(|db| db.constraint())
            .map(str::to_owned),
        _ => None,
    }
}

const EMAIL_UNIQUE: UniqueIndex = UniqueIndex {
    name: "users_email_normalized_key",
    column: "users.email_normalized",
};
const USERNAME_UNIQUE: UniqueIndex = UniqueIndex {
    name: "users_username_normalized_key",
    column: "users.username_normalized",
};

fn is_unique_violation(e: &DbErr) -> bool {
    matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

mod decide;
mod kept;
mod read;

use decide::*;
use kept::{BatchTransaction, Kept};
pub(crate) use read::{find_user, find_user_by_email};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_violation_is_told_apart_by_the_index_each_database_names() {
        let cases = [
            (
                r#"duplicate key value violates unique constraint "users_email_normalized_key""#,
                true,
                false,
                "PostgreSQL, email",
            ),
            (
                r#"duplicate key value violates unique constraint "users_username_normalized_key""#,
                false,
                true,
                "PostgreSQL, username",
            ),
            (
                "UNIQUE constraint failed: users.email_normalized",
                true,
                false,
                "SQLite, email",
            ),
            (
                "UNIQUE constraint failed: users.username_normalized",
                false,
                true,
                "SQLite, username",
            ),
            (
                r#"duplicate key value violates unique constraint "idempotency_keys_pkey" (email)"#,
                false,
                false,
                "another index whose message happens to say email",
            ),
        ];
        for (message, email, username, why) in cases {
            assert_eq!(EMAIL_UNIQUE.named_in(message), email, "{why}");
            assert_eq!(USERNAME_UNIQUE.named_in(message), username, "{why}");
        }
    }

    /// A migrated SQLite database in a temp dir (kept alive by the returned guard).
    async fn sqlite() -> (tempfile::TempDir, DatabaseConnection) {
        let dir = tempfile::tempdir().expect("temp dir");
        let settings = crate::configuration::DatabaseSettings {
            url: format!("sqlite://{}", dir.path().join("t.db").display()).into(),
            ..Default::default()
        };
        let db = crate::database::connect(&settings).await.expect("opens");
        crate::database::migrate(&db).await.expect("migrates");
        (dir, db)
    }

    fn candidate(name: &str) -> Candidate {
        Candidate {
            username: Username::parse(name).expect("username"),
            email: Email::parse(&format!("{name}@example.com")).expect("email"),
            password_hash: "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA".into(),
            idempotency: None,
            request_id: String::new(),
            trace: None,
            ticket: Default::default(),
        }
    }

    async fn users(db: &DatabaseConnection) -> Vec<String> {
        let mut names: Vec<String> = user::Entity::find()
            .all(db)
            .await
            .expect("users")
            .into_iter()
            .map(|u| u.username)
            .collect();
        names.sort();
        names
    }

    /// Runs `sql` on the connection `writer` keeps (there must be one), and keeps it again.
    async fn on_the_kept_connection(writer: &Writer, sql: &str) -> Result<(), sqlx::Error> {
        let mut conn = writer.kept.lock().expect("lock").take().expect("kept");
        let result = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut conn)
            .await;
        *writer.kept.lock().expect("lock") = Some(conn);
        result.map(|_| ())
    }

    #[tokio::test]
    async fn on_sqlite_consecutive_batches_run_on_the_one_kept_connection() {
        let (_dir, db) = sqlite().await;
        let writer = Writer::new(db.clone());
        writer
            .register_batch(&[candidate("alice")])
            .await
            .expect("committed");
        // Mark the connection the batch ran on (a TEMP table is seen by its own connection only).
        on_the_kept_connection(&writer, "CREATE TEMP TABLE marker (x)")
            .await
            .expect("marked");

        writer
            .register_batch(&[candidate("bob")])
            .await
            .expect("committed");
        on_the_kept_connection(&writer, "SELECT count(*) FROM temp.marker")
            .await
            .expect("the second batch ran on the marked connection");
        assert_eq!(users(&db).await, ["alice", "bob"]);
    }

    #[tokio::test]
    async fn on_sqlite_a_batch_that_fails_part_way_leaves_no_transaction_open() {
        let (_dir, db) = sqlite().await;
        // The outbox insert fails after the users insert has run, inside the transaction.
        db.execute_unprepared(
            "CREATE TRIGGER refuse BEFORE INSERT ON email_outbox WHEN NEW.payload LIKE '%mallory%' \
             BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
        .await
        .expect("trigger");
        let writer = Writer::new(db.clone());
        writer
            .register_batch(&[candidate("alice")])
            .await
            .expect("committed");
        let refused = writer
            .register_batch(&[candidate("bob"), candidate("mallory")])
            .await;
        assert!(refused.is_err(), "{refused:?}");
        assert!(
            writer.kept.lock().expect("lock").is_none(),
            "the failed batch's connection is not kept"
        );

        // Another connection writes at once: the failed transaction holds no write lock (had
        // it stayed open, this would wait out the busy timeout and fail "database is locked").
        Writer::new(db.clone())
            .register_batch(&[candidate("carol")])
            .await
            .expect("another connection commits");
        // And the writer itself goes on, on a fresh connection.
        writer
            .register_batch(&[candidate("dave")])
            .await
            .expect("committed");
        assert_eq!(
            users(&db).await,
            ["alice", "carol", "dave"],
            "bob was rolled back"
        );
    }
}
