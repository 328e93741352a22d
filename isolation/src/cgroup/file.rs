//! Reading and writing one cgroupfs control file, with the read-back that turns a value the
//! kernel refused or changed into an error ([`CgroupFileError`]) naming the file and both values.
//!
//! # Design: no cgroups-rs here
//! cgroups-rs 0.5 (the chosen crate) keeps its API under `cgroups_rs::fs`, builds a whole
//! hierarchy from `/proc/self/mountinfo` itself (roots cannot be temp-dir trees, STYLE 5) and
//! writes a value without reading it back; its errors carry no path or errno. Each limit here is
//! one `write()` and one `read()`, so the small writers below are shorter than the adapter
//! would be, and the same code runs against real cgroupfs and against test trees.

use std::io;
use std::path::{Path, PathBuf};

/// A cgroup control file could not be written, read, or did not keep the value written.
#[derive(Debug, thiserror::Error)]
pub enum CgroupFileError {
    /// The kernel refused the write (`EINVAL` for a value out of range, ...).
    #[error("cannot write {value:?} to {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The value written.
        value: String,
        /// The error, with its errno.
        #[source]
        source: io::Error,
    },
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error, with its errno.
        #[source]
        source: io::Error,
    },
    /// The write succeeded but the file reads back a different value.
    #[error("{} reads {read:?} after writing {wrote:?}", path.display())]
    NotApplied {
        /// The file.
        path: PathBuf,
        /// The value written.
        wrote: String,
        /// The value read back.
        read: String,
    },
}

impl CgroupFileError {
    /// The file at fault.
    pub fn path(&self) -> &Path {
        match self {
            Self::Write { path, .. } | Self::Read { path, .. } | Self::NotApplied { path, .. } => {
                path
            }
        }
    }

    /// The errno of a failed write or read.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Write { source, .. } | Self::Read { source, .. } => source.raw_os_error(),
            Self::NotApplied { .. } => None,
        }
    }
}

/// Reads `dir/name`, trimmed.
pub fn read(dir: &Path, name: &str) -> Result<String, CgroupFileError> {
    let path = dir.join(name);
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_owned())
        .map_err(|source| CgroupFileError::Read { path, source })
}

/// Writes `value` to `dir/name` in one `write()`.
pub fn write(dir: &Path, name: &str, value: &str) -> Result<(), CgroupFileError> {
    let path = dir.join(name);
    std::fs::write(&path, value.as_bytes()).map_err(|source| CgroupFileError::Write {
        path,
        value: value.to_owned(),
        source,
    })
}

/// Writes `value` to `dir/name`, reads it back, and fails unless `accept(read_back)`.
pub fn write_checked(
    dir: &Path,
    name: &str,
    value: &str,
    accept: impl Fn(&str) -> bool,
) -> Result<(), CgroupFileError> {
    write(dir, name, value)?;
    let read = read(dir, name)?;
    if accept(&read) {
        Ok(())
    } else {
        Err(CgroupFileError::NotApplied {
            path: dir.join(name),
            wrote: value.to_owned(),
            read,
        })
    }
}

/// Writes a number and accepts a read-back within `tolerance` of it (the kernel rounds memory
/// limits down to a page).
pub fn write_u64(
    dir: &Path,
    name: &str,
    value: u64,
    tolerance: u64,
) -> Result<(), CgroupFileError> {
    write_checked(dir, name, &value.to_string(), |read| {
        read.parse::<u64>()
            .is_ok_and(|r| r.abs_diff(value) <= tolerance)
    })
}

/// Writes a CPU or node list and accepts a read-back naming the same members (the kernel
/// rewrites `0,1` as `0-1`).
pub fn write_list(dir: &Path, name: &str, value: &str) -> Result<(), CgroupFileError> {
    let want = super::limits::parse_list(value).ok();
    write_checked(dir, name, value, |read| {
        super::limits::parse_list(read).ok() == want
    })
}

/// Reads the pids listed in `dir/cgroup.procs`.
pub fn procs(dir: &Path) -> Result<Vec<i32>, CgroupFileError> {
    let text = read(dir, "cgroup.procs")?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// The value of `key` in a flat-keyed file such as `memory.events` or `memory.oom_control`.
pub fn keyed(dir: &Path, name: &str, key: &str) -> Result<Option<u64>, CgroupFileError> {
    let text = read(dir, name)?;
    Ok(text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    }))
}
