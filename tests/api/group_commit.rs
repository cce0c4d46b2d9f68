//! The RegistrationActor's group commit: a batch decides its members as if they had come one
//! after the other, and commits all or nothing.

use sea_orm::{ConnectionTrait, EntityTrait, PaginatorTrait};
use secrecy::SecretString;
use signup::configuration::DatabaseSettings;
use signup::internals::register_batch;
use signup::store::Outcome;

use crate::helpers::{PATIENCE, candidate, fresh_database, problem, registration, spawn_app_with};

async fn database() -> (sea_orm::DatabaseConnection, Option<tempfile::TempDir>) {
    let (url, dir, _) = fresh_database().await;
    let settings = DatabaseSettings {
        url: SecretString::from(url),
        ..DatabaseSettings::default()
    };
    let db = signup::database::connect(&settings)
        .await
        .expect("connects");
    signup::database::migrate(&db).await.expect("migrates");
    (db, dir)
}

fn kind(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Created(_) => "created",
        Outcome::Replayed(_) => "replayed",
        Outcome::UsernameTaken => "username_taken",
        Outcome::EmailTaken => "email_taken",
        Outcome::IdempotencyKeyReused => "reused",
        Outcome::Withdrawn => "withdrawn",
    }
}

#[actix_web::test]
async fn duplicates_inside_one_batch_the_first_wins_as_if_sequential() {
    let (db, _dir) = database().await;
    let batch = [
        candidate("alice", "alice@example.com"),
        candidate("ALICE", "other@example.com"),
        candidate("bob", "Alice@Example.com"),
        candidate("carol", "carol@example.com"),
        candidate("Carol", "CAROL@example.com"),
    ];

    let outcomes = register_batch(&db, &batch).await.expect("committed");

    let kinds: Vec<_> = outcomes.iter().map(kind).collect();
    assert_eq!(
        kinds,
        [
            "created",
            "username_taken",
            "email_taken",
            "created",
            "email_taken"
        ]
    );
    assert_eq!(
        entity::user::Entity::find()
            .count(&db)
            .await
            .expect("count"),
        2
    );
    assert_eq!(
        entity::email_outbox::Entity::find()
            .count(&db)
            .await
            .expect("count"),
        2
    );
}

#[actix_web::test]
async fn duplicates_across_batches_are_refused_by_the_later_batch() {
    let (db, _dir) = database().await;
    register_batch(&db, &[candidate("alice", "alice@example.com")])
        .await
        .expect("first");

    let outcomes = register_batch(
        &db,
        &[
            candidate("dave", "dave@example.com"),
            candidate("Alice", "x@example.com"),
        ],
    )
    .await
    .expect("second");

    let kinds: Vec<_> = outcomes.iter().map(kind).collect();
    assert_eq!(kinds, ["created", "username_taken"]);
}

#[actix_web::test]
async fn a_failing_batch_stores_nothing() {
    let (db, _dir) = database().await;
    let trigger: &[&str] = if signup::database::is_postgres(&db) {
        &[
            "CREATE FUNCTION refuse_outbox() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'injected'; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER refuse_outbox BEFORE INSERT ON email_outbox FOR EACH ROW EXECUTE FUNCTION refuse_outbox()",
        ]
    } else {
        &[
            "CREATE TRIGGER refuse_outbox BEFORE INSERT ON email_outbox BEGIN SELECT RAISE(ABORT, 'injected'); END",
        ]
    };
    for sql in trigger {
        db.execute_unprepared(sql).await.expect("trigger");
    }

    let result = register_batch(
        &db,
        &[
            candidate("erin", "erin@example.com"),
            candidate("frank", "frank@example.com"),
        ],
    )
    .await;

    assert!(result.is_err());
    assert_eq!(
        entity::user::Entity::find()
            .count(&db)
            .await
            .expect("count"),
        0,
        "no member half-written"
    );
}

