//! Mutual TLS for node-to-node QUIC: both ends present a certificate signed by
//! the cluster CA, and each end checks the other is the node it claims.
//!
//! - Dialing: the server name is the peer's [`NodeId::cert_name`], so rustls's
//!   WebPKI verifier checks chain, validity window and name in one go.
//! - Accepting: the client verifier checks chain and validity (and that a
//!   certificate is presented at all); [`peer_node_id`] then reads the node id
//!   out of the certificate's name and re-verifies the certificate for exactly
//!   that name. A certificate with no node name, or names of two nodes, is refused.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::WebPkiClientVerifier;

use crate::NodeId;
use crate::certs::NodeIdentity;
use crate::error::CertError;

/// ALPN protocol id; a peer speaking anything else fails the handshake.
pub const ALPN: &[u8] = b"tessera/1";

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, CertError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone())?;
    Ok(Arc::new(roots))
}

/// The accepting side: requires a client certificate chained to the cluster CA.
pub fn server_config(identity: &NodeIdentity) -> Result<rustls::ServerConfig, CertError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(roots(identity.ca_cert())?, provider())
            .build()
            .map_err(|e| CertError::Verifier(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.cert_chain().to_vec(), identity.private_key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The dialing side: trusts only the cluster CA and presents the node's certificate.
pub fn client_config(identity: &NodeIdentity) -> Result<rustls::ClientConfig, CertError> {
    let mut config = client_builder(identity.ca_cert())?
        .with_client_auth_cert(identity.cert_chain().to_vec(), identity.private_key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// A dialing side that presents no certificate. Nodes never use it; tests and
/// tools use it to check that such a peer is refused.
pub fn client_config_without_certificate(
    ca: &CertificateDer<'static>,
) -> Result<rustls::ClientConfig, CertError> {
    let mut config = client_builder(ca)?.with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

fn client_builder(
    ca: &CertificateDer<'static>,
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>, CertError>
{
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca)?, provider())
        .build()
        .map_err(|e| CertError::Verifier(e.to_string()))?;
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_webpki_verifier(verifier))
}

/// Why an authenticated peer's certificate does not name a node.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeerIdentityError {
    #[error("peer presented no certificate")]
    NoCertificate,
    #[error("peer certificate could not be parsed: {0}")]
    Unparsable(String),
    #[error("peer certificate names no node")]
    NoNodeName,
    #[error("peer certificate names more than one node ({0} and {1})")]
    AmbiguousNodeName(NodeId, NodeId),
    #[error("peer certificate is not valid for {0}: {1}")]
    NameMismatch(NodeId, String),
}

/// The node a verified peer certificate chain belongs to. Call only on a chain
/// the TLS handshake has already verified against the cluster CA.
pub fn peer_node_id(chain: &[CertificateDer<'_>]) -> Result<NodeId, PeerIdentityError> {
    let leaf = chain.first().ok_or(PeerIdentityError::NoCertificate)?;
    let cert = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| PeerIdentityError::Unparsable(e.to_string()))?;
    let mut found: Option<(NodeId, &str)> = None;
    for name in cert.valid_dns_names() {
        if let Some(id) = NodeId::from_cert_name(name) {
            match found {
                Some((other, _)) if other != id => {
                    return Err(PeerIdentityError::AmbiguousNodeName(other, id));
                }
                _ => found = Some((id, name)),
            }
        }
    }
    let (id, name) = found.ok_or(PeerIdentityError::NoNodeName)?;
    // The name list is only a hint (webpki's own advice); the proof is that the
    // certificate verifies for this exact name.
    let server_name = ServerName::try_from(name)
        .map_err(|e| PeerIdentityError::NameMismatch(id, e.to_string()))?;
    cert.verify_is_valid_for_subject_name(&server_name)
        .map_err(|e| PeerIdentityError::NameMismatch(id, e.to_string()))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{CertOptions, ClusterCa};

    #[test]
    fn node_id_is_read_from_the_certificate() {
        let ca = ClusterCa::generate().unwrap();
        let id = ca.issue(NodeId(17)).unwrap();
        assert_eq!(peer_node_id(id.cert_chain()), Ok(NodeId(17)));
    }

    #[test]
    fn certificates_without_exactly_one_node_are_refused() {
        let ca = ClusterCa::generate().unwrap();
        let none = ca
            .issue_with(
                NodeId(1),
                CertOptions {
                    names: Some(vec!["example.org".into()]),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(
            peer_node_id(none.cert_chain()),
            Err(PeerIdentityError::NoNodeName)
        );
        let two = ca
            .issue_with(
                NodeId(1),
                CertOptions {
                    names: Some(vec![NodeId(1).cert_name(), NodeId(2).cert_name()]),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(
            peer_node_id(two.cert_chain()),
            Err(PeerIdentityError::AmbiguousNodeName(NodeId(1), NodeId(2)))
        );
        assert_eq!(peer_node_id(&[]), Err(PeerIdentityError::NoCertificate));
    }

    #[test]
    fn configs_build() {
        let ca = ClusterCa::generate().unwrap();
        let id = ca.issue(NodeId(3)).unwrap();
        server_config(&id).unwrap();
        client_config(&id).unwrap();
        client_config_without_certificate(ca.cert_der()).unwrap();
    }
}
