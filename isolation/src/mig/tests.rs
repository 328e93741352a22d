use gpuaas_proto::inventory::{MigMode, MigState};
use gpuaas_proto::mig::{MigPlacementError, Placement};

use super::*;
use crate::backend::GpuBackend;
use crate::sim::SimBackend;

fn sim(spec: &str) -> SimMig {
    SimMig::new(SimBackend::from_spec(spec, 42).expect("valid spec"))
}

fn at(start: u8, size: u8) -> Option<Placement> {
    Some(Placement { start, size })
}

#[test]
fn mig_disabled_is_refused() {
    let mig = sim("1xH100-80GB");
    let err = mig.create(0, "1g.10gb", None).expect_err("mig off");
    assert!(
        matches!(err, MigManagerError::NotMigEnabled { gpu: 0, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with("gpu 0 is not in mig mode"),
        "{err}"
    );
    assert!(matches!(
        mig.list(0),
        Err(MigManagerError::NotMigEnabled { .. })
    ));
    assert!(matches!(
        mig.destroy(0, 1),
        Err(MigManagerError::NotMigEnabled { .. })
    ));
    assert_eq!(mig.mig_mode(0).expect("mode").current, MigMode::Disabled);
    // Profiles are the table's whatever the mode.
    assert_eq!(mig.profiles(0).expect("profiles").len(), 7);
}

#[test]
fn pending_enable_is_not_enabled() {
    let backend = SimBackend::from_spec("1xA100-40GB", 1)
        .expect("valid")
        .with_mig_state(
            0,
            MigState {
                current: MigMode::Disabled,
                pending: MigMode::Enabled,
            },
        )
        .expect("capable");
    let mig = SimMig::new(backend);
    assert!(matches!(
        mig.create(0, "1g.5gb", None),
        Err(MigManagerError::NotMigEnabled { .. })
    ));
}

#[test]
fn unknown_profile_for_the_model() {
    let mig = sim("1xA30-24GB:mig");
    let err = mig
        .create(0, "3g.40gb", None)
        .expect_err("not an A30 profile");
    let MigManagerError::UnknownProfile { model, profile, .. } = &err else {
        panic!("{err:?}");
    };
    assert_eq!((*model, profile.as_str()), ("A30-24GB", "3g.40gb"));
    assert!(err.to_string().contains("1g.6gb"), "{err}");
    assert!(mig.list(0).expect("list").is_empty());
}

#[test]
fn unknown_gpu() {
    let mig = sim("2xA30-24GB:mig");
    let err = mig.list(2).expect_err("two gpus");
    assert_eq!(err.to_string(), "no gpu 2: the host has 2");
}

#[test]
fn seven_1g_then_an_eighth_is_refused() {
    let mig = sim("1xH100-80GB:mig");
    for _ in 0..7 {
        mig.create(0, "1g.10gb", None).expect("fits");
    }
    let before = mig.list(0).expect("list");
    assert_eq!(before.len(), 7);
    let ids: Vec<u32> = before.iter().map(|m| m.gi_id).collect();
    assert_eq!(ids, (1..=7).collect::<Vec<_>>());
    let err = mig.create(0, "1g.10gb", None).expect_err("eighth");
    assert!(
        matches!(
            err,
            MigManagerError::Placement {
                gpu: 0,
                source: MigPlacementError::ProfileLimit { limit: 7, .. }
            }
        ),
        "{err:?}"
    );
    // Slot 7 is free, but only a profile covering it could use it.
    let err = mig.create(0, "1g.10gb", at(7, 1)).expect_err("not offered");
    assert!(matches!(
        err,
        MigManagerError::Placement {
            source: MigPlacementError::NotOffered { start: 7, .. },
            ..
        }
    ));
    assert_eq!(mig.list(0).expect("list"), before);
}

#[test]
fn three_g_at_four_leaves_four_1g() {
    let mig = sim("1xH100-80GB:mig");
    let big = mig.create(0, "3g.40gb", at(4, 4)).expect("fits");
    assert_eq!(big.placement, Placement { start: 4, size: 4 });
    let starts: Vec<u8> = (0..4)
        .map(|_| {
            mig.create(0, "1g.10gb", None)
                .expect("fits")
                .placement
                .start
        })
        .collect();
    let mut sorted = starts.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, vec![0, 1, 2, 3]);
    let err = mig.create(0, "1g.10gb", None).expect_err("full");
    assert!(matches!(err, MigManagerError::Placement { .. }), "{err:?}");
    assert_eq!(mig.list(0).expect("list").len(), 5);
}

#[test]
fn overlap_and_wrong_size_create_nothing() {
    let mig = sim("1xA100-40GB:mig");
    mig.create(0, "2g.10gb", at(2, 2)).expect("fits");
    let err = mig.create(0, "1g.5gb", at(3, 1)).expect_err("overlap");
    assert!(
        err.to_string()
            .starts_with("gpu 0: mig profile 1g.5gb at 3:1 overlaps the 2g.10gb instance at 2:2"),
        "{err}"
    );
    let err = mig.create(0, "3g.20gb", at(0, 2)).expect_err("size");
    assert!(
        matches!(err, MigManagerError::PlacementSize { size: 4, .. }),
        "{err:?}"
    );
    assert_eq!(mig.list(0).expect("list").len(), 1);
}

#[test]
fn destroy_unknown_gi_and_siblings() {
    let mig = sim("1xA30-24GB:mig");
    let err = mig.destroy(0, 3).expect_err("nothing there");
    assert_eq!(err.to_string(), "gpu 0 has no gpu instance 3");
    let a = mig.create(0, "1g.6gb", None).expect("fits");
    let b = mig.create(0, "2g.12gb", None).expect("fits");
    let c = mig.create(0, "1g.6gb", None).expect("fits");
    assert_eq!((a.gi_id, b.gi_id, c.gi_id), (1, 2, 3));
    mig.destroy(0, b.gi_id).expect("destroy");
    assert_eq!(mig.list(0).expect("list"), vec![a.clone(), c.clone()]);
    // The smallest free id is reused, with a new uuid.
    let d = mig.create(0, "2g.12gb", None).expect("fits again");
    assert_eq!(d.gi_id, 2);
    assert_ne!(d.mig_uuid, b.mig_uuid);
    assert!(matches!(
        mig.destroy(0, 9),
        Err(MigManagerError::NoSuchInstance { gpu: 0, gi: 9 })
    ));
}

#[test]
fn instances_carry_the_gpu_and_table_facts() {
    let mig = sim("2xH100-80GB:mig");
    let m = mig.create(1, "3g.40gb", None).expect("fits");
    let gpu = mig.backend().gpus().expect("gpus").remove(1);
    assert_eq!(m.gpu_index, 1);
    assert_eq!(m.gpu_uuid, gpu.uuid);
    assert_eq!((m.gi_id, m.ci_id), (1, 0));
    assert_eq!(m.placement, Placement { start: 4, size: 4 });
    assert_eq!(m.profile, "3g.40gb");
    assert_eq!(m.memory_mib, 40448);
    assert!(
        m.mig_uuid.starts_with("MIG-") && m.mig_uuid.len() == 40,
        "{}",
        m.mig_uuid
    );
    assert!(mig.list(0).expect("other gpu").is_empty());
    // Deterministic per seed.
    let again = sim("2xH100-80GB:mig");
    assert_eq!(again.create(1, "3g.40gb", None).expect("fits"), m);
}

#[test]
fn plan_create_is_the_shared_rule() {
    let model = gpuaas_proto::mig::GpuModel::by_name("A30-24GB").expect("model");
    let (profile, placement) = plan_create(model, 0, &[], "4g.24gb", None).expect("empty gpu");
    assert_eq!((profile.name, placement.start), ("4g.24gb", 0));
    let full = [gpuaas_proto::mig::PlacedGi { profile, placement }];
    let err = plan_create(model, 0, &full, "1g.6gb", None).expect_err("full");
    assert!(matches!(
        err,
        MigManagerError::Placement {
            source: MigPlacementError::Overlaps { .. },
            ..
        }
    ));
}

#[test]
fn managers_cross_threads() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<Box<dyn MigManager>>();
    shareable::<MigManagerError>();
}
