//! The simulated backend: a host's GPUs described by a spec string, with facts taken from the
//! MIG model of `gpuaas_proto::mig`.
//!
//! A spec is a comma-separated list of `<count>x<model>[:mig]` parts using canonical model
//! names: `8xH100-80GB`, `2xA100-80GB,4xA30-24GB:mig`. `:mig` starts those GPUs with MIG mode
//! enabled; otherwise MIG is supported but disabled (every model the MIG model knows is
//! MIG-capable). At most [`MAX_SIM_GPUS`] GPUs per spec.
//!
//! A `seed` makes each simulated node different but deterministic: UUIDs are derived from the
//! seed and the GPU index. Memory is the model's reference total; minors are `0..n`; PCI bus ids
//! are spread like a two-socket server's, the first half of the GPUs on NUMA node 0 and the
//! second half on node 1.

use std::fmt;
use std::str::FromStr;

use gpuaas_proto::inventory::{GpuInfo, MigMode, MigState};
use gpuaas_proto::messages::MAX_GPUS_PER_NODE;
use gpuaas_proto::mig::{GpuModel, MODELS};
use serde::{Deserialize, Serialize};

use crate::backend::{BackendError, GpuBackend};

/// Most GPUs one simulated host may have (the protocol's per-node limit).
pub const MAX_SIM_GPUS: usize = MAX_GPUS_PER_NODE;

/// Longest piece of input quoted back in an error.
const MAX_QUOTED: usize = 64;

/// A spec string that does not describe a simulated host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimSpecError {
    /// The spec is empty.
    #[error("empty gpu spec: expected <count>x<model>[:mig], e.g. 8xH100-80GB")]
    Empty,
    /// A part is not `<count>x<model>[:mig]`.
    #[error("bad part {part:?} of gpu spec: expected <count>x<model>[:mig], e.g. 8xH100-80GB")]
    Shape {
        /// The part, cut to 64 characters.
        part: String,
    },
    /// A part's count is not a number from 1 to the maximum.
    #[error("bad count {count:?} in part {part:?} of gpu spec: expected 1 to {max}")]
    Count {
        /// The part, cut to 64 characters.
        part: String,
        /// The count as written.
        count: String,
        /// The maximum.
        max: usize,
    },
    /// A part names a model the MIG model does not know.
    #[error("unknown gpu model {model:?} in part {part:?} of gpu spec: expected one of {known}")]
    UnknownModel {
        /// The part, cut to 64 characters.
        part: String,
        /// The model as written.
        model: String,
        /// The canonical model names, comma separated.
        known: String,
    },
    /// A part has an option other than `mig`.
    #[error("unknown option {option:?} in part {part:?} of gpu spec: expected mig")]
    Option {
        /// The part, cut to 64 characters.
        part: String,
        /// The option as written.
        option: String,
    },
    /// The parts add up to too many GPUs.
    #[error("gpu spec {spec:?} describes {total} gpus, at most {max} are allowed")]
    TooMany {
        /// The spec, cut to 64 characters.
        spec: String,
        /// GPUs described.
        total: usize,
        /// The maximum.
        max: usize,
    },
}

fn quoted(s: &str) -> String {
    s.chars().take(MAX_QUOTED).collect()
}

/// One `<count>x<model>[:mig]` part of a spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimGroup {
    /// How many GPUs.
    pub count: usize,
    /// Their model.
    pub model: &'static GpuModel,
    /// Whether they start with MIG mode enabled.
    pub mig_enabled: bool,
}

/// A parsed spec: the GPUs of a simulated host, in index order. Written and read as its string
/// form (also in config files, through serde).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SimSpec {
    groups: Vec<SimGroup>,
}

impl SimSpec {
    /// Parses a spec string (see the module doc).
    pub fn parse(spec: &str) -> Result<SimSpec, SimSpecError> {
        if spec.trim().is_empty() {
            return Err(SimSpecError::Empty);
        }
        let groups = spec
            .split(',')
            .map(parse_group)
            .collect::<Result<Vec<_>, _>>()?;
        let total = groups
            .iter()
            .fold(0usize, |sum, g| sum.saturating_add(g.count));
        if total > MAX_SIM_GPUS {
            return Err(SimSpecError::TooMany {
                spec: quoted(spec),
                total,
                max: MAX_SIM_GPUS,
            });
        }
        Ok(SimSpec { groups })
    }

    /// The parts, in order.
    pub fn groups(&self) -> &[SimGroup] {
        &self.groups
    }

    /// How many GPUs the spec describes.
    pub fn gpu_count(&self) -> usize {
        self.groups.iter().map(|g| g.count).sum()
    }
}

