//! The NVML MIG calls nvml-wrapper 0.13 lacks or gets wrong, made through nvml-wrapper-sys
//! (`shared/reference/mig.md` section 6.2): possible placements (the wrapper's always returns
//! an empty list), GPU instances (enumerate, look up, create at a placement, destroy), compute
//! instances (profile, create, enumerate, destroy) and the GI/CI ids of a MIG device handle.
//!
//! This is the crate's only `unsafe` code. Each call loads its symbol through `nvml_sym` (a
//! driver without the symbol gives `FailedToLoadSymbol`, never a panic) and maps the return
//! code with `nvml_try`. Raw GI/CI handles never leave this module: callers name instances by
//! GI id, and every function re-resolves the handle, so a handle is only used while the
//! instance is known to exist.
#![allow(unsafe_code)]

use std::ptr;

use gpuaas_proto::mig::Placement;
use nvml_wrapper::error::{NvmlError, nvml_sym, nvml_try};
use nvml_wrapper::{Device, Nvml};
use nvml_wrapper_sys::bindings::{
    NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED, NVML_COMPUTE_INSTANCE_PROFILE_COUNT,
    nvmlComputeInstance_t, nvmlComputeInstanceInfo_t, nvmlComputeInstanceProfileInfo_t,
    nvmlGpuInstance_t, nvmlGpuInstanceInfo_t, nvmlGpuInstancePlacement_t,
};

/// Most compute instances one GPU instance can hold (the caps table's ci0..ci7).
const MAX_CIS_PER_GI: usize = 8;

/// A failed NVML call and which one it was.
#[derive(Debug)]
pub(super) struct RawError {
    pub(super) call: &'static str,
    pub(super) source: NvmlError,
}

type RawResult<T> = Result<T, RawError>;

fn fail(call: &'static str) -> impl Fn(NvmlError) -> RawError {
    move |source| RawError { call, source }
}

/// What `nvmlGpuInstanceGetInfo` says about one GPU instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct GiFacts {
    pub(super) id: u32,
    pub(super) profile_id: u32,
    pub(super) placement: Placement,
}

fn placement(raw: nvmlGpuInstancePlacement_t) -> Placement {
    Placement {
        start: u8::try_from(raw.start).unwrap_or(u8::MAX),
        size: u8::try_from(raw.size).unwrap_or(u8::MAX),
    }
}

/// `nvmlDeviceGetGpuInstancePossiblePlacements_v2`: every placement of profile `profile_id`.
pub(super) fn possible_placements(
    nvml: &Nvml,
    device: &Device<'_>,
    profile_id: u32,
) -> RawResult<Vec<Placement>> {
    const CALL: &str = "nvmlDeviceGetGpuInstancePossiblePlacements_v2";
    let sym = nvml_sym(
        nvml.lib()
            .nvmlDeviceGetGpuInstancePossiblePlacements_v2
            .as_ref(),
    )
    .map_err(fail(CALL))?;
    let mut count: u32 = 0;
    // SAFETY: the device handle comes from a live `Device` of this `Nvml`; a null buffer asks
    // NVML for the count only, written to a valid `u32`.
    nvml_try(unsafe { sym(device.handle(), profile_id, ptr::null_mut(), &mut count) })
        .map_err(fail(CALL))?;
    let zero = nvmlGpuInstancePlacement_t { start: 0, size: 0 };
    let mut buf = vec![zero; usize::try_from(count).unwrap_or(0)];
    // SAFETY: `buf` holds `count` placements, as many as NVML just said it will write.
    nvml_try(unsafe { sym(device.handle(), profile_id, buf.as_mut_ptr(), &mut count) })
        .map_err(fail(CALL))?;
    buf.truncate(usize::try_from(count).unwrap_or(0));
    Ok(buf.into_iter().map(placement).collect())
}

fn gi_info(nvml: &Nvml, gi: nvmlGpuInstance_t) -> RawResult<GiFacts> {
    const CALL: &str = "nvmlGpuInstanceGetInfo";
    let sym = nvml_sym(nvml.lib().nvmlGpuInstanceGetInfo.as_ref()).map_err(fail(CALL))?;
    let mut info = nvmlGpuInstanceInfo_t {
        device: ptr::null_mut(),
        id: 0,
        profileId: 0,
        placement: nvmlGpuInstancePlacement_t { start: 0, size: 0 },
    };
    // SAFETY: `gi` was just returned by NVML for an existing instance; `info` is a valid,
    // writable struct of the type NVML fills.
    nvml_try(unsafe { sym(gi, &mut info) }).map_err(fail(CALL))?;
    Ok(GiFacts {
        id: info.id,
        profile_id: info.profileId,
        placement: placement(info.placement),
    })
}

