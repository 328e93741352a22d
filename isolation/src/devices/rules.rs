//! Device rules, the allow-list of an allocation, and the reference evaluator both device
//! forms (v1 lines, v2 program) must agree with.
//!
//! [`allow_list`] is pure: the host's dynamic majors and MIG capability minors come in as a
//! [`HostDevices`] value, read once by [`HostDevices::read`](super::driver::HostDevices::read).

use std::fmt;
use std::io;
use std::path::PathBuf;

use super::driver::HostDevices;

/// The major of `/dev/nvidiaN` and `/dev/nvidiactl` (fixed by the driver, `nvidia-frontend`).
pub const NVIDIA_MAJOR: u32 = 195;
/// The minor of `/dev/nvidiactl`.
pub const NVIDIACTL_MINOR: u32 = 255;
/// The largest major a Linux `dev_t` holds (12 bits).
pub const MAX_MAJOR: u32 = (1 << 12) - 1;
/// The largest minor a Linux `dev_t` holds (20 bits).
pub const MAX_MINOR: u32 = (1 << 20) - 1;

/// A device fact that could not be read, or an allow-list that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A proc file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A line of a proc file is not in the expected form.
    #[error("{}:{line}: unexpected line {content:?}: expected {expected}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// The line, cut to 64 characters.
        content: String,
        /// What the line should look like.
        expected: &'static str,
    },
    /// A driver's character-device major is not listed in `/proc/devices`.
    #[error("no character device {name:?} in {}: is the driver loaded?", path.display())]
    MissingMajor {
        /// The driver name looked up (`nvidia-uvm`, `nvidia-caps`).
        name: &'static str,
        /// The `/proc/devices` file read.
        path: PathBuf,
    },
    /// A MIG allocation was requested but the host has no `mig-minors` file.
    #[error("mig slice requested but {} was not found: is the nvidia-caps driver loaded?", path.display())]
    NoMigMinors {
        /// The `mig-minors` path that was looked for.
        path: PathBuf,
    },
    /// A MIG capability is not listed in `mig-minors`.
    #[error("no capability {key:?} in {}", path.display())]
    MissingMigMinor {
        /// The capability path, e.g. `gpu0/gi1/ci0/access`.
        key: String,
        /// The `mig-minors` file read.
        path: PathBuf,
    },
    /// A rule names a major or minor a Linux `dev_t` cannot hold.
    #[error("device number {major}:{minor} out of range (major <= 4095, minor <= 1048575)")]
    OutOfRange {
        /// The major, `u32::MAX` standing for none.
        major: u32,
        /// The minor, `u32::MAX` standing for none.
        minor: u32,
    },
    /// A rule list that compiles to more instructions than the kernel accepts.
    #[error("device program of {len} instructions exceeds the limit of {max}")]
    ProgramTooLong {
        /// Instructions generated.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The kernel's verifier refused the device program.
    #[error("bpf(BPF_PROG_LOAD) refused the device program: {source}; verifier log: {log}")]
    Verifier {
        /// The errno of the refusal.
        #[source]
        source: io::Error,
        /// The verifier log, empty if the kernel wrote none.
        log: String,
    },
    /// A `bpf()` command failed for a reason other than the verifier.
    #[error("bpf({cmd}) failed: {source}")]
    Bpf {
        /// The command (`BPF_PROG_LOAD`, `BPF_PROG_ATTACH`).
        cmd: &'static str,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// The device program could not be attached to a cgroup v2 directory.
    #[error("cannot attach the device program to {}: {op}: {source}", path.display())]
    Attach {
        /// The cgroup directory.
        path: PathBuf,
        /// What failed: `open` or `bpf(BPF_PROG_ATTACH)`.
        op: &'static str,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// A v1 devices-controller line could not be written.
    #[error("cannot write {line:?} to {}: {source}", path.display())]
    V1Write {
        /// The `devices.allow` or `devices.deny` file.
        path: PathBuf,
        /// The line.
        line: String,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// A v1 line was accepted but `devices.list` does not show its effect.
    #[error("{line:?} written to {file} is not in effect: {} lists {listed:?}", path.display())]
    V1NotApplied {
        /// The `devices.list` file read back.
        path: PathBuf,
        /// The file the line was written to.
        file: &'static str,
        /// The line.
        line: String,
        /// What `devices.list` shows for that device, if anything.
        listed: Option<String>,
    },
    /// `devices.list` holds an entry no written line accounts for.
    #[error("{} holds unexpected entry {entry:?}", path.display())]
    V1Unexpected {
        /// The `devices.list` file read back.
        path: PathBuf,
        /// The entry.
        entry: String,
    },
}

/// The device type a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// Character devices (`c`).
    Char,
    /// Block devices (`b`).
    Block,
    /// Both (`a`).
    All,
}

impl DeviceKind {
    /// Whether a rule of this kind applies to a device of type `ty` (`BPF_DEVCG_DEV_*`).
    fn matches(self, ty: u32) -> bool {
        match self {
            Self::Char => ty == crate::devices::program::DEV_CHAR,
            Self::Block => ty == crate::devices::program::DEV_BLOCK,
            Self::All => true,
        }
    }
}

/// Access bits of a rule or a request, with the values of the kernel's `BPF_DEVCG_ACC_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Access(u32);

impl Access {
    /// Create the node (`m`, `BPF_DEVCG_ACC_MKNOD`).
    pub const MKNOD: Self = Self(1);
    /// Open for reading (`r`, `BPF_DEVCG_ACC_READ`).
    pub const READ: Self = Self(2);
    /// Open for writing (`w`, `BPF_DEVCG_ACC_WRITE`).
    pub const WRITE: Self = Self(4);
    /// Read and write.
    pub const RW: Self = Self(2 | 4);
    /// Read, write and mknod.
    pub const RWM: Self = Self(1 | 2 | 4);

    /// The kernel's bit value.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// The union of two sets of bits.
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Whether every bit of `request` is in `self`; `request` may carry any bits.
    pub const fn covers(self, request: u32) -> bool {
        request & !self.0 == 0
    }
}

impl fmt::Display for Access {
    /// The cgroup v1 form: `r`, `w`, `m` in that order (`rw`, `rwm`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (bit, c) in [(Self::READ, 'r'), (Self::WRITE, 'w'), (Self::MKNOD, 'm')] {
            if self.0 & bit.0 != 0 {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// One device rule: a device or a class of devices and the access granted (or denied) on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceRule {
    /// Device type.
    pub kind: DeviceKind,
    /// Major number; `None` matches every major.
    pub major: Option<u32>,
    /// Minor number; `None` matches every minor.
    pub minor: Option<u32>,
    /// The access bits the rule is about.
    pub access: Access,
    /// Whether the rule allows (or denies) that access.
    pub allow: bool,
}

impl DeviceRule {
    /// An allow rule for one character device.
    pub const fn allow_char(major: u32, minor: u32, access: Access) -> Self {
        Self {
            kind: DeviceKind::Char,
            major: Some(major),
            minor: Some(minor),
            access,
            allow: true,
        }
    }

    /// Whether the rule applies to a device of type `ty`, `major:minor`, ignoring access.
    pub fn matches_device(&self, ty: u32, major: u32, minor: u32) -> bool {
        self.kind.matches(ty)
            && self.major.is_none_or(|m| m == major)
            && self.minor.is_none_or(|m| m == minor)
    }

    /// Checks that the numbers fit a Linux `dev_t` (so the compiled comparisons are exact).
    pub fn check_range(&self) -> Result<(), DeviceError> {
        if self.major.is_some_and(|m| m > MAX_MAJOR) || self.minor.is_some_and(|m| m > MAX_MINOR) {
            return Err(DeviceError::OutOfRange {
                major: self.major.unwrap_or(u32::MAX),
                minor: self.minor.unwrap_or(u32::MAX),
            });
        }
        Ok(())
    }
}

/// The reference evaluator: whether `rules` let a request of `access` bits on a device of type
/// `ty` (`BPF_DEVCG_DEV_*`), `major:minor` through. The last rule whose device matches and
/// whose access covers the request decides; no such rule denies. The compiled program must
/// agree with this function on every input.
pub fn evaluate(rules: &[DeviceRule], ty: u32, major: u32, minor: u32, access: u32) -> bool {
    rules
        .iter()
        .rev()
        .find(|r| r.matches_device(ty, major, minor) && r.access.covers(access))
        .is_some_and(|r| r.allow)
}

/// The pseudo devices every sandbox gets, `rwm` as runc and youki grant them: null, zero, full,
/// random, urandom, tty, ptmx and every pts.
pub fn default_rules() -> Vec<DeviceRule> {
    let mut rules: Vec<DeviceRule> = [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2)]
        .into_iter()
        .map(|(major, minor)| DeviceRule::allow_char(major, minor, Access::RWM))
        .collect();
    rules.push(DeviceRule {
        kind: DeviceKind::Char,
        major: Some(136),
        minor: None,
        access: Access::RWM,
        allow: true,
    });
    rules
}

/// A MIG slice an allocation holds: GPU instance `gi` with compute instance `ci` on the GPU whose
/// device minor is `gpu_minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MigSlice {
    /// Device minor of the parent GPU (`/dev/nvidiaN`), not its NVML index.
    pub gpu_minor: u32,
    /// GPU-instance id.
    pub gi: u32,
    /// Compute-instance id within the GPU instance.
    pub ci: u32,
}

/// The devices an allocation holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceRequest {
    /// Device minors of whole GPUs.
    pub gpus: Vec<u32>,
    /// MIG slices.
    pub mig: Vec<MigSlice>,
}

