//! Uniqueness under concurrency: the RegistrationActor's serialized check, with the unique
//! indexes as the backstop.

use futures::future::join_all;
use serde_json::json;

use crate::helpers::spawn_app;

/// Sends `bodies` all at once and counts the answers by status.
async fn race(
    app: &crate::helpers::TestApp,
    bodies: Vec<serde_json::Value>,
) -> std::collections::BTreeMap<u16, usize> {
    let responses = join_all(bodies.iter().map(|b| app.post_registration(b))).await;
    let mut counts = std::collections::BTreeMap::new();
    for r in responses {
        *counts.entry(r.status().as_u16()).or_insert(0) += 1;
    }
    counts
}

/// "Jane@Example.com", "jANE@example.COM", …: one address in 200 spellings.
fn spelling(n: usize, word: &str) -> String {
    word.chars()
        .enumerate()
        .map(|(i, c)| {
            if (n >> (i % 8)) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

#[actix_web::test]
async fn two_hundred_concurrent_registrations_of_one_email_create_exactly_one_user() {
    let app = spawn_app().await;
    let bodies = (0..200)
        .map(|n| json!({"username": format!("racer{n}"), "email": spelling(n, "jane@example.com"), "password": "correct horse battery"}))
        .collect();

    let counts = race(&app, bodies).await;

    // 1 + 199 answers are all 200: no other status (a 5xx) is left.
    assert_eq!(counts.get(&201), Some(&1), "{counts:?}");
    assert_eq!(counts.get(&409), Some(&199), "{counts:?}");
    assert_eq!(app.user_count().await, 1);
    assert_eq!(app.outbox_rows().await.len(), 1);
}

#[actix_web::test]
async fn two_hundred_concurrent_registrations_of_one_username_create_exactly_one_user() {
    let app = spawn_app().await;
    let bodies = (0..200)
        .map(|n| json!({"username": spelling(n, "samename"), "email": format!("racer{n}@example.com"), "password": "correct horse battery"}))
        .collect();

    let counts = race(&app, bodies).await;

    assert_eq!(counts.get(&201), Some(&1), "{counts:?}");
    assert_eq!(counts.get(&409), Some(&199), "{counts:?}");
    assert_eq!(app.user_count().await, 1);
}

#[actix_web::test]
async fn concurrent_distinct_registrations_all_succeed() {
    let app = spawn_app().await;
    let bodies = (0..100).map(crate::helpers::registration).collect();

    let counts = race(&app, bodies).await;

    assert_eq!(counts.get(&201), Some(&100), "{counts:?}");
    assert_eq!(app.user_count().await, 100);
    assert_eq!(app.outbox_rows().await.len(), 100);
}
