//! Bytes the store writes to the WAL and sends to peers, and their validated
//! decoding. Everything decoded here came from a disk or a network: it is
//! checked (rkyv's bytecheck, explicit tags and lengths) and never panics.
//!
//! Two encodings live here:
//! - an entry's payload as stored in the WAL and sent in appends: a normal
//!   entry is the proposal's bytes unchanged (no copy on the hot path); an
//!   empty entry and a membership change start with a reserved tag byte that
//!   a proposal never starts with (proposals start with their format version);
//! - a message batch to one peer node: the Raft messages of all its groups in
//!   this loop iteration plus the store's own control messages (quiesce and
//!   node liveness), as one rkyv archive.

use bytes::Bytes;
use rkyv::{Archive, Deserialize, Serialize};
use thiserror::Error;

use crate::raft::{
    ConfChange, ConfChangeStep, ConfState, Entry, EntryPayload, Message, MessageBody, NodeId,
    SnapshotMeta,
};
use crate::range::RangeId;

use super::request::{Reply, Request, StoreError};

/// First byte of an empty entry's payload.
pub const TAG_EMPTY: u8 = 0xF0;
/// First byte of a membership change's payload.
pub const TAG_CONF_CHANGE: u8 = 0xF1;

/// Why bytes could not be decoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecError {
    #[error("empty entry payload")]
    EmptyPayload,
    #[error("membership change payload malformed: {0}")]
    ConfChange(&'static str),
    #[error("message batch archive invalid: {0}")]
    Archive(String),
    #[error("message batch format version {0} is not supported")]
    Version(u8),
}

// ----- Entry payloads -----

/// The bytes an entry's payload is stored and sent as.
pub fn encode_payload(payload: &EntryPayload) -> Bytes {
    match payload {
        EntryPayload::Empty => Bytes::from_static(&[TAG_EMPTY]),
        EntryPayload::Normal(data) => {
            debug_assert!(
                !matches!(
                    data.first(),
                    None | Some(&TAG_EMPTY) | Some(&TAG_CONF_CHANGE)
                ),
                "a proposal must not start with a reserved tag"
            );
            data.clone()
        }
        EntryPayload::ConfChange(cc) => {
            let mut out = Vec::with_capacity(2 + 9 * cc.changes.len());
            out.push(TAG_CONF_CHANGE);
            out.push(cc.changes.len() as u8);
            for step in &cc.changes {
                let (kind, node) = match *step {
                    ConfChangeStep::AddVoter(n) => (0u8, n),
                    ConfChangeStep::AddLearner(n) => (1, n),
                    ConfChangeStep::Remove(n) => (2, n),
                };
                out.push(kind);
                out.extend_from_slice(&node.to_le_bytes());
            }
            Bytes::from(out)
        }
    }
}

/// Decodes a payload written by [`encode_payload`].
pub fn decode_payload(data: Bytes) -> Result<EntryPayload, CodecError> {
    match data.first() {
        None => Err(CodecError::EmptyPayload),
        Some(&TAG_EMPTY) if data.len() == 1 => Ok(EntryPayload::Empty),
        Some(&TAG_EMPTY) => Err(CodecError::ConfChange("empty entry with trailing bytes")),
        Some(&TAG_CONF_CHANGE) => decode_conf_change(&data[1..]).map(EntryPayload::ConfChange),
        Some(_) => Ok(EntryPayload::Normal(data)),
    }
}

