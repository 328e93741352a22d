//! Store commands and [`apply`], the one deterministic function that turns them into rows.
//!
//! Every mutation of the store is a [`Command`] value. Whatever varies — ids, timestamps,
//! hashes of random secrets — is decided by the caller and carried in the command, so `apply`
//! reads no clock and no randomness: the same commands applied in the same order to the same
//! database give the same rows. That is what lets a consensus log carry these commands to
//! every replica, and lets recovery replay them.
//!
//! `apply` checks the domain rules (token valid, node active, name free) before writing, and
//! expects to run inside a savepoint that its caller rolls back when it returns `Err`, so a
//! refused command leaves nothing behind.

use std::fmt;

use gpuaas_proto::ids::{NodeId, TokenId};
use gpuaas_proto::inventory::Inventory;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// One mutation of the store. Ids and timestamps (unix milliseconds) come from the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Stores a new enrollment token (only the SHA-256 of its secret).
    CreateEnrollmentToken {
        /// The token's public id.
        id: TokenId,
        /// SHA-256 of the token's secret.
        secret_sha256: [u8; 32],
        /// What the token is for, for people.
        description: String,
        /// When it was created.
        created_at_ms: i64,
        /// From this instant on the token is refused.
        expires_at_ms: i64,
    },
    /// Consumes an enrollment token and creates the node, atomically.
    Enroll {
        /// The token presented.
        token_id: TokenId,
        /// SHA-256 of the secret presented.
        secret_sha256: [u8; 32],
        /// The coordinator's time of the request.
        now_ms: i64,
        /// The id chosen for the new node.
        node_id: NodeId,
        /// The host name the agent reported.
        hostname: String,
        /// The agent's version.
        agent_version: String,
        /// Serial of the certificate issued to the node.
        cert_serial: Vec<u8>,
        /// When that certificate expires.
        cert_not_after_ms: i64,
    },
    /// Records a node's `Hello`: its inventory, version and clock skew.
    RecordHello {
        /// The node (from its certificate).
        node_id: NodeId,
        /// The agent's version.
        agent_version: String,
        /// The node's hardware; its `hostname` replaces the stored one.
        inventory: Inventory,
        /// When the hello arrived.
        seen_at_ms: i64,
        /// Agent clock minus coordinator clock.
        clock_skew_ms: i64,
    },
    /// Records that a node was seen (heartbeat summary, disconnect).
    RecordSeen {
        /// The node.
        node_id: NodeId,
        /// When it was last seen.
        seen_at_ms: i64,
        /// Agent clock minus coordinator clock.
        clock_skew_ms: i64,
    },
    /// Records a renewed node certificate.
    RenewCertificate {
        /// The node.
        node_id: NodeId,
        /// Serial of the new certificate.
        cert_serial: Vec<u8>,
        /// When the new certificate expires.
        cert_not_after_ms: i64,
    },
    /// Marks a node deleted; the row stays so that its revocation persists.
    DeleteNode {
        /// The node.
        node_id: NodeId,
        /// When it was deleted.
        deleted_at_ms: i64,
    },
    /// Stores a new API bearer token (only its SHA-256).
    CreateApiToken {
        /// Unique name, for people.
        name: String,
        /// SHA-256 of the token.
        sha256: [u8; 32],
        /// The role it grants.
        role: String,
        /// When it was created.
        created_at_ms: i64,
    },
}

/// Which command, for errors and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandKind {
    /// [`Command::CreateEnrollmentToken`].
    CreateEnrollmentToken,
    /// [`Command::Enroll`].
    Enroll,
    /// [`Command::RecordHello`].
    RecordHello,
    /// [`Command::RecordSeen`].
    RecordSeen,
    /// [`Command::RenewCertificate`].
    RenewCertificate,
    /// [`Command::DeleteNode`].
    DeleteNode,
    /// [`Command::CreateApiToken`].
    CreateApiToken,
}

