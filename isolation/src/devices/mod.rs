//! The device allow-list of a sandbox: which device nodes a workload may open, read, write or
//! create, and the two forms the kernel enforces it in.
//!
//! - [`rules`]: the rule type ([`DeviceRule`]), the pure function that computes an allocation's
//!   allow-list ([`allow_list`]) from what it holds and what the host's drivers report, and the
//!   reference evaluator ([`evaluate`]);
//! - [`driver`]: what the drivers report, read once ([`HostDevices`]): the parsers of
//!   `/proc/devices` ([`ProcDevices`]) and `/proc/driver/nvidia-caps/mig-minors`
//!   ([`MigMinors`]);
//! - [`v1`]: the rule list rendered as the lines written to the cgroup v1 `devices.deny` and
//!   `devices.allow` files, and [`v1::apply`], which writes them and reads `devices.list` back;
//! - [`program`]: the rule list compiled into a `BPF_PROG_TYPE_CGROUP_DEVICE` program for
//!   cgroup v2, as instructions and as the bytes the `bpf()` syscall takes;
//! - [`attach`]: loading that program with `bpf(BPF_PROG_LOAD)` and attaching it to a cgroup v2
//!   directory with `bpf(BPF_PROG_ATTACH)` (the crate's only `unsafe` code).
//!
//! # Design: the policy is data
//! The promise "a tenant's workload touches its own GPUs and nothing else" rests on this module,
//! so the policy is a value, not a sequence of side effects: [`allow_list`] reads no file and no
//! clock, [`v1::render`] and [`program::compile`] are pure functions of the rule list, and the
//! unit tests run the generated eBPF bytecode in a userspace interpreter and compare it, over
//! arbitrary (type, major, minor, access), with the plain-Rust [`evaluate`]. Only writing the
//! lines into a cgroupfs and loading/attaching the program touch the kernel; those are root
//! tests. This follows youki's `v2/devices/program.rs` and `emulator.rs`.
//!
//! Majors that the NVIDIA driver assigns at load time (`nvidia-uvm`, `nvidia-caps`) and the
//! capability minors of MIG instances are read from the host, never hard-coded; only the fixed
//! ones (`195` for the GPU nodes, the pseudo devices of `Documentation/admin-guide/devices.txt`)
//! are constants.
//!
//! # Limitations
//! Rules are matched as runc does (the last rule whose type, major and minor match and
//! whose access covers the request decides); cgroup v1's own handling of a deny rule that names
//! only part of an earlier allow rule's access differs in corner cases, which is why
//! [`allow_list`] only emits allow rules.

pub mod attach;
pub mod driver;
pub mod program;
pub mod rules;
pub mod v1;

pub use driver::{HostDevices, MigMinors, ProcDevices};
pub use program::{Insn, Program, compile};
pub use rules::{
    Access, DeviceError, DeviceKind, DeviceRequest, DeviceRule, MigSlice, SiteDevices, allow_list,
    evaluate,
};

#[cfg(test)]
mod tests;
