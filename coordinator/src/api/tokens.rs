//! Enrolment tokens: `POST /v1/enrollment-tokens`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use gpuaas_proto::TokenId;
use gpuaas_proto::token::EnrollmentToken;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiState};
use crate::clock::{now_ms, rfc3339};
use crate::fleet::FleetContext;
use crate::pki::{ClusterCa, sha256};
use crate::store::{Command, Store};

/// Default token lifetime.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// Allowed token lifetimes, seconds (one minute to seven days).
pub const TTL_SECS: std::ops::RangeInclusive<u64> = 60..=7 * 86_400;
/// Longest description.
pub const MAX_DESCRIPTION: usize = 256;

/// Body of `POST /v1/enrollment-tokens`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// Lifetime in seconds (default 3600).
    pub ttl_seconds: Option<u64>,
    /// Free text for people ("rack 12 batch").
    pub description: Option<String>,
}

/// A created token. The token string is shown once and never stored.
#[derive(Debug, Serialize)]
pub struct CreatedToken {
    /// The token's public id.
    pub id: String,
    /// The whole token string for `gpuaas-agent enroll --token`.
    pub token: String,
    /// When it stops working (RFC 3339, UTC).
    pub expires_at: String,
    /// The description given.
    pub description: String,
}

/// Validates a request: returns (ttl, description) or the error naming the field.
pub fn validate(request: &CreateTokenRequest) -> Result<(Duration, String), ApiError> {
    let ttl = request.ttl_seconds.unwrap_or(DEFAULT_TTL.as_secs());
    if !TTL_SECS.contains(&ttl) {
        return Err(ApiError::bad_request(
            "invalid_ttl_seconds",
            format!("ttl_seconds {ttl} is outside {TTL_SECS:?}"),
        ));
    }
    let description = request.description.clone().unwrap_or_default();
    if description.len() > MAX_DESCRIPTION || description.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_description",
            format!(
                "description must be at most {MAX_DESCRIPTION} bytes without control characters"
            ),
        ));
    }
    Ok((Duration::from_secs(ttl), description))
}

/// Creates a token through the store; used by the API and by dev mode.
pub async fn issue(
    fleet: &FleetContext,
    ttl: Duration,
    description: String,
) -> Result<CreatedToken, crate::store::StoreError> {
    issue_with(&fleet.store, &fleet.ca, ttl, description).await
}

/// Creates a token in `store` for the cluster of `ca` (also before the server runs).
pub async fn issue_with(
    store: &Store,
    ca: &ClusterCa,
    ttl: Duration,
    description: String,
) -> Result<CreatedToken, crate::store::StoreError> {
    let id = TokenId::from_raw(rand::random());
    let token = EnrollmentToken {
        ca_fingerprint: ca.fingerprint(),
        id,
        secret: rand::random(),
    };
    let created_at_ms = now_ms();
    let expires_at_ms =
        created_at_ms.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
    store
        .execute(Command::CreateEnrollmentToken {
            id,
            secret_sha256: sha256(&token.secret),
            description: description.clone(),
            created_at_ms,
            expires_at_ms,
        })
        .await?;
    tracing::info!(token_id = %id, expires_at_ms, "enrolment token created");
    Ok(CreatedToken {
        id: id.to_string(),
        token: token.to_string(),
        expires_at: rfc3339(expires_at_ms),
        description,
    })
}

/// `POST /v1/enrollment-tokens`.
pub(super) async fn create(
    State(state): State<ApiState>,
    body: Result<Json<CreateTokenRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let Json(request) = body?;
    let (ttl, description) = validate(&request)?;
    let created = issue(&state.fleet, ttl, description)
        .await
        .map_err(ApiError::internal)?;
    Ok((StatusCode::CREATED, Json(created)))
}
