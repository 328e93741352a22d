//! Queries, and the pool of read-only connections they run on.
//!
//! Reads never go through the writer: in WAL mode a reader sees the last committed state
//! without waiting for, or delaying, the writer. Every function here takes a `&Connection` so
//! it runs on a pooled connection ([`super::Store::read`]) or inside a test's own connection.
//! Ids are stored as text in their display form and parsed back; a malformed stored value is
//! reported as a conversion failure naming the column, never silently skipped.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};

use gpuaas_proto::ids::{NodeId, TokenId};
use gpuaas_proto::inventory::Inventory;
use rusqlite::types::Type;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row};

use super::{BUSY_TIMEOUT, StoreError, ensure_pragma};

/// Read connections kept open for reuse; more are opened on demand and closed after use.
const POOL_IDLE_MAX: usize = 4;

/// A node as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// The node.
    pub id: NodeId,
    /// Host name, from enrollment or the latest inventory.
    pub hostname: String,
    /// Agent version, from enrollment or the latest hello.
    pub agent_version: String,
    /// The latest inventory, once the node said hello.
    pub inventory: Option<Inventory>,
    /// When it enrolled.
    pub enrolled_at_ms: i64,
    /// When it was last seen, once it said hello.
    pub last_seen_at_ms: Option<i64>,
    /// Agent clock minus coordinator clock, as last measured.
    pub clock_skew_ms: Option<i64>,
    /// Serial of its current certificate.
    pub cert_serial: Vec<u8>,
    /// When that certificate expires.
    pub cert_not_after_ms: i64,
    /// When it was deleted; a deleted node's certificate is revoked.
    pub deleted_at_ms: Option<i64>,
}

/// An enrollment token as stored (without its secret hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// The token.
    pub id: TokenId,
    /// What it is for.
    pub description: String,
    /// When it was created.
    pub created_at_ms: i64,
    /// From this instant on it is refused.
    pub expires_at_ms: i64,
    /// When it was used, if it was.
    pub used_at_ms: Option<i64>,
    /// The node it enrolled, if it was used.
    pub used_by_node: Option<NodeId>,
}

/// An API token as stored (without its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTokenRecord {
    /// Unique name.
    pub name: String,
    /// The role it grants.
    pub role: String,
    /// When it was created.
    pub created_at_ms: i64,
}

/// Which read failed, with the id it was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadQuery {
    /// [`get_node`].
    GetNode(NodeId),
    /// [`list_nodes`].
    ListNodes,
    /// [`deleted_node_ids`].
    DeletedNodeIds,
    /// [`node_is_active`].
    NodeIsActive(NodeId),
    /// [`api_token_by_hash`] (the hash is not shown).
    ApiTokenByHash,
    /// [`get_token`].
    GetToken(TokenId),
    /// [`count_api_tokens`].
    CountApiTokens,
    /// [`count_nodes_seen_since`].
    CountNodesSeenSince(i64),
    /// The settings of the write connection.
    WriteSettings,
}

impl fmt::Display for ReadQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadQuery::GetNode(id) => write!(f, "node {id}"),
            ReadQuery::ListNodes => f.write_str("the node list"),
            ReadQuery::DeletedNodeIds => f.write_str("the deleted node ids"),
            ReadQuery::NodeIsActive(id) => write!(f, "whether node {id} is active"),
            ReadQuery::ApiTokenByHash => f.write_str("an api token by hash"),
            ReadQuery::GetToken(id) => write!(f, "enrollment token {id}"),
            ReadQuery::CountApiTokens => f.write_str("the api token count"),
            ReadQuery::CountNodesSeenSince(ms) => write!(f, "the count of nodes seen since {ms}"),
            ReadQuery::WriteSettings => f.write_str("the write connection settings"),
        }
    }
}

const NODE_COLUMNS: &str = "id, hostname, agent_version, inventory_json, enrolled_at_ms, \
     last_seen_at_ms, clock_skew_ms, cert_serial, cert_not_after_ms, deleted_at_ms";

/// The node, deleted or not; `None` if it never existed.
pub fn get_node(conn: &Connection, id: NodeId) -> Result<Option<NodeRecord>, StoreError> {
    conn.query_row(
        &format!("SELECT {NODE_COLUMNS} FROM nodes WHERE id = ?1"),
        [id.to_string()],
        node_from_row,
    )
    .optional()
    .map_err(failed(ReadQuery::GetNode(id)))
}

/// Every node not deleted, by id.
pub fn list_nodes(conn: &Connection) -> Result<Vec<NodeRecord>, StoreError> {
    let query = || -> rusqlite::Result<Vec<NodeRecord>> {
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {NODE_COLUMNS} FROM nodes WHERE deleted_at_ms IS NULL ORDER BY id"
        ))?;
        stmt.query_map([], node_from_row)?.collect()
    };
    query().map_err(failed(ReadQuery::ListNodes))
}

/// The ids of deleted nodes (whose certificates are revoked), by id.
pub fn deleted_node_ids(conn: &Connection) -> Result<Vec<NodeId>, StoreError> {
    let query = || -> rusqlite::Result<Vec<NodeId>> {
        let mut stmt = conn
            .prepare_cached("SELECT id FROM nodes WHERE deleted_at_ms IS NOT NULL ORDER BY id")?;
        stmt.query_map([], |row| parse_col(row, 0))?.collect()
    };
    query().map_err(failed(ReadQuery::DeletedNodeIds))
}

