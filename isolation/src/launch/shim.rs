//! The supervisor (`gpuaas-shim`), one per workload, in the spirit of conmon.
//!
//! Started by [`super::launch`] as `gpuaas-shim start` with a `ShimRequest` (JSON) on stdin.
//! The `start` process re-executes the binary as `gpuaas-shim supervise` and exits at once, so
//! the supervisor is not the agent's child; the supervisor calls `setsid`, so it is in a session
//! of its own and killing the agent (or its process group) leaves it running. The supervisor
//! opens the log files, forks the workload (`ChildPlan` does the in-child steps), answers one
//! JSON line (`ShimReply`) on stdout, copies the workload's stdout and stderr to the capped log
//! files, waits for it, and writes the [`ExitRecord`] atomically. Its own diagnostics go to
//! stderr, which the agent points at `<state_dir>/<alloc>/shim.log`.
//!
//! Not done yet: the supervisor does not forward signals or handle its own termination (it is
//! in its own session; the sandbox's release kills the workload, and the shim then records it).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::child::ChildPlan;
use super::{EXIT_FILE, ExitRecord, LAUNCH_ERROR_FILE, OomSource, ShimReply, ShimRequest};
use crate::cgroup::{v1, v2};

/// The first argument of the process the agent starts.
pub const START: &str = "start";
/// The first argument of the detached supervisor.
pub const SUPERVISE: &str = "supervise";
/// How long the supervisor waits, after the workload exited, for its log pipes to drain (a
/// background process of the workload may hold them open for ever).
pub const LOG_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Written once to a log file that reached its cap.
pub const TRUNCATION_MARKER: &str = "\n[gpuaas: log truncated: size limit reached]\n";

/// The shim binary's `main`: dispatches on the first argument.
pub fn main() -> ExitCode {
    let mode = std::env::args().nth(1).unwrap_or_default();
    match mode.as_str() {
        START => start(),
        SUPERVISE => supervise(),
        other => {
            eprintln!("gpuaas-shim: unknown mode {other:?} (want {START} or {SUPERVISE})");
            ExitCode::from(2)
        }
    }
}

/// Re-executes this binary as the supervisor, with the same stdio, and returns.
fn start() -> ExitCode {
    let spawned = std::env::current_exe().and_then(|exe| {
        Command::new(exe)
            .arg(SUPERVISE)
            .env_clear()
            .stdin(Stdio::inherit())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
    });
    match spawned {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gpuaas-shim: cannot start the supervisor: {e}");
            ExitCode::FAILURE
        }
    }
}

fn reply(reply: &ShimReply) {
    let mut line = serde_json::to_vec(reply).unwrap_or_default();
    line.push(b'\n');
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_all(&line).and_then(|()| out.flush()) {
        eprintln!("gpuaas-shim: cannot answer the agent: {e}");
    }
}

fn fail(detail: String) -> ExitCode {
    eprintln!("gpuaas-shim: {detail}");
    reply(&ShimReply::Failed { detail });
    ExitCode::FAILURE
}

fn supervise() -> ExitCode {
    if let Err(e) = nix::unistd::setsid() {
        return fail(format!("setsid: {e}"));
    }
    let mut input = Vec::new();
    if let Err(e) = io::stdin().read_to_end(&mut input) {
        return fail(format!("cannot read the request: {e}"));
    }
    let request: ShimRequest = match serde_json::from_slice(&input) {
        Ok(request) => request,
        Err(e) => return fail(format!("bad request: {e}")),
    };
    match run(&request) {
        Ok(code) => code,
        Err(detail) => fail(detail),
    }
}

/// Opens a log file for the shim only: created or truncated, mode 0600.
fn open_log(dir: &Path, name: &str) -> Result<File, String> {
    let path = dir.join(name);
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))
}

