//! The cgroup v1 limit writers: one function per controller, each given the sandbox's directory
//! under that controller's mount and writing then reading back every file (a refused or
//! rounded-beyond-tolerance value is a [`CgroupFileError`] naming the file and both values).
//!
//! - [`memory`]: `memory.limit_in_bytes`, and `memory.memsw.limit_in_bytes` set to the same
//!   value when swap is off and the kernel has swap accounting;
//! - [`cpu`]: `cpu.cfs_period_us` then `cpu.cfs_quota_us`;
//! - [`cpuset`]: `cpuset.cpus` and `cpuset.mems`, copied from the parent when not given (a new
//!   v1 cpuset cgroup starts empty and no task can join it until both are set);
//! - [`pids`](fn@pids): `pids.max`;
//! - [`freeze`] and [`thaw`]: `freezer.state`, waiting for the state to settle.

use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::file::{self, CgroupFileError};
use super::limits::{CpuQuota, CpuSet};

/// How far a memory limit may read back from the value written (the kernel rounds down to a
/// page; 64 KiB covers every page size).
pub const MEMORY_TOLERANCE: u64 = 64 << 10;
/// How long [`freeze`] and [`thaw`] wait for `freezer.state` to settle.
pub const FREEZER_TIMEOUT: Duration = Duration::from_secs(2);

/// Sets the memory hard limit; with `swap` off, also caps memory plus swap at the same value
/// when `memory.memsw.limit_in_bytes` exists (the kernel was booted with swap accounting).
pub fn memory(dir: &Path, bytes: u64, swap: bool) -> Result<(), CgroupFileError> {
    file::write_u64(dir, "memory.limit_in_bytes", bytes, MEMORY_TOLERANCE)?;
    if !swap && dir.join("memory.memsw.limit_in_bytes").exists() {
        file::write_u64(dir, "memory.memsw.limit_in_bytes", bytes, MEMORY_TOLERANCE)?;
    }
    Ok(())
}

/// Sets the CFS period then the quota.
pub fn cpu(dir: &Path, quota: CpuQuota) -> Result<(), CgroupFileError> {
    file::write_u64(dir, "cpu.cfs_period_us", quota.period_us, 0)?;
    file::write_u64(dir, "cpu.cfs_quota_us", quota.quota_us, 0)
}

/// Sets `cpuset.cpus` and `cpuset.mems` from `set`, or copies the parent directory's where
/// `set` is `None` (or the parent's where a value is empty, for the shared root).
pub fn cpuset(dir: &Path, set: Option<&CpuSet>) -> Result<(), CgroupFileError> {
    for (name, given) in [
        ("cpuset.cpus", set.map(|s| s.cpus.as_str())),
        ("cpuset.mems", set.map(|s| s.mems.as_str())),
    ] {
        let value = match given {
            Some(v) => v.to_owned(),
            None => {
                let parent = dir.parent().unwrap_or(dir);
                file::read(parent, name)?
            }
        };
        file::write_list(dir, name, &value)?;
    }
    Ok(())
}

/// Fills `cpuset.cpus` and `cpuset.mems` of `dir` from its parent where they are empty (a
/// shared root such as `gpuaas`, made once and kept).
pub fn cpuset_fill_from_parent(dir: &Path) -> Result<(), CgroupFileError> {
    let parent = dir.parent().unwrap_or(dir);
    for name in ["cpuset.cpus", "cpuset.mems"] {
        if file::read(dir, name)?.is_empty() {
            let value = file::read(parent, name)?;
            file::write_list(dir, name, &value)?;
        }
    }
    Ok(())
}

/// Sets `pids.max`.
pub fn pids(dir: &Path, max: u64) -> Result<(), CgroupFileError> {
    file::write_u64(dir, "pids.max", max, 0)
}

/// Freezes every task in `dir` and waits (up to [`FREEZER_TIMEOUT`]) until `freezer.state`
/// reads `FROZEN`.
pub fn freeze(dir: &Path) -> Result<(), CgroupFileError> {
    set_freezer(dir, "FROZEN")
}

/// Thaws `dir` and waits until `freezer.state` reads `THAWED`.
pub fn thaw(dir: &Path) -> Result<(), CgroupFileError> {
    set_freezer(dir, "THAWED")
}

