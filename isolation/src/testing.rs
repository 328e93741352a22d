//! Test support, not used by the product: the capability gates of the tests that need root and
//! real cgroups (this crate's root tests, `gpuaas-hwtests` later).
//!
//! A test calls a gate first and returns early when it answers `Err`: the gate has already
//! printed `skipped: <reason>`. When `GPUAAS_REQUIRE_ROOT_TESTS=1` (as in CI, which runs as
//! root) the gate panics with the reason instead, so a test that would silently skip fails.
//!
//! It is a public module rather than `#[cfg(test)]` because integration tests and other crates
//! link it. The gates read the cgroup layout from `/proc/self/mountinfo` with
//! [`CgroupLayout::detect`], the same detection the agent uses.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::cgroup::{CgroupLayout, MOUNTINFO};

/// The environment variable that turns a skip into a failure when set to `1`.
pub const REQUIRE_ROOT_TESTS_ENV: &str = "GPUAAS_REQUIRE_ROOT_TESTS";

/// Why a capability-gated test did not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// The effective uid is not 0.
    NotRoot,
    /// The cgroup layout could not be read.
    NoLayout(String),
    /// The v1 controller is not mounted.
    V1ControllerMissing(&'static str),
    /// No cgroup2 hierarchy is mounted.
    NoCgroup2,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotRoot => f.write_str("not root"),
            Self::NoLayout(e) => write!(f, "cgroup layout unreadable: {e}"),
            Self::V1ControllerMissing(c) => write!(f, "/sys/fs/cgroup/{c} not mounted"),
            Self::NoCgroup2 => f.write_str("no cgroup2 hierarchy mounted"),
        }
    }
}

/// Prints the skip, or panics with it when [`REQUIRE_ROOT_TESTS_ENV`] is `1`.
fn skip<T>(reason: SkipReason) -> Result<T, SkipReason> {
    if std::env::var(REQUIRE_ROOT_TESTS_ENV).is_ok_and(|v| v == "1") {
        panic!("{reason} ({REQUIRE_ROOT_TESTS_ENV}=1 turns this skip into a failure)");
    }
    println!("skipped: {reason}");
    Err(reason)
}

/// Gate for tests that need root only (loading a `bpf()` program, say).
pub fn require_root() -> Result<(), SkipReason> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        skip(SkipReason::NotRoot)
    }
}

fn layout() -> Result<CgroupLayout, SkipReason> {
    require_root()?;
    CgroupLayout::detect(Path::new(MOUNTINFO))
        .or_else(|e| skip(SkipReason::NoLayout(e.to_string())))
}

/// Gate for tests that need root and the cgroup v1 `devices` controller; returns its mount
/// point.
pub fn require_root_cgroups_v1() -> Result<PathBuf, SkipReason> {
    let layout = layout()?;
    match layout.v1_controller("devices") {
        Some(path) => Ok(path.to_owned()),
        None => skip(SkipReason::V1ControllerMissing("devices")),
    }
}

/// Gate for tests that need root and real cgroups (the v1 `devices` controller mounted).
pub fn require_root_cgroups() -> Result<(), SkipReason> {
    require_root_cgroups_v1().map(|_| ())
}

/// Gate for tests that need root and a cgroup2 hierarchy; returns its mount point
/// (`/sys/fs/cgroup/unified` on a hybrid host, `/sys/fs/cgroup` on a pure v2 one).
pub fn require_root_cgroup2() -> Result<PathBuf, SkipReason> {
    let layout = layout()?;
    match layout.unified() {
        Some(path) => Ok(path.to_owned()),
        None => skip(SkipReason::NoCgroup2),
    }
}

/// A fresh allocation id for a test sandbox, distinct across test threads, test processes and
/// runs (so parallel root tests never collide on `alloc-<id>` cgroup names).
pub fn unique_alloc_id() -> gpuaas_proto::AllocationId {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| (d.as_secs() << 30) ^ u64::from(d.subsec_nanos()))
        .unwrap_or(0);
    let raw = (u64::from(std::process::id()) << 40)
        ^ (nanos & 0xff_ffff_ffff)
        ^ (NEXT.fetch_add(1, Ordering::Relaxed) << 32);
    gpuaas_proto::AllocationId::from_raw(raw)
}
