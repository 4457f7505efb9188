//! Mutual TLS for both transports: the cluster CA, node certificates, and the node id a
//! verified certificate carries.
//!
//! Every node holds a certificate signed by the cluster CA whose subject alternative
//! names include `node-N.ringmq` ([`node_name`]). A client connects to node N under that
//! name, so the standard WebPKI check proves it reached node N; a server requires a
//! client certificate from the same CA (`WebPkiClientVerifier`) and takes the caller's
//! node id from it ([`node_of`]), never from the payload. Both transports use the same
//! rustls settings (TLS 1.3 only, `ring` provider: it builds offline here without cmake
//! or nasm); the TCP transport's have their own ALPN and let the traffic keys be taken
//! out after the handshake.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::{NodeId, TransportError, TransportErrorKind};

/// The ALPN protocol both sides require.
pub(crate) const ALPN: &[u8] = b"ringmq-cluster/1";
/// The ALPN protocol of the TCP transport, whose records are protected by
/// `records` after the handshake: a node of an older version fails the handshake with
/// `no_application_protocol` rather than misreading the stream.
pub(crate) const ALPN_TCP: &[u8] = b"ringmq-cluster-tcp/2";

/// The paths of one node's TLS material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA certificate (PEM): the only root either side trusts.
    pub ca: PathBuf,
    /// This node's certificate chain (PEM).
    pub cert: PathBuf,
    /// This node's private key (PEM).
    pub key: PathBuf,
}

impl TlsFiles {
    /// The files [`init_certs`] wrote in `dir` for `node`.
    pub fn in_dir(dir: &Path, node: NodeId) -> Self {
        Self {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("node-{node}.pem")),
            key: dir.join(format!("node-{node}.key")),
        }
    }
}

/// The DNS name node `node`'s certificate carries: `node-N.ringmq`.
pub fn node_name(node: NodeId) -> String {
    format!("node-{node}.ringmq")
}

/// Writes a cluster CA (`ca.pem`, `ca.key`) into `dir`, unless one is there already, and
/// a certificate and key for each of `nodes` signed by it (`node-N.pem`, `node-N.key`),
/// valid for `node-N.ringmq` and every name or IP address in `hosts`, for both server and
/// client authentication. Keys are written with mode 0600. Returns the paths written.
pub fn init_certs(
    dir: &Path,
    nodes: &[NodeId],
    hosts: &[String],
) -> Result<Vec<PathBuf>, TransportError> {
    let tls = |what: &str, e: rcgen::Error| {
        TransportError::new(TransportErrorKind::Tls, format!("{what}: {e}"))
    };
    let io = |what: &Path, e: std::io::Error| {
        TransportError::new(TransportErrorKind::Io, format!("{}: {e}", what.display()))
    };
    fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let mut written = Vec::new();
    let ca_pem_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca.key");
    let ca_key;
    let ca_pem;
    if ca_pem_path.exists() && ca_key_path.exists() {
        let key = fs::read_to_string(&ca_key_path).map_err(|e| io(&ca_key_path, e))?;
        ca_key = rcgen::KeyPair::from_pem(&key).map_err(|e| tls("ca.key", e))?;
        ca_pem = fs::read_to_string(&ca_pem_path).map_err(|e| io(&ca_pem_path, e))?;
    } else {
        ca_key = rcgen::KeyPair::generate().map_err(|e| tls("CA key", e))?;
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ringmq cluster CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&ca_key).map_err(|e| tls("CA", e))?;
        ca_pem = cert.pem();
        write_file(&ca_pem_path, ca_pem.as_bytes(), 0o644).map_err(|e| io(&ca_pem_path, e))?;
        write_file(&ca_key_path, ca_key.serialize_pem().as_bytes(), 0o600)
            .map_err(|e| io(&ca_key_path, e))?;
        written.push(ca_pem_path.clone());
        written.push(ca_key_path.clone());
    }
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|e| tls("CA", e))?;
    for &node in nodes {
        let mut names = vec![node_name(node)];
        names.extend(hosts.iter().cloned());
        let mut params = rcgen::CertificateParams::new(names).map_err(|e| tls("node names", e))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("ringmq node {node}"));
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().map_err(|e| tls("node key", e))?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| tls("node certificate", e))?;
        let files = TlsFiles::in_dir(dir, node);
        write_file(&files.cert, cert.pem().as_bytes(), 0o644).map_err(|e| io(&files.cert, e))?;
        write_file(&files.key, key.serialize_pem().as_bytes(), 0o600)
            .map_err(|e| io(&files.key, e))?;
        written.push(files.cert);
        written.push(files.key);
    }
    Ok(written)
}

