//! Cgroup sandboxes: detecting the host's layout, writing limits, and one allocation's sandbox.
//!
//! - [`detect`]: reads `/proc/self/mountinfo` (the path is a parameter) once at start into a
//!   [`CgroupLayout`]: legacy (v1 only), hybrid (v1 controllers plus a v2 tree, as on this
//!   development machine) or unified (pure v2, as on production GPU servers);
//! - [`limits`]: the [`Limits`] of a sandbox as data, validated;
//! - [`file`](mod@file): writing a control file and reading it back ([`CgroupFileError`]);
//! - [`v1`] and [`v2`]: the limit writers of each hierarchy;
//! - [`sandbox`]: [`Sandbox`], an allocation's `alloc-<id>` cgroups: created with limits and
//!   devices (or not at all), joined, and destroyed with everything in them.

pub mod detect;
pub mod file;
pub mod limits;
pub mod sandbox;
pub mod v1;
pub mod v2;

pub use detect::{CgroupLayout, LayoutError, MOUNTINFO};
pub use file::CgroupFileError;
pub use limits::{CpuQuota, CpuSet, Limits, LimitsError};
pub use sandbox::{DEFAULT_ROOT, Released, Sandbox, SandboxError};
