//! The wire form of proposals and descriptors: private mirror types archived
//! with rkyv, behind a one-byte format version.
//!
//! The public types ([`Command`], [`RangeDescriptor`], ...) do not derive rkyv
//! themselves, so their shape can change without changing the bytes in logs
//! and meta ranges; this file is the only place that knows the archive layout.
//! Byte fields are `Bytes`, which rkyv archives exactly like `Vec<u8>` (a
//! relative pointer and a `u32` length), so encoding clones reference counts,
//! not data. Decoding copies the bytes out: the state machine must not keep
//! slices of a WAL segment map alive.
//!
//! rkyv's format is pinned by the workspace features (little endian, 32-bit
//! relative pointers, unaligned), and untrusted bytes are read only through
//! `rkyv::access`, which validates the whole archive (bytecheck) first.

use bytes::Bytes;
use rkyv::rancor::Error as RkyvError;
use rkyv::{Archive, Serialize};

use super::command::{BatchOp, Command, Proposal, PutCond};
use super::descriptor::RangeDescriptor;
use crate::raft::NodeId;

/// Current version byte of [`Proposal`] encodings.
pub const PROPOSAL_FORMAT_VERSION: u8 = 1;
/// Current version byte of [`RangeDescriptor`] encodings.
pub const DESCRIPTOR_FORMAT_VERSION: u8 = 2;

/// Why bytes could not be decoded into a proposal or a descriptor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// No bytes at all (not even the version byte).
    #[error("empty input")]
    Empty,
    /// The version byte names a format this build does not know.
    #[error("unsupported format version {found} (this build reads {supported})")]
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
        /// The version this build reads.
        supported: u8,
    },
    /// The rkyv archive failed validation.
    #[error("invalid archive: {0}")]
    Archive(String),
    /// A descriptor whose span is empty or reversed (`end` not empty and `start >= end`).
    #[error("descriptor span is empty or reversed")]
    InvalidSpan,
}

#[derive(Archive, Serialize)]
struct ProposalWire {
    epoch: u64,
    command: CommandWire,
}

#[derive(Archive, Serialize)]
enum CommandWire {
    Put {
        key: Bytes,
        value: Bytes,
    },
    Delete {
        key: Bytes,
    },
    Batch(Vec<BatchOpWire>),
    Cas {
        key: Bytes,
        expected: Option<Bytes>,
        new: Option<Bytes>,
    },
    Increment {
        key: Bytes,
        delta: i64,
    },
    Append {
        key: Bytes,
        value: Bytes,
    },
    PutIf {
        key: Bytes,
        value: Bytes,
        cond: PutCondWire,
        return_old: bool,
    },
    // New variants go last: the tag is the variant's position.
    Split {
        at: Bytes,
        new_range: u64,
    },
    Retire {
        max_bytes: u64,
    },
    Absorb {
        right: Bytes,
    },
}

#[derive(Archive, Serialize)]
enum BatchOpWire {
    Put { key: Bytes, value: Bytes },
    Delete { key: Bytes },
}

#[derive(Archive, Serialize)]
enum PutCondWire {
    Always,
    IfAbsent,
    IfPresent,
}

#[derive(Archive, Serialize)]
struct DescriptorWire {
    id: u64,
    start: Bytes,
    end: Bytes,
    replicas: Vec<NodeId>,
    epoch: u64,
    conf_ver: u64,
}

fn archive_err(e: RkyvError) -> DecodeError {
    DecodeError::Archive(e.to_string())
}