impl fmt::Display for CommandKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CommandKind::CreateEnrollmentToken => "create_enrollment_token",
            CommandKind::Enroll => "enroll",
            CommandKind::RecordHello => "record_hello",
            CommandKind::RecordSeen => "record_seen",
            CommandKind::RenewCertificate => "renew_certificate",
            CommandKind::DeleteNode => "delete_node",
            CommandKind::CreateApiToken => "create_api_token",
        })
    }
}

/// The entity a command is about, for errors and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A node.
    Node(NodeId),
    /// An enrollment token.
    Token(TokenId),
    /// An API token, by name.
    ApiToken(String),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Node(id) => write!(f, "{id}"),
            Subject::Token(id) => write!(f, "{id}"),
            Subject::ApiToken(name) => write!(f, "api token {name:?}"),
        }
    }
}

impl Command {
    /// Which command this is.
    pub fn kind(&self) -> CommandKind {
        match self {
            Command::CreateEnrollmentToken { .. } => CommandKind::CreateEnrollmentToken,
            Command::Enroll { .. } => CommandKind::Enroll,
            Command::RecordHello { .. } => CommandKind::RecordHello,
            Command::RecordSeen { .. } => CommandKind::RecordSeen,
            Command::RenewCertificate { .. } => CommandKind::RenewCertificate,
            Command::DeleteNode { .. } => CommandKind::DeleteNode,
            Command::CreateApiToken { .. } => CommandKind::CreateApiToken,
        }
    }

    /// What this command is about (the node for `Enroll`).
    pub fn subject(&self) -> Subject {
        match self {
            Command::CreateEnrollmentToken { id, .. } => Subject::Token(*id),
            Command::Enroll { node_id, .. }
            | Command::RecordHello { node_id, .. }
            | Command::RecordSeen { node_id, .. }
            | Command::RenewCertificate { node_id, .. }
            | Command::DeleteNode { node_id, .. } => Subject::Node(*node_id),
            Command::CreateApiToken { name, .. } => Subject::ApiToken(name.clone()),
        }
    }
}

/// What a successfully applied command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The command's changes are in the database.
    Done,
}

/// Why [`apply`] did not apply a command. All but `Sqlite` and `EncodeInventory` are refusals
/// by the domain rules (see [`ApplyError::is_refusal`]).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// No such token, or the secret does not match: deliberately indistinguishable.
    #[error("enrollment token {token_id} is unknown or its secret does not match")]
    TokenInvalid {
        /// The token presented.
        token_id: TokenId,
    },
    /// The token's lifetime is over.
    #[error("enrollment token {token_id} expired at {expires_at_ms} (now {now_ms})")]
    TokenExpired {
        /// The token.
        token_id: TokenId,
        /// When it expired.
        expires_at_ms: i64,
        /// The time carried by the command.
        now_ms: i64,
    },
    /// The token was already consumed by an enrollment.
    #[error("enrollment token {token_id} was already used")]
    TokenUsed {
        /// The token.
        token_id: TokenId,
    },
    /// An enrollment token with this id exists already.
    #[error("enrollment token {token_id} already exists")]
    TokenIdTaken {
        /// The id.
        token_id: TokenId,
    },
    /// No such node, or it was deleted.
    #[error("node {node_id} not found or deleted")]
    NodeNotFound {
        /// The node.
        node_id: NodeId,
    },
    /// A node with this id exists already (possibly deleted).
    #[error("node {node_id} already exists")]
    NodeIdTaken {
        /// The id.
        node_id: NodeId,
    },
    /// An API token with this name exists already.
    #[error("api token name {name:?} is taken")]
    NameTaken {
        /// The name.
        name: String,
    },
    /// An API token with the same hash exists already.
    #[error("api token {name:?} has the hash of an existing token")]
    ApiTokenHashTaken {
        /// The new token's name.
        name: String,
    },
    /// SQLite failed while applying the command.
    #[error("{command} of {subject} failed in sqlite")]
    Sqlite {
        /// The command.
        command: CommandKind,
        /// What it was about.
        subject: Subject,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// The inventory could not be encoded as JSON.
    #[error("encoding the inventory of {node_id}")]
    EncodeInventory {
        /// The node.
        node_id: NodeId,
        /// What serde_json said.
        source: serde_json::Error,
    },
}

