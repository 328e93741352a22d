//! The conformance suite every [`GpuBackend`] must pass, so the simulator stays honest about
//! what real hardware reports.
//!
//! [`backend_suite`] lists the GPUs and checks the inventory's shape against the MIG model of
//! `gpuaas_proto::mig`: NVML indices `0..n` in order; UUIDs unique and of the form
//! `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`; minors unique; PCI bus ids unique and in sysfs
//! form; a known model's canonical name, total memory (one of the table's totals) and MIG
//! capability; an unknown model reported by its NVML name; the MIG state all-or-nothing
//! `Unsupported`; two listings equal; the inventory accepted by `Inventory::validate`.
//!
//! `cargo test -p gpuaas-isolation` runs it against `sim`; `gpuaas-hwtests` runs it against
//! `nvml` on a GPU host. Every check is read-only.
//!
//! [`mig_read_suite`] and [`mig_suite`] do the same for a [`MigManager`](crate::mig::MigManager) on one MIG-enabled
//! GPU. The read-only half checks the MIG mode, the profiles (ids unique, placements of the
//! profile's size, inside the GPU) and the listing (instances at placements their profile
//! offers, non-overlapping, GI ids and MIG uuids unique, two listings equal). The full suite,
//! on a GPU with no instances, also creates at an explicit placement and at chosen ones,
//! checks that an overlapping request and one past the profile's count are refused with a
//! placement error and leave the listing unchanged, that a destroy leaves its siblings as they
//! were, that the whole-GPU profile excludes everything else, and destroys everything it made.

use std::collections::HashSet;

use gpuaas_proto::inventory::{GpuInfo, MigMode};
use gpuaas_proto::messages::MAX_GPUS_PER_NODE;
use gpuaas_proto::mig::GpuModel;

use crate::backend::{BackendError, GpuBackend};
use crate::host::{HostFacts, inventory};

mod mig;

pub use mig::{MigConformanceError, mig_read_suite, mig_suite};

/// A backend that failed the suite.
#[derive(Debug, thiserror::Error)]
pub enum ConformanceError {
    /// The backend could not list its GPUs.
    #[error("backend {backend} could not list its gpus: {source}")]
    Backend {
        /// The backend's name.
        backend: &'static str,
        /// Its error.
        #[source]
        source: BackendError,
    },
    /// The listing broke rules; each entry names the GPU and the rule.
    #[error("backend {backend} broke {} conformance rule(s):\n  {}", violations.len(), violations.join("\n  "))]
    Violations {
        /// The backend's name.
        backend: &'static str,
        /// One line per broken rule.
        violations: Vec<String>,
    },
}

/// Runs every check against `backend`; the error lists every rule broken, not just the first.
pub fn backend_suite(backend: &dyn GpuBackend) -> Result<(), ConformanceError> {
    let name = backend.name();
    let failed = |source| ConformanceError::Backend {
        backend: name,
        source,
    };
    let gpus = backend.gpus().map_err(failed)?;
    let mut violations = check_gpus(&gpus);
    if backend.gpus().map_err(failed)? != gpus {
        violations.push("two listings differ".to_owned());
    }
    let host = HostFacts {
        hostname: "conformance".to_owned(),
        cpu_cores: 1,
        memory_mib: 1024,
    };
    let inv = inventory(backend, &host).map_err(failed)?;
    if let Err(err) = inv.validate() {
        violations.push(format!("inventory rejected by validate: {err}"));
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(ConformanceError::Violations {
            backend: name,
            violations,
        })
    }
}

/// The per-GPU and cross-GPU rules, as one message per violation.
pub fn check_gpus(gpus: &[GpuInfo]) -> Vec<String> {
    let mut out = Vec::new();
    if gpus.len() > MAX_GPUS_PER_NODE {
        out.push(format!("{} gpus, at most {MAX_GPUS_PER_NODE}", gpus.len()));
    }
    let mut uuids = HashSet::new();
    let mut minors = HashSet::new();
    let mut buses = HashSet::new();
    for (position, gpu) in gpus.iter().enumerate() {
        let at = format!("gpu {} ({})", gpu.index, gpu.uuid);
        if usize::try_from(gpu.index).ok() != Some(position) {
            out.push(format!("{at}: index {} at position {position}", gpu.index));
        }
        if !is_gpu_uuid(&gpu.uuid) {
            out.push(format!(
                "{at}: uuid {:?} is not GPU-8-4-4-4-12 hex",
                gpu.uuid
            ));
        }
        if !uuids.insert(gpu.uuid.as_str()) {
            out.push(format!("{at}: uuid {} repeated", gpu.uuid));
        }
        if !minors.insert(gpu.minor) {
            out.push(format!("{at}: minor {} repeated", gpu.minor));
        }
        if !is_sysfs_bus_id(&gpu.pci_bus_id) {
            out.push(format!(
                "{at}: pci bus id {:?} is not dddd:bb:dd.f",
                gpu.pci_bus_id
            ));
        }
        if !buses.insert(gpu.pci_bus_id.as_str()) {
            out.push(format!("{at}: pci bus id {} repeated", gpu.pci_bus_id));
        }
        if gpu.nvml_name.trim().is_empty() {
            out.push(format!("{at}: empty nvml name"));
        }
        if gpu.memory_mib == 0 {
            out.push(format!("{at}: no memory"));
        }
        if (gpu.mig.current == MigMode::Unsupported) != (gpu.mig.pending == MigMode::Unsupported) {
            out.push(format!("{at}: mig state {:?} is half unsupported", gpu.mig));
        }
        check_model(&at, gpu, &mut out);
    }
    out
}

