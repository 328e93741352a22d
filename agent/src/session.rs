//! The agent's control session with the coordinator, and the reconnect loop around it.
//!
//! A session: connect with the node certificate (`gpuaas/1`), send Hello (inventory, agent
//! version, wall clock), wait for Welcome, then send heartbeats at the interval the
//! coordinator names and renew the node certificate at two thirds of its life. Frames are read
//! by a task of their own and handed over a channel, because reading a frame is not
//! cancel-safe and the session also waits on timers.
//!
//! Between sessions the agent waits an exponentially growing, jittered, capped delay
//! ([`crate::backoff`]). Only a revoked node stops trying: its identity is useless.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gpuaas_isolation::GpuBackend;
use gpuaas_isolation::host::HostFacts;
use gpuaas_proto::PROTOCOL_VERSION;
use gpuaas_proto::codec::FrameDecoder;
use gpuaas_proto::inventory::Inventory;
use gpuaas_proto::messages::{
    AgentMessage, CoordinatorFrame, CoordinatorMessage, Heartbeat, Hello, RefusalCode, Term,
    close_code,
};
use rustls_pki_types::CertificateDer;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::config::SessionSettings;
use crate::framing::{FrameReadError, FrameWriteError, read_frame, write_frame};
use crate::identity::{Identity, IdentityError, cert_facts, csr};
use crate::net::{NetError, resolve};
use crate::tls::{ClientTlsError, control_config};

const MAX_COORDINATOR_FRAME: u32 = 256 * 1024;
const WELCOME_TIMEOUT: Duration = Duration::from_secs(15);

