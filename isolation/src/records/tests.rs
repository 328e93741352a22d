use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::cgroup::DEFAULT_ROOT;

fn alloc(raw: u64) -> AllocationId {
    AllocationId::from_raw(raw)
}

fn record(raw: u64, workload_pid: Option<u32>, shim_pid: Option<u32>) -> SandboxRecord {
    SandboxRecord {
        alloc: alloc(raw),
        cgroup_dirs: vec![
            PathBuf::from(format!("/sys/fs/cgroup/memory/gpuaas/{}", alloc(raw))),
            PathBuf::from(format!("/sys/fs/cgroup/unified/gpuaas/{}", alloc(raw))),
        ],
        mig: Some(RecordedMig {
            gpu_index: 1,
            gi_id: 7,
        }),
        uid: 100_000 + u32::try_from(raw).expect("small"),
        shim_pid,
        workload_pid,
        started_at_ms: 1_700_000_000_123,
    }
}

// ---- the store ----

#[test]
fn save_then_load_round_trips_with_private_modes() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let store = RecordStore::new(tmp.path());
    assert!(store.load_all().expect("no dir yet").records.is_empty());
    let a = record(2, Some(20), Some(19));
    let b = SandboxRecord {
        mig: None,
        shim_pid: None,
        workload_pid: None,
        ..record(1, None, None)
    };
    store.save(&a).expect("save a");
    store.save(&b).expect("save b");
    let path = store.path(a.alloc);
    assert_eq!(
        path,
        tmp.path().join("sandboxes/alloc-0000000000000002.json")
    );
    let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(store.dir()), 0o700);
    let text = fs::read_to_string(&path).expect("read");
    assert!(text.contains("\"alloc-0000000000000002\""), "{text}");
    let loaded = store.load_all().expect("load");
    assert!(loaded.corrupt.is_empty(), "{:?}", loaded.corrupt);
    assert_eq!(loaded.records, vec![b, a]);
}

#[test]
fn save_replaces_and_leaves_no_temporary_file() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let store = RecordStore::new(tmp.path());
    let mut r = record(3, None, Some(30));
    store.save(&r).expect("first");
    r.workload_pid = Some(31);
    // A temporary file left by a crash during an earlier save is replaced.
    fs::write(store.dir().join(".alloc-0000000000000003.json.tmp"), "{").expect("leftover");
    store.save(&r).expect("second");
    let names: Vec<_> = fs::read_dir(store.dir())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec!["alloc-0000000000000003.json"]);
    assert_eq!(store.load_all().expect("load").records, vec![r]);
}

#[test]
fn remove_is_idempotent() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let store = RecordStore::new(tmp.path());
    store.save(&record(4, Some(1), None)).expect("save");
    store.remove(alloc(4)).expect("remove");
    store.remove(alloc(4)).expect("remove again");
    store.remove(alloc(5)).expect("never saved");
    assert!(store.load_all().expect("load").records.is_empty());
}

#[test]
fn corrupt_files_are_reported_with_their_path_and_skipped() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let store = RecordStore::new(tmp.path());
    let good = record(1, Some(10), Some(9));
    store.save(&good).expect("save");
    let dir = store.dir();
    let garbage = dir.join("alloc-0000000000000002.json");
    fs::write(&garbage, "{not json").expect("write");
    let huge = dir.join("alloc-0000000000000003.json");
    let padding = " ".repeat(usize::try_from(MAX_RECORD_BYTES).expect("fits"));
    let big = format!(
        "{}{padding}",
        serde_json::to_string(&record(3, None, None)).expect("json")
    );
    fs::write(&huge, big).expect("write");
    let misnamed = dir.join("alloc-0000000000000004.json");
    fs::write(
        &misnamed,
        serde_json::to_vec(&record(5, None, None)).expect("json"),
    )
    .expect("write");
    let bad_name = dir.join("alloc-xyz.json");
    fs::write(&bad_name, "{}").expect("write");
    let link = dir.join("alloc-0000000000000006.json");
    std::os::unix::fs::symlink(store.path(good.alloc), &link).expect("symlink");
    let subdir = dir.join("alloc-0000000000000007.json");
    fs::create_dir(&subdir).expect("mkdir");
    fs::write(dir.join("README"), "ignored").expect("write");
    fs::write(dir.join(".alloc-0000000000000008.json.tmp"), "{").expect("write");

    let loaded = store.load_all().expect("load");
    assert_eq!(loaded.records, vec![good]);
    let by_path: BTreeMap<&Path, &CorruptRecordError> = loaded
        .corrupt
        .iter()
        .map(|c| (c.path.as_path(), &c.problem))
        .collect();
    assert_eq!(by_path.len(), 6, "{:?}", loaded.corrupt);
    assert!(matches!(
        by_path[garbage.as_path()],
        CorruptRecordError::Decode(_)
    ));
    assert!(matches!(
        by_path[huge.as_path()],
        CorruptRecordError::TooLarge { limit: MAX_RECORD_BYTES, actual } if *actual > MAX_RECORD_BYTES
    ));
    assert!(matches!(
        by_path[misnamed.as_path()],
        CorruptRecordError::WrongAlloc { expected, found } if *expected == alloc(4) && *found == alloc(5)
    ));
    assert!(matches!(
        by_path[bad_name.as_path()],
        CorruptRecordError::Name(_)
    ));
    assert!(matches!(
        by_path[link.as_path()],
        CorruptRecordError::NotAFile
    ));
    assert!(matches!(
        by_path[subdir.as_path()],
        CorruptRecordError::NotAFile
    ));
    let message = loaded.corrupt[0].to_string();
    assert!(
        message.contains(&loaded.corrupt[0].path.display().to_string()),
        "{message}"
    );
}

