//! Starting a workload inside a [`Sandbox`] under its own supervisor, and reading how it ended.
//!
//! [`launch`] validates a [`WorkloadSpec`] before anything happens (argv non-empty, binary found
//! on the workload's `PATH` and executable, uid and gid not 0, environment names well formed),
//! then starts the `gpuaas-shim` binary (a supervisor in the spirit of conmon, see [`shim`]).
//! The shim re-executes itself once and the second copy calls `setsid`, so it is reparented
//! away from the agent and killing the agent does not kill it. The shim forks the workload,
//! which before `exec` joins every `cgroup.procs` of the sandbox, starts its own session, sets
//! `PR_SET_NO_NEW_PRIVS`, drops to the spec's uid and gid with no supplementary groups and
//! changes to its working directory as that user (`child.rs`). Its environment is clean: `PATH`,
//! `HOME` (the working directory), the spec's variables, then `CUDA_VISIBLE_DEVICES` and
//! `NVIDIA_VISIBLE_DEVICES` (the device uuids comma-joined, empty when none; the spec cannot
//! override them). Its stdout and stderr are pipes the shim copies to `<log_dir>/stdout.log`
//! and `stderr.log`, each capped at `log_limit_bytes` plus one truncation marker.
//!
//! Logs are owned by root, mode 0600, in a `log_dir` made 0700 and owned by root: no tenant
//! can read another's logs, and the workload itself never holds the files (only the pipes),
//! so it cannot grow them past the cap either. The agent serves logs to their owner.
//!
//! When the workload ends the shim writes `<state_dir>/<alloc>/exit.json` ([`ExitRecord`])
//! atomically (temp file and rename), with the OOM flag read from the sandbox's memory cgroup,
//! so an agent restarted meanwhile still learns how the workload ended ([`read_exit`]). A
//! failure in the child before `exec` (binary not executable by the user, working directory
//! not accessible to them) comes back to the caller as [`LaunchError::Spawn`] with the errno,
//! and is also written to `<state_dir>/<alloc>/launch_error`; the sandbox is left to the caller
//! to destroy.
//!
//! Not done yet: PID and mount namespaces (fresh `/proc`, private `/tmp`, a `/dev` with only the
//! allowed nodes) and `CLONE_INTO_CGROUP` on pure v2 hosts (the child joins by writing to
//! `cgroup.procs` before `exec`, which works on v1, hybrid and v2). The shim runs in the agent's
//! own cgroup, so a service manager that kills the agent's whole cgroup kills the shims too.

mod child;
pub mod shim;

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use gpuaas_proto::AllocationId;
use serde::{Deserialize, Serialize};

use crate::cgroup::Sandbox;

/// The shim binary's file name, looked up beside the current executable by [`default_shim`].
pub const SHIM_NAME: &str = "gpuaas-shim";
/// The workload's `PATH` unless its spec sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The exit record's file name under `<state_dir>/<alloc>/`.
pub const EXIT_FILE: &str = "exit.json";
/// The launch error's file name under `<state_dir>/<alloc>/`.
pub const LAUNCH_ERROR_FILE: &str = "launch_error";
/// The shim's own diagnostics under `<state_dir>/<alloc>/`.
pub const SHIM_LOG_FILE: &str = "shim.log";
/// Variables the agent sets last, so a spec cannot override them.
const DEVICE_VARS: [&str; 2] = ["CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"];

/// What to run in a sandbox, and as whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadSpec {
    /// The allocation whose sandbox the workload runs in.
    pub alloc: AllocationId,
    /// The program (looked up on the workload's `PATH` when it has no `/`) and its arguments.
    pub argv: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// The working directory, entered as the workload's user; also its `HOME`.
    pub cwd: PathBuf,
    /// The workload's uid (never 0).
    pub uid: u32,
    /// The workload's gid (never 0).
    pub gid: u32,
    /// GPU or MIG uuids, for `CUDA_VISIBLE_DEVICES` and `NVIDIA_VISIBLE_DEVICES`.
    pub visible_devices: Vec<String>,
    /// Where `stdout.log` and `stderr.log` go (made 0700, owned by root).
    pub log_dir: PathBuf,
    /// The size cap of each log file, before the truncation marker.
    pub log_limit_bytes: u64,
}

/// A started workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchedWorkload {
    /// The supervisor's pid (its own session, not a child of the caller).
    pub shim_pid: i32,
    /// The workload's pid (a child of the shim, inside the sandbox).
    pub workload_pid: i32,
}

/// How a workload ended, as the shim recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal, when a signal killed it.
    pub signal: Option<i32>,
    /// Whether the sandbox's OOM killer had killed a process by then.
    pub oom_killed: bool,
}

