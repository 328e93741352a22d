//! One allocation's cgroup sandbox: created with its limits and device list, joined by
//! processes, and destroyed with everything in it.
//!
//! [`Sandbox::create`] makes `<root>/alloc-<id>` under every v1 controller the sandbox needs
//! ([`V1_CONTROLLERS`], a joint mount such as `cpu,cpuacct` once), or one directory on a pure v2
//! host, writes the [`Limits`] and the device allow-list ([`devices::v1::apply`] on v1; the eBPF
//! program attached to `<unified>/<root>/alloc-<id>` on hybrid and v2 hosts), and removes every
//! directory it made if any step fails: there is no half-made sandbox. The shared `<root>`
//! directories are made when missing and kept.
//!
//! [`Sandbox::destroy`] treats the cgroup, not the process tree, as the unit: SIGTERM to every
//! process in it, a grace period, then (v1) freeze, SIGKILL, thaw, or (v2) `cgroup.kill`, until
//! it is empty, then `rmdir`. A dropped [`Sandbox`] leaves the cgroup as it is (the workload
//! outlives an agent restart and is re-adopted).

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use gpuaas_proto::AllocationId;
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::detect::CgroupLayout;
use super::file;
use super::limits::Limits;
use super::{v1, v2};
use crate::devices::{self, DeviceRule, attach};

mod error;
pub use error::SandboxError;

/// The default root directory under each hierarchy.
pub const DEFAULT_ROOT: &str = "gpuaas";
/// The v1 controllers a sandbox uses.
pub const V1_CONTROLLERS: &[&str] = &["memory", "cpu", "cpuset", "pids", "freezer", "devices"];
/// How long [`Sandbox::destroy`] waits for a killed cgroup to empty.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `rmdir` is retried while the kernel still reports `EBUSY`.
pub const RMDIR_TIMEOUT: Duration = Duration::from_secs(1);
/// How often `cgroup.procs` is polled.
const POLL: Duration = Duration::from_millis(5);

/// What [`Sandbox::destroy`] did; the cgroup is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    /// Processes found in the sandbox at release (each sent SIGTERM, and SIGKILL if forced).
    pub killed: usize,
    /// Whether some outlived the grace period and were SIGKILLed.
    pub forced: bool,
}

/// Which hierarchy drives the sandbox's resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Driver {
    V1,
    V2,
}