/// Asserts that at least one transaction held more than one registration (the sum of the
/// batch sizes exceeds their count), so a test of batches cannot pass with batches of one.
fn assert_batched(app: &crate::helpers::TestApp) {
    let sizes = &app.metrics.batch_size;
    assert!(
        sizes.get_sample_sum() > sizes.get_sample_count() as f64,
        "no batch of more than one formed: {} registrations in {} transactions",
        sizes.get_sample_sum(),
        sizes.get_sample_count()
    );
}

#[actix_web::test]
async fn every_member_of_a_failing_batch_is_answered_503() {
    let app = spawn_app_with(|s| {
        s.registration.max_batch = std::num::NonZeroUsize::new(64).expect("not zero")
    })
    .await;
    app.db
        .execute_unprepared(if app.is_postgres {
            "CREATE FUNCTION refuse_users() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'injected'; END $$ LANGUAGE plpgsql; \
             CREATE TRIGGER refuse_users BEFORE INSERT ON users FOR EACH ROW EXECUTE FUNCTION refuse_users()"
        } else {
            "CREATE TRIGGER refuse_users BEFORE INSERT ON users BEGIN SELECT RAISE(ABORT, 'injected'); END"
        })
        .await
        .expect("trigger");

    // Queued behind a held lock, the 20 are committed in batches.
    let lock = hold_users_lock(&app).await;
    let release = async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        drop(lock);
    };
    let (responses, ()) = futures::join!(
        futures::future::join_all((0..20).map(|n| {
            let body = registration(n);
            let app = &app;
            async move { app.post_registration(&body).await }
        })),
        release
    );

    for response in responses {
        problem(response, 503, "unavailable").await;
    }
    assert_eq!(app.user_count().await, 0);
    assert_batched(&app);
}

#[actix_web::test]
async fn delivery_outcomes_are_stored_together_and_a_lost_claim_is_left_to_its_new_owner() {
    use chrono::Utc;
    use entity::email_outbox::{self, Status};
    use sea_orm::{ActiveValue::Set, ColumnTrait, QueryFilter};
    use signup::outbox::{Completion, Finished, claim, complete_all};

    let (db, _dir) = database().await;
    register_batch(
        &db,
        &[
            candidate("alice", "alice@example.com"),
            candidate("bob", "bob@example.com"),
            candidate("carol", "carol@example.com"),
        ],
    )
    .await
    .expect("committed");
    let lease = std::time::Duration::from_secs(60);
    let claims = claim(&db, 10, lease, Utc::now()).await.expect("claims");
    assert_eq!(claims.len(), 3);
    // The second claim's lease expired and another instance claimed the row since.
    let taken_over = Utc::now() + chrono::Duration::minutes(5);
    email_outbox::Entity::update_many()
        .set(email_outbox::ActiveModel {
            locked_until: Set(Some(taken_over)),
            ..Default::default()
        })
        .filter(email_outbox::Column::Id.eq(claims[1].row.id))
        .exec(&db)
        .await
        .expect("updated");

    let retry_at = Utc::now() + chrono::Duration::minutes(1);
    // One request's rows share their claim and time: the two delivered ones are one UPDATE.
    let at = Utc::now();
    let finished: Vec<Finished> = claims
        .iter()
        .enumerate()
        .map(|(i, claimed)| Finished {
            claimed: claimed.clone(),
            attempts: 1,
            completion: if i < 2 {
                Completion::Delivered {
                    status: 204,
                    job: None,
                }
            } else {
                Completion::Retry {
                    at: retry_at,
                    status: Some(503),
                    error: "unavailable".into(),
                }
            },
            at,
        })
        .collect();
    let stored = complete_all(&db, &finished).await.expect("one transaction");

    assert_eq!(stored, [true, false, true]);
    let row = |i: usize| {
        let db = db.clone();
        let id = claims[i].row.id;
        async move {
            email_outbox::Entity::find_by_id(id)
                .one(&db)
                .await
                .expect("reads")
                .expect("the row")
        }
    };
    let delivered = row(0).await;
    assert_eq!(delivered.status, Status::Delivered);
    assert_eq!((delivered.attempts, delivered.last_status), (1, Some(204)));
    let lost = row(1).await;
    assert_eq!(
        lost.status,
        Status::Pending,
        "the new owner's row is untouched"
    );
    assert_eq!(lost.attempts, 0);
    assert!(lost.locked_until.is_some());
    let retried = row(2).await;
    assert_eq!(retried.status, Status::Pending);
    assert_eq!((retried.attempts, retried.last_status), (1, Some(503)));
    assert_eq!(retried.locked_until, None);
    assert!(retried.next_attempt_at > Utc::now());
}

