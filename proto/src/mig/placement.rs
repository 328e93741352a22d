//! Placement rules for GPU instances on one GPU, as pure functions of the instances already
//! there.
//!
//! A GPU instance occupies the memory slots `[start, start + size)` of its [`Placement`]. A new
//! instance fits ([`can_place`]) when its profile belongs to the GPU's model, its start is one
//! the profile offers, the profile's instance count and the GPU's GI maximum are not reached, no
//! other `+me` instance holds the media extensions, and its slots overlap no existing instance.
//! These are the conditions under which `nvmlDeviceCreateGpuInstanceWithPlacement` succeeds
//! (`INVALID_ARGUMENT` for a start not offered, `INSUFFICIENT_RESOURCES` otherwise).
//!
//! # Choosing a placement
//! [`best_placement`] tries every start that fits and scores the layout each would leave: for
//! every profile of the model, largest first (by memory slots, then compute slices, then
//! memory), how many more instances of that profile alone could still be created
//! ([`remaining_capacity`], NVML's `GetGpuInstanceRemainingCapacity`). Scores compare
//! lexicographically, so the winner first keeps the largest profile possible, then as many of
//! the next largest as it can, and so on; among equal scores the lowest start wins, which makes
//! the choice deterministic. A `3g` on an empty 8-slot GPU therefore goes to slot 4 (leaving a
//! `4g` possible at 0), and single `1g`s fill from slot 6 downwards.
//!
//! # Limitations
//! The rules know nothing of driver versions: `4g` beside `3g` needs R510+, `+me` R470+, the
//! double-memory `1g` R525+. The agent's NVML path reports a refused create as an error.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{GiProfile, GpuModel};

/// Where a GPU instance sits: `size` memory slots from `start`, as NVML's
/// `nvmlGpuInstancePlacement_t` counts them. Shown as `start:size`, like `nvidia-smi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Placement {
    /// First memory slot.
    pub start: u8,
    /// Memory slots covered.
    pub size: u8,
}

impl Placement {
    /// One past the last slot covered.
    pub const fn end(self) -> u16 {
        self.start as u16 + self.size as u16
    }

    /// Whether the two placements share a memory slot.
    pub const fn overlaps(self, other: Placement) -> bool {
        (self.start as u16) < other.end() && (other.start as u16) < self.end()
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.start, self.size)
    }
}

/// A GPU instance that exists (or is reserved) on the GPU: its profile and placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PlacedGi {
    /// The instance's profile.
    pub profile: &'static GiProfile,
    /// Where it sits.
    pub placement: Placement,
}

/// Why a GPU instance cannot be created at a placement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigPlacementError {
    /// The profile is not one of the GPU model's.
    #[error("mig profile {profile} is not offered by gpu model {model}")]
    ForeignProfile {
        /// The profile's name.
        profile: &'static str,
        /// The model's canonical name.
        model: &'static str,
    },
    /// The profile does not offer that start.
    #[error(
        "mig profile {profile} cannot start at memory slot {start}: its starts are {offered:?}"
    )]
    NotOffered {
        /// The profile's name.
        profile: &'static str,
        /// The start asked for.
        start: u8,
        /// The starts the profile offers.
        offered: &'static [u8],
    },
    /// The profile's instance count is reached.
    #[error("mig profile {profile} already has {limit} instances on this gpu, its limit")]
    ProfileLimit {
        /// The profile's name.
        profile: &'static str,
        /// The profile's instance count.
        limit: u8,
    },
    /// The GPU holds as many GPU instances as it can.
    #[error("gpu model {model} already holds {max} gpu instances, its limit")]
    GpuLimit {
        /// The model's canonical name.
        model: &'static str,
        /// The model's maximum.
        max: u8,
    },
    /// Another `+me` instance holds the media extensions.
    #[error(
        "mig profile {profile} needs the media extensions, held by the {holder} instance at {at}"
    )]
    MediaExtensionsTaken {
        /// The profile's name.
        profile: &'static str,
        /// The profile of the instance that holds them.
        holder: &'static str,
        /// Where that instance sits.
        at: Placement,
    },
    /// The placement overlaps an existing instance.
    #[error("mig profile {profile} at {placement} overlaps the {other} instance at {at}")]
    Overlaps {
        /// The profile's name.
        profile: &'static str,
        /// The placement asked for.
        placement: Placement,
        /// The profile of the instance in the way.
        other: &'static str,
        /// Where that instance sits.
        at: Placement,
    },
}

