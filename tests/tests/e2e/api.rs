//! The admin API refuses bad input with a JSON error naming the problem, and writes nothing.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::Coord;

/// Asserts `{"error": {"code": code, "message": <non-empty>}}`.
fn assert_error(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "error code in {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "error message in {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_refuses_missing_and_unknown_bearer_tokens() {
    let coord = Coord::start().await;
    let admin = coord.admin_token();
    let wrong = format!("{}0", admin);
    for (what, bearer) in [("no token", None), ("unknown token", Some(wrong.as_str()))] {
        let (status, body) = coord.api(Method::GET, "/v1/nodes", bearer, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
        assert_error(&body, "unauthorized");
        let (status, body) = coord
            .api(
                Method::POST,
                "/v1/enrollment-tokens",
                bearer,
                Some(json!({"ttl_seconds": 600})),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
        assert_error(&body, "unauthorized");
    }
    assert_eq!(coord.token_rows().await, 0, "nothing written without auth");

    // The real token works, so the 401s above were about the token.
    let (status, body) = coord
        .api(Method::GET, "/v1/nodes", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["nodes"], json!([]));
    coord.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_rejects_bad_input_and_writes_nothing() {
    let coord = Coord::start().await;
    let admin = coord.admin_token();
    let admin = Some(admin.as_str());

    let (status, body) = coord
        .api(
            Method::POST,
            "/v1/enrollment-tokens",
            admin,
            Some(json!({"ttl_seconds": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_error(&body, "invalid_ttl_seconds");
    assert_eq!(
        coord.token_rows().await,
        0,
        "a refused token is not written"
    );

    let (status, body) = coord
        .api(
            Method::POST,
            "/v1/enrollment-tokens",
            admin,
            Some(json!({"ttl_seconds": 600, "colour": "blue"})),
        )
        .await;
    assert!(status.is_client_error(), "unknown field: {status} {body}");
    assert_error(&body, "invalid_body");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("colour"),
        "the message names the unknown field: {body}"
    );
    assert_eq!(
        coord.token_rows().await,
        0,
        "a refused token is not written"
    );

    let (status, body) = coord
        .api(Method::GET, "/v1/nodes/not-an-id", admin, None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_error(&body, "invalid_node_id");

    let (status, body) = coord
        .api(Method::GET, "/v1/nodes/node-0000000000000001", admin, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_error(&body, "not_found");

    let (status, body) = coord
        .api(
            Method::DELETE,
            "/v1/nodes/node-0000000000000001",
            admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_error(&body, "not_found");
    assert!(coord.nodes().await.is_empty());

    // A valid request is accepted, so the refusals above were about their input.
    let (status, body) = coord
        .api(
            Method::POST,
            "/v1/enrollment-tokens",
            admin,
            Some(json!({"ttl_seconds": 600, "description": "ok"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(
        body["token"]
            .as_str()
            .is_some_and(|t| t.starts_with("gpuaas1."))
    );
    assert_eq!(coord.token_rows().await, 1);
    coord.shutdown().await;
}
