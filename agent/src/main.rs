//! `gpuaas-agent`: the GPUaaS node daemon.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use gpuaas_agent::config::{BackendKind, Config};
use gpuaas_agent::identity::Identity;
use gpuaas_agent::session::NodeAgent;
use gpuaas_agent::{bench, enroll, fleet, net, observability};
use gpuaas_isolation::GpuBackend;
use gpuaas_isolation::host::HostFacts;

#[derive(Debug, Parser)]
#[command(name = "gpuaas-agent", version, about = "GPUaaS node agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent: connect to the coordinator and serve it.
    Run {
        /// Config file (TOML).
        #[arg(long, short, default_value = "/etc/gpuaas/agent.toml")]
        config: PathBuf,
    },
    /// Enrol this host with a one-time token.
    Enroll {
        /// The coordinator's host:port.
        #[arg(long)]
        coordinator: String,
        /// The enrolment token (or set GPUAAS_ENROLL_TOKEN).
        #[arg(long, env = "GPUAAS_ENROLL_TOKEN", hide_env_values = true)]
        token: String,
        /// Config file (TOML); its state_dir receives the identity.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Overrides the config's state_dir.
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Print this host's GPU inventory as JSON.
    Inventory {
        /// Config file (TOML); selects the backend.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run many simulated agents in one process (dev mode, load tests).
    Fleet {
        /// The coordinator's host:port.
        #[arg(long)]
        coordinator: String,
        /// Enrolment tokens, one per line (line i for node i).
        #[arg(long)]
        tokens_file: Option<PathBuf>,
        /// Parent of the simulated nodes' state directories.
        #[arg(long)]
        state_dir: PathBuf,
        /// Number of simulated nodes.
        #[arg(long)]
        count: usize,
        /// GPUs of each simulated node.
        #[arg(long, default_value = "8xH100-80GB")]
        gpus: String,
        /// QUIC keep-alive, seconds.
        #[arg(long, default_value_t = 10)]
        keep_alive_secs: u64,
    },
    /// Benchmarks (figures for BENCHMARKS.md).
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    match path {
        Some(path) => {
            Config::load(path).with_context(|| format!("cannot use config {}", path.display()))
        }
        None => Ok(Config::default()),
    }
}

fn backend(config: &Config) -> Result<Box<dyn GpuBackend>> {
    Ok(match config.backend {
        BackendKind::Nvml => Box::new(
            gpuaas_isolation::nvml::NvmlBackend::open().context("cannot use the NVML backend")?,
        ),
        BackendKind::Sim => {
            let spec = gpuaas_isolation::sim::SimSpec::parse(&config.sim_gpus)
                .with_context(|| format!("sim_gpus {:?}", config.sim_gpus))?;
            Box::new(gpuaas_isolation::sim::SimBackend::new(&spec, 0))
        }
    })
}

async fn run(config: Config) -> Result<()> {
    if !Identity::exists(&config.state_dir) {
        bail!(
            "no node identity in {}: enrol first with `gpuaas-agent enroll --coordinator HOST:PORT --token TOKEN`",
            config.state_dir.display()
        );
    }
    let identity = Identity::load(&config.state_dir).context("cannot load the node identity")?;
    let coordinator = config
        .coordinator
        .clone()
        .unwrap_or_else(|| identity.coordinator.clone());
    let (addr, _) = net::resolve(&coordinator).await?;
    let endpoint = net::client_endpoint(addr, None)?;
    let host = HostFacts::detect().context("cannot read host facts")?;
    tracing::info!(node_id = %identity.node_id, %coordinator, backend = ?config.backend, "agent starting");
    let agent = NodeAgent::new(
        identity,
        Some(config.state_dir.clone()),
        coordinator,
        backend(&config)?,
        host,
        config.session(),
        endpoint,
    );
    tokio::select! {
        err = agent.run() => Err(err).context("the agent stopped"),
        r = shutdown_signal() => { r?; tracing::info!("agent stopping"); Ok(()) }
    }
}

async fn shutdown_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot wait for Ctrl-C"),
        _ = term.recv() => Ok(()),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    observability::init();
    match Cli::parse().command {
        Command::Run { config } => run(load_config(Some(&config))?).await,
        Command::Enroll {
            coordinator,
            token,
            config,
            state_dir,
        } => {
            let mut config = load_config(config.as_deref())?;
            if let Some(dir) = state_dir {
                config.state_dir = dir;
            }
            if Identity::exists(&config.state_dir) {
                bail!(
                    "{} already holds a node identity; delete the node and remove the directory to enrol again",
                    config.state_dir.display()
                );
            }
            let (addr, _) = net::resolve(&coordinator).await?;
            let endpoint = net::client_endpoint(addr, None)?;
            let host = HostFacts::detect().context("cannot read host facts")?;
            let identity = enroll::enroll(&endpoint, &coordinator, &token, &host.hostname)
                .await
                .context("enrolment failed")?;
            identity
                .save(&config.state_dir)
                .context("cannot save the node identity")?;
            println!(
                "enrolled as {} with {coordinator}; identity saved in {}",
                identity.node_id,
                config.state_dir.display()
            );
            endpoint.wait_idle().await;
            Ok(())
        }
        Command::Inventory { config } => {
            let config = load_config(config.as_deref())?;
            let host = HostFacts::detect().context("cannot read host facts")?;
            let inventory = gpuaas_isolation::host::inventory(backend(&config)?.as_ref(), &host)
                .context("cannot read the inventory")?;
            println!("{}", serde_json::to_string_pretty(&inventory)?);
            Ok(())
        }
        Command::Fleet {
            coordinator,
            tokens_file,
            state_dir,
            count,
            gpus,
            keep_alive_secs,
        } => {
            let config = Config {
                keep_alive_secs,
                idle_timeout_secs: (keep_alive_secs * 6).max(30),
                ..Config::default()
            };
            config.validate().context("invalid fleet settings")?;
            fleet::run(fleet::FleetOptions {
                coordinator,
                tokens_file,
                state_dir,
                count,
                gpus,
                settings: config.session(),
            })
            .await
        }
        Command::Bench { command } => bench::run(command),
    }
}
