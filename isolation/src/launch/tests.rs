use super::*;

fn spec() -> WorkloadSpec {
    WorkloadSpec {
        alloc: AllocationId::from_raw(7),
        argv: vec!["sh".into(), "-c".into(), "true".into()],
        env: vec![
            ("FOO".into(), "bar".into()),
            ("CUDA_VISIBLE_DEVICES".into(), "all".into()),
        ],
        cwd: PathBuf::from("/"),
        uid: 65534,
        gid: 65534,
        visible_devices: vec!["GPU-a".into(), "MIG-b".into()],
        log_dir: PathBuf::from("/nonexistent"),
        log_limit_bytes: 10,
    }
}

#[test]
fn validate_resolves_on_the_workload_path() {
    let binary = validate(&spec()).expect("sh is on PATH");
    assert!(binary.is_absolute() && binary.ends_with("sh"), "{binary:?}");
}

#[test]
fn validate_refuses_root_empty_argv_bad_env_and_missing_binaries() {
    let mut s = spec();
    s.uid = 0;
    assert!(matches!(
        validate(&s),
        Err(LaunchError::Root { what: "uid", .. })
    ));
    let mut s = spec();
    s.gid = 0;
    assert!(matches!(
        validate(&s),
        Err(LaunchError::Root { what: "gid", .. })
    ));
    let mut s = spec();
    s.argv.clear();
    assert!(matches!(validate(&s), Err(LaunchError::EmptyArgv { .. })));
    let mut s = spec();
    s.env.push(("A=B".into(), String::new()));
    assert!(matches!(validate(&s), Err(LaunchError::BadEnv { .. })));
    let mut s = spec();
    s.argv[0] = "/no/such/binary".into();
    let err = validate(&s).expect_err("missing");
    assert!(matches!(err, LaunchError::BinaryMissing { .. }), "{err}");
    assert!(err.to_string().contains("/no/such/binary"), "{err}");
    let mut s = spec();
    s.argv[0] = "/etc/passwd".into();
    let err = validate(&s).expect_err("not executable");
    assert!(matches!(err, LaunchError::NotExecutable { .. }), "{err}");
    assert!(err.to_string().contains("/etc/passwd"), "{err}");
}

#[test]
fn environment_is_clean_and_devices_cannot_be_overridden() {
    let env = workload_env(&spec());
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("PATH"), Some(DEFAULT_PATH));
    assert_eq!(get("HOME"), Some("/"));
    assert_eq!(get("FOO"), Some("bar"));
    assert_eq!(get("CUDA_VISIBLE_DEVICES"), Some("GPU-a,MIG-b"));
    assert_eq!(get("NVIDIA_VISIBLE_DEVICES"), Some("GPU-a,MIG-b"));
    assert_eq!(env.len(), 5, "{env:?}");
    let mut s = spec();
    s.visible_devices.clear();
    s.env = vec![("PATH".into(), "/bin".into())];
    let env = workload_env(&s);
    assert!(env.contains(&("PATH".into(), "/bin".into())), "{env:?}");
    assert!(env.contains(&("CUDA_VISIBLE_DEVICES".into(), String::new())));
    assert_eq!(env.iter().filter(|(k, _)| k == "PATH").count(), 1);
}

#[test]
fn copy_capped_keeps_the_cap_and_one_marker() {
    let input = vec![b'x'; 100_000];
    let mut out = Vec::new();
    shim::copy_capped(&input[..], &mut out, 1000).expect("copy");
    assert_eq!(out.len(), 1000 + shim::TRUNCATION_MARKER.len());
    assert!(out.ends_with(shim::TRUNCATION_MARKER.as_bytes()));
    let mut out = Vec::new();
    shim::copy_capped(&b"short"[..], &mut out, 1000).expect("copy");
    assert_eq!(out, b"short");
}

#[test]
fn exit_record_round_trips_through_json() {
    let record = ExitRecord {
        exit_code: None,
        signal: Some(9),
        oom_killed: true,
    };
    let json = serde_json::to_string(&record).expect("json");
    assert_eq!(json, r#"{"exit_code":null,"signal":9,"oom_killed":true}"#);
    assert_eq!(
        serde_json::from_str::<ExitRecord>(&json).expect("parse"),
        record
    );
}
