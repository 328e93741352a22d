//! Benchmarks run as subcommands (`gpuaas-coordinator bench ...`); see BENCHMARKS.md.

use anyhow::Result;
use clap::Subcommand;

/// Benchmark subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {}

/// Runs a benchmark.
pub async fn run(command: BenchCommand) -> Result<()> {
    match command {}
}
