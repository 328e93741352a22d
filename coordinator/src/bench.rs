//! Benchmarks run as subcommands (`gpuaas-coordinator bench ...`); figures go to BENCHMARKS.md.
//!
//! `bench fleet` measures connection scale with real processes: it prepares a state
//! directory and N enrolment tokens, starts `gpuaas-coordinator serve` (this executable) and
//! `gpuaas-agent fleet` as two separate processes, and reports
//! - the time from starting the fleet until all N nodes are enrolled and connected,
//! - each process's CPU (% of one core) and RSS over a steady window,
//! - the time for all N to reconnect after the coordinator is killed (SIGKILL) and started
//!   again, which exercises the persistent stateless-reset key.
//!
//! Readiness is what the fleet simulator prints when all N sessions have received Welcome.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::api::tokens::issue_with;
use crate::dev::agent_binary;
use crate::server;

/// Benchmark subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Connection scale: N simulated agents against one coordinator, separate processes.
    Fleet(FleetBench),
}

/// Options of `bench fleet`.
#[derive(Debug, Args)]
pub struct FleetBench {
    /// Simulated nodes.
    #[arg(long, default_value_t = 1000)]
    pub nodes: usize,
    /// Heartbeat interval, seconds.
    #[arg(long, default_value_t = 5)]
    pub heartbeat_secs: u64,
    /// Length of the steady-state CPU window, seconds.
    #[arg(long, default_value_t = 30)]
    pub steady_secs: u64,
    /// GPUs of each simulated node.
    #[arg(long, default_value = "8xH100-80GB")]
    pub gpus: String,
    /// How many times to kill and restart the coordinator.
    #[arg(long, default_value_t = 3)]
    pub restarts: usize,
    /// Stop the coordinator with SIGTERM (it closes every connection) instead of SIGKILL.
    #[arg(long)]
    pub graceful: bool,
    /// Keep the state here (default: a temporary directory).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

/// Runs a benchmark.
pub async fn run(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Fleet(options) => fleet(options).await,
    }
}

/// CPU ticks (user + system) and RSS of a process, from /proc.
fn proc_sample(pid: u32) -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let cpu = ticks(11) + ticks(12); // utime, stime (fields 14 and 15 of stat)
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    Ok((cpu, rss_kib))
}

fn clock_ticks_per_second() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(hz)) if hz > 0 => hz as f64,
        _ => 100.0,
    }
}

struct Steady {
    coordinator_cpu_pct: f64,
    coordinator_rss_mib: f64,
    fleet_cpu_pct: f64,
    fleet_rss_mib: f64,
}

async fn steady(coordinator: u32, fleet: u32, window: Duration) -> Result<Steady> {
    let (c0, _) = proc_sample(coordinator)?;
    let (f0, _) = proc_sample(fleet)?;
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let secs = start.elapsed().as_secs_f64();
    let (c1, c_rss) = proc_sample(coordinator)?;
    let (f1, f_rss) = proc_sample(fleet)?;
    let hz = clock_ticks_per_second();
    let pct = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / hz / secs * 100.0;
    Ok(Steady {
        coordinator_cpu_pct: pct(c0, c1),
        coordinator_rss_mib: c_rss as f64 / 1024.0,
        fleet_cpu_pct: pct(f0, f1),
        fleet_rss_mib: f_rss as f64 / 1024.0,
    })
}

