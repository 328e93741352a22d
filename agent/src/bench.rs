//! Benchmarks run as subcommands (`gpuaas-agent bench ...`); figures go to BENCHMARKS.md.
//!
//! `bench sandbox` measures the sandbox lifecycle on this host with real cgroups and the real
//! `gpuaas-shim` (needs root). Each iteration creates a sandbox with the limits of a small
//! allocation (256 MiB, 64 pids, half a CPU) and the device allow-list of a GPU-less
//! allocation, launches `/bin/true` in it as an unprivileged uid, waits for the shim's exit
//! record, and destroys the sandbox. It reports, p50/p99/max over the iterations,
//! - create→launched: from [`Sandbox::create`] until [`launch::launch`] returned (the
//!   workload was forked into the cgroups and is exec'ing),
//! - create→exited: until `exit.json` exists (polled every 0.2 ms),
//! - stop→removed: the duration of [`Sandbox::destroy`],
//!
//! and the achieved creates per second. `--live N` first starts N sandboxes running
//! `sleep 1000` (destroyed at the end, also on error); `--spacing-ms` sleeps between
//! iterations (the idle-then-launch case). Everything it makes is removed: the state and log
//! directories live in a temporary directory and every sandbox is destroyed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use gpuaas_isolation::cgroup::{CgroupLayout, CpuQuota, Limits, MOUNTINFO, Sandbox};
use gpuaas_isolation::devices::{self, DeviceRequest, DeviceRule, HostDevices, SiteDevices};
use gpuaas_isolation::launch::{self, WorkloadSpec};
use gpuaas_proto::AllocationId;

/// How often the exit record is polled.
const EXIT_POLL: Duration = Duration::from_micros(200);
/// How long one workload may take to leave its exit record.
const EXIT_LIMIT: Duration = Duration::from_secs(10);
/// The grace period given to a workload at destroy.
const GRACE: Duration = Duration::from_secs(1);
/// The first uid used for the measured workloads (each iteration adds its index).
const FIRST_UID: u32 = 65535;
/// The first uid used for the live `sleep` workloads.
const FIRST_LIVE_UID: u32 = 70000;
/// The per-stream log cap of the benchmark's workloads.
const LOG_LIMIT: u64 = 1 << 16;

/// Benchmark subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Sandbox lifecycle: create with limits and devices, launch `/bin/true`, destroy (root).
    Sandbox(SandboxBench),
}

/// Options of `bench sandbox`.
#[derive(Debug, Args)]
pub struct SandboxBench {
    /// Measured create/launch/destroy cycles.
    #[arg(long, default_value_t = 200)]
    pub iterations: u32,
    /// Sandboxes running `sleep 1000` for the whole run.
    #[arg(long, default_value_t = 0)]
    pub live: u32,
    /// Pause between iterations, milliseconds.
    #[arg(long, default_value_t = 0)]
    pub spacing_ms: u64,
    /// Root directory of the benchmark's sandboxes under each cgroup hierarchy.
    #[arg(long, default_value = "gpuaas-bench")]
    pub root_name: String,
    /// The gpuaas-shim binary (default: beside this executable).
    #[arg(long)]
    pub shim: Option<PathBuf>,
}

/// Runs a benchmark.
pub fn run(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Sandbox(options) => sandbox(&options),
    }
}

/// Sandboxes destroyed when dropped (the live ones, and the measured one on an error path).
#[derive(Default)]
struct Sandboxes(Vec<Sandbox>);

