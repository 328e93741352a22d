//! The MIG profile tables, one [`GpuModel`] per supported board family, transcribed from
//! `shared/reference/mig.md` (sections 1.1-1.3) and `mig-profiles.json`.
//!
//! Values are what NVML reports (`nvidia-smi mig -lgip`/`-lgipp`) on the drivers the reference
//! cites; where the reference marks a value inferred or unconfirmed, the entry says so. Unit tests
//! in `mig/tests.rs` check the tables' internal consistency (starts aligned and inside the GPU,
//! ids unique, names matching slices and `+me`).

use super::{CiProfile, Engines, GiProfile, GpuModel};

/// The vendor half of every NVML `pciDeviceId` here.
const NVIDIA: u32 = 0x10DE;

const fn pci(device: u32) -> u32 {
    (device << 16) | NVIDIA
}

/// Whether a profile name carries the `+me` (media extensions) suffix.
const fn is_me(name: &str) -> bool {
    let b = name.as_bytes();
    let n = b.len();
    n >= 3 && b[n - 3] == b'+' && b[n - 2] == b'm' && b[n - 1] == b'e'
}

/// Builds a [`GiProfile`]: `gi!(name, nvml index, profile id, slices, memory slots, instance
/// count, MiB, SMs, [CE, DEC, JPEG, OFA], starts, (full CI index, full CI SMs))`. No encoders on
/// any of these GPUs.
macro_rules! gi {
    (
        $name:literal, $idx:literal, $id:literal, $slices:literal, $slots:literal, $count:literal,
        $mib:literal, $sms:literal, [$ce:literal, $dec:literal, $jpeg:literal, $ofa:literal],
        $starts:expr, ($ci_idx:literal, $ci_sms:literal)
    ) => {
        GiProfile {
            name: $name,
            nvml_index: $idx,
            profile_id: $id,
            slices: $slices,
            memory_slots: $slots,
            instance_count: $count,
            memory_mib: $mib,
            sm_count: $sms,
            engines: Engines {
                copy: $ce,
                decoder: $dec,
                encoder: 0,
                jpeg: $jpeg,
                ofa: $ofa,
            },
            media_extensions: is_me($name),
            placement_starts: $starts,
            full_ci: CiProfile {
                nvml_index: $ci_idx,
                slices: $slices,
                sm_count: $ci_sms,
            },
        }
    };
}

// Placement starts of the 8-slot layout (A100/H100/H200) and the 4-slot layout (A30).
const EVERY_SLOT: &[u8] = &[0, 1, 2, 3, 4, 5, 6];
const EVEN_SLOTS: &[u8] = &[0, 2, 4, 6];
const TWO_SLICE: &[u8] = &[0, 2, 4];
const HALVES: &[u8] = &[0, 4];
const FIRST: &[u8] = &[0];
const A30_EVERY_SLOT: &[u8] = &[0, 1, 2, 3];
const A30_HALVES: &[u8] = &[0, 2];

// Profile tables, one profile per line like `nvidia-smi mig -lgip` (hence `rustfmt::skip`).
// Columns: name, NVML index, profile id, slices, memory slots, instances, MiB, SMs,
// [CE, DEC, JPEG, OFA], placement starts, (full-size CI index, its SMs).

#[rustfmt::skip]
const A100_40GB_PROFILES: &[GiProfile] = &[
    gi!("1g.5gb", 0x0, 19, 1, 1, 7, 4864, 14, [1, 0, 0, 0], EVERY_SLOT, (0, 14)),
    gi!("1g.5gb+me", 0x7, 20, 1, 1, 1, 4864, 14, [1, 1, 1, 1], EVERY_SLOT, (0, 14)),
    gi!("1g.10gb", 0x9, 15, 1, 2, 4, 9984, 14, [1, 1, 0, 0], EVEN_SLOTS, (0, 14)),
    gi!("2g.10gb", 0x1, 14, 2, 2, 3, 9984, 28, [2, 1, 0, 0], TWO_SLICE, (1, 28)),
    gi!("3g.20gb", 0x2, 9, 3, 4, 2, 20096, 42, [3, 2, 0, 0], HALVES, (2, 42)),
    gi!("4g.20gb", 0x3, 5, 4, 4, 1, 20096, 56, [4, 2, 0, 0], FIRST, (3, 56)),
    gi!("7g.40gb", 0x4, 0, 7, 8, 1, 40448, 98, [7, 5, 1, 1], FIRST, (4, 98)),
];

