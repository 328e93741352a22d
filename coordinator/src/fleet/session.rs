//! A node's control session over `gpuaas/1`.
//!
//! The node's identity is the client certificate of the connection, never a message field: a
//! Hello that claims another node id is refused and logged as a security event. After the
//! Hello (validated, version-negotiated, recorded in the store) the coordinator answers
//! Welcome and then reads heartbeats and certificate renewals until the connection ends. A
//! garbage or oversized frame closes this connection only, with a logged reason.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gpuaas_proto::codec::FrameDecoder;
use gpuaas_proto::messages::{
    AgentMessage, CoordinatorFrame, CoordinatorMessage, Hello, Refusal, RefusalCode, Welcome,
    close_code,
};
use gpuaas_proto::{FirstMessage, NodeId, PROTOCOL_VERSION, peek_version};
use rustls_pki_types::CertificateDer;
use tracing::{Instrument, debug, info, info_span, warn};

use super::FleetContext;
use super::framing::{FrameReadError, read_frame, read_payload, write_frame};
use crate::clock::{now_ms, unix_ms};
use crate::pki::node_id_from_cert;
use crate::store::{ApplyError, Command, StoreError};

/// Largest accepted frame from an agent on the control stream.
const MAX_AGENT_FRAME: u32 = 256 * 1024;
/// How long an agent may take to open the control stream and send Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The node id bound into the connection's client certificate, if it presented one.
fn peer_node(conn: &quinn::Connection) -> Option<NodeId> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    node_id_from_cert(chain.first()?).ok()
}

/// Serves one control connection.
pub(super) async fn serve(ctx: Arc<FleetContext>, conn: quinn::Connection) {
    let Some(node) = peer_node(&conn) else {
        warn!(remote = %conn.remote_address(), security_event = "no_client_certificate",
            "refused a control connection without a node certificate");
        conn.close(
            close_code::CERTIFICATE_REQUIRED.into(),
            b"client certificate required",
        );
        return;
    };
    let span = info_span!("session", node_id = %node, remote = %conn.remote_address());
    run(ctx, conn, node).instrument(span).await;
}

async fn send(
    send: &mut quinn::SendStream,
    term: gpuaas_proto::messages::Term,
    message: CoordinatorMessage,
) -> Result<(), super::framing::FrameWriteError> {
    write_frame(send, &CoordinatorFrame { term, message }).await
}

async fn refuse(
    conn: &quinn::Connection,
    stream: &mut quinn::SendStream,
    ctx: &FleetContext,
    code: RefusalCode,
    message: String,
) {
    let refusal = CoordinatorMessage::Refused(Refusal {
        code,
        message: message.clone(),
    });
    if send(stream, ctx.settings.term, refusal).await.is_ok() {
        let _ = stream.finish();
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
    }
    let close = if code == RefusalCode::NodeRevoked {
        close_code::NODE_REVOKED
    } else {
        close_code::REFUSED
    };
    conn.close(close.into(), message.as_bytes());
}

