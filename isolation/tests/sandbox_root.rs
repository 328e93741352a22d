//! Root tests: [`Sandbox`] with real cgroups on this host (v1 controllers, the device program
//! attached on the v2 tree of a hybrid host).
//!
//! Workloads are real processes: a root shell writes its pid into every `cgroup.procs` of the
//! sandbox, then `exec`s `setpriv` to drop to `nobody` and run the command, so the workload runs
//! unprivileged inside the sandbox from its first instruction. Each test calls
//! [`testing::require_root_cgroups`] first and returns early, after printing why, when it cannot
//! run (`GPUAAS_REQUIRE_ROOT_TESTS=1` makes that a failure). A [`Guard`] destroys the sandbox
//! when a test fails half-way, so a failed assertion leaves no cgroup behind.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use gpuaas_isolation::cgroup::{
    CgroupLayout, CpuQuota, CpuSet, Limits, MOUNTINFO, Released, Sandbox, SandboxError, file,
};
use gpuaas_isolation::devices::rules::default_rules;
use gpuaas_isolation::testing;
use gpuaas_proto::AllocationId;

/// The root directory the tests use under each hierarchy (kept, like `gpuaas`).
const ROOT: &str = "gpuaas-test";
/// The unprivileged user workloads run as (`nobody`).
const WORKLOAD_UID: &str = "65534";

fn layout() -> CgroupLayout {
    CgroupLayout::detect(Path::new(MOUNTINFO)).expect("cgroup layout")
}

fn alloc() -> AllocationId {
    gpuaas_isolation::testing::unique_alloc_id()
}

/// Destroys the sandbox on drop unless the test already did.
struct Guard(Option<Sandbox>);

impl Guard {
    fn sandbox(&self) -> &Sandbox {
        self.0.as_ref().expect("sandbox")
    }

    fn destroy(&mut self, grace: Duration) -> Result<Released, SandboxError> {
        self.0.take().expect("sandbox").destroy(grace)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(sandbox) = self.0.take()
            && let Err(e) = sandbox.destroy(Duration::ZERO)
        {
            eprintln!("cleanup: {e}");
        }
    }
}

fn create(limits: &Limits) -> Guard {
    let sandbox =
        Sandbox::create(&layout(), ROOT, alloc(), limits, &default_rules()).expect("create");
    Guard(Some(sandbox))
}

/// Starts `cmd` (a `/bin/sh` command line) as [`WORKLOAD_UID`] inside `sandbox`, with its
/// output piped.
fn spawn(sandbox: &Sandbox, cmd: &str) -> Child {
    let join = "cmd=$1; shift; for f in \"$@\"; do echo $$ > \"$f\" || exit 97; done; \
                exec setpriv --reuid=U --regid=U --clear-groups -- /bin/sh -c \"$cmd\""
        .replace('U', WORKLOAD_UID);
    Command::new("/bin/sh")
        .arg("-c")
        .arg(join)
        .arg("sh")
        .arg(cmd)
        .args(sandbox.procs_files())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn workload")
}

/// Waits up to `limit` for `child` to exit.
fn wait(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "workload still running after {limit:?}"
        );
        sleep(Duration::from_millis(10));
    }
}

fn output(child: &mut Child) -> String {
    let mut text = String::new();
    for pipe in [
        child.stdout.take().map(|p| Box::new(p) as Box<dyn Read>),
        child.stderr.take().map(|p| Box::new(p) as Box<dyn Read>),
    ]
    .into_iter()
    .flatten()
    {
        let mut pipe = pipe;
        pipe.read_to_string(&mut text).expect("read output");
    }
    text
}

/// Polls until the sandbox holds at least `n` processes.
fn wait_for_pids(sandbox: &Sandbox, n: usize) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = sandbox.pids().expect("pids");
        if pids.len() >= n {
            return pids;
        }
        assert!(Instant::now() < deadline, "only {pids:?} joined, want {n}");
        sleep(Duration::from_millis(10));
    }
}

/// Whether `pid` runs (exists and is not a zombie waiting for its new parent to reap it).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        !matches!(state, Some('Z' | 'X'))
    })
}

/// Every directory the sandbox of `alloc` could have under `ROOT`.
fn candidate_dirs(layout: &CgroupLayout, alloc: AllocationId) -> Vec<PathBuf> {
    let mut mounts: Vec<PathBuf> = ["memory", "cpu", "cpuset", "pids", "freezer", "devices"]
        .iter()
        .filter_map(|c| layout.v1_controller(c).map(Path::to_owned))
        .collect();
    mounts.extend(layout.unified().map(Path::to_owned));
    mounts
        .iter()
        .map(|m| m.join(ROOT).join(alloc.to_string()))
        .collect()
}

#[test]
fn memory_over_the_limit_is_oom_killed_and_reported() {
    if testing::require_root_cgroups().is_err() {
        return;
    }
    let mut guard = create(&Limits {
        memory_bytes: Some(32 << 20),
        ..Limits::default()
    });
    assert!(!guard.sandbox().oom_killed().expect("oom_killed"));
    // The shell keeps the whole command substitution (100 MB) in its own memory.
    let mut child = spawn(
        guard.sandbox(),
        "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived ${#x}",
    );
    let status = wait(&mut child, Duration::from_secs(60));
    let out = output(&mut child);
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}: {out}");
    assert!(!out.contains("survived"), "{out}");
    assert!(guard.sandbox().oom_killed().expect("oom_killed"));
    guard.destroy(Duration::from_secs(1)).expect("destroy");
}

