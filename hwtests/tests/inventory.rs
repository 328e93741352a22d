//! Read-only checks of the NVML backend on a real GPU host (`GPUAAS_HWTESTS=1`): the
//! conformance suite of `gpuaas-isolation`, and each GPU's device node. Never changes MIG mode
//! and never creates or destroys instances.

use std::path::Path;

use gpuaas_hwtests::{char_device, nvml_backend};
use gpuaas_isolation::GpuBackend;
use gpuaas_isolation::conformance::backend_suite;

/// Major number of the NVIDIA character devices (`/dev/nvidiaN`, `/dev/nvidiactl`).
const NVIDIA_MAJOR: u32 = 195;
/// Minor of `/dev/nvidiactl`.
const NVIDIACTL_MINOR: u32 = 255;

#[test]
fn nvml_backend_passes_the_conformance_suite() {
    let Ok(backend) = nvml_backend() else { return };
    backend_suite(&backend).unwrap_or_else(|e| panic!("{e}"));
    let gpus = backend.gpus().expect("listed once already");
    assert!(!gpus.is_empty(), "GPUAAS_HWTESTS=1 but NVML reports no GPU");
    for gpu in &gpus {
        println!(
            "gpu {}: {} ({}), {} MiB, {}, minor {}, numa {:?}, mig {:?}",
            gpu.index,
            gpu.model,
            gpu.nvml_name,
            gpu.memory_mib,
            gpu.pci_bus_id,
            gpu.minor,
            gpu.numa_node,
            gpu.mig
        );
    }
}

#[test]
fn device_nodes_match_the_minors() {
    let Ok(backend) = nvml_backend() else { return };
    let dev = Path::new("/dev");
    let ctl = dev.join("nvidiactl");
    let numbers = char_device(&ctl).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        numbers,
        (NVIDIA_MAJOR, NVIDIACTL_MINOR),
        "{}",
        ctl.display()
    );
    for gpu in backend.gpus().unwrap_or_else(|e| panic!("{e}")) {
        let node = dev.join(format!("nvidia{}", gpu.minor));
        let numbers = char_device(&node).unwrap_or_else(|e| panic!("gpu {}: {e}", gpu.index));
        assert_eq!(
            numbers,
            (NVIDIA_MAJOR, gpu.minor),
            "gpu {} ({}): {} has the wrong numbers",
            gpu.index,
            gpu.uuid,
            node.display()
        );
    }
}

#[test]
fn pci_devices_exist_in_sysfs() {
    let Ok(backend) = nvml_backend() else { return };
    for gpu in backend.gpus().unwrap_or_else(|e| panic!("{e}")) {
        let path = Path::new("/sys/bus/pci/devices").join(&gpu.pci_bus_id);
        assert!(
            path.exists(),
            "gpu {} ({}): {} does not exist",
            gpu.index,
            gpu.uuid,
            path.display()
        );
    }
}