#[actix_web::test]
async fn a_failing_write_of_delivery_outcomes_stores_none_of_them() {
    use chrono::Utc;
    use entity::email_outbox::{self, Status};
    use signup::outbox::{Completion, Finished, claim, complete_all};

    let (db, _dir) = database().await;
    register_batch(
        &db,
        &[
            candidate("alice", "alice@example.com"),
            candidate("bob", "bob@example.com"),
        ],
    )
    .await
    .expect("committed");
    let claims = claim(&db, 10, std::time::Duration::from_secs(60), Utc::now())
        .await
        .expect("claims");
    assert_eq!(claims.len(), 2);
    // Marking a row dead fails inside the database, as a full disk or a bug would.
    let statements: &[&str] = if signup::database::is_postgres(&db) {
        &[
            "CREATE FUNCTION refuse_dead() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER refuse_dead BEFORE UPDATE ON email_outbox FOR EACH ROW WHEN (NEW.status = 'dead') EXECUTE FUNCTION refuse_dead()",
        ]
    } else {
        &[
            "CREATE TRIGGER refuse_dead BEFORE UPDATE ON email_outbox WHEN NEW.status = 'dead' BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
        ]
    };
    for sql in statements {
        db.execute_unprepared(sql).await.expect("trigger created");
    }

    let finished = [
        Finished {
            claimed: claims[0].clone(),
            attempts: 1,
            completion: Completion::Delivered {
                status: 204,
                job: None,
            },
            at: Utc::now(),
        },
        Finished {
            claimed: claims[1].clone(),
            attempts: 1,
            completion: Completion::Dead {
                status: Some(400),
                error: "bad request".into(),
            },
            at: Utc::now(),
        },
    ];
    assert!(complete_all(&db, &finished).await.is_err());

    for claimed in &claims {
        let row = email_outbox::Entity::find_by_id(claimed.row.id)
            .one(&db)
            .await
            .expect("reads")
            .expect("the row");
        assert_eq!(
            row.status,
            Status::Pending,
            "nothing of the batch is stored"
        );
        assert_eq!(row.attempts, 0);
        assert_eq!(
            row.locked_until,
            Some(claimed.lease),
            "still claimed: the lease expires"
        );
    }
}

/// Holds the database's write lock (SQLite) or the users table (PostgreSQL) from the test's own
/// connection until the returned transaction is dropped: registrations queue behind it.
pub async fn hold_users_lock(app: &crate::helpers::TestApp) -> sea_orm::DatabaseTransaction {
    use sea_orm::{SqliteTransactionMode, TransactionOptions, TransactionTrait};
    let txn = app
        .db
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        })
        .await
        .expect("a transaction");
    if app.is_postgres {
        txn.execute_unprepared("LOCK TABLE users IN EXCLUSIVE MODE")
            .await
            .expect("locked");
    }
    txn
}

#[actix_web::test]
async fn one_registration_the_database_refuses_fails_alone_not_its_whole_batch() {
    let app = spawn_app_with(|s| {
        s.registration.max_batch = std::num::NonZeroUsize::new(64).expect("not zero")
    })
    .await;
    app.db
        .execute_unprepared(if app.is_postgres {
            "CREATE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'injected'; END $$ LANGUAGE plpgsql; \
             CREATE TRIGGER refuse_poison BEFORE INSERT ON users FOR EACH ROW WHEN (NEW.username = 'poison') EXECUTE FUNCTION refuse_poison()"
        } else {
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON users WHEN NEW.username = 'poison' BEGIN SELECT RAISE(ABORT, 'injected'); END"
        })
        .await
        .expect("trigger");
    // Everyone queues behind a held lock, so that they are committed as one batch.
    let lock = hold_users_lock(&app).await;
    let innocent = futures::future::join_all((0..19).map(|n| {
        let app = &app;
        async move { app.post_registration(&registration(n)).await }
    }));
    let poison = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        app.post_registration(&serde_json::json!({"username": "poison", "email": "poison@example.com", "password": "correct horse battery"}))
            .await
    };
    let release = async {
        tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
        drop(lock);
    };

    let (innocent, poison, ()) = futures::join!(innocent, poison, release);

    for (n, response) in innocent.into_iter().enumerate() {
        assert_eq!(response.status().as_u16(), 201, "registration {n}");
    }
    problem(poison, 503, "unavailable").await;
    assert_eq!(app.user_count().await, 19);
    assert_batched(&app);
}