#[test]
fn an_unreadable_directory_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().expect("temp dir");
    // A file where the directory should be.
    fs::write(tmp.path().join(RECORDS_DIR), "").expect("write");
    let store = RecordStore::new(tmp.path());
    let err = store.load_all().expect_err("not a directory");
    assert!(err.to_string().contains("sandboxes"), "{err}");
    let err = store
        .save(&record(1, None, None))
        .expect_err("not a directory");
    assert!(matches!(err, RecordError::Io { .. }), "{err}");
}

// ---- existing sandboxes ----

fn hybrid(root: &Path) -> CgroupLayout {
    let mut controllers = BTreeMap::new();
    for c in V1_CONTROLLERS {
        let mount = if matches!(*c, "cpu") {
            root.join("cpu,cpuacct")
        } else {
            root.join(c)
        };
        controllers.insert((*c).to_owned(), mount);
    }
    controllers.insert("cpuacct".to_owned(), root.join("cpu,cpuacct"));
    CgroupLayout::Hybrid {
        controllers,
        unified: root.join("unified"),
    }
}

#[test]
fn existing_sandboxes_are_listed_across_hierarchies() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let layout = hybrid(tmp.path());
    let (a, b) = (alloc(0xa), alloc(0xb));
    // `a` everywhere; `b` only in memory and unified (a removal cut short).
    for mount in [
        "memory",
        "cpu,cpuacct",
        "cpuset",
        "pids",
        "freezer",
        "devices",
        "unified",
    ] {
        fs::create_dir_all(
            tmp.path()
                .join(mount)
                .join(DEFAULT_ROOT)
                .join(a.to_string()),
        )
        .expect("mkdir");
    }
    for mount in ["memory", "unified"] {
        let root = tmp.path().join(mount).join(DEFAULT_ROOT);
        fs::create_dir_all(root.join(b.to_string())).expect("mkdir");
        // Not sandboxes: other names, a file with a sandbox name.
        fs::create_dir_all(root.join("agent")).expect("mkdir");
        fs::create_dir_all(root.join("alloc-nothex")).expect("mkdir");
        fs::write(root.join("cgroup.procs"), "").expect("write");
        fs::write(root.join(alloc(0xc).to_string()), "").expect("write");
    }
    // A sandbox under another root is not ours.
    fs::create_dir_all(tmp.path().join("memory/other").join(alloc(0xd).to_string()))
        .expect("mkdir");

    let found = existing_sandboxes(&layout, DEFAULT_ROOT).expect("scan");
    let ids: Vec<_> = found.iter().map(|s| s.alloc).collect();
    assert_eq!(ids, vec![a, b]);
    assert_eq!(
        found[0].dirs.len(),
        7,
        "cpu,cpuacct counted once: {:?}",
        found[0].dirs
    );
    let b_dirs: HashSet<_> = found[1].dirs.iter().cloned().collect();
    let want: HashSet<_> = ["memory", "unified"]
        .iter()
        .map(|m| tmp.path().join(m).join(DEFAULT_ROOT).join(b.to_string()))
        .collect();
    assert_eq!(b_dirs, want);
}

#[test]
fn no_root_directory_means_no_sandbox() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let layout = CgroupLayout::Unified {
        root: tmp.path().to_owned(),
    };
    assert!(
        existing_sandboxes(&layout, DEFAULT_ROOT)
            .expect("scan")
            .is_empty()
    );
    fs::create_dir_all(tmp.path().join(DEFAULT_ROOT).join(alloc(1).to_string())).expect("mkdir");
    let found = existing_sandboxes(&layout, DEFAULT_ROOT).expect("scan");
    assert_eq!(
        found,
        vec![ExistingSandbox {
            alloc: alloc(1),
            dirs: vec![tmp.path().join(DEFAULT_ROOT).join(alloc(1).to_string())],
        }]
    );
}

