//! Which cgroup hierarchies the host mounts, read from `/proc/self/mountinfo`.
//!
//! Done once at start: the agent logs the [`CgroupLayout`] and builds the matching manager. The
//! mountinfo path is a parameter so tests run the parser over fixture text (a pure-v2 host, a
//! pure-v1 host, and this development machine's hybrid layout).

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// The production mountinfo path.
pub const MOUNTINFO: &str = "/proc/self/mountinfo";

/// The cgroup v1 controllers the layout records (plus named hierarchies such as
/// `name=systemd`, recorded under that key).
const V1_CONTROLLERS: &[&str] = &[
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "misc",
    "net_cls",
    "net_prio",
    "perf_event",
    "pids",
    "rdma",
];

/// Longest piece of file content quoted back in an error.
const MAX_QUOTED: usize = 64;

/// The cgroup layout could not be detected.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The mountinfo file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A mountinfo line lacks the fields of `proc(5)`.
    #[error("{}:{line}: unexpected mountinfo line {content:?}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// The line, cut to 64 characters.
        content: String,
    },
    /// No `cgroup` or `cgroup2` file system is mounted.
    #[error("no cgroup or cgroup2 mount in {}: is /sys/fs/cgroup mounted?", path.display())]
    NoCgroupMount {
        /// The mountinfo file read.
        path: PathBuf,
    },
}

/// The host's cgroup hierarchies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLayout {
    /// cgroup v1 only: each controller at its own mount.
    Legacy {
        /// Mount point by controller (`memory` → `/sys/fs/cgroup/memory`); controllers mounted
        /// together (`cpu,cpuacct`) share a path.
        controllers: BTreeMap<String, PathBuf>,
    },
    /// v1 controllers plus a v2 tree (systemd's hybrid mode).
    Hybrid {
        /// Mount point by v1 controller.
        controllers: BTreeMap<String, PathBuf>,
        /// The v2 mount (`/sys/fs/cgroup/unified`).
        unified: PathBuf,
    },
    /// cgroup v2 only.
    Unified {
        /// The v2 mount (`/sys/fs/cgroup`).
        root: PathBuf,
    },
}

impl CgroupLayout {
    /// Reads and parses the mountinfo file at `path` ([`MOUNTINFO`] in production).
    pub fn detect(path: &Path) -> Result<Self, LayoutError> {
        let text = std::fs::read_to_string(path).map_err(|source| LayoutError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses `text`, the content of the mountinfo file at `path` (named in errors). When a
    /// hierarchy is mounted more than once, the first mount wins.
    pub fn parse(path: &Path, text: &str) -> Result<Self, LayoutError> {
        let mut controllers = BTreeMap::new();
        let mut unified = None;
        for (i, raw) in text.lines().enumerate() {
            if raw.trim().is_empty() {
                continue;
            }
            let mount = parse_line(raw).ok_or_else(|| LayoutError::Malformed {
                path: path.to_owned(),
                line: i + 1,
                content: raw.chars().take(MAX_QUOTED).collect(),
            })?;
            match mount.fs_type {
                "cgroup2" => {
                    unified.get_or_insert(mount.mount_point);
                }
                "cgroup" => {
                    for name in mount.super_options.split(',').filter(|o| is_controller(o)) {
                        controllers
                            .entry(name.to_owned())
                            .or_insert_with(|| mount.mount_point.clone());
                    }
                }
                _ => {}
            }
        }
        match (controllers.is_empty(), unified) {
            (true, None) => Err(LayoutError::NoCgroupMount {
                path: path.to_owned(),
            }),
            (true, Some(root)) => Ok(Self::Unified { root }),
            (false, None) => Ok(Self::Legacy { controllers }),
            (false, Some(unified)) => Ok(Self::Hybrid {
                controllers,
                unified,
            }),
        }
    }

    /// The mount point of v1 controller `name`, if the layout has one.
    pub fn v1_controller(&self, name: &str) -> Option<&Path> {
        match self {
            Self::Legacy { controllers } | Self::Hybrid { controllers, .. } => {
                controllers.get(name).map(PathBuf::as_path)
            }
            Self::Unified { .. } => None,
        }
    }

    /// The v2 mount, if the layout has one.
    pub fn unified(&self) -> Option<&Path> {
        match self {
            Self::Legacy { .. } => None,
            Self::Hybrid { unified, .. } => Some(unified),
            Self::Unified { root } => Some(root),
        }
    }
}

impl fmt::Display for CgroupLayout {
    /// A one-line summary for the start-up log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = |c: &BTreeMap<String, PathBuf>| c.keys().cloned().collect::<Vec<_>>().join(",");
        match self {
            Self::Legacy { controllers } => write!(f, "legacy (v1: {})", names(controllers)),
            Self::Hybrid {
                controllers,
                unified,
            } => write!(
                f,
                "hybrid (v1: {}; v2 at {})",
                names(controllers),
                unified.display()
            ),
            Self::Unified { root } => write!(f, "unified (v2 at {})", root.display()),
        }
    }
}

fn is_controller(option: &str) -> bool {
    V1_CONTROLLERS.contains(&option) || option.strip_prefix("name=").is_some_and(|n| !n.is_empty())
}

/// The fields of one mountinfo line this module needs.
struct Mount<'a> {
    mount_point: PathBuf,
    fs_type: &'a str,
    super_options: &'a str,
}

/// Splits `id parent major:minor root mount-point options [optional...] - fstype source
/// super-options`.
fn parse_line(line: &str) -> Option<Mount<'_>> {
    let fields: Vec<&str> = line.split_ascii_whitespace().collect();
    let separator = fields.iter().skip(6).position(|f| *f == "-")? + 6;
    let mount_point = *fields.get(4)?;
    let fs_type = *fields.get(separator + 1)?;
    let super_options = *fields.get(separator + 3)?;
    Some(Mount {
        mount_point: PathBuf::from(unescape(mount_point)?),
        fs_type,
        super_options,
    })
}

/// Undoes the kernel's octal escapes (`\040` for a space, `\134` for a backslash).
fn unescape(field: &str) -> Option<String> {
    let mut out = Vec::with_capacity(field.len());
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            let digits = std::str::from_utf8(bytes.get(i + 1..i + 4)?).ok()?;
            out.push(u8::from_str_radix(digits, 8).ok()?);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests;
