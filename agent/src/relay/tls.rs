//! Mutual TLS between agents with the swarm's own node certificates.
//!
//! Every node of a swarm holds a certificate issued by the swarm's root CA
//! (`<docker root>/swarm/certificates`: `swarm-node.crt`, `swarm-node.key`,
//! `swarm-root-ca.crt`). Its subject alternative names hold the node's role (`swarm-manager` or
//! `swarm-worker`) and its node id; the engine renews it before it expires and replaces it when
//! the operator rotates the CA. So the relay needs no credential of its own:
//!
//! - the server (a manager's agent) presents its node certificate and requires a client
//!   certificate that chains to the swarm's root CA: only nodes of this swarm may ask;
//! - the client verifies the server against the same root CA under the name `swarm-manager`:
//!   only a manager of this swarm can answer (a worker's certificate does not carry that name).
//!
//! The files are read again for every connection, so renewals and CA rotations apply at once.

use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The name every manager's certificate carries (the engine puts the role in the SANs).
pub const MANAGER_NAME: &str = "swarm-manager";

pub const NODE_CERT: &str = "swarm-node.crt";
pub const NODE_KEY: &str = "swarm-node.key";
pub const ROOT_CA: &str = "swarm-root-ca.crt";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error(
        "{path} is encrypted (the swarm is locked with autolock): the relay cannot use the \
         node's key; every node reads Secrets Manager directly instead"
    )]
    Encrypted { path: PathBuf },
    #[error("the swarm certificates in {dir} do not make a TLS set-up: {message}")]
    Config { dir: PathBuf, message: String },
}

/// The node's swarm identity as loaded for one connection.
pub struct SwarmIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub roots: RootCertStore,
}

impl std::fmt::Debug for SwarmIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwarmIdentity")
            .field("chain", &self.chain.len())
            .field("key", &"<redacted>")
            .field("roots", &self.roots.len())
            .finish()
    }
}

/// Swarm keys are PEM blocks with headers (`kek-version: 0`, `raft-dek: …`) that the engine
/// keeps its raft key material in; the PEM parser takes headerless blocks, so header lines are
/// dropped (they never hold the key itself).
fn strip_pem_headers(pem: &str) -> String {
    let mut out = String::with_capacity(pem.len());
    let mut in_block = false;
    let mut in_headers = false;
    for line in pem.lines() {
        let t = line.trim();
        if t.starts_with("-----BEGIN ") {
            in_block = true;
            in_headers = true;
        } else if t.starts_with("-----END ") {
            in_block = false;
            in_headers = false;
        } else if in_block && in_headers {
            if t.contains(':') || t.is_empty() {
                continue;
            }
            in_headers = false;
        }
        out.push_str(t);
        out.push('\n');
    }
    out
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            message: format!("not a PEM certificate list: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            message: "no certificate in it".into(),
        });
    }
    Ok(certs)
}

