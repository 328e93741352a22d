//! Messages of the two QUIC application protocols.
//!
//! - ALPN [`ALPN_ENROLL`] (`gpuaas-enroll/1`), for peers without a certificate: the agent opens
//!   one bidirectional stream, sends one [`EnrollRequest`], reads one [`EnrollResponse`], and the
//!   connection ends. Anything else closes the connection.
//! - ALPN [`ALPN_CONTROL`] (`gpuaas/1`), for enrolled nodes with a client certificate: the agent
//!   opens the control stream, sends [`AgentMessage::Hello`], and the coordinator answers with a
//!   [`CoordinatorFrame`] carrying [`CoordinatorMessage::Welcome`] or a refusal. Heartbeats and
//!   status follow on the same stream. Later issues add allocation and metering messages.
//!
//! The number in an ALPN names the framing generation, not the protocol version: the version
//! is negotiated in the first message of each stream, whose version prefix stays decodable by
//! every later build (`crate::version::peek_version`), so a peer of another major version is
//! refused with a message naming both versions rather than a bare TLS or decode failure.
//!
//! Every message the coordinator sends is wrapped in a [`CoordinatorFrame`] that carries the
//! coordinator's [`Term`], so a node can ignore orders from a deposed leader.
//!
//! Limits on field sizes are checked by the `validate` methods, before anything is stored.

use serde::{Deserialize, Serialize};

use crate::ids::NodeId;
use crate::inventory::Inventory;
use crate::version::ProtocolVersion;

/// ALPN of the enrolment protocol.
pub const ALPN_ENROLL: &[u8] = b"gpuaas-enroll/1";
/// ALPN of the control protocol (mTLS).
pub const ALPN_CONTROL: &[u8] = b"gpuaas/1";

/// Application close codes of a QUIC connection, with a reason string beside them.
pub mod close_code {
    /// Normal end of a session or of an enrolment.
    pub const DONE: u32 = 0;
    /// The peer broke the protocol: a garbage, oversized or unexpected frame.
    pub const PROTOCOL_VIOLATION: u32 = 1;
    /// The request was refused; a [`super::Refusal`] was sent first where possible.
    pub const REFUSED: u32 = 2;
    /// `gpuaas/1` without a client certificate.
    pub const CERTIFICATE_REQUIRED: u32 = 3;
    /// The node was deleted.
    pub const NODE_REVOKED: u32 = 4;
    /// A newer session of the same node replaced this one.
    pub const REPLACED: u32 = 5;
    /// The coordinator failed internally.
    pub const INTERNAL: u32 = 6;
    /// The coordinator is shutting down.
    pub const SHUTDOWN: u32 = 7;
}

/// Longest accepted host name (RFC 1035 limit).
pub const MAX_HOSTNAME_LEN: usize = 253;
/// Longest accepted agent version string.
pub const MAX_AGENT_VERSION_LEN: usize = 64;
/// Most GPUs one node may report.
pub const MAX_GPUS_PER_NODE: usize = 64;
/// Longest accepted string field inside a GPU record.
pub const MAX_GPU_FIELD_LEN: usize = 128;
/// Largest accepted certificate or CSR (DER).
pub const MAX_DER_LEN: usize = 16 * 1024;
/// Longest accepted enrolment token string.
pub const MAX_TOKEN_LEN: usize = 256;

/// The coordinator's leadership term. Desired-state orders from a lower term than the highest
/// a node has seen are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Term(pub u64);

/// First and only request on an enrolment connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The agent's protocol version.
    pub protocol: ProtocolVersion,
    /// The whole enrolment token string.
    pub token: String,
    /// A PKCS#10 certificate signing request (DER) for the node's key.
    pub csr_der: Vec<u8>,
    /// The host's name, for people.
    pub hostname: String,
    /// The agent's version string.
    pub agent_version: String,
}

/// Answer to an [`EnrollRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnrollResponse {
    /// The node is enrolled under `node_id`.
    Enrolled {
        /// The node's id, also bound into the certificate.
        node_id: NodeId,
        /// The node certificate (DER).
        cert_der: Vec<u8>,
        /// The cluster CA certificate (DER).
        ca_der: Vec<u8>,
    },
    /// Enrolment refused; nothing was stored.
    Refused(Refusal),
}

/// Why a request was refused, as a code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// Machine-readable reason.
    pub code: RefusalCode,
    /// Human-readable explanation.
    pub message: String,
}

/// Machine-readable refusal reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusalCode {
    /// The peer's protocol major version differs from ours.
    VersionMismatch,
    /// The token is unknown or its secret is wrong.
    TokenInvalid,
    /// The token's lifetime has passed.
    TokenExpired,
    /// The token was already used.
    TokenUsed,
    /// A field is missing, too long or malformed.
    BadRequest,
    /// The message claims an identity other than the certificate's.
    IdentityMismatch,
    /// The node was deleted.
    NodeRevoked,
    /// The coordinator failed; retry later.
    Internal,
}

/// Messages from the agent on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentMessage {
    /// First message of every session.
    Hello(Hello),
    /// Periodic status.
    Heartbeat(Heartbeat),
    /// A fresh CSR for the node's key; answered with [`CoordinatorMessage::CertificateRenewed`].
    RenewCertificate {
        /// PKCS#10 CSR (DER).
        csr_der: Vec<u8>,
    },
}

