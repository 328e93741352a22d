//! End-to-end failure-path tests: the real coordinator in-process on loopback, the real agent
//! library, and raw QUIC clients that break the protocol on purpose.
//!
//! - [`enrolment`]: refused tokens, the one-token race, a foreign CA fingerprint, garbage on
//!   `gpuaas-enroll/1`, another protocol major;
//! - [`mtls`]: `gpuaas/1` without a certificate, with a foreign CA, of a deleted node, claiming
//!   another node; certificate renewal;
//! - [`protocol`]: bad frames on a control session, another protocol major in Hello;
//! - [`api`]: the admin API's refusals.

mod api;
mod enrolment;
mod mtls;
mod protocol;
mod support;
