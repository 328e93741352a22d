//! Typed identifiers.
//!
//! Every id is a random 64-bit value shown as `<prefix>-<16 hex digits>` (for example
//! `node-3f9a1c2b4d5e6f70`). The prefix makes ids self-describing in logs and API paths; the
//! newtype makes them impossible to mix up in code. Ids are chosen by whoever creates the
//! entity (the coordinator, before it builds a store command), never inside the store.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An id string that does not have the expected `<prefix>-<16 hex digits>` form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} id {value:?}: expected {prefix}-<16 hex digits>")]
pub struct IdParseError {
    /// What kind of id was expected (`node`, `alloc`, ...).
    pub kind: &'static str,
    /// The expected prefix.
    pub prefix: &'static str,
    /// The rejected input, cut to 64 characters.
    pub value: String,
}

macro_rules! define_id {
    ($(#[$meta:meta])* $name:ident, $prefix:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(u64);

        impl $name {
            /// The prefix of this id's string form.
            pub const PREFIX: &'static str = $prefix;

            /// Wraps a raw value (for ids decided by a caller-supplied random source).
            pub const fn from_raw(raw: u64) -> Self {
                Self(raw)
            }

            /// The raw 64-bit value.
            pub const fn raw(self) -> u64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}-{:016x}", $prefix, self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let err = || IdParseError {
                    kind: $prefix,
                    prefix: $prefix,
                    value: s.chars().take(64).collect(),
                };
                let hex = s
                    .strip_prefix($prefix)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .ok_or_else(err)?;
                if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(err());
                }
                u64::from_str_radix(hex, 16).map(Self).map_err(|_| err())
            }
        }
    };
}

define_id!(
    /// A GPU host enrolled in the cluster. Bound into the node's certificate at enrolment.
    NodeId,
    "node"
);
define_id!(
    /// One allocation of resources to a project.
    AllocationId,
    "alloc"
);
define_id!(
    /// An enrolment token (the public half of the token string).
    TokenId,
    "tok"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let id = NodeId::from_raw(0x3f9a_1c2b_4d5e_6f70);
        assert_eq!(id.to_string(), "node-3f9a1c2b4d5e6f70");
        assert_eq!("node-3f9a1c2b4d5e6f70".parse::<NodeId>(), Ok(id));
    }

    #[test]
    fn parse_rejects_wrong_prefix_and_length() {
        assert!("alloc-3f9a1c2b4d5e6f70".parse::<NodeId>().is_err());
        assert!("node-3f9a".parse::<NodeId>().is_err());
        assert!("node-3f9a1c2b4d5e6f7g".parse::<NodeId>().is_err());
        assert!("node-+f9a1c2b4d5e6f70".parse::<NodeId>().is_err());
        let err = "nope".parse::<AllocationId>().unwrap_err();
        assert!(err.to_string().contains("alloc"), "{err}");
    }
}