/// Load this node's swarm identity from `dir` (`<docker root>/swarm/certificates`).
pub fn load(dir: &Path) -> Result<SwarmIdentity, TlsError> {
    let chain = certs(&dir.join(NODE_CERT))?;
    let key_path = dir.join(NODE_KEY);
    let key_pem = read(&key_path)?;
    if key_pem.contains("ENCRYPTED") {
        return Err(TlsError::Encrypted { path: key_path });
    }
    let key =
        PrivateKeyDer::from_pem_slice(strip_pem_headers(&key_pem).as_bytes()).map_err(|e| {
            TlsError::Pem {
                path: key_path.clone(),
                message: format!("not a PEM private key: {e}"),
            }
        })?;
    let mut roots = RootCertStore::empty();
    for c in certs(&dir.join(ROOT_CA))? {
        roots.add(c).map_err(|e| TlsError::Pem {
            path: dir.join(ROOT_CA),
            message: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(SwarmIdentity { chain, key, roots })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn config_err(dir: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Config {
        dir: dir.to_path_buf(),
        message: e.to_string(),
    }
}

/// The server side (a manager's agent): its node certificate; clients must present one of the
/// same swarm.
pub fn server_config(dir: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let id = load(dir)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(id.roots), provider())
        .build()
        .map_err(|e| config_err(dir, e))?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_err(dir, e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain, id.key)
        .map_err(|e| config_err(dir, e))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The client side: presents this node's certificate, accepts only a manager of the same swarm
/// (connect with [`manager_name`]).
pub fn client_config(dir: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let id = load(dir)?;
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(id.roots), provider())
        .build()
        .map_err(|e| config_err(dir, e))?;
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_err(dir, e))?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(id.chain, id.key)
        .map_err(|e| config_err(dir, e))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The name a manager's certificate is checked against (whatever address it was reached at).
pub fn manager_name() -> ServerName<'static> {
    ServerName::try_from(MANAGER_NAME).expect("a valid DNS name")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A swarm CA that issues node certificates the way swarmkit does (CN = node id, OU =
    /// role, O = swarm id; SANs = role and node id; server and client auth).
    pub struct FakeSwarmCa {
        pub ca_pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    impl FakeSwarmCa {
        pub fn new(name: &str) -> FakeSwarmCa {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, format!("swarm-ca {name}"));
            p.distinguished_name = dn;
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let cert = p.self_signed(&key).unwrap();
            FakeSwarmCa {
                ca_pem: cert.pem(),
                issuer: Issuer::new(p, key),
            }
        }

        /// Write a node's certificate directory (the key with swarmkit's PEM headers).
        pub fn node_dir(&self, dir: &Path, node_id: &str, role: &str) {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, node_id);
            dn.push(DnType::OrganizationalUnitName, role);
            dn.push(DnType::OrganizationName, "swarm-id");
            p.distinguished_name = dn;
            p.subject_alt_names = vec![
                SanType::DnsName(role.try_into().unwrap()),
                SanType::DnsName(node_id.try_into().unwrap()),
            ];
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = p.signed_by(&key, &self.issuer).unwrap();
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join(NODE_CERT), cert.pem() + &self.ca_pem).unwrap();
            let key_pem = key.serialize_pem();
            let with_headers = key_pem.replacen(
                "-----\n",
                "-----\nkek-version: 0\nraft-dek: c29tZS1kZWs=\n\n",
                1,
            );
            std::fs::write(dir.join(NODE_KEY), with_headers).unwrap();
            std::fs::write(dir.join(ROOT_CA), &self.ca_pem).unwrap();
        }
    }

    /// Handshake a client from `client_dir` with a server from `server_dir`; true if both
    /// sides accepted and one byte went through.
    async fn handshake(server_dir: &Path, client_dir: &Path) -> bool {
        let server = tokio_rustls::TlsAcceptor::from(server_config(server_dir).unwrap());
        let client = tokio_rustls::TlsConnector::from(client_config(client_dir).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let srv = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            match server.accept(tcp).await {
                Ok(mut s) => {
                    let _ = s.write_all(b"x").await;
                    let _ = s.flush().await;
                    true
                }
                Err(_) => false,
            }
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let client_ok = match client.connect(manager_name(), tcp).await {
            Ok(mut s) => {
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await.is_ok()
            }
            Err(_) => false,
        };
        let server_ok = srv.await.unwrap();
        client_ok && server_ok
    }

    #[tokio::test]
    async fn nodes_of_one_swarm_talk_to_its_managers_only() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = FakeSwarmCa::new("a");
        ca.node_dir(&tmp.path().join("m"), "managernode1", "swarm-manager");
        ca.node_dir(&tmp.path().join("w"), "workernode1", "swarm-worker");
        let other = FakeSwarmCa::new("b");
        other.node_dir(&tmp.path().join("x"), "othernode1", "swarm-manager");
        let (m, w, x) = (
            tmp.path().join("m"),
            tmp.path().join("w"),
            tmp.path().join("x"),
        );
        // A worker (and a manager) of the swarm reach a manager.
        assert!(handshake(&m, &w).await);
        assert!(handshake(&m, &m).await);
        // A worker's agent cannot pose as a manager (its certificate lacks the name).
        assert!(!handshake(&w, &w).await);
        // Another swarm's nodes are strangers, both ways.
        assert!(!handshake(&m, &x).await);
        assert!(!handshake(&x, &w).await);
    }

    #[test]
    fn swarm_key_headers_are_dropped_and_locked_keys_named() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = FakeSwarmCa::new("a");
        ca.node_dir(tmp.path(), "n1", "swarm-worker");
        let id = load(tmp.path()).unwrap();
        assert_eq!(id.chain.len(), 2);
        assert!(!format!("{id:?}").contains("BEGIN"));
        std::fs::write(
            tmp.path().join(NODE_KEY),
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nkek-version: 1\n\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = load(tmp.path()).unwrap_err().to_string();
        assert!(e.contains("autolock"), "{e}");
        let e = load(&tmp.path().join("missing")).unwrap_err().to_string();
        assert!(e.contains("swarm-node.crt"), "{e}");
    }
}