/// Whether the node exists and is not deleted.
pub fn node_is_active(conn: &Connection, id: NodeId) -> Result<bool, StoreError> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM nodes WHERE id = ?1 AND deleted_at_ms IS NULL)",
        [id.to_string()],
        |row| row.get(0),
    )
    .map_err(failed(ReadQuery::NodeIsActive(id)))
}

/// The API token whose SHA-256 is `sha256`.
pub fn api_token_by_hash(
    conn: &Connection,
    sha256: &[u8; 32],
) -> Result<Option<ApiTokenRecord>, StoreError> {
    conn.query_row(
        "SELECT name, role, created_at_ms FROM api_tokens WHERE sha256 = ?1",
        [sha256],
        |row| {
            Ok(ApiTokenRecord {
                name: row.get(0)?,
                role: row.get(1)?,
                created_at_ms: row.get(2)?,
            })
        },
    )
    .optional()
    .map_err(failed(ReadQuery::ApiTokenByHash))
}

/// The enrollment token, used or not.
pub fn get_token(conn: &Connection, id: TokenId) -> Result<Option<TokenRecord>, StoreError> {
    conn.query_row(
        "SELECT id, description, created_at_ms, expires_at_ms, used_at_ms, used_by_node
         FROM enrollment_tokens WHERE id = ?1",
        [id.to_string()],
        |row| {
            Ok(TokenRecord {
                id: parse_col(row, 0)?,
                description: row.get(1)?,
                created_at_ms: row.get(2)?,
                expires_at_ms: row.get(3)?,
                used_at_ms: row.get(4)?,
                used_by_node: parse_opt_col(row, 5)?,
            })
        },
    )
    .optional()
    .map_err(failed(ReadQuery::GetToken(id)))
}

/// How many API tokens exist (zero means the bootstrap token may still be created).
pub fn count_api_tokens(conn: &Connection) -> Result<u64, StoreError> {
    conn.query_row("SELECT COUNT(*) FROM api_tokens", [], |row| {
        let count: i64 = row.get(0)?;
        u64::try_from(count).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(0, count))
    })
    .map_err(failed(ReadQuery::CountApiTokens))
}

/// The refusal [`Command::Enroll`](super::Command::Enroll) would give this token now, if any:
/// a pre-check so that the coordinator signs nothing for a request whose token is bad. The
/// command repeats the check authoritatively inside its transaction.
pub fn enrollment_refusal(
    conn: &Connection,
    token_id: TokenId,
    secret_sha256: &[u8; 32],
    now_ms: i64,
) -> Result<Option<super::ApplyError>, StoreError> {
    super::command::token_refusal(conn, &token_id.to_string(), token_id, secret_sha256, now_ms)
        .map_err(failed(ReadQuery::GetToken(token_id)))
}

/// How many live nodes were last seen at or after `since_ms` (a Hello records the time it
/// arrived), for benchmarks that wait until every node has reconnected.
pub fn count_nodes_seen_since(conn: &Connection, since_ms: i64) -> Result<u64, StoreError> {
    conn.query_row(
        "SELECT COUNT(*) FROM nodes WHERE deleted_at_ms IS NULL AND last_seen_at_ms >= ?1",
        [since_ms],
        |row| {
            let count: i64 = row.get(0)?;
            u64::try_from(count).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(0, count))
        },
    )
    .map_err(failed(ReadQuery::CountNodesSeenSince(since_ms)))
}

fn failed(query: ReadQuery) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Read { query, source }
}

fn node_from_row(row: &Row<'_>) -> rusqlite::Result<NodeRecord> {
    let inventory = match row.get_ref(3)?.as_str_or_null()? {
        None => None,
        Some(json) => Some(
            serde_json::from_str(json)
                .map_err(|e| rusqlite::Error::FromSqlConversionFailure(3, Type::Text, e.into()))?,
        ),
    };
    Ok(NodeRecord {
        id: parse_col(row, 0)?,
        hostname: row.get(1)?,
        agent_version: row.get(2)?,
        inventory,
        enrolled_at_ms: row.get(4)?,
        last_seen_at_ms: row.get(5)?,
        clock_skew_ms: row.get(6)?,
        cert_serial: row.get(7)?,
        cert_not_after_ms: row.get(8)?,
        deleted_at_ms: row.get(9)?,
    })
}

/// Parses a text column holding an id's display form.
fn parse_col<T>(row: &Row<'_>, idx: usize) -> rusqlite::Result<T>
where
    T: FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let text: String = row.get(idx)?;
    text.parse()
        .map_err(|e: T::Err| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, e.into()))
}

fn parse_opt_col<T>(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<T>>
where
    T: FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    match row.get_ref(idx)?.as_str_or_null()? {
        None => Ok(None),
        Some(_) => parse_col(row, idx).map(Some),
    }
}

/// Read-only connections to one database file, reused across calls.
pub(crate) struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    pub(crate) fn new(path: PathBuf) -> Self {
        ReadPool {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on an idle connection (or a new one), then keeps the connection if the pool
    /// has room.
    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // A poisoned lock only means another reader panicked; the Vec is still valid.
        let reused = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match reused {
            Some(conn) => conn,
            None => self.open()?,
        };
        let result = f(&conn);
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < POOL_IDLE_MAX {
            idle.push(conn);
        }
        result
    }

    /// Opens a connection that can read but never write (`query_only`).
    fn open(&self) -> Result<Connection, StoreError> {
        let path = &self.path;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(path, flags).map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|source| StoreError::Configure {
                path: path.clone(),
                pragma: "busy_timeout",
                source,
            })?;
        ensure_pragma(&conn, path, "query_only", "ON", "1")?;
        Ok(conn)
    }
}
