//! Root tests: the device allow-list enforced for real, through the cgroup v1 devices
//! controller and through the cgroup v2 eBPF program.
//!
//! Without a GPU: character nodes with the NVIDIA major (195) are made with `mknod` in a temp
//! dir (mode 0666, so file permissions never decide), and a real process joins the test cgroup,
//! drops to an unprivileged uid and opens them. `ENXIO` ("No such device or address": no driver
//! behind the node) proves the cgroup let the open through; `EPERM` ("Operation not
//! permitted") proves it refused. Each test calls a `gpuaas_isolation::testing` gate first and
//! returns early, after printing why, when it cannot run; `GPUAAS_REQUIRE_ROOT_TESTS=1` makes
//! that a failure.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use gpuaas_isolation::devices::{
    self, Access, DeviceError, DeviceRequest, DeviceRule, HostDevices, ProcDevices, SiteDevices,
    attach, v1,
};
use gpuaas_isolation::testing;
use nix::sys::signal::{Signal, kill};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use nix::unistd::Pid;

const ENXIO: &str = "No such device or address";
const EPERM: &str = "Operation not permitted";
/// The unprivileged user the probe runs as (`nobody`).
const PROBE_UID: u32 = 65534;

/// A uniquely named cgroup directory, emptied and removed on drop (even after a failed assert).
struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    fn create(root: &Path) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "gpuaas-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = root.join(name);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self { path }
    }

    fn procs(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let procs = fs::read_to_string(self.procs()).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            match fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) if Instant::now() >= deadline => {
                    eprintln!("cannot remove {}: {e}", self.path.display());
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

/// The fake device nodes, in a temp dir the probe user can traverse.
struct Nodes {
    dir: tempfile::TempDir,
}

impl Nodes {
    /// `(name, minor)` nodes with major 195.
    fn make(nodes: &[(&str, u32)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod dir");
        for &(name, minor) in nodes {
            let path = dir.path().join(name);
            mknod(
                &path,
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                makedev(u64::from(devices::rules::NVIDIA_MAJOR), u64::from(minor)),
            )
            .unwrap_or_else(|e| panic!("mknod {}: {e}", path.display()));
            // mknod applies the umask; the kernel checks file modes before the device cgroup.
            fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).expect("chmod node");
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// The allow-list of an allocation holding GPU 0, plus a read-only rule for minor 2.
fn rules() -> Vec<DeviceRule> {
    let majors = ProcDevices::parse(
        Path::new("fixture/devices"),
        "Character devices:\n195 nvidia-frontend\n510 nvidia-uvm\n",
    )
    .expect("fixture");
    let host = HostDevices {
        majors,
        mig_minors: None,
        mig_minors_path: PathBuf::from("fixture/mig-minors"),
    };
    let request = DeviceRequest {
        gpus: vec![0],
        mig: Vec::new(),
    };
    let site = SiteDevices {
        extra: vec![DeviceRule::allow_char(195, 2, Access::READ)],
    };
    devices::allow_list(&request, &host, &site).expect("allow list")
}

const NODES: &[(&str, u32)] = &[("gpu0", 0), ("gpu1", 1), ("gpu2", 2), ("nvidiactl", 255)];

/// Opens, as [`PROBE_UID`] inside the cgroup whose `cgroup.procs` is `procs`, each
/// `(name, mode)` (`<` read, `>` write) and returns the outcome per `name mode`: `ok`, or the
/// error text the shell printed (ending in the errno's strerror).
fn probe(procs: &Path, nodes: &Nodes, opens: &[(&str, char)]) -> BTreeMap<String, String> {
    let mut script = String::new();
    for &(name, mode) in opens {
        let path = nodes.path(name);
        script.push_str(&format!(
            "out=$( ( exec 3{mode}'{}' ) 2>&1 ) && echo '{name} {mode} ok' || echo \"{name} {mode} $out\"\n",
            path.display()
        ));
    }
    let setpriv = format!(
        "exec setpriv --reuid={PROBE_UID} --regid={PROBE_UID} --clear-groups -- /bin/sh -c \"$2\""
    );
    let output = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("echo $$ > \"$1\" && {setpriv}"))
        .arg("sh")
        .arg(procs)
        .arg(&script)
        .output()
        .expect("spawn /bin/sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "probe failed: {:?}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ' ');
            let key = format!("{} {}", parts.next()?, parts.next()?);
            Some((key, parts.next()?.to_owned()))
        })
        .collect()
}

/// Whether a driver owns major 195 on this host (then an allowed open may succeed).
fn nvidia_driver_loaded() -> bool {
    ProcDevices::read(Path::new("/proc/devices")).is_ok_and(|d| {
        d.char_major("nvidia-frontend").is_some() || d.char_major("nvidia").is_some()
    })
}

/// Runs the probe over every node and asserts the exact outcome of each open.
fn assert_enforced(procs: &Path, nodes: &Nodes) {
    let opens = [
        ("gpu0", '<'),
        ("gpu0", '>'),
        ("gpu1", '<'),
        ("gpu1", '>'),
        ("nvidiactl", '<'),
        ("gpu2", '<'),
        ("gpu2", '>'),
    ];
    let seen = probe(procs, nodes, &opens);
    let allowed = |key: &str| {
        let out = &seen[key];
        assert!(
            out.ends_with(&format!(": {ENXIO}")) || (nvidia_driver_loaded() && out == "ok"),
            "{key}: expected ENXIO (allowed, no driver), got {out:?}; all: {seen:#?}"
        );
    };
    let denied = |key: &str| {
        let out = &seen[key];
        assert!(
            out.ends_with(&format!(": {EPERM}")),
            "{key}: expected EPERM (refused by the cgroup), got {out:?}; all: {seen:#?}"
        );
    };
    assert_eq!(seen.len(), opens.len(), "probe output: {seen:#?}");
    allowed("gpu0 <");
    allowed("gpu0 >");
    denied("gpu1 <");
    denied("gpu1 >");
    allowed("nvidiactl <");
    allowed("gpu2 <");
    denied("gpu2 >");
}

#[test]
fn v1_devices_controller_enforces_the_allow_list() {
    let Ok(root) = testing::require_root_cgroups_v1() else {
        return;
    };
    let nodes = Nodes::make(NODES);
    let cgroup = TestCgroup::create(&root);
    let writes = v1::render(&rules()).expect("render");
    v1::apply(&cgroup.path, &writes).expect("apply v1 rules");
    assert_enforced(&cgroup.procs(), &nodes);
}

#[test]
fn v2_device_program_enforces_the_allow_list() {
    let Ok(root) = testing::require_root_cgroup2() else {
        return;
    };
    let nodes = Nodes::make(NODES);
    let cgroup = TestCgroup::create(&root);
    let program = devices::compile(&rules()).expect("compile");
    let fd = attach::load(&program).expect("load device program");
    attach::attach(&fd, &cgroup.path).expect("attach device program");
    drop(fd);
    assert_enforced(&cgroup.procs(), &nodes);
}

#[test]
fn v1_line_the_kernel_refuses_is_an_error_naming_it() {
    let Ok(root) = testing::require_root_cgroups_v1() else {
        return;
    };
    // A parent that only allows /dev/null: its child cannot be granted GPU 0.
    let parent = TestCgroup::create(&root);
    v1::apply(
        &parent.path,
        &v1::render(&[DeviceRule::allow_char(1, 3, Access::RWM)]).expect("render"),
    )
    .expect("apply parent rules");
    let child = TestCgroup::create(&parent.path);
    let writes = v1::render(&[
        DeviceRule::allow_char(1, 3, Access::RWM),
        DeviceRule::allow_char(195, 0, Access::RW),
    ])
    .expect("render");
    match v1::apply(&child.path, &writes) {
        Err(DeviceError::V1Write { path, line, source }) => {
            assert_eq!(line, "c 195:0 rw");
            assert_eq!(path, child.path.join("devices.allow"));
            assert_eq!(
                source.raw_os_error(),
                Some(nix::errno::Errno::EPERM as i32),
                "{source}"
            );
        }
        other => panic!("expected the refused line as an error, got {other:?}"),
    }
}

#[test]
fn attach_to_a_missing_cgroup_names_it() {
    let Ok(root) = testing::require_root_cgroup2() else {
        return;
    };
    let program = devices::compile(&rules()).expect("compile");
    let fd = attach::load(&program).expect("load device program");
    let missing = root.join("gpuaas-test-missing-cgroup");
    match attach::attach(&fd, &missing) {
        Err(DeviceError::Attach { path, op, .. }) => {
            assert_eq!(path, missing);
            assert_eq!(op, "open");
        }
        other => panic!("expected an attach error, got {other:?}"),
    }
}