/// `nvmlDeviceGetGpuInstances`: the GPU instances of profile `profile_id`, of which the GPU
/// holds at most `max` (the profile's instance count).
pub(super) fn gpu_instances(
    nvml: &Nvml,
    device: &Device<'_>,
    profile_id: u32,
    max: u32,
) -> RawResult<Vec<GiFacts>> {
    const CALL: &str = "nvmlDeviceGetGpuInstances";
    let sym = nvml_sym(nvml.lib().nvmlDeviceGetGpuInstances.as_ref()).map_err(fail(CALL))?;
    let mut handles: Vec<nvmlGpuInstance_t> =
        vec![ptr::null_mut(); usize::try_from(max).unwrap_or(0)];
    let mut count = max;
    // SAFETY: `handles` has room for `max` handles, the profile's instance count, which is the
    // buffer size nvml.h requires; `count` is a valid `u32`.
    nvml_try(unsafe {
        sym(
            device.handle(),
            profile_id,
            handles.as_mut_ptr(),
            &mut count,
        )
    })
    .map_err(fail(CALL))?;
    handles.truncate(usize::try_from(count).unwrap_or(0));
    handles.into_iter().map(|gi| gi_info(nvml, gi)).collect()
}

fn gi_by_id(nvml: &Nvml, device: &Device<'_>, gi_id: u32) -> RawResult<nvmlGpuInstance_t> {
    const CALL: &str = "nvmlDeviceGetGpuInstanceById";
    let sym = nvml_sym(nvml.lib().nvmlDeviceGetGpuInstanceById.as_ref()).map_err(fail(CALL))?;
    let mut gi: nvmlGpuInstance_t = ptr::null_mut();
    // SAFETY: the device handle comes from a live `Device`; `gi` is a valid out-pointer.
    nvml_try(unsafe { sym(device.handle(), gi_id, &mut gi) }).map_err(fail(CALL))?;
    Ok(gi)
}

/// `nvmlDeviceCreateGpuInstanceWithPlacement`, then `nvmlGpuInstanceGetInfo`.
pub(super) fn create_gi(
    nvml: &Nvml,
    device: &Device<'_>,
    profile_id: u32,
    at: Placement,
) -> RawResult<GiFacts> {
    const CALL: &str = "nvmlDeviceCreateGpuInstanceWithPlacement";
    let sym = nvml_sym(nvml.lib().nvmlDeviceCreateGpuInstanceWithPlacement.as_ref())
        .map_err(fail(CALL))?;
    let raw = nvmlGpuInstancePlacement_t {
        start: u32::from(at.start),
        size: u32::from(at.size),
    };
    let mut gi: nvmlGpuInstance_t = ptr::null_mut();
    // SAFETY: the device handle comes from a live `Device`; `raw` is read only during the call;
    // `gi` is a valid out-pointer.
    nvml_try(unsafe { sym(device.handle(), profile_id, &raw, &mut gi) }).map_err(fail(CALL))?;
    gi_info(nvml, gi)
}

/// Creates the compute instance of CI profile `ci_index` (the GI's full-size one) in GPU
/// instance `gi_id`; returns the CI id.
pub(super) fn create_ci(
    nvml: &Nvml,
    device: &Device<'_>,
    gi_id: u32,
    ci_index: u32,
) -> RawResult<u32> {
    let gi = gi_by_id(nvml, device, gi_id)?;

    const PROFILE: &str = "nvmlGpuInstanceGetComputeInstanceProfileInfo";
    let sym = nvml_sym(
        nvml.lib()
            .nvmlGpuInstanceGetComputeInstanceProfileInfo
            .as_ref(),
    )
    .map_err(fail(PROFILE))?;
    let mut profile = nvmlComputeInstanceProfileInfo_t {
        id: 0,
        sliceCount: 0,
        instanceCount: 0,
        multiprocessorCount: 0,
        sharedCopyEngineCount: 0,
        sharedDecoderCount: 0,
        sharedEncoderCount: 0,
        sharedJpegCount: 0,
        sharedOfaCount: 0,
    };
    let shared = NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED;
    // SAFETY: `gi` was just resolved by id; `profile` is a valid, writable struct.
    nvml_try(unsafe { sym(gi, ci_index, shared, &mut profile) }).map_err(fail(PROFILE))?;

    const CREATE: &str = "nvmlGpuInstanceCreateComputeInstance";
    let sym =
        nvml_sym(nvml.lib().nvmlGpuInstanceCreateComputeInstance.as_ref()).map_err(fail(CREATE))?;
    let mut ci: nvmlComputeInstance_t = ptr::null_mut();
    // SAFETY: `gi` is live; `ci` is a valid out-pointer.
    nvml_try(unsafe { sym(gi, profile.id, &mut ci) }).map_err(fail(CREATE))?;

    const INFO: &str = "nvmlComputeInstanceGetInfo_v2";
    let sym = nvml_sym(nvml.lib().nvmlComputeInstanceGetInfo_v2.as_ref()).map_err(fail(INFO))?;
    let mut info = nvmlComputeInstanceInfo_t {
        device: ptr::null_mut(),
        gpuInstance: ptr::null_mut(),
        id: 0,
        profileId: 0,
        placement: nvml_wrapper_sys::bindings::nvmlComputeInstancePlacement_t { start: 0, size: 0 },
    };
    // SAFETY: `ci` was just created; `info` is a valid, writable struct.
    nvml_try(unsafe { sym(ci, &mut info) }).map_err(fail(INFO))?;
    Ok(info.id)
}