fn spawn_coordinator(config: &Path) -> Result<Child> {
    let me = std::env::current_exe().context("cannot find this executable")?;
    Command::new(me)
        .args(["serve", "--config"])
        .arg(config)
        .env(
            "RUST_LOG",
            std::env::var("GPUAAS_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the coordinator")
}

/// Waits for the next fleet event named `event`; returns its JSON.
async fn next_event(
    lines: &mut Lines<BufReader<ChildStdout>>,
    event: &str,
    limit: Duration,
) -> Result<serde_json::Value> {
    let wait = async {
        while let Some(line) = lines.next_line().await? {
            let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if value["event"] == event {
                return Ok(value);
            }
        }
        bail!("the fleet exited before {event}")
    };
    tokio::time::timeout(limit, wait)
        .await
        .with_context(|| format!("no {event} within {limit:?}"))?
}

/// When half, 99 % and all of the nodes were back.
struct Reconnect {
    p50: Duration,
    p99: Duration,
    all: Duration,
}

/// Waits until the restarted coordinator has recorded a Hello from every node: the fleet's own
/// count could still include sessions that have not noticed the crash yet.
async fn wait_all_seen(
    db: &Path,
    restarted: Instant,
    restarted_ms: i64,
    nodes: usize,
    limit: Duration,
) -> Result<Reconnect> {
    let (mut p50, mut p99) = (None, None);
    loop {
        let seen = tokio::task::spawn_blocking({
            let db = db.to_owned();
            move || -> Result<u64> {
                let conn = rusqlite::Connection::open_with_flags(
                    &db,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )?;
                Ok(crate::store::read::count_nodes_seen_since(
                    &conn,
                    restarted_ms,
                )?)
            }
        })
        .await??;
        let elapsed = restarted.elapsed();
        if p50.is_none() && seen * 2 >= nodes as u64 {
            p50 = Some(elapsed);
        }
        if p99.is_none() && seen * 100 >= nodes as u64 * 99 {
            p99 = Some(elapsed);
        }
        if seen >= nodes as u64 {
            return Ok(Reconnect {
                p50: p50.unwrap_or(elapsed),
                p99: p99.unwrap_or(elapsed),
                all: elapsed,
            });
        }
        if restarted.elapsed() > limit {
            bail!("only {seen} of {nodes} nodes reconnected within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn free_port() -> Result<u16> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").context("cannot bind a probe socket")?;
    Ok(sock.local_addr()?.port())
}

async fn fleet(options: FleetBench) -> Result<()> {
    let temp = tempfile::Builder::new().prefix("gpuaas-bench-").tempdir()?;
    let root = options
        .state_dir
        .clone()
        .unwrap_or_else(|| temp.path().to_owned());
    let state_dir = root.join("coordinator");
    let hb = options.heartbeat_secs;
    let node_port = free_port()?;
    let api_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config_path = root.join("coordinator.toml");
    std::fs::create_dir_all(&root)?;
    std::fs::write(
        &config_path,
        format!(
            "state_dir = {:?}\nnode_listen = \"127.0.0.1:{node_port}\"\napi_listen = \"127.0.0.1:{api_port}\"\n\
             heartbeat_interval_secs = {hb}\nnode_timeout_secs = {}\nidle_timeout_secs = {}\n",
            state_dir.display().to_string(),
            3 * hb,
            (3 * hb).max(3),
        ),
    )?;

    // Prepare the cluster and N tokens before the server runs.
    let init = server::init(&state_dir).await?;
    let (store, ca) = (Arc::new(init.store), Arc::new(init.ca));
    let tokens_path = root.join("tokens");
    let creates = (0..options.nodes).map(|i| {
        let (store, ca) = (store.clone(), ca.clone());
        async move { issue_with(&store, &ca, Duration::from_secs(3600), format!("bench {i}")).await }
    });
    let mut tokens = String::new();
    for created in crate::dev::join_all(creates).await {
        tokens.push_str(&created.context("cannot create a token")?.token);
        tokens.push('\n');
    }
    let store = Arc::try_unwrap(store).map_err(|_| anyhow::anyhow!("store still shared"))?;
    store.close().await.context("cannot close the store")?;
    crate::pki::write_private(&tokens_path, tokens.as_bytes(), 0o600)?;

    let mut coordinator = spawn_coordinator(&config_path)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let mut fleet = Command::new(agent_binary()?)
        .arg("fleet")
        .args(["--coordinator", &format!("127.0.0.1:{node_port}")])
        .arg("--tokens-file")
        .arg(&tokens_path)
        .arg("--state-dir")
        .arg(root.join("fleet"))
        .args([
            "--count",
            &options.nodes.to_string(),
            "--gpus",
            &options.gpus,
        ])
        .args(["--keep-alive-secs", &(2 * hb).clamp(1, 10).to_string()])
        .env(
            "RUST_LOG",
            std::env::var("GPUAAS_BENCH_LOG").unwrap_or_else(|_| "error".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the fleet")?;
    let mut lines = BufReader::new(fleet.stdout.take().context("fleet stdout")?).lines();
    let limit = Duration::from_secs(600);
    let enrolled = next_event(&mut lines, "enrolled", limit).await?;
    next_event(&mut lines, "all_connected", limit).await?;
    let connect_all = started.elapsed();
    // Keep reading the fleet's events so its stdout never blocks.
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    tokio::time::sleep(Duration::from_secs(2 * hb)).await;
    let pid = |c: &Child| c.id().context("process already exited");
    let window = Duration::from_secs(options.steady_secs);
    let s = steady(pid(&coordinator)?, pid(&fleet)?, window).await?;

    // Crash and restart the coordinator, several times: a node whose packets all fell into
    // the gap between the kill and the new bind gets no stateless reset and waits for its
    // idle timeout, so single runs vary.
    let db = state_dir.join(server::STORE_FILE);
    let mut reconnects = Vec::new();
    for _ in 0..options.restarts {
        if options.graceful {
            let pid = nix::unistd::Pid::from_raw(
                i32::try_from(coordinator.id().context("coordinator exited")?)
                    .context("pid out of range")?,
            );
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
                .context("cannot send SIGTERM")?;
        } else {
            coordinator.start_kill()?;
        }
        coordinator.wait().await?;
        let restarted = Instant::now();
        let restarted_ms = crate::clock::now_ms();
        coordinator = spawn_coordinator(&config_path)?;
        reconnects.push(wait_all_seen(&db, restarted, restarted_ms, options.nodes, limit).await?);
        tokio::time::sleep(Duration::from_secs(2 * hb)).await;
    }
    drain.abort();
    let nodes = options.nodes;
    let per_node_kib = s.fleet_rss_mib * 1024.0 / nodes as f64;
    println!(
        "bench fleet: nodes={nodes} heartbeat={hb}s gpus={}\n\
         enrol+connect all:       {:>8.2} s (enrolment alone {} ms)\n\
         reconnect after {}: {} s (50% / 99% / all back, each restart)\n\
         coordinator steady:      {:>8.1} % of one core, RSS {:.0} MiB (window {} s)\n\
         fleet simulator steady:  {:>8.1} % of one core, RSS {:.0} MiB, {:.0} KiB per node",
        options.gpus,
        connect_all.as_secs_f64(),
        enrolled["elapsed_ms"],
        if options.graceful {
            "SIGTERM"
        } else {
            "SIGKILL"
        },
        reconnects
            .iter()
            .map(|r| {
                format!(
                    "{:.1}/{:.1}/{:.1}",
                    r.p50.as_secs_f64(),
                    r.p99.as_secs_f64(),
                    r.all.as_secs_f64()
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
        s.coordinator_cpu_pct,
        s.coordinator_rss_mib,
        options.steady_secs,
        s.fleet_cpu_pct,
        s.fleet_rss_mib,
        per_node_kib,
    );
    let _ = fleet.start_kill();
    Ok(())
}
