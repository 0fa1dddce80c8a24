//! A new cluster's first ranges: the meta range, which holds every range's
//! descriptor, and `initial_ranges` user ranges cut evenly over the key space.
//! Every node computes the same layout from the same node list, so nodes
//! bootstrap without talking to each other.

use bytes::{BufMut, Bytes, BytesMut};

use crate::raft::{InitialState, NodeId};
use crate::range::{
    BatchOp, Command, Proposal, RangeDescriptor, RangeId, RangeState, initial_layout,
};

/// The meta range's id.
pub const META_RANGE: RangeId = 1;
/// The first user range's id.
pub const FIRST_USER_RANGE: RangeId = 2;
/// Replicas per range (fewer when the cluster has fewer nodes).
pub const REPLICATION: usize = 3;
/// Prefix of the meta range's keys: `range/` + the id, big endian.
pub const META_PREFIX: &[u8] = b"range/";
/// The meta range's key holding the next unused range id (decimal ASCII),
/// which splits take by compare-and-set. Outside [`META_PREFIX`].
pub const NEXT_RANGE_ID_KEY: &[u8] = b"next-range-id";

/// Prefix of the meta range's node registry: `node/` + the node's id, big
/// endian, holding the address its peers reach it at (`Db`'s registry).
/// Outside [`META_PREFIX`].
pub const NODE_PREFIX: &[u8] = b"node/";

/// The meta range's key for a node's registry entry.
pub fn node_key(node: NodeId) -> Bytes {
    prefixed_id(NODE_PREFIX, node)
}

/// `prefix` followed by `id`, big endian (so keys sort by id).
fn prefixed_id(prefix: &[u8], id: u64) -> Bytes {
    let mut k = BytesMut::with_capacity(prefix.len() + 8);
    k.put_slice(prefix);
    k.put_u64(id);
    k.freeze()
}

/// The meta range's key holding the nodes being drained: their ids in
/// decimal ASCII, comma-separated and sorted, in one key so that two drains
/// at once cannot both pass the check of how many nodes are left (each is a
/// compare-and-set of the whole set). Outside [`META_PREFIX`] and
/// [`NODE_PREFIX`].
pub const DRAINING_KEY: &[u8] = b"draining-nodes";

/// The meta range's key holding the nodes removed from the cluster (the
/// same encoding as [`DRAINING_KEY`]): never peers again.
pub const REMOVED_KEY: &[u8] = b"removed-nodes";

/// The descriptors of a new cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub meta: RangeDescriptor,
    pub ranges: Vec<RangeDescriptor>,
}

impl Layout {
    /// The meta range first, then the user ranges.
    pub fn all(&self) -> impl Iterator<Item = &RangeDescriptor> {
        std::iter::once(&self.meta).chain(&self.ranges)
    }
}

/// The meta range's key for a range's descriptor.
pub fn meta_key(range: RangeId) -> Bytes {
    prefixed_id(META_PREFIX, range)
}

/// Cuts the key space into `initial_ranges` ranges, each on `REPLICATION`
/// consecutive nodes of the sorted node list (round robin), so replicas and
/// ranges spread evenly.
pub fn cluster_layout(nodes: &[NodeId], initial_ranges: u32) -> Layout {
    let mut nodes = nodes.to_vec();
    nodes.sort_unstable();
    nodes.dedup();
    assert!(!nodes.is_empty(), "a cluster needs at least one node");
    assert!(initial_ranges > 0, "a cluster needs at least one range");
    let k = REPLICATION.min(nodes.len());
    let pick = |start: usize| -> Vec<NodeId> {
        let mut r: Vec<NodeId> = (0..k).map(|j| nodes[(start + j) % nodes.len()]).collect();
        r.sort_unstable();
        r
    };
    let meta = RangeDescriptor {
        id: META_RANGE,
        start: Bytes::new(),
        end: Bytes::new(),
        replicas: pick(0),
        epoch: 1,
        conf_ver: 0,
    };
    let ranges = initial_layout(initial_ranges, FIRST_USER_RANGE, |i| pick(i as usize));
    Layout { meta, ranges }
}

/// A replica of `desc` as every node creates it for a new cluster: a Raft
/// group starting from a snapshot at index 1 that holds the range's initial
/// state (for the meta range, every descriptor of the layout).
pub fn initial_replica(desc: &RangeDescriptor, layout: &Layout) -> (InitialState, RangeState) {
    let mut state = RangeState::new(desc.clone());
    if desc.id == META_RANGE {
        let next_id = layout.all().map(|d| d.id).max().unwrap_or(META_RANGE) + 1;
        let ops = layout
            .all()
            .map(|d| BatchOp::Put {
                key: meta_key(d.id),
                value: d.encode(),
            })
            .chain(std::iter::once(BatchOp::Put {
                key: Bytes::from_static(NEXT_RANGE_ID_KEY),
                value: Bytes::from(next_id.to_string()),
            }))
            .collect();
        let proposal = Proposal {
            epoch: desc.epoch,
            command: Command::Batch(ops),
        };
        state.apply(1, 0, &proposal);
    } else {
        state.advance(1, 0);
    }
    let mut init = InitialState::new_group(desc.replicas.iter().copied());
    init.snapshot.data = state.snapshot().into();
    (init, state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_range_has_three_replicas_spread_round_robin() {
        let layout = cluster_layout(&[3, 1, 2, 4, 5], 10);
        assert_eq!(layout.ranges.len(), 10);
        let mut per_node = [0usize; 6];
        for d in &layout.ranges {
            assert_eq!(d.replicas.len(), 3);
            for &n in &d.replicas {
                per_node[n as usize] += 1;
            }
        }
        assert_eq!(&per_node[1..], &[6, 6, 6, 6, 6]);
        assert_eq!(layout.meta.replicas, vec![1, 2, 3]);
    }

    #[test]
    fn small_clusters_replicate_on_every_node() {
        let layout = cluster_layout(&[7], 4);
        assert!(layout.all().all(|d| d.replicas == vec![7]));
    }

    #[test]
    fn the_meta_range_starts_with_every_descriptor() {
        let layout = cluster_layout(&[1, 2, 3], 4);
        let (init, state) = initial_replica(&layout.meta, &layout);
        assert_eq!(init.applied, 1);
        assert_eq!(state.applied().0, 1);
        for d in layout.all() {
            let raw = state.get(&meta_key(d.id)).expect("descriptor present");
            assert_eq!(&RangeDescriptor::decode(&raw).expect("decodes"), d);
        }
        let restored = RangeState::restore(&init.snapshot.data.bytes()).expect("snapshot restores");
        assert_eq!(restored.state_hash(), state.state_hash());
    }
}
