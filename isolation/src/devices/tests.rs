//! Tests of the device policy: the parsers, the allow-list, the v1 lines, and the compiled eBPF
//! program run in the `rbpf` userspace interpreter against the reference evaluator.

use std::fmt::Write as _;
use std::path::Path;

use proptest::prelude::*;

use super::program::{DEV_BLOCK, DEV_CHAR, Insn, Reg};
use super::rules::default_rules;
use super::v1::{self, V1File};
use super::*;

const UVM: u32 = 510;
const CAPS: u32 = 508;

const PROC_DEVICES: &str = "Character devices:
  1 mem
  4 /dev/vc/0
  4 tty
  5 /dev/tty
  5 /dev/console
  5 /dev/ptmx
 10 misc
136 pts
195 nvidia-frontend
231 infiniband_verbs
508 nvidia-caps
510 nvidia-uvm

Block devices:
  7 loop
  8 sd
259 blkext
";

/// A `mig-minors` file laid out as the driver writes it, for `gpus` GPUs.
fn mig_minors_text(gpus: u32) -> String {
    let mut text = String::from("config 1\nmonitor 2\n");
    for gpu in 0..gpus {
        for gi in 0..15 {
            let base = 3 + 135 * gpu + 9 * gi;
            writeln!(text, "gpu{gpu}/gi{gi}/access {base}").unwrap();
            for ci in 0..8 {
                writeln!(text, "gpu{gpu}/gi{gi}/ci{ci}/access {}", base + 1 + ci).unwrap();
            }
        }
    }
    text
}

fn host() -> HostDevices {
    let path = Path::new("/proc/driver/nvidia-caps/mig-minors");
    HostDevices {
        majors: ProcDevices::parse(Path::new("/proc/devices"), PROC_DEVICES).unwrap(),
        mig_minors: Some(MigMinors::parse(path, &mig_minors_text(2)).unwrap()),
        mig_minors_path: path.to_owned(),
    }
}

fn gpus(minors: &[u32]) -> DeviceRequest {
    DeviceRequest {
        gpus: minors.to_vec(),
        mig: Vec::new(),
    }
}

/// Runs `program` in rbpf over a `bpf_cgroup_dev_ctx`; true when it returns 1.
fn run(program: &Program, ty: u32, major: u32, minor: u32, access: u32) -> bool {
    let bytes = program.to_bytes();
    let mut ctx = [0u8; 12];
    ctx[0..4].copy_from_slice(&((access << 16) | ty).to_le_bytes());
    ctx[4..8].copy_from_slice(&major.to_le_bytes());
    ctx[8..12].copy_from_slice(&minor.to_le_bytes());
    let vm = rbpf::EbpfVmRaw::new(Some(&bytes)).expect("program passes rbpf's verifier");
    match vm.execute_program(&mut ctx).expect("program runs") {
        0 => false,
        1 => true,
        other => panic!("device program returned {other}"),
    }
}

const R: u32 = 2;
const W: u32 = 4;
const M: u32 = 1;

#[test]
fn access_renders_and_covers() {
    assert_eq!(Access::RWM.to_string(), "rwm");
    assert_eq!(Access::RW.to_string(), "rw");
    assert_eq!(Access::READ.to_string(), "r");
    assert_eq!(Access::MKNOD.union(Access::WRITE).to_string(), "wm");
    assert!(Access::RW.covers(R | W));
    assert!(Access::RW.covers(0));
    assert!(!Access::RW.covers(M));
    assert!(!Access::RWM.covers(8));
}

#[test]
fn proc_devices_keeps_character_majors() {
    let devices = ProcDevices::parse(Path::new("/proc/devices"), PROC_DEVICES).unwrap();
    assert_eq!(devices.char_major("nvidia-uvm"), Some(UVM));
    assert_eq!(devices.char_major("nvidia-caps"), Some(CAPS));
    assert_eq!(devices.char_major("nvidia-frontend"), Some(195));
    assert_eq!(devices.char_major("tty"), Some(4));
    assert_eq!(
        devices.char_major("sd"),
        None,
        "block majors are not character majors"
    );
    let err = devices.require_char_major("nvidia-nvlink").unwrap_err();
    assert_eq!(
        err.to_string(),
        "no character device \"nvidia-nvlink\" in /proc/devices: is the driver loaded?"
    );
}

