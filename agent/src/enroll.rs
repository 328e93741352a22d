//! Enrolment: turn a one-time token into a node identity.
//!
//! The agent trusts the coordinator only if its chain holds the CA named by the token's
//! fingerprint (see [`crate::tls::CaFingerprintVerifier`]); only then does it send the token and
//! a CSR for a key it generated locally. The private key never leaves the host.

use std::time::Duration;

use gpuaas_proto::codec::FrameDecoder;
use gpuaas_proto::messages::{EnrollRequest, EnrollResponse, RefusalCode, close_code};
use gpuaas_proto::token::EnrollmentToken;
use gpuaas_proto::{NodeId, PROTOCOL_VERSION};
use rustls_pki_types::CertificateDer;

use crate::framing::{FrameReadError, FrameWriteError, read_frame, write_frame};
use crate::identity::{Identity, IdentityError, cert_facts, csr, generate_key};
use crate::net::{NetError, resolve};
use crate::tls::{ClientTlsError, enroll_config, sha256};

/// How long the whole enrolment exchange may take.
const ENROLL_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_RESPONSE_FRAME: u32 = 64 * 1024;

/// Enrolment failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The token string is malformed.
    #[error("{0}")]
    Token(#[from] gpuaas_proto::token::TokenParseError),
    /// Resolving or binding failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] ClientTlsError),
    /// The connection failed (this includes a coordinator whose CA is not the token's).
    #[error("cannot connect to the coordinator at {address}: {source}")]
    Connect {
        /// The coordinator address.
        address: String,
        /// quinn's error.
        #[source]
        source: quinn::ConnectionError,
    },
    /// The connection could not be started.
    #[error("cannot connect to the coordinator at {address}: {source}")]
    Start {
        /// The coordinator address.
        address: String,
        /// quinn's error.
        #[source]
        source: quinn::ConnectError,
    },
    /// Sending the request failed.
    #[error("cannot send the enrolment request: {0}")]
    Send(#[from] FrameWriteError),
    /// Reading the response failed.
    #[error("cannot read the enrolment response: {0}")]
    Receive(#[from] FrameReadError),
    /// The coordinator closed without an answer.
    #[error("the coordinator closed the enrolment without an answer")]
    NoAnswer,
    /// The coordinator refused.
    #[error("enrolment refused ({code:?}): {message}")]
    Refused {
        /// The reason code.
        code: RefusalCode,
        /// The coordinator's message.
        message: String,
    },
    /// The coordinator's answer does not fit the request.
    #[error("the coordinator's answer is inconsistent: {0}")]
    BadAnswer(&'static str),
    /// Took too long.
    #[error("enrolment timed out after {0:?}")]
    Timeout(Duration),
    /// Key or CSR generation failed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// Enrols with the coordinator at `address` using `token`; returns the new identity (not yet
/// saved). `endpoint` is a client QUIC endpoint.
pub async fn enroll(
    endpoint: &quinn::Endpoint,
    address: &str,
    token: &str,
    hostname: &str,
) -> Result<Identity, EnrollError> {
    tokio::time::timeout(
        ENROLL_TIMEOUT,
        enroll_inner(endpoint, address, token, hostname),
    )
    .await
    .map_err(|_| EnrollError::Timeout(ENROLL_TIMEOUT))?
}

async fn enroll_inner(
    endpoint: &quinn::Endpoint,
    address: &str,
    token_text: &str,
    hostname: &str,
) -> Result<Identity, EnrollError> {
    let token: EnrollmentToken = token_text.parse()?;
    let key = generate_key()?;
    let csr_der = csr(&key)?;
    let (addr, server_name) = resolve(address).await?;
    let conn = endpoint
        .connect_with(enroll_config(token.ca_fingerprint)?, addr, &server_name)
        .map_err(|source| EnrollError::Start {
            address: address.into(),
            source,
        })?
        .await
        .map_err(|source| EnrollError::Connect {
            address: address.into(),
            source,
        })?;
    let (mut tx, mut rx) = conn
        .open_bi()
        .await
        .map_err(|source| EnrollError::Connect {
            address: address.into(),
            source,
        })?;
    let request = EnrollRequest {
        protocol: PROTOCOL_VERSION,
        token: token_text.trim().to_owned(),
        csr_der,
        hostname: hostname.to_owned(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    write_frame(&mut tx, &request).await?;
    let _ = tx.finish();
    let response = read_frame::<EnrollResponse>(&mut rx, &FrameDecoder::new(MAX_RESPONSE_FRAME))
        .await?
        .ok_or(EnrollError::NoAnswer)?;
    conn.close(close_code::DONE.into(), b"enrolled");
    match response {
        EnrollResponse::Refused(refusal) => Err(EnrollError::Refused {
            code: refusal.code,
            message: refusal.message,
        }),
        EnrollResponse::Enrolled {
            node_id,
            cert_der,
            ca_der,
        } => {
            if sha256(&ca_der) != token.ca_fingerprint {
                return Err(EnrollError::BadAnswer(
                    "CA certificate does not match the token",
                ));
            }
            let (_, _, cn) =
                cert_facts(&cert_der).ok_or(EnrollError::BadAnswer("unreadable certificate"))?;
            if cn.parse::<NodeId>().ok() != Some(node_id) {
                return Err(EnrollError::BadAnswer("certificate is for another node"));
            }
            Ok(Identity {
                node_id,
                coordinator: address.to_owned(),
                key,
                cert: CertificateDer::from(cert_der),
                ca: CertificateDer::from(ca_der),
            })
        }
    }
}
