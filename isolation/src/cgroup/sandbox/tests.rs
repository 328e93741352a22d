use std::collections::BTreeMap;
use std::fs;

use super::*;

fn legacy(root: &Path, without: Option<&str>) -> CgroupLayout {
    let controllers: BTreeMap<String, PathBuf> = V1_CONTROLLERS
        .iter()
        .filter(|c| Some(**c) != without)
        .map(|c| {
            let mount = root.join(c);
            fs::create_dir_all(&mount).expect("mkdir");
            ((*c).to_owned(), mount)
        })
        .collect();
    CgroupLayout::Legacy { controllers }
}

fn entries(dir: &Path) -> usize {
    fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn a_missing_controller_is_named_and_nothing_is_made() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let layout = legacy(tmp.path(), Some("pids"));
    let err = Sandbox::create(
        &layout,
        DEFAULT_ROOT,
        AllocationId::from_raw(1),
        &Limits::default(),
        &[],
    )
    .expect_err("no pids controller");
    assert!(
        matches!(err, SandboxError::MissingController { controller: "pids" }),
        "{err}"
    );
    assert!(err.to_string().contains("pids"), "{err}");
    for c in V1_CONTROLLERS.iter().filter(|c| **c != "pids") {
        assert_eq!(entries(&tmp.path().join(c)), 0, "{c}");
    }
}

#[test]
fn invalid_limits_are_refused_before_anything_is_made() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let layout = legacy(tmp.path(), None);
    let limits = Limits {
        pids_max: Some(0),
        ..Limits::default()
    };
    let err = Sandbox::create(
        &layout,
        DEFAULT_ROOT,
        AllocationId::from_raw(1),
        &limits,
        &[],
    )
    .expect_err("invalid");
    assert!(
        matches!(err, SandboxError::Limits(ref e) if e.field == "pids_max"),
        "{err}"
    );
    for c in V1_CONTROLLERS {
        assert_eq!(entries(&tmp.path().join(c)), 0, "{c}");
    }
}

#[test]
fn an_existing_sandbox_is_refused_kept_and_the_rest_rolled_back() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let layout = legacy(tmp.path(), None);
    let alloc = AllocationId::from_raw(7);
    let cpuset_root = tmp.path().join("cpuset").join(DEFAULT_ROOT);
    fs::create_dir(&cpuset_root).expect("mkdir");
    fs::write(cpuset_root.join("cpuset.cpus"), "0").expect("write");
    fs::write(cpuset_root.join("cpuset.mems"), "0").expect("write");
    let taken = tmp
        .path()
        .join("pids")
        .join(DEFAULT_ROOT)
        .join(alloc.to_string());
    fs::create_dir_all(&taken).expect("mkdir");
    let err =
        Sandbox::create(&layout, DEFAULT_ROOT, alloc, &Limits::default(), &[]).expect_err("exists");
    assert!(
        matches!(
            err,
            SandboxError::Exists {
                controller: "pids",
                ..
            }
        ),
        "{err}"
    );
    assert!(taken.is_dir(), "another sandbox's directory must be kept");
    for c in ["memory", "cpu", "cpuset"] {
        let dir = tmp
            .path()
            .join(c)
            .join(DEFAULT_ROOT)
            .join(alloc.to_string());
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}
