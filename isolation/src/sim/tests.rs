use super::*;

#[test]
fn specs_parse_and_print() {
    let spec = SimSpec::parse("8xH100-80GB").expect("valid");
    assert_eq!(spec.gpu_count(), 8);
    assert_eq!(spec.groups()[0].model.name, "H100-80GB");
    assert!(!spec.groups()[0].mig_enabled);

    let spec = SimSpec::parse(" 2xA100-80GB , 4xA30-24GB:mig").expect("valid");
    assert_eq!(spec.gpu_count(), 6);
    assert_eq!(spec.to_string(), "2xA100-80GB,4xA30-24GB:mig");
    assert_eq!(spec.to_string().parse::<SimSpec>(), Ok(spec));

    assert_eq!(
        SimSpec::parse("64xH200-141GB").map(|s| s.gpu_count()),
        Ok(64)
    );

    // the spelling of the issue and of people: spaces around the x
    let spaced = SimSpec::parse("8 x H100-80GB").expect("valid");
    assert_eq!(spaced.to_string(), "8xH100-80GB");
}

#[test]
fn bad_specs_name_the_bad_part() {
    let cases: &[(&str, &str)] = &[
        ("", "empty gpu spec"),
        ("  ", "empty gpu spec"),
        ("H100-80GB", "bad part \"H100-80GB\" of gpu spec"),
        ("8xH100-80GB,", "bad part \"\" of gpu spec"),
        ("x", "bad part \"x\" of gpu spec"),
        ("8x", "bad part \"8x\" of gpu spec"),
        ("0xH100-80GB", "bad count \"0\" in part \"0xH100-80GB\""),
        ("-1xH100-80GB", "bad count \"-1\" in part \"-1xH100-80GB\""),
        (
            "65xH100-80GB",
            "bad count \"65\" in part \"65xH100-80GB\" of gpu spec: expected 1 to 64",
        ),
        (
            "99999999999999999999999xA30-24GB",
            "bad count \"99999999999999999999999\"",
        ),
        (
            "2xA100-80GB,4xB200",
            "unknown gpu model \"B200\" in part \"4xB200\"",
        ),
        ("1xh100-80gb", "unknown gpu model \"h100-80gb\""),
        (
            "2xA30-24GB:mog",
            "unknown option \"mog\" in part \"2xA30-24GB:mog\"",
        ),
        ("2xA30-24GB:", "unknown option \"\""),
        (
            "40xH100-80GB,30xA30-24GB",
            "gpu spec \"40xH100-80GB,30xA30-24GB\" describes 70 gpus, at most 64 are allowed",
        ),
    ];
    for (spec, want) in cases {
        let err = SimSpec::parse(spec).expect_err(spec);
        assert!(err.to_string().starts_with(want), "{spec:?}: {err}");
    }
    let err = SimSpec::parse("1xB200").expect_err("unknown");
    assert!(err.to_string().contains("H100-80GB, H100-NVL"), "{err}");
}

#[test]
fn uuids_are_deterministic_per_seed() {
    let a = SimBackend::from_spec("8xH100-80GB", 7).expect("valid");
    let b = SimBackend::from_spec("8xH100-80GB", 7).expect("valid");
    let c = SimBackend::from_spec("8xH100-80GB", 8).expect("valid");
    let uuids = |s: &SimBackend| -> Vec<String> {
        s.gpus()
            .expect("sim never fails")
            .into_iter()
            .map(|g| g.uuid)
            .collect()
    };
    assert_eq!(uuids(&a), uuids(&b));
    let (ua, uc) = (uuids(&a), uuids(&c));
    assert!(
        ua.iter().all(|u| !uc.contains(u)),
        "seeds 7 and 8 share a uuid"
    );
    let mut unique = ua.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 8);
    assert_eq!(ua[0].len(), 40);
    assert!(ua[0].starts_with("GPU-"));
    // Pinned, so that a change to the derivation (which re-keys every dev fleet) is seen.
    assert_eq!(sim_uuid(0, 0), "GPU-a706dd2f-4d19-7e6f-b382-a305f4414f5e");
    assert_eq!(sim_uuid(42, 3), "GPU-6a18965c-8a3c-ca10-edb2-d47959972f7c");
    assert_ne!(sim_uuid(0, 0), sim_uuid(0, 1));
    assert_ne!(sim_uuid(0, 1), sim_uuid(1, 0));
}

#[test]
fn gpus_follow_the_mig_model() {
    let sim = SimBackend::from_spec("2xA100-80GB,3xA30-24GB:mig", 1).expect("valid");
    let gpus = sim.gpus().expect("sim never fails");
    assert_eq!(gpus.len(), 5);
    assert_eq!(gpus[0].model, "A100-80GB");
    assert_eq!(gpus[0].nvml_name, "NVIDIA A100-SXM4-80GB");
    assert_eq!(gpus[0].memory_mib, 81920);
    assert_eq!(
        gpus[0].mig,
        MigState {
            current: MigMode::Disabled,
            pending: MigMode::Disabled
        }
    );
    assert_eq!(gpus[4].model, "A30-24GB");
    assert_eq!(gpus[4].memory_mib, 24576);
    assert_eq!(gpus[4].mig.current, MigMode::Enabled);
    let minors: Vec<u32> = gpus.iter().map(|g| g.minor).collect();
    assert_eq!(minors, [0, 1, 2, 3, 4]);
    let numa: Vec<Option<u32>> = gpus.iter().map(|g| g.numa_node).collect();
    assert_eq!(numa, [Some(0), Some(0), Some(0), Some(1), Some(1)]);
    assert_eq!(gpus[0].pci_bus_id, "0000:18:00.0");
    assert_eq!(gpus[3].pci_bus_id, "0000:98:00.0");
    assert_eq!(sim.spec().to_string(), "2xA100-80GB,3xA30-24GB:mig");
    assert_eq!(sim.seed(), 1);
}

#[test]
fn mig_state_is_configurable_per_gpu() {
    let pending = MigState {
        current: MigMode::Disabled,
        pending: MigMode::Enabled,
    };
    let sim = SimBackend::from_spec("2xH100-80GB", 0)
        .expect("valid")
        .with_mig_state(1, pending)
        .expect("gpu 1 exists");
    let gpus = sim.gpus().expect("sim never fails");
    assert_eq!(gpus[0].mig.pending, MigMode::Disabled);
    assert_eq!(gpus[1].mig, pending);

    let err = sim
        .clone()
        .with_mig_state(2, pending)
        .expect_err("no gpu 2");
    assert_eq!(err.to_string(), "no simulated gpu 2: the host has 2");
    let err = sim
        .with_mig_state(0, MigState::UNSUPPORTED)
        .expect_err("capable model");
    assert!(
        matches!(
            err,
            SimError::MigState {
                index: 0,
                model: "H100-80GB",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn spec_reads_from_config_strings() {
    use serde::de::value::{Error, StrDeserializer};
    let spec = SimSpec::deserialize(StrDeserializer::<Error>::new("4xH100-NVL")).expect("valid");
    assert_eq!(spec.gpu_count(), 4);
    let err = SimSpec::deserialize(StrDeserializer::<Error>::new("4xH100")).expect_err("bad");
    assert!(
        err.to_string().contains("unknown gpu model \"H100\""),
        "{err}"
    );
}
