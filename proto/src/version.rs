//! The protocol version and the rule for two peers to agree on one.
//!
//! Peers speak the same protocol when their major versions are equal; the minor version only
//! adds optional fields and messages, and the session runs at the lower minor of the two.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A protocol version, `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProtocolVersion {
    /// Incompatible changes bump this.
    pub major: u16,
    /// Compatible additions bump this.
    pub minor: u16,
}

/// The version this build speaks.
pub const PROTOCOL_VERSION: ProtocolVersion = ProtocolVersion { major: 1, minor: 0 };

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Two peers whose major versions differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("protocol version mismatch: we speak {ours}, the peer speaks {theirs}")]
pub struct VersionMismatch {
    /// This side's version.
    pub ours: ProtocolVersion,
    /// The peer's version.
    pub theirs: ProtocolVersion,
}

impl ProtocolVersion {
    /// The version a session between `self` and `theirs` runs at, or a refusal naming both.
    pub fn negotiate(self, theirs: ProtocolVersion) -> Result<ProtocolVersion, VersionMismatch> {
        if self.major != theirs.major {
            return Err(VersionMismatch { ours: self, theirs });
        }
        Ok(ProtocolVersion {
            major: self.major,
            minor: self.minor.min(theirs.minor),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_major_runs_at_lower_minor() {
        let ours = ProtocolVersion { major: 1, minor: 3 };
        let theirs = ProtocolVersion { major: 1, minor: 1 };
        assert_eq!(ours.negotiate(theirs), Ok(theirs));
        assert_eq!(theirs.negotiate(ours), Ok(theirs));
    }

    #[test]
    fn other_major_is_refused_naming_both() {
        let theirs = ProtocolVersion { major: 2, minor: 0 };
        let err = PROTOCOL_VERSION.negotiate(theirs).unwrap_err();
        assert_eq!(
            err.to_string(),
            "protocol version mismatch: we speak 1.0, the peer speaks 2.0"
        );
    }
}