impl Sandboxes {
    fn destroy_all(&mut self) -> Result<()> {
        let mut first = None;
        while let Some(sandbox) = self.0.pop() {
            let alloc = sandbox.alloc();
            if let Err(e) = sandbox.destroy(GRACE) {
                first.get_or_insert(anyhow::Error::new(e).context(format!("destroy {alloc}")));
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Sandboxes {
    fn drop(&mut self) {
        if let Err(e) = self.destroy_all() {
            eprintln!("bench cleanup: {e:#}");
        }
    }
}

/// What every sandbox of the run shares.
struct Setup {
    layout: CgroupLayout,
    root_name: String,
    limits: Limits,
    rules: Vec<DeviceRule>,
    shim: PathBuf,
    state: PathBuf,
    logs: PathBuf,
    base: u64,
}

impl Setup {
    fn alloc(&self, n: u64) -> AllocationId {
        AllocationId::from_raw(self.base.wrapping_add(n))
    }

    fn spec(&self, alloc: AllocationId, uid: u32, argv: &[&str]) -> WorkloadSpec {
        WorkloadSpec {
            alloc,
            argv: argv.iter().map(|&a| a.to_owned()).collect(),
            env: Vec::new(),
            cwd: PathBuf::from("/"),
            uid,
            gid: uid,
            visible_devices: Vec::new(),
            log_dir: self.logs.join(alloc.to_string()),
            log_limit_bytes: LOG_LIMIT,
        }
    }

    fn create(&self, alloc: AllocationId) -> Result<Sandbox> {
        Sandbox::create(
            &self.layout,
            &self.root_name,
            alloc,
            &self.limits,
            &self.rules,
        )
        .with_context(|| format!("cannot create the sandbox of {alloc}"))
    }
}

/// One iteration's figures.
struct Sample {
    launched: Duration,
    exited: Duration,
    removed: Duration,
}

/// The device allow-list of a GPU-less allocation on this host.
fn gpuless_rules() -> Result<Vec<DeviceRule>> {
    let request = DeviceRequest::default();
    let site = SiteDevices::default();
    match HostDevices::read(Path::new("/proc")) {
        Ok(host) => devices::allow_list(&request, &host, &site)
            .context("cannot build the device allow-list"),
        // No GPU is asked for, so the host's majors are not needed: the pseudo devices only.
        Err(e) => {
            eprintln!("bench: cannot read /proc/devices ({e}); using the GPU-less default rules");
            Ok(devices::rules::default_rules())
        }
    }
}

fn sandbox(options: &SandboxBench) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("bench sandbox needs root: it creates cgroups and starts workloads as other uids");
    }
    if options.iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    let shim = match &options.shim {
        Some(shim) => shim.clone(),
        None => launch::default_shim().with_context(|| {
            format!(
                "no {} beside this executable; build it with `cargo build --release -p gpuaas-isolation` or pass --shim",
                launch::SHIM_NAME
            )
        })?,
    };
    let layout =
        CgroupLayout::detect(Path::new(MOUNTINFO)).context("cannot read the cgroup layout")?;
    let layout_name = match layout {
        CgroupLayout::Legacy { .. } => "v1",
        CgroupLayout::Hybrid { .. } => "hybrid",
        CgroupLayout::Unified { .. } => "v2",
    };
    let tmp = tempfile::Builder::new()
        .prefix("gpuaas-bench-")
        .tempdir()
        .context("cannot make a temporary directory")?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
        .context("cannot chmod the temporary directory")?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| (d.as_secs() << 30) ^ u64::from(d.subsec_nanos()))
        .unwrap_or(0);
    let setup = Setup {
        layout,
        root_name: options.root_name.clone(),
        limits: Limits {
            memory_bytes: Some(256 << 20),
            swap: false,
            cpu: Some(CpuQuota {
                quota_us: 50_000,
                period_us: 100_000,
            }),
            cpuset: None,
            pids_max: Some(64),
        },
        rules: gpuless_rules()?,
        shim,
        state: tmp.path().join("state"),
        logs: tmp.path().join("logs"),
        // Distinct per run; the low 24 bits count the sandboxes of this run.
        base: ((u64::from(std::process::id()) << 40) ^ (nanos << 24)) & !0xff_ffff,
    };

    let mut live = Sandboxes::default();
    for i in 0..options.live {
        let alloc = setup.alloc(u64::from(i));
        live.0.push(setup.create(alloc)?);
        let sandbox = live.0.last().context("live sandbox")?;
        let uid = FIRST_LIVE_UID.saturating_add(i);
        launch::launch(
            sandbox,
            &setup.spec(alloc, uid, &["sleep", "1000"]),
            &setup.state,
            &setup.shim,
        )
        .with_context(|| format!("cannot start the live workload of {alloc}"))?;
    }

    let spacing = Duration::from_millis(options.spacing_ms);
    let mut samples = Vec::new();
    let mut busy = Duration::ZERO;
    let started = Instant::now();
    for k in 0..options.iterations {
        if k > 0 && !spacing.is_zero() {
            sleep(spacing);
        }
        let alloc = setup.alloc(u64::from(options.live) + u64::from(k));
        let sample = iteration(&setup, alloc, FIRST_UID.saturating_add(k))?;
        busy += sample.exited + sample.removed;
        samples.push(sample);
    }
    let wall = started.elapsed();
    live.destroy_all()
        .context("cannot destroy the live sandboxes")?;

    let pick = |f: fn(&Sample) -> Duration| -> Vec<Duration> { samples.iter().map(f).collect() };
    let n = f64::from(options.iterations);
    println!(
        "bench sandbox: iterations={} live={} spacing={}ms layout={layout_name} root={}\n\
         create->launched {}\n\
         create->exited   {}\n\
         stop->removed    {}\n\
         creates/s        {:.1} (iterations / busy time {:.3} s; wall {:.3} s)",
        options.iterations,
        options.live,
        options.spacing_ms,
        options.root_name,
        summary(pick(|s| s.launched)),
        summary(pick(|s| s.exited)),
        summary(pick(|s| s.removed)),
        n / busy.as_secs_f64(),
        busy.as_secs_f64(),
        wall.as_secs_f64(),
    );
    drop(tmp);
    Ok(())
}

/// One measured create → launch → exit → destroy cycle.
fn iteration(setup: &Setup, alloc: AllocationId, uid: u32) -> Result<Sample> {
    let spec = setup.spec(alloc, uid, &["/bin/true"]);
    let mut guard = Sandboxes::default();
    let start = Instant::now();
    guard.0.push(setup.create(alloc)?);
    let sandbox = guard.0.last().context("sandbox")?;
    launch::launch(sandbox, &spec, &setup.state, &setup.shim)
        .with_context(|| format!("cannot launch /bin/true in {alloc}"))?;
    let launched = start.elapsed();
    let deadline = Instant::now() + EXIT_LIMIT;
    let record = loop {
        if let Some(record) = launch::read_exit(&setup.state, alloc) {
            break record;
        }
        if Instant::now() >= deadline {
            bail!("no exit record for {alloc} after {EXIT_LIMIT:?}");
        }
        sleep(EXIT_POLL);
    };
    let exited = start.elapsed();
    if record.exit_code != Some(0) {
        bail!("/bin/true in {alloc} ended with {record:?}");
    }
    let sandbox = guard.0.pop().context("sandbox")?;
    let stop = Instant::now();
    sandbox
        .destroy(GRACE)
        .with_context(|| format!("cannot destroy {alloc}"))?;
    let removed = stop.elapsed();
    Ok(Sample {
        launched,
        exited,
        removed,
    })
}

/// `p50 X p99 Y max Z ms` (nearest-rank percentiles).
fn summary(mut values: Vec<Duration>) -> String {
    values.sort_unstable();
    let rank = |percent: usize| {
        let i = (percent * values.len())
            .div_ceil(100)
            .clamp(1, values.len())
            - 1;
        values[i].as_secs_f64() * 1e3
    };
    format!(
        "p50 {:>7.3} p99 {:>7.3} max {:>7.3} ms",
        rank(50),
        rank(99),
        rank(100)
    )
}
