//! The agent's configuration file: strict TOML, defaults in one place, one `validate`.
//!
//! ```toml
//! state_dir = "/var/lib/gpuaas-agent"  # identity (key 0600, certificates)
//! # coordinator = "coord.example:7443" # overrides the address saved at enrolment
//! backend = "nvml"                     # or "sim" (tests, dev)
//! sim_gpus = "8xH100-80GB"             # GPUs of the simulated backend
//! keep_alive_secs = 10                 # QUIC keep-alive (heartbeats usually keep it busy)
//! idle_timeout_secs = 30               # QUIC idle timeout
//! reconnect_min_ms = 500               # first reconnect delay
//! reconnect_max_ms = 30000             # reconnect delay cap
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

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
    /// Not valid TOML for this schema (unknown key, wrong type): the message names the key.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        #[source]
        source: toml::de::Error,
    },
    /// A key has a value outside its range.
    #[error("invalid value for {key}: {problem}")]
    Value {
        /// The key.
        key: &'static str,
        /// What is wrong.
        problem: String,
    },
}

/// Which GPU backend discovers the node's GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// NVML (the NVIDIA driver's management library), loaded at run time.
    Nvml,
    /// A simulated host obeying the same MIG rules.
    Sim,
}

/// The agent's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory of the node identity.
    pub state_dir: PathBuf,
    /// The coordinator's `host:port`; defaults to the address used at enrolment.
    pub coordinator: Option<String>,
    /// GPU backend.
    pub backend: BackendKind,
    /// GPUs of the simulated backend.
    pub sim_gpus: String,
    /// QUIC keep-alive interval, seconds.
    pub keep_alive_secs: u64,
    /// QUIC idle timeout, seconds.
    pub idle_timeout_secs: u64,
    /// First reconnect delay, milliseconds.
    pub reconnect_min_ms: u64,
    /// Cap of the reconnect delay, milliseconds.
    pub reconnect_max_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/gpuaas-agent"),
            coordinator: None,
            backend: BackendKind::Nvml,
            sim_gpus: "8xH100-80GB".into(),
            keep_alive_secs: 10,
            idle_timeout_secs: 30,
            reconnect_min_ms: 500,
            reconnect_max_ms: 30_000,
        }
    }
}

/// Session timing derived from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct SessionSettings {
    /// QUIC keep-alive interval.
    pub keep_alive: Duration,
    /// QUIC idle timeout.
    pub idle_timeout: Duration,
    /// First reconnect delay.
    pub reconnect_min: Duration,
    /// Reconnect delay cap.
    pub reconnect_max: Duration,
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

    /// Parses and validates config text (`path` only names it in errors).
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
        if let Some(c) = &self.coordinator
            && crate::net::split_host_port(c).is_none()
        {
            return bad("coordinator", format!("{c:?} is not host:port"));
        }
        if !(1..=60).contains(&self.keep_alive_secs) {
            return bad(
                "keep_alive_secs",
                format!("{} is outside 1..=60", self.keep_alive_secs),
            );
        }
        if self.idle_timeout_secs < 2 * self.keep_alive_secs || self.idle_timeout_secs > 600 {
            return bad(
                "idle_timeout_secs",
                format!(
                    "{} must be between twice keep_alive_secs and 600",
                    self.idle_timeout_secs
                ),
            );
        }
        if self.reconnect_min_ms == 0 || self.reconnect_min_ms > self.reconnect_max_ms {
            return bad(
                "reconnect_min_ms",
                format!(
                    "{} must be positive and at most reconnect_max_ms ({})",
                    self.reconnect_min_ms, self.reconnect_max_ms
                ),
            );
        }
        if self.reconnect_max_ms > 600_000 {
            return bad(
                "reconnect_max_ms",
                format!("{} is over 600000", self.reconnect_max_ms),
            );
        }
        if self.backend == BackendKind::Sim
            && let Err(e) = gpuaas_isolation::sim::SimSpec::parse(&self.sim_gpus)
        {
            return bad("sim_gpus", e.to_string());
        }
        Ok(())
    }

    /// Session timing.
    pub fn session(&self) -> SessionSettings {
        SessionSettings {
            keep_alive: Duration::from_secs(self.keep_alive_secs),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            reconnect_min: Duration::from_millis(self.reconnect_min_ms),
            reconnect_max: Duration::from_millis(self.reconnect_max_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("agent.toml"))
    }

    #[test]
    fn defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.backend, BackendKind::Nvml);
        assert_eq!(c.session().reconnect_max, Duration::from_secs(30));
    }

    #[test]
    fn unknown_key_and_bad_values_are_named() {
        let err = parse("backnd = \"sim\"").unwrap_err().to_string();
        assert!(err.contains("backnd"), "{err}");
        let err = parse("backend = \"cuda\"").unwrap_err().to_string();
        assert!(err.contains("backend"), "{err}");
        let err = parse("keep_alive_secs = 0").unwrap_err().to_string();
        assert!(err.contains("keep_alive_secs"), "{err}");
        let err = parse("coordinator = \"no-port\"").unwrap_err().to_string();
        assert!(err.contains("coordinator"), "{err}");
        let err = parse("reconnect_min_ms = 5000\nreconnect_max_ms = 100")
            .unwrap_err()
            .to_string();
        assert!(err.contains("reconnect_min_ms"), "{err}");
        let err = parse("backend = \"sim\"\nsim_gpus = \"8xB9000\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sim_gpus"), "{err}");
    }
}