/// A workload could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// `argv` is empty.
    #[error("workload of {alloc} has an empty argv")]
    EmptyArgv {
        /// The allocation.
        alloc: AllocationId,
    },
    /// The workload would run as root.
    #[error("workload of {alloc} refused: {what} 0 (root) is never used for a workload")]
    Root {
        /// The allocation.
        alloc: AllocationId,
        /// `uid` or `gid`.
        what: &'static str,
    },
    /// An environment variable name is empty or holds `=` or NUL, or a value holds NUL.
    #[error("workload of {alloc}: bad environment variable {name:?}")]
    BadEnv {
        /// The allocation.
        alloc: AllocationId,
        /// The variable's name.
        name: String,
    },
    /// The binary does not exist (or is not on the workload's `PATH`).
    #[error("workload binary {} not found", binary.display())]
    BinaryMissing {
        /// The path tried (the argv\[0\] given when it was looked up on `PATH`).
        binary: PathBuf,
    },
    /// The binary is not a regular file with an execute bit.
    #[error("workload binary {} is not executable", binary.display())]
    NotExecutable {
        /// The binary.
        binary: PathBuf,
    },
    /// A state or log file or directory could not be made or written.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The shim could not be started or did not answer.
    #[error("shim {}: {detail}", shim.display())]
    Shim {
        /// The shim binary.
        shim: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The workload failed between fork and exec (joining the cgroups, dropping privileges,
    /// entering its working directory as its user, or `exec` itself).
    #[error("cannot start {} as uid {uid} in {}: {errno}", binary.display(), cwd.display())]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The uid.
        uid: u32,
        /// The working directory.
        cwd: PathBuf,
        /// The errno the child reported.
        errno: nix::errno::Errno,
    },
}

/// Where the memory cgroup's OOM counter is read, for the shim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum OomSource {
    /// The v1 `memory` directory.
    V1(PathBuf),
    /// The v2 directory.
    V2(PathBuf),
    /// No memory controller: never OOM-killed.
    None,
}

/// What the agent hands the shim on its stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ShimRequest {
    pub alloc: String,
    pub binary: PathBuf,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub procs_files: Vec<PathBuf>,
    pub oom: OomSource,
    pub log_dir: PathBuf,
    pub log_limit_bytes: u64,
    pub state_dir: PathBuf,
}

/// What the shim answers on its stdout, one JSON line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum ShimReply {
    Started { shim_pid: i32, workload_pid: i32 },
    SpawnFailed { errno: i32 },
    Failed { detail: String },
}

/// `gpuaas-shim` beside the current executable, if it is there.
pub fn default_shim() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let shim = exe.parent()?.join(SHIM_NAME);
    shim.is_file().then_some(shim)
}

/// The directory of `alloc` under `state_dir`.
pub fn alloc_state_dir(state_dir: &Path, alloc: AllocationId) -> PathBuf {
    state_dir.join(alloc.to_string())
}

/// Checks `spec` and resolves its binary; nothing is started or written.
pub fn validate(spec: &WorkloadSpec) -> Result<PathBuf, LaunchError> {
    let alloc = spec.alloc;
    let Some(program) = spec.argv.first() else {
        return Err(LaunchError::EmptyArgv { alloc });
    };
    if spec.uid == 0 {
        return Err(LaunchError::Root { alloc, what: "uid" });
    }
    if spec.gid == 0 {
        return Err(LaunchError::Root { alloc, what: "gid" });
    }
    for (name, value) in &spec.env {
        if name.is_empty() || name.contains(['=', '\0']) || value.contains('\0') {
            return Err(LaunchError::BadEnv {
                alloc,
                name: name.clone(),
            });
        }
    }
    let path = workload_env(spec)
        .into_iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v)
        .unwrap_or_default();
    resolve(program, &spec.cwd, &path)
}

/// Finds `program` as `execvp` would: relative to `cwd` when it holds a `/`, else on `path`.
fn resolve(program: &str, cwd: &Path, path: &str) -> Result<PathBuf, LaunchError> {
    if program.contains('/') {
        let binary = cwd.join(program);
        return check_executable(binary);
    }
    let mut found_not_exec = None;
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = cwd.join(dir).join(program);
        match check_executable(candidate) {
            Ok(binary) => return Ok(binary),
            Err(e @ LaunchError::NotExecutable { .. }) => {
                found_not_exec.get_or_insert(e);
            }
            Err(_) => {}
        }
    }
    Err(
        found_not_exec.unwrap_or_else(|| LaunchError::BinaryMissing {
            binary: PathBuf::from(program),
        }),
    )
}

fn check_executable(binary: PathBuf) -> Result<PathBuf, LaunchError> {
    match fs::metadata(&binary) {
        Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => Ok(binary),
        Ok(_) => Err(LaunchError::NotExecutable { binary }),
        Err(_) => Err(LaunchError::BinaryMissing { binary }),
    }
}

