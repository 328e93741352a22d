//! `gpuaas-coordinator dev`: the embedded default. A coordinator with its state in a temporary
//! (or given) directory, plus N simulated agents in one `gpuaas-agent fleet` child process on
//! loopback, enrolled with real one-time tokens over real QUIC. No GPU, no root.
//!
//! The agent binary is found beside this executable (or through `GPUAAS_AGENT_BIN`), so the
//! coordinator never links the isolation crate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::api::tokens;
use crate::clock::now_ms;
use crate::config::Config;
use crate::server::{self, Running};

/// Options of `dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Simulated nodes to start.
    pub nodes: usize,
    /// GPUs of each simulated node (`8xH100-80GB`).
    pub gpus: String,
    /// State directory; a temporary one when `None`.
    pub state_dir: Option<PathBuf>,
    /// QUIC listen address.
    pub node_listen: SocketAddr,
    /// Admin API listen address.
    pub api_listen: SocketAddr,
    /// Heartbeat interval, seconds.
    pub heartbeat_secs: u64,
}

/// Most simulated nodes `dev` starts.
pub const MAX_DEV_NODES: usize = 10_000;

/// Path of the `gpuaas-agent` executable: `GPUAAS_AGENT_BIN`, else beside this executable.
pub fn agent_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("GPUAAS_AGENT_BIN") {
        return Ok(PathBuf::from(path));
    }
    let me = std::env::current_exe().context("cannot find this executable's path")?;
    let agent = me.with_file_name("gpuaas-agent");
    if !agent.exists() {
        bail!(
            "gpuaas-agent not found at {} (build it with `cargo build`, or set GPUAAS_AGENT_BIN)",
            agent.display()
        );
    }
    Ok(agent)
}

/// Runs dev mode until Ctrl-C.
pub async fn run(options: DevOptions) -> Result<()> {
    if options.nodes > MAX_DEV_NODES {
        bail!(
            "--nodes {} is over the limit of {MAX_DEV_NODES}",
            options.nodes
        );
    }
    let agent = agent_binary()?;
    let temp;
    let state_dir = match &options.state_dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("gpuaas-dev-")
                .tempdir()
                .context("cannot create a temporary state directory")?;
            temp.path().to_owned()
        }
    };
    let config = Config {
        state_dir: state_dir.join("coordinator"),
        node_listen: options.node_listen,
        api_listen: options.api_listen,
        heartbeat_interval_secs: options.heartbeat_secs,
        node_timeout_secs: 3 * options.heartbeat_secs,
        idle_timeout_secs: 3 * options.heartbeat_secs,
        ..Config::default()
    };
    let running = server::start(&config).await?;
    let fleet_dir = state_dir.join("fleet");
    std::fs::create_dir_all(&fleet_dir)
        .with_context(|| format!("cannot create {}", fleet_dir.display()))?;
    let tokens_file = fleet_dir.join("tokens");
    write_tokens(&running, &tokens_file, options.nodes).await?;

    let mut child = tokio::process::Command::new(&agent)
        .arg("fleet")
        .arg("--coordinator")
        .arg(running.node_addr.to_string())
        .arg("--tokens-file")
        .arg(&tokens_file)
        .arg("--state-dir")
        .arg(&fleet_dir)
        .arg("--count")
        .arg(options.nodes.to_string())
        .arg("--gpus")
        .arg(&options.gpus)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", agent.display()))?;

    let started = Instant::now();
    while running.fleet.registry.ready_count(now_ms()) < options.nodes {
        if let Some(status) = child.try_wait().context("fleet process")? {
            bail!("the simulated fleet exited early ({status})");
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!("the simulated nodes did not become Ready within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    print_banner(&running, &options, started.elapsed())?;

    tokio::select! {
        r = server::shutdown_signal() => r?,
        status = child.wait() => tracing::warn!(status = ?status, "the simulated fleet exited"),
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
    running.shutdown().await;
    Ok(())
}

async fn write_tokens(running: &Running, path: &std::path::Path, count: usize) -> Result<()> {
    let mut lines = String::new();
    let creates =
        (0..count).map(|i| {
            let fleet = running.fleet.clone();
            async move {
                tokens::issue(&fleet, Duration::from_secs(3600), format!("dev node {i}")).await
            }
        });
    for created in join_all(creates).await {
        lines.push_str(&created.context("cannot create an enrolment token")?.token);
        lines.push('\n');
    }
    crate::pki::write_private(path, lines.as_bytes(), 0o600)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Runs futures concurrently (so the store groups their commits) and keeps their order.
pub(crate) async fn join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for (i, f) in futures.enumerate() {
        set.spawn(async move { (i, f.await) });
    }
    let mut out: Vec<(usize, F::Output)> = Vec::new();
    while let Some(Ok(item)) = set.join_next().await {
        out.push(item);
    }
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, v)| v).collect()
}

fn print_banner(running: &Running, options: &DevOptions, took: Duration) -> Result<()> {
    let token_path = running.admin_token_path();
    let token = std::fs::read_to_string(&token_path)
        .with_context(|| format!("cannot read {}", token_path.display()))?;
    let token = token.trim();
    let ca = crate::pki::ClusterCa::cert_path(&running.state_dir);
    let endpoint = format!("https://{}", running.api_addr);
    let ctl = std::env::current_exe()
        .map(|me| me.with_file_name("gpuaasctl").display().to_string())
        .unwrap_or_else(|_| "gpuaasctl".to_owned());
    println!(
        "GPUaaS dev cluster is up: {} simulated node(s) with {} each, Ready in {:.1} s\n\
         \n  admin API     {endpoint}\n  admin token   {token}\n  cluster CA    {}\n  \
         node endpoint {} (QUIC)\n  state dir     {}\n\
         \nTry it from another shell:\n  export GPUAAS_ENDPOINT={endpoint} GPUAAS_TOKEN={token} \
         GPUAAS_CA_CERT={}\n  {ctl} node list\n\nPress Ctrl-C to stop.",
        options.nodes,
        options.gpus,
        took.as_secs_f64(),
        ca.display(),
        running.node_addr,
        running.state_dir.display(),
        ca.display(),
    );
    Ok(())
}
