//! `GET /api/openapi.json` describes every public route.

use serde_json::Value;

use crate::helpers::spawn_app;

#[actix_web::test]
async fn the_openapi_document_describes_every_public_route_and_the_problem_bodies() {
    let app = spawn_app().await;

    let response = app.get("/api/openapi.json").await;

    assert_eq!(response.status().as_u16(), 200);
    let doc: Value = response.json().await.expect("json");
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        doc["openapi"]
    );
    let routes = [
        ("post", "/api/v1/registrations"),
        ("get", "/api/v1/registrations/{id}"),
        ("get", "/"),
        ("get", "/register"),
        ("post", "/register"),
        ("get", "/register/welcome"),
        ("get", "/health/live"),
        ("get", "/health/ready"),
        ("get", "/metrics"),
        ("get", "/api/openapi.json"),
        ("get", "/admin/email-sync/jobs"),
        ("get", "/admin/email-sync/jobs/{id}"),
        ("post", "/admin/email-sync/jobs/{id}/retry"),
        ("post", "/admin/email-sync/retry-dead"),
        ("delete", "/admin/users/{id}"),
        ("get", "/admin"),
        ("get", "/admin/login"),
        ("post", "/admin/login"),
        ("post", "/admin/logout"),
        ("get", "/admin/jobs"),
        ("post", "/admin/jobs/{id}/retry"),
        ("post", "/admin/retry-dead"),
        ("get", "/admin/search"),
        ("get", "/admin/users/{id}/erase"),
        ("post", "/admin/users/{id}/erase"),
    ];
    for (method, path) in routes {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is documented"
        );
    }
    let create = &doc["paths"]["/api/v1/registrations"]["post"];
    for status in ["201", "400", "409", "413", "415", "422", "429", "503"] {
        assert!(
            create["responses"][status].is_object(),
            "POST /api/v1/registrations {status}"
        );
    }
    assert!(create["responses"]["409"]["content"]["application/problem+json"].is_object());
    let action = &doc["paths"]["/admin/retry-dead"]["post"]["responses"];
    for status in ["303", "400", "403", "404", "413", "415", "503"] {
        assert!(
            action[status].is_object(),
            "POST /admin/retry-dead {status}"
        );
    }
    assert!(action["400"]["content"]["application/problem+json"].is_object());
    assert!(action["403"]["content"]["text/html"].is_object());
    assert!(action["503"]["headers"]["Retry-After"].is_object());
    let problem = &doc["components"]["schemas"]["Problem"]["properties"];
    for member in [
        "type", "title", "status", "detail", "code", "field", "errors",
    ] {
        assert!(problem[member].is_object(), "Problem.{member}");
    }
}