impl ApplyError {
    /// Whether this is a refusal by the domain rules (the caller's fault, 4xx), as opposed to a
    /// storage failure (5xx).
    pub fn is_refusal(&self) -> bool {
        !matches!(
            self,
            ApplyError::Sqlite { .. } | ApplyError::EncodeInventory { .. }
        )
    }
}

/// Applies `cmd` to `conn`, which must be inside a transaction or savepoint that the caller
/// rolls back when this returns `Err`. Deterministic: no clock, no randomness.
pub fn apply(conn: &Connection, cmd: &Command) -> Result<Outcome, ApplyError> {
    let sqlite = |source| ApplyError::Sqlite {
        command: cmd.kind(),
        subject: cmd.subject(),
        source,
    };
    match cmd {
        Command::CreateEnrollmentToken {
            id,
            secret_sha256,
            description,
            created_at_ms,
            expires_at_ms,
        } => {
            let id_text = id.to_string();
            if exists(conn, "enrollment_tokens", "id", &id_text).map_err(sqlite)? {
                return Err(ApplyError::TokenIdTaken { token_id: *id });
            }
            conn.execute(
                "INSERT INTO enrollment_tokens
                     (id, secret_sha256, description, created_at_ms, expires_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    id_text,
                    secret_sha256,
                    description,
                    created_at_ms,
                    expires_at_ms
                ],
            )
            .map_err(sqlite)?;
        }
        Command::Enroll {
            token_id,
            secret_sha256,
            now_ms,
            node_id,
            hostname,
            agent_version,
            cert_serial,
            cert_not_after_ms,
        } => {
            let token_text = token_id.to_string();
            let refusal = token_refusal(conn, &token_text, *token_id, secret_sha256, *now_ms)
                .map_err(sqlite)?;
            if let Some(refusal) = refusal {
                return Err(refusal);
            }
            let node_text = node_id.to_string();
            if exists(conn, "nodes", "id", &node_text).map_err(sqlite)? {
                return Err(ApplyError::NodeIdTaken { node_id: *node_id });
            }
            conn.execute(
                "INSERT INTO nodes (id, hostname, agent_version, enrolled_at_ms, cert_serial,
                     cert_not_after_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    node_text,
                    hostname,
                    agent_version,
                    now_ms,
                    cert_serial,
                    cert_not_after_ms
                ],
            )
            .map_err(sqlite)?;
            conn.execute(
                "UPDATE enrollment_tokens SET used_at_ms = ?2, used_by_node = ?3 WHERE id = ?1",
                params![token_text, now_ms, node_text],
            )
            .map_err(sqlite)?;
        }
        Command::RecordHello {
            node_id,
            agent_version,
            inventory,
            seen_at_ms,
            clock_skew_ms,
        } => {
            let json =
                serde_json::to_string(inventory).map_err(|source| ApplyError::EncodeInventory {
                    node_id: *node_id,
                    source,
                })?;
            let changed = conn
                .execute(
                    "UPDATE nodes SET agent_version = ?2, inventory_json = ?3, hostname = ?4,
                         last_seen_at_ms = ?5, clock_skew_ms = ?6
                     WHERE id = ?1 AND deleted_at_ms IS NULL",
                    params![
                        node_id.to_string(),
                        agent_version,
                        json,
                        inventory.hostname,
                        seen_at_ms,
                        clock_skew_ms
                    ],
                )
                .map_err(sqlite)?;
            require_node(changed, *node_id)?;
        }
        Command::RecordSeen {
            node_id,
            seen_at_ms,
            clock_skew_ms,
        } => {
            let changed = conn
                .execute(
                    "UPDATE nodes SET last_seen_at_ms = ?2, clock_skew_ms = ?3
                     WHERE id = ?1 AND deleted_at_ms IS NULL",
                    params![node_id.to_string(), seen_at_ms, clock_skew_ms],
                )
                .map_err(sqlite)?;
            require_node(changed, *node_id)?;
        }
        Command::RenewCertificate {
            node_id,
            cert_serial,
            cert_not_after_ms,
        } => {
            let changed = conn
                .execute(
                    "UPDATE nodes SET cert_serial = ?2, cert_not_after_ms = ?3
                     WHERE id = ?1 AND deleted_at_ms IS NULL",
                    params![node_id.to_string(), cert_serial, cert_not_after_ms],
                )
                .map_err(sqlite)?;
            require_node(changed, *node_id)?;
        }
        Command::DeleteNode {
            node_id,
            deleted_at_ms,
        } => {
            let changed = conn
                .execute(
                    "UPDATE nodes SET deleted_at_ms = ?2 WHERE id = ?1 AND deleted_at_ms IS NULL",
                    params![node_id.to_string(), deleted_at_ms],
                )
                .map_err(sqlite)?;
            require_node(changed, *node_id)?;
        }
        Command::CreateApiToken {
            name,
            sha256,
            role,
            created_at_ms,
        } => {
            if exists(conn, "api_tokens", "name", name).map_err(sqlite)? {
                return Err(ApplyError::NameTaken { name: name.clone() });
            }
            if exists(conn, "api_tokens", "sha256", sha256).map_err(sqlite)? {
                return Err(ApplyError::ApiTokenHashTaken { name: name.clone() });
            }
            conn.execute(
                "INSERT INTO api_tokens (sha256, name, role, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4)",
                params![sha256, name, role, created_at_ms],
            )
            .map_err(sqlite)?;
        }
    }
    Ok(Outcome::Done)
}

