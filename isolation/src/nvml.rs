//! The NVML backend: GPU facts from `libnvidia-ml`, loaded at run time.
//!
//! [`NvmlBackend::open`] loads the library and calls `nvmlInit`; on a host without the NVIDIA
//! driver it returns [`BackendError::NvmlLibrary`] (never a panic), so the agent can fall back
//! or refuse with a clear message. For each GPU it reads name, UUID, total memory, PCI bus id
//! and device id, minor number and MIG mode (`NOT_SUPPORTED` means not MIG-capable), and the
//! NUMA node from sysfs. With MIG on, NVML gives the parent GPU's memory only to privileged
//! callers; an unprivileged caller gets the MIG table's total for a known model.
//!
//! The board's canonical model comes from the MIG model, by PCI device id first and NVML name
//! second; a board neither knows keeps its NVML name as its model.
//!
//! # Limitations
//! Read-only for now: MIG mode changes and GPU/compute instance management come later.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use gpuaas_proto::inventory::{GpuInfo, MigMode, MigState};
use gpuaas_proto::mig::GpuModel;
use nvml_wrapper::Nvml;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper_sys::bindings::{NVML_DEVICE_MIG_DISABLE, NVML_DEVICE_MIG_ENABLE};
use tracing::{debug, info, warn};

use crate::backend::{BackendError, GpuBackend};
use crate::pci;

/// The library `nvml-wrapper` loads when no path is given.
pub const DEFAULT_LIBRARY: &str = "libnvidia-ml.so.1";

const MIB: u64 = 1024 * 1024;

/// Where to find NVML and sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvmlOptions {
    /// Path or name of the NVML library; `None` loads [`DEFAULT_LIBRARY`] through the dynamic
    /// loader's search path.
    pub library: Option<PathBuf>,
    /// The sysfs root (`/sys`), for NUMA nodes.
    pub sysfs_root: PathBuf,
}

impl Default for NvmlOptions {
    fn default() -> Self {
        NvmlOptions {
            library: None,
            sysfs_root: PathBuf::from(pci::SYSFS_ROOT),
        }
    }
}

/// GPU facts from NVML.
pub struct NvmlBackend {
    nvml: Nvml,
    sysfs_root: PathBuf,
}

impl std::fmt::Debug for NvmlBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlBackend")
            .field("sysfs_root", &self.sysfs_root)
            .finish_non_exhaustive()
    }
}

impl NvmlBackend {
    /// Loads `libnvidia-ml.so.1` and initialises NVML, with `/sys` as the sysfs root.
    pub fn open() -> Result<NvmlBackend, BackendError> {
        NvmlBackend::open_with(&NvmlOptions::default())
    }

    /// Loads NVML as `options` say.
    pub fn open_with(options: &NvmlOptions) -> Result<NvmlBackend, BackendError> {
        let path = options
            .library
            .as_deref()
            .map_or(OsStr::new(DEFAULT_LIBRARY), Path::as_os_str);
        let library = path.to_string_lossy().into_owned();
        let nvml = Nvml::builder()
            .lib_path(path)
            .init()
            .map_err(|source| match source {
                NvmlError::LibloadingError(_) | NvmlError::FailedToLoadSymbol(_) => {
                    BackendError::NvmlLibrary {
                        library: library.clone(),
                        source,
                    }
                }
                source => BackendError::NvmlInit {
                    library: library.clone(),
                    source,
                },
            })?;
        match nvml.sys_driver_version() {
            Ok(driver) => info!(%library, %driver, "nvml opened"),
            Err(error) => info!(%library, %error, "nvml opened; driver version unknown"),
        }
        Ok(NvmlBackend {
            nvml,
            sysfs_root: options.sysfs_root.clone(),
        })
    }

    /// The NVML handle, for the MIG manager.
    pub(crate) fn nvml(&self) -> &Nvml {
        &self.nvml
    }