fn decode_conf_change(b: &[u8]) -> Result<ConfChange, CodecError> {
    let (&n, rest) = b
        .split_first()
        .ok_or(CodecError::ConfChange("no step count"))?;
    if rest.len() != n as usize * 9 {
        return Err(CodecError::ConfChange(
            "length does not match the step count",
        ));
    }
    let changes = rest
        .chunks_exact(9)
        .map(|c| {
            let mut id = [0u8; 8];
            id.copy_from_slice(&c[1..]);
            let node = u64::from_le_bytes(id);
            match c[0] {
                0 => Ok(ConfChangeStep::AddVoter(node)),
                1 => Ok(ConfChangeStep::AddLearner(node)),
                2 => Ok(ConfChangeStep::Remove(node)),
                _ => Err(CodecError::ConfChange("unknown step kind")),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ConfChange { changes })
}

// ----- Message batches between nodes -----

/// Version byte in front of every batch archive (4: the length after it).
const BATCH_VERSION: u8 = 4;

/// What a node sends another node in one loop iteration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerBatch {
    /// The sender's incarnation: a node whose data directory was wiped comes
    /// back with a new one (see `docs/store.md`).
    pub incarnation: u64,
    pub messages: Vec<(RangeId, Message)>,
    pub control: Vec<Control>,
}

/// The store's own messages, beside Raft's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// The leader of `range` in `term` quiesced it with everything committed
    /// up to `commit`: followers that agree stop ticking it too.
    Quiesce {
        range: RangeId,
        term: u64,
        commit: u64,
    },
    /// A client request the sender received for a range this node leads;
    /// answered with a [`Control::ForwardReply`] carrying the same `seq`.
    Forward { seq: u64, request: Request },
    /// The outcome of the sender's [`Control::Forward`] number `seq`.
    ForwardReply {
        seq: u64,
        reply: Result<Reply, StoreError>,
    },
    /// The sender is stopping (a graceful shutdown).
    Leaving,
    /// The receiver's replica of `range` is out of the range: the configuration
    /// of the range's leader (at `term`) in force since log index `at`
    /// (committed, not joint) does not list it. The answer to a [`Control::Probe`] of
    /// replica `incarnation`: the receiver deletes that replica unless its
    /// own log shows it added again after `at` (`Store::removed_by_peer`).
    Removed {
        range: RangeId,
        at: u64,
        term: u64,
        incarnation: u64,
    },
    /// Node `node`'s replica of `range` asks whether it is still in the
    /// range: the range's leader answers it [`Control::Removed`] if not;
    /// nobody answers otherwise. A follower passes the question on to its
    /// leader (`node` is then not the sender).
    Probe {
        range: RangeId,
        node: NodeId,
        incarnation: u64,
    },
    /// The sender's replica of `range` holds nothing (uninitialized) yet was
    /// sent entries after some index: the leader must probe it from the
    /// start (`Raft::restart_progress`).
    Restart { range: RangeId },
    /// The sender's replica `incarnation` of `range`, which starts at
    /// `start` at `epoch` and knows no leader, asks whether the range was
    /// merged away: a node holding a replica of another range over `start`
    /// at a higher epoch answers [`Control::Merged`].
    AskMerged {
        range: RangeId,
        start: Bytes,
        epoch: u64,
        incarnation: u64,
    },
    /// The answer to [`Control::AskMerged`]: the receiver's replica
    /// `incarnation` of `range` was merged into another range (its keys are
    /// there now) and is deleted.
    Merged { range: RangeId, incarnation: u64 },
}

#[derive(Archive, Serialize, Deserialize)]
struct WireBatch {
    incarnation: u64,
    messages: Vec<WireMessage>,
    control: Vec<WireControl>,
}

#[derive(Archive, Serialize, Deserialize)]
enum WireControl {
    Quiesce {
        range: u64,
        term: u64,
        commit: u64,
    },
    // Requests and replies keep the encoding of `remote` (its own version
    // byte), so that there is one wire form of each.
    Forward {
        seq: u64,
        request: Bytes,
    },
    ForwardReply {
        seq: u64,
        reply: Bytes,
    },
    Leaving,
    Removed {
        range: u64,
        at: u64,
        term: u64,
        incarnation: u64,
    },
    Probe {
        range: u64,
        node: u64,
        incarnation: u64,
    },
    Restart {
        range: u64,
    },
    AskMerged {
        range: u64,
        start: Bytes,
        epoch: u64,
        incarnation: u64,
    },
    Merged {
        range: u64,
        incarnation: u64,
    },
}

#[derive(Archive, Serialize, Deserialize)]
struct WireMessage {
    range: u64,
    from: u64,
    to: u64,
    term: u64,
    body: WireBody,
}

#[derive(Archive, Serialize, Deserialize)]
struct WireEntry {
    index: u64,
    term: u64,
    payload: Bytes,
}

#[derive(Archive, Serialize, Deserialize)]
struct WireConfState {
    voters: Vec<u64>,
    voters_outgoing: Vec<u64>,
    learners: Vec<u64>,
    learners_next: Vec<u64>,
}

