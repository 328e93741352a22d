//! `gpuaas-agent fleet`: many simulated agents in one process, for dev mode and load tests.
//!
//! Every simulated node is a full [`NodeAgent`] with its own key, certificate, state directory
//! (`<state-dir>/node-NNNNN/`) and QUIC connection; only the GPU backend is simulated (one
//! [`SimBackend`] per node, seeded by its index, so uuids differ between nodes and stay stable
//! across restarts). Nodes without an identity enrol with the token on the matching line of
//! the tokens file. Connections are spread over one UDP endpoint per
//! [`NODES_PER_ENDPOINT`] nodes.
//!
//! Progress is printed to stdout as JSON lines, which benchmarks read:
//! `{"event":"enrolled","nodes":N,"elapsed_ms":..}`,
//! `{"event":"all_connected","nodes":N,"at_ms":..}` (each time all N sessions are up) and
//! `{"event":"degraded","connected":K,"nodes":N,"at_ms":..}` (when some drop).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use gpuaas_isolation::host::HostFacts;
use gpuaas_isolation::sim::{SimBackend, SimSpec};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::config::SessionSettings;
use crate::enroll::enroll;
use crate::identity::Identity;
use crate::net::{client_endpoint, resolve};
use crate::session::{Connected, NodeAgent};

/// Simulated nodes sharing one UDP socket.
pub const NODES_PER_ENDPOINT: usize = 1000;
/// Most simulated nodes in one process.
pub const MAX_NODES: usize = 20_000;
/// UDP buffer size asked for each of the fleet's sockets.
pub const SOCKET_BUFFER_BYTES: usize = 16 << 20;
/// Enrolments in flight at once.
const ENROLL_CONCURRENCY: usize = 32;

/// Options of `gpuaas-agent fleet`.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// The coordinator's `host:port`.
    pub coordinator: String,
    /// One enrolment token per line, line i for node i (only read for nodes not yet enrolled).
    pub tokens_file: Option<PathBuf>,
    /// Parent directory of the nodes' state directories.
    pub state_dir: PathBuf,
    /// Number of simulated nodes.
    pub count: usize,
    /// GPUs of each node (`8xH100-80GB`).
    pub gpus: String,
    /// Session timing.
    pub settings: SessionSettings,
}

fn emit(line: serde_json::Value) {
    println!("{line}");
}

fn unix_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Runs the fleet until Ctrl-C or SIGTERM.
pub async fn run(options: FleetOptions) -> Result<()> {
    if options.count == 0 || options.count > MAX_NODES {
        bail!(
            "--count {} must be between 1 and {MAX_NODES}",
            options.count
        );
    }
    let spec =
        SimSpec::parse(&options.gpus).with_context(|| format!("--gpus {:?}", options.gpus))?;
    let tokens: Vec<String> = match &options.tokens_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read tokens file {}", path.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        None => Vec::new(),
    };
    let (addr, _) = resolve(&options.coordinator).await?;
    let endpoints = (0..options.count.div_ceil(NODES_PER_ENDPOINT))
        .map(|_| client_endpoint(addr, Some(SOCKET_BUFFER_BYTES)))
        .collect::<Result<Vec<_>, _>>()?;

    let started = Instant::now();
    let identities = enroll_all(&options, &tokens, &endpoints).await?;
    emit(serde_json::json!({
        "event": "enrolled", "nodes": options.count,
        "elapsed_ms": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    }));

    let connected = Arc::new(Connected::default());
    let mut agents = JoinSet::new();
    for (i, identity) in identities.into_iter().enumerate() {
        let backend = SimBackend::new(&spec, i as u64);
        let mut agent = NodeAgent::new(
            identity,
            Some(node_dir(&options, i)),
            options.coordinator.clone(),
            Box::new(backend),
            sim_host(i),
            options.settings,
            endpoints[i / NODES_PER_ENDPOINT].clone(),
        );
        agent.connected = Some(connected.clone());
        agents.spawn(async move { (i, agent.run().await) });
    }
    let reporter = tokio::spawn(report(connected, options.count));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            joined = agents.join_next() => match joined {
                Some(Ok((i, err))) => tracing::error!(node = i, error = %err, "simulated node stopped"),
                Some(Err(e)) => tracing::error!(error = %e, "simulated node task failed"),
                None => break,
            },
        }
    }
    reporter.abort();
    agents.abort_all();
    for endpoint in &endpoints {
        endpoint.close(
            gpuaas_proto::messages::close_code::DONE.into(),
            b"fleet stopping",
        );
    }
    Ok(())
}

fn node_dir(options: &FleetOptions, i: usize) -> PathBuf {
    options.state_dir.join(format!("node-{i:05}"))
}

fn sim_host(i: usize) -> HostFacts {
    HostFacts {
        hostname: format!("sim-node-{i:05}"),
        cpu_cores: 128,
        memory_mib: 2 * 1024 * 1024,
    }
}

async fn enroll_all(
    options: &FleetOptions,
    tokens: &[String],
    endpoints: &[quinn::Endpoint],
) -> Result<Vec<Identity>> {
    let limit = Arc::new(Semaphore::new(ENROLL_CONCURRENCY));
    let mut set = JoinSet::new();
    for i in 0..options.count {
        let dir = node_dir(options, i);
        if Identity::exists(&dir) {
            let identity = Identity::load(&dir)
                .with_context(|| format!("simulated node {i}: cannot load its identity"))?;
            set.spawn(async move { Ok::<_, anyhow::Error>((i, identity)) });
            continue;
        }
        let Some(token) = tokens.get(i).cloned() else {
            bail!(
                "simulated node {i} is not enrolled and the tokens file has no line {}",
                i + 1
            );
        };
        let endpoint = endpoints[i / NODES_PER_ENDPOINT].clone();
        let coordinator = options.coordinator.clone();
        let limit = limit.clone();
        set.spawn(async move {
            let _permit = limit
                .acquire_owned()
                .await
                .context("enrolment limiter closed")?;
            let hostname = format!("sim-node-{i:05}");
            let identity = enroll(&endpoint, &coordinator, &token, &hostname)
                .await
                .with_context(|| format!("simulated node {i}: enrolment failed"))?;
            identity
                .save(&dir)
                .with_context(|| format!("simulated node {i}: cannot save its identity"))?;
            Ok((i, identity))
        });
    }
    let mut identities: Vec<Option<Identity>> = (0..options.count).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        let (i, identity) = joined.context("enrolment task failed")??;
        identities[i] = Some(identity);
    }
    identities
        .into_iter()
        .enumerate()
        .map(|(i, id)| id.with_context(|| format!("simulated node {i} has no identity")))
        .collect()
}

async fn report(connected: Arc<Connected>, nodes: usize) {
    let mut all = false;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        let now = connected.get();
        if now == nodes && !all {
            all = true;
            emit(serde_json::json!({"event": "all_connected", "nodes": nodes, "at_ms": unix_ms()}));
        } else if now < nodes && all {
            all = false;
            emit(
                serde_json::json!({"event": "degraded", "connected": now, "nodes": nodes, "at_ms": unix_ms()}),
            );
        }
    }
}
