//! The RegistrationActor's group commit: a batch decides its members as if they had come one
//! after the other, and commits all or nothing.

use sea_orm::{ConnectionTrait, EntityTrait, PaginatorTrait};
use secrecy::SecretString;
use signup::configuration::DatabaseSettings;
use signup::domain::{Email, Username};
use signup::store::{Candidate, Outcome, register_batch};

use crate::helpers::{fresh_database, problem, registration, spawn_app_with};

fn candidate(username: &str, email: &str) -> Candidate {
    Candidate {
        username: Username::parse(username).expect("username"),
        email: Email::parse(email).expect("email"),
        password_hash: "$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".into(),
        idempotency: None,
        request_id: "test".into(),
    }
}

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

#[actix_web::test]
async fn every_member_of_a_failing_batch_is_answered_503() {
    let app = spawn_app_with(|s| s.registration.max_batch = 64).await;
    app.db
        .execute_unprepared(if app.is_postgres {
            "CREATE FUNCTION refuse_users() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'injected'; END $$ LANGUAGE plpgsql; \
             CREATE TRIGGER refuse_users BEFORE INSERT ON users FOR EACH ROW EXECUTE FUNCTION refuse_users()"
        } else {
            "CREATE TRIGGER refuse_users BEFORE INSERT ON users BEGIN SELECT RAISE(ABORT, 'injected'); END"
        })
        .await
        .expect("trigger");

    let responses = futures::future::join_all((0..20).map(|n| {
        let body = registration(n);
        let app = &app;
        async move { app.post_registration(&body).await }
    }))
    .await;

    for response in responses {
        problem(response, 503, "unavailable").await;
    }
    assert_eq!(app.user_count().await, 0);
}
