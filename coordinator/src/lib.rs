//! The GPUaaS control plane as a library: the binary in `main.rs` wires these modules together,
//! and integration tests start the real server in-process through [`server`].
//!
//! - [`store`]: SQLite state, single writer, group commit, deterministic command apply;
//! - [`pki`]: the cluster CA, server and node certificates;
//! - [`fleet`]: the QUIC endpoint, enrolment, node sessions, liveness registry;
//! - [`api`]: the admin HTTPS API;
//! - [`config`], [`server`], [`dev`], [`mod@bench`], [`observability`], [`clock`]: assembly.
//!
//! The coordinator never links `gpuaas-isolation`: dev mode starts `gpuaas-agent fleet` as a
//! separate process.

pub mod api;
pub mod bench;
pub mod clock;
pub mod config;
pub mod dev;
pub mod fleet;
pub mod observability;
pub mod pki;
pub mod server;
pub mod store;