#[test]
fn fork_beyond_pids_max_fails_with_eagain_and_the_sandbox_survives() {
    if testing::require_root_cgroups().is_err() {
        return;
    }
    let mut guard = create(&Limits {
        pids_max: Some(5),
        ..Limits::default()
    });
    let mut child = spawn(
        guard.sandbox(),
        "perl -e 'for (1..8) { my $p = fork; if (!defined $p) { print \"fork: $!\\n\"; exit 0 } \
         if ($p == 0) { close STDOUT; close STDERR; sleep 60; exit 0 } } print \"all forked\\n\"'",
    );
    let status = wait(&mut child, Duration::from_secs(30));
    let out = output(&mut child);
    assert!(status.success(), "{status:?}: {out}");
    assert_eq!(out.trim(), "fork: Resource temporarily unavailable");
    // The children that did fork still run in the sandbox, within the limit.
    let pids = guard.sandbox().pids().expect("pids");
    assert!((1..=5).contains(&pids.len()), "{pids:?}");
    let released = guard.destroy(Duration::from_secs(2)).expect("destroy");
    assert_eq!(released.killed, pids.len());
}

#[test]
fn destroy_kills_every_process_even_daemons_and_removes_every_dir() {
    if testing::require_root_cgroups().is_err() {
        return;
    }
    let layout = layout();
    let mut guard = create(&Limits::default());
    let alloc = guard.sandbox().alloc();
    // SIGTERM is ignored (and inherited), so only the forced kill can stop them; two
    // background children, a setsid daemon whose parent exited, and a double-forked one.
    let mut child = spawn(
        guard.sandbox(),
        "trap '' TERM; sleep 1000 & sleep 1000 & (setsid sleep 1000 &); \
         sh -c 'sleep 1000 &'; wait",
    );
    let pids = wait_for_pids(guard.sandbox(), 5);
    let released = guard.destroy(Duration::from_millis(100)).expect("destroy");
    assert!(released.forced, "{released:?}");
    assert!(released.killed >= 5, "{released:?} for {pids:?}");
    let status = wait(&mut child, Duration::from_secs(10));
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    for pid in pids {
        assert!(!alive(pid), "pid {pid} survived");
    }
    for dir in candidate_dirs(&layout, alloc) {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

#[test]
fn destroy_of_a_cooperative_workload_needs_no_force() {
    if testing::require_root_cgroups().is_err() {
        return;
    }
    let mut guard = create(&Limits::default());
    let mut child = spawn(guard.sandbox(), "exec sleep 1000");
    wait_for_pids(guard.sandbox(), 1);
    let released = guard.destroy(Duration::from_secs(10)).expect("destroy");
    assert_eq!(
        released,
        Released {
            killed: 1,
            forced: false
        }
    );
    let status = wait(&mut child, Duration::from_secs(10));
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
}

#[test]
fn limits_are_written_to_the_real_controllers() {
    if testing::require_root_cgroups().is_err() {
        return;
    }
    let layout = layout();
    let mut guard = create(&Limits {
        memory_bytes: Some(64 << 20),
        swap: false,
        cpu: Some(CpuQuota {
            quota_us: 20_000,
            period_us: 100_000,
        }),
        cpuset: Some(CpuSet {
            cpus: "0".into(),
            mems: "0".into(),
        }),
        pids_max: Some(16),
    });
    let alloc = guard.sandbox().alloc().to_string();
    let dir = |c| layout.v1_controller(c).expect(c).join(ROOT).join(&alloc);
    let read = |c, name| file::read(&dir(c), name).expect(name);
    assert_eq!(read("memory", "memory.limit_in_bytes"), "67108864");
    assert_eq!(read("cpu", "cpu.cfs_quota_us"), "20000");
    assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
    assert_eq!(read("cpuset", "cpuset.cpus"), "0");
    assert_eq!(read("pids", "pids.max"), "16");
    // A process added from outside lands in every directory.
    let mut child = Command::new("sleep").arg("1000").spawn().expect("spawn");
    let pid = i32::try_from(child.id()).expect("pid");
    guard.sandbox().add_process(pid).expect("add_process");
    assert_eq!(guard.sandbox().pids().expect("pids"), vec![pid]);
    for (controller, dir) in guard.sandbox().dirs() {
        let procs = file::procs(dir).expect("procs");
        assert_eq!(procs, vec![pid], "{controller}");
    }
    let released = guard.destroy(Duration::from_secs(5)).expect("destroy");
    assert_eq!(
        released,
        Released {
            killed: 1,
            forced: false
        }
    );
    child.wait().expect("reap");
}

#[test]
fn a_cpuset_the_kernel_rejects_is_named_and_nothing_is_left() {
    if testing::require_root_cgroups().is_err() {
        return;
    }
    let layout = layout();
    let alloc = alloc();
    let limits = Limits {
        cpuset: Some(CpuSet {
            cpus: "999".into(),
            mems: "0".into(),
        }),
        ..Limits::default()
    };
    let err = Sandbox::create(&layout, ROOT, alloc, &limits, &default_rules())
        .expect_err("cpu 999 does not exist");
    let text = err.to_string();
    assert!(text.contains("cpuset.cpus"), "{text}");
    assert!(text.contains("999"), "{text}");
    match &err {
        SandboxError::File { controller, source } => {
            assert_eq!(*controller, "cpuset");
            assert!(source.path().ends_with("cpuset.cpus"), "{err}");
            // EINVAL, or ERANGE for a CPU number beyond the kernel's `nr_cpu_ids`.
            let errno = source.errno();
            assert!(matches!(errno, Some(libc::EINVAL | libc::ERANGE)), "{err}");
        }
        other => panic!("unexpected error {other}"),
    }
    for dir in candidate_dirs(&layout, alloc) {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}
