//! Node identity as the transport sees it: a number, and the certificate name
//! that proves it.

use std::fmt;

/// A node of the cluster. The transport addresses peers only by this id; the
/// mapping to socket addresses lives in the address book of the QUIC transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u64);

/// The DNS-name suffix every node certificate carries: `node-<id>.tessera`.
const NAME_PREFIX: &str = "node-";
const NAME_SUFFIX: &str = ".tessera";

impl NodeId {
    /// The DNS name (subject alternative name) a certificate for this node must
    /// carry. The dialing side uses it as the TLS server name, so rustls checks
    /// it for us; the accepting side parses it back with [`NodeId::from_cert_name`].
    pub fn cert_name(self) -> String {
        format!("{NAME_PREFIX}{}{NAME_SUFFIX}", self.0)
    }

    /// Parses `node-<id>.tessera`; anything else (leading zeros, signs, other
    /// suffixes) is rejected so that exactly one name maps to one id.
    pub fn from_cert_name(name: &str) -> Option<NodeId> {
        let digits = name.strip_prefix(NAME_PREFIX)?.strip_suffix(NAME_SUFFIX)?;
        let canonical = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'));
        if !canonical {
            return None;
        }
        digits.parse().ok().map(NodeId)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_name_round_trips() {
        for id in [0, 1, 7, 42, u64::MAX] {
            assert_eq!(
                NodeId::from_cert_name(&NodeId(id).cert_name()),
                Some(NodeId(id))
            );
        }
    }

    #[test]
    fn non_canonical_names_are_refused() {
        for name in [
            "node-.tessera",
            "node-01.tessera",
            "node-+1.tessera",
            "node-1.tessera.evil",
            "node-1.other",
            "xnode-1.tessera",
            "node-18446744073709551616.tessera",
        ] {
            assert_eq!(NodeId::from_cert_name(name), None, "{name}");
        }
    }
}
