//! Workload uids: the configured range and the choice of a free uid in it.
//!
//! Every workload runs as a uid of its own, so tenants on one node cannot signal, ptrace or
//! read each other. This module owns [`UidRange`], the configured range (validated: never root,
//! never the overflow uid `nobody` (65534) shared by unrelated processes, never `(uid_t)-1`,
//! which `setresuid` reads as "unchanged", and no overflow), and [`allocate`], which picks the
//! lowest uid of the range that no live sandbox holds. The uids in use are derived from the
//! sandbox records ([`uids_in_use`]), which outlive an agent restart, so a restarted agent never
//! hands out the uid of a workload it re-adopted. Pure: no file, no clock.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::records::SandboxRecord;

/// The overflow uid (`nobody`), which the kernel and NFS give to unmapped owners.
pub const OVERFLOW_UID: u32 = 65_534;
/// `(uid_t)-1`: "leave unchanged" to `setresuid` and `chown`.
pub const INVALID_UID: u32 = u32::MAX;

/// A configured range of uids is unusable, or has no free uid left.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UidError {
    /// The range holds no uid.
    #[error("uid range starting at {first} is empty")]
    Empty {
        /// The first uid.
        first: u32,
    },
    /// The range includes root.
    #[error("uid range {first}+{count} includes root (uid 0)")]
    IncludesRoot {
        /// The first uid.
        first: u32,
        /// The number of uids.
        count: u32,
    },
    /// The range runs past the largest uid.
    #[error("uid range {first}+{count} runs past uid {max}")]
    Overflow {
        /// The first uid.
        first: u32,
        /// The number of uids.
        count: u32,
        /// The largest uid a range may hold.
        max: u32,
    },
    /// The range includes a uid shared with other processes or reserved by the kernel.
    #[error("uid range {first}+{count} includes reserved uid {uid}")]
    IncludesReserved {
        /// The first uid.
        first: u32,
        /// The number of uids.
        count: u32,
        /// The reserved uid.
        uid: u32,
    },
    /// Every uid of the range is held by a live sandbox.
    #[error("no free uid in range {first}..={last}: all {count} are in use")]
    Exhausted {
        /// The first uid.
        first: u32,
        /// The last uid.
        last: u32,
        /// The number of uids.
        count: u32,
    },
}

/// The range as configured, before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUidRange {
    first: u32,
    count: u32,
}

/// `count` uids from `first`, validated by [`UidRange::new`] (also when deserialised).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawUidRange")]
pub struct UidRange {
    first: u32,
    count: u32,
}

impl TryFrom<RawUidRange> for UidRange {
    type Error = UidError;

    fn try_from(raw: RawUidRange) -> Result<Self, UidError> {
        Self::new(raw.first, raw.count)
    }
}

impl UidRange {
    /// `count` uids from `first`: not empty, without root, [`OVERFLOW_UID`] or
    /// [`INVALID_UID`], and without overflow.
    pub fn new(first: u32, count: u32) -> Result<Self, UidError> {
        if count == 0 {
            return Err(UidError::Empty { first });
        }
        if first == 0 {
            return Err(UidError::IncludesRoot { first, count });
        }
        let max = INVALID_UID - 1;
        let last = first
            .checked_add(count - 1)
            .filter(|last| *last <= max)
            .ok_or(UidError::Overflow { first, count, max })?;
        if (first..=last).contains(&OVERFLOW_UID) {
            return Err(UidError::IncludesReserved {
                first,
                count,
                uid: OVERFLOW_UID,
            });
        }
        Ok(Self { first, count })
    }

    /// The first uid.
    pub fn first(&self) -> u32 {
        self.first
    }

    /// The number of uids.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The last uid (validated not to overflow).
    pub fn last(&self) -> u32 {
        self.first + (self.count - 1)
    }

    /// Whether `uid` is in the range.
    pub fn contains(&self, uid: u32) -> bool {
        (self.first..=self.last()).contains(&uid)
    }
}

/// The lowest uid of `range` not in `in_use` ([`uids_in_use`] of the live sandboxes' records).
/// Looks at most `in_use.len() + 1` uids.
pub fn allocate(range: UidRange, in_use: &HashSet<u32>) -> Result<u32, UidError> {
    (range.first..=range.last())
        .find(|uid| !in_use.contains(uid))
        .ok_or(UidError::Exhausted {
            first: range.first,
            last: range.last(),
            count: range.count,
        })
}

