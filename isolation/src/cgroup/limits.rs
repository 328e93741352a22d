//! The resource limits of one sandbox as data ([`Limits`]), and their validation.
//!
//! A [`Limits`] value is what the allocation paid for: a memory hard limit (swap off unless
//! asked for), a CFS CPU quota, the CPUs and memory nodes it may use, and a maximum number of
//! processes. [`Limits::validate`] refuses values that make no sense whatever the host (a zero
//! memory limit, a period outside the kernel's range, a malformed CPU list) with a
//! [`LimitsError`] naming the field; what only the kernel can judge (a CPU the host lacks) is
//! refused when the v1/v2 writers read the value back.

use std::collections::BTreeSet;

/// The smallest memory limit accepted: one 4 KiB page.
pub const MIN_MEMORY_BYTES: u64 = 4096;
/// The kernel's CFS bounds on a period and the smallest quota, in microseconds.
pub const MIN_CFS_US: u64 = 1_000;
/// The kernel's largest CFS period, in microseconds (one second).
pub const MAX_CFS_PERIOD_US: u64 = 1_000_000;
/// The largest CPU or memory-node number a list may name (the kernel's `NR_CPUS` ceiling).
pub const MAX_LIST_ID: u32 = 8191;

/// A CFS bandwidth limit: at most `quota_us` of CPU time per `period_us` (a quota larger than
/// the period spans several CPUs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuQuota {
    /// CPU time allowed per period, in microseconds.
    pub quota_us: u64,
    /// The period, in microseconds.
    pub period_us: u64,
}

/// The CPUs and memory nodes a sandbox may use, in the kernel's list syntax (`0-3,8`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuSet {
    /// CPU list.
    pub cpus: String,
    /// Memory-node list.
    pub mems: String,
}

/// The limits of one sandbox; `None` leaves the host's default (no limit, or the parent's set).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// Memory hard limit in bytes; the workload is OOM-killed beyond it.
    pub memory_bytes: Option<u64>,
    /// Whether the workload may use swap on top of `memory_bytes` (off by default).
    pub swap: bool,
    /// CFS CPU quota.
    pub cpu: Option<CpuQuota>,
    /// CPUs and memory nodes; `None` copies the parent's on v1 and inherits on v2.
    pub cpuset: Option<CpuSet>,
    /// Maximum number of processes (tasks) in the sandbox.
    pub pids_max: Option<u64>,
}

/// A limit that makes no sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid limit {field} = {value:?}: {reason}")]
pub struct LimitsError {
    /// The field (`memory_bytes`, `cpu.period_us`, `cpuset.cpus`, ...).
    pub field: &'static str,
    /// The rejected value, as text.
    pub value: String,
    /// Why it is rejected.
    pub reason: &'static str,
}

impl Limits {
    /// Checks every field; the first nonsense value is the error.
    pub fn validate(&self) -> Result<(), LimitsError> {
        let invalid = |field, value: &dyn ToString, reason| LimitsError {
            field,
            value: value.to_string(),
            reason,
        };
        if let Some(bytes) = self.memory_bytes
            && bytes < MIN_MEMORY_BYTES
        {
            return Err(invalid("memory_bytes", &bytes, "below one 4 KiB page"));
        }
        if let Some(cpu) = self.cpu {
            if !(MIN_CFS_US..=MAX_CFS_PERIOD_US).contains(&cpu.period_us) {
                return Err(invalid(
                    "cpu.period_us",
                    &cpu.period_us,
                    "outside 1000..=1000000",
                ));
            }
            if cpu.quota_us < MIN_CFS_US {
                return Err(invalid("cpu.quota_us", &cpu.quota_us, "below 1000"));
            }
        }
        if let Some(set) = &self.cpuset {
            parse_list(&set.cpus)
                .map_err(|reason| invalid("cpuset.cpus", &set.cpus.as_str(), reason))?;
            parse_list(&set.mems)
                .map_err(|reason| invalid("cpuset.mems", &set.mems.as_str(), reason))?;
        }
        if self.pids_max == Some(0) {
            return Err(invalid(
                "pids_max",
                &0,
                "a sandbox needs at least one process",
            ));
        }
        Ok(())
    }
}

/// Parses a kernel list (`0-3,8`; empty for none) into its members.
pub fn parse_list(text: &str) -> Result<BTreeSet<u32>, &'static str> {
    let mut out = BTreeSet::new();
    let text = text.trim();
    if text.is_empty() {
        return Err("empty list");
    }
    for part in text.split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo, hi),
            None => (part, part),
        };
        let parse = |s: &str| s.parse::<u32>().map_err(|_| "not a list such as 0-3,8");
        let (lo, hi) = (parse(lo)?, parse(hi)?);
        if lo > hi {
            return Err("range runs backwards");
        }
        if hi > MAX_LIST_ID {
            return Err("id above 8191");
        }
        out.extend(lo..=hi);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(limits: &Limits) -> &'static str {
        limits.validate().expect_err("should be invalid").field
    }

    #[test]
    fn default_and_sensible_limits_pass() {
        Limits::default().validate().expect("default");
        let limits = Limits {
            memory_bytes: Some(32 << 20),
            swap: false,
            cpu: Some(CpuQuota {
                quota_us: 250_000,
                period_us: 100_000,
            }),
            cpuset: Some(CpuSet {
                cpus: "0-1,3".into(),
                mems: "0".into(),
            }),
            pids_max: Some(64),
        };
        limits.validate().expect("sensible");
    }

    #[test]
    fn nonsense_is_refused_naming_the_field() {
        let base = Limits::default;
        let memory = Limits {
            memory_bytes: Some(0),
            ..base()
        };
        assert_eq!(field(&memory), "memory_bytes");
        let period = Limits {
            cpu: Some(CpuQuota {
                quota_us: 1_000,
                period_us: 5_000_000,
            }),
            ..base()
        };
        assert_eq!(field(&period), "cpu.period_us");
        let quota = Limits {
            cpu: Some(CpuQuota {
                quota_us: 10,
                period_us: 100_000,
            }),
            ..base()
        };
        assert_eq!(field(&quota), "cpu.quota_us");
        for (cpus, mems, want) in [
            ("", "0", "cpuset.cpus"),
            ("3-1", "0", "cpuset.cpus"),
            ("0", "x", "cpuset.mems"),
        ] {
            let set = Limits {
                cpuset: Some(CpuSet {
                    cpus: cpus.into(),
                    mems: mems.into(),
                }),
                ..base()
            };
            assert_eq!(field(&set), want, "{cpus:?} {mems:?}");
        }
        let pids = Limits {
            pids_max: Some(0),
            ..base()
        };
        let err = pids.validate().expect_err("zero pids");
        assert_eq!(err.field, "pids_max");
        assert!(err.to_string().contains("pids_max"), "{err}");
    }

    #[test]
    fn lists_parse_as_the_kernel_writes_them() {
        assert_eq!(parse_list("0-2,5\n"), Ok(BTreeSet::from([0, 1, 2, 5])));
        assert_eq!(parse_list("7"), Ok(BTreeSet::from([7])));
        assert!(parse_list("9000").is_err());
    }
}
