use proptest::prelude::*;

use super::tables::{A30_24GB, A100_40GB, H100_80GB, H200_141GB};
use super::*;

fn profile(model: &GpuModel, name: &str) -> &'static GiProfile {
    model
        .profile(name)
        .unwrap_or_else(|| panic!("{} has no profile {name}", model.name))
}

/// Places `names` one after another with `best_placement`, panicking if one does not fit.
fn fill(model: &GpuModel, names: &[&str]) -> Vec<PlacedGi> {
    let mut layout = Vec::new();
    for name in names {
        let p = profile(model, name);
        let placement = best_placement(model, &layout, p)
            .unwrap_or_else(|| panic!("{name} does not fit on {layout:?}"));
        layout.push(PlacedGi {
            profile: p,
            placement,
        });
    }
    layout
}

fn at(model: &GpuModel, name: &str, start: u8) -> PlacedGi {
    let p = profile(model, name);
    PlacedGi {
        profile: p,
        placement: Placement {
            start,
            size: p.memory_slots,
        },
    }
}

fn free_starts(model: &GpuModel, layout: &[PlacedGi], name: &str) -> Vec<u8> {
    let p = profile(model, name);
    valid_placements(p)
        .filter(|pl| can_place(model, layout, p, pl.start).is_ok())
        .map(|pl| pl.start)
        .collect()
}

#[test]
fn tables_are_consistent() {
    let mut names = std::collections::HashSet::new();
    for model in MODELS {
        assert!(names.insert(model.name), "duplicate model {}", model.name);
        assert!(!model.nvml_names.is_empty() && !model.pci_device_ids.is_empty());
        assert!(!model.memory_totals_mib.is_empty());
        let full = model.full_profile().expect("a whole-gpu profile");
        assert_eq!(full.placement_starts, &[0]);
        assert!(full.memory_mib <= model.memory_mib(), "{}", model.name);
        let mut ids = std::collections::HashSet::new();
        for p in model.profiles {
            assert!(
                ids.insert(p.profile_id),
                "{}: duplicate id {}",
                model.name,
                p.profile_id
            );
            assert!(p.name.starts_with(&format!("{}g.", p.slices)), "{}", p.name);
            assert_eq!(p.media_extensions, p.name.ends_with("+me"), "{}", p.name);
            assert!(p.slices <= model.compute_slices && p.memory_slots <= model.memory_slots);
            assert!(p.instance_count >= 1 && p.instance_count <= model.max_gpu_instances);
            assert_eq!(p.full_ci.slices, p.slices);
            assert!(p.full_ci.sm_count <= p.sm_count);
            assert!(p.memory_mib <= full.memory_mib);
            assert_eq!(model.profile(p.name), Some(p));
            assert_eq!(model.profile_by_id(p.profile_id), Some(p));
            for pl in valid_placements(p) {
                assert_eq!(pl.start % p.memory_slots, 0, "{} at {pl} unaligned", p.name);
                assert!(
                    pl.end() <= u16::from(model.memory_slots),
                    "{} at {pl}",
                    p.name
                );
            }
        }
    }
}

#[test]
fn models_are_found_by_name_nvml_name_and_pci_id() {
    assert_eq!(GpuModel::by_name("H100-80GB"), Some(&H100_80GB));
    assert_eq!(GpuModel::by_name("h100-80gb"), None);
    assert_eq!(
        GpuModel::from_nvml_name("NVIDIA H100 80GB HBM3"),
        Some(&H100_80GB)
    );
    assert_eq!(GpuModel::from_nvml_name("A100-SXM4-40GB"), Some(&A100_40GB));
    assert_eq!(
        GpuModel::from_nvml_name("  nvidia a100-pcie-40gb "),
        Some(&A100_40GB)
    );
    assert_eq!(
        GpuModel::from_nvml_name("NVIDIA H200 NVL"),
        Some(&H200_141GB)
    );
    assert_eq!(GpuModel::from_nvml_name("NVIDIA H100 PCIe"), None);
    assert_eq!(GpuModel::from_nvml_name("NVIDIA"), None);
    assert_eq!(GpuModel::from_pci_device_id(0x2330_10DE), Some(&H100_80GB));
    assert_eq!(GpuModel::from_pci_device_id(0x20B7_10DE), Some(&A30_24GB));
    assert_eq!(GpuModel::from_pci_device_id(0x2331_10DE), None);
    assert_eq!(H100_80GB.memory_mib(), 81559);
    assert_eq!(H100_80GB.nvml_name(), "NVIDIA H100 80GB HBM3");
}

#[test]
fn mig_classes_parse_and_print() {
    let class = MigClass::parse("H100-80GB/3g.40gb").expect("valid class");
    assert_eq!(class.model, &H100_80GB);
    assert_eq!(class.profile.profile_id, 9);
    for model in MODELS {
        for p in model.profiles {
            let text = format!("{}/{}", model.name, p.name);
            let parsed: MigClass = text.parse().expect("every table entry parses");
            assert_eq!(parsed.to_string(), text);
        }
    }
}

