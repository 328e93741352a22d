//! PCI facts of a GPU that come from the bus rather than from NVML: the canonical bus-id form
//! and the NUMA node, read from sysfs (`<sysfs root>/bus/pci/devices/<bus id>/numa_node`).
//!
//! The sysfs root is a parameter (`/sys` in production), so tests run the reader against a
//! temp-dir tree.

use std::io;
use std::path::{Path, PathBuf};

use tracing::debug;

/// The production sysfs root.
pub const SYSFS_ROOT: &str = "/sys";

/// Longest piece of file content or input quoted back in an error.
const MAX_QUOTED: usize = 64;

/// A PCI fact that could not be read or understood.
#[derive(Debug, thiserror::Error)]
pub enum PciError {
    /// A bus id that is not `domain:bus:device.function` in hex.
    #[error("invalid pci bus id {value:?}: expected dddd:bb:dd.f in hex")]
    BusId {
        /// The rejected bus id, cut to 64 characters.
        value: String,
    },
    /// A sysfs file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A sysfs file held something other than an integer.
    #[error("unexpected content {value:?} in {}: expected an integer", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Its content, cut to 64 characters.
        value: String,
    },
}

fn quoted(s: &str) -> String {
    s.chars().take(MAX_QUOTED).collect()
}

/// Brings a PCI bus id to the form sysfs uses (`0000:3b:00.0`): lower-case hex, the domain with
/// at least four digits. NVML reports `00000000:3B:00.0`.
pub fn normalize_bus_id(raw: &str) -> Result<String, PciError> {
    let bad = || PciError::BusId { value: quoted(raw) };
    let mut parts = raw.trim().split(':');
    let (Some(domain), Some(bus), Some(dev_fn), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let (device, function) = dev_fn.split_once('.').ok_or_else(bad)?;
    let hex = |s: &str, max_len: usize| -> Option<u32> {
        if s.is_empty() || s.len() > max_len || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(s, 16).ok()
    };
    let domain = hex(domain, 8).ok_or_else(bad)?;
    let bus = hex(bus, 2).ok_or_else(bad)?;
    let device = hex(device, 2).filter(|d| *d < 32).ok_or_else(bad)?;
    let function = hex(function, 1).filter(|f| *f < 8).ok_or_else(bad)?;
    Ok(format!("{domain:04x}:{bus:02x}:{device:02x}.{function:x}"))
}

/// The NUMA node of the PCI device `bus_id` (sysfs form), or `None` when the platform reports
/// none (`-1`, or no `numa_node` file).
pub fn numa_node(sysfs_root: &Path, bus_id: &str) -> Result<Option<u32>, PciError> {
    let path = sysfs_root
        .join("bus/pci/devices")
        .join(bus_id)
        .join("numa_node");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(source) if source.kind() == io::ErrorKind::NotFound => {
            debug!(path = %path.display(), "no numa_node file; numa node unknown");
            return Ok(None);
        }
        Err(source) => return Err(PciError::Read { path, source }),
    };
    let value = text.trim();
    if value == "-1" {
        return Ok(None);
    }
    value.parse::<u32>().map(Some).map_err(|_| PciError::Parse {
        value: quoted(value),
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_ids_are_normalised() {
        let cases = [
            ("00000000:3B:00.0", "0000:3b:00.0"),
            ("0000:3b:00.0", "0000:3b:00.0"),
            ("00000001:00:00.0", "0001:00:00.0"),
            ("00012345:C1:1F.7", "12345:c1:1f.7"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize_bus_id(raw).expect(raw), want);
        }
        for bad in [
            "",
            "3b:00.0",
            "0000:3b:00",
            "0000:3b:20.0",
            "0000:3b:00.8",
            "000000000:3b:00.0",
            "0000:xx:00.0",
            "0000:3b:00.0:1",
        ] {
            let err = normalize_bus_id(bad).expect_err(bad);
            assert!(
                err.to_string()
                    .starts_with(&format!("invalid pci bus id {bad:?}")),
                "{err}"
            );
        }
    }

    fn sysfs_with(bus_id: &str, content: &str) -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = root.path().join("bus/pci/devices").join(bus_id);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("numa_node"), content).expect("write");
        root
    }

    #[test]
    fn numa_node_is_read_from_sysfs() {
        let root = sysfs_with("0000:3b:00.0", "1\n");
        assert_eq!(
            numa_node(root.path(), "0000:3b:00.0").expect("read"),
            Some(1)
        );
        let root = sysfs_with("0000:3b:00.0", "-1\n");
        assert_eq!(numa_node(root.path(), "0000:3b:00.0").expect("read"), None);
        assert_eq!(
            numa_node(root.path(), "0000:aa:00.0").expect("absent"),
            None
        );
    }

    #[test]
    fn bad_numa_content_names_the_file() {
        let root = sysfs_with("0000:3b:00.0", "banana\n");
        let err = numa_node(root.path(), "0000:3b:00.0").expect_err("garbage");
        let msg = err.to_string();
        assert!(
            msg.starts_with("unexpected content \"banana\" in "),
            "{msg}"
        );
        assert!(msg.contains("0000:3b:00.0/numa_node"), "{msg}");
    }

    #[test]
    fn unreadable_numa_file_is_an_error() {
        // A directory where the file should be: read fails with something other than NotFound.
        let root = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(root.path().join("bus/pci/devices/0000:3b:00.0/numa_node"))
            .expect("mkdir");
        let err = numa_node(root.path(), "0000:3b:00.0").expect_err("a directory");
        assert!(matches!(err, PciError::Read { .. }), "{err}");
    }
}
