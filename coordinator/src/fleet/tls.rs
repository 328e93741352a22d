//! TLS for the node-facing QUIC endpoint: one server configuration serving both ALPNs, with a
//! client-certificate verifier that checks the cluster CA and the revocation list.
//!
//! Client certificates are optional at the TLS layer so that `gpuaas-enroll/1` peers, which
//! have none yet, can connect; the control protocol then refuses any session without one. A
//! certificate that is presented must chain to the cluster CA and must not belong to a deleted
//! node: such a handshake fails, so a revoked node never gets a session.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use gpuaas_proto::NodeId;
use gpuaas_proto::messages::{ALPN_CONTROL, ALPN_ENROLL};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::pki::{ClusterCa, ServerIdentity, node_id_from_cert};

/// Node ids whose certificates are refused.
#[derive(Debug, Default)]
pub struct RevokedNodes(RwLock<HashSet<NodeId>>);

impl RevokedNodes {
    /// A list holding `nodes`.
    pub fn new(nodes: impl IntoIterator<Item = NodeId>) -> Self {
        Self(RwLock::new(nodes.into_iter().collect()))
    }

    /// Adds `node`.
    pub fn revoke(&self, node: NodeId) {
        self.0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(node);
    }

    /// Whether `node` is revoked.
    pub fn contains(&self, node: NodeId) -> bool {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(&node)
    }
}

/// Verifies node certificates against the cluster CA, then against the revocation list.
#[derive(Debug)]
struct NodeCertVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Arc<RevokedNodes>,
}

impl ClientCertVerifier for NodeCertVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|e| {
                tracing::warn!(security_event = "bad_client_certificate", error = %e,
                    "refused a client certificate");
            })?;
        let node = node_id_from_cert(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if self.revoked.contains(node) {
            tracing::warn!(security_event = "revoked_node_certificate", node_id = %node,
                "refused the certificate of a deleted node");
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A TLS configuration failed to build.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// rustls refused the configuration.
    #[error("cannot build the TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("cannot build the client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// quinn refused the rustls configuration.
    #[error("cannot use the TLS configuration for QUIC: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}

/// QUIC transport settings of the node endpoint.
#[derive(Debug, Clone, Copy)]
pub struct TransportSettings {
    /// A connection silent for this long is closed.
    pub idle_timeout: Duration,
}

/// Builds the QUIC server configuration for the node endpoint.
pub fn quic_server_config(
    ca: &ClusterCa,
    identity: ServerIdentity,
    revoked: Arc<RevokedNodes>,
    transport: TransportSettings,
) -> Result<quinn::ServerConfig, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der().clone())?;
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let verifier = Arc::new(NodeCertVerifier { inner, revoked });
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain, identity.key)?;
    tls.alpn_protocols = vec![ALPN_CONTROL.to_vec(), ALPN_ENROLL.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(quinn::IdleTimeout::try_from(transport.idle_timeout).ok());
    t.max_concurrent_uni_streams(0u8.into());
    t.max_concurrent_bidi_streams(4u8.into());
    config.transport_config(Arc::new(t));
    config.migration(false);
    Ok(config)
}

/// Builds the rustls configuration of the admin HTTPS API (server auth only).
pub fn https_server_config(
    identity: ServerIdentity,
) -> Result<rustls::ServerConfig, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tls)
}