#[test]
fn bad_mig_classes_name_the_bad_part() {
    let err = MigClass::parse("H100-80GB").unwrap_err();
    assert!(matches!(err, MigError::BadClass { .. }));
    assert!(err.to_string().contains("\"H100-80GB\""), "{err}");
    for bad in ["/3g.40gb", "H100-80GB/", "H100-80GB/3g.40gb/x", ""] {
        assert!(
            matches!(MigClass::parse(bad), Err(MigError::BadClass { .. })),
            "{bad}"
        );
    }
    let err = MigClass::parse("B200/1g.23gb").unwrap_err();
    assert!(matches!(&err, MigError::UnknownModel { model, .. } if model == "B200"));
    assert!(
        err.to_string().starts_with("unknown gpu model \"B200\""),
        "{err}"
    );
    let err = MigClass::parse("A30-24GB/3g.40gb").unwrap_err();
    assert!(
        err.to_string().contains("no mig profile \"3g.40gb\""),
        "{err}"
    );
    assert!(err.to_string().contains("2g.12gb+me"), "{err}");
    let long = format!("{}/x", "A".repeat(500));
    match MigClass::parse(&long) {
        Err(MigError::UnknownModel { model, .. }) => assert_eq!(model.len(), 64),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn seven_single_slices_leave_slot_seven_idle() {
    let layout = fill(&H100_80GB, &["1g.10gb"; 7]);
    let mut starts: Vec<u8> = layout.iter().map(|gi| gi.placement.start).collect();
    starts.sort_unstable();
    assert_eq!(starts, [0, 1, 2, 3, 4, 5, 6]);
    assert_eq!(
        best_placement(&H100_80GB, &layout, profile(&H100_80GB, "1g.10gb")),
        None
    );
    assert!(layout.iter().all(|gi| gi.placement.end() <= 7));
}

#[test]
fn single_slices_fill_from_the_top() {
    let layout = fill(&H100_80GB, &["1g.10gb"]);
    assert_eq!(layout[0].placement, Placement { start: 6, size: 1 });
    // A 4g and a 3g at 0 are still possible.
    assert_eq!(free_starts(&H100_80GB, &layout, "4g.40gb"), [0]);
    assert_eq!(free_starts(&H100_80GB, &layout, "3g.40gb"), [0]);
}

#[test]
fn three_slice_at_four_leaves_four_single_starts() {
    let high = [at(&H100_80GB, "3g.40gb", 4)];
    assert_eq!(free_starts(&H100_80GB, &high, "1g.10gb"), [0, 1, 2, 3]);
    let low = [at(&H100_80GB, "3g.40gb", 0)];
    assert_eq!(free_starts(&H100_80GB, &low, "1g.10gb"), [4, 5, 6]);
    let one_g = profile(&H100_80GB, "1g.10gb");
    assert_eq!(remaining_capacity(&H100_80GB, &high, one_g), 4);
    assert_eq!(remaining_capacity(&H100_80GB, &low, one_g), 3);
    // The chooser prefers slot 4: it keeps the 4g possible.
    assert_eq!(fill(&H100_80GB, &["3g.40gb"])[0].placement.start, 4);
}

#[test]
fn four_slice_and_three_slice_share_a_gpu() {
    let layout = fill(&A100_40GB, &["4g.20gb", "3g.20gb"]);
    assert_eq!(layout[0].placement, Placement { start: 0, size: 4 });
    assert_eq!(layout[1].placement, Placement { start: 4, size: 4 });
    let layout = fill(&A100_40GB, &["3g.20gb", "4g.20gb"]);
    assert_eq!(layout[0].placement.start, 4);
    assert_eq!(layout[1].placement.start, 0);
    let full = profile(&A100_40GB, "7g.40gb");
    assert_eq!(best_placement(&A100_40GB, &layout, full), None);
}

#[test]
fn a30_has_four_slots() {
    let four_g = profile(&A30_24GB, "4g.24gb");
    assert_eq!(
        valid_placements(four_g).collect::<Vec<_>>(),
        [Placement { start: 0, size: 4 }]
    );
    assert_eq!(free_starts(&A30_24GB, &[], "1g.6gb"), [0, 1, 2, 3]);
    assert_eq!(free_starts(&A30_24GB, &[], "2g.12gb"), [0, 2]);
    let layout = fill(&A30_24GB, &["2g.12gb", "1g.6gb", "1g.6gb"]);
    assert!(free_starts(&A30_24GB, &layout, "1g.6gb").is_empty());
    let layout = fill(&A30_24GB, &["1g.6gb"; 4]);
    let err = can_place(&A30_24GB, &layout, profile(&A30_24GB, "1g.6gb+me"), 0).unwrap_err();
    assert!(
        matches!(err, MigPlacementError::GpuLimit { max: 4, .. }),
        "{err}"
    );
}

#[test]
fn only_one_media_extension_instance() {
    let layout = [at(&A30_24GB, "1g.6gb+me", 0)];
    let err = can_place(&A30_24GB, &layout, profile(&A30_24GB, "2g.12gb+me"), 2).unwrap_err();
    assert_eq!(
        err.to_string(),
        "mig profile 2g.12gb+me needs the media extensions, held by the 1g.6gb+me instance at 0:1"
    );
    assert_eq!(
        can_place(&A30_24GB, &layout, profile(&A30_24GB, "2g.12gb"), 2),
        Ok(())
    );
}

#[test]
fn rule_errors_name_the_values() {
    let three_g = profile(&H100_80GB, "3g.40gb");
    let err = can_place(&H100_80GB, &[], three_g, 2).unwrap_err();
    assert_eq!(
        err.to_string(),
        "mig profile 3g.40gb cannot start at memory slot 2: its starts are [0, 4]"
    );
    let layout = [at(&H100_80GB, "1g.10gb", 5)];
    let err = can_place(&H100_80GB, &layout, three_g, 4).unwrap_err();
    assert_eq!(
        err.to_string(),
        "mig profile 3g.40gb at 4:4 overlaps the 1g.10gb instance at 5:1"
    );
    let layout = [at(&H100_80GB, "3g.40gb", 0), at(&H100_80GB, "3g.40gb", 4)];
    let err = can_place(&H100_80GB, &layout, three_g, 4).unwrap_err();
    assert!(
        matches!(err, MigPlacementError::ProfileLimit { limit: 2, .. }),
        "{err}"
    );
    let err = can_place(&H100_80GB, &[], profile(&A30_24GB, "4g.24gb"), 0).unwrap_err();
    assert_eq!(
        err.to_string(),
        "mig profile 4g.24gb is not offered by gpu model H100-80GB"
    );
    assert_eq!(
        best_placement(&H100_80GB, &[], profile(&A30_24GB, "4g.24gb")),
        None
    );
}

/// A random model and a random sequence of profile requests (indices into its table).
fn model_and_requests() -> impl Strategy<Value = (&'static GpuModel, Vec<usize>)> {
    (0..MODELS.len(), prop::collection::vec(0usize..16, 0..24))
        .prop_map(|(m, reqs)| (MODELS[m], reqs))
}

proptest! {
    #[test]
    fn best_placements_never_break_the_rules((model, requests) in model_and_requests()) {
        let mut layout: Vec<PlacedGi> = Vec::new();
        for req in requests {
            let p = &model.profiles[req % model.profiles.len()];
            let fits_somewhere = valid_placements(p)
                .any(|pl| can_place(model, &layout, p, pl.start).is_ok());
            match best_placement(model, &layout, p) {
                Some(placement) => {
                    prop_assert!(fits_somewhere);
                    prop_assert_eq!(placement.size, p.memory_slots);
                    prop_assert_eq!(can_place(model, &layout, p, placement.start), Ok(()));
                    layout.push(PlacedGi { profile: p, placement });
                }
                None => prop_assert!(!fits_somewhere, "{} fits but was refused", p.name),
            }
        }
        prop_assert!(layout.len() <= usize::from(model.max_gpu_instances));
        for (i, a) in layout.iter().enumerate() {
            prop_assert!(a.placement.end() <= u16::from(model.memory_slots));
            for b in &layout[i + 1..] {
                prop_assert!(!a.placement.overlaps(b.placement), "{:?} overlaps {:?}", a, b);
            }
        }
        for p in model.profiles {
            let n = layout.iter().filter(|gi| gi.profile == p).count();
            prop_assert!(n <= usize::from(p.instance_count), "{} x{}", p.name, n);
        }
        prop_assert!(layout.iter().filter(|gi| gi.profile.media_extensions).count() <= 1);
    }

    #[test]
    fn repeated_best_placement_reaches_the_remaining_capacity(
        (model, requests) in model_and_requests(),
        pick in 0usize..16,
    ) {
        let mut layout: Vec<PlacedGi> = Vec::new();
        for req in requests {
            let p = &model.profiles[req % model.profiles.len()];
            if let Some(placement) = best_placement(model, &layout, p) {
                layout.push(PlacedGi { profile: p, placement });
            }
        }
        let p = &model.profiles[pick % model.profiles.len()];
        let capacity = remaining_capacity(model, &layout, p);
        let mut added = 0u8;
        while let Some(placement) = best_placement(model, &layout, p) {
            layout.push(PlacedGi { profile: p, placement });
            added += 1;
        }
        prop_assert_eq!(added, capacity);
    }
}
