//! Logging for the coordinator binary: journald when run under systemd, stderr otherwise.
//!
//! The filter comes from `RUST_LOG` (default `info`). Under systemd (`JOURNAL_STREAM` set) a
//! `tracing-journald` layer is used; if the journal socket cannot be opened, logging falls back
//! to stderr with a warning.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        match tracing_journald::layer() {
            Ok(journald) => {
                registry.with(journald).init();
                return;
            }
            Err(e) => {
                registry
                    .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
                    .init();
                tracing::warn!(error = %e, "journald unavailable; logging to stderr");
                return;
            }
        }
    }
    registry
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();
}
