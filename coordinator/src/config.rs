//! The coordinator's configuration file: strict TOML, defaults in one place, one `validate`.
//!
//! ```toml
//! state_dir = "/var/lib/gpuaas-coordinator"   # store, cluster CA, admin token
//! node_listen = "0.0.0.0:7443"                 # QUIC, agents connect here
//! api_listen = "127.0.0.1:8443"                # admin HTTPS API
//! server_names = ["localhost", "127.0.0.1"]    # names/IPs in the server certificate
//! heartbeat_interval_secs = 5                  # agents send a heartbeat this often
//! node_timeout_secs = 15                       # silence after which a node is NotReady
//! node_cert_ttl_secs = 86400                   # lifetime of node certificates
//! idle_timeout_secs = 15                       # QUIC idle timeout (bounds how long a node
//!                                              # that missed a restart keeps a dead session)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Heartbeat interval bounds, seconds.
pub const HEARTBEAT_SECS: std::ops::RangeInclusive<u64> = 1..=300;
/// Node certificate lifetime bounds, seconds (10 minutes to 30 days).
pub const NODE_CERT_TTL_SECS: std::ops::RangeInclusive<u64> = 600..=30 * 86_400;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown key, wrong type, ...).
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, which names the key and line.
        #[source]
        source: toml::de::Error,
    },
    /// A key has a value outside its allowed range.
    #[error("invalid value for {key}: {problem}")]
    Value {
        /// The key.
        key: &'static str,
        /// What is wrong.
        problem: String,
    },
}

/// The coordinator's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory for the store, the cluster CA and the bootstrap admin token.
    pub state_dir: PathBuf,
    /// QUIC listen address for agents.
    pub node_listen: SocketAddr,
    /// HTTPS listen address of the admin API.
    pub api_listen: SocketAddr,
    /// DNS names and IP addresses put into the server certificate.
    pub server_names: Vec<String>,
    /// Heartbeat interval told to agents, seconds.
    pub heartbeat_interval_secs: u64,
    /// Silence after which a node is NotReady, seconds.
    pub node_timeout_secs: u64,
    /// Lifetime of node certificates, seconds.
    pub node_cert_ttl_secs: u64,
    /// QUIC idle timeout, seconds.
    pub idle_timeout_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/gpuaas-coordinator"),
            node_listen: SocketAddr::from(([0, 0, 0, 0], 7443)),
            api_listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            server_names: vec!["localhost".into(), "127.0.0.1".into()],
            heartbeat_interval_secs: 5,
            node_timeout_secs: 15,
            node_cert_ttl_secs: 86_400,
            idle_timeout_secs: 15,
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text (`path` is only used in messages).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, problem: String| Err(ConfigError::Value { key, problem });
        if self.state_dir.as_os_str().is_empty() {
            return bad("state_dir", "must not be empty".into());
        }
        if !HEARTBEAT_SECS.contains(&self.heartbeat_interval_secs) {
            return bad(
                "heartbeat_interval_secs",
                format!(
                    "{} is outside {HEARTBEAT_SECS:?}",
                    self.heartbeat_interval_secs
                ),
            );
        }
        if self.node_timeout_secs < 2 * self.heartbeat_interval_secs {
            return bad(
                "node_timeout_secs",
                format!(
                    "{} must be at least twice heartbeat_interval_secs ({})",
                    self.node_timeout_secs, self.heartbeat_interval_secs
                ),
            );
        }
        if self.idle_timeout_secs < 2 * self.heartbeat_interval_secs {
            return bad(
                "idle_timeout_secs",
                format!(
                    "{} must be at least twice heartbeat_interval_secs ({})",
                    self.idle_timeout_secs, self.heartbeat_interval_secs
                ),
            );
        }
        if !NODE_CERT_TTL_SECS.contains(&self.node_cert_ttl_secs) {
            return bad(
                "node_cert_ttl_secs",
                format!(
                    "{} is outside {NODE_CERT_TTL_SECS:?}",
                    self.node_cert_ttl_secs
                ),
            );
        }
        if self.server_names.is_empty() {
            return bad("server_names", "needs at least one name".into());
        }
        if let Some(name) = self.server_names.iter().find(|n| {
            n.is_empty()
                || n.len() > 253
                || !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c))
        }) {
            return bad(
                "server_names",
                format!("{name:?} is not a DNS name or IP address"),
            );
        }
        Ok(())
    }

    /// Heartbeat interval.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.heartbeat_interval_secs)
    }

    /// Node timeout.
    pub fn node_timeout(&self) -> Duration {
        Duration::from_secs(self.node_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.heartbeat_interval_secs, 5);
        assert_eq!(c.node_listen.port(), 7443);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("heartbeat_secs = 5").unwrap_err().to_string();
        assert!(err.contains("heartbeat_secs"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = parse("heartbeat_interval_secs = 0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("heartbeat_interval_secs"), "{err}");
        let err = parse("node_timeout_secs = 3").unwrap_err().to_string();
        assert!(err.contains("node_timeout_secs"), "{err}");
        let err = parse("node_listen = \"nowhere\"").unwrap_err().to_string();
        assert!(err.contains("node_listen"), "{err}");
        let err = parse("server_names = [\"a b\"]").unwrap_err().to_string();
        assert!(err.contains("server_names"), "{err}");
    }
}
