//! `gpuaas-coordinator`: the GPUaaS control plane.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use gpuaas_coordinator::config::Config;
use gpuaas_coordinator::{bench, dev, observability, server};

#[derive(Debug, Parser)]
#[command(name = "gpuaas-coordinator", version, about = "GPUaaS control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the state directory, the store, the cluster CA and the bootstrap admin token.
    Init {
        /// Config file (only state_dir is used).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run the coordinator.
    Serve {
        /// Config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run a coordinator and simulated GPU nodes on loopback (no GPU, no root).
    Dev {
        /// Number of simulated nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// GPUs of each simulated node.
        #[arg(long, default_value = "8xH100-80GB")]
        gpus: String,
        /// Keep state here instead of a temporary directory.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// QUIC listen address for the simulated agents.
        #[arg(long, default_value = "127.0.0.1:7443")]
        node_listen: SocketAddr,
        /// Admin API listen address.
        #[arg(long, default_value = "127.0.0.1:8443")]
        api_listen: SocketAddr,
        /// Heartbeat interval in seconds.
        #[arg(long, default_value_t = 5)]
        heartbeat_secs: u64,
    },
    /// Benchmarks (see BENCHMARKS.md).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn load(path: &std::path::Path) -> Result<Config> {
    Config::load(path).with_context(|| format!("cannot use config {}", path.display()))
}

#[tokio::main]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    observability::init();
    let cli = Cli::parse();
    match cli.command {
        Command::Init { config } => {
            let config = match config {
                Some(path) => load(&path)?,
                None => Config::default(),
            };
            let init = server::init(&config.state_dir).await?;
            println!(
                "state directory {}\ncluster CA fingerprint sha256:{} ({})\nadmin token {}",
                config.state_dir.display(),
                gpuaas_proto::token::to_hex(&init.ca.fingerprint()),
                if init.ca_created {
                    "created"
                } else {
                    "existing"
                },
                if init.admin_token_created {
                    format!(
                        "written to {}",
                        config.state_dir.join(server::ADMIN_TOKEN_FILE).display()
                    )
                } else {
                    "already exists".to_owned()
                },
            );
            Ok(())
        }
        Command::Serve { config } => {
            let config = load(&config)?;
            let running = server::start(&config).await?;
            server::shutdown_signal().await?;
            running.shutdown().await;
            Ok(())
        }
        Command::Dev {
            nodes,
            gpus,
            state_dir,
            node_listen,
            api_listen,
            heartbeat_secs,
        } => {
            dev::run(dev::DevOptions {
                nodes,
                gpus,
                state_dir,
                node_listen,
                api_listen,
                heartbeat_secs,
            })
            .await
        }
        Command::Bench(command) => bench::run(command).await,
    }
}
