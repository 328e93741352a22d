//! Root tests: [`launch`] with real cgroups, the real `gpuaas-shim` binary and unprivileged
//! workloads on this host.
//!
//! Each test calls [`testing::require_root_cgroups`] first (`GPUAAS_REQUIRE_ROOT_TESTS=1`
//! makes a skip a failure). A [`Guard`] destroys the sandbox when a test ends or fails half-way.
//! Every test uses its own uid above 65534, so parallel tests never share one.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use gpuaas_isolation::cgroup::{CgroupLayout, Limits, MOUNTINFO, Sandbox};
use gpuaas_isolation::devices::rules::default_rules;
use gpuaas_isolation::launch::{
    self, ExitRecord, LAUNCH_ERROR_FILE, LaunchError, LaunchedWorkload, WorkloadSpec, shim,
};
use gpuaas_isolation::testing;
use gpuaas_proto::AllocationId;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const ROOT: &str = "gpuaas-test";
const SHIM: &str = env!("CARGO_BIN_EXE_gpuaas-shim");
/// Set for the helper test run as a separate launcher process by
/// `the_workload_survives_the_death_of_its_launcher`: `<state>|<logs>|<alloc raw>`.
const HELPER_ENV: &str = "GPUAAS_LAUNCH_HELPER";

fn layout() -> CgroupLayout {
    CgroupLayout::detect(Path::new(MOUNTINFO)).expect("cgroup layout")
}

fn alloc() -> AllocationId {
    gpuaas_isolation::testing::unique_alloc_id()
}

/// A sandbox (destroyed on drop) and a temporary state directory (0755, so tenants can reach
/// the 0700 log directories inside it and be refused there).
struct Guard {
    sandbox: Option<Sandbox>,
    tmp: tempfile::TempDir,
}

impl Guard {
    fn new(limits: &Limits) -> Self {
        let sandbox = Sandbox::create(&layout(), ROOT, alloc(), limits, &default_rules())
            .expect("create sandbox");
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        Self {
            sandbox: Some(sandbox),
            tmp,
        }
    }

    fn sandbox(&self) -> &Sandbox {
        self.sandbox.as_ref().expect("sandbox")
    }

    fn state(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    fn logs(&self) -> PathBuf {
        self.tmp.path().join("logs")
    }

    fn spec(&self, uid: u32, script: &str) -> WorkloadSpec {
        spec(self.sandbox().alloc(), uid, script, self.logs())
    }

    fn launch(&self, spec: &WorkloadSpec) -> Result<LaunchedWorkload, LaunchError> {
        launch::launch(self.sandbox(), spec, &self.state(), Path::new(SHIM))
    }

    fn wait_exit(&self, limit: Duration) -> ExitRecord {
        wait_exit(&self.state(), self.sandbox().alloc(), limit)
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs().join(name)).expect("log")
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(sandbox) = self.sandbox.take()
            && let Err(e) = sandbox.destroy(Duration::ZERO)
        {
            eprintln!("cleanup: {e}");
        }
    }
}

fn spec(alloc: AllocationId, uid: u32, script: &str, log_dir: PathBuf) -> WorkloadSpec {
    WorkloadSpec {
        alloc,
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: vec![("FOO".into(), "bar".into())],
        cwd: PathBuf::from("/"),
        uid,
        gid: uid,
        visible_devices: vec!["GPU-1111".into(), "MIG-2222".into()],
        log_dir,
        log_limit_bytes: 1 << 20,
    }
}

fn wait_exit(state: &Path, alloc: AllocationId, limit: Duration) -> ExitRecord {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(record) = launch::read_exit(state, alloc) {
            return record;
        }
        assert!(Instant::now() < deadline, "no exit record after {limit:?}");
        sleep(Duration::from_millis(10));
    }
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        !matches!(state, Some('Z' | 'X'))
    })
}

