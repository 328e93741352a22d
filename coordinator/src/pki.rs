//! The cluster's PKI: the cluster CA, the coordinator's server certificate and node
//! certificates issued from CSRs.
//!
//! # Design
//! One CA per cluster, created once (`gpuaas-coordinator init`, or on the first start of a
//! single node) and kept as two files in the state directory: `ca.crt` (public) and `ca.key`
//! (0600). The replication issue hands the same two files to every replica, so a node
//! certificate is valid against any of them. The CA's fingerprint (SHA-256 of its DER) is what
//! enrolment tokens carry, so an agent can verify the coordinator before it sends a secret.
//!
//! A node's identity is its certificate: the subject common name is the node id, set here from
//! the id the coordinator chose, never from the CSR. Node certificates are short-lived, with a
//! `notBefore` a few minutes in the past so a node whose clock lags can still use them.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gpuaas_proto::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};

/// How far in the past a node certificate's validity starts, to tolerate clock skew.
pub const NOT_BEFORE_BACKDATE: Duration = Duration::from_secs(5 * 60);

const CA_CERT_FILE: &str = "ca.crt";
const CA_KEY_FILE: &str = "ca.key";

/// A PKI operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file did not hold what it should.
    #[error("{path} does not hold a valid {what}")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What it should hold.
        what: &'static str,
    },
    /// Only one of `ca.crt` and `ca.key` exists.
    #[error("incomplete cluster CA in {dir}: found only one of ca.crt and ca.key")]
    IncompleteCa {
        /// The state directory.
        dir: PathBuf,
    },
    /// rcgen refused to build or sign a certificate.
    #[error("cannot {action}: {source}")]
    Rcgen {
        /// What was being done.
        action: &'static str,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
    /// A certificate's identity could not be read.
    #[error("certificate has no node id in its common name")]
    NoNodeId,
}

fn rcgen_err(action: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Rcgen { action, source }
}

/// A certificate freshly issued to a node.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The certificate (DER).
    pub der: CertificateDer<'static>,
    /// Its serial number.
    pub serial: Vec<u8>,
    /// Its `notAfter`, unix milliseconds.
    pub not_after_ms: i64,
}

/// The coordinator's TLS server identity: a chain (leaf, CA) and its key.
#[derive(Debug)]
pub struct ServerIdentity {
    /// Leaf first, then the CA.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's key.
    pub key: PrivateKeyDer<'static>,
}

/// The cluster CA.
pub struct ClusterCa {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    fingerprint: [u8; 32],
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field(
                "fingerprint",
                &gpuaas_proto::token::to_hex(&self.fingerprint),
            )
            .finish_non_exhaustive()
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn unix_ms(t: SystemTime) -> i64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn offset_time(t: SystemTime) -> time::OffsetDateTime {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // a positive INTEGER
    bytes[0] |= 0x01; // and never a leading zero byte
    SerialNumber::from_slice(&bytes)
}

/// Writes `contents` to `path` atomically (temp file + rename) with the given mode.
pub fn write_private(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    let io = |action, source| PkiError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io("create", e))?;
    file.write_all(contents).map_err(|e| io("write", e))?;
    file.sync_all().map_err(|e| io("sync", e))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(|e| io("chmod", e))?;
    fs::rename(&tmp, path).map_err(|e| io("rename", e))
}

impl ClusterCa {
    /// Loads the CA from `dir`, creating it if neither file exists. Returns whether it was
    /// created now.
    pub fn load_or_create(dir: &Path) -> Result<(Self, bool), PkiError> {
        let cert = dir.join(CA_CERT_FILE);
        let key = dir.join(CA_KEY_FILE);
        match (cert.exists(), key.exists()) {
            (true, true) => Ok((Self::load(dir)?, false)),
            (false, false) => Ok((Self::create(dir)?, true)),
            _ => Err(PkiError::IncompleteCa {
                dir: dir.to_owned(),
            }),
        }
    }

    /// Creates a new CA in `dir` (`ca.crt` 0644, `ca.key` 0600).
    pub fn create(dir: &Path) -> Result<Self, PkiError> {
        let key = KeyPair::generate().map_err(rcgen_err("generate the CA key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "GPUaaS cluster CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = offset_time(now - NOT_BEFORE_BACKDATE);
        params.not_after = offset_time(now + Duration::from_secs(10 * 365 * 86_400));
        params.serial_number = Some(random_serial());
        let cert = params
            .self_signed(&key)
            .map_err(rcgen_err("self-sign the CA"))?;
        write_private(
            &dir.join(CA_KEY_FILE),
            key.serialize_pem().as_bytes(),
            0o600,
        )?;
        write_private(&dir.join(CA_CERT_FILE), cert.pem().as_bytes(), 0o644)?;
        Self::load(dir)
    }

    /// Loads an existing CA from `dir`.
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let read = |path: &Path| {
            fs::read_to_string(path).map_err(|source| PkiError::Io {
                action: "read",
                path: path.to_owned(),
                source,
            })
        };
        let cert_pem = read(&cert_path)?;
        let key_pem = read(&key_path)?;
        let cert_der =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|_| PkiError::BadPem {
                path: cert_path.clone(),
                what: "certificate",
            })?;
        let key = KeyPair::from_pem(&key_pem).map_err(|_| PkiError::BadPem {
            path: key_path,
            what: "private key",
        })?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(|_| PkiError::BadPem {
            path: cert_path,
            what: "CA certificate",
        })?;
        Ok(Self {
            cert_pem,
            fingerprint: sha256(&cert_der),
            cert_der,
            issuer,
        })
    }