/// A100 40GB, SXM4 (0x20B0) and PCIe (0x20F1): same table. Placements confirmed by `-lgipp`.
pub static A100_40GB: GpuModel = GpuModel {
    name: "A100-40GB",
    nvml_names: &["NVIDIA A100-SXM4-40GB", "NVIDIA A100-PCIE-40GB"],
    pci_device_ids: &[pci(0x20B0), pci(0x20F1)],
    memory_totals_mib: &[40960, 40536],
    compute_slices: 7,
    memory_slots: 8,
    max_gpu_instances: 7,
    profiles: A100_40GB_PROFILES,
};

#[rustfmt::skip]
const A100_80GB_PROFILES: &[GiProfile] = &[
    gi!("1g.10gb", 0x0, 19, 1, 1, 7, 9728, 14, [1, 0, 0, 0], EVERY_SLOT, (0, 14)),
    gi!("1g.10gb+me", 0x7, 20, 1, 1, 1, 9728, 14, [1, 1, 1, 1], EVERY_SLOT, (0, 14)),
    gi!("1g.20gb", 0x9, 15, 1, 2, 4, 19968, 14, [1, 1, 0, 0], EVEN_SLOTS, (0, 14)),
    gi!("2g.20gb", 0x1, 14, 2, 2, 3, 19968, 28, [2, 1, 0, 0], TWO_SLICE, (1, 28)),
    gi!("3g.40gb", 0x2, 9, 3, 4, 2, 40192, 42, [3, 2, 0, 0], HALVES, (2, 42)),
    gi!("4g.40gb", 0x3, 5, 4, 4, 1, 40192, 56, [4, 2, 0, 0], FIRST, (3, 56)),
    gi!("7g.80gb", 0x4, 0, 7, 8, 1, 80896, 98, [7, 5, 1, 1], FIRST, (4, 98)),
];

/// A100 80GB, SXM4 (0x20B2) and PCIe (0x20B5). Placements partly confirmed (3g at 0 and 4), the
/// rest inferred from the 40GB board; `1g.20gb` memory inferred from `2g.20gb`.
pub static A100_80GB: GpuModel = GpuModel {
    name: "A100-80GB",
    nvml_names: &["NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe"],
    pci_device_ids: &[pci(0x20B2), pci(0x20B5)],
    memory_totals_mib: &[81920],
    compute_slices: 7,
    memory_slots: 8,
    max_gpu_instances: 7,
    profiles: A100_80GB_PROFILES,
};

#[rustfmt::skip]
const H100_80GB_PROFILES: &[GiProfile] = &[
    gi!("1g.10gb", 0x0, 19, 1, 1, 7, 9984, 16, [1, 1, 1, 0], EVERY_SLOT, (0, 16)),
    gi!("1g.10gb+me", 0x7, 20, 1, 1, 1, 9984, 16, [1, 1, 1, 1], EVERY_SLOT, (0, 16)),
    gi!("1g.20gb", 0x9, 15, 1, 2, 4, 20096, 26, [1, 1, 1, 0], EVEN_SLOTS, (7, 26)),
    gi!("2g.20gb", 0x1, 14, 2, 2, 3, 20096, 32, [2, 2, 2, 0], TWO_SLICE, (1, 32)),
    gi!("3g.40gb", 0x2, 9, 3, 4, 2, 40448, 60, [3, 3, 3, 0], HALVES, (2, 60)),
    gi!("4g.40gb", 0x3, 5, 4, 4, 1, 40448, 64, [4, 4, 4, 0], FIRST, (3, 64)),
    gi!("7g.80gb", 0x4, 0, 7, 8, 1, 81152, 132, [8, 7, 7, 1], FIRST, (4, 132)),
];

/// H100 80GB SXM5 (0x2330). The double-memory 1g GI gets all 26 SMs only through the
/// `1_SLICE_REV1` CI profile (index 7).
pub static H100_80GB: GpuModel = GpuModel {
    name: "H100-80GB",
    nvml_names: &["NVIDIA H100 80GB HBM3"],
    pci_device_ids: &[pci(0x2330)],
    memory_totals_mib: &[81559],
    compute_slices: 7,
    memory_slots: 8,
    max_gpu_instances: 7,
    profiles: H100_80GB_PROFILES,
};

#[rustfmt::skip]
const H100_NVL_PROFILES: &[GiProfile] = &[
    gi!("1g.12gb", 0x0, 19, 1, 1, 7, 11008, 16, [1, 1, 1, 0], EVERY_SLOT, (0, 16)),
    gi!("1g.12gb+me", 0x7, 20, 1, 1, 1, 11008, 16, [1, 1, 1, 1], EVERY_SLOT, (0, 16)),
    gi!("1g.24gb", 0x9, 15, 1, 2, 4, 22144, 26, [1, 1, 1, 0], EVEN_SLOTS, (7, 26)),
    gi!("2g.24gb", 0x1, 14, 2, 2, 3, 22144, 32, [2, 2, 2, 0], TWO_SLICE, (1, 32)),
    gi!("3g.47gb", 0x2, 9, 3, 4, 2, 47488, 60, [3, 3, 3, 0], HALVES, (2, 60)),
    gi!("4g.47gb", 0x3, 5, 4, 4, 1, 47488, 64, [4, 4, 4, 0], FIRST, (3, 64)),
    gi!("7g.94gb", 0x4, 0, 7, 8, 1, 95360, 132, [8, 7, 7, 1], FIRST, (4, 132)),
];