/// Writes `data` to a new file of mode `mode` (replacing any), and syncs it.
fn write_file(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let _ = fs::remove_file(path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// The rustls configurations of one node, built once and shared by its connections.
#[derive(Debug, Clone)]
pub(crate) struct TlsConfigs {
    pub(crate) server: Arc<ServerConfig>,
    pub(crate) client: Arc<ClientConfig>,
    /// The TCP transport's: its own ALPN, and the traffic keys may be taken out after the
    /// handshake (see `records`).
    pub(crate) tcp_server: Arc<ServerConfig>,
    pub(crate) tcp_client: Arc<ClientConfig>,
}

impl TlsConfigs {
    pub(crate) fn load(files: &TlsFiles) -> Result<Self, TransportError> {
        let err = |what: &Path, e: &dyn std::fmt::Display| {
            TransportError::new(TransportErrorKind::Tls, format!("{}: {e}", what.display()))
        };
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&files.ca).map_err(|e| err(&files.ca, &e))? {
            let c = c.map_err(|e| err(&files.ca, &e))?;
            roots.add(c).map_err(|e| err(&files.ca, &e))?;
        }
        if roots.is_empty() {
            return Err(err(&files.ca, &"no certificate"));
        }
        let roots = Arc::new(roots);
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
            .map_err(|e| err(&files.cert, &e))?
            .collect::<Result<_, _>>()
            .map_err(|e| err(&files.cert, &e))?;
        let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| err(&files.key, &e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls13 = &[&rustls::version::TLS13];
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| err(&files.ca, &e))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(tls13)
            .map_err(|e| err(&files.cert, &e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| err(&files.cert, &e))?;
        server.alpn_protocols = vec![ALPN.to_vec()];
        // Both sides keep a connection for long: no session tickets needed.
        server.send_tls13_tickets = 0;
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(tls13)
            .map_err(|e| err(&files.cert, &e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| err(&files.cert, &e))?;
        client.alpn_protocols = vec![ALPN.to_vec()];
        let mut tcp_server = server.clone();
        tcp_server.alpn_protocols = vec![ALPN_TCP.to_vec()];
        tcp_server.enable_secret_extraction = true;
        let mut tcp_client = client.clone();
        tcp_client.alpn_protocols = vec![ALPN_TCP.to_vec()];
        tcp_client.enable_secret_extraction = true;
        Ok(Self {
            server: Arc::new(server),
            client: Arc::new(client),
            tcp_server: Arc::new(tcp_server),
            tcp_client: Arc::new(tcp_client),
        })
    }
}

/// The name a client checks node `node`'s certificate against.
pub(crate) fn server_name(node: NodeId) -> ServerName<'static> {
    ServerName::try_from(node_name(node)).expect("node-N.ringmq is a valid DNS name")
}

/// The node a peer's verified end-entity certificate names: the one of `candidates` whose
/// `node-N.ringmq` the certificate is valid for. `None` if none is, or more than one (a
/// wildcard certificate names no single node).
pub(crate) fn node_of(
    cert: &CertificateDer<'_>,
    candidates: impl IntoIterator<Item = NodeId>,
) -> Option<NodeId> {
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    let mut found = None;
    for node in candidates {
        if ee
            .verify_is_valid_for_subject_name(&server_name(node))
            .is_ok()
        {
            if found.is_some() {
                return None;
            }
            found = Some(node);
        }
    }
    found
}