    /// The CA certificate (DER).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA certificate (PEM), as stored in `ca.crt`.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Path of the CA certificate in a state directory.
    pub fn cert_path(dir: &Path) -> PathBuf {
        dir.join(CA_CERT_FILE)
    }

    /// SHA-256 of the CA certificate (DER): what enrolment tokens carry.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// Issues the coordinator's own server certificate for `names` (DNS names or IPs).
    pub fn issue_server(&self, names: &[String]) -> Result<ServerIdentity, PkiError> {
        let key = KeyPair::generate().map_err(rcgen_err("generate the server key"))?;
        let mut params =
            CertificateParams::new(names.to_vec()).map_err(rcgen_err("use the server names"))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "gpuaas-coordinator");
        let now = SystemTime::now();
        params.not_before = offset_time(now - NOT_BEFORE_BACKDATE);
        params.not_after = offset_time(now + Duration::from_secs(365 * 86_400));
        params.serial_number = Some(random_serial());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(rcgen_err("sign the server certificate"))?;
        Ok(ServerIdentity {
            chain: vec![cert.der().clone(), self.cert_der.clone()],
            key: PrivateKeyDer::try_from(key.serialize_der()).map_err(|_| PkiError::BadPem {
                path: PathBuf::from("<generated server key>"),
                what: "private key",
            })?,
        })
    }

    /// Issues a client certificate for `node` from the node's CSR. Only the CSR's public key
    /// is used: the subject is the node id, whatever the CSR asked for.
    pub fn issue_node(
        &self,
        csr_der: &[u8],
        node: NodeId,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<IssuedCert, PkiError> {
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(rcgen_err("parse the certificate signing request"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, node.to_string());
        let not_after = now + ttl;
        params.not_before = offset_time(now - NOT_BEFORE_BACKDATE);
        params.not_after = offset_time(not_after);
        let serial = random_serial();
        params.serial_number = Some(serial.clone());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(rcgen_err("sign the node certificate"))?;
        Ok(IssuedCert {
            der: cert.der().clone(),
            serial: serial.to_bytes(),
            not_after_ms: unix_ms(not_after),
        })
    }
}

/// The node id in a node certificate's subject common name.
pub fn node_id_from_cert(der: &[u8]) -> Result<NodeId, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| PkiError::NoNodeId)?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or(PkiError::NoNodeId)?;
    cn.parse().map_err(|_| PkiError::NoNodeId)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn ca_is_created_once_with_a_private_key() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, created) = ClusterCa::load_or_create(dir.path()).unwrap();
        assert!(created);
        assert_eq!(mode(&dir.path().join(CA_KEY_FILE)), 0o600);
        let (again, created) = ClusterCa::load_or_create(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(again.fingerprint(), ca.fingerprint());
        assert_eq!(again.fingerprint(), sha256(again.cert_der()));
    }

    #[test]
    fn half_a_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        ClusterCa::create(dir.path()).unwrap();
        fs::remove_file(dir.path().join(CA_KEY_FILE)).unwrap();
        let err = ClusterCa::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, PkiError::IncompleteCa { .. }), "{err}");
    }

    #[test]
    fn node_certificate_names_the_node_whatever_the_csr_asks() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::create(dir.path()).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["evil.example".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "node-00000000000000ff");
        let csr = params.serialize_request(&key).unwrap();
        let node = NodeId::from_raw(0x42);
        let now = SystemTime::now();
        let ttl = Duration::from_secs(3600);
        let issued = ca.issue_node(csr.der(), node, now, ttl).unwrap();
        assert_eq!(node_id_from_cert(&issued.der).unwrap(), node);

        let (_, cert) = x509_parser::parse_x509_certificate(&issued.der).unwrap();
        let now_s = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
        let now_s = i64::try_from(now_s).unwrap();
        let not_before = cert.validity().not_before.timestamp();
        let not_after = cert.validity().not_after.timestamp();
        assert_eq!(
            now_s - not_before,
            300,
            "notBefore is backdated five minutes"
        );
        assert_eq!(not_after - now_s, 3600);
        assert_eq!(issued.not_after_ms / 1000, not_after);
        assert!(
            cert.subject_alternative_name().unwrap().is_none(),
            "CSR SANs are dropped"
        );
    }

    #[test]
    fn garbage_csr_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::create(dir.path()).unwrap();
        let err = ca
            .issue_node(
                b"not a csr",
                NodeId::from_raw(1),
                SystemTime::now(),
                Duration::from_secs(60),
            )
            .unwrap_err();
        assert!(
            err.to_string().contains("certificate signing request"),
            "{err}"
        );
    }
}