fn parse_group(raw: &str) -> Result<SimGroup, SimSpecError> {
    let part = raw.trim();
    let shape = || SimSpecError::Shape { part: quoted(part) };
    let (body, option) = match part.split_once(':') {
        Some((body, option)) => (body, Some(option)),
        None => (part, None),
    };
    // `8xH100-80GB` and `8 x H100-80GB` alike.
    let (count, model_name) = body.split_once('x').ok_or_else(shape)?;
    let (count, model_name) = (count.trim(), model_name.trim());
    if count.is_empty() || model_name.is_empty() {
        return Err(shape());
    }
    let count_value = count
        .parse::<usize>()
        .ok()
        .filter(|c| (1..=MAX_SIM_GPUS).contains(c))
        .ok_or_else(|| SimSpecError::Count {
            part: quoted(part),
            count: quoted(count),
            max: MAX_SIM_GPUS,
        })?;
    let model = GpuModel::by_name(model_name).ok_or_else(|| SimSpecError::UnknownModel {
        part: quoted(part),
        model: quoted(model_name),
        known: MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", "),
    })?;
    let mig_enabled = match option {
        None => false,
        Some("mig") => true,
        Some(other) => {
            return Err(SimSpecError::Option {
                part: quoted(part),
                option: quoted(other),
            });
        }
    };
    Ok(SimGroup {
        count: count_value,
        model,
        mig_enabled,
    })
}

impl FromStr for SimSpec {
    type Err = SimSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SimSpec::parse(s)
    }
}

impl TryFrom<String> for SimSpec {
    type Error = SimSpecError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        SimSpec::parse(&s)
    }
}

impl From<SimSpec> for String {
    fn from(spec: SimSpec) -> String {
        spec.to_string()
    }
}

impl fmt::Display for SimSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, g) in self.groups.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}x{}", g.count, g.model.name)?;
            if g.mig_enabled {
                f.write_str(":mig")?;
            }
        }
        Ok(())
    }
}

/// A change to a simulated host that does not fit it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// No GPU has that index.
    #[error("no simulated gpu {index}: the host has {count}")]
    NoSuchGpu {
        /// The index asked for.
        index: u32,
        /// GPUs on the host.
        count: usize,
    },
    /// The MIG state does not fit a MIG-capable GPU.
    #[error("mig state {state:?} is not possible for simulated gpu {index} ({model})")]
    MigState {
        /// The GPU's index.
        index: u32,
        /// Its model.
        model: &'static str,
        /// The state asked for.
        state: MigState,
    },
}

/// A simulated host's GPUs.
#[derive(Debug, Clone)]
pub struct SimBackend {
    spec: SimSpec,
    seed: u64,
    gpus: Vec<GpuInfo>,
}

impl SimBackend {
    /// The GPUs `spec` describes, with UUIDs derived from `seed`.
    pub fn new(spec: &SimSpec, seed: u64) -> SimBackend {
        let total = spec.gpu_count();
        let node0 = total.div_ceil(2);
        let mut gpus = Vec::with_capacity(total);
        for group in spec.groups() {
            let mig = if group.mig_enabled {
                MigMode::Enabled
            } else {
                MigMode::Disabled
            };
            for _ in 0..group.count {
                let position = gpus.len();
                let index = u32::try_from(position).unwrap_or(u32::MAX);
                let (numa, bus) = if position < node0 {
                    (0, 0x18 + 3 * position)
                } else {
                    (1, 0x98 + 3 * (position - node0))
                };
                gpus.push(GpuInfo {
                    index,
                    uuid: sim_uuid(seed, index),
                    model: group.model.name.to_owned(),
                    nvml_name: group.model.nvml_name().to_owned(),
                    memory_mib: group.model.memory_mib(),
                    pci_bus_id: format!("0000:{bus:02x}:00.0"),
                    minor: index,
                    numa_node: Some(numa),
                    mig: MigState {
                        current: mig,
                        pending: mig,
                    },
                });
            }
        }
        SimBackend {
            spec: spec.clone(),
            seed,
            gpus,
        }
    }

    /// Parses `spec` and builds the host.
    pub fn from_spec(spec: &str, seed: u64) -> Result<SimBackend, SimSpecError> {
        Ok(SimBackend::new(&SimSpec::parse(spec)?, seed))
    }

    /// Sets the MIG state of GPU `index` (for example a pending change waiting for a reset).
    /// Every simulated model is MIG-capable, so neither half may be `Unsupported`.
    pub fn with_mig_state(mut self, index: u32, state: MigState) -> Result<SimBackend, SimError> {
        let count = self.gpus.len();
        let gpu = usize::try_from(index)
            .ok()
            .and_then(|i| self.gpus.get_mut(i))
            .ok_or(SimError::NoSuchGpu { index, count })?;
        if state.current == MigMode::Unsupported || state.pending == MigMode::Unsupported {
            let model = GpuModel::by_name(&gpu.model).map_or("unknown", |m| m.name);
            return Err(SimError::MigState {
                index,
                model,
                state,
            });
        }
        gpu.mig = state;
        Ok(self)
    }

    /// The spec the host was built from.
    pub fn spec(&self) -> &SimSpec {
        &self.spec
    }

    /// The seed the UUIDs were derived from.
    pub fn seed(&self) -> u64 {
        self.seed
    }
}

impl GpuBackend for SimBackend {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn gpus(&self) -> Result<Vec<GpuInfo>, BackendError> {
        Ok(self.gpus.clone())
    }
}

/// SplitMix64: a small, well-mixed generator; enough to make UUIDs look random and differ
/// between seeds.
pub(crate) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The UUID of simulated GPU `index` on the host seeded with `seed`, in NVML's form.
fn sim_uuid(seed: u64, index: u32) -> String {
    let mut state = seed;
    let mut state = splitmix64(&mut state).wrapping_add(u64::from(index));
    let hi = splitmix64(&mut state);
    let lo = splitmix64(&mut state);
    format!(
        "GPU-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests;
