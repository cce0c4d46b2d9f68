//! Property test of the JSON route: whatever the body, the answer is 201, 400, 409, 413, 415 or
//! 422, never a 5xx, and no invalid input is ever stored.

use proptest::prelude::*;
use sea_orm::EntityTrait;
use signup::domain::NewRegistration;

use crate::helpers::serve_in_thread;

/// Bodies worth throwing: well-formed registrations with arbitrary field contents, JSON of the
/// wrong shape, and arbitrary bytes.
fn bodies() -> impl Strategy<Value = (String, Vec<u8>)> {
    let text = prop_oneof![
        any::<String>(),
        "[A-Za-z0-9_.-]{0,40}",
        "[a-z]{1,10}@[a-z]{1,10}\\.[a-z]{2,4}",
        " *[A-Za-z0-9]{3,12} *"
    ];
    let field = prop_oneof![
        text.clone().prop_map(serde_json::Value::String),
        any::<i64>().prop_map(serde_json::Value::from),
        Just(serde_json::Value::Null),
        Just(serde_json::json!([])),
    ];
    let object =
        (field.clone(), field.clone(), field, any::<bool>()).prop_map(|(u, e, p, extra)| {
            let mut body = serde_json::json!({"username": u, "email": e, "password": p});
            if extra {
                body["unknown"] = serde_json::json!(1);
            }
            (
                "application/json".to_string(),
                body.to_string().into_bytes(),
            )
        });
    let bytes = (
        prop_oneof![
            Just("application/json".to_string()),
            Just("text/plain".to_string())
        ],
        proptest::collection::vec(any::<u8>(), 0..200),
    );
    prop_oneof![4 => object, 1 => bytes]
}

#[test]
fn any_json_body_gets_a_4xx_or_201_and_never_stores_invalid_input() {
    // The server runs in an actix System of its own thread; proptest drives it from here.
    let served = serve_in_thread(|_| {});
    let (url, database_url) = (
        format!("{}/api/v1/registrations", served.address),
        served.database_url.clone(),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = reqwest::Client::new();

    let config = ProptestConfig {
        cases: 96,
        ..ProptestConfig::default()
    };
    proptest!(config, |((content_type, body) in bodies())| {
        let status = runtime.block_on(async {
            client.post(&url).header("content-type", &content_type).body(body.clone()).send().await
        })
        .expect("answered")
        .status()
        .as_u16();
        prop_assert!([201, 400, 409, 413, 415, 422].contains(&status), "status {}", status);
    });

    let users = runtime.block_on(async {
        let db = sea_orm::Database::connect(&database_url).await.expect("db");
        entity::user::Entity::find().all(&db).await.expect("users")
    });
    drop(served);
    for user in users {
        assert!(
            NewRegistration::parse(&user.username, &user.email, "a valid password").is_ok(),
            "stored {:?} / {:?}",
            user.username,
            user.email
        );
    }
}
