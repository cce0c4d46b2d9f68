//! No copy on disk (SPEC §6): after a person is erased, their deletion delivered and the server
//! stopped, no byte of the SQLite database, its WAL or its shared-memory file holds their
//! username, email or password hash. Deleting rows only unlinks them from the B-tree, and the
//! WAL keeps old page images: both used to leave the person readable with `strings`.

use std::time::Duration;

use sea_orm::{Database, EntityTrait};
use serde_json::json;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{PATIENCE, wait_until};
use crate::processes::{ServerProcess, wait_deletion_delivered};

const TOKEN: &str = "an-admin-token-of-at-least-32-characters";

/// Every file of the database (`signup.db`, `-wal`, `-shm`) that contains `needle`.
fn files_holding(dir: &std::path::Path, needle: &str) -> Vec<String> {
    ["signup.db", "signup.db-wal", "signup.db-shm"]
        .iter()
        .filter(|name| {
            std::fs::read(dir.join(name)).is_ok_and(|bytes| {
                bytes
                    .windows(needle.len())
                    .any(|window| window == needle.as_bytes())
            })
        })
        .map(|name| (*name).to_owned())
        .collect()
}

#[actix_web::test]
async fn an_erased_person_leaves_no_byte_in_the_database_files_once_the_server_stops() {
    let provider = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(204))
        .mount(&provider)
        .await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let url = format!("sqlite://{}", dir.path().join("signup.db").display());
    let mut server = ServerProcess::start_with(
        &url,
        &provider.uri(),
        &[
            ("SIGNUP_ADMIN__TOKEN", TOKEN),
            ("SIGNUP_LOG__LEVEL", "info"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let (username, email) = ("erasedperson", "Erased.Person@Example.com");
    let created = client
        .post(format!("{}/api/v1/registrations", server.base))
        .json(&json!({"username": username, "email": email, "password": "a passphrase to forget"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(created.status().as_u16(), 201);
    let id = created.json::<serde_json::Value>().await.expect("json")["id"]
        .as_str()
        .expect("an id")
        .to_owned();
    for n in 0..20 {
        server.register(n).await;
    }
    let db = Database::connect(&url)
        .await
        .expect("the test reads the file");
    let hash = entity::user::Entity::find()
        .all(&db)
        .await
        .expect("users")
        .into_iter()
        .find(|u| u.username == username)
        .expect("the person")
        .password_hash;

    server.erase(&id, TOKEN).await;
    wait_deletion_delivered(&db).await;
    // Life goes on after the erasure.
    for n in 20..30 {
        server.register(n).await;
    }
    db.close().await.expect("closed");
    // The checkpoint after the delivery runs off the delivery path: the one after the erasure
    // and the one after the deletion's delivery have both finished.
    crate::helpers::wait_until("both checkpoints", PATIENCE, || async {
        server.log().matches(signup::erasure::CHECKPOINTED).count() >= 2
    })
    .await;
    let status = server.terminate().await;
    assert!(status.success(), "{}", server.log());

    for needle in [
        username.to_owned(),
        email.to_owned(),
        email.to_lowercase(),
        hash.clone(),
    ] {
        let holding = files_holding(dir.path(), &needle);
        assert!(holding.is_empty(), "{needle:?} is still in {holding:?}");
    }
    // The others are all there: the check reads the right files.
    assert!(!files_holding(dir.path(), "user29@example.com").is_empty());
}

/// PostgreSQL: the erasure vacuums the tables that held the person (the deleted tuples'
/// space reclaimed, to be overwritten), within seconds, not whenever autovacuum comes by.
#[actix_web::test]
async fn on_postgresql_an_erasure_vacuums_the_tables_that_held_the_person() {
    use sea_orm::ConnectionTrait;
    let Some(admin) = crate::helpers::postgres_admin_url() else {
        return;
    };
    let url = crate::helpers::fresh_postgres(&admin).await;
    let app = crate::helpers::spawn_app_with(move |s| {
        s.database.url = url.clone().into();
        s.admin.token = Some(TOKEN.into());
    })
    .await;
    let id = crate::erasure::register(&app, "vacuumed", "vacuumed@example.com").await;

    let erased = app
        .client
        .delete(app.url(&format!("/admin/users/{id}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("sent");
    assert_eq!(erased.status().as_u16(), 202);

    wait_until("users is vacuumed", Duration::from_secs(30), || async {
        app.db
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DatabaseBackend::Postgres,
                "SELECT 1 FROM pg_stat_user_tables WHERE relname = 'users' AND last_vacuum IS NOT NULL",
            ))
            .await
            .is_ok_and(|row| row.is_some())
    })
    .await;
}