/// Swallows the RegistrationActor's wake-ups (no email sync in this test).
/// A RegistrationActor on `db` alone (no server around it), batches of at most `max_batch`.
fn registration_actor(
    db: &sea_orm::DatabaseConnection,
    max_batch: usize,
    turns: signup::database::WriteTurns,
) -> signup::actors::Registrations {
    use actix::Actor;
    signup::actors::RegistrationActor::new(
        db.clone(),
        std::num::NonZeroUsize::new(max_batch).expect("not zero"),
        NoEmailSync.start().recipient(),
        std::sync::Arc::new(signup::metrics::Metrics::new().expect("metrics")),
        std::sync::Arc::new(signup::actors::CommitWatch::default()),
        turns,
    )
    .launch()
}

struct NoEmailSync;

impl actix::Actor for NoEmailSync {
    type Context = actix::Context<Self>;
}

impl actix::Handler<signup::actors::WakeUp> for NoEmailSync {
    type Result = ();

    fn handle(&mut self, _: signup::actors::WakeUp, _: &mut Self::Context) {}
}

#[actix_web::test]
async fn a_registration_whose_caller_gave_up_before_its_batch_is_never_written() {
    let (db, _dir) = database().await;
    let registrations =
        registration_actor(&db, 64, signup::database::WriteTurns::for_database(&db));

    // The caller answered 503 at the deadline (gave its ticket up) before the actor got to it.
    let (gone, answer) = tokio::sync::oneshot::channel();
    drop(answer);
    let abandoned = candidate("abandoned", "abandoned@example.com");
    assert!(abandoned.ticket.give_up());
    registrations.submit(abandoned, gone);
    let (waiting, answer) = tokio::sync::oneshot::channel();
    registrations.submit(candidate("waiting", "waiting@example.com"), waiting);

    let outcome = answer.await.expect("answered").expect("committed");

    assert_eq!(kind(&outcome), "created");
    let names: Vec<String> = entity::user::Entity::find()
        .all(&db)
        .await
        .expect("users")
        .into_iter()
        .map(|u| u.username)
        .collect();
    assert_eq!(names, ["waiting"], "the abandoned one was not written");
}

#[actix_web::test]
async fn on_sqlite_registrations_waiting_go_before_a_delivery_write_that_came_meanwhile() {
    // Registrations first: a person waits for each. The actor keeps its turn from one batch to
    // the next while callers wait (up to a bound), so a delivery write that asks meanwhile goes
    // after them. Asking anew for each batch, it found no registration queued at the moment it
    // let go, and every delivery write went in between.
    use signup::database::{WriteTurns, Writes};
    let (db, _dir) = database().await;
    if signup::database::is_postgres(&db) {
        eprintln!("skipped: PostgreSQL's writers run at once, they take no turns");
        return;
    }
    let turns = WriteTurns::for_database(&db);
    let registrations = registration_actor(&db, 1, turns.clone());

    // Another writer holds the turn while three registrations (one a batch) arrive and a
    // delivery write asks for the turn.
    let holder = turns.take(Writes::Deliveries).await;
    let mut answers = Vec::new();
    for i in 1..=3 {
        let (reply, answer) = tokio::sync::oneshot::channel();
        registrations.submit(
            candidate(&format!("first{i}"), &format!("first{i}@example.com")),
            reply,
        );
        answers.push(answer);
    }
    crate::helpers::wait_until("the actor waits for the turn", PATIENCE, || async {
        turns.waiting(Writes::Registrations) == 1
    })
    .await;
    let delivery = actix_web::rt::spawn({
        let (turns, db) = (turns.clone(), db.clone());
        async move {
            turns
                .run(Writes::Deliveries, async {
                    entity::user::Entity::find()
                        .count(&db)
                        .await
                        .expect("count")
                })
                .await
        }
    });
    crate::helpers::wait_until(
        "the delivery write waits for the turn",
        PATIENCE,
        || async { turns.waiting(Writes::Deliveries) == 1 },
    )
    .await;
    drop(holder);

    let users_when_the_delivery_wrote = delivery.await.expect("the delivery write ran");
    for answer in answers {
        answer.await.expect("answered").expect("committed");
    }
    assert_eq!(
        users_when_the_delivery_wrote, 3,
        "the three registration batches went first"
    );
}