/// An allocation's cgroups.
#[derive(Debug)]
pub struct Sandbox {
    alloc: AllocationId,
    driver: Driver,
    /// `(controller, dir)`, one per distinct mount.
    dirs: Vec<(&'static str, PathBuf)>,
}

impl Sandbox {
    /// Creates the sandbox of `alloc` under `root_name` ([`DEFAULT_ROOT`]) in every hierarchy of
    /// `layout`, with `limits` and the device allow-list `devices`. On error nothing it made is
    /// left behind.
    pub fn create(
        layout: &CgroupLayout,
        root_name: &str,
        alloc: AllocationId,
        limits: &Limits,
        devices: &[DeviceRule],
    ) -> Result<Self, SandboxError> {
        limits.validate()?;
        let mut mounts: Vec<(&'static str, PathBuf)> = Vec::new();
        let driver = match layout {
            CgroupLayout::Unified { .. } => Driver::V2,
            CgroupLayout::Legacy { .. } | CgroupLayout::Hybrid { .. } => Driver::V1,
        };
        if driver == Driver::V1 {
            for &controller in V1_CONTROLLERS {
                let mount = layout
                    .v1_controller(controller)
                    .ok_or(SandboxError::MissingController { controller })?;
                if !mounts.iter().any(|(_, m)| m == mount) {
                    mounts.push((controller, mount.to_owned()));
                }
            }
        }
        if let Some(unified) = layout.unified() {
            mounts.push(("unified", unified.to_owned()));
        }
        let mut sandbox = Self {
            alloc,
            driver,
            dirs: Vec::new(),
        };
        match sandbox.build(&mounts, root_name, limits, devices) {
            Ok(()) => Ok(sandbox),
            Err(e) => {
                if let Err(cleanup) = sandbox.remove_dirs() {
                    tracing::warn!(alloc = %alloc, error = %cleanup, "sandbox rollback incomplete");
                }
                Err(e)
            }
        }
    }

    fn build(
        &mut self,
        mounts: &[(&'static str, PathBuf)],
        root_name: &str,
        limits: &Limits,
        rules: &[DeviceRule],
    ) -> Result<(), SandboxError> {
        let name = self.alloc.to_string();
        for (controller, mount) in mounts {
            let root = mount.join(root_name);
            make_dir(controller, &root, true)?;
            let file_err = |source| SandboxError::File { controller, source };
            if *controller == "cpuset" {
                v1::cpuset_fill_from_parent(&root).map_err(file_err)?;
            }
            if self.driver == Driver::V2 {
                v2::enable_controllers(mount).map_err(file_err)?;
                v2::enable_controllers(&root).map_err(file_err)?;
            }
            let dir = root.join(&name);
            make_dir(controller, &dir, false)?;
            self.dirs.push((controller, dir));
        }
        for (controller, dir) in &self.dirs {
            let file_err = |source| SandboxError::File { controller, source };
            match (*controller, self.driver) {
                ("memory", _) => {
                    if let Some(bytes) = limits.memory_bytes {
                        v1::memory(dir, bytes, limits.swap).map_err(file_err)?;
                    }
                }
                ("cpu", _) => {
                    if let Some(quota) = limits.cpu {
                        v1::cpu(dir, quota).map_err(file_err)?;
                    }
                }
                ("cpuset", _) => v1::cpuset(dir, limits.cpuset.as_ref()).map_err(file_err)?,
                ("pids", _) => {
                    if let Some(max) = limits.pids_max {
                        v1::pids(dir, max).map_err(file_err)?;
                    }
                }
                ("devices", _) => {
                    let devices_err = |source| SandboxError::Devices {
                        path: dir.clone(),
                        source,
                    };
                    let writes = devices::v1::render(rules).map_err(devices_err)?;
                    devices::v1::apply(dir, &writes).map_err(devices_err)?;
                }
                ("unified", driver) => {
                    if driver == Driver::V2 {
                        v2::apply(dir, limits).map_err(file_err)?;
                    }
                    let devices_err = |source| SandboxError::Devices {
                        path: dir.clone(),
                        source,
                    };
                    let program = devices::compile(rules).map_err(devices_err)?;
                    let fd = attach::load(&program).map_err(devices_err)?;
                    attach::attach(&fd, dir).map_err(devices_err)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The allocation this sandbox belongs to.
    pub fn alloc(&self) -> AllocationId {
        self.alloc
    }

    /// The sandbox's directories, `(controller, path)`; `unified` names the v2 one.
    pub fn dirs(&self) -> impl Iterator<Item = (&'static str, &Path)> {
        self.dirs.iter().map(|(c, d)| (*c, d.as_path()))
    }

    /// The `cgroup.procs` file of every directory: a process joins the sandbox by writing its
    /// pid to each (what [`Sandbox::add_process`] does; a workload's shell may do it itself
    /// before `exec`).
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|(_, d)| d.join("cgroup.procs"))
            .collect()
    }

    /// Moves process `pid` into every directory of the sandbox.
    pub fn add_process(&self, pid: i32) -> Result<(), SandboxError> {
        for (controller, dir) in &self.dirs {
            file::write(dir, "cgroup.procs", &pid.to_string())
                .map_err(|source| SandboxError::File { controller, source })?;
        }
        Ok(())
    }

    /// The processes in the sandbox (the union over its directories), sorted.
    pub fn pids(&self) -> Result<Vec<i32>, SandboxError> {
        let mut all = BTreeSet::new();
        for (controller, dir) in &self.dirs {
            match file::procs(dir) {
                Ok(pids) => all.extend(pids),
                Err(source) => return Err(SandboxError::File { controller, source }),
            }
        }
        Ok(all.into_iter().collect())
    }

    /// Whether the memory controller's OOM killer has killed a process of the sandbox.
    pub fn oom_killed(&self) -> Result<bool, SandboxError> {
        let (controller, dir) = match self.driver {
            Driver::V1 => self.dir("memory"),
            Driver::V2 => self.dir("unified"),
        }?;
        let read = match self.driver {
            Driver::V1 => v1::oom_killed(dir),
            Driver::V2 => v2::oom_killed(dir),
        };
        read.map_err(|source| SandboxError::File { controller, source })
    }

    fn dir(&self, want: &'static str) -> Result<(&'static str, &Path), SandboxError> {
        self.dirs
            .iter()
            .find(|(c, _)| *c == want)
            .map(|(c, d)| (*c, d.as_path()))
            .ok_or(SandboxError::MissingController { controller: want })
    }

    /// Stops everything in the sandbox and removes its directories: SIGTERM to every process,
    /// up to `grace` for them to exit, then SIGKILL to what is left (v1: frozen first, so
    /// nothing forks in between; v2: `cgroup.kill` when the kernel has it), a bounded wait
    /// ([`KILL_TIMEOUT`]) for the cgroup to empty, and `rmdir`.
    pub fn destroy(mut self, grace: Duration) -> Result<Released, SandboxError> {
        let found = self.pids()?;
        for &pid in &found {
            signal(pid, Signal::SIGTERM)?;
        }
        let mut seen: BTreeSet<i32> = found.into_iter().collect();
        let deadline = Instant::now() + grace;
        let mut left = self.pids()?;
        while !left.is_empty() && Instant::now() < deadline {
            sleep(POLL);
            seen.extend(&left);
            left = self.pids()?;
        }
        let forced = !left.is_empty();
        if forced {
            let start = Instant::now();
            while !left.is_empty() {
                seen.extend(&left);
                self.kill_all()?;
                if start.elapsed() >= KILL_TIMEOUT {
                    let path = self.dirs.first().map(|(_, d)| d.clone());
                    return Err(SandboxError::NotEmpty {
                        path: path.unwrap_or_default(),
                        pids: left,
                        waited: start.elapsed(),
                    });
                }
                sleep(POLL);
                left = self.pids()?;
            }
        }
        self.remove_dirs()?;
        Ok(Released {
            killed: seen.len(),
            forced,
        })
    }

    /// One round of SIGKILL to everything in the sandbox.
    fn kill_all(&self) -> Result<(), SandboxError> {
        if self.driver == Driver::V2 {
            let (controller, dir) = self.dir("unified")?;
            if dir.join("cgroup.kill").exists() {
                return file::write(dir, "cgroup.kill", "1")
                    .map_err(|source| SandboxError::File { controller, source });
            }
            for pid in self.pids()? {
                signal(pid, Signal::SIGKILL)?;
            }
            return Ok(());
        }
        let (controller, freezer) = self.dir("freezer")?;
        let file_err = |source| SandboxError::File { controller, source };
        v1::freeze(freezer).map_err(file_err)?;
        let killed = self.pids().and_then(|pids| {
            pids.into_iter()
                .try_for_each(|pid| signal(pid, Signal::SIGKILL))
        });
        // Thaw even when a kill failed: a frozen sandbox must not outlive this call.
        v1::thaw(freezer).map_err(file_err)?;
        killed
    }

    /// Removes every directory made so far, children before nothing else (roots are kept),
    /// retrying while the kernel still reports `EBUSY`; the first failure is returned after
    /// trying all.
    fn remove_dirs(&mut self) -> Result<(), SandboxError> {
        let mut first = None;
        while let Some((controller, dir)) = self.dirs.pop() {
            let deadline = Instant::now() + RMDIR_TIMEOUT;
            let result = loop {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => break Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break Ok(()),
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                    {
                        sleep(POLL);
                    }
                    Err(source) => break Err(source),
                }
            };
            if let Err(source) = result {
                first.get_or_insert(SandboxError::Dir {
                    controller,
                    op: "rmdir",
                    path: dir,
                    source,
                });
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// Sends `signal` to `pid`; a process that has exited meanwhile (`ESRCH`) is not an error.
fn signal(pid: i32, signal: Signal) -> Result<(), SandboxError> {
    match kill(Pid::from_raw(pid), signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(errno) => Err(SandboxError::Signal { pid, signal, errno }),
    }
}

/// Makes `dir`; an existing one is fine for a shared root (`shared`) and an error otherwise.
fn make_dir(controller: &'static str, dir: &Path, shared: bool) -> Result<(), SandboxError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if shared {
                Ok(())
            } else {
                Err(SandboxError::Exists {
                    controller,
                    path: dir.to_owned(),
                })
            }
        }
        Err(source) => Err(SandboxError::Dir {
            controller,
            op: "mkdir",
            path: dir.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests;
