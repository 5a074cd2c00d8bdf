//! Mesh identities: CA and node certificate generation, PEM loading, and the
//! rustls configurations used by the QUIC endpoint.

use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::error::{Error, Result};

/// The TLS server name every node certificate carries (as a DNS SAN) and
/// every client asks for. Nodes are addressed by socket address, not by name,
/// so one shared name is enough; authentication is "signed by the mesh CA".
pub const SERVER_NAME: &str = "litemesh-node";

/// Version of the wire protocol, part of the ALPN.
pub const PROTOCOL_VERSION: u32 = 1;

fn tls_err(e: impl std::fmt::Display) -> Error {
    Error::Tls(e.to_string())
}

/// The ALPN protocol name for a mesh: `litemesh/<version>/<mesh-id>`.
///
/// The mesh id must be 1..=200 bytes of printable ASCII without spaces.
pub fn alpn_for(mesh_id: &str) -> Result<Vec<u8>> {
    if mesh_id.is_empty() || mesh_id.len() > 200 {
        return Err(Error::Config(format!(
            "mesh id must be 1..=200 bytes, got {}",
            mesh_id.len()
        )));
    }
    if !mesh_id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::Config(
            "mesh id must be printable ASCII without spaces".into(),
        ));
    }
    Ok(format!("litemesh/{PROTOCOL_VERSION}/{mesh_id}").into_bytes())
}

/// Generate a new mesh certificate authority.
///
/// Returns `(ca_cert_pem, ca_key_pem)`. Keep the key offline; nodes only need
/// the certificate.
pub fn generate_ca(common_name: &str) -> Result<(String, String)> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().map_err(tls_err)?;
    let cert = params.self_signed(&key).map_err(tls_err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Issue a node certificate signed by the mesh CA.
///
/// The certificate is valid both as a TLS server and a TLS client
/// certificate; its subject CN is `name` and its SANs are [`SERVER_NAME`]
/// and `name` (an IP address if `name` parses as one, otherwise a DNS name,
/// which must then be ASCII). Returns `(cert_pem, key_pem)`.
pub fn generate_node_cert(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    name: &str,
) -> Result<(String, String)> {
    generate_node_cert_in(ca_cert_pem, ca_key_pem, name, None)
}

/// Prefix of the URI SAN that certifies a node's region:
/// `urn:litemesh:region:<region>`.
pub const REGION_URI_PREFIX: &str = "urn:litemesh:region:";

/// Checks a region name: 1..=64 bytes of ASCII letters, digits, `-`, `_`
/// and `.`.
pub fn validate_region(region: &str) -> Result<()> {
    let ok = !region.is_empty()
        && region.len() <= 64
        && region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "region {region:?}: use 1 to 64 ASCII letters, digits, '-', '_' or '.'"
        )))
    }
}

