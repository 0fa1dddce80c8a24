//! What is proposed through Raft ([`Proposal`], [`Command`]) and what applying
//! it answers ([`ApplyResult`], [`ApplyError`]).

use bytes::Bytes;

use super::wire::{self, DecodeError};

/// One write of a [`Command::Batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOp {
    /// Sets `key` to `value`.
    Put {
        /// The key.
        key: Bytes,
        /// The new value.
        value: Bytes,
    },
    /// Removes `key` (absent is fine).
    Delete {
        /// The key.
        key: Bytes,
    },
}

impl BatchOp {
    /// The key this op writes.
    pub fn key(&self) -> &Bytes {
        match self {
            BatchOp::Put { key, .. } | BatchOp::Delete { key } => key,
        }
    }
}

/// When a [`Command::PutIf`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutCond {
    /// Always (plain SET, or GETSET).
    Always,
    /// Only if the key is absent (Redis `NX`).
    IfAbsent,
    /// Only if the key is present (Redis `XX`).
    IfPresent,
}

/// A write, as proposed through Raft.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// Sets `key` to `value`. Answers [`ApplyResult::Done`].
    Put {
        /// The key.
        key: Bytes,
        /// The new value.
        value: Bytes,
    },
    /// Removes `key`. Answers [`ApplyResult::Deleted`] (whether it existed).
    Delete {
        /// The key.
        key: Bytes,
    },
    /// Atomic: all ops apply, in order, or none (none only if any key is outside
    /// the range). Answers [`ApplyResult::Done`].
    Batch(Vec<BatchOp>),
    /// Compare-and-set: if the current value equals `expected` (`None` = absent),
    /// set it to `new` (`None` = delete). Answers [`ApplyResult::Cas`].
    Cas {
        /// The key.
        key: Bytes,
        /// The value the key must hold (`None`: must be absent).
        expected: Option<Bytes>,
        /// The value to store (`None`: delete).
        new: Option<Bytes>,
    },
    /// Adds `delta` to the integer stored at `key`, kept as decimal ASCII like
    /// Redis (absent = 0). Answers [`ApplyResult::Int`] with the new value, or
    /// [`ApplyError::NotAnInteger`] / [`ApplyError::Overflow`].
    Increment {
        /// The key.
        key: Bytes,
        /// What to add (negative to decrement).
        delta: i64,
    },
    /// Appends bytes to the value (absent = empty). Answers [`ApplyResult::Int`]
    /// with the new length.
    Append {
        /// The key.
        key: Bytes,
        /// The bytes to append.
        value: Bytes,
    },
    /// Put under a condition, optionally returning the previous value
    /// (`SET ... NX|XX GET`, `GETSET`). Answers [`ApplyResult::PutIf`].
    PutIf {
        /// The key.
        key: Bytes,
        /// The new value.
        value: Bytes,
        /// When to write.
        cond: PutCond,
        /// Whether to answer the previous value (whether or not it wrote).
        return_old: bool,
    },
    /// Cuts the range in two at `at`: this range keeps `[start, at)` and a new
    /// range `new_range` gets `[at, end)`, with the same replicas; both get
    /// the next epoch. Answers [`ApplyResult::Split`], or
    /// [`ApplyError::InvalidSplit`] when `at` is not strictly inside the span
    /// or `new_range` is this range's id. Proposed only by the store (for a
    /// `Request::Split`), never as a client write.
    Split {
        /// First key of the new right-hand range.
        at: Bytes,
        /// Id of the new right-hand range (allocated by the caller).
        new_range: u64,
    },
    /// The first step of a merge, in the right-hand range (RHS): from this
    /// entry on the range is *retired*, its state fixed for good. It refuses
    /// every later command with [`ApplyError::Retired`] (reads too: see the
    /// store), so the left neighbour can take its keys over with
    /// [`Command::Absorb`]. Answers [`ApplyResult::Retired`] (also when
    /// already retired), or [`ApplyError::InvalidMerge`] (and changes
    /// nothing) if its snapshot would be over `max_bytes`: a retired range
    /// must fit in its neighbour's entry. Never undone: a merge only rolls
    /// forward. Proposed only by the store (for a `Request::Retire`).
    Retire {
        /// The largest snapshot the merge can carry.
        max_bytes: u64,
    },
    /// The second step of a merge, in the left-hand range (LHS): takes over
    /// the span and every pair of the retired range whose snapshot `right`
    /// carries (`RangeState::snapshot` bytes). Refused with
    /// [`ApplyError::InvalidMerge`] unless that range is retired, starts where
    /// this one ends, and has the same replicas. This range then spans both,
    /// at epoch `max(left, right) + 1`. Answers [`ApplyResult::Merged`].
    /// Proposed only by the store (for a `Request::Absorb`).
    Absorb {
        /// The retired right-hand range's snapshot.
        right: Bytes,
    },
}