#[derive(Archive, Serialize, Deserialize)]
struct WireSnapshotMeta {
    index: u64,
    term: u64,
    conf: WireConfState,
}

#[derive(Archive, Serialize, Deserialize)]
enum WireBody {
    Vote {
        pre_vote: bool,
        last_log_index: u64,
        last_log_term: u64,
        force: bool,
    },
    VoteResponse {
        pre_vote: bool,
        granted: bool,
    },
    Append {
        prev_index: u64,
        prev_term: u64,
        entries: Vec<WireEntry>,
        commit: u64,
    },
    AppendResponse {
        reject: bool,
        index: u64,
        hint_index: u64,
        hint_term: u64,
    },
    Heartbeat {
        commit: u64,
        read_seq: u64,
        sent_tick: u64,
    },
    HeartbeatResponse {
        read_seq: u64,
        sent_tick: u64,
        holds: u64,
    },
    SnapshotChunk {
        meta: WireSnapshotMeta,
        offset: u64,
        data: Bytes,
        done: bool,
    },
    SnapshotResponse {
        index: u64,
        received: u64,
        installed: bool,
    },
    TimeoutNow,
}

/// Encodes a batch for the wire.
pub fn encode_batch(batch: &PeerBatch) -> Bytes {
    let wire = wire_batch(batch);
    let mut out = Vec::with_capacity(archive_size_hint(&wire));
    out.push(BATCH_VERSION);
    out.extend_from_slice(&[0; 4]);
    // Serializing plain owned data into a Vec cannot fail.
    let mut out = rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(&wire, out)
        .expect("serializing a message batch into memory");
    // The archive's length: a cut batch is refused, never read as a shorter
    // valid one (an archive's root is at its end, and any 24 zero bytes of a
    // payload make a valid empty batch).
    let len = u32::try_from(out.len() - BATCH_HEADER).expect("a batch under 4 GiB");
    out[1..BATCH_HEADER].copy_from_slice(&len.to_le_bytes());
    Bytes::from(out)
}

/// Version byte, then the archive's length (u32, little-endian).
const BATCH_HEADER: usize = 5;

fn wire_batch(batch: &PeerBatch) -> WireBatch {
    WireBatch {
        incarnation: batch.incarnation,
        messages: batch
            .messages
            .iter()
            .map(|(range, m)| to_wire(*range, m))
            .collect(),
        control: batch
            .control
            .iter()
            .map(|c| match c {
                &Control::Quiesce {
                    range,
                    term,
                    commit,
                } => WireControl::Quiesce {
                    range,
                    term,
                    commit,
                },
                Control::Forward { seq, request } => WireControl::Forward {
                    seq: *seq,
                    request: super::remote::encode_request(request),
                },
                Control::ForwardReply { seq, reply } => WireControl::ForwardReply {
                    seq: *seq,
                    reply: super::remote::encode_reply(reply),
                },
                Control::Leaving => WireControl::Leaving,
                &Control::Removed {
                    range,
                    at,
                    term,
                    incarnation,
                } => WireControl::Removed {
                    range,
                    at,
                    term,
                    incarnation,
                },
                &Control::Probe {
                    range,
                    node,
                    incarnation,
                } => WireControl::Probe {
                    range,
                    node,
                    incarnation,
                },
                &Control::Restart { range } => WireControl::Restart { range },
                Control::AskMerged {
                    range,
                    start,
                    epoch,
                    incarnation,
                } => WireControl::AskMerged {
                    range: *range,
                    start: start.clone(),
                    epoch: *epoch,
                    incarnation: *incarnation,
                },
                &Control::Merged { range, incarnation } => {
                    WireControl::Merged { range, incarnation }
                }
            })
            .collect(),
    }
}