fn set_freezer(dir: &Path, state: &str) -> Result<(), CgroupFileError> {
    let deadline = Instant::now() + FREEZER_TIMEOUT;
    loop {
        // The kernel retries a freeze it could not finish only when asked again.
        file::write(dir, "freezer.state", state)?;
        let read = file::read(dir, "freezer.state")?;
        if read == state {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CgroupFileError::NotApplied {
                path: dir.join("freezer.state"),
                wrote: state.to_owned(),
                read,
            });
        }
        sleep(Duration::from_millis(1));
    }
}

/// Whether the memory controller's OOM killer has killed a task in `dir`
/// (`oom_kill` of `memory.oom_control`, kernel 4.13 and later).
pub fn oom_killed(dir: &Path) -> Result<bool, CgroupFileError> {
    Ok(file::keyed(dir, "memory.oom_control", "oom_kill")?.is_some_and(|n| n > 0))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    /// A temp dir with the files a fresh v1 cgroup shows, under a parent with a cpuset.
    fn tree() -> (tempfile::TempDir, std::path::PathBuf) {
        let root = tempfile::tempdir().expect("temp dir");
        fs::write(root.path().join("cpuset.cpus"), "0-3\n").expect("write");
        fs::write(root.path().join("cpuset.mems"), "0\n").expect("write");
        let dir = root.path().join("alloc-1");
        fs::create_dir(&dir).expect("mkdir");
        for name in ["cpuset.cpus", "cpuset.mems"] {
            fs::write(dir.join(name), "\n").expect("write");
        }
        (root, dir)
    }

    #[test]
    fn writers_write_and_read_back() {
        let (_root, dir) = tree();
        fs::write(dir.join("memory.memsw.limit_in_bytes"), "").expect("write");
        memory(&dir, 32 << 20, false).expect("memory");
        assert_eq!(
            file::read(&dir, "memory.memsw.limit_in_bytes").expect("read"),
            "33554432"
        );
        cpu(
            &dir,
            CpuQuota {
                quota_us: 50_000,
                period_us: 100_000,
            },
        )
        .expect("cpu");
        assert_eq!(file::read(&dir, "cpu.cfs_quota_us").expect("read"), "50000");
        pids(&dir, 5).expect("pids");
        assert_eq!(file::read(&dir, "pids.max").expect("read"), "5");
        freeze(&dir).expect("freeze");
        thaw(&dir).expect("thaw");
        fs::write(
            dir.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        )
        .expect("write");
        assert!(oom_killed(&dir).expect("oom"));
    }

    #[test]
    fn swap_on_leaves_memsw_alone_and_missing_memsw_is_fine() {
        let (_root, dir) = tree();
        memory(&dir, 1 << 30, false).expect("no memsw file");
        assert!(!dir.join("memory.memsw.limit_in_bytes").exists());
        fs::write(
            dir.join("memory.memsw.limit_in_bytes"),
            "9223372036854771712",
        )
        .expect("write");
        memory(&dir, 1 << 30, true).expect("swap on");
        assert_eq!(
            file::read(&dir, "memory.memsw.limit_in_bytes").expect("read"),
            "9223372036854771712"
        );
    }

    #[test]
    fn cpuset_copies_the_parent_when_not_given() {
        let (_root, dir) = tree();
        cpuset(&dir, None).expect("copy");
        assert_eq!(file::read(&dir, "cpuset.cpus").expect("read"), "0-3");
        let set = CpuSet {
            cpus: "1,2".into(),
            mems: "0".into(),
        };
        cpuset(&dir, Some(&set)).expect("given");
        assert_eq!(file::read(&dir, "cpuset.cpus").expect("read"), "1,2");
    }

    #[test]
    fn fill_from_parent_keeps_a_set_value() {
        let (_root, dir) = tree();
        fs::write(dir.join("cpuset.cpus"), "1\n").expect("write");
        cpuset_fill_from_parent(&dir).expect("fill");
        assert_eq!(file::read(&dir, "cpuset.cpus").expect("read"), "1");
        assert_eq!(file::read(&dir, "cpuset.mems").expect("read"), "0");
    }

    #[test]
    fn a_missing_directory_is_a_write_error_naming_the_file() {
        let root = tempfile::tempdir().expect("temp dir");
        let err = pids(&root.path().join("gone"), 5).expect_err("no dir");
        assert!(err.path().ends_with("gone/pids.max"), "{err}");
        assert_eq!(err.errno(), Some(libc::ENOENT));
    }
}