/// A session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Resolving or binding failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] ClientTlsError),
    /// The connection could not be started.
    #[error("cannot connect: {0}")]
    Start(#[from] quinn::ConnectError),
    /// The connection failed or was closed.
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// A frame could not be sent.
    #[error(transparent)]
    Write(#[from] FrameWriteError),
    /// A frame could not be read.
    #[error(transparent)]
    Read(#[from] FrameReadError),
    /// The coordinator ended the control stream.
    #[error("the coordinator closed the control stream")]
    Closed,
    /// The coordinator refused the session.
    #[error("session refused ({code:?}): {message}")]
    Refused {
        /// Why.
        code: RefusalCode,
        /// The coordinator's words.
        message: String,
    },
    /// The node was deleted; its identity will never work again.
    #[error("this node was deleted at the coordinator; enrol it again: {0}")]
    Revoked(String),
    /// The coordinator broke the protocol.
    #[error("protocol violation by the coordinator: {0}")]
    Protocol(&'static str),
    /// Renewing the certificate failed locally.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The GPU backend failed to report the inventory.
    #[error("cannot read the inventory: {0}")]
    Inventory(String),
}

/// Counts sessions that reached Welcome, for the fleet simulator's reports.
#[derive(Debug, Default)]
pub struct Connected(AtomicUsize);

impl Connected {
    /// Sessions currently past Welcome.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

struct ConnectedGuard(Option<Arc<Connected>>);

impl Drop for ConnectedGuard {
    fn drop(&mut self) {
        if let Some(c) = &self.0 {
            c.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One node's agent: its identity, its hardware and its connection settings.
pub struct NodeAgent {
    /// The node identity.
    pub identity: Identity,
    /// Where the identity lives; renewed certificates are saved there.
    pub state_dir: Option<PathBuf>,
    /// The coordinator's `host:port`.
    pub coordinator: String,
    /// GPU discovery.
    pub backend: Box<dyn GpuBackend>,
    /// Host facts (name, CPUs, memory).
    pub host: HostFacts,
    /// Timing.
    pub settings: SessionSettings,
    /// The QUIC client endpoint.
    pub endpoint: quinn::Endpoint,
    /// Shared session counter (fleet simulator), if any.
    pub connected: Option<Arc<Connected>>,
    highest_term: Term,
    welcomed: bool,
}

/// `Some(Revoked)` when a connection ended because this node was deleted: the coordinator closed
/// the session with `NODE_REVOKED`, or refused the certificate at the handshake with the TLS
/// alert `certificate_revoked` (a node deleted while its agent was offline).
fn revoked(error: &quinn::ConnectionError) -> Option<SessionError> {
    let revoked_alert =
        quinn::TransportErrorCode::crypto(u8::from(rustls::AlertDescription::CertificateRevoked));
    match error {
        quinn::ConnectionError::ApplicationClosed(close)
            if close.error_code == close_code::NODE_REVOKED.into() =>
        {
            Some(SessionError::Revoked(
                String::from_utf8_lossy(&close.reason).into_owned(),
            ))
        }
        quinn::ConnectionError::ConnectionClosed(close) if close.error_code == revoked_alert => {
            Some(SessionError::Revoked(
                "the coordinator refused this node's certificate as revoked".to_owned(),
            ))
        }
        quinn::ConnectionError::TransportError(e) if e.code == revoked_alert => {
            Some(SessionError::Revoked(
                "the coordinator refused this node's certificate as revoked".to_owned(),
            ))
        }
        _ => None,
    }
}

/// When a certificate valid from `not_before_ms` to `not_after_ms` is due for renewal: at two
/// thirds of its life, so a node that misses one attempt still has a third left to retry.
pub fn renewal_due_ms(not_before_ms: i64, not_after_ms: i64) -> i64 {
    let life = not_after_ms.saturating_sub(not_before_ms).max(0);
    not_before_ms.saturating_add(life / 3 * 2)
}

fn wall_clock_ms() -> i64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl NodeAgent {
    /// An agent ready to run.
    pub fn new(
        identity: Identity,
        state_dir: Option<PathBuf>,
        coordinator: String,
        backend: Box<dyn GpuBackend>,
        host: HostFacts,
        settings: SessionSettings,
        endpoint: quinn::Endpoint,
    ) -> Self {
        Self {
            identity,
            state_dir,
            coordinator,
            backend,
            host,
            settings,
            endpoint,
            connected: None,
            highest_term: Term(0),
            welcomed: false,
        }
    }

    /// Runs sessions until the node is revoked; returns that error.
    pub async fn run(mut self) -> SessionError {
        let mut backoff = Backoff::new(self.settings.reconnect_min, self.settings.reconnect_max);
        loop {
            self.welcomed = false;
            let err = match self.session().await {
                Err(SessionError::Revoked(reason)) => return SessionError::Revoked(reason),
                Err(e) => e,
                Ok(()) => SessionError::Closed,
            };
            if self.welcomed {
                backoff.reset();
            }
            let delay = backoff.next_delay(rand::random::<f64>());
            warn!(error = %err, retry_in_ms = delay.as_millis(), "session ended; reconnecting");
            tokio::time::sleep(delay).await;
        }
    }

    /// How many GPUs the backend lists now (0 when it fails, which is logged).
    fn gpus_visible(&self) -> u32 {
        match self.backend.gpus() {
            Ok(gpus) => u32::try_from(gpus.len()).unwrap_or(u32::MAX),
            Err(e) => {
                warn!(error = %e, "the GPU backend failed; reporting no visible GPUs");
                0
            }
        }
    }

    fn inventory(&self) -> Result<Inventory, SessionError> {
        gpuaas_isolation::host::inventory(self.backend.as_ref(), &self.host)
            .map_err(|e| SessionError::Inventory(e.to_string()))
    }

    /// When to renew the certificate: at two thirds of its validity.
    fn renew_at(&self) -> Instant {
        let now = Instant::now();
        let Some((not_before, not_after, _)) = cert_facts(&self.identity.cert) else {
            return now;
        };
        let at_ms = renewal_due_ms(not_before, not_after);
        let wait = u64::try_from(at_ms.saturating_sub(wall_clock_ms())).unwrap_or(0);
        now + Duration::from_millis(wait)
    }

    fn observe_term(&mut self, term: Term) -> bool {
        if term < self.highest_term {
            warn!(
                term = term.0,
                highest = self.highest_term.0,
                "ignoring a message from a deposed coordinator term"
            );
            return false;
        }
        self.highest_term = term;
        true
    }

    async fn session(&mut self) -> Result<(), SessionError> {
        let (addr, server_name) = resolve(&self.coordinator).await?;
        let config = control_config(
            &self.identity.ca,
            self.identity.cert.clone(),
            self.identity.private_key(),
            self.settings.keep_alive,
            self.settings.idle_timeout,
        )?;
        let conn = match self
            .endpoint
            .connect_with(config, addr, &server_name)?
            .await
        {
            Ok(conn) => conn,
            Err(e) => return Err(revoked(&e).unwrap_or(SessionError::Connection(e))),
        };
        let result = self.converse(&conn).await;
        let result = match (result, conn.close_reason()) {
            (Err(e), Some(reason)) => Err(revoked(&reason).unwrap_or(e)),
            (result, _) => result,
        };
        conn.close(close_code::DONE.into(), b"agent session ended");
        result
    }

    async fn converse(&mut self, conn: &quinn::Connection) -> Result<(), SessionError> {
        let (mut tx, mut rx) = conn.open_bi().await?;
        let hello = Hello {
            protocol: PROTOCOL_VERSION,
            node_id: self.identity.node_id,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            inventory: self.inventory()?,
            wall_clock_ms: wall_clock_ms(),
        };
        write_frame(&mut tx, &AgentMessage::Hello(hello)).await?;

        let (frames_tx, mut frames) = mpsc::channel(8);
        let reader = tokio::spawn(async move {
            let decoder = FrameDecoder::new(MAX_COORDINATOR_FRAME);
            loop {
                let frame = read_frame::<CoordinatorFrame>(&mut rx, &decoder).await;
                let last = !matches!(frame, Ok(Some(_)));
                if frames_tx.send(frame).await.is_err() || last {
                    break;
                }
            }
        });
        let result = self.after_hello(&mut tx, &mut frames).await;
        reader.abort();
        result
    }

    async fn after_hello(
        &mut self,
        tx: &mut quinn::SendStream,
        frames: &mut mpsc::Receiver<Result<Option<CoordinatorFrame>, FrameReadError>>,
    ) -> Result<(), SessionError> {
        let first = tokio::time::timeout(WELCOME_TIMEOUT, frames.recv())
            .await
            .map_err(|_| SessionError::Protocol("no Welcome in time"))?
            .ok_or(SessionError::Closed)??
            .ok_or(SessionError::Closed)?;
        self.observe_term(first.term);
        let welcome = match first.message {
            CoordinatorMessage::Welcome(w) => w,
            CoordinatorMessage::Refused(r) if r.code == RefusalCode::NodeRevoked => {
                return Err(SessionError::Revoked(r.message));
            }
            CoordinatorMessage::Refused(r) => {
                return Err(SessionError::Refused {
                    code: r.code,
                    message: r.message,
                });
            }
            CoordinatorMessage::CertificateRenewed { .. } => {
                return Err(SessionError::Protocol("expected Welcome"));
            }
        };
        if welcome.node_id != self.identity.node_id {
            return Err(SessionError::Protocol("Welcome names another node"));
        }
        self.welcomed = true;
        let _guard = ConnectedGuard(self.connected.clone().inspect(|c| {
            c.0.fetch_add(1, Ordering::Relaxed);
        }));
        info!(node_id = %self.identity.node_id, protocol = %welcome.protocol,
            heartbeat_ms = welcome.heartbeat_interval_ms, "connected to the coordinator");

        let period = Duration::from_millis(welcome.heartbeat_interval_ms.clamp(100, 300_000));
        // A random phase, so nodes that connected together do not heartbeat together.
        let phase = period.mul_f64(rand::random::<f64>());
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seq = 0u64;
        let mut renewing = false;
        loop {
            let renew_at = tokio::time::Instant::from_std(self.renew_at());
            tokio::select! {
                _ = heartbeat.tick() => {
                    seq += 1;
                    let hb = Heartbeat {
                        seq,
                        wall_clock_ms: wall_clock_ms(),
                        gpus_visible: self.gpus_visible(),
                    };
                    write_frame(tx, &AgentMessage::Heartbeat(hb)).await?;
                }
                () = tokio::time::sleep_until(renew_at), if !renewing => {
                    let csr_der = csr(&self.identity.key)?;
                    write_frame(tx, &AgentMessage::RenewCertificate { csr_der }).await?;
                    renewing = true;
                    debug!("certificate renewal requested");
                }
                frame = frames.recv() => {
                    let frame = frame.ok_or(SessionError::Closed)??.ok_or(SessionError::Closed)?;
                    if !self.observe_term(frame.term) {
                        continue;
                    }
                    match frame.message {
                        CoordinatorMessage::CertificateRenewed { cert_der } => {
                            self.install_certificate(cert_der)?;
                            renewing = false;
                        }
                        CoordinatorMessage::Refused(r) if r.code == RefusalCode::NodeRevoked => {
                            return Err(SessionError::Revoked(r.message));
                        }
                        CoordinatorMessage::Refused(r) => {
                            return Err(SessionError::Refused { code: r.code, message: r.message });
                        }
                        CoordinatorMessage::Welcome(_) => {
                            return Err(SessionError::Protocol("second Welcome"));
                        }
                    }
                }
            }
        }
    }

    fn install_certificate(&mut self, cert_der: Vec<u8>) -> Result<(), SessionError> {
        let (_, not_after, cn) = cert_facts(&cert_der)
            .ok_or(SessionError::Protocol("unreadable renewed certificate"))?;
        if cn != self.identity.node_id.to_string() {
            return Err(SessionError::Protocol(
                "renewed certificate is for another node",
            ));
        }
        self.identity.cert = CertificateDer::from(cert_der);
        if let Some(dir) = &self.state_dir {
            self.identity.save_cert(dir)?;
        }
        info!(not_after_ms = not_after, "node certificate renewed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_at_two_thirds_of_life() {
        assert_eq!(renewal_due_ms(0, 3_000), 2_000);
        // a day-long certificate backdated five minutes
        let nb = 1_700_000_000_000 - 300_000;
        let na = 1_700_000_000_000 + 86_400_000;
        assert_eq!(renewal_due_ms(nb, na), nb + (na - nb) / 3 * 2);
        // nonsense validity never panics and is due at once
        assert_eq!(renewal_due_ms(5_000, 1_000), 5_000);
        assert_eq!(
            renewal_due_ms(i64::MIN, i64::MAX),
            i64::MIN + i64::MAX / 3 * 2
        );
    }
}