/// About the size of `wire`'s archive, a little over: serializing into a
/// buffer that must grow copies everything written so far at each growth
/// (about a tenth of a node's CPU in the in-memory bench before this hint).
fn archive_size_hint(wire: &WireBatch) -> usize {
    use std::mem::size_of;
    // The archived types' own sizes (fixed by the pinned rkyv features:
    // unaligned, 32-bit offsets), plus what each points to.
    let conf = |c: &WireConfState| {
        (c.voters.len() + c.voters_outgoing.len() + c.learners.len() + c.learners_next.len())
            * size_of::<u64>()
    };
    let messages: usize = wire
        .messages
        .iter()
        .map(|m| {
            size_of::<ArchivedWireMessage>()
                + match &m.body {
                    WireBody::Append { entries, .. } => entries
                        .iter()
                        .map(|e| size_of::<ArchivedWireEntry>() + e.payload.len())
                        .sum(),
                    WireBody::SnapshotChunk { meta, data, .. } => data.len() + conf(&meta.conf),
                    _ => 0,
                }
        })
        .sum();
    let control: usize = wire
        .control
        .iter()
        .map(|c| {
            size_of::<ArchivedWireControl>()
                + match c {
                    WireControl::Forward { request: b, .. }
                    | WireControl::ForwardReply { reply: b, .. } => b.len(),
                    _ => 0,
                }
        })
        .sum();
    BATCH_HEADER + size_of::<ArchivedWireBatch>() + messages + control
}

/// Decodes and validates a batch from a peer.
pub fn decode_batch(bytes: &[u8]) -> Result<PeerBatch, CodecError> {
    let (&version, body) = bytes
        .split_first()
        .ok_or_else(|| CodecError::Archive("empty".into()))?;
    if version != BATCH_VERSION {
        return Err(CodecError::Version(version));
    }
    let (len, body) = body
        .split_first_chunk::<4>()
        .ok_or_else(|| CodecError::Archive("no length".into()))?;
    if u32::from_le_bytes(*len) as usize != body.len() {
        return Err(CodecError::Archive(format!(
            "length {} for {} bytes",
            u32::from_le_bytes(*len),
            body.len()
        )));
    }
    let wire = rkyv::from_bytes::<WireBatch, rkyv::rancor::Error>(body)
        .map_err(|e| CodecError::Archive(e.to_string()))?;
    let mut messages = Vec::with_capacity(wire.messages.len());
    for m in wire.messages {
        messages.push(from_wire(m)?);
    }
    let control = wire
        .control
        .into_iter()
        .map(|c| {
            Ok(match c {
                WireControl::Quiesce {
                    range,
                    term,
                    commit,
                } => Control::Quiesce {
                    range,
                    term,
                    commit,
                },
                WireControl::Forward { seq, request } => Control::Forward {
                    seq,
                    request: super::remote::decode_request(&request)?,
                },
                WireControl::ForwardReply { seq, reply } => Control::ForwardReply {
                    seq,
                    reply: super::remote::decode_reply(&reply)?,
                },
                WireControl::Leaving => Control::Leaving,
                WireControl::Removed {
                    range,
                    at,
                    term,
                    incarnation,
                } => Control::Removed {
                    range,
                    at,
                    term,
                    incarnation,
                },
                WireControl::Probe {
                    range,
                    node,
                    incarnation,
                } => Control::Probe {
                    range,
                    node,
                    incarnation,
                },
                WireControl::Restart { range } => Control::Restart { range },
                WireControl::AskMerged {
                    range,
                    start,
                    epoch,
                    incarnation,
                } => Control::AskMerged {
                    range,
                    start,
                    epoch,
                    incarnation,
                },
                WireControl::Merged { range, incarnation } => {
                    Control::Merged { range, incarnation }
                }
            })
        })
        .collect::<Result<Vec<_>, CodecError>>()?;
    Ok(PeerBatch {
        incarnation: wire.incarnation,
        messages,
        control,
    })
}

fn conf_to_wire(c: &ConfState) -> WireConfState {
    WireConfState {
        voters: c.voters.iter().copied().collect(),
        voters_outgoing: c.voters_outgoing.iter().copied().collect(),
        learners: c.learners.iter().copied().collect(),
        learners_next: c.learners_next.iter().copied().collect(),
    }
}

fn conf_from_wire(c: WireConfState) -> ConfState {
    ConfState {
        voters: c.voters.into_iter().collect(),
        voters_outgoing: c.voters_outgoing.into_iter().collect(),
        learners: c.learners.into_iter().collect(),
        learners_next: c.learners_next.into_iter().collect(),
    }
}

