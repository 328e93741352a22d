//! The conformance suite against the simulated backend, over several specs and seeds, and a
//! check that the suite catches a backend that breaks the rules.

use gpuaas_isolation::conformance::{ConformanceError, backend_suite};
use gpuaas_isolation::{BackendError, GpuBackend, SimBackend};
use gpuaas_proto::inventory::{GpuInfo, MigMode, MigState};
use gpuaas_proto::mig::MODELS;

fn sim(spec: &str, seed: u64) -> SimBackend {
    SimBackend::from_spec(spec, seed).unwrap_or_else(|e| panic!("{spec}: {e}"))
}

#[test]
fn sim_passes_for_every_spec() {
    let specs = [
        "1xA100-40GB",
        "8xH100-80GB",
        "2xA100-80GB,4xA30-24GB",
        "4xH100-NVL:mig,4xH200-141GB",
        "64xH200-141GB",
        "3xA30-24GB:mig",
    ];
    for (seed, spec) in specs.iter().enumerate() {
        let backend = sim(spec, seed as u64);
        backend_suite(&backend).unwrap_or_else(|e| panic!("{spec}: {e}"));
    }
}

#[test]
fn sim_passes_for_every_model_and_seed() {
    for model in MODELS {
        for seed in [0, 1, u64::MAX] {
            let backend = sim(&format!("2x{}", model.name), seed);
            backend_suite(&backend).unwrap_or_else(|e| panic!("{} seed {seed}: {e}", model.name));
        }
    }
}

#[test]
fn sim_with_pending_mig_change_passes() {
    let pending = MigState {
        current: MigMode::Enabled,
        pending: MigMode::Disabled,
    };
    let backend = sim("2xH100-80GB", 9)
        .with_mig_state(0, pending)
        .expect("gpu 0 exists");
    backend_suite(&backend).unwrap_or_else(|e| panic!("{e}"));
}

/// A backend that reports what a broken implementation might: the sim's GPUs, edited.
struct Edited {
    gpus: Vec<GpuInfo>,
}

impl GpuBackend for Edited {
    fn name(&self) -> &'static str {
        "edited"
    }

    fn gpus(&self) -> Result<Vec<GpuInfo>, BackendError> {
        Ok(self.gpus.clone())
    }
}

#[test]
fn suite_catches_broken_backends() {
    let mut gpus = sim("3xH100-80GB", 1).gpus().expect("sim never fails");
    gpus[1].uuid = gpus[0].uuid.clone();
    gpus[2].minor = 0;
    gpus[0].pci_bus_id = "00000000:18:00.0".into();
    gpus[1].mig = MigState::UNSUPPORTED;
    gpus[2].model = "H100".into();
    let err = backend_suite(&Edited { gpus }).expect_err("broken");
    let ConformanceError::Violations { violations, .. } = &err else {
        panic!("unexpected {err}");
    };
    let text = err.to_string();
    for want in [
        "uuid GPU-",
        "repeated",
        "minor 0 repeated",
        "pci bus id \"00000000:18:00.0\" is not dddd:bb:dd.f",
        "H100-80GB is MIG-capable but reports",
        "nvml name \"NVIDIA H100 80GB HBM3\" is model H100-80GB, reported as \"H100\"",
        "model \"H100\" is neither a known model nor the nvml name",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(violations.len() >= 6, "{text}");
    assert!(text.starts_with("backend edited broke "), "{text}");

    let mut gpus = sim("1xA30-24GB", 1).gpus().expect("sim never fails");
    gpus[0].memory_mib = 24000;
    gpus[0].index = 3;
    let text = backend_suite(&Edited { gpus })
        .expect_err("broken")
        .to_string();
    assert!(
        text.contains("A30-24GB with 24000 MiB, the table has [24576]"),
        "{text}"
    );
    assert!(text.contains("index 3 at position 0"), "{text}");
}

#[test]
fn unknown_models_keep_their_nvml_name() {
    let mut gpus = sim("1xH100-80GB", 1).gpus().expect("sim never fails");
    gpus[0].nvml_name = "NVIDIA H100 PCIe".into();
    gpus[0].model = "NVIDIA H100 PCIe".into();
    gpus[0].memory_mib = 81559;
    backend_suite(&Edited { gpus }).unwrap_or_else(|e| panic!("{e}"));
}
