//! The rule list compiled into a `BPF_PROG_TYPE_CGROUP_DEVICE` program: cgroup v2's device
//! controller.
//!
//! The kernel calls the program with `r1` pointing at
//! `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }`, where
//! `access_type = (access << 16) | type`, and lets the access through when it returns 1. The
//! program is emitted here by a tiny assembler (only the opcodes it needs), with no aya and no
//! libbpf, so it is plain data the unit tests run in a userspace interpreter.
//!
//! # Layout
//! ```text
//!     r2 = ctx->access_type & 0xffff      ; type
//!     r3 = ctx->access_type >> 16         ; requested access
//!     r4 = ctx->major
//!     r5 = ctx->minor
//!     ; one block per rule, last rule first (the last matching rule decides):
//!     if r2 != TYPE goto next             ; not for DeviceKind::All
//!     r6 = r3 & ~ACCESS                   ; requested bits the rule lacks
//!     if r6 != 0 goto next
//!     if r4 != MAJOR goto next            ; not for a wildcard major
//!     if r5 != MINOR goto next            ; not for a wildcard minor
//!     r0 = ALLOW; exit
//! next:
//!     ...
//!     r0 = 0; exit                        ; default deny
//! ```
//! Majors and minors are compared as 64-bit registers against sign-extended 32-bit
//! immediates, which is exact because [`compile`] refuses numbers a `dev_t` cannot hold.

use super::rules::{DeviceError, DeviceKind, DeviceRule};

/// `BPF_DEVCG_DEV_BLOCK`.
pub const DEV_BLOCK: u32 = 1;
/// `BPF_DEVCG_DEV_CHAR`.
pub const DEV_CHAR: u32 = 2;
/// The most instructions an unprivileged-size program may hold (`BPF_MAXINSNS`); our lists are
/// far below it.
pub const MAX_INSNS: usize = 4096;

/// eBPF registers the program uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reg {
    /// Return value.
    R0 = 0,
    /// Context pointer on entry.
    R1 = 1,
    /// Device type.
    R2 = 2,
    /// Requested access.
    R3 = 3,
    /// Major.
    R4 = 4,
    /// Minor.
    R5 = 5,
    /// Scratch.
    R6 = 6,
}

// Opcodes: class | size/op | source, as in linux/bpf.h.
const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ALU64_MOV_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const ALU64_MOV_X: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
const ALU64_AND_K: u8 = 0x57; // BPF_ALU64 | BPF_AND | BPF_K
const ALU64_RSH_K: u8 = 0x77; // BPF_ALU64 | BPF_RSH | BPF_K
const JMP_JA: u8 = 0x05; // BPF_JMP | BPF_JA
const JMP_JEQ_K: u8 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JMP_JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const JMP_EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

/// One 8-byte eBPF instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u8,
    /// Destination register.
    pub dst: u8,
    /// Source register.
    pub src: u8,
    /// Offset (memory offset, or jump distance from the next instruction).
    pub off: i16,
    /// Immediate.
    pub imm: i32,
}

impl Insn {
    const fn new(code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> Self {
        Self {
            code,
            dst: dst as u8,
            src: src as u8,
            off,
            imm,
        }
    }

    /// `dst = *(u32 *)(src + off)`.
    pub const fn ldx_w(dst: Reg, src: Reg, off: i16) -> Self {
        Self::new(LDX_MEM_W, dst, src, off, 0)
    }

    /// `dst = imm`.
    pub const fn mov_imm(dst: Reg, imm: i32) -> Self {
        Self::new(ALU64_MOV_K, dst, Reg::R0, 0, imm)
    }

    /// `dst = src`.
    pub const fn mov_reg(dst: Reg, src: Reg) -> Self {
        Self::new(ALU64_MOV_X, dst, src, 0, 0)
    }

    /// `dst &= imm` (imm sign-extended to 64 bits).
    pub const fn and_imm(dst: Reg, imm: i32) -> Self {
        Self::new(ALU64_AND_K, dst, Reg::R0, 0, imm)
    }

    /// `dst >>= imm` (logical).
    pub const fn rsh_imm(dst: Reg, imm: i32) -> Self {
        Self::new(ALU64_RSH_K, dst, Reg::R0, 0, imm)
    }

    /// `if dst == imm goto +off`.
    pub const fn jeq_imm(dst: Reg, imm: i32, off: i16) -> Self {
        Self::new(JMP_JEQ_K, dst, Reg::R0, off, imm)
    }

    /// `if dst != imm goto +off`.
    pub const fn jne_imm(dst: Reg, imm: i32, off: i16) -> Self {
        Self::new(JMP_JNE_K, dst, Reg::R0, off, imm)
    }

    /// `goto +off`.
    pub const fn ja(off: i16) -> Self {
        Self::new(JMP_JA, Reg::R0, Reg::R0, off, 0)
    }

    /// `return r0`.
    pub const fn exit() -> Self {
        Self::new(JMP_EXIT, Reg::R0, Reg::R0, 0, 0)
    }

    /// The little-endian encoding: opcode, `src << 4 | dst`, offset, immediate.
    pub fn to_bytes(self) -> [u8; 8] {
        let off = self.off.to_le_bytes();
        let imm = self.imm.to_le_bytes();
        [
            self.code,
            (self.src << 4) | (self.dst & 0x0f),
            off[0],
            off[1],
            imm[0],
            imm[1],
            imm[2],
            imm[3],
        ]
    }
}

/// A compiled device program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    insns: Vec<Insn>,
}

