//! MIG instance management: the [`MigManager`] trait and what both implementations share.
//!
//! This module owns the operations the agent performs on a MIG-enabled GPU: read its MIG mode,
//! list the GPU-instance profiles it offers, create a GPU instance (GI) with one full-size
//! compute instance (CI) inside it, destroy one, and list what exists with each instance's MIG
//! device uuid. It never changes MIG mode: that needs an idle GPU and a reset, and is an
//! operator's explicit action.
//!
//! - here: the trait, [`MigInstance`], [`ProfileInfo`], [`MigManagerError`] and
//!   [`plan_create`], the one validation every implementation runs before it touches anything
//!   (profile known for the model, placement offered and free, instance counts), built on
//!   `gpuaas_proto::mig::{can_place, best_placement}`;
//! - [`sim`]: [`SimMig`], the simulated implementation over a [`crate::SimBackend`];
//! - [`nvml`]: [`NvmlMig`], the NVML implementation over a [`crate::NvmlBackend`];
//! - `raw`: the NVML calls nvml-wrapper 0.13 lacks, through nvml-wrapper-sys (the only module
//!   with `unsafe`).
//!
//! Every implementation must pass [`crate::conformance::mig_suite`].

pub mod nvml;
mod raw;
pub mod sim;

use gpuaas_proto::inventory::MigState;
use gpuaas_proto::mig::{
    GiProfile, GpuModel, MigPlacementError, PlacedGi, Placement, best_placement, can_place,
    valid_placements,
};
use nvml_wrapper::error::NvmlError;
use serde::{Deserialize, Serialize};

pub use nvml::NvmlMig;
pub use sim::SimMig;

/// Creates, destroys and lists MIG instances on the GPUs of one host.
pub trait MigManager: Send + Sync {
    /// Short name of the implementation (`nvml`, `sim`), for logs and test messages.
    fn name(&self) -> &'static str;

    /// The MIG mode of GPU `gpu_index`, in force and pending.
    fn mig_mode(&self, gpu_index: u32) -> Result<MigState, MigManagerError>;

    /// The GPU-instance profiles GPU `gpu_index` offers, with every placement of each.
    fn profiles(&self, gpu_index: u32) -> Result<Vec<ProfileInfo>, MigManagerError>;

    /// Creates a GPU instance of `profile` (`3g.40gb`) at `placement` (chosen by
    /// [`best_placement`] when `None`) plus its full-size compute instance. The request is
    /// validated by [`plan_create`] first; a refused request creates nothing.
    fn create(
        &self,
        gpu_index: u32,
        profile: &str,
        placement: Option<Placement>,
    ) -> Result<MigInstance, MigManagerError>;

    /// Destroys GPU instance `gi_id` of GPU `gpu_index`: its compute instances, then the GI.
    /// Other instances are not touched.
    fn destroy(&self, gpu_index: u32, gi_id: u32) -> Result<(), MigManagerError>;

    /// The MIG devices (one per compute instance) of GPU `gpu_index`, by GI id.
    fn list(&self, gpu_index: u32) -> Result<Vec<MigInstance>, MigManagerError>;
}

/// One MIG device: a GPU instance and its compute instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigInstance {
    /// The parent GPU's NVML index.
    pub gpu_index: u32,
    /// The parent GPU's uuid (`GPU-...`).
    pub gpu_uuid: String,
    /// GPU-instance id, unique per GPU.
    pub gi_id: u32,
    /// Compute-instance id, unique per GI (0 for the one full-size CI the agent creates).
    pub ci_id: u32,
    /// The GI profile's name (`3g.40gb`).
    pub profile: String,
    /// Where the GI sits, in memory slots.
    pub placement: Placement,
    /// The MIG device uuid (`MIG-<uuid>`): what `CUDA_VISIBLE_DEVICES` takes.
    pub mig_uuid: String,
    /// Memory of the instance in MiB.
    pub memory_mib: u64,
}

/// One GPU-instance profile a GPU offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileInfo {
    /// The profile's name (`3g.40gb`).
    pub name: String,
    /// NVML's profile id (what `nvidia-smi mig -cgi` takes).
    pub profile_id: u32,
    /// Compute slices.
    pub slices: u8,
    /// Most instances of this profile one GPU can hold.
    pub instance_count: u8,
    /// Memory of one instance in MiB.
    pub memory_mib: u64,
    /// Every placement the profile offers, whatever is already on the GPU.
    pub placements: Vec<Placement>,
}

impl ProfileInfo {
    /// The table's facts of `profile`.
    pub fn from_table(profile: &GiProfile) -> ProfileInfo {
        ProfileInfo {
            name: profile.name.to_owned(),
            profile_id: profile.profile_id,
            slices: profile.slices,
            instance_count: profile.instance_count,
            memory_mib: profile.memory_mib,
            placements: valid_placements(profile).collect(),
        }
    }
}