async fn run(ctx: Arc<FleetContext>, conn: quinn::Connection, node: NodeId) {
    let decoder = FrameDecoder::new(MAX_AGENT_FRAME);
    let opened = tokio::time::timeout(HELLO_TIMEOUT, async {
        let (tx, mut rx) = conn.accept_bi().await?;
        let first = read_payload(&mut rx, &decoder).await;
        Ok::<_, quinn::ConnectionError>((tx, rx, first))
    })
    .await;
    let (mut tx, mut rx, first) = match opened {
        Ok(Ok(streams)) => streams,
        Ok(Err(e)) => {
            debug!(error = %e, "connection ended before Hello");
            return;
        }
        Err(_) => {
            warn!("no Hello in time; closing");
            conn.close(close_code::PROTOCOL_VIOLATION.into(), b"no hello");
            return;
        }
    };
    let payload = match first {
        Ok(Some(payload)) => payload,
        Ok(None) => {
            warn!("control stream ended before Hello; closing");
            conn.close(close_code::PROTOCOL_VIOLATION.into(), b"expected hello");
            return;
        }
        Err(e) => {
            warn!(error = %e, "bad frame before Hello; closing");
            conn.close(close_code::PROTOCOL_VIOLATION.into(), b"bad frame");
            return;
        }
    };
    let hello = match decoder.decode_payload::<AgentMessage>(&payload) {
        Ok(AgentMessage::Hello(hello)) => hello,
        Ok(_) => {
            warn!("first control message was not Hello; closing");
            conn.close(close_code::PROTOCOL_VIOLATION.into(), b"expected hello");
            return;
        }
        Err(e) => {
            // An agent of another major version may lay out its Hello differently; its
            // version prefix is stable, so it still gets a refusal naming both versions.
            if let Some(theirs) = peek_version(&payload, FirstMessage::Hello)
                && let Err(mismatch) = PROTOCOL_VERSION.negotiate(theirs)
            {
                warn!(error = %mismatch, "refused an agent of another protocol version");
                refuse(
                    &conn,
                    &mut tx,
                    &ctx,
                    RefusalCode::VersionMismatch,
                    mismatch.to_string(),
                )
                .await;
                return;
            }
            warn!(error = %e, "bad frame before Hello; closing");
            conn.close(close_code::PROTOCOL_VIOLATION.into(), b"bad frame");
            return;
        }
    };
    let Some(session) = accept_hello(&ctx, &conn, &mut tx, node, hello).await else {
        return;
    };
    let ended = read_loop(&ctx, &conn, &mut tx, &mut rx, &decoder, node, session).await;
    ctx.registry.disconnected(node, session);
    let live = ctx.registry.view(node, now_ms());
    let seen = Command::RecordSeen {
        node_id: node,
        seen_at_ms: live.last_heard_ms.unwrap_or_else(now_ms),
        clock_skew_ms: live.clock_skew_ms.unwrap_or(0),
    };
    if let Err(e) = ctx.store.execute(seen).await {
        debug!(error = %e, "could not record the end of the session");
    }
    info!(reason = %ended, "session ended");
}

/// Checks and records a Hello; answers Welcome or a refusal. Returns the registry session.
async fn accept_hello(
    ctx: &FleetContext,
    conn: &quinn::Connection,
    tx: &mut quinn::SendStream,
    node: NodeId,
    hello: Hello,
) -> Option<u64> {
    if hello.node_id != node {
        warn!(security_event = "identity_mismatch", node_id = %node, claimed = %hello.node_id,
            "certificate of one node claimed to be another; refused");
        let msg = format!(
            "certificate is for {node}, message claims {}",
            hello.node_id
        );
        refuse(conn, tx, ctx, RefusalCode::IdentityMismatch, msg).await;
        return None;
    }
    if let Err(e) = hello.validate() {
        refuse(conn, tx, ctx, RefusalCode::BadRequest, e.to_string()).await;
        return None;
    }
    let protocol = match PROTOCOL_VERSION.negotiate(hello.protocol) {
        Ok(v) => v,
        Err(e) => {
            warn!(error = %e, "refused an agent of another protocol version");
            refuse(conn, tx, ctx, RefusalCode::VersionMismatch, e.to_string()).await;
            return None;
        }
    };
    let now = now_ms();
    let skew = hello.wall_clock_ms.saturating_sub(now);
    let record = Command::RecordHello {
        node_id: node,
        agent_version: hello.agent_version.clone(),
        inventory: hello.inventory.clone(),
        seen_at_ms: now,
        clock_skew_ms: skew,
    };
    match ctx.store.execute(record).await {
        Ok(_) => {}
        Err(StoreError::Apply(ApplyError::NodeNotFound { .. })) => {
            // Deleted (or never enrolled): the verifier normally refuses it at the handshake.
            warn!(security_event = "deleted_node_session", node_id = %node,
                "session of a deleted node refused");
            let msg = format!("node {node} was deleted");
            refuse(conn, tx, ctx, RefusalCode::NodeRevoked, msg).await;
            return None;
        }
        Err(e) => {
            // A store failure is ours, not the node's: it retries with backoff.
            tracing::error!(error = %e, "hello could not be recorded; asking the agent to retry");
            let msg = "the coordinator could not record the session; retry later".to_owned();
            refuse(conn, tx, ctx, RefusalCode::Internal, msg).await;
            return None;
        }
    }
    let session = ctx
        .registry
        .connected(node, Box::new(conn.clone()), now, skew);
    let welcome = CoordinatorMessage::Welcome(Welcome {
        protocol,
        node_id: node,
        heartbeat_interval_ms: u64::try_from(ctx.settings.heartbeat_interval.as_millis())
            .unwrap_or(u64::MAX),
        wall_clock_ms: now,
    });
    if let Err(e) = send(tx, ctx.settings.term, welcome).await {
        debug!(error = %e, "could not send Welcome");
        ctx.registry.disconnected(node, session);
        return None;
    }
    info!(gpus = hello.inventory.gpus.len(), agent_version = %hello.agent_version,
        clock_skew_ms = skew, "node connected");
    Some(session)
}

