//! GPUaaS host side: everything in the agent that touches the machine.
//!
//! This crate owns, today:
//!
//! - [`backend`]: the [`GpuBackend`] trait through which the agent learns what GPUs a host has;
//! - [`nvml`]: the NVML implementation ([`NvmlBackend`], `libnvidia-ml` loaded at run time, so
//!   the agent builds and starts on hosts without a driver);
//! - [`sim`]: the simulated implementation ([`SimBackend`]), built from a spec string such as
//!   `8xH100-80GB` and obeying the MIG model of `gpuaas_proto::mig`; used by every test and by
//!   dev mode;
//! - [`pci`]: PCI bus-id normalisation and the sysfs facts NVML does not give (NUMA node);
//! - [`host`]: the host's name, CPUs and memory ([`HostFacts`]), and [`inventory`], which joins
//!   them with a backend's GPUs into the `Inventory` a node reports;
//! - [`conformance`]: the suite every backend must pass (run against `sim` by `cargo test`,
//!   against `nvml` by `gpuaas-hwtests`);
//! - [`devices`]: a sandbox's device allow-list as data (default deny; NVIDIA nodes only for an
//!   allocation that holds GPUs), rendered as cgroup v1 `devices.allow` lines and compiled into
//!   a `BPF_PROG_TYPE_CGROUP_DEVICE` program for v2, verified in a userspace interpreter;
//! - [`cgroup`]: detection of the host's cgroup layout (v1, v2 or hybrid) from mountinfo, the
//!   v1 and v2 limit writers (read back after write) and [`Sandbox`], an allocation's cgroups
//!   with its limits and device list, destroyed with everything in them;
//! - [`mig`]: MIG instance management ([`MigManager`]: create, destroy and list GPU instances
//!   with their compute instance), on NVML ([`NvmlMig`]) and simulated ([`SimMig`]), both
//!   validated by the MIG model of `gpuaas_proto::mig`;
//! - [`records`]: the sandbox records kept in the state directory and the pure re-adoption
//!   decision after an agent restart ([`records::reconcile`]);
//! - [`uids`]: the configured workload uid range and the choice of a free uid in it.
//!
//! Writing the cgroups, loading the eBPF program, the workload
//! supervisor and device health come with issue 4 and will live here too. This crate does no
//! networking.
//!
//! # Design
//! Every path the crate reads (`/sys`, `/proc/meminfo`, ...) is a parameter with a production
//! default, so unit tests run the real readers against temp-dir trees. Errors are typed per
//! module and name the path or value at fault. Logs go through `tracing`; the binaries install
//! the subscriber.

pub mod backend;
pub mod cgroup;
pub mod conformance;
pub mod devices;
pub mod host;
pub mod launch;
pub mod mig;
pub mod nvml;
pub mod pci;
pub mod records;
pub mod sim;
pub mod testing;
pub mod uids;

pub use backend::{BackendError, GpuBackend};
pub use cgroup::{
    CgroupFileError, CpuQuota, CpuSet, Limits, LimitsError, Released, Sandbox, SandboxError,
};
pub use host::{HostError, HostFacts, HostPaths, inventory};
pub use launch::{ExitRecord, LaunchError, LaunchedWorkload, WorkloadSpec, launch, read_exit};
pub use mig::{MigInstance, MigManager, MigManagerError, NvmlMig, ProfileInfo, SimMig};
pub use nvml::{NvmlBackend, NvmlOptions};
pub use pci::PciError;
pub use sim::{SimBackend, SimError, SimGroup, SimSpec, SimSpecError};