/// Every placement the profile offers, whatever is already on the GPU (NVML's
/// `GetGpuInstancePossiblePlacements`), lowest start first.
pub fn valid_placements(profile: &GiProfile) -> impl Iterator<Item = Placement> + '_ {
    profile.placement_starts.iter().map(|&start| Placement {
        start,
        size: profile.memory_slots,
    })
}

/// Whether an instance of `profile` can be created at memory slot `start` on a GPU of `model`
/// holding `existing`; the error names the first rule broken.
pub fn can_place(
    model: &GpuModel,
    existing: &[PlacedGi],
    profile: &GiProfile,
    start: u8,
) -> Result<(), MigPlacementError> {
    if !model.has_profile(profile) {
        return Err(MigPlacementError::ForeignProfile {
            profile: profile.name,
            model: model.name,
        });
    }
    if !profile.placement_starts.contains(&start) {
        return Err(MigPlacementError::NotOffered {
            profile: profile.name,
            start,
            offered: profile.placement_starts,
        });
    }
    let same = existing.iter().filter(|gi| gi.profile == profile).count();
    if same >= usize::from(profile.instance_count) {
        return Err(MigPlacementError::ProfileLimit {
            profile: profile.name,
            limit: profile.instance_count,
        });
    }
    if existing.len() >= usize::from(model.max_gpu_instances) {
        return Err(MigPlacementError::GpuLimit {
            model: model.name,
            max: model.max_gpu_instances,
        });
    }
    if profile.media_extensions
        && let Some(holder) = existing.iter().find(|gi| gi.profile.media_extensions)
    {
        return Err(MigPlacementError::MediaExtensionsTaken {
            profile: profile.name,
            holder: holder.profile.name,
            at: holder.placement,
        });
    }
    let placement = Placement {
        start,
        size: profile.memory_slots,
    };
    if let Some(other) = existing.iter().find(|gi| gi.placement.overlaps(placement)) {
        return Err(MigPlacementError::Overlaps {
            profile: profile.name,
            placement,
            other: other.profile.name,
            at: other.placement,
        });
    }
    Ok(())
}

/// How many more instances of `profile` alone could be created on a GPU holding `existing`.
///
/// Taking the lowest free start each time is optimal here: every placement of one profile has
/// the same size, and for equal-length intervals earliest-start is earliest-end.
pub fn remaining_capacity(model: &GpuModel, existing: &[PlacedGi], profile: &GiProfile) -> u8 {
    let Some(profile) = own_profile(model, profile) else {
        return 0;
    };
    let mut layout = existing.to_vec();
    let mut added = 0u8;
    for placement in valid_placements(profile) {
        if can_place(model, &layout, profile, placement.start).is_ok() {
            layout.push(PlacedGi { profile, placement });
            added = added.saturating_add(1);
        }
    }
    added
}

/// The placement for a new instance of `profile` that leaves the largest profiles still
/// possible (see the module doc for the scoring), or `None` when it fits nowhere.
pub fn best_placement(
    model: &GpuModel,
    existing: &[PlacedGi],
    profile: &GiProfile,
) -> Option<Placement> {
    let profile = own_profile(model, profile)?;
    let mut by_size: Vec<&'static GiProfile> = model.profiles.iter().collect();
    by_size.sort_by_key(|p| {
        std::cmp::Reverse((p.memory_slots, p.slices, p.memory_mib, !p.media_extensions))
    });

    let mut best: Option<(Vec<u8>, Placement)> = None;
    let mut layout = existing.to_vec();
    for placement in valid_placements(profile) {
        if can_place(model, existing, profile, placement.start).is_err() {
            continue;
        }
        layout.push(PlacedGi { profile, placement });
        let score: Vec<u8> = by_size
            .iter()
            .map(|p| remaining_capacity(model, &layout, p))
            .collect();
        layout.pop();
        if best.as_ref().is_none_or(|(top, _)| score > *top) {
            best = Some((score, placement));
        }
    }
    best.map(|(_, placement)| placement)
}

/// The model's own (`'static`) entry equal to `profile`.
fn own_profile(model: &GpuModel, profile: &GiProfile) -> Option<&'static GiProfile> {
    model.profiles.iter().find(|p| *p == profile)
}