#[test]
fn proc_devices_names_file_and_line_of_a_bad_line() {
    let err = ProcDevices::parse(
        Path::new("/x/devices"),
        "Character devices:\n  1 mem\nx y\n",
    )
    .unwrap_err();
    assert!(
        matches!(err, DeviceError::Malformed { line: 3, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("/x/devices:3: unexpected line \"x y\"")
    );
}

#[test]
fn mig_minors_are_read_from_the_file() {
    let path = Path::new("/proc/driver/nvidia-caps/mig-minors");
    let minors = MigMinors::parse(path, &mig_minors_text(2)).unwrap();
    assert_eq!(minors.gi_minor(0, 0).unwrap(), 3);
    assert_eq!(minors.ci_minor(0, 0, 0).unwrap(), 4);
    // The user guide's example: gpu0/gi1 -> 12, its CIs 13, 14, 15.
    assert_eq!(minors.gi_minor(0, 1).unwrap(), 12);
    assert_eq!(minors.ci_minor(0, 1, 2).unwrap(), 15);
    assert_eq!(minors.ci_minor(1, 14, 7).unwrap(), 3 + 135 + 9 * 14 + 8);

    // Whatever the file says wins over any arithmetic.
    let odd = MigMinors::parse(
        path,
        "config 1\ngpu0/gi1/access 40\ngpu0/gi1/ci0/access 41\n",
    )
    .unwrap();
    assert_eq!(odd.gi_minor(0, 1).unwrap(), 40);
    assert_eq!(odd.ci_minor(0, 1, 0).unwrap(), 41);
    let err = odd.gi_minor(2, 0).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no capability \"gpu2/gi0/access\" in /proc/driver/nvidia-caps/mig-minors"
    );
}

#[test]
fn mig_minors_names_file_and_line_of_a_bad_line() {
    let path = Path::new("/m");
    for (text, line) in [
        ("config 1\nmonitor\n", 2),
        ("config one\n", 1),
        ("config 1\n\ngpu0/gi0/access 3 4\n", 3),
        ("config 99999999\n", 1),
    ] {
        let err = MigMinors::parse(path, text).unwrap_err();
        assert!(
            matches!(&err, DeviceError::Malformed { line: l, .. } if *l == line),
            "{text:?}: {err:?}"
        );
    }
}

#[test]
fn host_devices_reads_a_proc_tree() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("devices"), PROC_DEVICES).unwrap();
    let without = HostDevices::read(dir.path()).unwrap();
    assert_eq!(without.mig_minors, None);
    assert_eq!(without.majors.char_major("nvidia-uvm"), Some(UVM));

    std::fs::create_dir_all(dir.path().join("driver/nvidia-caps")).unwrap();
    std::fs::write(
        dir.path().join("driver/nvidia-caps/mig-minors"),
        mig_minors_text(1),
    )
    .unwrap();
    let with = HostDevices::read(dir.path()).unwrap();
    assert_eq!(with.mig_minors.unwrap().gi_minor(0, 0).unwrap(), 3);

    let err = HostDevices::read(&dir.path().join("missing")).unwrap_err();
    assert!(matches!(err, DeviceError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains("missing/devices"), "{err}");
}

#[test]
fn gpu_less_allocation_gets_no_nvidia_node() {
    let rules = allow_list(&DeviceRequest::default(), &host(), &SiteDevices::default()).unwrap();
    assert_eq!(rules, default_rules());
    assert!(
        rules
            .iter()
            .all(|r| r.major != Some(195) && r.major != Some(UVM))
    );
    let program = compile(&rules).unwrap();
    assert!(!run(&program, DEV_CHAR, 195, 255, R | W), "nvidiactl");
    assert!(!run(&program, DEV_CHAR, 195, 0, R), "a gpu");
    assert!(!run(&program, DEV_CHAR, UVM, 0, R), "nvidia-uvm");
    // No NVIDIA driver at all is fine for a GPU-less allocation.
    let bare = HostDevices {
        majors: ProcDevices::parse(Path::new("/proc/devices"), "Character devices:\n1 mem\n")
            .unwrap(),
        mig_minors: None,
        mig_minors_path: "/nowhere".into(),
    };
    assert_eq!(
        allow_list(&DeviceRequest::default(), &bare, &SiteDevices::default()).unwrap(),
        rules
    );
}