#[test]
fn an_unreadable_root_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().expect("temp dir");
    fs::write(tmp.path().join(DEFAULT_ROOT), "").expect("a file, not a directory");
    let layout = CgroupLayout::Unified {
        root: tmp.path().to_owned(),
    };
    let err = existing_sandboxes(&layout, DEFAULT_ROOT).expect_err("not a directory");
    assert!(err.to_string().contains(DEFAULT_ROOT), "{err}");
}

// ---- reconcile ----

/// Liveness from a set of (allocation, pid) pairs.
fn alive_in(live: &[(u64, u32)]) -> impl Fn(AllocationId, u32) -> bool + '_ {
    move |a, pid| live.contains(&(a.raw(), pid))
}

#[test]
fn a_running_workload_is_adopted() {
    let records = [record(1, Some(10), Some(9))];
    let out = reconcile(&records, &[alloc(1)], &alive_in(&[(1, 10), (1, 9)]));
    assert_eq!(
        out,
        Reconciliation {
            adopt: vec![alloc(1)],
            ..Reconciliation::default()
        }
    );
}

#[test]
fn a_live_shim_whose_workload_ended_is_adopted_to_report_the_exit() {
    let records = [record(1, Some(10), Some(9))];
    let out = reconcile(&records, &[alloc(1)], &alive_in(&[(1, 9)]));
    assert_eq!(out.adopt, vec![alloc(1)]);
    assert!(out.exited.is_empty());
}

#[test]
fn a_workload_gone_with_its_shim_has_exited() {
    let records = [record(1, Some(10), Some(9))];
    let out = reconcile(&records, &[alloc(1)], &alive_in(&[]));
    assert_eq!(
        out,
        Reconciliation {
            exited: vec![alloc(1)],
            ..Reconciliation::default()
        }
    );
}

#[test]
fn a_recycled_pid_in_another_sandbox_is_not_life() {
    // Pid 10 is alive, but as a process of allocation 2.
    let records = [record(1, Some(10), None), record(2, Some(10), None)];
    let out = reconcile(&records, &[alloc(1), alloc(2)], &alive_in(&[(2, 10)]));
    assert_eq!(out.adopt, vec![alloc(2)]);
    assert_eq!(out.exited, vec![alloc(1)]);
}

#[test]
fn a_record_without_pids_has_exited() {
    // The agent died between saving the record and starting the shim.
    let records = [record(1, None, None)];
    let out = reconcile(&records, &[alloc(1)], &|_, _| true);
    assert_eq!(out.exited, vec![alloc(1)]);
    assert!(out.adopt.is_empty());
}

#[test]
fn a_cgroup_without_a_record_is_an_orphan() {
    let out = reconcile(&[], &[alloc(3), alloc(1), alloc(3)], &|_, _| true);
    assert_eq!(
        out,
        Reconciliation {
            orphan_cgroups: vec![alloc(1), alloc(3)],
            ..Reconciliation::default()
        }
    );
}

#[test]
fn a_record_without_a_cgroup_is_stale_even_if_its_pid_lives() {
    let records = [record(1, Some(10), Some(9))];
    let out = reconcile(&records, &[], &|_, _| true);
    assert_eq!(
        out,
        Reconciliation {
            stale_records: vec![alloc(1)],
            ..Reconciliation::default()
        }
    );
}

#[test]
fn every_allocation_lands_in_exactly_one_sorted_list() {
    let records = [
        record(5, Some(50), Some(49)), // exited
        record(2, Some(20), None),     // adopt
        record(9, None, Some(90)),     // stale
        record(1, Some(10), Some(11)), // adopt (shim)
        record(2, None, None),         // duplicate: the first wins
    ];
    let cgroups = [alloc(7), alloc(5), alloc(2), alloc(1), alloc(4)];
    let out = reconcile(&records, &cgroups, &alive_in(&[(2, 20), (1, 11), (9, 90)]));
    assert_eq!(
        out,
        Reconciliation {
            adopt: vec![alloc(1), alloc(2)],
            exited: vec![alloc(5)],
            orphan_cgroups: vec![alloc(4), alloc(7)],
            stale_records: vec![alloc(9)],
        }
    );
}

#[test]
fn nothing_in_nothing_out() {
    assert_eq!(reconcile(&[], &[], &|_, _| true), Reconciliation::default());
}
