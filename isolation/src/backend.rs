//! The [`GpuBackend`] trait: how the agent learns which GPUs a host has, whatever provides
//! them (NVML on a real host, the simulator in tests and dev mode).
//!
//! Every implementation must pass [`crate::conformance::backend_suite`]. Later issues extend
//! the trait with MIG instance management; the simulator then enforces the placement rules of
//! `gpuaas_proto::mig` and NVML enforces the real ones.

use gpuaas_proto::inventory::GpuInfo;
use nvml_wrapper::error::NvmlError;

use crate::pci::PciError;

/// A source of GPU facts for one host.
pub trait GpuBackend: Send + Sync {
    /// Short name of the implementation (`nvml`, `sim`), for logs and test messages.
    fn name(&self) -> &'static str;

    /// Every GPU of the host, in NVML index order. `model` is the canonical name of the MIG
    /// model (`H100-80GB`) when the board is known, else the NVML name.
    fn gpus(&self) -> Result<Vec<GpuInfo>, BackendError>;
}

/// Why a backend could not be opened or could not list the GPUs.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The NVML shared library (or one of its symbols) could not be loaded: no NVIDIA driver.
    #[error("libnvidia-ml could not be loaded from {library}: {source}")]
    NvmlLibrary {
        /// The library name or path tried.
        library: String,
        /// NVML's error.
        #[source]
        source: NvmlError,
    },
    /// The library loaded but `nvmlInit` failed (driver not running, no permission).
    #[error("nvml could not be initialised from {library}: {source}")]
    NvmlInit {
        /// The library name or path used.
        library: String,
        /// NVML's error.
        #[source]
        source: NvmlError,
    },
    /// `nvmlDeviceGetCount` failed.
    #[error("nvml could not count the gpus: {source}")]
    NvmlDeviceCount {
        /// NVML's error.
        #[source]
        source: NvmlError,
    },
    /// An NVML query about one GPU failed.
    #[error("nvml {call} failed for gpu {index}: {source}")]
    NvmlQuery {
        /// The NVML function.
        call: &'static str,
        /// The GPU's NVML index.
        index: u32,
        /// NVML's error.
        #[source]
        source: NvmlError,
    },
    /// NVML reported a MIG mode value this code does not know.
    #[error("nvml reported unknown mig mode {value} for gpu {index}")]
    MigModeValue {
        /// The GPU's NVML index.
        index: u32,
        /// The raw value (0 = disabled, 1 = enabled are known).
        value: u32,
    },
    /// A PCI fact of one GPU could not be read.
    #[error("gpu {index}: {source}")]
    Pci {
        /// The GPU's NVML index.
        index: u32,
        /// What went wrong.
        #[source]
        source: PciError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shareable<T: Send + Sync + 'static>() {}

    #[test]
    fn errors_and_backends_cross_threads() {
        // The agent keeps one backend behind an `Arc` and wraps errors in `anyhow`.
        shareable::<BackendError>();
        shareable::<Box<dyn GpuBackend>>();
    }
}
