//! Loading a compiled device [`Program`] into the kernel and attaching it to a cgroup v2
//! directory, through the raw `bpf()` syscall (no aya, no libbpf).
//!
//! - [`load`]: `bpf(BPF_PROG_LOAD)` with `BPF_PROG_TYPE_CGROUP_DEVICE`; a verifier refusal comes
//!   back as [`DeviceError::Verifier`] carrying the verifier log;
//! - [`attach`]: `bpf(BPF_PROG_ATTACH)` with `BPF_CGROUP_DEVICE` on the cgroup directory.
//!
//! Only the two `bpf_attr` members these commands read are written out, as `#[repr(C)]` structs
//! laid out as in `include/uapi/linux/bpf.h`; the kernel zero-fills the rest of its union.
//!
//! # Design
//! - License `"Apache-2.0"`, the product's: the program calls no helper at all, so the kernel's
//!   GPL-only helper check never applies to it.
//! - The load is first tried without a log (fast path); only on a refusal is it repeated with a
//!   verifier log buffer, so a successful load never fails for a log too small (`ENOSPC`).
//! - Attached with `BPF_F_ALLOW_MULTI`, as systemd and runc attach theirs: the kernel runs every
//!   program attached on the path from the cgroup to the root and lets an access through only if
//!   all of them allow it, so a program further down (a workload's own nested cgroup) can only
//!   narrow the sandbox's list, never widen it; and a multi-attached parent (a systemd slice
//!   with its own device program) accepts only multi-attached children, so `0` would fail with
//!   `EPERM` there. The consequence: attaching a second program to the same cgroup adds to the
//!   first instead of replacing it; a sandbox's list is fixed when it is created.
//! - The kernel keeps an attached program alive as long as the cgroup; the [`ProgramFd`] may be
//!   dropped after [`attach`].
//!
//! This is the crate's only `unsafe` code: three `bpf()` calls and taking ownership of the
//! descriptor the kernel returned.
#![allow(unsafe_code)]

use std::ffi::c_long;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::program::Program;
use super::rules::DeviceError;

/// `BPF_PROG_LOAD`.
const BPF_PROG_LOAD: c_long = 5;
/// `BPF_PROG_ATTACH`.
const BPF_PROG_ATTACH: c_long = 8;
/// `BPF_PROG_TYPE_CGROUP_DEVICE`.
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
/// `BPF_CGROUP_DEVICE`.
const BPF_CGROUP_DEVICE: u32 = 6;
/// `BPF_F_ALLOW_MULTI`.
pub const BPF_F_ALLOW_MULTI: u32 = 1 << 1;
/// The license string handed to the kernel (NUL-terminated).
const LICENSE: &[u8] = b"Apache-2.0\0";
/// The program's name as `bpftool prog` shows it (at most 15 bytes plus NUL).
const PROG_NAME: &[u8; 16] = b"gpuaas_devices\0\0";
/// Size of the verifier log buffer used after a refusal.
const LOG_SIZE: usize = 1 << 18;
/// `log_level` 1: the verifier explains a refusal.
const LOG_LEVEL: u32 = 1;
/// How often a load that fails with `EAGAIN` is retried (as libbpf does).
const EAGAIN_RETRIES: usize = 5;

/// `bpf_attr` as `BPF_PROG_LOAD` reads it, up to `expected_attach_type`.
#[repr(C)]
#[derive(Debug, Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `bpf_attr` as `BPF_PROG_ATTACH` reads it.
#[repr(C)]
#[derive(Debug, Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

const _: () = assert!(size_of::<ProgLoadAttr>() == 72);
const _: () = assert!(size_of::<ProgAttachAttr>() == 20);

/// A loaded device program: the descriptor `BPF_PROG_LOAD` returned, closed on drop.
#[derive(Debug)]
pub struct ProgramFd(OwnedFd);

impl AsFd for ProgramFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl From<ProgramFd> for OwnedFd {
    fn from(fd: ProgramFd) -> Self {
        fd.0
    }
}