fn run(request: &ShimRequest) -> Result<ExitCode, String> {
    let stdout_log = open_log(&request.log_dir, "stdout.log")?;
    let stderr_log = open_log(&request.log_dir, "stderr.log")?;
    let plan = ChildPlan::prepare(&request.procs_files, request.uid, request.gid, &request.cwd)
        .map_err(|(path, e)| format!("cannot prepare {}: {e}", path.display()))?;
    let mut cmd = Command::new(&request.binary);
    if let Some(arg0) = request.argv.first() {
        cmd.arg0(arg0);
    }
    cmd.args(request.argv.iter().skip(1))
        .env_clear()
        .envs(request.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    plan.install(&mut cmd);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let Some(errno) = e.raw_os_error() else {
                return Err(format!("cannot spawn {}: {e}", request.binary.display()));
            };
            let text = format!("cannot start {}: {e}\n", request.binary.display());
            eprint!("gpuaas-shim: {text}");
            if let Err(e) = write_atomic(&request.state_dir, LAUNCH_ERROR_FILE, text.as_bytes()) {
                eprintln!("gpuaas-shim: {e}");
            }
            reply(&ShimReply::SpawnFailed { errno });
            return Ok(ExitCode::FAILURE);
        }
    };
    let workload_pid = i32::try_from(child.id()).map_err(|e| e.to_string())?;
    reply(&ShimReply::Started {
        shim_pid: i32::try_from(std::process::id()).map_err(|e| e.to_string())?,
        workload_pid,
    });
    let (done_tx, done_rx) = mpsc::channel();
    let mut copiers = 0;
    let pipes: [(Option<Box<dyn Read + Send>>, File); 2] = [
        (child.stdout.take().map(|p| Box::new(p) as _), stdout_log),
        (child.stderr.take().map(|p| Box::new(p) as _), stderr_log),
    ];
    for (pipe, log) in pipes {
        if let Some(pipe) = pipe {
            let done = done_tx.clone();
            let limit = request.log_limit_bytes;
            copiers += 1;
            thread::spawn(move || {
                if let Err(e) = copy_capped(pipe, log, limit) {
                    eprintln!("gpuaas-shim: log copy: {e}");
                }
                let _ = done.send(());
            });
        }
    }
    let status = child.wait().map_err(|e| format!("wait: {e}"))?;
    let deadline = Instant::now() + LOG_DRAIN_TIMEOUT;
    for _ in 0..copiers {
        let left = deadline.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            eprintln!("gpuaas-shim: log pipes still open after the workload exited");
            break;
        }
    }
    let oom_killed = match &request.oom {
        OomSource::V1(dir) => v1::oom_killed(dir),
        OomSource::V2(dir) => v2::oom_killed(dir),
        OomSource::None => Ok(false),
    }
    .unwrap_or_else(|e| {
        eprintln!("gpuaas-shim: oom flag of {}: {e}", request.alloc);
        false
    });
    let record = ExitRecord {
        exit_code: status.code(),
        signal: status.signal(),
        oom_killed,
    };
    let json = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
    write_atomic(&request.state_dir, EXIT_FILE, &json)?;
    Ok(ExitCode::SUCCESS)
}

/// Copies `pipe` to `log` until end of file, keeping at most `limit` bytes and then writing
/// [`TRUNCATION_MARKER`] once; the rest is read and dropped, so the workload never blocks.
pub fn copy_capped(mut pipe: impl Read, mut log: impl Write, limit: u64) -> io::Result<()> {
    let mut written: u64 = 0;
    let mut truncated = false;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if truncated {
            continue;
        }
        let room = usize::try_from(limit - written).unwrap_or(usize::MAX);
        let keep = n.min(room);
        log.write_all(&buf[..keep])?;
        written += keep as u64;
        if keep < n {
            log.write_all(TRUNCATION_MARKER.as_bytes())?;
            truncated = true;
        }
    }
}

/// Writes `dir/name` through a temporary file, `fsync` and `rename`, then syncs `dir`.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), String> {
    let target: PathBuf = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let err = |path: &Path, e: io::Error| format!("cannot write {}: {e}", path.display());
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| err(&tmp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| err(&tmp, e))?;
    fs::rename(&tmp, &target).map_err(|e| err(&target, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err(dir, e))
}