/// Like [`generate_node_cert`], and with `region` certified in the
/// certificate (a URI SAN `urn:litemesh:region:<region>`): peers take the
/// node's region from there, so a node cannot claim a region its CA did not
/// put it in.
pub fn generate_node_cert_in(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    name: &str,
    region: Option<&str>,
) -> Result<(String, String)> {
    if let Some(r) = region {
        validate_region(r)?;
    }
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(tls_err)?;
    let ca_params = CertificateParams::from_ca_cert_pem(ca_cert_pem).map_err(tls_err)?;
    // Re-create an issuer with the CA's subject, key identifier and key: the
    // signature and the issuer/authority-key-id chaining are what verifiers
    // check, and they are identical to the original CA certificate's.
    let ca_cert = ca_params.self_signed(&ca_key).map_err(tls_err)?;

    let mut sans = vec![SERVER_NAME.to_string()];
    if name != SERVER_NAME {
        sans.push(name.to_string());
    }
    let mut params = CertificateParams::new(sans).map_err(tls_err)?;
    if let Some(r) = region {
        let uri = format!("{REGION_URI_PREFIX}{r}");
        params
            .subject_alt_names
            .push(SanType::URI(uri.try_into().map_err(tls_err)?));
    }
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().map_err(tls_err)?;
    let cert = params.signed_by(&key, &ca_cert, &ca_key).map_err(tls_err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The TLS identity of a node: its certificate chain and key, and the mesh CA
/// it trusts (or none, in insecure mode).
#[derive(Debug)]
pub struct MeshIdentity {
    /// Trusted CA certificates; `None` = insecure mode (no verification).
    roots: Option<Vec<CertificateDer<'static>>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for MeshIdentity {
    fn clone(&self) -> Self {
        Self {
            roots: self.roots.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl MeshIdentity {
    /// Mutual-TLS identity from PEM text: the mesh CA certificate(s), this
    /// node's certificate chain, and its private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<Self> {
        let roots = CertificateDer::pem_slice_iter(ca_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Tls(format!("CA certificate: {e}")))?;
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Tls(format!("node certificate: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| Error::Tls(format!("node key: {e}")))?;
        if roots.is_empty() {
            return Err(Error::Tls("no CA certificate in PEM input".into()));
        }
        if chain.is_empty() {
            return Err(Error::Tls("no node certificate in PEM input".into()));
        }
        let identity = Self {
            roots: Some(roots),
            chain,
            key,
        };
        // Fail early on unusable material rather than at the first handshake.
        identity.server_config(b"check")?;
        identity.client_config(b"check")?;
        Ok(identity)
    }

    /// Like [`from_pem`](Self::from_pem), reading the three PEM files.
    pub fn from_pem_files(
        ca_cert: impl AsRef<Path>,
        node_cert: impl AsRef<Path>,
        node_key: impl AsRef<Path>,
    ) -> Result<Self> {
        let ca = std::fs::read(ca_cert)?;
        let cert = std::fs::read(node_cert)?;
        let key = std::fs::read(node_key)?;
        Self::from_pem(&ca, &cert, &key)
    }

    /// Insecure identity for local experiments: a fresh self-signed
    /// certificate, traffic is still encrypted with TLS 1.3, but peers are not
    /// authenticated at all (no client certificate is requested and server
    /// certificates are accepted without verification). Never use it across
    /// an untrusted network.
    pub fn insecure() -> Result<Self> {
        let key = KeyPair::generate().map_err(tls_err)?;
        let params = CertificateParams::new(vec![SERVER_NAME.to_string()]).map_err(tls_err)?;
        let cert = params.self_signed(&key).map_err(tls_err)?;
        Ok(Self {
            roots: None,
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::try_from(key.serialize_der()).map_err(tls_err)?,
        })
    }

    /// The region certified in this node's certificate (see
    /// [`generate_node_cert_in`]); `None` if it has none or in insecure mode.
    pub fn region(&self) -> Result<Option<String>> {
        if self.is_insecure() {
            return Ok(None);
        }
        cert_region(&self.chain[0])
    }

    /// True for an identity made by [`insecure`](Self::insecure).
    pub fn is_insecure(&self) -> bool {
        self.roots.is_none()
    }

    /// A secret key derived from the node's private key for `purpose`.
    ///
    /// Used for the QUIC stateless-reset key and the connection-id key: being
    /// stable across restarts, they let a restarted node recognise packets of
    /// its previous incarnation's connections and answer them with a valid
    /// stateless reset, so peers drop those connections at once instead of
    /// waiting for the idle timeout.
    pub(crate) fn derived_key(&self, purpose: &str) -> ring::hmac::Key {
        let seed = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.key.secret_der());
        let label = format!("litemesh/{PROTOCOL_VERSION}/{purpose}");
        let derived = ring::hmac::sign(&seed, label.as_bytes());
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derived.as_ref())
    }

    pub(crate) fn server_config(&self, alpn: &[u8]) -> Result<rustls::ServerConfig> {
        let provider = provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?;
        let builder = match &self.roots {
            Some(roots) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(root_store(roots)?),
                    provider,
                )
                .build()
                .map_err(tls_err)?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(tls_err)?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(config)
    }

    pub(crate) fn client_config(&self, alpn: &[u8]) -> Result<rustls::ClientConfig> {
        let provider = provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?;
        let mut config = match &self.roots {
            Some(roots) => builder
                .with_root_certificates(root_store(roots)?)
                .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
                .map_err(tls_err)?,
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)))
                .with_no_client_auth(),
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(config)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn root_store(roots: &[CertificateDer<'static>]) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store
            .add(root.clone())
            .map_err(|e| Error::Tls(format!("CA certificate: {e}")))?;
    }
    Ok(store)
}

/// The subject name of the peer's certificate (its CN, or failing that its
/// first SAN other than [`SERVER_NAME`]); `None` in insecure mode.
pub(crate) fn peer_name(conn: &quinn::Connection) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(certs.first()?.as_ref()).ok()?;
    if let Some(cn) = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
    {
        return Some(cn.to_string());
    }
    let sans = parsed.subject_alternative_name().ok()??;
    sans.value.general_names.iter().find_map(|n| match n {
        GeneralName::DNSName(name) if *name != SERVER_NAME => Some(name.to_string()),
        GeneralName::IPAddress(b) if b.len() == 4 => {
            Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).ok()?).to_string())
        }
        GeneralName::IPAddress(b) if b.len() == 16 => {
            Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).ok()?).to_string())
        }
        _ => None,
    })
}

/// The region a certificate certifies (its `urn:litemesh:region:` URI SAN).
/// A certificate naming two different regions is refused. Only the
/// subject-alternative-name extension is read: anything else in the
/// certificate, however unusual, is no concern of this.
pub(crate) fn cert_region(cert: &CertificateDer<'_>) -> Result<Option<String>> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| Error::Tls(format!("certificate: {e}")))?;
    let sans = parsed
        .subject_alternative_name()
        .map_err(|e| Error::Tls(format!("certificate SANs: {e}")))?;
    let mut region: Option<String> = None;
    for name in sans.iter().flat_map(|s| s.value.general_names.iter()) {
        let GeneralName::URI(uri) = name else {
            continue;
        };
        let Some(r) = uri.strip_prefix(REGION_URI_PREFIX) else {
            continue;
        };
        validate_region(r)?;
        match &region {
            Some(prev) if prev != r => {
                return Err(Error::Tls(format!(
                    "certificate names two regions: {prev} and {r}"
                )));
            }
            _ => region = Some(r.to_string()),
        }
    }
    Ok(region)
}

/// The peer's certified region; `Err` if its certificate is malformed in
/// that respect, `Ok(None)` if it has none (or in insecure mode).
pub(crate) fn peer_region(conn: &quinn::Connection) -> Result<Option<String>> {
    let Some(certs) = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
    else {
        return Ok(None);
    };
    match certs.first() {
        Some(c) => cert_region(c),
        None => Ok(None),
    }
}

/// Server certificate "verifier" of the insecure mode: accepts any
/// certificate, but still checks the handshake signatures so the session
/// keys are bound to the presented key.
#[derive(Debug)]
struct AcceptAnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
