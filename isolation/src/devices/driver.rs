//! What the host's NVIDIA drivers report about device numbers: the character majors of
//! `/proc/devices` ([`ProcDevices`]; `nvidia-uvm` and `nvidia-caps` are assigned when the driver
//! loads) and the MIG capability minors of `/proc/driver/nvidia-caps/mig-minors`
//! ([`MigMinors`]), read once into a [`HostDevices`]. The proc root is a parameter, so tests run
//! the readers over temp-dir trees; minors come from the file, never from arithmetic.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use super::rules::{DeviceError, MAX_MINOR};

/// The production proc root.
pub const PROC_ROOT: &str = "/proc";

/// Longest piece of file content quoted back in an error.
const MAX_QUOTED: usize = 64;

fn quoted(s: &str) -> String {
    s.chars().take(MAX_QUOTED).collect()
}

/// The character-device majors of `/proc/devices`, by driver name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcDevices {
    path: PathBuf,
    chars: BTreeMap<String, u32>,
}

impl ProcDevices {
    /// Parses `text`, the content of the `/proc/devices` file at `path` (named in errors).
    /// Only the "Character devices:" section is kept; the first major of a name wins.
    pub fn parse(path: &Path, text: &str) -> Result<Self, DeviceError> {
        let mut chars = BTreeMap::new();
        let mut in_chars = false;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            match line {
                "" => continue,
                "Character devices:" => in_chars = true,
                "Block devices:" => in_chars = false,
                _ => {
                    let malformed = || DeviceError::Malformed {
                        path: path.to_owned(),
                        line: i + 1,
                        content: quoted(raw),
                        expected: "`<major> <name>` under a section header",
                    };
                    let (major, name) =
                        line.split_once(char::is_whitespace).ok_or_else(malformed)?;
                    let major: u32 = major.parse().map_err(|_| malformed())?;
                    let name = name.trim();
                    if name.is_empty() {
                        return Err(malformed());
                    }
                    if in_chars {
                        chars.entry(name.to_owned()).or_insert(major);
                    }
                }
            }
        }
        Ok(Self {
            path: path.to_owned(),
            chars,
        })
    }

    /// Reads and parses the file at `path`.
    pub fn read(path: &Path) -> Result<Self, DeviceError> {
        let text = read(path)?;
        Self::parse(path, &text)
    }

    /// The character major of driver `name`, if listed.
    pub fn char_major(&self, name: &str) -> Option<u32> {
        self.chars.get(name).copied()
    }

    /// The character major of driver `name`, or an error naming the file.
    pub fn require_char_major(&self, name: &'static str) -> Result<u32, DeviceError> {
        self.char_major(name)
            .ok_or_else(|| DeviceError::MissingMajor {
                name,
                path: self.path.clone(),
            })
    }
}

/// The capability minors of `/proc/driver/nvidia-caps/mig-minors`, by capability path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigMinors {
    path: PathBuf,
    minors: BTreeMap<String, u32>,
}

impl MigMinors {
    /// Parses `text`, the content of the `mig-minors` file at `path` (named in errors): lines of
    /// `<capability path> <minor>`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, DeviceError> {
        let mut minors = BTreeMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() {
                continue;
            }
            let malformed = || DeviceError::Malformed {
                path: path.to_owned(),
                line: i + 1,
                content: quoted(raw),
                expected: "`<capability> <minor>`",
            };
            let mut fields = line.split_whitespace();
            let (Some(key), Some(minor), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(malformed());
            };
            let minor: u32 = minor.parse().map_err(|_| malformed())?;
            if minor > MAX_MINOR {
                return Err(malformed());
            }
            minors.insert(key.to_owned(), minor);
        }
        Ok(Self {
            path: path.to_owned(),
            minors,
        })
    }

    /// Reads and parses the file at `path`.
    pub fn read(path: &Path) -> Result<Self, DeviceError> {
        let text = read(path)?;
        Self::parse(path, &text)
    }

    fn lookup(&self, key: String) -> Result<u32, DeviceError> {
        self.minors
            .get(&key)
            .copied()
            .ok_or_else(|| DeviceError::MissingMigMinor {
                key,
                path: self.path.clone(),
            })
    }

    /// The minor of the GPU-instance capability `gpu<M>/gi<G>/access`.
    pub fn gi_minor(&self, gpu_minor: u32, gi: u32) -> Result<u32, DeviceError> {
        self.lookup(format!("gpu{gpu_minor}/gi{gi}/access"))
    }

    /// The minor of the compute-instance capability `gpu<M>/gi<G>/ci<C>/access`.
    pub fn ci_minor(&self, gpu_minor: u32, gi: u32, ci: u32) -> Result<u32, DeviceError> {
        self.lookup(format!("gpu{gpu_minor}/gi{gi}/ci{ci}/access"))
    }
}

fn read(path: &Path) -> Result<String, DeviceError> {
    std::fs::read_to_string(path).map_err(|source| DeviceError::Read {
        path: path.to_owned(),
        source,
    })
}

/// What the host's drivers report, read once: the majors of `/proc/devices` and, when the
/// nvidia-caps driver is loaded, the MIG capability minors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDevices {
    /// The majors.
    pub majors: ProcDevices,
    /// The capability minors; `None` when the file does not exist.
    pub mig_minors: Option<MigMinors>,
    /// Where `mig-minors` was looked for (named in [`DeviceError::NoMigMinors`]).
    pub mig_minors_path: PathBuf,
}

impl HostDevices {
    /// Reads `<proc_root>/devices` and `<proc_root>/driver/nvidia-caps/mig-minors` (absent on a
    /// host without the nvidia-caps driver: that is not an error until a MIG slice is asked for).
    pub fn read(proc_root: &Path) -> Result<Self, DeviceError> {
        let majors = ProcDevices::read(&proc_root.join("devices"))?;
        let mig_minors_path = proc_root.join("driver/nvidia-caps/mig-minors");
        let mig_minors = match MigMinors::read(&mig_minors_path) {
            Ok(m) => Some(m),
            Err(DeviceError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                None
            }
            Err(e) => return Err(e),
        };
        Ok(Self {
            majors,
            mig_minors,
            mig_minors_path,
        })
    }
}