#[test]
fn workload_runs_as_its_uid_in_the_sandbox_with_a_clean_environment() {
    if testing::require_root_cgroups().is_err() {
        return;
    }
    let guard = Guard::new(&Limits::default());
    let spec = guard.spec(
        65610,
        "id -u; id -G; echo \"cuda=$CUDA_VISIBLE_DEVICES\"; \
         echo \"nvidia=$NVIDIA_VISIBLE_DEVICES\"; cat /proc/self/cgroup; env",
    );
    let launched = guard.launch(&spec).expect("launch");
    assert_ne!(launched.shim_pid, launched.workload_pid);
    let record = guard.wait_exit(Duration::from_secs(30));
    let out = guard.log("stdout.log");
    assert_eq!(record.exit_code, Some(0), "{record:?}: {out}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("65610"), "{out}");
    assert_eq!(
        lines.next(),
        Some("65610"),
        "no supplementary groups: {out}"
    );
    assert!(out.contains("cuda=GPU-1111,MIG-2222\n"), "{out}");
    assert!(out.contains("nvidia=GPU-1111,MIG-2222\n"), "{out}");
    let cgroup = format!("/{ROOT}/{}", guard.sandbox().alloc());
    for controller in [":memory:", ":pids:", ":devices:", ":freezer:"] {
        let line = out.lines().find(|l| l.contains(controller));
        assert!(
            line.is_some_and(|l| l.ends_with(&cgroup)),
            "{controller} not {cgroup}: {out}"
        );
    }
    assert!(out.contains("\nFOO=bar\n"), "{out}");
    assert!(out.contains("\nHOME=/\n"), "{out}");
    // Nothing of the test process's environment leaked (sh adds PWD itself).
    let leaked: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| !["PATH", "HOME", "PWD", "OLDPWD", "SHLVL", "_"].contains(&k.as_str()))
        .filter(|k| out.lines().any(|l| l.starts_with(&format!("{k}="))))
        .collect();
    assert!(leaked.is_empty(), "leaked {leaked:?}: {out}");
    assert!(!out.contains("CARGO"), "{out}");
}

#[test]
fn exit_code_is_recorded() {
    if testing::require_root_cgroups().is_err() {
        return;
    }
    let guard = Guard::new(&Limits::default());
    guard
        .launch(&guard.spec(65611, "echo oops >&2; exit 7"))
        .expect("launch");
    let record = guard.wait_exit(Duration::from_secs(30));
    assert_eq!(
        record,
        ExitRecord {
            exit_code: Some(7),
            signal: None,
            oom_killed: false
        }
    );
    assert_eq!(guard.log("stderr.log"), "oops\n");
}

#[test]
fn a_killing_signal_is_recorded() {
    if testing::require_root_cgroups().is_err() {
        return;
    }
    let guard = Guard::new(&Limits::default());
    let launched = guard
        .launch(&guard.spec(65612, "exec sleep 1000"))
        .expect("launch");
    assert!(
        guard
            .sandbox()
            .pids()
            .expect("pids")
            .contains(&launched.workload_pid)
    );
    kill(Pid::from_raw(launched.workload_pid), Signal::SIGTERM).expect("kill");
    let record = guard.wait_exit(Duration::from_secs(30));
    assert_eq!(record.signal, Some(libc::SIGTERM), "{record:?}");
    assert_eq!(record.exit_code, None, "{record:?}");
    assert!(!record.oom_killed);
}

#[test]
fn memory_over_the_limit_is_recorded_as_oom_killed() {
    if testing::require_root_cgroups().is_err() {
        return;
    }
    let guard = Guard::new(&Limits {
        memory_bytes: Some(32 << 20),
        ..Limits::default()
    });
    guard
        .launch(&guard.spec(
            65613,
            "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived ${#x}",
        ))
        .expect("launch");
    let record = guard.wait_exit(Duration::from_secs(60));
    assert_eq!(record.signal, Some(libc::SIGKILL), "{record:?}");
    assert!(record.oom_killed, "{record:?}");
    assert!(!guard.log("stdout.log").contains("survived"));
}

