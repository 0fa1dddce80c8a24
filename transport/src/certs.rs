//! Certificates for a cluster: one CA, and per node a certificate signed by it
//! whose only name is `node-<id>.tessera` ([`NodeId::cert_name`]).
//!
//! The `tessera` binary bootstraps a cluster with [`bootstrap_cluster`] and
//! writes the PEM files ([`NodeIdentity::to_pem`]); nodes load them back with
//! [`NodeIdentity::from_pem`]. Tests also make deliberately bad certificates
//! (expired, another CA, wrong name) with [`ClusterCa::issue_with`] and
//! [`NodeIdentity::self_signed`].

use std::fmt;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

use crate::NodeId;
use crate::error::CertError;

/// How long certificates made by [`ClusterCa::issue`] stay valid.
pub const NODE_CERT_VALIDITY_DAYS: i64 = 3650;
/// Back-dating of `not_before`, so a peer whose clock is a little behind still
/// accepts a freshly issued certificate.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::hours(1);

/// The cluster certificate authority. Its key signs node certificates; its
/// certificate is every node's only trust root.
pub struct ClusterCa {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("ClusterCa")
            .field("cert_bytes", &self.cert.len())
            .finish_non_exhaustive()
    }
}

/// Validity and names of a certificate to issue; the defaults are what a
/// healthy node gets. Tests override them to make bad certificates.
#[derive(Debug, Clone)]
pub struct CertOptions {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// DNS names to put in the certificate; `None` means the node's own name.
    pub names: Option<Vec<String>>,
}

impl Default for CertOptions {
    fn default() -> Self {
        let now = OffsetDateTime::now_utc();
        CertOptions {
            not_before: now - CLOCK_SKEW_ALLOWANCE,
            not_after: now + Duration::days(NODE_CERT_VALIDITY_DAYS),
            names: None,
        }
    }
}

impl ClusterCa {
    /// Makes a new CA with a fresh ECDSA P-256 key.
    pub fn generate() -> Result<ClusterCa, CertError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "tessera cluster CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let defaults = CertOptions::default();
        params.not_before = defaults.not_before;
        params.not_after = defaults.not_after + Duration::days(365);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?.der().clone();
        Ok(ClusterCa {
            issuer: Issuer::new(params, key),
            cert,
        })
    }

    /// A CA saved with [`ClusterCa::cert_pem`] and [`ClusterCa::key_pem`]
    /// (to issue certificates for nodes that join a cluster later).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<ClusterCa, CertError> {
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| CertError::Pem(format!("CA certificate: {e}")))?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| CertError::Pem(format!("CA key: {e}")))?;
        if key.public_key_raw() != ca_public_key_raw(&cert)? {
            return Err(CertError::Pem(
                "the CA key is not the CA certificate's".into(),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&cert, key)?;
        Ok(ClusterCa { issuer, cert })
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    pub fn cert_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.cert)
    }

    /// The CA's private key, PKCS#8 PEM: whoever holds it can make node
    /// certificates the cluster trusts. Keep it like a password.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A certificate for `node`, valid from an hour ago for ten years.
    pub fn issue(&self, node: NodeId) -> Result<NodeIdentity, CertError> {
        self.issue_with(node, CertOptions::default())
    }

    /// A certificate for `node` with explicit validity and names. The identity
    /// claims to be `node` whatever the names say (tests use that to present a
    /// certificate for another node).
    pub fn issue_with(
        &self,
        node: NodeId,
        options: CertOptions,
    ) -> Result<NodeIdentity, CertError> {
        let names = options.names.unwrap_or_else(|| vec![node.cert_name()]);
        let mut params = CertificateParams::new(names.clone())?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // One certificate serves both ends: a node dials (client) and accepts (server).
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = options.not_before;
        params.not_after = options.not_after;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?.der().clone();
        Ok(NodeIdentity {
            node,
            cert_chain: vec![cert],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            ca: self.cert.clone(),
        })
    }
}