/// The token checks of [`Command::Enroll`], in an order that tells nothing about the token's
/// state (expired, used) to someone who does not hold its secret.
pub(crate) fn token_refusal(
    conn: &Connection,
    token_text: &str,
    token_id: TokenId,
    secret_sha256: &[u8; 32],
    now_ms: i64,
) -> rusqlite::Result<Option<ApplyError>> {
    let token: Option<([u8; 32], i64, Option<i64>)> = conn
        .query_row(
            "SELECT secret_sha256, expires_at_ms, used_at_ms FROM enrollment_tokens WHERE id = ?1",
            [token_text],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .optional()?;
    // Unknown and wrong secret are the same error.
    Ok(match token {
        None => Some(ApplyError::TokenInvalid { token_id }),
        Some((stored, _, _)) if !hashes_equal(&stored, secret_sha256) => {
            Some(ApplyError::TokenInvalid { token_id })
        }
        Some((_, expires_at_ms, _)) if now_ms >= expires_at_ms => Some(ApplyError::TokenExpired {
            token_id,
            expires_at_ms,
            now_ms,
        }),
        Some((_, _, Some(_))) => Some(ApplyError::TokenUsed { token_id }),
        Some((_, _, None)) => None,
    })
}

/// `NodeNotFound` unless the update touched the node's row.
fn require_node(changed: usize, node_id: NodeId) -> Result<(), ApplyError> {
    if changed == 0 {
        Err(ApplyError::NodeNotFound { node_id })
    } else {
        Ok(())
    }
}

/// Whether `table` has a row with `column = value`. Table and column are constants of this file.
fn exists(
    conn: &Connection,
    table: &'static str,
    column: &'static str,
    value: &dyn rusqlite::ToSql,
) -> rusqlite::Result<bool> {
    conn.query_row(
        &format!("SELECT EXISTS (SELECT 1 FROM {table} WHERE {column} = ?1)"),
        [value],
        |row| row.get(0),
    )
}

/// Compares two hashes without an early exit on the first differing byte.
fn hashes_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
