//! The admin HTTP API (HTTPS, bearer tokens), under `/v1`.
//!
//! Every response error is JSON `{"error": {"code": "...", "message": "..."}}`. Every mutation
//! validates its input completely before it submits a store command, so a rejected request
//! writes nothing. Tokens are 256-bit random values; the store keeps their SHA-256 only.
//!
//! Endpoints (this issue): `POST /v1/enrollment-tokens`, `GET /v1/nodes`,
//! `GET /v1/nodes/{id}`, `DELETE /v1/nodes/{id}`. The full API grows here.

mod error;
pub mod nodes;
pub mod tokens;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};

pub use error::ApiError;

use crate::fleet::FleetContext;
use crate::pki::sha256;
use crate::store::read;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Shared state of the API handlers.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// The fleet: store, CA, registry, revocation list.
    pub fleet: Arc<FleetContext>,
}

/// Builds the router.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/enrollment-tokens", post(tokens::create))
        .route("/v1/nodes", get(nodes::list))
        .route("/v1/nodes/{id}", get(nodes::get).delete(nodes::delete))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Checks the bearer token against the store.
async fn authenticate(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| ApiError::unauthorized("missing bearer token"))?;
    let hash = sha256(token.as_bytes());
    let found = state
        .fleet
        .store
        .read(move |c| read::api_token_by_hash(c, &hash))
        .await
        .map_err(ApiError::internal)?;
    if found.is_none() {
        tracing::warn!(
            security_event = "bad_api_token",
            "request with an unknown API token"
        );
        return Err(ApiError::unauthorized("unknown API token"));
    }
    Ok(next.run(request).await)
}
