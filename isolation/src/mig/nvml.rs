//! [`NvmlMig`]: MIG instance management through NVML, following `shared/reference/mig.md`
//! section 3.
//!
//! Reads use nvml-wrapper where it has the call (MIG mode, GI profile info, MIG device handles,
//! uuids, attributes); the rest goes through `raw` (nvml-wrapper-sys). A create first lists the
//! GPU instances that exist (`nvmlDeviceGetGpuInstances` for each profile of the model) and runs
//! [`plan_create`] on them, exactly as the simulator does, then creates the GI at the chosen
//! placement (`nvmlDeviceCreateGpuInstanceWithPlacement`) and its full-size CI; if the CI
//! cannot be created the GI is destroyed again, so nothing half-made is left. A destroy removes
//! the GI's compute instances, then the GI, and nothing else. Operations of one `NvmlMig` are
//! serialised by a mutex; NVML itself refuses a create that races another process's.
//!
//! # Limitations
//! - The board must be a model of `gpuaas_proto::mig` (else [`MigManagerError::UnknownModel`]):
//!   the rules and the profile names come from its table.
//! - Existing instances are found per profile of the table; a GI of a profile the table lacks
//!   is invisible to [`plan_create`] (NVML still refuses an overlap with it,
//!   `INSUFFICIENT_RESOURCES`), and [`MigManager::profiles`] leaves such profiles out.
//! - Capability minors (`/proc/driver/nvidia-caps/mig-minors`) are not read here; `list` gives
//!   the GI and CI ids they are looked up by.
//! - Not run on hardware yet: the read-only half is what `gpuaas-hwtests` runs.

use std::sync::{Arc, Mutex, PoisonError};

use gpuaas_proto::inventory::{MigMode, MigState};
use gpuaas_proto::mig::GpuModel;
use nvml_wrapper::Device;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper_sys::bindings::{NVML_DEVICE_MIG_DISABLE, NVML_DEVICE_MIG_ENABLE};
use tracing::{info, warn};

use super::raw::{self, GiFacts, RawError};
use super::{MigInstance, MigManager, MigManagerError, ProfileInfo, placed, plan_create};
use crate::nvml::{NvmlBackend, identify};

/// GPU-instance profile indices probed (NVML stops them with `INVALID_ARGUMENT` earlier; the
/// current header has 18).
const MAX_PROFILE_INDEX: u32 = 64;

/// MIG instance management through NVML.
#[derive(Debug)]
pub struct NvmlMig {
    backend: Arc<NvmlBackend>,
    lock: Mutex<()>,
}

fn nvml_err(gpu: u32, call: &'static str) -> impl Fn(NvmlError) -> MigManagerError {
    move |source| MigManagerError::Nvml { gpu, call, source }
}

fn raw_err(gpu: u32) -> impl Fn(RawError) -> MigManagerError {
    move |e| MigManagerError::Nvml {
        gpu,
        call: e.call,
        source: e.source,
    }
}

fn mode(gpu: u32, value: u32) -> Result<MigMode, MigManagerError> {
    match value {
        NVML_DEVICE_MIG_DISABLE => Ok(MigMode::Disabled),
        NVML_DEVICE_MIG_ENABLE => Ok(MigMode::Enabled),
        value => Err(MigManagerError::MigModeValue { gpu, value }),
    }
}

impl NvmlMig {
    /// MIG management on the GPUs of `backend` (shared with its inventory use).
    pub fn new(backend: Arc<NvmlBackend>) -> NvmlMig {
        NvmlMig {
            backend,
            lock: Mutex::new(()),
        }
    }