/// A certificate's public key, the bits of its SubjectPublicKeyInfo.
fn ca_public_key_raw(cert: &CertificateDer<'_>) -> Result<Vec<u8>, CertError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| CertError::Pem(format!("CA certificate: {e}")))?;
    Ok(x509.public_key().subject_public_key.data.to_vec())
}

/// Makes a CA and one identity per node: what `tessera` writes to disk when it
/// bootstraps a cluster.
pub fn bootstrap_cluster(nodes: &[NodeId]) -> Result<(ClusterCa, Vec<NodeIdentity>), CertError> {
    let ca = ClusterCa::generate()?;
    let identities = nodes
        .iter()
        .map(|&n| ca.issue(n))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((ca, identities))
}

/// What a node presents and what it trusts: its certificate chain and key, and
/// the cluster CA certificate.
pub struct NodeIdentity {
    node: NodeId,
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
    ca: CertificateDer<'static>,
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Clone for NodeIdentity {
    fn clone(&self) -> Self {
        NodeIdentity {
            node: self.node,
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
            ca: self.ca.clone(),
        }
    }
}

/// The three PEM documents of a node identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityPem {
    pub cert: String,
    pub key: String,
    pub ca: String,
}

impl NodeIdentity {
    /// A certificate for `node` signed by its own key, trusting itself: what an
    /// outsider without the cluster CA could present. Peers must refuse it.
    pub fn self_signed(node: NodeId) -> Result<NodeIdentity, CertError> {
        let mut params = CertificateParams::new(vec![node.cert_name()])?;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?.der().clone();
        Ok(NodeIdentity {
            node,
            cert_chain: vec![cert.clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            ca: cert,
        })
    }

    /// Loads an identity from PEM (certificate chain, PKCS#8 key, CA).
    pub fn from_pem(node: NodeId, pem: &IdentityPem) -> Result<NodeIdentity, CertError> {
        let bad =
            |what: &str, e: rustls::pki_types::pem::Error| CertError::Pem(format!("{what}: {e}"));
        let cert_chain = CertificateDer::pem_slice_iter(pem.cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("certificate", e))?;
        if cert_chain.is_empty() {
            return Err(CertError::Pem(
                "no certificate in the certificate file".into(),
            ));
        }
        let key =
            PrivatePkcs8KeyDer::from_pem_slice(pem.key.as_bytes()).map_err(|e| bad("key", e))?;
        let ca = CertificateDer::from_pem_slice(pem.ca.as_bytes())
            .map_err(|e| bad("CA certificate", e))?;
        Ok(NodeIdentity {
            node,
            cert_chain,
            key,
            ca,
        })
    }

    pub fn to_pem(&self) -> IdentityPem {
        IdentityPem {
            cert: self
                .cert_chain
                .iter()
                .map(|c| pem_encode("CERTIFICATE", c))
                .collect(),
            key: pem_encode("PRIVATE KEY", self.key.secret_pkcs8_der()),
            ca: pem_encode("CERTIFICATE", &self.ca),
        }
    }

    /// The node this identity claims to be.
    pub fn node_id(&self) -> NodeId {
        self.node
    }

    pub fn cert_chain(&self) -> &[CertificateDer<'static>] {
        &self.cert_chain
    }

    pub fn ca_cert(&self) -> &CertificateDer<'static> {
        &self.ca
    }

    pub(crate) fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    pub(crate) fn private_key_bytes(&self) -> &[u8] {
        self.key.secret_pkcs8_der()
    }
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    const LINE_CHARS: usize = 64;
    let b64 = base64_encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(LINE_CHARS) {
        // base64 output is ASCII, so any chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips() {
        let (_ca, ids) = bootstrap_cluster(&[NodeId(1), NodeId(2)]).unwrap();
        for id in &ids {
            let back = NodeIdentity::from_pem(id.node_id(), &id.to_pem()).unwrap();
            assert_eq!(back.cert_chain(), id.cert_chain());
            assert_eq!(back.ca_cert(), id.ca_cert());
            assert_eq!(back.private_key_bytes(), id.private_key_bytes());
        }
    }

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    }
}
