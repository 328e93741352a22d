//! Assembles a running coordinator from a [`Config`]: state directory, store, cluster CA,
//! bootstrap admin token, the node QUIC endpoint and the admin HTTPS API.

use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use gpuaas_proto::messages::{Term, close_code};
use tokio::task::JoinHandle;

use crate::api::{ApiState, router};
use crate::config::Config;
use crate::fleet::registry::Registry;
use crate::fleet::tls::{RevokedNodes, TransportSettings, https_server_config, quic_server_config};
use crate::fleet::{FleetContext, FleetSettings};
use crate::pki::{ClusterCa, sha256, write_private};
use crate::store::{Command, Store, read};

/// File in the state directory holding the bootstrap admin token (0600).
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// File name of the store in the state directory.
pub const STORE_FILE: &str = "coordinator.db";
/// Secret keying QUIC stateless resets (0600), stable across restarts.
pub const RESET_KEY_FILE: &str = "quic-reset.key";

/// Reads a 32-byte secret from `path`, creating it (0600) if missing.
fn load_or_create_secret(path: &Path) -> Result<[u8; 32]> {
    match std::fs::read(path) {
        Ok(secret) if secret.len() == 32 => {
            let mut out = [0u8; 32];
            out.copy_from_slice(&secret);
            Ok(out)
        }
        Ok(secret) => anyhow::bail!(
            "{} holds {} bytes, expected 32; remove it to create a new one",
            path.display(),
            secret.len()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret: [u8; 32] = rand::random();
            write_private(path, &secret, 0o600)
                .with_context(|| format!("cannot create {}", path.display()))?;
            Ok(secret)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// What `init` produced.
#[derive(Debug)]
pub struct Initialized {
    /// The store.
    pub store: Store,
    /// The cluster CA.
    pub ca: ClusterCa,
    /// Whether the CA was created now.
    pub ca_created: bool,
    /// Whether the bootstrap admin token was created now.
    pub admin_token_created: bool,
}

/// Creates (or opens) the state directory, the store, the cluster CA and the bootstrap admin
/// token. Idempotent: a second call changes nothing.
pub async fn init(state_dir: &Path) -> Result<Initialized> {
    if !state_dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .with_context(|| format!("cannot create state directory {}", state_dir.display()))?;
    }
    std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict state directory {}", state_dir.display()))?;
    let dir = state_dir.to_owned();
    let (store, (ca, ca_created)) = tokio::task::spawn_blocking(move || -> Result<_> {
        let store = Store::open(dir.join(STORE_FILE))
            .with_context(|| format!("cannot open the store in {}", dir.display()))?;
        let ca = ClusterCa::load_or_create(&dir).context("cluster CA")?;
        Ok((store, ca))
    })
    .await
    .context("store start-up task failed")??;
    let existing = store
        .read(read::count_api_tokens)
        .await
        .context("cannot count API tokens")?;
    let admin_token_created = existing == 0;
    if admin_token_created {
        let secret: [u8; 32] = rand::random();
        let token = gpuaas_proto::token::to_hex(&secret);
        // The file first: if storing fails, the next start writes a new token over it; the
        // other order could leave a stored token that nobody can read.
        write_private(
            &state_dir.join(ADMIN_TOKEN_FILE),
            format!("{token}\n").as_bytes(),
            0o600,
        )
        .context("cannot write the bootstrap admin token")?;
        store
            .execute(Command::CreateApiToken {
                name: "bootstrap-admin".into(),
                sha256: sha256(token.as_bytes()),
                role: "platform-admin".into(),
                created_at_ms: crate::clock::now_ms(),
            })
            .await
            .context("cannot store the bootstrap admin token")?;
        tracing::info!(path = %state_dir.join(ADMIN_TOKEN_FILE).display(),
            "bootstrap admin token written");
    }
    Ok(Initialized {
        store,
        ca,
        ca_created,
        admin_token_created,
    })
}

/// A running coordinator.
#[derive(Debug)]
pub struct Running {
    /// Where agents connect (QUIC).
    pub node_addr: SocketAddr,
    /// Where the admin API listens (HTTPS).
    pub api_addr: SocketAddr,
    /// The fleet context (store, CA, registry).
    pub fleet: Arc<FleetContext>,
    /// The state directory.
    pub state_dir: PathBuf,
    endpoint: quinn::Endpoint,
    api: axum_server::Handle<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

/// Starts a coordinator.
pub async fn start(config: &Config) -> Result<Running> {
    config.validate().context("invalid configuration")?;
    let init = init(&config.state_dir).await?;
    let store = init.store;
    let ca = Arc::new(init.ca);
    let deleted = store
        .read(read::deleted_node_ids)
        .await
        .context("cannot read deleted nodes")?;
    let revoked = Arc::new(RevokedNodes::new(deleted));
    let fleet = Arc::new(FleetContext {
        store,
        ca: ca.clone(),
        registry: Arc::new(Registry::new(
            i64::try_from(config.node_timeout().as_millis()).unwrap_or(i64::MAX),
        )),
        revoked: revoked.clone(),
        settings: FleetSettings {
            heartbeat_interval: config.heartbeat_interval(),
            node_timeout: config.node_timeout(),
            node_cert_ttl: Duration::from_secs(config.node_cert_ttl_secs),
            term: Term(1),
        },
    });

    let quic = quic_server_config(
        &ca,
        ca.issue_server(&config.server_names)
            .context("server certificate")?,
        revoked,
        TransportSettings {
            idle_timeout: Duration::from_secs(config.idle_timeout_secs),
        },
    )?;
    let reset_secret = load_or_create_secret(&config.state_dir.join(RESET_KEY_FILE))?;
    let endpoint = crate::fleet::bind(config.node_listen, quic, &reset_secret)
        .with_context(|| format!("cannot listen for nodes on {}", config.node_listen))?;
    let node_addr = endpoint.local_addr().context("node endpoint address")?;

    let https = https_server_config(ca.issue_server(&config.server_names)?)?;
    let listener = std::net::TcpListener::bind(config.api_listen)
        .with_context(|| format!("cannot listen for the admin API on {}", config.api_listen))?;
    listener.set_nonblocking(true).context("admin API socket")?;
    let api_addr = listener.local_addr().context("admin API address")?;
    let handle = axum_server::Handle::new();
    let app = router(ApiState {
        fleet: fleet.clone(),
    });
    let api_server = axum_server::from_tcp_rustls(
        listener,
        axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(https)),
    )
    .context("admin API server")?
    .handle(handle.clone());
    let api_task = tokio::spawn(async move {
        if let Err(e) = api_server.serve(app.into_make_service()).await {
            tracing::error!(error = %e, "admin API server stopped");
        }
    });
    let fleet_task = tokio::spawn(crate::fleet::serve(endpoint.clone(), fleet.clone()));
    tracing::info!(%node_addr, %api_addr, ca_fingerprint = %gpuaas_proto::token::to_hex(&ca.fingerprint()),
        "coordinator started");
    Ok(Running {
        node_addr,
        api_addr,
        fleet,
        state_dir: config.state_dir.clone(),
        endpoint,
        api: handle,
        tasks: vec![api_task, fleet_task],
    })
}

impl Running {
    /// Stops accepting work, closes every node connection and waits briefly for it to drain.
    pub async fn shutdown(self) {
        self.endpoint
            .close(close_code::SHUTDOWN.into(), b"coordinator shutting down");
        self.api.graceful_shutdown(Some(Duration::from_secs(2)));
        let _ = tokio::time::timeout(Duration::from_secs(3), self.endpoint.wait_idle()).await;
        for task in self.tasks {
            task.abort();
        }
        tracing::info!("coordinator stopped");
    }

    /// Path of the bootstrap admin token file.
    pub fn admin_token_path(&self) -> PathBuf {
        self.state_dir.join(ADMIN_TOKEN_FILE)
    }
}

/// Waits for SIGINT (Ctrl-C) or SIGTERM (systemd stop).
pub async fn shutdown_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot wait for Ctrl-C"),
        _ = term.recv() => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn init_is_idempotent_and_keeps_secrets_private() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = init(&state).await.unwrap();
        assert!(first.ca_created && first.admin_token_created);
        let fingerprint = first.ca.fingerprint();
        first.store.close().await.unwrap();
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join(ADMIN_TOKEN_FILE)), 0o600);
        assert_eq!(mode(&state.join("ca.key")), 0o600);
        let token = std::fs::read_to_string(state.join(ADMIN_TOKEN_FILE)).unwrap();

        let second = init(&state).await.unwrap();
        assert!(!second.ca_created && !second.admin_token_created);
        assert_eq!(second.ca.fingerprint(), fingerprint);
        assert_eq!(
            std::fs::read_to_string(state.join(ADMIN_TOKEN_FILE)).unwrap(),
            token
        );
        let hash = sha256(token.trim().as_bytes());
        let found = second
            .store
            .read(move |c| read::api_token_by_hash(c, &hash))
            .await
            .unwrap();
        assert!(found.is_some(), "the token in the file is the stored one");
    }

    #[test]
    fn reset_secret_is_created_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RESET_KEY_FILE);
        let secret = load_or_create_secret(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(load_or_create_secret(&path).unwrap(), secret);
        std::fs::write(&path, b"short").unwrap();
        let err = load_or_create_secret(&path).unwrap_err().to_string();
        assert!(err.contains("expected 32"), "{err}");
    }
}