/// The uids held by `records`: pass the record of every sandbox not yet destroyed (a workload
/// that exited may have left processes in its cgroup until release).
pub fn uids_in_use(records: &[SandboxRecord]) -> HashSet<u32> {
    records.iter().map(|r| r.uid).collect()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use gpuaas_proto::AllocationId;

    use super::*;

    fn record(raw: u64, uid: u32) -> SandboxRecord {
        SandboxRecord {
            alloc: AllocationId::from_raw(raw),
            cgroup_dirs: vec![PathBuf::from("/sys/fs/cgroup/gpuaas/x")],
            mig: None,
            uid,
            shim_pid: Some(10),
            workload_pid: Some(11),
            started_at_ms: 0,
        }
    }

    #[test]
    fn range_validation_names_the_problem() {
        assert_eq!(
            UidRange::new(0, 10),
            Err(UidError::IncludesRoot {
                first: 0,
                count: 10
            })
        );
        assert_eq!(UidRange::new(100, 0), Err(UidError::Empty { first: 100 }));
        assert!(matches!(
            UidRange::new(u32::MAX - 5, 10),
            Err(UidError::Overflow { .. })
        ));
        assert!(matches!(
            UidRange::new(u32::MAX - 5, 6),
            Err(UidError::Overflow { .. })
        ));
        assert!(matches!(
            UidRange::new(60_000, 10_000),
            Err(UidError::IncludesReserved {
                uid: OVERFLOW_UID,
                ..
            })
        ));
        let top = UidRange::new(u32::MAX - 5, 5).expect("ends below (uid_t)-1");
        assert_eq!(top.last(), u32::MAX - 1);
        let range = UidRange::new(200_000, 3).expect("valid");
        assert_eq!(
            (range.first(), range.count(), range.last()),
            (200_000, 3, 200_002)
        );
        assert!(range.contains(200_002) && !range.contains(200_003) && !range.contains(199_999));
        let err = UidRange::new(0, 1).expect_err("root").to_string();
        assert!(err.contains("root"), "{err}");
    }

    #[test]
    fn deserialising_validates() {
        let ok: UidRange = serde_json::from_str(r#"{"first":1000,"count":2}"#).expect("valid");
        assert_eq!(ok, UidRange::new(1000, 2).expect("valid"));
        let err = serde_json::from_str::<UidRange>(r#"{"first":0,"count":2}"#).expect_err("root");
        assert!(err.to_string().contains("root"), "{err}");
        assert!(serde_json::from_str::<UidRange>(r#"{"first":1,"count":2,"x":1}"#).is_err());
    }

    #[test]
    fn allocates_the_lowest_free_uid_and_never_a_live_one() {
        let range = UidRange::new(1000, 4).expect("valid");
        assert_eq!(allocate(range, &HashSet::new()), Ok(1000));
        let live = [record(1, 1000), record(2, 1002)];
        let in_use = uids_in_use(&live);
        assert_eq!(allocate(range, &in_use), Ok(1001));
        // Uids outside the range do not matter.
        let others = uids_in_use(&[record(3, 5), record(4, 1001)]);
        assert_eq!(allocate(range, &others), Ok(1000));
    }

    #[test]
    fn never_zero_even_with_a_range_of_one_at_the_bottom() {
        let range = UidRange::new(1, 1).expect("valid");
        assert_eq!(allocate(range, &HashSet::new()), Ok(1));
        assert!(allocate(range, &HashSet::from([1])).is_err());
    }

    #[test]
    fn exhaustion_is_a_typed_error() {
        let range = UidRange::new(1000, 2).expect("valid");
        let live = [record(1, 1000), record(2, 1001)];
        let err = allocate(range, &uids_in_use(&live)).expect_err("full");
        assert_eq!(
            err,
            UidError::Exhausted {
                first: 1000,
                last: 1001,
                count: 2
            }
        );
        assert!(err.to_string().contains("no free uid"), "{err}");
    }

    #[test]
    fn a_uid_is_reused_once_its_record_is_removed() {
        let range = UidRange::new(1000, 2).expect("valid");
        let mut live = vec![record(1, 1000), record(2, 1001)];
        assert!(allocate(range, &uids_in_use(&live)).is_err());
        live.retain(|r| r.alloc != AllocationId::from_raw(1));
        assert_eq!(allocate(range, &uids_in_use(&live)), Ok(1000));
    }

    #[test]
    fn successive_allocations_are_distinct() {
        let range = UidRange::new(5000, 50).expect("valid");
        let mut live = Vec::new();
        for raw in 0..50 {
            let uid = allocate(range, &uids_in_use(&live)).expect("free uid");
            assert!(uid != 0 && range.contains(uid));
            assert!(live.iter().all(|r: &SandboxRecord| r.uid != uid));
            live.push(record(raw, uid));
        }
        assert!(matches!(
            allocate(range, &uids_in_use(&live)),
            Err(UidError::Exhausted { count: 50, .. })
        ));
    }
}
