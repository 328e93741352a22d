//! [`SimMig`]: MIG instance management on a simulated host, obeying the same rules as NVML.
//!
//! It owns the MIG instances of every GPU of a [`SimBackend`] (in a mutex) and checks each
//! create with [`plan_create`], the validation the NVML path runs too. Like NVML it allocates
//! GI ids per GPU, the smallest free one from 1; every GI gets one full-size CI with id 0; MIG
//! uuids are derived from the host's seed, the GPU and a per-GPU creation counter, so a run is
//! deterministic and a re-created instance gets a new uuid. MIG mode is the backend's and never
//! changes here; every operation but [`MigManager::mig_mode`] and [`MigManager::profiles`]
//! needs it `Enabled`.

use std::sync::{Mutex, MutexGuard, PoisonError};

use gpuaas_proto::inventory::{GpuInfo, MigMode, MigState};
use gpuaas_proto::mig::{GiProfile, GpuModel, PlacedGi, Placement};

use super::{MigInstance, MigManager, MigManagerError, ProfileInfo, plan_create};
use crate::backend::GpuBackend;
use crate::sim::{SimBackend, splitmix64};

/// One simulated GPU instance (with its full-size CI).
#[derive(Debug, Clone)]
struct SimGi {
    gi_id: u32,
    profile: &'static GiProfile,
    placement: Placement,
    mig_uuid: String,
}

/// The MIG side of one simulated GPU.
#[derive(Debug, Clone, Default)]
struct SimGpuMig {
    instances: Vec<SimGi>,
    created: u64,
}

/// MIG instance management on a [`SimBackend`].
#[derive(Debug)]
pub struct SimMig {
    backend: SimBackend,
    gpus: Vec<GpuInfo>,
    state: Mutex<Vec<SimGpuMig>>,
}

impl SimMig {
    /// No instances yet on any GPU of `backend`.
    pub fn new(backend: SimBackend) -> SimMig {
        // The simulated backend never fails to list its GPUs.
        let gpus = backend.gpus().unwrap_or_default();
        let state = Mutex::new(vec![SimGpuMig::default(); gpus.len()]);
        SimMig {
            backend,
            gpus,
            state,
        }
    }

    /// The simulated host.
    pub fn backend(&self) -> &SimBackend {
        &self.backend
    }

    fn state(&self) -> MutexGuard<'_, Vec<SimGpuMig>> {
        // The state is consistent after every statement that changes it, so a panic elsewhere
        // while the lock was held leaves nothing half-done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn gpu(&self, gpu: u32) -> Result<(&GpuInfo, &'static GpuModel, usize), MigManagerError> {
        let count = u32::try_from(self.gpus.len()).unwrap_or(u32::MAX);
        let position = usize::try_from(gpu).unwrap_or(usize::MAX);
        let info = self
            .gpus
            .get(position)
            .ok_or(MigManagerError::NoSuchGpu { gpu, count })?;
        let model =
            GpuModel::by_name(&info.model).ok_or_else(|| MigManagerError::UnknownModel {
                gpu,
                nvml_name: info.nvml_name.clone(),
            })?;
        Ok((info, model, position))
    }

    /// The GPU, checked to be in MIG mode.
    fn enabled(&self, gpu: u32) -> Result<(&GpuInfo, &'static GpuModel, usize), MigManagerError> {
        let found = self.gpu(gpu)?;
        if found.0.mig.current != MigMode::Enabled {
            return Err(MigManagerError::NotMigEnabled {
                gpu,
                state: found.0.mig,
            });
        }
        Ok(found)
    }

    fn mig_uuid(&self, gpu: u32, created: u64) -> String {
        let mut state = self.backend.seed() ^ 0x4d49_475f_5349_4d00;
        let mut state = splitmix64(&mut state)
            .wrapping_add(u64::from(gpu) << 40)
            .wrapping_add(created);
        let hi = splitmix64(&mut state);
        let lo = splitmix64(&mut state);
        format!(
            "MIG-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            hi >> 32,
            (hi >> 16) & 0xffff,
            hi & 0xffff,
            lo >> 48,
            lo & 0xffff_ffff_ffff
        )
    }
}

fn instance(info: &GpuInfo, gi: &SimGi) -> MigInstance {
    MigInstance {
        gpu_index: info.index,
        gpu_uuid: info.uuid.clone(),
        gi_id: gi.gi_id,
        ci_id: 0,
        profile: gi.profile.name.to_owned(),
        placement: gi.placement,
        mig_uuid: gi.mig_uuid.clone(),
        memory_mib: gi.profile.memory_mib,
    }
}

impl MigManager for SimMig {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn mig_mode(&self, gpu_index: u32) -> Result<MigState, MigManagerError> {
        Ok(self.gpu(gpu_index)?.0.mig)
    }

    fn profiles(&self, gpu_index: u32) -> Result<Vec<ProfileInfo>, MigManagerError> {
        let (_, model, _) = self.gpu(gpu_index)?;
        Ok(model.profiles.iter().map(ProfileInfo::from_table).collect())
    }

    fn create(
        &self,
        gpu_index: u32,
        profile: &str,
        placement: Option<Placement>,
    ) -> Result<MigInstance, MigManagerError> {
        let (info, model, position) = self.enabled(gpu_index)?;
        let mut state = self.state();
        let Some(gpu) = state.get_mut(position) else {
            return Err(MigManagerError::NoSuchGpu {
                gpu: gpu_index,
                count: 0,
            });
        };
        let existing: Vec<PlacedGi> = gpu
            .instances
            .iter()
            .map(|gi| PlacedGi {
                profile: gi.profile,
                placement: gi.placement,
            })
            .collect();
        let (profile, placement) = plan_create(model, gpu_index, &existing, profile, placement)?;
        let gi_id = (1u32..)
            .find(|id| gpu.instances.iter().all(|gi| gi.gi_id != *id))
            .unwrap_or(u32::MAX);
        gpu.created = gpu.created.wrapping_add(1);
        let gi = SimGi {
            gi_id,
            profile,
            placement,
            mig_uuid: self.mig_uuid(gpu_index, gpu.created),
        };
        let created = instance(info, &gi);
        gpu.instances.push(gi);
        gpu.instances.sort_by_key(|gi| gi.gi_id);
        Ok(created)
    }

    fn destroy(&self, gpu_index: u32, gi_id: u32) -> Result<(), MigManagerError> {
        let (_, _, position) = self.enabled(gpu_index)?;
        let mut state = self.state();
        let gpu = state.get_mut(position);
        let at = gpu
            .as_ref()
            .and_then(|g| g.instances.iter().position(|gi| gi.gi_id == gi_id));
        match (gpu, at) {
            (Some(gpu), Some(at)) => {
                gpu.instances.remove(at);
                Ok(())
            }
            _ => Err(MigManagerError::NoSuchInstance {
                gpu: gpu_index,
                gi: gi_id,
            }),
        }
    }

    fn list(&self, gpu_index: u32) -> Result<Vec<MigInstance>, MigManagerError> {
        let (info, _, position) = self.enabled(gpu_index)?;
        let state = self.state();
        Ok(state
            .get(position)
            .map(|gpu| gpu.instances.iter().map(|gi| instance(info, gi)).collect())
            .unwrap_or_default())
    }
}
