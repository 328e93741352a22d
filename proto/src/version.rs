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

/// The version a peer declares in a payload that does not decode as a message of this build:
/// the layout-stable prefix of the first message on each stream. `Hello` and `EnrollRequest`
/// start with their [`ProtocolVersion`], and `Hello` is variant 0 of `AgentMessage`, so a later
/// major version that changes anything after that prefix can still be refused by name.
pub fn peek_version(payload: &[u8], first: FirstMessage) -> Option<ProtocolVersion> {
    let config = bincode::config::standard().with_limit::<64>();
    let version = match first {
        FirstMessage::Hello => {
            let ((variant, version), _): ((u32, ProtocolVersion), usize) =
                bincode::serde::decode_from_slice(payload, config).ok()?;
            (variant == 0).then_some(version)?
        }
        FirstMessage::EnrollRequest => {
            bincode::serde::decode_from_slice::<ProtocolVersion, _>(payload, config)
                .ok()?
                .0
        }
    };
    Some(version)
}

/// Which first message [`peek_version`] looks into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstMessage {
    /// `AgentMessage::Hello` on the control stream.
    Hello,
    /// `EnrollRequest` on the enrolment stream.
    EnrollRequest,
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
    fn version_is_read_from_a_future_layout() {
        use crate::messages::{AgentMessage, EnrollRequest};
        let future = ProtocolVersion { major: 2, minor: 7 };
        // variant 0 (Hello), the version, then bytes this build cannot decode
        let mut payload =
            bincode::serde::encode_to_vec((0u32, future), bincode::config::standard()).unwrap();
        payload.extend_from_slice(&[0xff; 9]);
        let decoder = crate::codec::FrameDecoder::default();
        assert!(decoder.decode_payload::<AgentMessage>(&payload).is_err());
        assert_eq!(peek_version(&payload, FirstMessage::Hello), Some(future));
        assert!(
            decoder
                .decode_payload::<EnrollRequest>(&payload[1..])
                .is_err()
        );
        assert_eq!(
            peek_version(&payload[1..], FirstMessage::EnrollRequest),
            Some(future)
        );
        // another variant, or too few bytes: no version
        payload[0] = 1;
        assert_eq!(peek_version(&payload, FirstMessage::Hello), None);
        assert_eq!(peek_version(&[], FirstMessage::EnrollRequest), None);
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