impl Command {
    /// The bytes of the keys and values it carries: about the size of its
    /// proposal, less a small fixed overhead.
    pub fn payload_bytes(&self) -> usize {
        let opt = |v: &Option<Bytes>| v.as_ref().map_or(0, Bytes::len);
        match self {
            Command::Put { key, value }
            | Command::Append { key, value }
            | Command::PutIf { key, value, .. } => key.len() + value.len(),
            Command::Delete { key } | Command::Increment { key, .. } => key.len(),
            Command::Cas { key, expected, new } => key.len() + opt(expected) + opt(new),
            Command::Batch(ops) => ops
                .iter()
                .map(|op| match op {
                    BatchOp::Put { key, value } => key.len() + value.len(),
                    BatchOp::Delete { key } => key.len(),
                })
                .sum(),
            Command::Split { at, .. } => at.len(),
            Command::Retire { .. } => 0,
            Command::Absorb { right } => right.len(),
        }
    }

    /// Whether the command changes the range's span (a split, or a step of
    /// a merge): only the store proposes those, for their own requests.
    pub fn is_structural(&self) -> bool {
        matches!(
            self,
            Command::Split { .. } | Command::Retire { .. } | Command::Absorb { .. }
        )
    }

    /// Every key the command touches, in op order (a batch may repeat keys).
    pub fn keys(&self) -> impl Iterator<Item = &Bytes> {
        let (single, batch): (Option<&Bytes>, &[BatchOp]) = match self {
            Command::Put { key, .. }
            | Command::Delete { key }
            | Command::Cas { key, .. }
            | Command::Increment { key, .. }
            | Command::Append { key, .. }
            | Command::PutIf { key, .. } => (Some(key), &[]),
            Command::Batch(ops) => (None, ops),
            // A split's key is a boundary, checked by the split itself; a
            // merge's keys are checked against the other range's span.
            Command::Split { .. } | Command::Retire { .. } | Command::Absorb { .. } => (None, &[]),
        };
        single.into_iter().chain(batch.iter().map(BatchOp::key))
    }
}

/// A command with the epoch of the descriptor the client routed it with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// Epoch of the [`RangeDescriptor`](super::RangeDescriptor) used for routing.
    pub epoch: u64,
    /// The write.
    pub command: Command,
}

impl Proposal {
    /// The proposal's bytes, as stored in a log entry: one format version byte
    /// ([`PROPOSAL_FORMAT_VERSION`](super::PROPOSAL_FORMAT_VERSION)), then an
    /// rkyv archive of the proposal (see `wire.rs` for the mirror types).
    ///
    /// # Panics
    /// Only if the proposal is over 2 GiB (rkyv's 32-bit offsets).
    pub fn encode(&self) -> Bytes {
        wire::encode_proposal(self.epoch, &self.command)
    }

    /// Decodes [`encode`](Self::encode)'s bytes. Validates the archive before
    /// reading it; never panics, whatever the input.
    pub fn decode(bytes: &[u8]) -> Result<Proposal, DecodeError> {
        wire::decode_proposal(bytes)
    }
}