#[test]
fn whole_gpu_allocation_list() {
    let rules = allow_list(&gpus(&[0, 3]), &host(), &SiteDevices::default()).unwrap();
    let mut expected = default_rules();
    expected.extend([
        DeviceRule::allow_char(195, 255, Access::RW),
        DeviceRule::allow_char(UVM, 0, Access::RW),
        DeviceRule::allow_char(UVM, 1, Access::RW),
        DeviceRule::allow_char(195, 0, Access::RW),
        DeviceRule::allow_char(195, 3, Access::RW),
    ]);
    assert_eq!(rules, expected);
}

#[test]
fn mig_allocation_list_and_errors() {
    let slice = MigSlice {
        gpu_minor: 1,
        gi: 2,
        ci: 0,
    };
    let request = DeviceRequest {
        gpus: Vec::new(),
        mig: vec![slice],
    };
    let rules = allow_list(&request, &host(), &SiteDevices::default()).unwrap();
    let gi = 3 + 135 + 9 * 2;
    let tail = &rules[rules.len() - 6..];
    assert_eq!(
        tail,
        [
            DeviceRule::allow_char(195, 255, Access::RW),
            DeviceRule::allow_char(UVM, 0, Access::RW),
            DeviceRule::allow_char(UVM, 1, Access::RW),
            DeviceRule::allow_char(195, 1, Access::RW),
            DeviceRule::allow_char(CAPS, gi, Access::READ),
            DeviceRule::allow_char(CAPS, gi + 1, Access::READ),
        ]
    );

    let mut no_minors = host();
    no_minors.mig_minors = None;
    let err = allow_list(&request, &no_minors, &SiteDevices::default()).unwrap_err();
    assert!(matches!(err, DeviceError::NoMigMinors { .. }), "{err:?}");

    let mut no_caps = host();
    no_caps.majors = ProcDevices::parse(
        Path::new("/proc/devices"),
        "Character devices:\n195 nvidia-frontend\n510 nvidia-uvm\n",
    )
    .unwrap();
    let err = allow_list(&request, &no_caps, &SiteDevices::default()).unwrap_err();
    assert!(
        matches!(
            err,
            DeviceError::MissingMajor {
                name: "nvidia-caps",
                ..
            }
        ),
        "{err:?}"
    );
    // Whole GPUs do not need nvidia-caps, but do need nvidia-uvm.
    assert!(allow_list(&gpus(&[0]), &no_caps, &SiteDevices::default()).is_ok());
    let mut no_uvm = host();
    no_uvm.majors = ProcDevices::parse(
        Path::new("/proc/devices"),
        "Character devices:\n195 nvidia-frontend\n",
    )
    .unwrap();
    let err = allow_list(&gpus(&[0]), &no_uvm, &SiteDevices::default()).unwrap_err();
    assert!(
        matches!(
            err,
            DeviceError::MissingMajor {
                name: "nvidia-uvm",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn site_devices_are_appended_and_checked() {
    let ib = DeviceRule {
        kind: DeviceKind::Char,
        major: Some(231),
        minor: None,
        access: Access::RW,
        allow: true,
    };
    let site = SiteDevices { extra: vec![ib] };
    let rules = allow_list(&DeviceRequest::default(), &host(), &site).unwrap();
    assert_eq!(rules.last(), Some(&ib));
    assert!(run(&compile(&rules).unwrap(), DEV_CHAR, 231, 64, R | W));

    let huge = SiteDevices {
        extra: vec![DeviceRule::allow_char(5000, 0, Access::READ)],
    };
    let err = allow_list(&DeviceRequest::default(), &host(), &huge).unwrap_err();
    assert!(
        matches!(err, DeviceError::OutOfRange { major: 5000, .. }),
        "{err:?}"
    );
}

#[test]
fn v1_lines_are_exact() {
    let rules = allow_list(&gpus(&[0]), &host(), &SiteDevices::default()).unwrap();
    let writes = v1::render(&rules).unwrap();
    let lines: Vec<(V1File, &str)> = writes.iter().map(|w| (w.file, w.line.as_str())).collect();
    let allow = |l| (V1File::Allow, l);
    assert_eq!(
        lines,
        [
            (V1File::Deny, "a"),
            allow("c 1:3 rwm"),
            allow("c 1:5 rwm"),
            allow("c 1:7 rwm"),
            allow("c 1:8 rwm"),
            allow("c 1:9 rwm"),
            allow("c 5:0 rwm"),
            allow("c 5:2 rwm"),
            allow("c 136:* rwm"),
            allow("c 195:255 rw"),
            allow("c 510:0 rw"),
            allow("c 510:1 rw"),
            allow("c 195:0 rw"),
        ]
    );
    assert_eq!(V1File::Deny.to_string(), "devices.deny");
    assert_eq!(V1File::Allow.file_name(), "devices.allow");
}

#[test]
fn v1_renders_all_kinds_and_deny_rules() {
    let any = |major, minor, access, allow| DeviceRule {
        kind: DeviceKind::All,
        major,
        minor,
        access,
        allow,
    };
    let block = DeviceRule {
        kind: DeviceKind::Block,
        major: Some(8),
        minor: None,
        access: Access::READ,
        allow: false,
    };
    let writes = v1::render(&[
        any(None, None, Access::RWM, true),
        any(None, None, Access::MKNOD, true),
        block,
    ])
    .unwrap();
    let lines: Vec<String> = writes
        .iter()
        .map(|w| format!("{} {}", w.file, w.line))
        .collect();
    assert_eq!(
        lines,
        [
            "devices.deny a",
            "devices.allow a",
            "devices.allow c *:* m",
            "devices.allow b *:* m",
            "devices.deny b 8:* r",
        ]
    );
}

#[test]
fn instruction_encoding() {
    assert_eq!(
        Insn::ldx_w(Reg::R4, Reg::R1, 4).to_bytes(),
        [0x61, 0x14, 4, 0, 0, 0, 0, 0]
    );
    assert_eq!(
        Insn::mov_imm(Reg::R0, 1).to_bytes(),
        [0xb7, 0, 0, 0, 1, 0, 0, 0]
    );
    assert_eq!(
        Insn::mov_reg(Reg::R6, Reg::R3).to_bytes(),
        [0xbf, 0x36, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(
        Insn::and_imm(Reg::R6, !6).to_bytes(),
        [0x57, 6, 0, 0, 0xf9, 0xff, 0xff, 0xff]
    );
    assert_eq!(
        Insn::rsh_imm(Reg::R3, 16).to_bytes(),
        [0x77, 3, 0, 0, 16, 0, 0, 0]
    );
    assert_eq!(
        Insn::jne_imm(Reg::R5, 195, -2).to_bytes(),
        [0x55, 5, 0xfe, 0xff, 195, 0, 0, 0]
    );
    assert_eq!(Insn::jeq_imm(Reg::R2, 2, 3).to_bytes()[0], 0x15);
    assert_eq!(Insn::ja(1).to_bytes(), [0x05, 0, 1, 0, 0, 0, 0, 0]);
    assert_eq!(Insn::exit().to_bytes(), [0x95, 0, 0, 0, 0, 0, 0, 0]);

    let program = compile(&default_rules()).unwrap();
    let words = program.to_words();
    assert_eq!(words.len(), program.insns().len());
    assert_eq!(words[0].to_le_bytes(), program.insns()[0].to_bytes());
    assert_eq!(program.to_bytes().len(), 8 * words.len());
}

#[test]
fn empty_list_denies_everything() {
    let program = compile(&[]).unwrap();
    assert_eq!(program.insns().len(), 8);
    for ty in [DEV_BLOCK, DEV_CHAR] {
        assert!(!run(&program, ty, 1, 3, R));
        assert!(!run(&program, ty, 0, 0, 0));
    }
}

#[test]
fn every_rule_allows_exactly_its_access() {
    let request = DeviceRequest {
        gpus: vec![0],
        mig: vec![MigSlice {
            gpu_minor: 1,
            gi: 0,
            ci: 0,
        }],
    };
    let rules = allow_list(&request, &host(), &SiteDevices::default()).unwrap();
    let program = compile(&rules).unwrap();
    for rule in &rules {
        let (major, minor) = (rule.major.unwrap(), rule.minor.unwrap_or(7));
        let bits = rule.access.bits();
        assert!(run(&program, DEV_CHAR, major, minor, bits), "{rule:?}");
        for single in [M, R, W] {
            let expected = bits & single != 0;
            assert_eq!(
                run(&program, DEV_CHAR, major, minor, single),
                expected,
                "{rule:?} {single}"
            );
            // Any access bit the rule lacks, added to what it grants, is denied.
            if !expected {
                assert!(
                    !run(&program, DEV_CHAR, major, minor, bits | single),
                    "{rule:?}"
                );
            }
        }
        assert!(!run(&program, DEV_BLOCK, major, minor, R), "block {rule:?}");
    }
}

#[test]
fn gpu_nodes_are_per_allocation() {
    let program =
        compile(&allow_list(&gpus(&[0]), &host(), &SiteDevices::default()).unwrap()).unwrap();
    assert!(run(&program, DEV_CHAR, 195, 0, R | W));
    assert!(
        !run(&program, DEV_CHAR, 195, 0, M),
        "no mknod on a gpu node"
    );
    assert!(!run(&program, DEV_CHAR, 195, 1, R), "another tenant's gpu");
    assert!(!run(&program, DEV_CHAR, 195, 254, R), "nvidia-modeset");
    assert!(run(&program, DEV_CHAR, 195, 255, R | W), "nvidiactl");
    assert!(run(&program, DEV_CHAR, UVM, 1, R | W), "nvidia-uvm-tools");
    assert!(!run(&program, DEV_CHAR, UVM, 2, R));
    assert!(!run(&program, DEV_CHAR, CAPS, 1, R), "mig config");
}

#[test]
fn pts_minors_are_a_wildcard() {
    let program = compile(&default_rules()).unwrap();
    for minor in [0, 1, 42, rules::MAX_MINOR, u32::MAX] {
        assert!(
            run(&program, DEV_CHAR, 136, minor, R | W | M),
            "136:{minor}"
        );
    }
    assert!(!run(&program, DEV_CHAR, 137, 0, R));
    assert!(!run(&program, DEV_BLOCK, 136, 0, R));
    assert!(!run(&program, DEV_CHAR, 1, 4, R), "/dev/port");
    assert!(!run(&program, DEV_CHAR, 1, 1, R), "/dev/mem");
}

#[test]
fn mig_caps_are_read_only() {
    let request = DeviceRequest {
        gpus: Vec::new(),
        mig: vec![MigSlice {
            gpu_minor: 0,
            gi: 1,
            ci: 0,
        }],
    };
    let program =
        compile(&allow_list(&request, &host(), &SiteDevices::default()).unwrap()).unwrap();
    for cap in [12, 13] {
        assert!(run(&program, DEV_CHAR, CAPS, cap, R), "cap {cap}");
        assert!(!run(&program, DEV_CHAR, CAPS, cap, W), "cap {cap} write");
        assert!(!run(&program, DEV_CHAR, CAPS, cap, R | W), "cap {cap} rw");
    }
    assert!(
        !run(&program, DEV_CHAR, CAPS, 14, R),
        "a sibling compute instance"
    );
    assert!(!run(&program, DEV_CHAR, CAPS, 3, R), "another gpu instance");
    assert!(run(&program, DEV_CHAR, 195, 0, R | W), "the parent gpu");
    assert!(!run(&program, DEV_CHAR, 195, 1, R));
}

#[test]
fn last_matching_rule_decides() {
    let allow_all = DeviceRule {
        kind: DeviceKind::All,
        major: None,
        minor: None,
        access: Access::RWM,
        allow: true,
    };
    let deny_write = DeviceRule {
        kind: DeviceKind::Char,
        major: Some(1),
        minor: Some(3),
        access: Access::WRITE,
        allow: false,
    };
    let program = compile(&[allow_all, deny_write]).unwrap();
    assert!(run(&program, DEV_BLOCK, 8, 0, R | W));
    assert!(!run(&program, DEV_CHAR, 1, 3, W));
    // The deny rule does not cover r+w, so the earlier allow-all decides (runc's semantics).
    assert!(run(&program, DEV_CHAR, 1, 3, R | W));
    assert!(evaluate(&[allow_all, deny_write], DEV_CHAR, 1, 3, R | W));
}

#[test]
fn compile_refuses_out_of_range_numbers() {
    let err = compile(&[DeviceRule::allow_char(1, 1 << 20, Access::READ)]).unwrap_err();
    assert!(matches!(err, DeviceError::OutOfRange { .. }), "{err:?}");
    let err = v1::render(&[DeviceRule::allow_char(1 << 12, 0, Access::READ)]).unwrap_err();
    assert!(matches!(err, DeviceError::OutOfRange { .. }), "{err:?}");
}

fn arb_rule() -> impl Strategy<Value = DeviceRule> {
    let kind = prop_oneof![
        Just(DeviceKind::Char),
        Just(DeviceKind::Block),
        Just(DeviceKind::All)
    ];
    let major = proptest::option::of(prop_oneof![0u32..4, Just(rules::MAX_MAJOR)]);
    let minor = proptest::option::of(prop_oneof![0u32..4, Just(rules::MAX_MINOR)]);
    (kind, major, minor, 0u32..8, any::<bool>()).prop_map(|(kind, major, minor, bits, allow)| {
        let access = [Access::MKNOD, Access::READ, Access::WRITE]
            .into_iter()
            .filter(|a| a.bits() & bits != 0)
            .fold(Access::default(), Access::union);
        DeviceRule {
            kind,
            major,
            minor,
            access,
            allow,
        }
    })
}

fn arb_number(max: u32) -> impl Strategy<Value = u32> {
    prop_oneof![0u32..5, Just(max), Just(max + 1), any::<u32>()]
}

proptest! {
    #[test]
    fn program_agrees_with_the_reference(
        rules in proptest::collection::vec(arb_rule(), 0..12),
        ty in prop_oneof![0u32..4, any::<u16>().prop_map(u32::from)],
        major in arb_number(rules::MAX_MAJOR),
        minor in arb_number(rules::MAX_MINOR),
        access in prop_oneof![0u32..8, any::<u16>().prop_map(u32::from)],
    ) {
        let program = compile(&rules).unwrap();
        prop_assert_eq!(
            run(&program, ty, major, minor, access),
            evaluate(&rules, ty, major, minor, access)
        );
    }

    #[test]
    fn allocation_program_agrees_with_the_reference(
        gpu_minors in proptest::collection::vec(0u32..4, 0..3),
        slices in proptest::collection::vec((0u32..2, 0u32..15, 0u32..8), 0..3),
        ty in 0u32..4,
        major in prop_oneof![Just(1u32), Just(5), Just(136), Just(195), Just(UVM), Just(CAPS), any::<u32>()],
        minor in prop_oneof![0u32..300, any::<u32>()],
        access in 0u32..8,
    ) {
        let request = DeviceRequest {
            gpus: gpu_minors,
            mig: slices.into_iter().map(|(gpu_minor, gi, ci)| MigSlice { gpu_minor, gi, ci }).collect(),
        };
        let rules = allow_list(&request, &host(), &SiteDevices::default()).unwrap();
        let program = compile(&rules).unwrap();
        let allowed = run(&program, ty, major, minor, access);
        prop_assert_eq!(allowed, evaluate(&rules, ty, major, minor, access));
        if major == 195 && allowed {
            prop_assert!(request.has_gpu());
        }
    }
}