/// Not a test on its own: the launcher process of
/// `the_workload_survives_the_death_of_its_launcher`, which starts it with [`HELPER_ENV`] set.
#[test]
fn launcher_helper() {
    let Ok(args) = std::env::var(HELPER_ENV) else {
        return;
    };
    let mut parts = args.split('|');
    let (Some(state), Some(logs), Some(raw)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("bad {HELPER_ENV}={args}");
    };
    let alloc = AllocationId::from_raw(raw.parse().expect("alloc"));
    let sandbox = Sandbox::create(&layout(), ROOT, alloc, &Limits::default(), &default_rules())
        .expect("create sandbox");
    let spec = spec(
        alloc,
        65614,
        "trap 'exit 3' USR1; while :; do sleep 0.05; done",
        PathBuf::from(logs),
    );
    let launched =
        launch::launch(&sandbox, &spec, Path::new(state), Path::new(SHIM)).expect("launch");
    println!("LAUNCHED {}", launched.workload_pid);
    sleep(Duration::from_secs(1000));
}

/// Kills the processes left in the helper's sandbox and removes its directories.
struct Orphans(Vec<PathBuf>);

impl Drop for Orphans {
    fn drop(&mut self) {
        for dir in &self.0 {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|p| p.parse().ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for dir in &self.0 {
            while dir.exists() && std::fs::remove_dir(dir).is_err() && Instant::now() < deadline {
                sleep(Duration::from_millis(10));
            }
        }
    }
}

#[test]
fn the_workload_survives_the_death_of_its_launcher() {
    if testing::require_root_cgroups().is_err() {
        return;
    }
    let layout = layout();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (state, logs) = (tmp.path().join("state"), tmp.path().join("logs"));
    let alloc = alloc();
    let mut mounts: Vec<PathBuf> = ["memory", "cpu", "cpuset", "pids", "freezer", "devices"]
        .iter()
        .filter_map(|c| layout.v1_controller(c).map(Path::to_owned))
        .collect();
    mounts.extend(layout.unified().map(Path::to_owned));
    mounts.dedup();
    let dirs: Vec<PathBuf> = mounts
        .iter()
        .map(|m| m.join(ROOT).join(alloc.to_string()))
        .collect();
    let _orphans = Orphans(dirs.clone());
    let mut launcher = Command::new(std::env::current_exe().expect("exe"))
        .args([
            "--exact",
            "launcher_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            HELPER_ENV,
            format!("{}|{}|{}", state.display(), logs.display(), alloc.raw()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn launcher");
    let stdout = launcher.stdout.take().expect("stdout");
    let workload_pid: i32 = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            // libtest prints `test launcher_helper ... ` before it on the same line.
            l.split_once("LAUNCHED ")
                .map(|(_, p)| p.trim().parse().expect("pid"))
        })
        .expect("the launcher reported no workload");
    launcher.kill().expect("SIGKILL the launcher");
    launcher.wait().expect("reap the launcher");
    sleep(Duration::from_millis(200));
    assert!(
        alive(workload_pid),
        "workload {workload_pid} died with its launcher"
    );
    let memory = layout.v1_controller("memory").map_or_else(
        || dirs.last().expect("a dir").clone(),
        |m| m.join(ROOT).join(alloc.to_string()),
    );
    let procs = std::fs::read_to_string(memory.join("cgroup.procs")).expect("procs");
    assert!(
        procs.lines().any(|p| p == workload_pid.to_string()),
        "{workload_pid} not in {procs}"
    );
    assert!(launch::read_exit(&state, alloc).is_none());
    kill(Pid::from_raw(workload_pid), Signal::SIGUSR1).expect("signal workload");
    let record = wait_exit(&state, alloc, Duration::from_secs(30));
    assert_eq!(record.exit_code, Some(3), "{record:?}");
}

#[test]
fn a_missing_binary_is_refused_by_name_and_nothing_runs() {
    if testing::require_root_cgroups().is_err() {
        return;
    }
    let guard = Guard::new(&Limits::default());
    let mut spec = guard.spec(65615, "true");
    spec.argv = vec!["/nonexistent/gpu-job".into()];
    let err = guard.launch(&spec).expect_err("missing binary");
    assert!(matches!(err, LaunchError::BinaryMissing { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/gpu-job"), "{err}");
    assert!(guard.sandbox().pids().expect("pids").is_empty());
    assert!(!launch::alloc_state_dir(&guard.state(), spec.alloc).exists());
}

#[test]
fn a_working_directory_the_user_cannot_enter_fails_in_the_child_and_nothing_runs() {
    if testing::require_root_cgroups().is_err() {
        return;
    }
    let guard = Guard::new(&Limits::default());
    let private = guard.tmp.path().join("root-only");
    std::fs::create_dir(&private).expect("mkdir");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let mut spec = guard.spec(65616, "true");
    spec.cwd = private;
    let err = guard.launch(&spec).expect_err("cwd not accessible");
    match &err {
        LaunchError::Spawn { errno, uid, .. } => {
            assert_eq!(*errno, nix::errno::Errno::EACCES, "{err}");
            assert_eq!(*uid, 65616);
        }
        other => panic!("unexpected {other}"),
    }
    let state = launch::alloc_state_dir(&guard.state(), spec.alloc);
    let text = std::fs::read_to_string(state.join(LAUNCH_ERROR_FILE)).expect("launch_error");
    assert!(text.contains("Permission denied"), "{text}");
    sleep(Duration::from_millis(50));
    assert!(guard.sandbox().pids().expect("pids").is_empty());
}

#[test]
fn two_tenants_cannot_signal_each_other_or_read_each_others_logs() {
    if testing::require_root_cgroups().is_err() {
        return;
    }
    let b = Guard::new(&Limits::default());
    let launched_b = b
        .launch(&b.spec(65617, "echo secret; exec sleep 1000"))
        .expect("launch b");
    let b_log = b.logs().join("stdout.log");
    let a = Guard::new(&Limits::default());
    let script = format!(
        "kill -0 {pid}; echo kill=$?; kill -9 {pid}; echo kill9=$?; cat {log}; echo cat=$?; \
         ls {dir}; echo ls=$?",
        pid = launched_b.workload_pid,
        log = b_log.display(),
        dir = b.logs().display(),
    );
    a.launch(&a.spec(65618, &script)).expect("launch a");
    let record = a.wait_exit(Duration::from_secs(30));
    let (out, err) = (a.log("stdout.log"), a.log("stderr.log"));
    assert_eq!(record.exit_code, Some(0), "{record:?}");
    assert!(
        out.contains("kill=1\n") && out.contains("kill9=1\n"),
        "{out}"
    );
    assert!(out.contains("cat=1\n") && out.contains("ls=2\n"), "{out}");
    assert!(!out.contains("secret"), "{out}");
    assert!(err.contains("Operation not permitted"), "{err}");
    assert!(err.contains("Permission denied"), "{err}");
    assert!(alive(launched_b.workload_pid));
    let mode = std::fs::metadata(&b_log)
        .expect("b log")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let dir_mode = std::fs::metadata(b.logs())
        .expect("b dir")
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700);
}

#[test]
fn logs_stop_at_the_cap_with_one_marker() {
    if testing::require_root_cgroups().is_err() {
        return;
    }
    let guard = Guard::new(&Limits::default());
    let mut spec = guard.spec(
        65619,
        "head -c 200000 /dev/zero | tr '\\0' x; echo done >&2",
    );
    spec.log_limit_bytes = 1000;
    guard.launch(&spec).expect("launch");
    let record = guard.wait_exit(Duration::from_secs(30));
    assert_eq!(record.exit_code, Some(0), "{record:?}");
    let out = guard.log("stdout.log");
    assert_eq!(out.len(), 1000 + shim::TRUNCATION_MARKER.len());
    assert!(out.ends_with(shim::TRUNCATION_MARKER), "{out}");
    assert_eq!(guard.log("stderr.log"), "done\n");
}
