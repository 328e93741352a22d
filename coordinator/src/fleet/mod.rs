//! The node-facing side of the coordinator: the QUIC endpoint, enrolment, control sessions and
//! the in-memory registry of which nodes are alive.
//!
//! One endpoint serves two ALPNs. `gpuaas-enroll/1` ([`enroll`]) is open to peers without a
//! certificate and does nothing but enrolment; `gpuaas/1` ([`session`]) requires a node
//! certificate from the cluster CA ([`tls`]). Each connection is served by its own task, so a
//! misbehaving node can only close its own connection.

pub mod enroll;
pub mod framing;
pub mod registry;
pub mod session;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gpuaas_proto::messages::{ALPN_CONTROL, ALPN_ENROLL, Term, close_code};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::clock::now_ms;
use crate::pki::ClusterCa;
use crate::store::Store;
use registry::{NodeStatus, Registry};
use tls::RevokedNodes;

/// Timing and lifetime settings of the fleet.
#[derive(Debug, Clone, Copy)]
pub struct FleetSettings {
    /// How often agents send heartbeats (told to them in Welcome).
    pub heartbeat_interval: Duration,
    /// Silence after which a node turns NotReady.
    pub node_timeout: Duration,
    /// Lifetime of node certificates.
    pub node_cert_ttl: Duration,
    /// The coordinator's leadership term (constant until replication arrives).
    pub term: Term,
}

/// Everything a connection handler needs.
#[derive(Debug)]
pub struct FleetContext {
    /// The state store.
    pub store: Store,
    /// The cluster CA.
    pub ca: Arc<ClusterCa>,
    /// Liveness of connected nodes.
    pub registry: Arc<Registry>,
    /// Certificates of deleted nodes are refused at the handshake.
    pub revoked: Arc<RevokedNodes>,
    /// Timing settings.
    pub settings: FleetSettings,
}

/// Binds the node endpoint on `addr`.
///
/// `reset_secret` keys QUIC stateless resets and the connection-id hash. It is kept in the
/// state directory, so after a crash the restarted coordinator recognises the connection ids of
/// the old connections as its own and answers their packets with resets the agents accept:
/// they reconnect at once instead of waiting for their idle timeout.
pub fn bind(
    addr: SocketAddr,
    config: quinn::ServerConfig,
    reset_secret: &[u8; 32],
) -> std::io::Result<quinn::Endpoint> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_secret);
    let mut cid_key = [0u8; 8];
    cid_key
        .copy_from_slice(&ring::digest::digest(&ring::digest::SHA256, reset_secret).as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(key));
    // quinn sends at most one stateless reset per 20 ms by default: 50 nodes a second, so a
    // fleet of 5,000 would need 100 s to learn of a restart, and a burst of heartbeats within
    // one interval gets a single reset. Resets are always smaller than the packet that
    // provoked them (no amplification, no reset loops), so no interval is needed.
    endpoint_config.min_reset_interval(Duration::ZERO);
    endpoint_config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    let socket = std::net::UdpSocket::bind(addr)?;
    grow_buffers(&socket);
    quinn::Endpoint::new(
        endpoint_config,
        Some(config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}

/// Wanted size of the node socket's kernel buffers. Thousands of agents reconnecting at once
/// (after a coordinator restart) send a burst of 1200-byte Initial packets; with the default
/// 208 KiB buffer most are dropped and every drop costs an agent a handshake timeout. The
/// kernel caps the request at `net.core.rmem_max` / `wmem_max`.
pub const SOCKET_BUFFER_BYTES: usize = 32 << 20;

fn grow_buffers(socket: &std::net::UdpSocket) {
    let sock = socket2::SockRef::from(socket);
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    let got = sock.recv_buffer_size().unwrap_or(0);
    if got < SOCKET_BUFFER_BYTES {
        tracing::info!(
            receive_buffer = got,
            wanted = SOCKET_BUFFER_BYTES,
            "UDP receive buffer capped by net.core.rmem_max; raise it for large fleets"
        );
    }
}

/// Accepts connections until the endpoint is closed.
pub async fn serve(endpoint: quinn::Endpoint, ctx: Arc<FleetContext>) {
    let sweeper = tokio::spawn(sweep_liveness(ctx.clone()));
    while let Some(incoming) = endpoint.accept().await {
        let ctx = ctx.clone();
        let remote = incoming.remote_address();
        tokio::spawn(
            async move {
                let conn = match incoming.await {
                    Ok(conn) => conn,
                    Err(e) => {
                        debug!(error = %e, "handshake failed");
                        return;
                    }
                };
                let alpn = conn
                    .handshake_data()
                    .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                    .and_then(|d| d.protocol);
                match alpn.as_deref() {
                    Some(ALPN_CONTROL) => session::serve(ctx, conn).await,
                    Some(ALPN_ENROLL) => enroll::serve(ctx, conn).await,
                    _ => {
                        warn!("connection without a known ALPN; closing");
                        conn.close(close_code::PROTOCOL_VIOLATION.into(), b"unknown alpn");
                    }
                }
            }
            .instrument(info_span!("conn", %remote)),
        );
    }
    sweeper.abort();
}

/// Logs node liveness transitions once a second.
async fn sweep_liveness(ctx: Arc<FleetContext>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for (node, status) in ctx.registry.sweep(now_ms()) {
            match status {
                NodeStatus::Ready => info!(node_id = %node, "node Ready"),
                NodeStatus::NotReady => warn!(node_id = %node, "node NotReady"),
            }
        }
    }
}
