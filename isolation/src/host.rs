//! The host's own facts (name, CPUs, memory) and the [`Inventory`] a node reports.
//!
//! Paths are parameters ([`HostPaths`]) with the production default `/proc/...`, so tests read
//! a temp-dir tree. CPUs come from [`std::thread::available_parallelism`], which counts the CPUs
//! this process may run on (affinity and cgroup quota included), not every CPU installed.

use std::io;
use std::path::{Path, PathBuf};

use gpuaas_proto::inventory::Inventory;
use tracing::debug;

use crate::backend::{BackendError, GpuBackend};

/// Longest piece of file content quoted back in an error.
const MAX_QUOTED: usize = 64;

/// Why a host fact could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A file did not hold what was expected.
    #[error("cannot find {what} in {}: got {value:?}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was looked for (`MemTotal`, `a host name`).
        what: &'static str,
        /// The content at fault, cut to 64 characters.
        value: String,
    },
    /// The number of usable CPUs could not be determined.
    #[error("cannot count the usable cpus: {source}")]
    Cpus {
        /// The error from the standard library.
        #[source]
        source: io::Error,
    },
}

/// Where the host facts are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPaths {
    /// `/proc/meminfo`.
    pub meminfo: PathBuf,
    /// `/proc/sys/kernel/hostname`.
    pub hostname: PathBuf,
}

impl HostPaths {
    /// The files under `root` (`root/proc/meminfo`, ...), for tests and chroots.
    pub fn under(root: &Path) -> HostPaths {
        HostPaths {
            meminfo: root.join("proc/meminfo"),
            hostname: root.join("proc/sys/kernel/hostname"),
        }
    }
}

impl Default for HostPaths {
    fn default() -> Self {
        HostPaths::under(Path::new("/"))
    }
}

/// The host's name and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// The kernel's host name (for people; never an identity).
    pub hostname: String,
    /// CPUs this process may use.
    pub cpu_cores: u32,
    /// Physical memory (`MemTotal`) in MiB.
    pub memory_mib: u64,
}

impl HostFacts {
    /// Reads the facts of this host from `/proc`.
    pub fn detect() -> Result<HostFacts, HostError> {
        HostFacts::read(&HostPaths::default())
    }

    /// Reads the facts from `paths`.
    pub fn read(paths: &HostPaths) -> Result<HostFacts, HostError> {
        let hostname_text = read(&paths.hostname)?;
        let hostname = hostname_text.trim();
        if hostname.is_empty() || hostname.chars().any(char::is_control) {
            return Err(HostError::Parse {
                path: paths.hostname.clone(),
                what: "a host name",
                value: quoted(hostname),
            });
        }
        let memory_mib = mem_total_mib(&paths.meminfo, &read(&paths.meminfo)?)?;
        let cpus =
            std::thread::available_parallelism().map_err(|source| HostError::Cpus { source })?;
        let facts = HostFacts {
            hostname: hostname.to_owned(),
            cpu_cores: u32::try_from(cpus.get()).unwrap_or(u32::MAX),
            memory_mib,
        };
        debug!(?facts, "host facts read");
        Ok(facts)
    }
}

fn read(path: &Path) -> Result<String, HostError> {
    std::fs::read_to_string(path).map_err(|source| HostError::Read {
        path: path.to_owned(),
        source,
    })
}

fn quoted(s: &str) -> String {
    s.chars().take(MAX_QUOTED).collect()
}

/// `MemTotal:  16303360 kB` → MiB.
fn mem_total_mib(path: &Path, meminfo: &str) -> Result<u64, HostError> {
    let bad = |value: &str| HostError::Parse {
        path: path.to_owned(),
        what: "MemTotal",
        value: quoted(value),
    };
    let (line, rest) = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|rest| (l, rest)))
        .ok_or_else(|| bad(meminfo.lines().next().unwrap_or_default()))?;
    let mut fields = rest.split_whitespace();
    match (
        fields.next().map(str::parse::<u64>),
        fields.next(),
        fields.next(),
    ) {
        (Some(Ok(kib)), Some("kB"), None) => Ok(kib / 1024),
        _ => Err(bad(line)),
    }
}

/// The inventory of a node: the host's facts and every GPU `backend` reports.
pub fn inventory(backend: &dyn GpuBackend, host: &HostFacts) -> Result<Inventory, BackendError> {
    let gpus = backend.gpus()?;
    debug!(
        backend = backend.name(),
        gpus = gpus.len(),
        "inventory taken"
    );
    Ok(Inventory {
        hostname: host.hostname.clone(),
        cpu_cores: host.cpu_cores,
        memory_mib: host.memory_mib,
        gpus,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimBackend;

    fn tree(hostname: &str, meminfo: &str) -> (tempfile::TempDir, HostPaths) {
        let root = tempfile::tempdir().expect("temp dir");
        let paths = HostPaths::under(root.path());
        std::fs::create_dir_all(root.path().join("proc/sys/kernel")).expect("mkdir");
        std::fs::write(&paths.hostname, hostname).expect("write");
        std::fs::write(&paths.meminfo, meminfo).expect("write");
        (root, paths)
    }

    const MEMINFO: &str = "MemTotal:       16303360 kB\nMemFree:         1000000 kB\n";

    #[test]
    fn facts_are_read_from_the_tree() {
        let (_root, paths) = tree("gpu-01\n", MEMINFO);
        let facts = HostFacts::read(&paths).expect("valid tree");
        assert_eq!(facts.hostname, "gpu-01");
        assert_eq!(facts.memory_mib, 15921);
        assert!(facts.cpu_cores >= 1);
    }

    #[test]
    fn bad_files_are_named() {
        let (_root, paths) = tree("\n", MEMINFO);
        let err = HostFacts::read(&paths).expect_err("empty host name");
        assert!(
            err.to_string().starts_with("cannot find a host name in "),
            "{err}"
        );

        let (_root, paths) = tree("gpu-01", "MemFree: 1 kB\n");
        let err = HostFacts::read(&paths).expect_err("no MemTotal");
        assert!(
            err.to_string().contains("cannot find MemTotal in "),
            "{err}"
        );
        assert!(err.to_string().ends_with("got \"MemFree: 1 kB\""), "{err}");

        let (_root, paths) = tree("gpu-01", "MemTotal: lots kB\n");
        let err = HostFacts::read(&paths).expect_err("not a number");
        assert!(
            err.to_string().ends_with("got \"MemTotal: lots kB\""),
            "{err}"
        );

        let paths = HostPaths::under(Path::new("/nonexistent"));
        let err = HostFacts::read(&paths).expect_err("no files");
        assert_eq!(
            err.to_string().split(':').next(),
            Some("cannot read /nonexistent/proc/sys/kernel/hostname")
        );
    }

    #[test]
    fn this_host_is_readable() {
        let facts = HostFacts::detect().expect("/proc is readable");
        assert!(facts.memory_mib > 0 && facts.cpu_cores > 0);
    }

    #[test]
    fn inventory_joins_host_and_gpus() {
        let sim = SimBackend::from_spec("2xA30-24GB", 3).expect("valid");
        let host = HostFacts {
            hostname: "gpu-01".into(),
            cpu_cores: 32,
            memory_mib: 1 << 18,
        };
        let inv = inventory(&sim, &host).expect("sim never fails");
        assert_eq!(inv.hostname, "gpu-01");
        assert_eq!(inv.gpus.len(), 2);
        assert_eq!(inv.validate(), Ok(()));
    }
}