/// First message on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The agent's protocol version.
    pub protocol: ProtocolVersion,
    /// The node the agent believes it is; must equal the identity in its certificate.
    pub node_id: NodeId,
    /// The agent's version string.
    pub agent_version: String,
    /// The node's hardware.
    pub inventory: Inventory,
    /// The agent's wall clock, milliseconds since the Unix epoch (for clock-skew tracking).
    pub wall_clock_ms: i64,
}

/// Periodic status from the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Increments by one per heartbeat within a session.
    pub seq: u64,
    /// The agent's wall clock, milliseconds since the Unix epoch.
    pub wall_clock_ms: i64,
    /// GPUs the backend lists right now. Fewer than the inventory's means a GPU fell off the
    /// bus or the driver lost it; the coordinator shows the count beside the inventory.
    pub gpus_visible: u32,
}

/// Every message from the coordinator, stamped with its term.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinatorFrame {
    /// The sender's leadership term.
    pub term: Term,
    /// The message.
    pub message: CoordinatorMessage,
}

/// Messages from the coordinator on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoordinatorMessage {
    /// The session is accepted.
    Welcome(Welcome),
    /// The session is refused; the coordinator closes the connection after sending it.
    Refused(Refusal),
    /// A renewed node certificate (DER), to use from the next connection on.
    CertificateRenewed {
        /// The new certificate.
        cert_der: Vec<u8>,
    },
}

/// Acceptance of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The version the session runs at.
    pub protocol: ProtocolVersion,
    /// The node's id as the coordinator knows it (from the certificate).
    pub node_id: NodeId,
    /// How often the agent should send heartbeats.
    pub heartbeat_interval_ms: u64,
    /// The coordinator's wall clock, milliseconds since the Unix epoch.
    pub wall_clock_ms: i64,
}

/// A field that breaks a size or shape rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {problem}")]
pub struct FieldError {
    /// Dotted path of the field (`inventory.gpus[3].uuid`).
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

fn check_len(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.len() > max {
        return Err(FieldError {
            field: field.to_owned(),
            problem: format!("{} bytes, at most {max} allowed", value.len()),
        });
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError {
            field: field.to_owned(),
            problem: "contains control characters".to_owned(),
        });
    }
    Ok(())
}

fn check_der(field: &str, der: &[u8]) -> Result<(), FieldError> {
    if der.is_empty() || der.len() > MAX_DER_LEN {
        return Err(FieldError {
            field: field.to_owned(),
            problem: format!("{} bytes, expected 1..={MAX_DER_LEN}", der.len()),
        });
    }
    Ok(())
}

impl EnrollRequest {
    /// Checks every field's size and shape.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_len("token", &self.token, MAX_TOKEN_LEN)?;
        check_der("csr_der", &self.csr_der)?;
        check_len("hostname", &self.hostname, MAX_HOSTNAME_LEN)?;
        check_len("agent_version", &self.agent_version, MAX_AGENT_VERSION_LEN)
    }
}

impl Hello {
    /// Checks every field's size and shape.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_len("agent_version", &self.agent_version, MAX_AGENT_VERSION_LEN)?;
        self.inventory.validate()
    }
}

impl AgentMessage {
    /// Checks every field's size and shape.
    pub fn validate(&self) -> Result<(), FieldError> {
        match self {
            AgentMessage::Hello(hello) => hello.validate(),
            AgentMessage::Heartbeat(_) => Ok(()),
            AgentMessage::RenewCertificate { csr_der } => check_der("csr_der", csr_der),
        }
    }
}

impl Inventory {
    /// Checks every field's size and shape.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_len("inventory.hostname", &self.hostname, MAX_HOSTNAME_LEN)?;
        if self.gpus.len() > MAX_GPUS_PER_NODE {
            return Err(FieldError {
                field: "inventory.gpus".to_owned(),
                problem: format!("{} GPUs, at most {MAX_GPUS_PER_NODE}", self.gpus.len()),
            });
        }
        for (i, gpu) in self.gpus.iter().enumerate() {
            for (name, value) in [
                ("uuid", &gpu.uuid),
                ("model", &gpu.model),
                ("nvml_name", &gpu.nvml_name),
                ("pci_bus_id", &gpu.pci_bus_id),
            ] {
                check_len(
                    &format!("inventory.gpus[{i}].{name}"),
                    value,
                    MAX_GPU_FIELD_LEN,
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::PROTOCOL_VERSION;

    fn hello() -> Hello {
        Hello {
            protocol: PROTOCOL_VERSION,
            node_id: NodeId::from_raw(1),
            agent_version: "0.1.0".into(),
            inventory: Inventory {
                hostname: "gpu-01".into(),
                cpu_cores: 64,
                memory_mib: 1 << 20,
                gpus: vec![],
            },
            wall_clock_ms: 0,
        }
    }

    #[test]
    fn valid_hello_passes() {
        assert_eq!(hello().validate(), Ok(()));
    }

    #[test]
    fn oversized_and_control_fields_are_named() {
        let mut h = hello();
        h.inventory.hostname = "x".repeat(MAX_HOSTNAME_LEN + 1);
        let err = h.validate().unwrap_err();
        assert_eq!(err.field, "inventory.hostname");
        let mut h = hello();
        h.agent_version = "1.0\n".into();
        assert_eq!(h.validate().unwrap_err().field, "agent_version");
    }

    #[test]
    fn empty_csr_is_rejected() {
        let msg = AgentMessage::RenewCertificate { csr_der: vec![] };
        assert_eq!(msg.validate().unwrap_err().field, "csr_der");
    }
}