    fn gpu(&self, index: u32) -> Result<GpuInfo, BackendError> {
        let query = |call: &'static str| {
            move |source| BackendError::NvmlQuery {
                call,
                index,
                source,
            }
        };
        let device = self
            .nvml
            .device_by_index(index)
            .map_err(query("nvmlDeviceGetHandleByIndex"))?;
        let nvml_name = device.name().map_err(query("nvmlDeviceGetName"))?;
        let uuid = device.uuid().map_err(query("nvmlDeviceGetUUID"))?;
        let pci_info = device.pci_info().map_err(query("nvmlDeviceGetPciInfo"))?;
        let minor = device
            .minor_number()
            .map_err(query("nvmlDeviceGetMinorNumber"))?;
        let mig = match device.mig_mode() {
            Ok(mode) => MigState {
                current: mig_mode(index, mode.current)?,
                pending: mig_mode(index, mode.pending)?,
            },
            Err(NvmlError::NotSupported) => MigState::UNSUPPORTED,
            Err(source) => return Err(query("nvmlDeviceGetMigMode")(source)),
        };
        let pci_bus_id = pci::normalize_bus_id(&pci_info.bus_id)
            .map_err(|source| BackendError::Pci { index, source })?;
        let numa_node = pci::numa_node(&self.sysfs_root, &pci_bus_id)
            .map_err(|source| BackendError::Pci { index, source })?;
        let model = identify(index, &nvml_name, pci_info.pci_device_id);
        let memory_mib = match (device.memory_info(), model) {
            (Ok(memory), _) => memory.total / MIB,
            // With MIG on, the parent's memory is given only to privileged callers.
            (Err(NvmlError::NoPermission), Some(known)) if mig.current == MigMode::Enabled => {
                warn!(
                    index,
                    "memory of a mig-enabled gpu needs privileges; using the table"
                );
                known.memory_mib()
            }
            (Err(source), _) => return Err(query("nvmlDeviceGetMemoryInfo_v2")(source)),
        };
        let model = model.map_or_else(|| nvml_name.clone(), |m| m.name.to_owned());
        debug!(index, %uuid, %model, %pci_bus_id, minor, ?mig, "gpu found");
        Ok(GpuInfo {
            index,
            uuid,
            model,
            nvml_name,
            memory_mib,
            pci_bus_id,
            minor,
            numa_node,
            mig,
        })
    }
}

impl GpuBackend for NvmlBackend {
    fn name(&self) -> &'static str {
        "nvml"
    }

    fn gpus(&self) -> Result<Vec<GpuInfo>, BackendError> {
        let count = self
            .nvml
            .device_count()
            .map_err(|source| BackendError::NvmlDeviceCount { source })?;
        (0..count).map(|index| self.gpu(index)).collect()
    }
}

fn mig_mode(index: u32, value: u32) -> Result<MigMode, BackendError> {
    match value {
        NVML_DEVICE_MIG_DISABLE => Ok(MigMode::Disabled),
        NVML_DEVICE_MIG_ENABLE => Ok(MigMode::Enabled),
        value => Err(BackendError::MigModeValue { index, value }),
    }
}

/// The MIG model of a board: by PCI device id, else by NVML name.
pub(crate) fn identify(
    index: u32,
    nvml_name: &str,
    pci_device_id: u32,
) -> Option<&'static GpuModel> {
    let by_pci = GpuModel::from_pci_device_id(pci_device_id);
    let by_name = GpuModel::from_nvml_name(nvml_name);
    if let (Some(p), Some(n)) = (by_pci, by_name)
        && p.name != n.name
    {
        warn!(
            index,
            nvml_name,
            pci_device_id = format_args!("{pci_device_id:#010x}"),
            by_pci = p.name,
            by_name = n.name,
            "pci device id and nvml name name different models; using the pci id"
        );
    }
    by_pci.or(by_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_is_a_typed_error() {
        let options = NvmlOptions {
            library: Some(PathBuf::from("/nonexistent/libnvidia-ml.so.1")),
            ..NvmlOptions::default()
        };
        let err = NvmlBackend::open_with(&options).expect_err("no such library");
        assert!(matches!(err, BackendError::NvmlLibrary { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.starts_with("libnvidia-ml could not be loaded from /nonexistent/libnvidia-ml.so.1"),
            "{msg}"
        );
    }

    #[test]
    fn open_without_a_driver_does_not_panic() {
        match NvmlBackend::open() {
            // A host with the driver (a GPU host running the unit tests).
            Ok(backend) => assert_eq!(backend.name(), "nvml"),
            Err(err) => assert!(
                matches!(
                    err,
                    BackendError::NvmlLibrary { .. } | BackendError::NvmlInit { .. }
                ),
                "unexpected error {err:?}"
            ),
        }
    }

    #[test]
    fn mig_mode_values_map() {
        assert_eq!(mig_mode(0, 0).expect("disabled"), MigMode::Disabled);
        assert_eq!(mig_mode(0, 1).expect("enabled"), MigMode::Enabled);
        let err = mig_mode(3, 7).expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "nvml reported unknown mig mode 7 for gpu 3"
        );
    }

    #[test]
    fn models_are_identified_by_pci_id_then_name() {
        let h100 = identify(0, "NVIDIA H100 80GB HBM3", 0x2330_10DE).map(|m| m.name);
        assert_eq!(h100, Some("H100-80GB"));
        let renamed = identify(0, "Some Future Name", 0x20B7_10DE).map(|m| m.name);
        assert_eq!(renamed, Some("A30-24GB"));
        let by_name = identify(0, "NVIDIA H100 NVL", 0).map(|m| m.name);
        assert_eq!(by_name, Some("H100-NVL"));
        assert_eq!(identify(0, "NVIDIA H100 PCIe", 0x2331_10DE), None);
    }
}
