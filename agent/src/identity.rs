//! The node's persistent identity in the agent's state directory.
//!
//! | file | content | mode |
//! | --- | --- | --- |
//! | `identity.toml` | node id and coordinator address | 0600 |
//! | `node.key` | the node's private key (PEM, PKCS#8) | 0600 |
//! | `node.crt` | the node certificate (PEM) | 0644 |
//! | `ca.crt` | the cluster CA certificate (PEM) | 0644 |
//!
//! Every file is written to a temporary name, synced and renamed, so a crash never leaves a
//! half-written identity.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use gpuaas_proto::NodeId;
use rcgen::KeyPair;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

const IDENTITY_FILE: &str = "identity.toml";
const KEY_FILE: &str = "node.key";
const CERT_FILE: &str = "node.crt";
const CA_FILE: &str = "ca.crt";

/// The identity could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// File I/O failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file's content is not what it should be.
    #[error("{path} is corrupt: {problem}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// Key generation or CSR creation failed.
    #[error("cannot {action}: {source}")]
    Crypto {
        /// What was being done.
        action: &'static str,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    node_id: String,
    coordinator: String,
}

/// An enrolled node's identity.
pub struct Identity {
    /// The node's id (also in the certificate).
    pub node_id: NodeId,
    /// The coordinator's `host:port`.
    pub coordinator: String,
    /// The node's key.
    pub key: KeyPair,
    /// The node certificate.
    pub cert: CertificateDer<'static>,
    /// The cluster CA certificate.
    pub ca: CertificateDer<'static>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("node_id", &self.node_id)
            .field("coordinator", &self.coordinator)
            .finish_non_exhaustive()
    }
}

/// Writes `contents` to `path` atomically with `mode`.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), IdentityError> {
    let tmp = path.with_extension("tmp");
    let io = |action, source| IdentityError::Io {
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

fn pem(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

fn read(path: &Path) -> Result<String, IdentityError> {
    fs::read_to_string(path).map_err(|source| IdentityError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })
}

fn cert_from(path: &Path) -> Result<CertificateDer<'static>, IdentityError> {
    CertificateDer::from_pem_slice(read(path)?.as_bytes()).map_err(|e| IdentityError::Corrupt {
        path: path.to_owned(),
        problem: e.to_string(),
    })
}

/// Generates a fresh node key.
pub fn generate_key() -> Result<KeyPair, IdentityError> {
    KeyPair::generate().map_err(|source| IdentityError::Crypto {
        action: "generate the node key",
        source,
    })
}

/// A PKCS#10 CSR (DER) for `key`. The coordinator ignores its subject and sets the node id.
pub fn csr(key: &KeyPair) -> Result<Vec<u8>, IdentityError> {
    let params = rcgen::CertificateParams::default();
    let csr = params
        .serialize_request(key)
        .map_err(|source| IdentityError::Crypto {
            action: "create the certificate signing request",
            source,
        })?;
    Ok(csr.der().to_vec())
}

impl Identity {
    /// Whether `dir` holds an identity.
    pub fn exists(dir: &Path) -> bool {
        dir.join(IDENTITY_FILE).exists()
    }

    /// Loads the identity from `dir`.
    pub fn load(dir: &Path) -> Result<Self, IdentityError> {
        let id_path = dir.join(IDENTITY_FILE);
        let file: IdentityFile =
            toml::from_str(&read(&id_path)?).map_err(|e| IdentityError::Corrupt {
                path: id_path.clone(),
                problem: e.to_string(),
            })?;
        let node_id = file
            .node_id
            .parse()
            .map_err(|e: gpuaas_proto::IdParseError| IdentityError::Corrupt {
                path: id_path,
                problem: e.to_string(),
            })?;
        let key_path = dir.join(KEY_FILE);
        let key = KeyPair::from_pem(&read(&key_path)?).map_err(|e| IdentityError::Corrupt {
            path: key_path,
            problem: e.to_string(),
        })?;
        Ok(Self {
            node_id,
            coordinator: file.coordinator,
            key,
            cert: cert_from(&dir.join(CERT_FILE))?,
            ca: cert_from(&dir.join(CA_FILE))?,
        })
    }

    /// Saves the whole identity into `dir` (created 0700 if missing).
    pub fn save(&self, dir: &Path) -> Result<(), IdentityError> {
        fs::create_dir_all(dir).map_err(|source| IdentityError::Io {
            action: "create",
            path: dir.to_owned(),
            source,
        })?;
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
        write_atomic(
            &dir.join(KEY_FILE),
            self.key.serialize_pem().as_bytes(),
            0o600,
        )?;
        write_atomic(
            &dir.join(CA_FILE),
            pem("CERTIFICATE", &self.ca).as_bytes(),
            0o644,
        )?;
        self.save_cert(dir)?;
        let file = IdentityFile {
            node_id: self.node_id.to_string(),
            coordinator: self.coordinator.clone(),
        };
        let text = toml::to_string(&file).map_err(|e| IdentityError::Corrupt {
            path: dir.join(IDENTITY_FILE),
            problem: e.to_string(),
        })?;
        write_atomic(&dir.join(IDENTITY_FILE), text.as_bytes(), 0o600)
    }

    /// Saves only the node certificate (after a renewal).
    pub fn save_cert(&self, dir: &Path) -> Result<(), IdentityError> {
        write_atomic(
            &dir.join(CERT_FILE),
            pem("CERTIFICATE", &self.cert).as_bytes(),
            0o644,
        )
    }

    /// The private key in the form rustls takes.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.serialize_der().into())
    }
}

/// Validity of a certificate as unix milliseconds `(not_before, not_after)`, and its subject
/// common name.
pub fn cert_facts(der: &[u8]) -> Option<(i64, i64, String)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let validity = cert.validity();
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())?
        .to_owned();
    Some((
        validity.not_before.timestamp().saturating_mul(1000),
        validity.not_after.timestamp().saturating_mul(1000),
        cn,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_private_and_identity_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let key = generate_key().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let identity = Identity {
            node_id: NodeId::from_raw(42),
            coordinator: "127.0.0.1:7443".into(),
            key,
            cert: ca.der().clone(),
            ca: ca.der().clone(),
        };
        identity.save(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let loaded = Identity::load(dir.path()).unwrap();
        assert_eq!(loaded.node_id, identity.node_id);
        assert_eq!(loaded.cert, identity.cert);
        assert_eq!(loaded.key.serialize_der(), identity.key.serialize_der());
    }

    #[test]
    fn corrupt_identity_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(IDENTITY_FILE),
            "node_id = \"nope\"\ncoordinator = \"x\"\n",
        )
        .unwrap();
        let err = Identity::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("identity.toml"), "{err}");
    }
}
