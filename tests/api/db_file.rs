//! The database file is the configured one (SPEC §4.7): on SQLite, deleting the file (or only
//! its WAL) under a running server used to go unnoticed: every later registration was answered
//! 201, readiness said ok, and none of them existed after a restart (the connections wrote
//! into unlinked files). Now readiness and registrations answer 503, and the metric says why.

use crate::helpers::{TestApp, registration, spawn_app};

/// The app's SQLite file, or None (the test skips) on PostgreSQL.
fn sqlite_file(app: &TestApp) -> Option<std::path::PathBuf> {
    match app.database_url.strip_prefix("sqlite://") {
        Some(path) => Some(path.split('?').next().unwrap_or(path).into()),
        None => {
            eprintln!("skipping: a SQLite file test (this run is on PostgreSQL)");
            None
        }
    }
}

async fn file_ok_metric(app: &TestApp) -> String {
    let text = app.get("/metrics").await.text().await.expect("metrics");
    text.lines()
        .find(|l| l.starts_with("signup_database_file_ok "))
        .unwrap_or_default()
        .to_owned()
}

/// Removes `suffixes` of the database file, then registers 30 people: none may be told 201.
async fn registers_nothing_after_removing(suffixes: &[&str]) {
    let app = spawn_app().await;
    let Some(file) = sqlite_file(&app) else {
        return;
    };
    app.register_all(0..5).await;
    assert_eq!(app.get("/health/ready").await.status().as_u16(), 200);
    assert_eq!(file_ok_metric(&app).await, "signup_database_file_ok 1");

    for suffix in suffixes {
        let mut path = file.clone().into_os_string();
        path.push(suffix);
        std::fs::remove_file(&path).expect("removed");
    }
    let mut statuses = Vec::new();
    for n in 100..130 {
        statuses.push(
            app.post_registration(&registration(n))
                .await
                .status()
                .as_u16(),
        );
    }

    assert!(
        statuses.iter().all(|s| *s == 503),
        "after removing {suffixes:?}: {statuses:?}"
    );
    assert_eq!(app.get("/health/ready").await.status().as_u16(), 503);
    assert_eq!(file_ok_metric(&app).await, "signup_database_file_ok 0");
}

#[actix_web::test]
async fn deleting_the_database_files_while_serving_gets_503_not_lost_201s() {
    registers_nothing_after_removing(&["", "-wal", "-shm"]).await;
}

#[actix_web::test]
async fn deleting_only_the_wal_while_serving_gets_503_not_lost_201s() {
    registers_nothing_after_removing(&["-wal"]).await;
}