/// The workload's whole environment, in order (later entries win).
fn workload_env(spec: &WorkloadSpec) -> Vec<(String, String)> {
    let mut env = vec![
        ("PATH".to_owned(), DEFAULT_PATH.to_owned()),
        ("HOME".to_owned(), spec.cwd.display().to_string()),
    ];
    for (name, value) in &spec.env {
        if DEVICE_VARS.contains(&name.as_str()) {
            continue;
        }
        env.retain(|(k, _)| k != name);
        env.push((name.clone(), value.clone()));
    }
    let devices = spec.visible_devices.join(",");
    for name in DEVICE_VARS {
        env.push((name.to_owned(), devices.clone()));
    }
    env
}

/// Where the shim reads the OOM flag of `sandbox`.
fn oom_source(sandbox: &Sandbox) -> OomSource {
    let dirs: Vec<_> = sandbox.dirs().collect();
    if let Some((_, dir)) = dirs.iter().find(|(c, _)| *c == "memory") {
        OomSource::V1(dir.to_path_buf())
    } else if let Some((_, dir)) = dirs.iter().find(|(c, _)| *c == "unified") {
        OomSource::V2(dir.to_path_buf())
    } else {
        OomSource::None
    }
}

/// Makes `dir` (and its parents) and sets it to 0700; it is owned by the caller (root).
fn private_dir(dir: &Path) -> Result<(), LaunchError> {
    let io_err = |op| {
        move |source| LaunchError::Io {
            op,
            path: dir.to_owned(),
            source,
        }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("create directory"))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err("chmod"))
}

/// Validates `spec` and starts it in `sandbox` under the shim binary `shim`, recording its
/// state under `<state_dir>/<alloc>/`. Returns once the workload has been exec'd (or failed to).
pub fn launch(
    sandbox: &Sandbox,
    spec: &WorkloadSpec,
    state_dir: &Path,
    shim: &Path,
) -> Result<LaunchedWorkload, LaunchError> {
    let binary = validate(spec)?;
    let alloc_dir = alloc_state_dir(state_dir, spec.alloc);
    private_dir(&alloc_dir)?;
    private_dir(&spec.log_dir)?;
    let request = ShimRequest {
        alloc: spec.alloc.to_string(),
        binary: binary.clone(),
        argv: spec.argv.clone(),
        env: workload_env(spec),
        cwd: spec.cwd.clone(),
        uid: spec.uid,
        gid: spec.gid,
        procs_files: sandbox.procs_files(),
        oom: oom_source(sandbox),
        log_dir: spec.log_dir.clone(),
        log_limit_bytes: spec.log_limit_bytes,
        state_dir: alloc_dir.clone(),
    };
    let shim_err = |detail: String| LaunchError::Shim {
        shim: shim.to_owned(),
        detail,
    };
    let log_path = alloc_dir.join(SHIM_LOG_FILE);
    let shim_log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|source| LaunchError::Io {
            op: "open",
            path: log_path,
            source,
        })?;
    let mut starter = Command::new(shim)
        .arg(shim::START)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(shim_log)
        .spawn()
        .map_err(|e| shim_err(format!("cannot start: {e}")))?;
    let json = serde_json::to_vec(&request).map_err(|e| shim_err(e.to_string()))?;
    if let Some(mut stdin) = starter.stdin.take() {
        stdin
            .write_all(&json)
            .map_err(|e| shim_err(format!("cannot send the request: {e}")))?;
    }
    let stdout = starter.stdout.take();
    let status = starter.wait().map_err(|e| shim_err(format!("wait: {e}")))?;
    if !status.success() {
        return Err(shim_err(format!("starter exited with {status}")));
    }
    let mut line = String::new();
    if let Some(stdout) = stdout {
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| shim_err(format!("cannot read the reply: {e}")))?;
    }
    let reply: ShimReply =
        serde_json::from_str(&line).map_err(|e| shim_err(format!("bad reply {line:?}: {e}")))?;
    match reply {
        ShimReply::Started {
            shim_pid,
            workload_pid,
        } => Ok(LaunchedWorkload {
            shim_pid,
            workload_pid,
        }),
        ShimReply::SpawnFailed { errno } => Err(LaunchError::Spawn {
            binary,
            uid: spec.uid,
            cwd: spec.cwd.clone(),
            errno: nix::errno::Errno::from_raw(errno),
        }),
        ShimReply::Failed { detail } => Err(shim_err(detail)),
    }
}

/// The exit record of `alloc`, once its shim has written it.
pub fn read_exit(state_dir: &Path, alloc: AllocationId) -> Option<ExitRecord> {
    let text = fs::read(alloc_state_dir(state_dir, alloc).join(EXIT_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

#[cfg(test)]
mod tests;
