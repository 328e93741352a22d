//! Cgroup sandboxes: today, the detection of the host's cgroup layout.
//!
//! - [`detect`]: reads `/proc/self/mountinfo` (the path is a parameter) once at start into a
//!   [`CgroupLayout`]: legacy (v1 only), hybrid (v1 controllers plus a v2 tree, as on this
//!   development machine) or unified (pure v2, as on production GPU servers).
//!
//! The managers that create `alloc-<id>` cgroups and write limits (one file per controller under
//! `v1/` and `v2/`) come next and are built from the detected layout.

pub mod detect;

pub use detect::{CgroupLayout, LayoutError, MOUNTINFO};