/// A proposal already encoded by the node that took the write ([`Proposal::
/// encode`]'s bytes), validated: a forwarded write is proposed as it came,
/// not decoded and encoded again. Its bytes are the log entry's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedProposal {
    bytes: Bytes,
    epoch: u64,
}

impl EncodedProposal {
    /// Checks `bytes` as [`Proposal::decode`] would (never panics). A split
    /// or a step of a merge is refused: each is its own request, not a write.
    pub fn new(bytes: Bytes) -> Result<EncodedProposal, DecodeError> {
        let (epoch, structural) = wire::peek_proposal(&bytes)?;
        if structural {
            return Err(DecodeError::Archive(
                "a split or merge is not proposed as a write".into(),
            ));
        }
        Ok(EncodedProposal { bytes, epoch })
    }

    /// Encodes `command` at `epoch` (trusted: not validated again). A split
    /// or a step of a merge is refused, as by [`new`](Self::new).
    pub fn encode(epoch: u64, command: &Command) -> Option<EncodedProposal> {
        if command.is_structural() {
            return None;
        }
        Some(EncodedProposal {
            bytes: wire::encode_proposal(epoch, command),
            epoch,
        })
    }

    /// The epoch the proposal carries.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The encoded proposal.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}

/// Why a command was refused at apply. A refused command changes nothing (the
/// applied index still moves forward: the entry is consumed).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The proposal was routed with another descriptor epoch (the range was split
    /// or merged since): refresh the descriptor and retry.
    #[error("proposal epoch {proposal} differs from the range's epoch {current}")]
    EpochMismatch {
        /// The epoch the proposal carried.
        proposal: u64,
        /// The range's epoch at apply.
        current: u64,
    },
    /// A key lies outside the range's span.
    #[error("key {key:?} is outside the range")]
    KeyOutOfRange {
        /// The (first) offending key.
        key: Bytes,
    },
    /// `Increment` on a value that is not a canonical decimal `i64`.
    #[error("value is not an integer or out of range")]
    NotAnInteger,
    /// `Increment` would overflow `i64`.
    #[error("increment or decrement would overflow")]
    Overflow,
    /// A `Split` whose key is not strictly inside the span, or whose new id is
    /// the range's own.
    #[error("invalid split: {why}")]
    InvalidSplit {
        /// What was wrong.
        why: String,
    },
    /// `Append` would make the value longer than [`VALUE_BYTES_MAX`].
    #[error("append would make the value {len} bytes long, over the limit of {max} bytes")]
    ValueTooLarge {
        /// The length the value would have had.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The range is retired (the first step of a merge, [`Command::Retire`]):
    /// its keys belong, or soon will, to its left neighbour. Route again.
    #[error("the range is retired: it is being merged into its left neighbour")]
    Retired,
    /// A [`Command::Absorb`] that cannot apply (see there).
    #[error("invalid merge: {why}")]
    InvalidMerge {
        /// What was wrong.
        why: String,
    },
}

/// Longest value an `Append` may make. A constant, not a setting: every
/// replica must decide alike. Larger values could not be read back through a
/// forwarding node (a reply must fit one transport frame), and a write can
/// put no more than `StoreConfig::proposal_bytes_max` anyway.
pub const VALUE_BYTES_MAX: u64 = 4 << 20;

/// What applying a command produced (sent back to the client).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApplyResult {
    /// `Put`, `Batch`.
    Done,
    /// `Delete`: whether the key existed.
    Deleted(bool),
    /// `Cas`: whether it swapped, and the value the key holds after the command
    /// (on success `new`; on failure the actual value that did not match).
    Cas {
        /// Whether the current value equalled `expected` (and `new` was stored).
        swapped: bool,
        /// The value stored at the key after the command.
        current: Option<Bytes>,
    },
    /// `Increment`: the new value; `Append`: the new length.
    Int(i64),
    /// `PutIf`: whether it wrote, and the previous value if `return_old`
    /// (`None` otherwise, or if the key was absent).
    PutIf {
        /// Whether the condition held and the value was stored.
        written: bool,
        /// The value before the command, if asked for and present.
        old: Option<Bytes>,
    },
    /// `Split`: the two halves' descriptors after the split.
    Split {
        /// This range, now `[start, at)`.
        left: super::RangeDescriptor,
        /// The new range, `[at, end)`.
        right: super::RangeDescriptor,
    },
    /// A membership change: the range's descriptor once it applied.
    Replicas(super::RangeDescriptor),
    /// `Retire`: the range's descriptor (unchanged) once it is retired.
    Retired(super::RangeDescriptor),
    /// `Absorb`: this range after taking over `right`, and the retired
    /// range it took over.
    Merged {
        /// This range, now spanning both.
        left: super::RangeDescriptor,
        /// The retired range, as its snapshot described it.
        right: super::RangeDescriptor,
    },
    /// The command was refused and changed nothing.
    Error(ApplyError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    fn samples() -> Vec<Command> {
        vec![
            Command::Put {
                key: b("k"),
                value: b("v"),
            },
            Command::Delete { key: b("") },
            Command::Batch(vec![]),
            Command::Batch(vec![
                BatchOp::Put {
                    key: b("a"),
                    value: b("1"),
                },
                BatchOp::Delete { key: b("b") },
            ]),
            Command::Cas {
                key: b("k"),
                expected: None,
                new: Some(b("x")),
            },
            Command::Cas {
                key: b("k"),
                expected: Some(b("")),
                new: None,
            },
            Command::Increment {
                key: b("n"),
                delta: i64::MIN,
            },
            Command::Append {
                key: b("s"),
                value: b("tail"),
            },
            Command::PutIf {
                key: b("k"),
                value: b("v"),
                cond: PutCond::IfPresent,
                return_old: true,
            },
            Command::Split {
                at: b("m"),
                new_range: 77,
            },
            Command::Retire { max_bytes: 5 },
            Command::Absorb { right: b("snap") },
        ]
    }

    #[test]
    fn every_command_round_trips() {
        for (i, command) in samples().into_iter().enumerate() {
            let p = Proposal {
                epoch: i as u64 * 1_000_000_007,
                command,
            };
            let bytes = p.encode();
            assert_eq!(bytes[0], wire::PROPOSAL_FORMAT_VERSION);
            assert_eq!(Proposal::decode(&bytes).as_ref(), Ok(&p));
        }
    }

    #[test]
    fn decode_refuses_bad_input() {
        assert_eq!(Proposal::decode(&[]), Err(DecodeError::Empty));
        assert_eq!(
            Proposal::decode(&[0]),
            Err(DecodeError::UnsupportedVersion {
                found: 0,
                supported: 1
            })
        );
        assert!(matches!(
            Proposal::decode(&[wire::PROPOSAL_FORMAT_VERSION]),
            Err(DecodeError::Archive(_))
        ));
        for command in samples() {
            let bytes = Proposal { epoch: 3, command }.encode();
            // A truncated archive can happen to validate as another proposal
            // (rkyv reads the root from the end); it must never panic, and the
            // empty and version-only prefixes are always refused.
            assert!(Proposal::decode(&bytes[..1]).is_err());
            for cut in 0..bytes.len() {
                let _ = Proposal::decode(&bytes[..cut]);
            }
        }
    }

    /// Proposals are stored in every replica's log and replayed after a
    /// restart or sent to a node of another build: the encoding of the
    /// commands that existed before `Split` must not move. rkyv tags an enum
    /// variant by its position in `CommandWire`, so inserting `Split` (or any
    /// later variant) anywhere but last would silently turn old log entries
    /// into other commands. These bytes were captured from the encoder when
    /// `Split` was appended; a change here is a change of the log format.
    #[test]
    fn golden_encodings_of_older_commands_did_not_move() {
        let golden: [(Command, &[u8]); 3] = [
            (
                samples()[0].clone(), // Put k = v, tag 0
                &[
                    1, 107, 118, 7, 0, 0, 0, 0, 0, 0, 0, 0, 245, 255, 255, 255, 1, 0, 0, 0, 238,
                    255, 255, 255, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ],
            ),
            (
                samples()[1].clone(), // Delete "", tag 1
                &[
                    1, 7, 0, 0, 0, 0, 0, 0, 0, 1, 247, 255, 255, 255, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ],
            ),
            (
                samples()[8].clone(), // PutIf, the last variant before Split, tag 6
                &[
                    1, 107, 118, 7, 0, 0, 0, 0, 0, 0, 0, 6, 245, 255, 255, 255, 1, 0, 0, 0, 238,
                    255, 255, 255, 1, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0,
                ],
            ),
        ];
        for (command, bytes) in golden {
            let p = Proposal { epoch: 7, command };
            assert_eq!(&p.encode()[..], bytes, "{p:?}");
            assert_eq!(Proposal::decode(bytes), Ok(p));
        }
        // Split took the next tag, 7, after the seven older variants.
        let split = Proposal {
            epoch: 7,
            command: samples()[9].clone(),
        }
        .encode();
        assert_eq!(
            &split[..],
            &[
                1, 109, 7, 0, 0, 0, 0, 0, 0, 0, 7, 246, 255, 255, 255, 1, 0, 0, 0, 77, 0, 0, 0, 0,
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
            ][..]
        );
        // Then the merge's two steps: Retire tag 8, Absorb tag 9.
        let merge_steps: [(usize, &[u8]); 2] = [
            (
                10,
                &[
                    1, 7, 0, 0, 0, 0, 0, 0, 0, 8, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                    0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ],
            ),
            (
                11,
                &[
                    1, 115, 110, 97, 112, 7, 0, 0, 0, 0, 0, 0, 0, 9, 243, 255, 255, 255, 4, 0, 0,
                    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ],
            ),
        ];
        for (i, bytes) in merge_steps {
            let p = Proposal {
                epoch: 7,
                command: samples()[i].clone(),
            };
            assert_eq!(&p.encode()[..], bytes, "{p:?}");
            assert_eq!(Proposal::decode(bytes), Ok(p));
        }
    }

    #[test]
    fn keys_lists_every_key() {
        let keys: Vec<_> = samples()[3].keys().cloned().collect();
        assert_eq!(keys, vec![b("a"), b("b")]);
        let keys: Vec<_> = samples()[0].keys().cloned().collect();
        assert_eq!(keys, vec![b("k")]);
    }

    #[test]
    fn an_encoded_proposal_is_the_proposal_s_bytes_and_never_a_split_or_merge() {
        for command in samples() {
            let split = command.is_structural();
            let bytes = Proposal {
                epoch: 4,
                command: command.clone(),
            }
            .encode();
            match EncodedProposal::encode(4, &command) {
                None => assert!(split, "{command:?}"),
                Some(e) => {
                    assert!(!split);
                    assert_eq!(e.bytes(), &bytes);
                    assert_eq!(e.epoch(), 4);
                    // What a receiving node builds from those bytes.
                    assert_eq!(EncodedProposal::new(bytes.clone()), Ok(e));
                }
            }
            if split {
                assert!(EncodedProposal::new(bytes).is_err());
            }
        }
        assert!(samples().iter().any(|c| matches!(c, Command::Split { .. })));
        assert!(
            samples()
                .iter()
                .any(|c| matches!(c, Command::Absorb { .. }))
        );
        for junk in [
            &b""[..],
            &[wire::PROPOSAL_FORMAT_VERSION][..],
            &[0xff, 1, 2, 3][..],
        ] {
            assert!(EncodedProposal::new(Bytes::copy_from_slice(junk)).is_err());
        }
    }
}
