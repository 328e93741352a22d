//! The enrolment token string.
//!
//! `gpuaas1.<ca-sha256 hex>.<token id>.<secret>`. An admin creates it through the API and hands
//! it to provisioning. The token id names the row in the coordinator's store; the secret is a
//! 256-bit random value of which the store keeps only a SHA-256 hash; the CA fingerprint is the
//! SHA-256 of the cluster CA certificate (DER), with which the agent verifies the coordinator
//! before it sends the secret (as kubeadm's discovery-token-ca-cert-hash does).

use std::fmt;
use std::str::FromStr;

use crate::ids::TokenId;

const MAGIC: &str = "gpuaas1";
/// Hex digits of the CA fingerprint (SHA-256).
pub const CA_FINGERPRINT_HEX_LEN: usize = 64;
/// Hex digits of the secret (256 bits).
pub const SECRET_HEX_LEN: usize = 64;

/// A parsed enrolment token.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollmentToken {
    /// SHA-256 of the cluster CA certificate in DER form.
    pub ca_fingerprint: [u8; 32],
    /// The token's id (public).
    pub id: TokenId,
    /// The secret (private): 32 random bytes.
    pub secret: [u8; 32],
}

/// A token string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenParseError {
    /// Not four dot-separated parts starting with `gpuaas1`.
    #[error("malformed enrolment token: expected gpuaas1.<ca-sha256>.<tok-id>.<secret>")]
    Shape,
    /// The CA fingerprint part is not 64 hex digits.
    #[error("malformed enrolment token: the CA fingerprint must be 64 hex digits")]
    Fingerprint,
    /// The token id part is not a token id.
    #[error("malformed enrolment token: {0}")]
    Id(#[from] crate::ids::IdParseError),
    /// The secret part is not 64 hex digits.
    #[error("malformed enrolment token: the secret must be 64 hex digits")]
    Secret,
}

/// Lower-case hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn from_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl FromStr for EnrollmentToken {
    type Err = TokenParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.trim().split('.');
        let (Some(MAGIC), Some(fp), Some(id), Some(secret), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(TokenParseError::Shape);
        };
        Ok(EnrollmentToken {
            ca_fingerprint: from_hex32(fp).ok_or(TokenParseError::Fingerprint)?,
            id: id.parse()?,
            secret: from_hex32(secret).ok_or(TokenParseError::Secret)?,
        })
    }
}

impl fmt::Display for EnrollmentToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{MAGIC}.{}.{}.{}",
            to_hex(&self.ca_fingerprint),
            self.id,
            to_hex(&self.secret)
        )
    }
}

impl fmt::Debug for EnrollmentToken {
    /// Never prints the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollmentToken")
            .field("ca_fingerprint", &to_hex(&self.ca_fingerprint))
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> EnrollmentToken {
        EnrollmentToken {
            ca_fingerprint: [0xab; 32],
            id: TokenId::from_raw(7),
            secret: [0x01; 32],
        }
    }

    #[test]
    fn round_trip() {
        let t = sample();
        let s = t.to_string();
        assert!(s.starts_with("gpuaas1.abab"));
        assert_eq!(s.parse::<EnrollmentToken>(), Ok(t));
    }

    #[test]
    fn debug_hides_secret() {
        assert!(!format!("{:?}", sample()).contains("0101"));
    }

    #[test]
    fn rejects_malformed() {
        let good = sample().to_string();
        assert_eq!("x".parse::<EnrollmentToken>(), Err(TokenParseError::Shape));
        assert_eq!(
            format!("{good}.extra").parse::<EnrollmentToken>(),
            Err(TokenParseError::Shape)
        );
        let bad_fp = good.replacen("abab", "zzab", 1);
        assert_eq!(
            bad_fp.parse::<EnrollmentToken>(),
            Err(TokenParseError::Fingerprint)
        );
        let short_secret = &good[..good.len() - 2];
        assert_eq!(
            short_secret.parse::<EnrollmentToken>(),
            Err(TokenParseError::Secret)
        );
        // multi-byte characters must not panic the hex decoder
        let fp_utf8 = format!(
            "gpuaas1.{}.tok-0000000000000007.{}",
            "é".repeat(32),
            "01".repeat(32)
        );
        assert_eq!(
            fp_utf8.parse::<EnrollmentToken>(),
            Err(TokenParseError::Fingerprint)
        );
    }
}
