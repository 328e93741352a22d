//! Enrolment over `gpuaas-enroll/1`: a one-time token and a CSR in, a node certificate out.
//!
//! The handler validates everything before it writes anything: the request's fields, the
//! protocol version, the token's shape and CA fingerprint, the token's state in the store (read
//! before anything is signed, so a peer without a valid token cannot make the CA work), and the
//! CSR (by signing it). Only then does one store command consume the token and create the node, atomically, so two
//! agents racing with one token cannot both succeed. On any refusal nothing is stored and the
//! agent gets a [`Refusal`] naming the reason.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gpuaas_proto::codec::FrameDecoder;
use gpuaas_proto::messages::{EnrollRequest, EnrollResponse, Refusal, RefusalCode, close_code};
use gpuaas_proto::token::EnrollmentToken;
use gpuaas_proto::{FirstMessage, NodeId, PROTOCOL_VERSION, peek_version};
use tracing::{info, warn};

use super::FleetContext;
use super::framing::{read_payload, write_frame};
use crate::clock::unix_ms;
use crate::pki::sha256;
use crate::store::{ApplyError, Command, StoreError, read};

/// Largest accepted enrolment frame.
const MAX_ENROLL_FRAME: u32 = 64 * 1024;
/// How long a peer may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn refuse(code: RefusalCode, message: impl Into<String>) -> EnrollResponse {
    EnrollResponse::Refused(Refusal {
        code,
        message: message.into(),
    })
}

/// Serves one enrolment connection.
pub(super) async fn serve(ctx: Arc<FleetContext>, conn: quinn::Connection) {
    let remote = conn.remote_address();
    let decoder = FrameDecoder::new(MAX_ENROLL_FRAME);
    let accepted = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let (send, mut recv) = conn.accept_bi().await?;
        let request = read_payload(&mut recv, &decoder).await;
        Ok::<_, anyhow::Error>((send, request))
    })
    .await;
    let (mut send, request) = match accepted {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => {
            warn!(%remote, error = %e, "enrolment connection failed before a request");
            return;
        }
        Err(_) => {
            warn!(%remote, "enrolment peer sent no request in time; closing");
            conn.close(
                close_code::PROTOCOL_VIOLATION.into(),
                b"no enrolment request",
            );
            return;
        }
    };
    let decoded = match request {
        Ok(Some(payload)) => decoder
            .decode_payload::<EnrollRequest>(&payload)
            .map_err(|e| (e.to_string(), Some(payload))),
        Ok(None) => {
            conn.close(
                close_code::PROTOCOL_VIOLATION.into(),
                b"empty enrolment stream",
            );
            return;
        }
        Err(e) => Err((e.to_string(), None)),
    };
    let response = match decoded {
        Ok(request) => enroll(&ctx, request).await,
        Err((e, payload)) => {
            // A later major version may lay the request out differently; its version prefix
            // is stable, so it still gets a refusal naming both versions.
            let mismatch = payload
                .and_then(|p: Vec<u8>| peek_version(&p, FirstMessage::EnrollRequest))
                .and_then(|theirs| PROTOCOL_VERSION.negotiate(theirs).err());
            let Some(mismatch) = mismatch else {
                warn!(%remote, error = %e, security_event = "bad_enrolment_frame",
                    "closing enrolment connection: not an enrolment request");
                conn.close(
                    close_code::PROTOCOL_VIOLATION.into(),
                    b"expected an enrolment request",
                );
                return;
            };
            refuse(RefusalCode::VersionMismatch, mismatch.to_string())
        }
    };
    if let EnrollResponse::Refused(refusal) = &response {
        warn!(%remote, code = ?refusal.code, reason = %refusal.message, "enrolment refused");
    }
    if let Err(e) = write_frame(&mut send, &response).await {
        warn!(%remote, error = %e, "could not send the enrolment response");
        return;
    }
    let _ = send.finish();
    // Let the agent read the answer and close; do not hold the connection forever.
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    conn.close(close_code::DONE.into(), b"enrolment done");
}

fn token_refusal_code(refusal: &ApplyError) -> RefusalCode {
    match refusal {
        ApplyError::TokenExpired { .. } => RefusalCode::TokenExpired,
        ApplyError::TokenUsed { .. } => RefusalCode::TokenUsed,
        _ => RefusalCode::TokenInvalid,
    }
}

/// Decides one enrolment request. Pure of network I/O: it reads the clock once, pre-checks the
/// token, signs, and submits one store command.
pub(super) async fn enroll(ctx: &FleetContext, request: EnrollRequest) -> EnrollResponse {
    if let Err(e) = request.validate() {
        return refuse(RefusalCode::BadRequest, e.to_string());
    }
    if let Err(e) = PROTOCOL_VERSION.negotiate(request.protocol) {
        return refuse(RefusalCode::VersionMismatch, e.to_string());
    }
    let token: EnrollmentToken = match request.token.parse() {
        Ok(token) => token,
        Err(e) => return refuse(RefusalCode::TokenInvalid, e.to_string()),
    };
    if token.ca_fingerprint != ctx.ca.fingerprint() {
        return refuse(
            RefusalCode::TokenInvalid,
            "the token was made for another cluster CA",
        );
    }
    let now = SystemTime::now();
    let secret_sha256 = sha256(&token.secret);
    // Check the token before signing anything, so a peer without a valid token cannot make
    // the CA work; the store command below checks again, atomically.
    let (token_id, now_ms) = (token.id, unix_ms(now));
    match ctx
        .store
        .read(move |c| read::enrollment_refusal(c, token_id, &secret_sha256, now_ms))
        .await
    {
        Ok(None) => {}
        Ok(Some(refusal)) => return refuse(token_refusal_code(&refusal), refusal.to_string()),
        Err(e) => {
            tracing::error!(error = %e, "enrolment token could not be checked");
            return refuse(
                RefusalCode::Internal,
                "the coordinator could not check the token",
            );
        }
    }
    let node_id = NodeId::from_raw(rand::random());
    let cert = match ctx
        .ca
        .issue_node(&request.csr_der, node_id, now, ctx.settings.node_cert_ttl)
    {
        Ok(cert) => cert,
        Err(e) => return refuse(RefusalCode::BadRequest, e.to_string()),
    };
    let command = Command::Enroll {
        token_id: token.id,
        secret_sha256,
        now_ms,
        node_id,
        hostname: request.hostname.clone(),
        agent_version: request.agent_version.clone(),
        cert_serial: cert.serial.clone(),
        cert_not_after_ms: cert.not_after_ms,
    };
    match ctx.store.execute(command).await {
        Ok(_) => {
            info!(node_id = %node_id, hostname = %request.hostname, token_id = %token.id,
                "node enrolled");
            EnrollResponse::Enrolled {
                node_id,
                cert_der: cert.der.to_vec(),
                ca_der: ctx.ca.cert_der().to_vec(),
            }
        }
        Err(StoreError::Apply(e)) if e.is_refusal() => {
            refuse(token_refusal_code(&e), e.to_string())
        }
        Err(e) => {
            tracing::error!(error = %e, "enrolment could not be stored");
            refuse(
                RefusalCode::Internal,
                "the coordinator could not store the enrolment",
            )
        }
    }
}