/// Splits off and checks the version byte.
fn versioned(bytes: &[u8], supported: u8) -> Result<&[u8], DecodeError> {
    let (&version, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != supported {
        return Err(DecodeError::UnsupportedVersion {
            found: version,
            supported,
        });
    }
    Ok(rest)
}

/// Panic message of encoders: rkyv serialization into a `Vec` fails only when
/// a length or offset exceeds the 32-bit pointer width (a field over 2 GiB).
const TOO_BIG: &str = "rkyv archive exceeds the 32-bit pointer width";

fn bytes_of(v: &rkyv::vec::ArchivedVec<u8>) -> Bytes {
    Bytes::copy_from_slice(v.as_slice())
}

fn opt_bytes_of(v: &rkyv::option::ArchivedOption<rkyv::vec::ArchivedVec<u8>>) -> Option<Bytes> {
    v.as_ref().map(bytes_of)
}

pub(crate) fn encode_proposal(epoch: u64, command: &Command) -> Bytes {
    let wire = ProposalWire {
        epoch,
        command: command_wire(command),
    };
    let mut out = Vec::with_capacity(archive_size_hint(command));
    out.push(PROPOSAL_FORMAT_VERSION);
    let buf = rkyv::api::high::to_bytes_in::<_, RkyvError>(&wire, out).expect(TOO_BIG);
    Bytes::from(buf)
}

fn command_wire(command: &Command) -> CommandWire {
    match command {
        Command::Put { key, value } => CommandWire::Put {
            key: key.clone(),
            value: value.clone(),
        },
        Command::Delete { key } => CommandWire::Delete { key: key.clone() },
        Command::Batch(ops) => CommandWire::Batch(
            ops.iter()
                .map(|op| match op {
                    BatchOp::Put { key, value } => BatchOpWire::Put {
                        key: key.clone(),
                        value: value.clone(),
                    },
                    BatchOp::Delete { key } => BatchOpWire::Delete { key: key.clone() },
                })
                .collect(),
        ),
        Command::Cas { key, expected, new } => CommandWire::Cas {
            key: key.clone(),
            expected: expected.clone(),
            new: new.clone(),
        },
        Command::Increment { key, delta } => CommandWire::Increment {
            key: key.clone(),
            delta: *delta,
        },
        Command::Append { key, value } => CommandWire::Append {
            key: key.clone(),
            value: value.clone(),
        },
        Command::PutIf {
            key,
            value,
            cond,
            return_old,
        } => CommandWire::PutIf {
            key: key.clone(),
            value: value.clone(),
            cond: match cond {
                PutCond::Always => PutCondWire::Always,
                PutCond::IfAbsent => PutCondWire::IfAbsent,
                PutCond::IfPresent => PutCondWire::IfPresent,
            },
            return_old: *return_old,
        },
        Command::Split { at, new_range } => CommandWire::Split {
            at: at.clone(),
            new_range: *new_range,
        },
        Command::Retire { max_bytes } => CommandWire::Retire {
            max_bytes: *max_bytes,
        },
        Command::Absorb { right } => CommandWire::Absorb {
            right: right.clone(),
        },
    }
}

/// The size of a proposal's archive, from rkyv's archived type sizes (fixed by
/// the pinned features: unaligned, 32-bit offsets) and the bytes they point
/// to. Serializing then neither grows the buffer (each growth copies what was
/// written so far) nor leaves spare capacity in it: the leader keeps these
/// bytes in its log until the entry is compacted.
fn archive_size_hint(command: &Command) -> usize {
    use std::mem::size_of;
    let batch_ops = match command {
        Command::Batch(ops) => ops.len(),
        _ => 0,
    };
    1 + size_of::<ArchivedProposalWire>()
        + batch_ops * size_of::<ArchivedBatchOpWire>()
        + command.payload_bytes()
}

pub(crate) fn decode_proposal(bytes: &[u8]) -> Result<Proposal, DecodeError> {
    let body = versioned(bytes, PROPOSAL_FORMAT_VERSION)?;
    let a = rkyv::access::<ArchivedProposalWire, RkyvError>(body).map_err(archive_err)?;
    let command = match &a.command {
        ArchivedCommandWire::Put { key, value } => Command::Put {
            key: bytes_of(key),
            value: bytes_of(value),
        },
        ArchivedCommandWire::Delete { key } => Command::Delete { key: bytes_of(key) },
        ArchivedCommandWire::Batch(ops) => Command::Batch(
            ops.iter()
                .map(|op| match op {
                    ArchivedBatchOpWire::Put { key, value } => BatchOp::Put {
                        key: bytes_of(key),
                        value: bytes_of(value),
                    },
                    ArchivedBatchOpWire::Delete { key } => BatchOp::Delete { key: bytes_of(key) },
                })
                .collect(),
        ),
        ArchivedCommandWire::Cas { key, expected, new } => Command::Cas {
            key: bytes_of(key),
            expected: opt_bytes_of(expected),
            new: opt_bytes_of(new),
        },
        ArchivedCommandWire::Increment { key, delta } => Command::Increment {
            key: bytes_of(key),
            delta: delta.to_native(),
        },
        ArchivedCommandWire::Append { key, value } => Command::Append {
            key: bytes_of(key),
            value: bytes_of(value),
        },
        ArchivedCommandWire::PutIf {
            key,
            value,
            cond,
            return_old,
        } => Command::PutIf {
            key: bytes_of(key),
            value: bytes_of(value),
            cond: match cond {
                ArchivedPutCondWire::Always => PutCond::Always,
                ArchivedPutCondWire::IfAbsent => PutCond::IfAbsent,
                ArchivedPutCondWire::IfPresent => PutCond::IfPresent,
            },
            return_old: *return_old,
        },
        ArchivedCommandWire::Split { at, new_range } => Command::Split {
            at: bytes_of(at),
            new_range: new_range.to_native(),
        },
        ArchivedCommandWire::Retire { max_bytes } => Command::Retire {
            max_bytes: max_bytes.to_native(),
        },
        ArchivedCommandWire::Absorb { right } => Command::Absorb {
            right: bytes_of(right),
        },
    };
    Ok(Proposal {
        epoch: a.epoch.to_native(),
        command,
    })
}

/// Validates an encoded proposal (as [`decode_proposal`] does) without
/// decoding its command: its epoch, and whether it is a split or a step of
/// a merge ([`Command::is_structural`]).
pub(crate) fn peek_proposal(bytes: &[u8]) -> Result<(u64, bool), DecodeError> {
    let body = versioned(bytes, PROPOSAL_FORMAT_VERSION)?;
    let a = rkyv::access::<ArchivedProposalWire, RkyvError>(body).map_err(archive_err)?;
    let structural = matches!(
        a.command,
        ArchivedCommandWire::Split { .. }
            | ArchivedCommandWire::Retire { .. }
            | ArchivedCommandWire::Absorb { .. }
    );
    Ok((a.epoch.to_native(), structural))
}

pub(crate) fn encode_descriptor(d: &RangeDescriptor) -> Bytes {
    let wire = DescriptorWire {
        id: d.id,
        start: d.start.clone(),
        end: d.end.clone(),
        replicas: d.replicas.clone(),
        epoch: d.epoch,
        conf_ver: d.conf_ver,
    };
    let buf = rkyv::api::high::to_bytes_in::<_, RkyvError>(&wire, vec![DESCRIPTOR_FORMAT_VERSION])
        .expect(TOO_BIG);
    Bytes::from(buf)
}

pub(crate) fn decode_descriptor(bytes: &[u8]) -> Result<RangeDescriptor, DecodeError> {
    let body = versioned(bytes, DESCRIPTOR_FORMAT_VERSION)?;
    let a = rkyv::access::<ArchivedDescriptorWire, RkyvError>(body).map_err(archive_err)?;
    let d = RangeDescriptor {
        id: a.id.to_native(),
        start: bytes_of(&a.start),
        end: bytes_of(&a.end),
        replicas: a.replicas.iter().map(|r| r.to_native()).collect(),
        epoch: a.epoch.to_native(),
        conf_ver: a.conf_ver.to_native(),
    };
    if !d.end.is_empty() && d.start >= d.end {
        return Err(DecodeError::InvalidSpan);
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_size_hint_covers_the_archive() {
        let b = |n: usize| Bytes::from(vec![7u8; n]);
        let mut commands = Vec::new();
        for n in [0, 1, 16, 100, 5000] {
            commands.extend([
                Command::Put {
                    key: b(n),
                    value: b(n + 3),
                },
                Command::Delete { key: b(n) },
                Command::Cas {
                    key: b(n),
                    expected: None,
                    new: Some(b(n)),
                },
                Command::Cas {
                    key: b(n),
                    expected: Some(b(1)),
                    new: None,
                },
                Command::Increment {
                    key: b(n),
                    delta: -4,
                },
                Command::Append {
                    key: b(1),
                    value: b(n),
                },
                Command::PutIf {
                    key: b(n),
                    value: b(n),
                    cond: PutCond::IfAbsent,
                    return_old: true,
                },
                Command::Split {
                    at: b(n),
                    new_range: 3,
                },
                Command::Retire { max_bytes: 7 },
                Command::Absorb { right: b(n) },
                Command::Batch(
                    (0..n.min(50))
                        .map(|i| match i % 2 {
                            0 => BatchOp::Put {
                                key: b(i),
                                value: b(n),
                            },
                            _ => BatchOp::Delete { key: b(i) },
                        })
                        .collect(),
                ),
            ]);
        }
        for c in commands {
            let hint = archive_size_hint(&c);
            let len = encode_proposal(u64::MAX, &c).len();
            assert!(hint >= len, "hint {hint} < {len} bytes for {c:?}");
            assert!(
                hint <= len + 8,
                "hint {hint} wastes room for {len} bytes: {c:?}"
            );
        }
    }
}