#[actix_web::test]
async fn on_sqlite_a_registration_commits_in_its_turn_among_the_process_writers() {
    // SQLite's busy handler sleeps up to 100 ms a poll, and two writers writing back to back
    // (registration commits, the email sync's claims and outcome writes) starved one another.
    // The server's writers take turns instead: while another writer has the turn, a
    // registration waits for it and commits the moment it ends.
    let app = spawn_app_with(|_| {}).await;
    if app.is_postgres {
        eprintln!("skipped: PostgreSQL's writers run at once, they take no turns");
        return;
    }
    let other_writer = OtherWriter::holding_the_turn(&app).await;

    let app = std::sync::Arc::new(app);
    let registering = actix_web::rt::spawn({
        let app = std::sync::Arc::clone(&app);
        async move { app.post_registration(&registration(1)).await }
    });
    crate::helpers::wait_until("the registration waits for its turn", PATIENCE, || async {
        app.write_turns
            .waiting(signup::database::Writes::Registrations)
            == 1
    })
    .await;
    assert!(
        !registering.is_finished(),
        "the registration was answered while another writer had the turn"
    );

    other_writer.finish().await;
    let response = registering.await.expect("answered");
    assert_eq!(response.status(), 201, "committed in its turn");
}

#[actix_web::test]
async fn on_sqlite_a_registration_answered_503_while_waiting_for_its_turn_is_never_written() {
    // Its batch was taken before the turn came: by then the caller had answered 503 at the
    // deadline, so writing the user would make an account someone was told was not made.
    let app =
        spawn_app_with(|s| s.registration.deadline = std::time::Duration::from_millis(300)).await;
    if app.is_postgres {
        eprintln!("skipped: PostgreSQL's writers run at once, they take no turns");
        return;
    }
    let other_writer = OtherWriter::holding_the_turn(&app).await;

    let response = app.post_registration(&registration(1)).await;
    assert_eq!(response.status(), 503, "the deadline passed while waiting");
    other_writer.finish().await;
    // A registration after it commits once the one before it was settled.
    let later = app.post_registration(&registration(2)).await;
    assert_eq!(later.status(), 201);

    let users = entity::user::Entity::find()
        .all(&app.db)
        .await
        .expect("users");
    let names: Vec<String> = users.into_iter().map(|u| u.username).collect();
    assert_eq!(
        names.len(),
        1,
        "only the later registration was written: {names:?}"
    );
}

/// Another writer of the server's SQLite file, holding its turn until told to finish.
struct OtherWriter {
    release: tokio::sync::oneshot::Sender<()>,
    done: actix_web::rt::task::JoinHandle<()>,
}

impl OtherWriter {
    async fn holding_the_turn(app: &crate::helpers::TestApp) -> Self {
        let (taken, has_turn) = tokio::sync::oneshot::channel();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let turns = app.write_turns.clone();
        let done = actix_web::rt::spawn(async move {
            turns
                .run(signup::database::Writes::Deliveries, async move {
                    let _ = taken.send(());
                    let _ = released.await;
                })
                .await;
        });
        has_turn.await.expect("the other writer has the turn");
        Self { release, done }
    }

    async fn finish(self) {
        self.release.send(()).expect("the other writer waits");
        self.done.await.expect("the other writer ends");
    }
}
