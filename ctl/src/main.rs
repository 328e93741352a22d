//! `gpuaasctl`: the GPUaaS command-line client. It talks to the coordinator's admin HTTP API
//! only (HTTPS, bearer token) and never to nodes.
//!
//! ```text
//! gpuaasctl token create [--ttl 1h] [--description TEXT]
//! gpuaasctl node list
//! gpuaasctl node get <ID>
//! gpuaasctl node delete <ID>
//! ```
//!
//! Global options: `--endpoint`, `--token`, `--ca-cert`, `--config` (see [`config`] for the
//! environment variables and the config file) and `-o table|json`.
//!
//! Modules: [`config`] resolves the settings, [`client`] speaks the API, [`output`] renders
//! answers. This file parses the command line and dispatches. Errors are printed as
//! `error: ...` on stderr with exit status 1 (2 for a command-line mistake, from clap).

mod client;
mod config;
mod output;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gpuaas_proto::NodeId;
use time::OffsetDateTime;

use crate::client::{AdminClient, ClientError, CreateToken};
use crate::config::Flags;
use crate::output::Format;

#[derive(Debug, Parser)]
#[command(name = "gpuaasctl", version, about = "Administer a GPUaaS cluster")]
struct Cli {
    /// Base URL of the coordinator's admin API, e.g. https://coordinator:8443 [env:
    /// GPUAAS_ENDPOINT; config: endpoint]
    #[arg(long, global = true, value_name = "URL", help_heading = "Connection")]
    endpoint: Option<String>,

    /// Admin bearer token; prefer the environment or the config file, as command lines are
    /// visible to other users [env: GPUAAS_TOKEN; config: token]
    #[arg(long, global = true, value_name = "TOKEN", help_heading = "Connection")]
    token: Option<String>,

    /// PEM file of the cluster CA, trusted exclusively (default: the system's trust store)
    /// [env: GPUAAS_CA_CERT; config: ca_cert]
    #[arg(long, global = true, value_name = "FILE", help_heading = "Connection")]
    ca_cert: Option<PathBuf>,

    /// Config file (TOML: endpoint, token, ca_cert) [env: GPUAAS_CONFIG; default:
    /// $XDG_CONFIG_HOME/gpuaas/ctl.toml or ~/.config/gpuaas/ctl.toml, if it exists]
    #[arg(long, global = true, value_name = "FILE", help_heading = "Connection")]
    config: Option<PathBuf>,

    /// Output format
    #[arg(
        short,
        long,
        global = true,
        value_enum,
        default_value_t = Format::Table
    )]
    output: Format,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enrolment tokens
    #[command(subcommand)]
    Token(TokenCommand),
    /// Enrolled nodes
    #[command(subcommand)]
    Node(NodeCommand),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a single-use enrolment token for one node (its secret is shown only once)
    Create {
        /// Lifetime, e.g. 30m, 1h, 2days [default: the server's, one hour]
        #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
        ttl: Option<u64>,
        /// Free text shown with the token, e.g. the host it is meant for
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// List the enrolled nodes
    List,
    /// Show one node and its GPUs
    Get {
        /// Node id, node-<16 hex digits>
        #[arg(value_parser = parse_node_id)]
        id: NodeId,
    },
    /// Delete (revoke) a node: its certificate is no longer accepted
    Delete {
        /// Node id, node-<16 hex digits>
        #[arg(value_parser = parse_node_id)]
        id: NodeId,
    },
}

/// A humantime duration (`90s`, `30m`, `1h`, `2days`) as whole seconds, at least one.
fn parse_ttl(s: &str) -> Result<u64, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 90s, 30m, 1h)"))?;
    if d.subsec_nanos() != 0 {
        return Err("the lifetime must be a whole number of seconds".to_owned());
    }
    if d.as_secs() == 0 {
        return Err("the lifetime must be at least 1s".to_owned());
    }
    Ok(d.as_secs())
}

fn parse_node_id(s: &str) -> Result<NodeId, gpuaas_proto::IdParseError> {
    s.parse()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{}", error_line(&err));
            ExitCode::FAILURE
        }
    }
}

/// The line printed on stderr for a failed command. An error the API described is printed as
/// the server said it, `error: <message> (<code>, HTTP <status>)`; anything else with its chain
/// of causes.
fn error_line(err: &anyhow::Error) -> String {
    let api = err
        .chain()
        .find_map(|e| match e.downcast_ref::<ClientError>() {
            Some(ClientError::Api(api)) => Some(api),
            _ => None,
        });
    match api {
        Some(api) => format!("error: {api}"),
        None => format!("error: {err:#}"),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let flags = Flags {
        endpoint: cli.endpoint,
        token: cli.token,
        ca_cert: cli.ca_cert,
        config: cli.config,
    };
    let settings =
        config::load(&flags, |var: &str| std::env::var_os(var)).context("loading settings")?;

    // reqwest is built without a default rustls crypto provider; this process uses ring. An
    // error only means one is already installed, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = AdminClient::new(
        settings.endpoint,
        settings.token,
        settings.ca_cert.as_deref(),
    )
    .context("setting up the API client")?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let text = runtime.block_on(execute(&client, cli.command, cli.output))?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .context("writing to stdout")
}

