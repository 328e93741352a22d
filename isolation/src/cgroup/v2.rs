//! The cgroup v2 limit writers, for a unified hierarchy: the same [`Limits`] as [`super::v1`],
//! each file written then read back.
//!
//! - `memory.max`, and `memory.swap.max` = `0` when swap is off (where the file exists);
//! - `cpu.max` as `"<quota> <period>"`;
//! - `cpuset.cpus` / `cpuset.mems` only when given (an empty v2 cpuset inherits the parent's);
//! - `pids.max`;
//! - [`enable_controllers`]: `+memory +cpu +cpuset +pids` in a parent's
//!   `cgroup.subtree_control`, so its children get the controller files;
//! - [`oom_killed`]: `oom_kill` of `memory.events`.
//!
//! This development host binds the v2 resource controllers to v1, so these writers are tested
//! against temp-dir trees here and for real on a pure-v2 host.

use std::path::Path;

use super::file::{self, CgroupFileError};
use super::limits::Limits;
use super::v1::MEMORY_TOLERANCE;

/// The controllers a sandbox's parent delegates to it.
pub const CONTROLLERS: &[&str] = &["memory", "cpu", "cpuset", "pids"];

/// Writes every limit `limits` sets into the v2 cgroup directory `dir`.
pub fn apply(dir: &Path, limits: &Limits) -> Result<(), CgroupFileError> {
    if let Some(bytes) = limits.memory_bytes {
        file::write_u64(dir, "memory.max", bytes, MEMORY_TOLERANCE)?;
    }
    if !limits.swap && dir.join("memory.swap.max").exists() {
        file::write_u64(dir, "memory.swap.max", 0, 0)?;
    }
    if let Some(cpu) = limits.cpu {
        let value = format!("{} {}", cpu.quota_us, cpu.period_us);
        file::write_checked(dir, "cpu.max", &value, |read| read == value)?;
    }
    if let Some(set) = &limits.cpuset {
        file::write_list(dir, "cpuset.cpus", &set.cpus)?;
        file::write_list(dir, "cpuset.mems", &set.mems)?;
    }
    if let Some(max) = limits.pids_max {
        file::write_u64(dir, "pids.max", max, 0)?;
    }
    Ok(())
}

/// Enables [`CONTROLLERS`] for the children of `dir`, skipping those already enabled, and
/// checks `cgroup.subtree_control` lists them all afterwards.
pub fn enable_controllers(dir: &Path) -> Result<(), CgroupFileError> {
    let enabled = file::read(dir, "cgroup.subtree_control")?;
    let missing: Vec<String> = CONTROLLERS
        .iter()
        .filter(|c| !enabled.split_whitespace().any(|e| e == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let value = missing.join(" ");
    file::write(dir, "cgroup.subtree_control", &value)?;
    let read = file::read(dir, "cgroup.subtree_control")?;
    let all = CONTROLLERS
        .iter()
        .all(|c| read.split_whitespace().any(|e| e == *c));
    if all {
        Ok(())
    } else {
        Err(CgroupFileError::NotApplied {
            path: dir.join("cgroup.subtree_control"),
            wrote: value,
            read,
        })
    }
}

/// Whether the OOM killer has killed a task in `dir` (`oom_kill` of `memory.events`).
pub fn oom_killed(dir: &Path) -> Result<bool, CgroupFileError> {
    Ok(file::keyed(dir, "memory.events", "oom_kill")?.is_some_and(|n| n > 0))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::cgroup::limits::{CpuQuota, CpuSet};

    fn limits() -> Limits {
        Limits {
            memory_bytes: Some(64 << 20),
            swap: false,
            cpu: Some(CpuQuota {
                quota_us: 50_000,
                period_us: 100_000,
            }),
            cpuset: Some(CpuSet {
                cpus: "0-1".into(),
                mems: "0".into(),
            }),
            pids_max: Some(32),
        }
    }

    #[test]
    fn apply_writes_every_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::write(dir.path().join("memory.swap.max"), "max\n").expect("write");
        apply(dir.path(), &limits()).expect("apply");
        let read = |name| file::read(dir.path(), name).expect("read");
        assert_eq!(read("memory.max"), "67108864");
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(read("cpuset.cpus"), "0-1");
        assert_eq!(read("cpuset.mems"), "0");
        assert_eq!(read("pids.max"), "32");
    }

    #[test]
    fn unset_limits_write_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        apply(dir.path(), &Limits::default()).expect("apply");
        assert_eq!(fs::read_dir(dir.path()).expect("list").count(), 0);
    }

    #[test]
    fn a_value_read_back_different_is_an_error_naming_both() {
        let dir = tempfile::tempdir().expect("temp dir");
        let err = file::write_checked(dir.path(), "cpu.max", "1000 100000", |r| r == "max 100000")
            .expect_err("mismatch");
        let text = err.to_string();
        assert!(text.contains("cpu.max"), "{text}");
        assert!(text.contains("\"1000 100000\""), "{text}");
        assert_eq!(err.errno(), None);
    }

    #[test]
    fn enable_controllers_adds_the_missing_ones() {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::write(dir.path().join("cgroup.subtree_control"), "memory").expect("write");
        // A plain file keeps only the last write, so the read-back misses `memory`: the
        // check catches a controller that did not stay enabled.
        let err = enable_controllers(dir.path()).expect_err("memory dropped");
        assert!(err.to_string().contains("cgroup.subtree_control"), "{err}");
        fs::write(
            dir.path().join("cgroup.subtree_control"),
            "cpu memory pids cpuset",
        )
        .expect("write");
        enable_controllers(dir.path()).expect("all enabled");
    }

    #[test]
    fn oom_kill_is_read_from_memory_events() {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::write(
            dir.path().join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\n",
        )
        .expect("write");
        assert!(!oom_killed(dir.path()).expect("read"));
        fs::write(dir.path().join("memory.events"), "oom 2\noom_kill 1\n").expect("write");
        assert!(oom_killed(dir.path()).expect("read"));
    }
}