/// H100 NVL 94GB (0x2321), driver 560.35.03 values (older drivers report a little less memory).
pub static H100_NVL: GpuModel = GpuModel {
    name: "H100-NVL",
    nvml_names: &["NVIDIA H100 NVL"],
    pci_device_ids: &[pci(0x2321)],
    memory_totals_mib: &[95830],
    compute_slices: 7,
    memory_slots: 8,
    max_gpu_instances: 7,
    profiles: H100_NVL_PROFILES,
};

#[rustfmt::skip]
const H200_141GB_PROFILES: &[GiProfile] = &[
    gi!("1g.18gb", 0x0, 19, 1, 1, 7, 16384, 16, [1, 1, 1, 0], EVERY_SLOT, (0, 16)),
    gi!("1g.18gb+me", 0x7, 20, 1, 1, 1, 16384, 16, [1, 1, 1, 1], EVERY_SLOT, (0, 16)),
    gi!("1g.35gb", 0x9, 15, 1, 2, 4, 33024, 26, [1, 1, 1, 0], EVEN_SLOTS, (7, 26)),
    gi!("2g.35gb", 0x1, 14, 2, 2, 3, 33024, 32, [2, 2, 2, 0], TWO_SLICE, (1, 32)),
    gi!("3g.71gb", 0x2, 9, 3, 4, 2, 71168, 60, [3, 3, 3, 0], HALVES, (2, 60)),
    gi!("4g.71gb", 0x3, 5, 4, 4, 1, 71168, 64, [4, 4, 4, 0], FIRST, (3, 64)),
    gi!("7g.141gb", 0x4, 0, 7, 8, 1, 143104, 132, [8, 7, 7, 1], FIRST, (4, 132)),
];

/// H200 141GB, SXM (0x2335) and NVL (0x233B; its values are assumed equal to SXM). Placements
/// inferred from H100 (same memory fractions, same profile ids).
pub static H200_141GB: GpuModel = GpuModel {
    name: "H200-141GB",
    nvml_names: &["NVIDIA H200", "NVIDIA H200 NVL"],
    pci_device_ids: &[pci(0x2335), pci(0x233B)],
    memory_totals_mib: &[143771],
    compute_slices: 7,
    memory_slots: 8,
    max_gpu_instances: 7,
    profiles: H200_141GB_PROFILES,
};

#[rustfmt::skip]
const A30_24GB_PROFILES: &[GiProfile] = &[
    gi!("1g.6gb", 0x0, 14, 1, 1, 4, 5952, 14, [1, 1, 0, 0], A30_EVERY_SLOT, (0, 14)),
    gi!("1g.6gb+me", 0x7, 21, 1, 1, 1, 5952, 14, [1, 1, 1, 1], A30_EVERY_SLOT, (0, 14)),
    gi!("2g.12gb", 0x1, 5, 2, 2, 2, 11968, 28, [2, 2, 0, 0], A30_HALVES, (1, 28)),
    gi!("2g.12gb+me", 0x8, 6, 2, 2, 1, 11968, 28, [2, 2, 1, 1], A30_HALVES, (1, 28)),
    gi!("4g.24gb", 0x3, 0, 4, 4, 1, 24000, 56, [4, 4, 1, 1], FIRST, (3, 56)),
];

/// A30 24GB (0x20B7): the 4-slot layout, at most 4 GIs. Hardware values (driver 535.183.01);
/// the NVML index of `2g.12gb+me` (`2_SLICE_REV1`) is inferred from naming rules.
pub static A30_24GB: GpuModel = GpuModel {
    name: "A30-24GB",
    nvml_names: &["NVIDIA A30"],
    pci_device_ids: &[pci(0x20B7)],
    memory_totals_mib: &[24576],
    compute_slices: 4,
    memory_slots: 4,
    max_gpu_instances: 4,
    profiles: A30_24GB_PROFILES,
};

/// Every model the MIG model knows.
pub static MODELS: &[&GpuModel] = &[
    &A100_40GB,
    &A100_80GB,
    &H100_80GB,
    &H100_NVL,
    &H200_141GB,
    &A30_24GB,
];
