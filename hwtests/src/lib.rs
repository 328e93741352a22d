//! Helpers for the tests that need a real NVIDIA GPU host.
//!
//! This crate owns the gate every hardware test goes through, [`require_nvidia`] (or
//! [`nvml_backend`], which also hands back the opened backend), and the read-only device-node
//! check [`char_device`]. The tests themselves live under `tests/`.
//!
//! # The gate
//! - `GPUAAS_HWTESTS` unset or not `1`: the test is skipped, and says so on stdout
//!   (`skipped: GPUAAS_HWTESTS is not 1`), so `cargo test` on a laptop or CI stays green.
//! - `GPUAAS_HWTESTS=1`: the host is declared a GPU host. If NVML cannot be opened the test
//!   **fails** (panics) with the reason, so a broken driver install never passes as a skip.
//!
//! Nothing here or in the tests changes the host: no MIG mode changes, no instance creation.

use std::fmt;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use gpuaas_isolation::NvmlBackend;

/// The environment variable that turns the hardware tests on (and their skips into failures).
pub const ENV_GATE: &str = "GPUAAS_HWTESTS";

/// Why a hardware test did not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// [`ENV_GATE`] is not `1`.
    NotRequested {
        /// Its value, if set.
        value: Option<String>,
    },
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::NotRequested { value: None } => write!(f, "{ENV_GATE} is not 1 (unset)"),
            SkipReason::NotRequested { value: Some(v) } => {
                write!(f, "{ENV_GATE} is not 1 (it is {v:?})")
            }
        }
    }
}

/// Whether the hardware tests were asked for.
fn gate() -> Result<(), SkipReason> {
    match std::env::var(ENV_GATE) {
        Ok(v) if v == "1" => Ok(()),
        Ok(v) => Err(SkipReason::NotRequested { value: Some(v) }),
        Err(_) => Err(SkipReason::NotRequested { value: None }),
    }
}

/// Opens NVML for a hardware test, or says why the test is skipped.
///
/// # Panics
/// When `GPUAAS_HWTESTS=1` and NVML cannot be opened: the host was declared a GPU host.
pub fn nvml_backend() -> Result<NvmlBackend, SkipReason> {
    if let Err(reason) = gate() {
        println!("skipped: {reason}");
        return Err(reason);
    }
    match NvmlBackend::open() {
        Ok(backend) => Ok(backend),
        Err(err) => panic!("{ENV_GATE}=1 but libnvidia-ml is not usable: {err}"),
    }
}

/// Whether this host runs the hardware tests: `Ok` when `GPUAAS_HWTESTS=1` and NVML opens,
/// `Err` (printed) when the tests are not asked for.
///
/// # Panics
/// When `GPUAAS_HWTESTS=1` and NVML cannot be opened.
pub fn require_nvidia() -> Result<(), SkipReason> {
    nvml_backend().map(drop)
}

/// A device node that is not what it should be.
#[derive(Debug, thiserror::Error)]
pub enum DeviceNodeError {
    /// The node could not be examined.
    #[error("cannot stat {}: {source}", path.display())]
    Stat {
        /// The node.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The path exists but is not a character device.
    #[error("{} is not a character device", path.display())]
    NotCharDevice {
        /// The path.
        path: PathBuf,
    },
}

/// The `(major, minor)` numbers of the character device at `path`.
pub fn char_device(path: &Path) -> Result<(u32, u32), DeviceNodeError> {
    let meta = std::fs::metadata(path).map_err(|source| DeviceNodeError::Stat {
        path: path.to_owned(),
        source,
    })?;
    if !meta.file_type().is_char_device() {
        return Err(DeviceNodeError::NotCharDevice {
            path: path.to_owned(),
        });
    }
    let rdev = meta.rdev();
    Ok((libc::major(rdev), libc::minor(rdev)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_null_is_char_1_3() {
        assert_eq!(
            char_device(Path::new("/dev/null")).expect("/dev/null"),
            (1, 3)
        );
    }

    #[test]
    fn non_devices_are_named() {
        let err = char_device(Path::new("/")).expect_err("a directory");
        assert_eq!(err.to_string(), "/ is not a character device");
        let err = char_device(Path::new("/nonexistent/nvidia0")).expect_err("absent");
        assert!(
            err.to_string()
                .starts_with("cannot stat /nonexistent/nvidia0: "),
            "{err}"
        );
    }

    #[test]
    fn skip_reasons_say_why() {
        let unset = SkipReason::NotRequested { value: None };
        assert_eq!(unset.to_string(), "GPUAAS_HWTESTS is not 1 (unset)");
        let zero = SkipReason::NotRequested {
            value: Some("0".into()),
        };
        assert_eq!(zero.to_string(), "GPUAAS_HWTESTS is not 1 (it is \"0\")");
    }
}