    fn device(&self, gpu: u32) -> Result<Device<'_>, MigManagerError> {
        let nvml = self.backend.nvml();
        let count = nvml
            .device_count()
            .map_err(nvml_err(gpu, "nvmlDeviceGetCount"))?;
        if gpu >= count {
            return Err(MigManagerError::NoSuchGpu { gpu, count });
        }
        nvml.device_by_index(gpu)
            .map_err(nvml_err(gpu, "nvmlDeviceGetHandleByIndex"))
    }

    fn model(gpu: u32, device: &Device<'_>) -> Result<&'static GpuModel, MigManagerError> {
        let name = device.name().map_err(nvml_err(gpu, "nvmlDeviceGetName"))?;
        let pci = device
            .pci_info()
            .map_err(nvml_err(gpu, "nvmlDeviceGetPciInfo"))?;
        identify(gpu, &name, pci.pci_device_id).ok_or(MigManagerError::UnknownModel {
            gpu,
            nvml_name: name,
        })
    }

    fn state(gpu: u32, device: &Device<'_>) -> Result<MigState, MigManagerError> {
        match device.mig_mode() {
            Ok(m) => Ok(MigState {
                current: mode(gpu, m.current)?,
                pending: mode(gpu, m.pending)?,
            }),
            Err(NvmlError::NotSupported) => Ok(MigState::UNSUPPORTED),
            Err(source) => Err(nvml_err(gpu, "nvmlDeviceGetMigMode")(source)),
        }
    }

    /// The GPU's handle and model, checked to be in MIG mode.
    fn enabled(&self, gpu: u32) -> Result<(Device<'_>, &'static GpuModel), MigManagerError> {
        let device = self.device(gpu)?;
        let state = Self::state(gpu, &device)?;
        if state.current != MigMode::Enabled {
            return Err(MigManagerError::NotMigEnabled { gpu, state });
        }
        let model = Self::model(gpu, &device)?;
        Ok((device, model))
    }

    /// Every GPU instance of a profile in the model's table.
    fn gpu_instances(
        &self,
        gpu: u32,
        device: &Device<'_>,
        model: &'static GpuModel,
    ) -> Result<Vec<GiFacts>, MigManagerError> {
        let nvml = self.backend.nvml();
        let mut all = Vec::new();
        for profile in model.profiles {
            let max = u32::from(profile.instance_count);
            match raw::gpu_instances(nvml, device, profile.profile_id, max) {
                Ok(found) => all.extend(found),
                // A profile this driver does not offer (e.g. `+me` before R470).
                Err(RawError {
                    source: NvmlError::NotSupported | NvmlError::InvalidArg,
                    ..
                }) => {}
                Err(e) => return Err(raw_err(gpu)(e)),
            }
        }
        all.sort_by_key(|gi| gi.id);
        Ok(all)
    }

    fn list_on(
        &self,
        gpu: u32,
        device: &Device<'_>,
        model: &'static GpuModel,
    ) -> Result<Vec<MigInstance>, MigManagerError> {
        let nvml = self.backend.nvml();
        let gis = self.gpu_instances(gpu, device, model)?;
        let gpu_uuid = device.uuid().map_err(nvml_err(gpu, "nvmlDeviceGetUUID"))?;
        let count = device
            .mig_device_count()
            .map_err(nvml_err(gpu, "nvmlDeviceGetMaxMigDeviceCount"))?;
        let mut out = Vec::new();
        for index in 0..count {
            let mig = match device.mig_device_by_index(index) {
                Ok(mig) => mig,
                // Indices need not be dense.
                Err(NvmlError::NotFound) => continue,
                Err(e) => return Err(nvml_err(gpu, "nvmlDeviceGetMigDeviceHandleByIndex")(e)),
            };
            let (gi_id, ci_id) = raw::mig_ids(nvml, &mig).map_err(raw_err(gpu))?;
            let Some(gi) = gis.iter().find(|gi| gi.id == gi_id) else {
                warn!(
                    gpu,
                    gi_id, "mig device of a gpu instance of a profile not in the table"
                );
                continue;
            };
            let profile =
                model
                    .profile_by_id(gi.profile_id)
                    .ok_or(MigManagerError::ForeignInstance {
                        gpu,
                        gi: gi_id,
                        profile_id: gi.profile_id,
                        model: model.name,
                    })?;
            let mig_uuid = mig.uuid().map_err(nvml_err(gpu, "nvmlDeviceGetUUID"))?;
            let attributes = mig
                .attributes()
                .map_err(nvml_err(gpu, "nvmlDeviceGetAttributes_v2"))?;
            out.push(MigInstance {
                gpu_index: gpu,
                gpu_uuid: gpu_uuid.clone(),
                gi_id,
                ci_id,
                profile: profile.name.to_owned(),
                placement: gi.placement,
                mig_uuid,
                memory_mib: attributes.memory_size_mb,
            });
        }
        out.sort_by_key(|m| (m.gi_id, m.ci_id));
        Ok(out)
    }
}