/// Runs one command and returns what to print on stdout.
async fn execute(client: &AdminClient, command: Command, format: Format) -> anyhow::Result<String> {
    let now = OffsetDateTime::now_utc();
    let json = |raw: &[u8]| output::json(raw).context("pretty-printing the server's answer");
    match command {
        Command::Token(TokenCommand::Create { ttl, description }) => {
            let request = CreateToken {
                ttl_seconds: ttl,
                description,
            };
            let created = client
                .create_token(&request)
                .await
                .context("creating an enrolment token")?;
            match format {
                Format::Json => json(&created.raw),
                Format::Table => {
                    eprintln!(
                        "note: the token is shown only this once; hand it to the node's provisioning"
                    );
                    Ok(output::token_created(&created.value))
                }
            }
        }
        Command::Node(NodeCommand::List) => {
            let list = client.list_nodes().await.context("listing nodes")?;
            match format {
                Format::Json => json(&list.raw),
                Format::Table => Ok(output::node_table(&list.value.nodes, now)),
            }
        }
        Command::Node(NodeCommand::Get { id }) => {
            let node = client
                .get_node(id)
                .await
                .with_context(|| format!("getting node {id}"))?;
            match format {
                Format::Json => json(&node.raw),
                Format::Table => Ok(output::node_detail(&node.value, now)),
            }
        }
        Command::Node(NodeCommand::Delete { id }) => {
            client
                .delete_node(id)
                .await
                .with_context(|| format!("deleting node {id}"))?;
            // The API answers 204 without a body: nothing to print as JSON.
            Ok(match format {
                Format::Json => String::new(),
                Format::Table => format!("node {id} deleted\n"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use clap::error::ErrorKind;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("gpuaasctl").chain(args.iter().copied()))
    }

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn api_errors_are_printed_as_the_server_said() {
        let api = client::ApiError {
            status: 404,
            code: "not_found".into(),
            message: "no node node-00000000000000ff".into(),
        };
        let err = anyhow::Error::from(ClientError::Api(api)).context("getting node x");
        assert_eq!(
            error_line(&err),
            "error: no node node-00000000000000ff (not_found, HTTP 404)"
        );
        let err = anyhow::anyhow!("connection refused").context("listing nodes");
        assert_eq!(error_line(&err), "error: listing nodes: connection refused");
    }

    #[test]
    fn help_names_every_environment_variable() {
        let help = Cli::command().render_long_help().to_string();
        for var in [
            config::ENV_ENDPOINT,
            config::ENV_TOKEN,
            config::ENV_CA_CERT,
            config::ENV_CONFIG,
        ] {
            assert!(help.contains(var), "{var} missing from --help");
        }
    }

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("90s"), Ok(90));
        assert_eq!(parse_ttl("2days"), Ok(172_800));
        assert_eq!(parse_ttl("1h 30m"), Ok(5400));
        assert!(parse_ttl("1500ms").unwrap_err().contains("whole number"));
        assert!(parse_ttl("0s").unwrap_err().contains("at least 1s"));
        assert!(parse_ttl("soon").unwrap_err().contains("examples"));
        assert!(parse_ttl("3600").is_err(), "a unit is required");
    }

    #[test]
    fn token_create_options() {
        let cli = parse(&["token", "create", "--ttl", "2h", "--description", "rack 12"]).unwrap();
        match cli.command {
            Command::Token(TokenCommand::Create { ttl, description }) => {
                assert_eq!(ttl, Some(7200));
                assert_eq!(description.as_deref(), Some("rack 12"));
            }
            other => panic!("{other:?}"),
        }
        let cli = parse(&["token", "create"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Token(TokenCommand::Create {
                ttl: None,
                description: None
            })
        ));
    }

    #[test]
    fn bad_node_id_is_refused_before_any_request() {
        for bad in [
            "gpu-01",
            "node-123",
            "alloc-3f9a1c2b4d5e6f70",
            "node-3f9a1c2b4d5e6f7g",
        ] {
            let err = parse(&["node", "get", bad]).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::ValueValidation, "{bad}");
            let msg = err.to_string();
            assert!(msg.contains("node-<16 hex digits>"), "{bad}: {msg}");
            assert!(parse(&["node", "delete", bad]).is_err());
        }
        let cli = parse(&["node", "delete", "node-3F9A1C2B4D5E6F70"]).unwrap();
        match cli.command {
            Command::Node(NodeCommand::Delete { id }) => {
                assert_eq!(id.to_string(), "node-3f9a1c2b4d5e6f70");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn global_options_go_anywhere() {
        let cli = parse(&[
            "node",
            "list",
            "-o",
            "json",
            "--endpoint",
            "https://c:8443",
            "--ca-cert",
            "/etc/gpuaas/ca.pem",
        ])
        .unwrap();
        assert_eq!(cli.output, Format::Json);
        assert_eq!(cli.endpoint.as_deref(), Some("https://c:8443"));
        assert_eq!(
            cli.ca_cert.as_deref(),
            Some(std::path::Path::new("/etc/gpuaas/ca.pem"))
        );
        assert_eq!(parse(&["node", "list"]).unwrap().output, Format::Table);
        assert!(parse(&["node", "list", "-o", "yaml"]).is_err());
    }
}