/// Reads agent messages until the connection ends; returns why it ended.
async fn read_loop(
    ctx: &FleetContext,
    conn: &quinn::Connection,
    tx: &mut quinn::SendStream,
    rx: &mut quinn::RecvStream,
    decoder: &FrameDecoder,
    node: NodeId,
    session: u64,
) -> String {
    loop {
        let message = match read_frame::<AgentMessage>(rx, decoder).await {
            Ok(Some(message)) => message,
            Ok(None) => return "agent finished the control stream".to_owned(),
            Err(FrameReadError::Stream(e)) => return format!("stream ended: {e}"),
            Err(FrameReadError::Codec(e)) => {
                warn!(error = %e, "bad frame from the agent; closing this connection");
                conn.close(close_code::PROTOCOL_VIOLATION.into(), b"bad frame");
                return format!("bad frame: {e}");
            }
        };
        if let Err(e) = message.validate() {
            warn!(error = %e, "invalid message from the agent; closing this connection");
            conn.close(close_code::PROTOCOL_VIOLATION.into(), b"invalid message");
            return format!("invalid message: {e}");
        }
        let now = now_ms();
        match message {
            AgentMessage::Heartbeat(hb) => {
                let skew = hb.wall_clock_ms.saturating_sub(now);
                let before = ctx
                    .registry
                    .heard(node, session, now, skew, Some(hb.gpus_visible));
                if let Some(before) = before
                    && before != hb.gpus_visible
                {
                    warn!(
                        before,
                        gpus_visible = hb.gpus_visible,
                        "visible GPU count changed"
                    );
                }
            }
            AgentMessage::RenewCertificate { csr_der } => {
                let skew = ctx.registry.view(node, now).clock_skew_ms.unwrap_or(0);
                ctx.registry.heard(node, session, now, skew, None);
                if let Err(reason) = renew(ctx, tx, node, &csr_der).await {
                    warn!(%reason, "certificate renewal failed; closing");
                    conn.close(close_code::REFUSED.into(), reason.as_bytes());
                    return reason;
                }
            }
            AgentMessage::Hello(_) => {
                warn!("second Hello in one session; closing");
                conn.close(close_code::PROTOCOL_VIOLATION.into(), b"unexpected hello");
                return "unexpected hello".to_owned();
            }
        }
    }
}

async fn renew(
    ctx: &FleetContext,
    tx: &mut quinn::SendStream,
    node: NodeId,
    csr_der: &[u8],
) -> Result<(), String> {
    let now = SystemTime::now();
    let cert = ctx
        .ca
        .issue_node(csr_der, node, now, ctx.settings.node_cert_ttl)
        .map_err(|e| format!("bad renewal request: {e}"))?;
    ctx.store
        .execute(Command::RenewCertificate {
            node_id: node,
            cert_serial: cert.serial.clone(),
            cert_not_after_ms: cert.not_after_ms,
        })
        .await
        .map_err(|e| format!("renewal not recorded: {e}"))?;
    send(
        tx,
        ctx.settings.term,
        CoordinatorMessage::CertificateRenewed {
            cert_der: cert.der.to_vec(),
        },
    )
    .await
    .map_err(|e| format!("could not send the renewed certificate: {e}"))?;
    info!(
        not_after_ms = cert.not_after_ms,
        issued_at_ms = unix_ms(now),
        "node certificate renewed"
    );
    Ok(())
}
