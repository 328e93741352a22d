//! [`SandboxError`]: why a sandbox could not be created, joined, read or destroyed, naming the
//! controller, the path and the errno.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::Signal;

use crate::cgroup::file::CgroupFileError;
use crate::cgroup::limits::LimitsError;
use crate::devices::DeviceError;

/// A sandbox could not be created, joined, read or destroyed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A limit makes no sense.
    #[error(transparent)]
    Limits(#[from] LimitsError),
    /// The layout lacks a controller the sandbox needs.
    #[error("cgroup controller {controller} is not mounted")]
    MissingController {
        /// The controller.
        controller: &'static str,
    },
    /// The sandbox directory exists already (another sandbox for this allocation).
    #[error("{controller}: {} exists already", path.display())]
    Exists {
        /// The controller (`unified` for the v2 tree).
        controller: &'static str,
        /// The directory.
        path: PathBuf,
    },
    /// A directory could not be made or removed.
    #[error("{controller}: cannot {op} {}: {source}", path.display())]
    Dir {
        /// The controller.
        controller: &'static str,
        /// `mkdir` or `rmdir`.
        op: &'static str,
        /// The directory.
        path: PathBuf,
        /// The error, with its errno.
        #[source]
        source: io::Error,
    },
    /// A control file was refused, unreadable, or read back different.
    #[error("{controller}: {source}")]
    File {
        /// The controller.
        controller: &'static str,
        /// The file error (path, values, errno).
        #[source]
        source: CgroupFileError,
    },
    /// The device allow-list could not be written or attached.
    #[error("devices: {}: {source}", path.display())]
    Devices {
        /// The cgroup directory.
        path: PathBuf,
        /// The device error.
        #[source]
        source: DeviceError,
    },
    /// A process could not be signalled.
    #[error("cannot send {signal} to pid {pid}: {errno}")]
    Signal {
        /// The pid.
        pid: i32,
        /// The signal.
        signal: Signal,
        /// The errno.
        errno: Errno,
    },
    /// The cgroup still holds processes after being killed.
    #[error("{} still holds pids {pids:?} after {waited:?}", path.display())]
    NotEmpty {
        /// The directory.
        path: PathBuf,
        /// The pids left.
        pids: Vec<i32>,
        /// How long it was waited for.
        waited: Duration,
    },
}
