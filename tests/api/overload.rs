//! Overload (SPEC §4.7): more registrations than hashing threads and `password.max_waiting`
//! hold are shed at once with 503 and `Retry-After`, and the server keeps serving.

use crate::helpers::{problem, registration, spawn_app_with};

#[actix_web::test]
async fn a_flood_beyond_max_waiting_is_shed_at_once_with_503() {
    let app = spawn_app_with(|s| {
        // Slow hashes, one waiting place: most of a burst cannot even queue.
        s.password = signup::configuration::PasswordSettings {
            max_waiting: 1,
            ..signup::configuration::PasswordSettings::new(32 * 1024, 3, 1).expect("valid")
        };
    })
    .await;
    let requests = 30;

    let responses = futures::future::join_all((0..requests).map(|n| {
        let app = &app;
        async move { app.post_registration(&registration(n)).await }
    }))
    .await;

    let mut created = 0;
    let mut shed = 0;
    for response in responses {
        match response.status().as_u16() {
            201 => created += 1,
            503 => {
                assert!(response.headers().contains_key("retry-after"));
                problem(response, 503, "unavailable").await;
                shed += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(shed > 0, "nothing was shed: {created} created");
    assert!(created > 0, "nothing was accepted");
    assert_eq!(
        app.user_count().await,
        created as u64,
        "a shed request stores nothing"
    );
}