/// Destroys every compute instance of GPU instance `gi_id`, then the GI itself.
pub(super) fn destroy_gi(nvml: &Nvml, device: &Device<'_>, gi_id: u32) -> RawResult<()> {
    let gi = gi_by_id(nvml, device, gi_id)?;

    const LIST: &str = "nvmlGpuInstanceGetComputeInstances";
    const DESTROY_CI: &str = "nvmlComputeInstanceDestroy";
    let list =
        nvml_sym(nvml.lib().nvmlGpuInstanceGetComputeInstances.as_ref()).map_err(fail(LIST))?;
    let destroy_ci =
        nvml_sym(nvml.lib().nvmlComputeInstanceDestroy.as_ref()).map_err(fail(DESTROY_CI))?;
    for ci_profile in 0..NVML_COMPUTE_INSTANCE_PROFILE_COUNT {
        let mut cis: Vec<nvmlComputeInstance_t> = vec![ptr::null_mut(); MAX_CIS_PER_GI];
        let mut count = u32::try_from(MAX_CIS_PER_GI).unwrap_or(0);
        // SAFETY: `gi` was just resolved by id; `cis` has room for the most CIs a GI holds.
        match nvml_try(unsafe { list(gi, ci_profile, cis.as_mut_ptr(), &mut count) }) {
            Ok(()) => {}
            // A CI profile this GI does not offer.
            Err(NvmlError::NotSupported | NvmlError::InvalidArg) => continue,
            Err(source) => return Err(RawError { call: LIST, source }),
        }
        cis.truncate(usize::try_from(count).unwrap_or(0));
        for ci in cis {
            // SAFETY: `ci` was just listed by NVML and nothing else here destroys it.
            nvml_try(unsafe { destroy_ci(ci) }).map_err(fail(DESTROY_CI))?;
        }
    }

    const DESTROY_GI: &str = "nvmlGpuInstanceDestroy";
    let destroy = nvml_sym(nvml.lib().nvmlGpuInstanceDestroy.as_ref()).map_err(fail(DESTROY_GI))?;
    // SAFETY: `gi` was resolved above and is destroyed once; it is not used afterwards.
    nvml_try(unsafe { destroy(gi) }).map_err(fail(DESTROY_GI))
}

/// The GI and CI ids of a MIG device handle.
pub(super) fn mig_ids(nvml: &Nvml, mig: &Device<'_>) -> RawResult<(u32, u32)> {
    const GI: &str = "nvmlDeviceGetGpuInstanceId";
    const CI: &str = "nvmlDeviceGetComputeInstanceId";
    let gi_sym = nvml_sym(nvml.lib().nvmlDeviceGetGpuInstanceId.as_ref()).map_err(fail(GI))?;
    let ci_sym = nvml_sym(nvml.lib().nvmlDeviceGetComputeInstanceId.as_ref()).map_err(fail(CI))?;
    let (mut gi, mut ci) = (0u32, 0u32);
    // SAFETY: the MIG handle comes from a live `Device`; `gi` is a valid out-pointer.
    nvml_try(unsafe { gi_sym(mig.handle(), &mut gi) }).map_err(fail(GI))?;
    // SAFETY: as above, for `ci`.
    nvml_try(unsafe { ci_sym(mig.handle(), &mut ci) }).map_err(fail(CI))?;
    Ok((gi, ci))
}