fn to_wire(range: RangeId, m: &Message) -> WireMessage {
    let body = match &m.body {
        MessageBody::Vote {
            pre_vote,
            last_log_index,
            last_log_term,
            force,
        } => WireBody::Vote {
            pre_vote: *pre_vote,
            last_log_index: *last_log_index,
            last_log_term: *last_log_term,
            force: *force,
        },
        MessageBody::VoteResponse { pre_vote, granted } => WireBody::VoteResponse {
            pre_vote: *pre_vote,
            granted: *granted,
        },
        MessageBody::Append {
            prev_index,
            prev_term,
            entries,
            commit,
        } => WireBody::Append {
            prev_index: *prev_index,
            prev_term: *prev_term,
            entries: entries
                .iter()
                .map(|e| WireEntry {
                    index: e.index,
                    term: e.term,
                    payload: encode_payload(&e.payload),
                })
                .collect(),
            commit: *commit,
        },
        MessageBody::AppendResponse {
            reject,
            index,
            hint_index,
            hint_term,
        } => WireBody::AppendResponse {
            reject: *reject,
            index: *index,
            hint_index: *hint_index,
            hint_term: *hint_term,
        },
        MessageBody::Heartbeat {
            commit,
            read_seq,
            sent_tick,
        } => WireBody::Heartbeat {
            commit: *commit,
            read_seq: *read_seq,
            sent_tick: *sent_tick,
        },
        MessageBody::HeartbeatResponse {
            read_seq,
            sent_tick,
            holds,
        } => WireBody::HeartbeatResponse {
            read_seq: *read_seq,
            sent_tick: *sent_tick,
            holds: *holds,
        },
        MessageBody::SnapshotChunk {
            meta,
            offset,
            data,
            done,
        } => WireBody::SnapshotChunk {
            meta: WireSnapshotMeta {
                index: meta.index,
                term: meta.term,
                conf: conf_to_wire(&meta.conf_state),
            },
            offset: *offset,
            data: data.clone(),
            done: *done,
        },
        MessageBody::SnapshotResponse {
            index,
            received,
            installed,
        } => WireBody::SnapshotResponse {
            index: *index,
            received: *received,
            installed: *installed,
        },
        MessageBody::TimeoutNow => WireBody::TimeoutNow,
    };
    WireMessage {
        range,
        from: m.from,
        to: m.to,
        term: m.term,
        body,
    }
}

fn from_wire(m: WireMessage) -> Result<(RangeId, Message), CodecError> {
    let body = match m.body {
        WireBody::Vote {
            pre_vote,
            last_log_index,
            last_log_term,
            force,
        } => MessageBody::Vote {
            pre_vote,
            last_log_index,
            last_log_term,
            force,
        },
        WireBody::VoteResponse { pre_vote, granted } => {
            MessageBody::VoteResponse { pre_vote, granted }
        }
        WireBody::Append {
            prev_index,
            prev_term,
            entries,
            commit,
        } => {
            let mut out = Vec::with_capacity(entries.len());
            for e in entries {
                out.push(Entry {
                    index: e.index,
                    term: e.term,
                    payload: decode_payload(e.payload)?,
                });
            }
            MessageBody::Append {
                prev_index,
                prev_term,
                entries: out,
                commit,
            }
        }
        WireBody::AppendResponse {
            reject,
            index,
            hint_index,
            hint_term,
        } => MessageBody::AppendResponse {
            reject,
            index,
            hint_index,
            hint_term,
        },
        WireBody::Heartbeat {
            commit,
            read_seq,
            sent_tick,
        } => MessageBody::Heartbeat {
            commit,
            read_seq,
            sent_tick,
        },
        WireBody::HeartbeatResponse {
            read_seq,
            sent_tick,
            holds,
        } => MessageBody::HeartbeatResponse {
            read_seq,
            sent_tick,
            holds,
        },
        WireBody::SnapshotChunk {
            meta,
            offset,
            data,
            done,
        } => MessageBody::SnapshotChunk {
            meta: SnapshotMeta {
                index: meta.index,
                term: meta.term,
                conf_state: conf_from_wire(meta.conf),
            },
            offset,
            data,
            done,
        },
        WireBody::SnapshotResponse {
            index,
            received,
            installed,
        } => MessageBody::SnapshotResponse {
            index,
            received,
            installed,
        },
        WireBody::TimeoutNow => MessageBody::TimeoutNow,
    };
    Ok((
        m.range,
        Message {
            from: m.from as NodeId,
            to: m.to,
            term: m.term,
            body,
        },
    ))
}

