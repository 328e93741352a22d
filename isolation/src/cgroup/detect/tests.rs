use std::path::Path;

use super::*;

/// A pure-v2 host (Ubuntu 22.04 with systemd, as production GPU servers run).
const PURE_V2: &str = "\
22 28 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
23 28 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
28 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro
30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
31 23 0:27 / /sys/fs/pstore rw,nosuid,nodev,noexec,relatime shared:10 - pstore pstore rw
";

/// A pure-v1 host (CentOS 7), with `cpu,cpuacct` and `net_cls,net_prio` co-mounted.
const PURE_V1: &str = "\
18 40 0:17 / /sys rw,nosuid,nodev,noexec,relatime shared:6 - sysfs sysfs rw
24 18 0:20 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:4 - tmpfs tmpfs ro,mode=755
25 24 0:21 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:5 - cgroup cgroup rw,xattr,release_agent=/usr/lib/systemd/systemd-cgroups-agent,name=systemd
27 24 0:23 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:7 - cgroup cgroup rw,net_prio,net_cls
28 24 0:24 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:8 - cgroup cgroup rw,cpuacct,cpu
29 24 0:25 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:9 - cgroup cgroup rw,memory
30 24 0:26 / /sys/fs/cgroup/devices rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,devices
31 24 0:27 / /sys/fs/cgroup/freezer rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,freezer
32 24 0:28 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,pids
33 24 0:29 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,cpuset
34 24 0:30 / /sys/fs/cgroup/blkio rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,blkio
35 24 0:31 / /sys/fs/cgroup/hugetlb rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,hugetlb
36 24 0:32 / /sys/fs/cgroup/perf_event rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,perf_event
";

/// This development machine, copied from its /proc/self/mountinfo: v1 controllers each at
/// /sys/fs/cgroup/<name>, a v2 tree at /sys/fs/cgroup/unified, no optional fields.
const THIS_MACHINE: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=12334460k,nr_inodes=3083615,mode=755
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

fn parse(text: &str) -> Result<CgroupLayout, LayoutError> {
    CgroupLayout::parse(Path::new("/proc/self/mountinfo"), text)
}

#[test]
fn pure_v2_host_is_unified() {
    let layout = parse(PURE_V2).unwrap();
    assert_eq!(
        layout,
        CgroupLayout::Unified {
            root: "/sys/fs/cgroup".into()
        }
    );
    assert_eq!(layout.unified(), Some(Path::new("/sys/fs/cgroup")));
    assert_eq!(layout.v1_controller("memory"), None);
    assert_eq!(layout.to_string(), "unified (v2 at /sys/fs/cgroup)");
}

#[test]
fn pure_v1_host_is_legacy() {
    let layout = parse(PURE_V1).unwrap();
    let CgroupLayout::Legacy { controllers } = &layout else {
        panic!("expected legacy, got {layout:?}");
    };
    assert_eq!(controllers.len(), 13);
    let at = |c| layout.v1_controller(c).unwrap().to_str().unwrap();
    assert_eq!(at("cpu"), "/sys/fs/cgroup/cpu,cpuacct");
    assert_eq!(at("cpuacct"), "/sys/fs/cgroup/cpu,cpuacct");
    assert_eq!(at("net_prio"), "/sys/fs/cgroup/net_cls,net_prio");
    assert_eq!(at("devices"), "/sys/fs/cgroup/devices");
    assert_eq!(at("name=systemd"), "/sys/fs/cgroup/systemd");
    assert!(
        !controllers.contains_key("xattr"),
        "mount options are not controllers"
    );
    assert_eq!(layout.unified(), None);
}

#[test]
fn this_machine_is_hybrid() {
    let layout = parse(THIS_MACHINE).unwrap();
    let CgroupLayout::Hybrid {
        controllers,
        unified,
    } = &layout
    else {
        panic!("expected hybrid, got {layout:?}");
    };
    assert_eq!(unified, Path::new("/sys/fs/cgroup/unified"));
    for c in [
        "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids",
    ] {
        assert_eq!(controllers[c], Path::new("/sys/fs/cgroup").join(c), "{c}");
    }
    assert_eq!(controllers.len(), 9);
    assert_eq!(
        layout.to_string(),
        "hybrid (v1: blkio,cpu,cpuacct,cpuset,devices,freezer,memory,name=systemd,pids; \
         v2 at /sys/fs/cgroup/unified)"
    );
}

#[test]
fn first_mount_wins_and_escapes_are_decoded() {
    let text = "\
1 0 0:1 / /sys/fs/cgroup/my\\040memory rw - cgroup cgroup rw,memory
2 0 0:1 / /mnt/again rw - cgroup cgroup rw,memory
3 0 0:2 / /sys/fs/cgroup/unified rw shared:3 master:1 - cgroup2 none rw
4 0 0:2 / /mnt/v2 rw - cgroup2 cgroup2 rw
";
    let layout = parse(text).unwrap();
    assert_eq!(
        layout.v1_controller("memory"),
        Some(Path::new("/sys/fs/cgroup/my memory"))
    );
    assert_eq!(layout.unified(), Some(Path::new("/sys/fs/cgroup/unified")));
}

#[test]
fn no_cgroup_mount_is_an_error() {
    let text = "22 27 0:21 / /proc rw,relatime - proc proc rw\n";
    let err = parse(text).unwrap_err();
    assert!(matches!(err, LayoutError::NoCgroupMount { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "no cgroup or cgroup2 mount in /proc/self/mountinfo: is /sys/fs/cgroup mounted?"
    );
    assert!(matches!(parse(""), Err(LayoutError::NoCgroupMount { .. })));
}

#[test]
fn malformed_line_names_file_and_line() {
    for text in [
        "22 27 0:21 / /proc rw,relatime - proc proc rw\n22 27 0:21 / /x rw proc\n",
        "22 27 0:21 / /proc rw,relatime - proc proc rw\n1 0 0:1 / /a\\09 rw - cgroup cgroup rw\n",
    ] {
        let err = parse(text).unwrap_err();
        assert!(
            matches!(err, LayoutError::Malformed { line: 2, .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with("/proc/self/mountinfo:2: "),
            "{err}"
        );
    }
}

#[test]
fn detect_reads_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mountinfo");
    std::fs::write(&path, THIS_MACHINE).unwrap();
    assert!(matches!(
        CgroupLayout::detect(&path).unwrap(),
        CgroupLayout::Hybrid { .. }
    ));
    let err = CgroupLayout::detect(&dir.path().join("absent")).unwrap_err();
    assert!(matches!(err, LayoutError::Read { .. }), "{err:?}");
}

#[test]
fn this_hosts_mountinfo_parses() {
    // Whatever this host is, its real mountinfo parses into some layout or a clear error.
    match CgroupLayout::detect(Path::new(MOUNTINFO)) {
        Ok(layout) => assert!(!layout.to_string().is_empty()),
        Err(e) => assert!(matches!(e, LayoutError::NoCgroupMount { .. }), "{e:?}"),
    }
}