/// Issues `bpf(cmd, attr, sizeof *attr)` and returns its non-negative result.
fn sys_bpf<T>(cmd: c_long, attr: &mut T) -> io::Result<c_long> {
    let size = libc::c_uint::try_from(size_of::<T>()).unwrap_or(libc::c_uint::MAX);
    // SAFETY: `attr` is a live, exclusively borrowed `#[repr(C)]` prefix of `union bpf_attr` for
    // `cmd`, and `size` is its exact size, so the kernel reads (and for BPF_PROG_LOAD writes
    // `log_true_size` beyond it only when the size covers that field, which ours does not) only
    // memory we own. Every pointer stored inside it points at memory the caller keeps alive for
    // the duration of the call.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `BPF_PROG_LOAD` of `insns` with an optional log buffer; retries `EAGAIN`.
fn prog_load(insns: &[u64], log: Option<&mut [u8]>) -> io::Result<OwnedFd> {
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(insns.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?,
        insns: insns.as_ptr() as u64,
        license: LICENSE.as_ptr() as u64,
        prog_name: *PROG_NAME,
        ..ProgLoadAttr::default()
    };
    if let Some(buf) = log {
        attr.log_level = LOG_LEVEL;
        attr.log_size = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        attr.log_buf = buf.as_mut_ptr() as u64;
    }
    let mut tries = 0;
    loop {
        match sys_bpf(BPF_PROG_LOAD, &mut attr) {
            Ok(fd) => {
                let fd =
                    i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
                // SAFETY: BPF_PROG_LOAD succeeded and returned a new descriptor that nothing
                // else owns; the OwnedFd takes sole ownership and closes it once.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && tries < EAGAIN_RETRIES => {
                tries += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Loads raw instruction words; the body of [`load`], separate so tests can load a program the
/// verifier refuses.
fn load_words(insns: &[u64]) -> Result<ProgramFd, DeviceError> {
    match prog_load(insns, None) {
        Ok(fd) => Ok(ProgramFd(fd)),
        // Only the verifier's refusals are worth a second pass with a log.
        Err(first) if matches!(first.raw_os_error(), Some(libc::EACCES | libc::EINVAL)) => {
            let mut buf = vec![0u8; LOG_SIZE];
            match prog_load(insns, Some(&mut buf)) {
                Ok(fd) => Ok(ProgramFd(fd)),
                Err(source) => {
                    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
                    let log = String::from_utf8_lossy(&buf[..end]).trim_end().to_owned();
                    Err(DeviceError::Verifier { source, log })
                }
            }
        }
        Err(source) => Err(DeviceError::Bpf {
            cmd: "BPF_PROG_LOAD",
            source,
        }),
    }
}

/// Loads `program` as a `BPF_PROG_TYPE_CGROUP_DEVICE` program. Needs `CAP_BPF` (root).
pub fn load(program: &Program) -> Result<ProgramFd, DeviceError> {
    load_words(&program.to_words())
}

/// Attaches the loaded program `fd` to the cgroup v2 directory `cgroup_dir` as its device
/// filter, with `BPF_F_ALLOW_MULTI` (see the module doc). Needs root.
pub fn attach(fd: &ProgramFd, cgroup_dir: &Path) -> Result<(), DeviceError> {
    let err = |op, source| DeviceError::Attach {
        path: cgroup_dir.to_owned(),
        op,
        source,
    };
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(cgroup_dir)
        .map_err(|e| err("open", e))?;
    let raw = |fd: i32| u32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF));
    let mut attr = ProgAttachAttr {
        target_fd: raw(dir.as_raw_fd()).map_err(|e| err("open", e))?,
        attach_bpf_fd: raw(fd.0.as_raw_fd()).map_err(|e| err("bpf(BPF_PROG_ATTACH)", e))?,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    sys_bpf(BPF_PROG_ATTACH, &mut attr).map_err(|e| err("bpf(BPF_PROG_ATTACH)", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::program::{Insn, Reg};

    #[test]
    fn attr_layout_matches_the_uapi_offsets() {
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, insns), 8);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, log_buf), 32);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, prog_name), 48);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, expected_attach_type), 68);
        assert_eq!(std::mem::offset_of!(ProgAttachAttr, attach_flags), 12);
    }

    #[test]
    fn verifier_refusal_carries_the_log() {
        if crate::testing::require_root().is_err() {
            return;
        }
        // `exit` with r0 never written: the verifier refuses ("R0 !read_ok").
        let words = [u64::from_le_bytes(Insn::exit().to_bytes())];
        match load_words(&words) {
            Err(DeviceError::Verifier { source, log }) => {
                assert_eq!(source.raw_os_error(), Some(libc::EACCES), "{log}");
                assert!(log.contains("R0"), "unexpected verifier log: {log}");
            }
            other => panic!("expected a verifier refusal, got {other:?}"),
        }
        // The same program with r0 set loads.
        let ok = [
            u64::from_le_bytes(Insn::mov_imm(Reg::R0, 0).to_bytes()),
            u64::from_le_bytes(Insn::exit().to_bytes()),
        ];
        load_words(&ok).expect("a trivial deny-all program loads");
    }
}