fn check_model(at: &str, gpu: &GpuInfo, out: &mut Vec<String>) {
    if let Some(named) = GpuModel::from_nvml_name(&gpu.nvml_name)
        && named.name != gpu.model
    {
        out.push(format!(
            "{at}: nvml name {:?} is model {}, reported as {:?}",
            gpu.nvml_name, named.name, gpu.model
        ));
    }
    match GpuModel::by_name(&gpu.model) {
        Some(model) => {
            if !model.memory_totals_mib.contains(&gpu.memory_mib) {
                out.push(format!(
                    "{at}: {} with {} MiB, the table has {:?}",
                    model.name, gpu.memory_mib, model.memory_totals_mib
                ));
            }
            if !gpu.mig.capable() {
                out.push(format!(
                    "{at}: {} is MIG-capable but reports {:?}",
                    model.name, gpu.mig
                ));
            }
        }
        None if gpu.model != gpu.nvml_name => out.push(format!(
            "{at}: model {:?} is neither a known model nor the nvml name {:?}",
            gpu.model, gpu.nvml_name
        )),
        None => {}
    }
}

/// `GPU-` and 8-4-4-4-12 hex digits.
fn is_gpu_uuid(uuid: &str) -> bool {
    let Some(rest) = uuid.strip_prefix("GPU-") else {
        return false;
    };
    let groups: Vec<&str> = rest.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `dddd:bb:dd.f` in lower-case hex, as sysfs names devices (the domain may be longer than four
/// digits).
fn is_sysfs_bus_id(id: &str) -> bool {
    let lower_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let Some((domain, rest)) = id.split_once(':') else {
        return false;
    };
    // `%04x`: four digits, or more without a leading zero.
    let domain_ok = lower_hex(domain, domain.len())
        && (domain.len() == 4 || ((5..=8).contains(&domain.len()) && !domain.starts_with('0')));
    match rest
        .split_once(':')
        .and_then(|(bus, df)| Some((bus, df.split_once('.')?)))
    {
        Some((bus, (dev, func))) => {
            domain_ok && lower_hex(bus, 2) && lower_hex(dev, 2) && lower_hex(func, 1)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_and_bus_id_forms() {
        assert!(is_gpu_uuid("GPU-5f5e3c1a-0b2d-4e6f-8a9b-0c1d2e3f4a5b"));
        assert!(!is_gpu_uuid("MIG-5f5e3c1a-0b2d-4e6f-8a9b-0c1d2e3f4a5b"));
        assert!(!is_gpu_uuid("GPU-5f5e3c1a-0b2d-4e6f-8a9b"));
        assert!(!is_gpu_uuid("GPU-5f5e3c1a-0b2d-4e6f-8a9b-0c1d2e3f4a5g"));
        assert!(is_sysfs_bus_id("0000:3b:00.0"));
        assert!(is_sysfs_bus_id("12345:c1:1f.7"));
        assert!(!is_sysfs_bus_id("00000000:3B:00.0"));
        assert!(!is_sysfs_bus_id("00000000:3b:00.0"));
        assert!(!is_sysfs_bus_id("0000:3b:00"));
        assert!(!is_sysfs_bus_id("3b:00.0"));
    }

    use crate::mig::MigManager;

    fn sim_mig(spec: &str) -> crate::mig::SimMig {
        crate::mig::SimMig::new(crate::sim::SimBackend::from_spec(spec, 11).expect("valid spec"))
    }

    #[test]
    fn sim_passes_the_mig_suite() {
        let mig = sim_mig("1xH100-80GB:mig,1xA100-40GB:mig,1xA30-24GB:mig");
        for gpu in 0..3 {
            if let Err(err) = mig_suite(&mig, gpu) {
                panic!("{err}");
            }
            assert_eq!(
                mig.list(gpu).expect("list"),
                Vec::new(),
                "gpu {gpu} left dirty"
            );
            mig_read_suite(&mig, gpu).expect("read-only suite");
        }
    }

    #[test]
    fn mig_suite_needs_mig_mode_and_an_empty_gpu() {
        let mig = sim_mig("1xA30-24GB,1xA30-24GB:mig");
        let err = mig_suite(&mig, 0).expect_err("mig off");
        assert!(
            err.to_string().ends_with("gpu 0 is not in mig mode"),
            "{err}"
        );
        mig.create(1, "1g.6gb", None).expect("fits");
        let err = mig_suite(&mig, 1).expect_err("not empty");
        assert!(
            err.to_string().ends_with("already holds mig instances"),
            "{err}"
        );
        // The read-only half runs on a GPU in use.
        mig_read_suite(&mig, 1).expect("read-only suite");
    }
}
