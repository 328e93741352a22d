//! The GPUaaS node agent: configuration, enrolment, the QUIC control session with the
//! coordinator, and the fleet simulator.
//!
//! - [`config`]: the strict TOML configuration;
//! - [`identity`]: the node's key and certificates in the state directory;
//! - [`enroll`]: token + CSR → certificate, trusting only the token's CA fingerprint;
//! - [`session`]: Hello/Welcome, heartbeats, certificate renewal, reconnect with backoff;
//! - [`fleet`]: many simulated agents in one process (dev mode, load tests);
//! - [`tls`], [`net`], [`framing`], [`backoff`]: the plumbing under them.
//!
//! Host access (GPUs, later MIG and cgroups) goes through `gpuaas-isolation`; the agent never
//! links the coordinator's store.

pub mod backoff;
pub mod bench;
pub mod config;
pub mod enroll;
pub mod fleet;
pub mod framing;
pub mod identity;
pub mod net;
pub mod observability;
pub mod session;
pub mod tls;
