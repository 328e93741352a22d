//! TLS for the agent's two kinds of connection.
//!
//! - Enrolment: the agent has no trust anchor yet, only the CA fingerprint carried by the
//!   enrolment token. [`CaFingerprintVerifier`] accepts the coordinator's chain only if it
//!   contains a CA certificate with exactly that SHA-256, and then verifies the leaf against that
//!   CA as a normal root (signature, validity, server name). Nothing secret is sent before this
//!   check passes.
//! - Control: the stored cluster CA is the only root; the node certificate is the client
//!   certificate.

use std::sync::Arc;
use std::time::Duration;

use gpuaas_proto::messages::{ALPN_CONTROL, ALPN_ENROLL};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Error text the verifier gives when the coordinator's CA is not the token's.
pub const FINGERPRINT_MISMATCH: &str =
    "the coordinator's CA does not match the CA fingerprint in the enrolment token";

/// Trusts the CA whose certificate has a given SHA-256, and nothing else.
#[derive(Debug)]
pub struct CaFingerprintVerifier {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl CaFingerprintVerifier {
    /// A verifier for the CA with this fingerprint.
    pub fn new(fingerprint: [u8; 32]) -> Self {
        Self {
            fingerprint,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }
}

impl ServerCertVerifier for CaFingerprintVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|c| sha256(c.as_ref()) == self.fingerprint)
        else {
            tracing::error!(
                security_event = "ca_fingerprint_mismatch",
                "{FINGERPRINT_MISMATCH}"
            );
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(FingerprintMismatch)),
            )));
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The coordinator presented a CA other than the token's.
#[derive(thiserror::Error)]
#[error("{FINGERPRINT_MISMATCH}")]
pub struct FingerprintMismatch;

/// rustls shows a verifier's own error with `Debug`, so `Debug` says what happened in words.
impl std::fmt::Debug for FingerprintMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(FINGERPRINT_MISMATCH)
    }
}

/// A TLS client configuration failed to build.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    /// rustls refused the configuration (bad key, bad CA).
    #[error("cannot build the TLS client configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// quinn refused the rustls configuration.
    #[error("cannot use the TLS configuration for QUIC: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}

fn quic(
    tls: rustls::ClientConfig,
    keep_alive: Duration,
    idle: Duration,
) -> Result<quinn::ClientConfig, ClientTlsError> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(keep_alive));
    transport.max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok());
    transport.max_concurrent_uni_streams(0u8.into());
    config.transport_config(Arc::new(transport));
    Ok(config)
}

fn builder()
-> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, ClientTlsError> {
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?)
}

/// Client configuration for enrolment: trust only the CA with `fingerprint`, no client cert.
pub fn enroll_config(fingerprint: [u8; 32]) -> Result<quinn::ClientConfig, ClientTlsError> {
    let mut tls = builder()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(CaFingerprintVerifier::new(fingerprint)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN_ENROLL.to_vec()];
    quic(tls, Duration::from_secs(5), Duration::from_secs(30))
}

/// Client configuration for the control session: the cluster CA as the only root, the node
/// certificate as client certificate.
pub fn control_config(
    ca: &CertificateDer<'static>,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    keep_alive: Duration,
    idle: Duration,
) -> Result<quinn::ClientConfig, ClientTlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone())?;
    let mut tls = builder()?
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![cert], key)?;
    tls.alpn_protocols = vec![ALPN_CONTROL.to_vec()];
    quic(tls, keep_alive, idle)
}