impl Program {
    /// The instructions.
    pub fn insns(&self) -> &[Insn] {
        &self.insns
    }

    /// The program as the byte string interpreters and `bpf_attr.insns` take.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.insns.iter().flat_map(|i| i.to_bytes()).collect()
    }

    /// The program as 64-bit words, each holding one instruction's little-endian bytes: what
    /// `BPF_PROG_LOAD` reads through `bpf_attr.insns` on a little-endian host.
    pub fn to_words(&self) -> Vec<u64> {
        self.insns
            .iter()
            .map(|i| u64::from_le_bytes(i.to_bytes()))
            .collect()
    }
}

/// Immediate form of a checked device number (at most 20 bits, so it fits).
fn imm(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Offset from the instruction at `at` (0-based within a block of `len`) to the block's end.
fn to_end(len: usize, at: usize) -> i16 {
    i16::try_from(len - at - 1).unwrap_or(i16::MAX)
}

fn rule_block(rule: &DeviceRule) -> Vec<Insn> {
    // Guard checks jump to the end of the block; their targets are fixed once its length is.
    let mut guards: Vec<(u8, Reg, i32)> = Vec::new();
    match rule.kind {
        DeviceKind::Char => guards.push((JMP_JNE_K, Reg::R2, imm(DEV_CHAR))),
        DeviceKind::Block => guards.push((JMP_JNE_K, Reg::R2, imm(DEV_BLOCK))),
        DeviceKind::All => {}
    }
    let access_at = guards.len();
    guards.push((JMP_JNE_K, Reg::R6, 0));
    if let Some(major) = rule.major {
        guards.push((JMP_JNE_K, Reg::R4, imm(major)));
    }
    if let Some(minor) = rule.minor {
        guards.push((JMP_JNE_K, Reg::R5, imm(minor)));
    }
    let len = guards.len() + 2 + 2;
    let mut block = Vec::with_capacity(len);
    for (i, (code, reg, value)) in guards.into_iter().enumerate() {
        if i == access_at {
            block.push(Insn::mov_reg(Reg::R6, Reg::R3));
            // !bits as i32: sign extension keeps the high bits set, so any stray bit counts.
            block.push(Insn::and_imm(Reg::R6, !imm(rule.access.bits())));
        }
        let at = block.len();
        block.push(Insn::new(code, reg, Reg::R0, to_end(len, at), value));
    }
    block.push(Insn::mov_imm(Reg::R0, i32::from(rule.allow)));
    block.push(Insn::exit());
    debug_assert_eq!(block.len(), len);
    block
}

/// Compiles `rules` into a device program with the semantics of
/// [`evaluate`](super::rules::evaluate): the last rule whose type, major and minor match and
/// whose access covers the request decides; default deny.
pub fn compile(rules: &[DeviceRule]) -> Result<Program, DeviceError> {
    let mut insns = vec![
        Insn::ldx_w(Reg::R2, Reg::R1, 0),
        Insn::and_imm(Reg::R2, 0xffff),
        Insn::ldx_w(Reg::R3, Reg::R1, 0),
        Insn::rsh_imm(Reg::R3, 16),
        Insn::ldx_w(Reg::R4, Reg::R1, 4),
        Insn::ldx_w(Reg::R5, Reg::R1, 8),
    ];
    for rule in rules.iter().rev() {
        rule.check_range()?;
        insns.extend(rule_block(rule));
    }
    insns.push(Insn::mov_imm(Reg::R0, 0));
    insns.push(Insn::exit());
    if insns.len() > MAX_INSNS {
        return Err(DeviceError::ProgramTooLong {
            len: insns.len(),
            max: MAX_INSNS,
        });
    }
    Ok(Program { insns })
}
