//! The GPUaaS contract shared by the agent and the coordinator, sans-IO.
//!
//! This crate owns everything both ends of the wire must agree on:
//!
//! - [`ids`]: typed identifiers (`NodeId`, `AllocationId`, ...), so a node id can never be passed
//!   where an allocation id is expected;
//! - [`version`]: the protocol version and its negotiation rule;
//! - [`messages`]: the messages of the enrolment and control streams;
//! - [`inventory`]: what a node reports about its GPUs;
//! - [`token`]: the enrolment token string, which carries the cluster CA fingerprint;
//! - [`codec`]: the frame codec (u32 length prefix + bincode 2 payload, hard size limit);
//! - [`mig`]: the MIG model (profile tables per GPU model, placement rules), obeyed alike by the
//!   scheduler, the simulated backend and the NVML path.
//!
//! # Design
//! No tokio, no sockets, no files: every function here is a pure transformation of values, so
//! it can be property-tested and fuzzed in isolation. The async adapters that move frames over
//! QUIC streams live in the agent and the coordinator.

pub mod codec;
pub mod ids;
pub mod inventory;
pub mod messages;
pub mod mig;
pub mod token;
pub mod version;

pub use codec::{CodecError, Decoded, FrameDecoder, MAX_FRAME_LEN, encode_frame};
pub use ids::{AllocationId, IdParseError, NodeId, TokenId};
pub use version::{FirstMessage, PROTOCOL_VERSION, ProtocolVersion, VersionMismatch, peek_version};