// ----- Snapshot metadata (stored in snapshot files) -----

/// Encodes a snapshot's position and configuration (for snapshot files and
/// the WAL's compaction record).
pub fn encode_snapshot_meta(meta: &SnapshotMeta) -> Vec<u8> {
    let wire = WireSnapshotMeta {
        index: meta.index,
        term: meta.term,
        conf: conf_to_wire(&meta.conf_state),
    };
    rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(&wire, Vec::new())
        .expect("serializing snapshot metadata into memory")
}

/// Decodes [`encode_snapshot_meta`]'s bytes.
pub fn decode_snapshot_meta(bytes: &[u8]) -> Result<SnapshotMeta, CodecError> {
    let w = rkyv::from_bytes::<WireSnapshotMeta, rkyv::rancor::Error>(bytes)
        .map_err(|e| CodecError::Archive(e.to_string()))?;
    Ok(SnapshotMeta {
        index: w.index,
        term: w.term,
        conf_state: conf_from_wire(w.conf),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample_messages() -> Vec<(RangeId, Message)> {
        let meta = SnapshotMeta {
            index: 9,
            term: 3,
            conf_state: ConfState {
                voters: [1, 2, 3].into(),
                learners: [4].into(),
                ..Default::default()
            },
        };
        let bodies = vec![
            MessageBody::Vote {
                pre_vote: true,
                last_log_index: 7,
                last_log_term: 2,
                force: false,
            },
            MessageBody::VoteResponse {
                pre_vote: false,
                granted: true,
            },
            MessageBody::Append {
                prev_index: 4,
                prev_term: 2,
                entries: vec![
                    Entry {
                        index: 5,
                        term: 2,
                        payload: EntryPayload::Empty,
                    },
                    Entry {
                        index: 6,
                        term: 2,
                        payload: EntryPayload::Normal(Bytes::from_static(b"\x01put")),
                    },
                    Entry {
                        index: 7,
                        term: 2,
                        payload: EntryPayload::ConfChange(ConfChange {
                            changes: vec![ConfChangeStep::AddLearner(4), ConfChangeStep::Remove(2)],
                        }),
                    },
                ],
                commit: 5,
            },
            MessageBody::AppendResponse {
                reject: true,
                index: 4,
                hint_index: 3,
                hint_term: 1,
            },
            MessageBody::Heartbeat {
                commit: 3,
                read_seq: 8,
                sent_tick: 99,
            },
            MessageBody::HeartbeatResponse {
                read_seq: 8,
                sent_tick: 99,
                holds: 12,
            },
            MessageBody::SnapshotChunk {
                meta,
                offset: 10,
                data: Bytes::from_static(b"chunk"),
                done: true,
            },
            MessageBody::SnapshotResponse {
                index: 9,
                received: 15,
                installed: true,
            },
            MessageBody::TimeoutNow,
        ];
        bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| {
                (
                    i as u64 + 1,
                    Message {
                        from: 1,
                        to: 2,
                        term: 5,
                        body,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn the_size_hint_covers_the_archive() {
        let append = |entries: usize, len: usize| MessageBody::Append {
            prev_index: 1,
            prev_term: 1,
            entries: (0..entries as u64)
                .map(|i| Entry {
                    index: i + 2,
                    term: 1,
                    payload: EntryPayload::Normal(Bytes::from(vec![1u8; len])),
                })
                .collect(),
            commit: 1,
        };
        let mut batches = vec![PeerBatch::default()];
        for (messages, entries, len) in [
            (1, 1, 1),
            (3, 1, 17),
            (64, 1, 40),
            (64, 8, 300),
            (2, 100, 7),
        ] {
            batches.push(PeerBatch {
                incarnation: 1,
                messages: (0..messages)
                    .map(|r| {
                        let body = append(entries, len);
                        (
                            r,
                            Message {
                                from: 1,
                                to: 2,
                                term: 1,
                                body,
                            },
                        )
                    })
                    .collect(),
                control: Vec::new(),
            });
        }
        batches.push(PeerBatch {
            incarnation: 1,
            messages: sample_messages(),
            control: vec![Control::Leaving],
        });
        // Many small messages: no slack from payloads to hide a short count.
        let heartbeat = MessageBody::Heartbeat {
            commit: 1,
            read_seq: 2,
            sent_tick: 3,
        };
        batches.push(PeerBatch {
            incarnation: 1,
            messages: (0..200)
                .map(|r| {
                    (
                        r,
                        Message {
                            from: 1,
                            to: 2,
                            term: 1,
                            body: heartbeat.clone(),
                        },
                    )
                })
                .collect(),
            control: (0..50)
                .map(|r| Control::Quiesce {
                    range: r,
                    term: 1,
                    commit: 2,
                })
                .collect(),
        });
        // A snapshot chunk of a joint configuration.
        let chunk = MessageBody::SnapshotChunk {
            meta: SnapshotMeta {
                index: 9,
                term: 3,
                conf_state: ConfState {
                    voters: (1..=7).collect(),
                    voters_outgoing: (1..=5).collect(),
                    learners: [8, 9].into(),
                    learners_next: [10].into(),
                },
            },
            offset: 0,
            data: Bytes::from(vec![3u8; 1000]),
            done: false,
        };
        batches.push(PeerBatch {
            incarnation: 1,
            messages: vec![(
                1,
                Message {
                    from: 1,
                    to: 2,
                    term: 1,
                    body: chunk,
                },
            )],
            control: Vec::new(),
        });
        for b in batches {
            let hint = archive_size_hint(&wire_batch(&b));
            let len = encode_batch(&b).len();
            assert!(hint >= len, "hint {hint} < {len} bytes");
            // Not wildly over either: a buffer is allocated per frame.
            assert!(hint <= 4 * len + 128, "hint {hint} for {len} bytes");
        }
    }

    #[test]
    fn every_message_kind_round_trips() {
        let batch = PeerBatch {
            incarnation: 0xDEAD_BEEF,
            messages: sample_messages(),
            control: vec![Control::Quiesce {
                range: 7,
                term: 3,
                commit: 40,
            }],
        };
        let bytes = encode_batch(&batch);
        assert_eq!(decode_batch(&bytes), Ok(batch));
    }

    #[test]
    fn payloads_round_trip_and_reserved_tags_are_checked() {
        for p in [
            EntryPayload::Empty,
            EntryPayload::Normal(Bytes::from_static(b"\x01abc")),
            EntryPayload::ConfChange(ConfChange::leave_joint()),
            EntryPayload::ConfChange(ConfChange {
                changes: vec![ConfChangeStep::AddVoter(u64::MAX)],
            }),
        ] {
            assert_eq!(decode_payload(encode_payload(&p)), Ok(p));
        }
        assert_eq!(decode_payload(Bytes::new()), Err(CodecError::EmptyPayload));
        assert!(decode_payload(Bytes::from_static(&[TAG_CONF_CHANGE, 2, 0])).is_err());
        assert!(decode_payload(Bytes::from_static(&[TAG_EMPTY, 0])).is_err());
    }

    #[test]
    fn wrong_version_is_refused() {
        let mut bytes = encode_batch(&PeerBatch::default()).to_vec();
        bytes[0] = 99;
        assert_eq!(decode_batch(&bytes), Err(CodecError::Version(99)));
    }

    #[test]
    fn snapshot_meta_round_trips() {
        let meta = SnapshotMeta {
            index: 77,
            term: 4,
            conf_state: ConfState {
                voters: [1, 2].into(),
                voters_outgoing: [1, 3].into(),
                learners: [].into(),
                learners_next: [3].into(),
            },
        };
        assert_eq!(decode_snapshot_meta(&encode_snapshot_meta(&meta)), Ok(meta));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_batch(&data);
            let _ = decode_payload(Bytes::from(data.clone()));
            let _ = decode_snapshot_meta(&data);
        }

        #[test]
        fn truncated_batches_are_refused_or_decode(cut in 0usize..2000) {
            let bytes = encode_batch(&PeerBatch {
                incarnation: 1,
                messages: sample_messages(),
                control: vec![],
            });
            let cut = cut.min(bytes.len());
            if cut < bytes.len() {
                prop_assert!(decode_batch(&bytes[..cut]).is_err());
            }
        }
    }
}