impl DeviceRequest {
    /// Whether the allocation holds any GPU, whole or sliced.
    pub fn has_gpu(&self) -> bool {
        !self.gpus.is_empty() || !self.mig.is_empty()
    }
}

/// Device classes a site grants to every sandbox of a node (e.g. `/dev/infiniband/*` for
/// GPUDirect RDMA). Empty by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiteDevices {
    /// Extra rules, appended after the computed ones.
    pub extra: Vec<DeviceRule>,
}

/// The allow-list of an allocation: the pseudo devices; if it holds a GPU, `nvidiactl`,
/// `nvidia-uvm`, `nvidia-uvm-tools`, each whole GPU's node and, per MIG slice, the parent GPU's
/// node plus the GI and CI capability nodes (read only); then the site's extra rules. An
/// allocation without GPUs gets no NVIDIA node. Every rule allows; the result is ordered and
/// free of duplicates.
pub fn allow_list(
    request: &DeviceRequest,
    host: &HostDevices,
    site: &SiteDevices,
) -> Result<Vec<DeviceRule>, DeviceError> {
    let mut rules = default_rules();
    if request.has_gpu() {
        let uvm = host.majors.require_char_major("nvidia-uvm")?;
        rules.push(DeviceRule::allow_char(
            NVIDIA_MAJOR,
            NVIDIACTL_MINOR,
            Access::RW,
        ));
        rules.push(DeviceRule::allow_char(uvm, 0, Access::RW));
        rules.push(DeviceRule::allow_char(uvm, 1, Access::RW));
        for &gpu in &request.gpus {
            rules.push(DeviceRule::allow_char(NVIDIA_MAJOR, gpu, Access::RW));
        }
        if !request.mig.is_empty() {
            let caps = host.majors.require_char_major("nvidia-caps")?;
            let minors = host
                .mig_minors
                .as_ref()
                .ok_or_else(|| DeviceError::NoMigMinors {
                    path: host.mig_minors_path.clone(),
                })?;
            for slice in &request.mig {
                let gi = minors.gi_minor(slice.gpu_minor, slice.gi)?;
                let ci = minors.ci_minor(slice.gpu_minor, slice.gi, slice.ci)?;
                rules.push(DeviceRule::allow_char(
                    NVIDIA_MAJOR,
                    slice.gpu_minor,
                    Access::RW,
                ));
                rules.push(DeviceRule::allow_char(caps, gi, Access::READ));
                rules.push(DeviceRule::allow_char(caps, ci, Access::READ));
            }
        }
    }
    rules.extend(site.extra.iter().copied());
    for rule in &rules {
        rule.check_range()?;
    }
    let mut seen = std::collections::HashSet::new();
    rules.retain(|r| seen.insert(*r));
    Ok(rules)
}
