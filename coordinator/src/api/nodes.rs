//! Nodes: `GET /v1/nodes`, `GET /v1/nodes/{id}`, `DELETE /v1/nodes/{id}`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gpuaas_proto::NodeId;
use gpuaas_proto::inventory::Inventory;
use serde::Serialize;

use super::{ApiError, ApiState};
use crate::clock::{now_ms, rfc3339};
use crate::fleet::registry::NodeStatus;
use crate::store::{ApplyError, Command, NodeRecord, StoreError, read};

/// A node as the API shows it: stored facts plus live status.
#[derive(Debug, Serialize)]
pub struct NodeView {
    /// `node-<16 hex>`.
    pub id: String,
    /// Host name reported by the agent.
    pub hostname: String,
    /// `ready` or `not_ready`.
    pub status: NodeStatus,
    /// Agent version of the last session.
    pub agent_version: String,
    /// When the node enrolled (RFC 3339).
    pub enrolled_at: String,
    /// When the node was last heard from (RFC 3339), if ever.
    pub last_seen_at: Option<String>,
    /// Agent clock minus coordinator clock, ms, at the last message.
    pub clock_skew_ms: Option<i64>,
    /// GPUs the agent saw at its last heartbeat (fewer than the inventory's means a GPU was
    /// lost); absent until the first heartbeat of the current session.
    pub gpus_visible: Option<u32>,
    /// When the node's current certificate expires (RFC 3339).
    pub cert_not_after: String,
    /// Hardware reported in the last Hello.
    pub inventory: Option<Inventory>,
}

/// `{"nodes": [...]}`.
#[derive(Debug, Serialize)]
pub struct NodeList {
    /// The nodes, by id.
    pub nodes: Vec<NodeView>,
}

fn view(state: &ApiState, record: NodeRecord) -> NodeView {
    let live = state.fleet.registry.view(record.id, now_ms());
    NodeView {
        id: record.id.to_string(),
        hostname: record.hostname,
        status: live.status,
        agent_version: record.agent_version,
        enrolled_at: rfc3339(record.enrolled_at_ms),
        last_seen_at: live.last_heard_ms.or(record.last_seen_at_ms).map(rfc3339),
        clock_skew_ms: live.clock_skew_ms.or(record.clock_skew_ms),
        gpus_visible: live.gpus_visible,
        cert_not_after: rfc3339(record.cert_not_after_ms),
        inventory: record.inventory,
    }
}

fn parse_id(raw: &str) -> Result<NodeId, ApiError> {
    raw.parse().map_err(|e: gpuaas_proto::IdParseError| {
        ApiError::bad_request("invalid_node_id", e.to_string())
    })
}

/// `GET /v1/nodes`.
pub(super) async fn list(State(state): State<ApiState>) -> Result<Json<NodeList>, ApiError> {
    let records = state
        .fleet
        .store
        .read(read::list_nodes)
        .await
        .map_err(ApiError::internal)?;
    let nodes = records.into_iter().map(|r| view(&state, r)).collect();
    Ok(Json(NodeList { nodes }))
}

/// `GET /v1/nodes/{id}`.
pub(super) async fn get(
    State(state): State<ApiState>,
    Path(raw): Path<String>,
) -> Result<Json<NodeView>, ApiError> {
    let id = parse_id(&raw)?;
    let record = state
        .fleet
        .store
        .read(move |c| read::get_node(c, id))
        .await
        .map_err(ApiError::internal)?
        .filter(|r| r.deleted_at_ms.is_none())
        .ok_or_else(|| ApiError::not_found(format!("no node {id}")))?;
    Ok(Json(view(&state, record)))
}

/// `DELETE /v1/nodes/{id}`: revokes the node's certificate and ends its session.
pub(super) async fn delete(
    State(state): State<ApiState>,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&raw)?;
    let command = Command::DeleteNode {
        node_id: id,
        deleted_at_ms: now_ms(),
    };
    match state.fleet.store.execute(command).await {
        Ok(_) => {}
        Err(StoreError::Apply(ApplyError::NodeNotFound { .. })) => {
            return Err(ApiError::not_found(format!("no node {id}")));
        }
        Err(e) => return Err(ApiError::internal(e)),
    }
    state.fleet.revoked.revoke(id);
    state.fleet.registry.evict(id);
    tracing::warn!(node_id = %id, "node deleted; its certificate is revoked");
    Ok(StatusCode::NO_CONTENT)
}
