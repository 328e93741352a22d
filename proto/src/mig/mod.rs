//! The MIG model: which GPU models we know, the GPU-instance profiles each offers, and the rules
//! for placing instances on a GPU.
//!
//! This module owns the facts of `shared/reference/mig.md` as Rust data, so the scheduler, the
//! simulated backend and the NVML path's validation all obey one set of rules:
//!
//! - [`tables`]: one [`GpuModel`] per supported board family, with its GPU-instance profiles
//!   ([`GiProfile`]) and the full-size compute-instance profile of each ([`CiProfile`]);
//! - [`placement`]: pure placement rules ([`can_place`], [`valid_placements`]) and the
//!   fragmentation-aware chooser ([`best_placement`]);
//! - here: the model lookups (by canonical name, NVML name or PCI id) and the MIG resource class
//!   (`H100-80GB/3g.40gb`).
//!
//! # Canonical model names
//! A resource class names a model by a short canonical name: `A100-40GB`, `A100-80GB`,
//! `H100-80GB`, `H100-NVL`, `H200-141GB`, `A30-24GB`. Each covers every board whose MIG table is
//! the same (A100 SXM4 and PCIe 40GB; A100 SXM4 and PCIe 80GB; H200 SXM and NVL), so a tenant
//! buys "an H100-80GB 3g.40gb" without caring about the form factor.
//!
//! # Units
//! Placements are counted in **memory slots** (8 per GPU on A100/H100/H200, 4 on A30), as NVML
//! reports them: a `3g` instance has size 4, a `7g` size 8. Memory is in MiB.
//!
//! # Limitations
//! The tables hold the values of the drivers the reference saw (R535-R580); memory sizes shift a
//! little between drivers, so the NVML path reads per-instance memory from the device rather
//! than from here. H100 PCIe is not in the table (its SM counts are unconfirmed): it is reported
//! by its NVML name and cannot be sold as MIG slices.

pub mod placement;
pub mod tables;

use std::fmt;
use std::str::FromStr;

pub use placement::{
    MigPlacementError, PlacedGi, Placement, best_placement, can_place, remaining_capacity,
    valid_placements,
};
pub use tables::MODELS;

/// Longest piece of rejected input quoted back in an error.
const MAX_QUOTED: usize = 64;

/// Copy, decoder, encoder, JPEG and optical-flow engines of one GPU instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Engines {
    /// Copy engines.
    pub copy: u8,
    /// Video decoders (NVDEC).
    pub decoder: u8,
    /// Video encoders (NVENC); none on GA100/GH100.
    pub encoder: u8,
    /// JPEG decoders (NVJPG).
    pub jpeg: u8,
    /// Optical-flow accelerators (OFA).
    pub ofa: u8,
}

/// The full-size compute-instance profile of a GPU instance: what the agent creates inside every
/// GI (one CI per GI, so a tenant gets the GI's memory QoS to itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CiProfile {
    /// The `NVML_COMPUTE_INSTANCE_PROFILE_*` constant; for CIs it equals the profile id.
    pub nvml_index: u32,
    /// Compute slices of the CI (equal to the GI's).
    pub slices: u8,
    /// Streaming multiprocessors the CI gets.
    pub sm_count: u32,
}

/// One GPU-instance profile of one GPU model, as `nvidia-smi mig -lgip` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GiProfile {
    /// The profile's name, e.g. `3g.40gb` or `1g.10gb+me`; the part after `/` in a resource class.
    pub name: &'static str,
    /// The `NVML_GPU_INSTANCE_PROFILE_*` constant: the only value
    /// `nvmlDeviceGetGpuInstanceProfileInfo` accepts.
    pub nvml_index: u32,
    /// `nvmlGpuInstanceProfileInfo_t.id`: what every other MIG call takes. Device specific.
    pub profile_id: u32,
    /// Compute slices (the `g` of the name).
    pub slices: u8,
    /// Memory slots covered, i.e. the size of every placement of this profile.
    pub memory_slots: u8,
    /// Most instances of this profile one GPU can hold.
    pub instance_count: u8,
    /// Memory of one instance in MiB.
    pub memory_mib: u64,
    /// Streaming multiprocessors of the whole GI (read, never computed: 3g on Hopper is 60).
    pub sm_count: u32,
    /// Engines of one instance.
    pub engines: Engines,
    /// A `+me` profile: it holds the GPU's media extensions, so only one `+me` GI can exist.
    pub media_extensions: bool,
    /// Memory slots at which an instance may start (each placement is `start..start+memory_slots`).
    pub placement_starts: &'static [u8],
    /// The compute-instance profile that fills the whole GI.
    pub full_ci: CiProfile,
}

/// One GPU model the MIG model knows.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct GpuModel {
    /// Canonical short name used in resource classes (`H100-80GB`).
    pub name: &'static str,
    /// Names NVML reports for boards of this model (`NVIDIA H100 80GB HBM3`).
    pub nvml_names: &'static [&'static str],
    /// PCI ids as NVML's `pciDeviceId`: device id in the high 16 bits, vendor `0x10DE` in the low.
    pub pci_device_ids: &'static [u32],
    /// Every total memory (MiB, `nvmlDeviceGetMemoryInfo`) seen for boards of this model. The
    /// first is the reference value the simulated backend reports.
    pub memory_totals_mib: &'static [u64],
    /// Compute slices of the whole GPU (7, or 4 on A30).
    pub compute_slices: u8,
    /// Memory slots of the whole GPU (8, or 4 on A30); placements are counted in these.
    pub memory_slots: u8,
    /// Most GPU instances one GPU can hold at once.
    pub max_gpu_instances: u8,
    /// The GPU-instance profiles, smallest first, as `shared/reference/mig.md` lists them.
    pub profiles: &'static [GiProfile],
}