impl MigManager for NvmlMig {
    fn name(&self) -> &'static str {
        "nvml"
    }

    fn mig_mode(&self, gpu_index: u32) -> Result<MigState, MigManagerError> {
        Self::state(gpu_index, &self.device(gpu_index)?)
    }

    fn profiles(&self, gpu_index: u32) -> Result<Vec<ProfileInfo>, MigManagerError> {
        let gpu = gpu_index;
        let device = self.device(gpu)?;
        let model = Self::model(gpu, &device)?;
        let mut out = Vec::new();
        for index in 0..MAX_PROFILE_INDEX {
            let info = match device.profile_info(index) {
                Ok(info) => info,
                Err(NvmlError::NotSupported) => continue,
                Err(NvmlError::InvalidArg) => break,
                Err(e) => return Err(nvml_err(gpu, "nvmlDeviceGetGpuInstanceProfileInfo")(e)),
            };
            let Some(known) = model.profile_by_id(info.id) else {
                warn!(
                    gpu,
                    index,
                    id = info.id,
                    "gpu instance profile not in the table"
                );
                continue;
            };
            let placements = raw::possible_placements(self.backend.nvml(), &device, info.id)
                .map_err(raw_err(gpu))?;
            out.push(ProfileInfo {
                name: known.name.to_owned(),
                profile_id: info.id,
                slices: u8::try_from(info.slice_count).unwrap_or(u8::MAX),
                instance_count: u8::try_from(info.instance_count).unwrap_or(u8::MAX),
                memory_mib: info.memory_size_mb,
                placements,
            });
        }
        Ok(out)
    }

    fn create(
        &self,
        gpu_index: u32,
        profile: &str,
        placement: Option<gpuaas_proto::mig::Placement>,
    ) -> Result<MigInstance, MigManagerError> {
        let gpu = gpu_index;
        let _serial = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let nvml = self.backend.nvml();
        let (device, model) = self.enabled(gpu)?;
        let gis = self.gpu_instances(gpu, &device, model)?;
        let layout: Vec<_> = gis
            .iter()
            .map(|g| (g.id, g.profile_id, g.placement))
            .collect();
        let existing = placed(model, gpu, &layout)?;
        let (profile, placement) = plan_create(model, gpu, &existing, profile, placement)?;
        let gi =
            raw::create_gi(nvml, &device, profile.profile_id, placement).map_err(raw_err(gpu))?;
        if let Err(e) = raw::create_ci(nvml, &device, gi.id, profile.full_ci.nvml_index) {
            if let Err(undo) = raw::destroy_gi(nvml, &device, gi.id) {
                warn!(gpu, gi = gi.id, call = undo.call, error = %undo.source,
                    "gpu instance left behind: its compute instance failed and so did the undo");
            }
            return Err(raw_err(gpu)(e));
        }
        info!(gpu, gi = gi.id, profile = profile.name, %placement, "mig instance created");
        self.list_on(gpu, &device, model)?
            .into_iter()
            .find(|m| m.gi_id == gi.id)
            .ok_or(MigManagerError::MissingDevice { gpu, gi: gi.id })
    }

    fn destroy(&self, gpu_index: u32, gi_id: u32) -> Result<(), MigManagerError> {
        let gpu = gpu_index;
        let _serial = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let (device, model) = self.enabled(gpu)?;
        if !self
            .gpu_instances(gpu, &device, model)?
            .iter()
            .any(|gi| gi.id == gi_id)
        {
            return Err(MigManagerError::NoSuchInstance { gpu, gi: gi_id });
        }
        raw::destroy_gi(self.backend.nvml(), &device, gi_id).map_err(raw_err(gpu))?;
        info!(gpu, gi = gi_id, "mig instance destroyed");
        Ok(())
    }

    fn list(&self, gpu_index: u32) -> Result<Vec<MigInstance>, MigManagerError> {
        let (device, model) = self.enabled(gpu_index)?;
        self.list_on(gpu_index, &device, model)
    }
}