/// Why a MIG operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MigManagerError {
    /// No GPU has that index.
    #[error("no gpu {gpu}: the host has {count}")]
    NoSuchGpu {
        /// The index asked for.
        gpu: u32,
        /// GPUs on the host.
        count: u32,
    },
    /// The GPU is not in MIG mode (or cannot be); changing that is an operator's action.
    #[error(
        "gpu {gpu} is not in mig mode (mig state {state:?}); enabling it is an operator action"
    )]
    NotMigEnabled {
        /// The GPU's index.
        gpu: u32,
        /// Its MIG state.
        state: MigState,
    },
    /// The board is not one the MIG model knows, so its rules cannot be checked.
    #[error("gpu {gpu} ({nvml_name}) is not a gpu model the mig model knows")]
    UnknownModel {
        /// The GPU's index.
        gpu: u32,
        /// The name NVML gives it.
        nvml_name: String,
    },
    /// The model has no profile of that name.
    #[error("gpu model {model} has no mig profile {profile:?}: expected one of {known}")]
    UnknownProfile {
        /// The model's canonical name.
        model: &'static str,
        /// The profile asked for, cut to 64 characters.
        profile: String,
        /// The model's profile names, comma separated.
        known: String,
    },
    /// The placement's size is not the profile's.
    #[error("mig profile {profile} covers {size} memory slots, placement {placement} does not")]
    PlacementSize {
        /// The profile's name.
        profile: &'static str,
        /// The placement asked for.
        placement: Placement,
        /// The profile's size in memory slots.
        size: u8,
    },
    /// The instance cannot be placed; the source names the rule broken.
    #[error("gpu {gpu}: {source}")]
    Placement {
        /// The GPU's index.
        gpu: u32,
        /// The broken placement rule.
        #[source]
        source: MigPlacementError,
    },
    /// No GPU instance has that id.
    #[error("gpu {gpu} has no gpu instance {gi}")]
    NoSuchInstance {
        /// The GPU's index.
        gpu: u32,
        /// The GI id asked for.
        gi: u32,
    },
    /// The GPU holds an instance whose profile id its model's table does not list.
    #[error("gpu {gpu} gpu instance {gi} has profile id {profile_id}, not in the {model} table")]
    ForeignInstance {
        /// The GPU's index.
        gpu: u32,
        /// The GI id.
        gi: u32,
        /// The profile id NVML reports.
        profile_id: u32,
        /// The model's canonical name.
        model: &'static str,
    },
    /// An NVML call failed.
    #[error("nvml {call} failed for gpu {gpu}: {source}")]
    Nvml {
        /// The GPU's index.
        gpu: u32,
        /// The NVML function.
        call: &'static str,
        /// NVML's error.
        #[source]
        source: NvmlError,
    },
    /// The GPU reports a MIG mode value this code does not know.
    #[error("nvml reported unknown mig mode {value} for gpu {gpu}")]
    MigModeValue {
        /// The GPU's index.
        gpu: u32,
        /// The raw value.
        value: u32,
    },
    /// A created instance did not show up as a MIG device.
    #[error("gpu {gpu} gpu instance {gi} was created but has no mig device")]
    MissingDevice {
        /// The GPU's index.
        gpu: u32,
        /// The GI id.
        gi: u32,
    },
}

/// Longest piece of input quoted back in an error.
const MAX_QUOTED: usize = 64;

/// The one validation every [`MigManager`] runs before creating anything: the profile called
/// `profile_name` of `model`, and where it goes given the instances `existing` on GPU `gpu`.
///
/// An explicit `placement` must have the profile's size and pass [`can_place`]; without one,
/// [`best_placement`] chooses, and when nothing fits the error is the rule the profile's first
/// placement breaks (its instance limit, the GPU's, or the instance in the way).
pub fn plan_create(
    model: &'static GpuModel,
    gpu: u32,
    existing: &[PlacedGi],
    profile_name: &str,
    placement: Option<Placement>,
) -> Result<(&'static GiProfile, Placement), MigManagerError> {
    let profile = model
        .profile(profile_name)
        .ok_or_else(|| MigManagerError::UnknownProfile {
            model: model.name,
            profile: profile_name.chars().take(MAX_QUOTED).collect(),
            known: model
                .profiles
                .iter()
                .map(|p| p.name)
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let placement = match placement {
        Some(placement) => {
            if placement.size != profile.memory_slots {
                return Err(MigManagerError::PlacementSize {
                    profile: profile.name,
                    placement,
                    size: profile.memory_slots,
                });
            }
            can_place(model, existing, profile, placement.start)
                .map_err(|source| MigManagerError::Placement { gpu, source })?;
            placement
        }
        None => match best_placement(model, existing, profile) {
            Some(placement) => placement,
            None => {
                let first = profile
                    .placement_starts
                    .first()
                    .copied()
                    .unwrap_or_default();
                let source = can_place(model, existing, profile, first).err().unwrap_or(
                    MigPlacementError::ProfileLimit {
                        profile: profile.name,
                        limit: profile.instance_count,
                    },
                );
                return Err(MigManagerError::Placement { gpu, source });
            }
        },
    };
    Ok((profile, placement))
}

/// The placed GIs of `instances`, as [`can_place`] takes them; an instance whose profile the
/// model does not list is an error (its rules cannot be checked).
pub fn placed(
    model: &'static GpuModel,
    gpu: u32,
    instances: &[(u32, u32, Placement)],
) -> Result<Vec<PlacedGi>, MigManagerError> {
    instances
        .iter()
        .map(|&(gi, profile_id, placement)| {
            let profile =
                model
                    .profile_by_id(profile_id)
                    .ok_or(MigManagerError::ForeignInstance {
                        gpu,
                        gi,
                        profile_id,
                        model: model.name,
                    })?;
            Ok(PlacedGi { profile, placement })
        })
        .collect()
}

#[cfg(test)]
mod tests;
