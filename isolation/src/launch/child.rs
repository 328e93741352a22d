//! The workload's steps between `fork` and `exec`, installed on a [`Command`] as a `pre_exec`
//! hook: join the sandbox, new session, `PR_SET_NO_NEW_PRIVS`, drop to the workload's uid and
//! gid, enter its working directory as that user.
//!
//! This is the crate's only `unsafe` for launching. Between `fork` and `exec` only
//! async-signal-safe calls are allowed (the parent may have had other threads holding locks,
//! the allocator's included): the hook allocates nothing, takes no lock and only makes raw
//! system calls through `libc` on values prepared before `fork` (open file descriptors, a
//! `CString`). Its error is an errno, which the standard library carries back to the parent's
//! `spawn` through its close-on-exec pipe.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// What the child needs, prepared before `fork`.
pub(crate) struct ChildPlan {
    /// Every `cgroup.procs` of the sandbox, opened for writing by the (root) shim.
    pub procs: Vec<File>,
    /// The workload's uid and gid.
    pub uid: u32,
    pub gid: u32,
    /// The working directory.
    pub cwd: CString,
}

impl ChildPlan {
    /// Opens the `procs_files` and converts `cwd`; errors name the path.
    pub(crate) fn prepare(
        procs_files: &[impl AsRef<Path>],
        uid: u32,
        gid: u32,
        cwd: &Path,
    ) -> Result<Self, (std::path::PathBuf, io::Error)> {
        let mut procs = Vec::with_capacity(procs_files.len());
        for path in procs_files {
            let path = path.as_ref();
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| (path.to_owned(), e))?;
            procs.push(file);
        }
        let cwd_c = CString::new(cwd.as_os_str().as_bytes())
            .map_err(|_| (cwd.to_owned(), io::Error::from_raw_os_error(libc::EINVAL)))?;
        Ok(Self {
            procs,
            uid,
            gid,
            cwd: cwd_c,
        })
    }

    /// Installs the steps on `cmd`.
    pub(crate) fn install(self, cmd: &mut Command) {
        let hook = move || self.run();
        // SAFETY: `pre_exec` requires the closure to be async-signal-safe. `ChildPlan::run`
        // only issues raw system calls (write, setsid, prctl, setgroups, setgid, setuid, chdir)
        // on file descriptors and a C string prepared before fork, allocates nothing and
        // takes no lock; building its `io::Error` from an errno does not allocate.
        unsafe {
            cmd.pre_exec(hook);
        }
    }

    /// Runs in the child between `fork` and `exec`.
    fn run(&self) -> io::Result<()> {
        for file in &self.procs {
            // Writing "0" to `cgroup.procs` moves the writing process itself (v1 and v2).
            // SAFETY: a valid open descriptor owned by `self` and a 1-byte static buffer;
            // write(2) is async-signal-safe.
            let written = unsafe { libc::write(file.as_raw_fd(), b"0".as_ptr().cast(), 1) };
            if written != 1 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: setsid(2) takes no arguments and is async-signal-safe; the child of `fork`
        // is not a process-group leader, so it succeeds.
        if unsafe { libc::setsid() } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: prctl(2) with integer arguments only; async-signal-safe system call.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: setgroups(2) with a zero length and a null list (no groups); a raw system
        // call. In the single-threaded child glibc's set*id wrappers need no cross-thread
        // broadcast.
        if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: setgid(2) with an integer; see setgroups above.
        if unsafe { libc::setgid(self.gid) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: setuid(2) with an integer, after setgid (as root); see setgroups above.
        if unsafe { libc::setuid(self.uid) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: chdir(2) with a NUL-terminated string owned by `self`, valid for the call.
        if unsafe { libc::chdir(self.cwd.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
