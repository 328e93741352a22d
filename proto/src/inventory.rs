//! What a node reports about itself: its GPUs, their MIG state, and the host's size.
//!
//! Sent in `Hello` on every (re)connect and stored by the coordinator as the node's inventory.
//! Produced by a `GpuBackend` in the isolation crate (NVML on a real host, simulated in tests).

use serde::{Deserialize, Serialize};

use crate::messages::MAX_GPUS_PER_NODE;

/// MIG mode of one GPU as NVML reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MigMode {
    /// The GPU does not support MIG (`nvmlDeviceGetMigMode` returned NOT_SUPPORTED).
    Unsupported,
    /// MIG is supported but off.
    Disabled,
    /// MIG is on.
    Enabled,
}

/// MIG state of one GPU: the mode in force and the one waiting for the next reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigState {
    /// The mode in force.
    pub current: MigMode,
    /// The mode after the next GPU reset; equal to `current` when nothing is pending.
    pub pending: MigMode,
}

impl MigState {
    /// A GPU without MIG support.
    pub const UNSUPPORTED: MigState = MigState {
        current: MigMode::Unsupported,
        pending: MigMode::Unsupported,
    };

    /// Whether the GPU can be partitioned at all.
    pub fn capable(&self) -> bool {
        self.current != MigMode::Unsupported
    }
}

/// One physical GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// NVML index (enumeration order; not stable across reboots, use `uuid`).
    pub index: u32,
    /// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, stable for the card's life.
    pub uuid: String,
    /// Canonical model name used in resource classes (`H100-80GB`), or the NVML name when the
    /// model is not one the MIG model knows.
    pub model: String,
    /// The name NVML reports (`NVIDIA H100 80GB HBM3`).
    pub nvml_name: String,
    /// Total memory in MiB.
    pub memory_mib: u64,
    /// PCI bus id, `0000:3b:00.0` form.
    pub pci_bus_id: String,
    /// Device minor: the N of `/dev/nvidiaN` (not the NVML index).
    pub minor: u32,
    /// NUMA node of the PCI device, when the platform reports one.
    pub numa_node: Option<u32>,
    /// MIG support and mode.
    pub mig: MigState,
}

/// Everything a node reports about its hardware.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// The host's name, for people (identity is the node certificate, never this).
    pub hostname: String,
    /// Online CPUs.
    pub cpu_cores: u32,
    /// Physical memory in MiB.
    pub memory_mib: u64,
    /// The GPUs, in NVML index order (at most [`MAX_GPUS_PER_NODE`], enforced while decoding).
    #[serde(deserialize_with = "bounded_gpus")]
    pub gpus: Vec<GpuInfo>,
}

/// Decodes the GPU list without trusting its declared length: the buffer never grows past
/// [`MAX_GPUS_PER_NODE`] entries, and one more is an error, so a small hostile frame cannot
/// make the decoder allocate for a huge list of tiny records.
fn bounded_gpus<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<GpuInfo>, D::Error> {
    struct Bounded;

    impl<'de> serde::de::Visitor<'de> for Bounded {
        type Value = Vec<GpuInfo>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "a list of at most {MAX_GPUS_PER_NODE} GPUs")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut gpus = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_GPUS_PER_NODE));
            while let Some(gpu) = seq.next_element()? {
                if gpus.len() == MAX_GPUS_PER_NODE {
                    return Err(serde::de::Error::invalid_length(gpus.len() + 1, &self));
                }
                gpus.push(gpu);
            }
            Ok(gpus)
        }
    }

    deserializer.deserialize_seq(Bounded)
}