impl GpuModel {
    /// The model with canonical name `name` (exact match).
    pub fn by_name(name: &str) -> Option<&'static GpuModel> {
        MODELS.iter().copied().find(|m| m.name == name)
    }

    /// The model of a board NVML calls `nvml_name`. Matching ignores ASCII case, surrounding
    /// space and the `NVIDIA ` prefix older drivers leave out (`A100-SXM4-40GB`).
    pub fn from_nvml_name(nvml_name: &str) -> Option<&'static GpuModel> {
        let wanted = strip_vendor(nvml_name);
        MODELS.iter().copied().find(|m| {
            m.nvml_names
                .iter()
                .any(|n| strip_vendor(n).eq_ignore_ascii_case(wanted))
        })
    }

    /// The model of a board with NVML `pciDeviceId` `pci_device_id` (`0x233010DE` form).
    pub fn from_pci_device_id(pci_device_id: u32) -> Option<&'static GpuModel> {
        MODELS
            .iter()
            .copied()
            .find(|m| m.pci_device_ids.contains(&pci_device_id))
    }

    /// The reference total memory in MiB (what the simulated backend reports).
    pub fn memory_mib(&self) -> u64 {
        self.memory_totals_mib.first().copied().unwrap_or_default()
    }

    /// The first NVML name of the model (what the simulated backend reports).
    pub fn nvml_name(&self) -> &'static str {
        self.nvml_names.first().copied().unwrap_or(self.name)
    }

    /// The profile called `name` (`3g.40gb`), exact match.
    pub fn profile(&self, name: &str) -> Option<&'static GiProfile> {
        self.profiles.iter().find(|p| p.name == name)
    }

    /// The profile with NVML profile id `profile_id` (what `nvmlGpuInstanceGetInfo` reports).
    pub fn profile_by_id(&self, profile_id: u32) -> Option<&'static GiProfile> {
        self.profiles.iter().find(|p| p.profile_id == profile_id)
    }

    /// The profile that takes the whole GPU (`7g.80gb`, `4g.24gb` on A30).
    pub fn full_profile(&self) -> Option<&'static GiProfile> {
        self.profiles
            .iter()
            .find(|p| p.memory_slots == self.memory_slots && p.slices == self.compute_slices)
    }

    /// Whether `profile` is one of this model's profiles.
    pub fn has_profile(&self, profile: &GiProfile) -> bool {
        self.profiles.iter().any(|p| p == profile)
    }
}

fn strip_vendor(name: &str) -> &str {
    let name = name.trim();
    match name.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case("nvidia ") => name[7..].trim_start(),
        _ => name,
    }
}

/// A MIG string that does not name a known model, profile or resource class.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigError {
    /// The model part is not a canonical model name.
    #[error("unknown gpu model {model:?}: expected one of {known}")]
    UnknownModel {
        /// The rejected model name, cut to 64 characters.
        model: String,
        /// The canonical names, comma separated.
        known: String,
    },
    /// The model has no profile of that name.
    #[error("gpu model {model} has no mig profile {profile:?}: expected one of {known}")]
    UnknownProfile {
        /// The model's canonical name.
        model: &'static str,
        /// The rejected profile name, cut to 64 characters.
        profile: String,
        /// The model's profile names, comma separated.
        known: String,
    },
    /// The string is not of the form `<model>/<profile>`.
    #[error(
        "invalid mig resource class {class:?}: expected <model>/<profile>, e.g. H100-80GB/3g.40gb"
    )]
    BadClass {
        /// The rejected string, cut to 64 characters.
        class: String,
    },
}

fn quoted(s: &str) -> String {
    s.chars().take(MAX_QUOTED).collect()
}

/// A MIG resource class: one GPU instance of `profile` on a GPU of `model`, written
/// `H100-80GB/3g.40gb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MigClass {
    /// The GPU model.
    pub model: &'static GpuModel,
    /// One of the model's GPU-instance profiles.
    pub profile: &'static GiProfile,
}

impl MigClass {
    /// Parses `<model>/<profile>`; both parts must match exactly (they are identifiers, stored
    /// and compared as written).
    pub fn parse(class: &str) -> Result<MigClass, MigError> {
        let Some((model_name, profile_name)) = class.split_once('/') else {
            return Err(MigError::BadClass {
                class: quoted(class),
            });
        };
        if model_name.is_empty() || profile_name.is_empty() || profile_name.contains('/') {
            return Err(MigError::BadClass {
                class: quoted(class),
            });
        }
        let model = GpuModel::by_name(model_name).ok_or_else(|| MigError::UnknownModel {
            model: quoted(model_name),
            known: MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", "),
        })?;
        let profile = model
            .profile(profile_name)
            .ok_or_else(|| MigError::UnknownProfile {
                model: model.name,
                profile: quoted(profile_name),
                known: model
                    .profiles
                    .iter()
                    .map(|p| p.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        Ok(MigClass { model, profile })
    }
}

impl FromStr for MigClass {
    type Err = MigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MigClass::parse(s)
    }
}

impl fmt::Display for MigClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.model.name, self.profile.name)
    }
}

#[cfg(test)]
mod tests;
