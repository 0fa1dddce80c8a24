//! Requests forwarded to another node's store, and their replies, as bytes
//! for the transport's request/response calls. Decoding validates the rkyv
//! archive and never panics: the bytes come from the network.

use bytes::Bytes;
use rkyv::{Archive, Deserialize, Serialize};

use super::codec::CodecError;
use super::{ReadConsistency, ReadOp, Reply, Request, StoreError};
use crate::range::{ApplyError, ApplyResult, EncodedProposal, Proposal, RangeDescriptor};

const VERSION: u8 = 1;

#[derive(Archive, Serialize, Deserialize)]
enum WireRequest {
    Write {
        range: u64,
        epoch: u64,
        proposal: Bytes,
    },
    Read {
        range: u64,
        epoch: u64,
        op: WireReadOp,
        consistency: u8,
    },
    TransferLeader {
        range: u64,
        epoch: u64,
        to: u64,
    },
    // New variants go last: the tag is the variant's position.
    Split {
        range: u64,
        epoch: u64,
        at: Bytes,
        new_range: u64,
    },
    ChangeReplicas {
        range: u64,
        epoch: u64,
        conf_ver: Option<u64>,
        add: Vec<u64>,
        remove: Vec<u64>,
    },
    Retire {
        range: u64,
        epoch: u64,
    },
    Absorb {
        range: u64,
        epoch: u64,
        right: Bytes,
    },
}

#[derive(Archive, Serialize, Deserialize)]
enum WireReadOp {
    Get {
        key: Bytes,
    },
    Scan {
        start: Bytes,
        end: Bytes,
        limit: u64,
    },
    Hash,
    Count,
    // New variants go last: the tag is the variant's position.
    Stats {
        split_keys: u64,
        split_bytes: u64,
    },
    /// A scan of keys alone (`ReadOp::Scan::keys_only`): a variant of its
    /// own rather than a field of `Scan`, which would change the archive's
    /// size and break every request between nodes of two versions.
    ScanKeys {
        start: Bytes,
        end: Bytes,
        limit: u64,
    },
    Export,
}

#[derive(Archive, Serialize, Deserialize)]
struct WirePair {
    key: Bytes,
    value: Bytes,
}

#[derive(Archive, Serialize, Deserialize)]
enum WireReply {
    Applied(WireApply),
    Value(Option<Bytes>),
    Pairs(Vec<WirePair>),
    Hash {
        index: u64,
        hash: u64,
    },
    Count(u64),
    NotLeader {
        range: u64,
        leader: u64,
    },
    RangeNotFound {
        range: u64,
    },
    EpochMismatch {
        range: u64,
        requested: u64,
        descriptor: Bytes,
    },
    Busy {
        range: u64,
    },
    Dropped {
        range: u64,
    },
    Ambiguous {
        range: u64,
    },
    Unavailable(String),
    Stopped,
    Accepted,
    Invalid {
        range: u64,
        why: String,
    },
    // New variants go last: the tag is the variant's position.
    KeyNotInRange {
        range: u64,
        descriptor: Bytes,
    },
    Stats {
        keys: u64,
        bytes: u64,
        split_key: Option<Bytes>,
        leader: u64,
    },
    /// `Reply::Stats` of a retired range (a variant of its own, so that the
    /// common answer keeps the archive of nodes of the version before).
    RetiredStats {
        keys: u64,
        bytes: u64,
        leader: u64,
    },
    RangeRetired {
        range: u64,
    },
    Snapshot(Bytes),
}

#[derive(Archive, Serialize, Deserialize)]
enum WireApply {
    Done,
    Deleted(bool),
    Cas {
        swapped: bool,
        current: Option<Bytes>,
    },
    Int(i64),
    PutIf {
        written: bool,
        old: Option<Bytes>,
    },
    EpochMismatch {
        proposal: u64,
        current: u64,
    },
    KeyOutOfRange {
        key: Bytes,
    },
    NotAnInteger,
    Overflow,
    // New variants go last: the tag is the variant's position.
    Split {
        left: Bytes,
        right: Bytes,
    },
    InvalidSplit {
        why: String,
    },
    ValueTooLarge {
        len: u64,
        max: u64,
    },
    Replicas(Bytes),
    Retired(Bytes),
    Merged {
        left: Bytes,
        right: Bytes,
    },
    RetiredRange,
    InvalidMerge {
        why: String,
    },
}

/// Bytes an encoding starts with room for, at least.
const ENCODE_CAPACITY_MIN: usize = 256;

fn encode<T>(value: &T, capacity: usize) -> Bytes
where
    T: for<'a> Serialize<
        rkyv::api::high::HighSerializer<
            Vec<u8>,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rkyv::rancor::Error,
        >,
    >,
{
    // Most requests and replies are small; starting at a few hundred bytes
    // saves the five or six growths (each a copy) a one-byte start costs.
    let mut out = Vec::with_capacity(capacity.max(ENCODE_CAPACITY_MIN));
    out.push(VERSION);
    Bytes::from(
        rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(value, out)
            .expect("serializing into memory"),
    )
}

fn body(bytes: &[u8]) -> Result<&[u8], CodecError> {
    match bytes.split_first() {
        Some((&VERSION, rest)) => Ok(rest),
        Some((&v, _)) => Err(CodecError::Version(v)),
        None => Err(CodecError::Archive("empty".into())),
    }
}

fn archive_err(e: impl std::fmt::Display) -> CodecError {
    CodecError::Archive(e.to_string())
}

pub fn encode_request(req: &Request) -> Bytes {
    let capacity = match req {
        Request::WriteEncoded { proposal, .. } => 64 + proposal.bytes().len(),
        _ => 0,
    };
    let wire = match req {
        Request::Write {
            range,
            epoch,
            command,
        } => WireRequest::Write {
            range: *range,
            epoch: *epoch,
            proposal: Proposal {
                epoch: *epoch,
                command: command.clone(),
            }
            .encode(),
        },
        Request::WriteEncoded {
            range,
            epoch,
            proposal,
        } => WireRequest::Write {
            range: *range,
            epoch: *epoch,
            proposal: proposal.bytes().clone(),
        },
        Request::TransferLeader { range, epoch, to } => WireRequest::TransferLeader {
            range: *range,
            epoch: *epoch,
            to: *to,
        },
        Request::Split {
            range,
            epoch,
            at,
            new_range,
        } => WireRequest::Split {
            range: *range,
            epoch: *epoch,
            at: at.clone(),
            new_range: *new_range,
        },
        Request::ChangeReplicas {
            range,
            epoch,
            conf_ver,
            add,
            remove,
        } => WireRequest::ChangeReplicas {
            range: *range,
            epoch: *epoch,
            conf_ver: *conf_ver,
            add: add.clone(),
            remove: remove.clone(),
        },
        Request::Retire { range, epoch } => WireRequest::Retire {
            range: *range,
            epoch: *epoch,
        },
        Request::Absorb {
            range,
            epoch,
            right,
        } => WireRequest::Absorb {
            range: *range,
            epoch: *epoch,
            right: right.clone(),
        },
        Request::Read {
            range,
            epoch,
            op,
            consistency,
        } => WireRequest::Read {
            range: *range,
            epoch: *epoch,
            op: match op {
                ReadOp::Get { key } => WireReadOp::Get { key: key.clone() },
                ReadOp::Scan {
                    start,
                    end,
                    limit,
                    keys_only: false,
                } => WireReadOp::Scan {
                    start: start.clone(),
                    end: end.clone(),
                    limit: *limit as u64,
                },
                ReadOp::Scan {
                    start,
                    end,
                    limit,
                    keys_only: true,
                } => WireReadOp::ScanKeys {
                    start: start.clone(),
                    end: end.clone(),
                    limit: *limit as u64,
                },
                ReadOp::Hash => WireReadOp::Hash,
                ReadOp::Count => WireReadOp::Count,
                ReadOp::Stats {
                    split_keys,
                    split_bytes,
                } => WireReadOp::Stats {
                    split_keys: *split_keys,
                    split_bytes: *split_bytes,
                },
                ReadOp::Export => WireReadOp::Export,
            },
            consistency: match consistency {
                ReadConsistency::Linearizable => 0,
                ReadConsistency::Lease => 1,
                ReadConsistency::Stale => 2,
            },
        },
    };
    encode(&wire, capacity)
}

pub fn decode_request(bytes: &[u8]) -> Result<Request, CodecError> {
    let wire =
        rkyv::from_bytes::<WireRequest, rkyv::rancor::Error>(body(bytes)?).map_err(archive_err)?;
    Ok(match wire {
        WireRequest::Write {
            range,
            epoch,
            proposal,
        } => {
            // Validated, not decoded: the leader proposes these bytes as they
            // are (every replica decodes them again when it applies them).
            let proposal = EncodedProposal::new(proposal).map_err(archive_err)?;
            if proposal.epoch() != epoch {
                return Err(CodecError::Archive("proposal epoch differs".into()));
            }
            Request::WriteEncoded {
                range,
                epoch,
                proposal,
            }
        }
        WireRequest::TransferLeader { range, epoch, to } => {
            Request::TransferLeader { range, epoch, to }
        }
        WireRequest::Split {
            range,
            epoch,
            at,
            new_range,
        } => Request::Split {
            range,
            epoch,
            at,
            new_range,
        },
        WireRequest::ChangeReplicas {
            range,
            epoch,
            conf_ver,
            add,
            remove,
        } => Request::ChangeReplicas {
            range,
            epoch,
            conf_ver,
            add,
            remove,
        },
        WireRequest::Retire { range, epoch } => Request::Retire { range, epoch },
        WireRequest::Absorb {
            range,
            epoch,
            right,
        } => Request::Absorb {
            range,
            epoch,
            right,
        },
        WireRequest::Read {
            range,
            epoch,
            op,
            consistency,
        } => Request::Read {
            range,
            epoch,
            op: match op {
                WireReadOp::Get { key } => ReadOp::Get { key },
                WireReadOp::Scan { start, end, limit } => ReadOp::Scan {
                    start,
                    end,
                    limit: usize::try_from(limit).unwrap_or(usize::MAX),
                    keys_only: false,
                },
                WireReadOp::ScanKeys { start, end, limit } => ReadOp::Scan {
                    start,
                    end,
                    limit: usize::try_from(limit).unwrap_or(usize::MAX),
                    keys_only: true,
                },
                WireReadOp::Hash => ReadOp::Hash,
                WireReadOp::Count => ReadOp::Count,
                WireReadOp::Stats {
                    split_keys,
                    split_bytes,
                } => ReadOp::Stats {
                    split_keys,
                    split_bytes,
                },
                WireReadOp::Export => ReadOp::Export,
            },
            consistency: match consistency {
                0 => ReadConsistency::Linearizable,
                1 => ReadConsistency::Lease,
                2 => ReadConsistency::Stale,
                _ => return Err(CodecError::Archive("unknown read consistency".into())),
            },
        },
    })
}

pub fn encode_reply(reply: &Result<Reply, StoreError>) -> Bytes {
    let wire = match reply {
        Ok(Reply::Applied(a)) => WireReply::Applied(match a {
            ApplyResult::Done => WireApply::Done,
            ApplyResult::Deleted(d) => WireApply::Deleted(*d),
            ApplyResult::Cas { swapped, current } => WireApply::Cas {
                swapped: *swapped,
                current: current.clone(),
            },
            ApplyResult::Int(i) => WireApply::Int(*i),
            ApplyResult::PutIf { written, old } => WireApply::PutIf {
                written: *written,
                old: old.clone(),
            },
            ApplyResult::Error(ApplyError::EpochMismatch { proposal, current }) => {
                WireApply::EpochMismatch {
                    proposal: *proposal,
                    current: *current,
                }
            }
            ApplyResult::Error(ApplyError::KeyOutOfRange { key }) => {
                WireApply::KeyOutOfRange { key: key.clone() }
            }
            ApplyResult::Error(ApplyError::NotAnInteger) => WireApply::NotAnInteger,
            ApplyResult::Error(ApplyError::Overflow) => WireApply::Overflow,
            ApplyResult::Error(ApplyError::InvalidSplit { why }) => {
                WireApply::InvalidSplit { why: why.clone() }
            }
            ApplyResult::Error(ApplyError::ValueTooLarge { len, max }) => {
                WireApply::ValueTooLarge {
                    len: *len,
                    max: *max,
                }
            }
            ApplyResult::Split { left, right } => WireApply::Split {
                left: left.encode(),
                right: right.encode(),
            },
            ApplyResult::Replicas(d) => WireApply::Replicas(d.encode()),
            ApplyResult::Retired(d) => WireApply::Retired(d.encode()),
            ApplyResult::Merged { left, right } => WireApply::Merged {
                left: left.encode(),
                right: right.encode(),
            },
            ApplyResult::Error(ApplyError::Retired) => WireApply::RetiredRange,
            ApplyResult::Error(ApplyError::InvalidMerge { why }) => {
                WireApply::InvalidMerge { why: why.clone() }
            }
        }),
        Ok(Reply::Value(v)) => WireReply::Value(v.clone()),
        Ok(Reply::Pairs(ps)) => WireReply::Pairs(
            ps.iter()
                .map(|(k, v)| WirePair {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
        ),
        Ok(Reply::Hash { index, hash }) => WireReply::Hash {
            index: *index,
            hash: *hash,
        },
        Ok(Reply::Count(n)) => WireReply::Count(*n),
        Ok(Reply::Stats {
            keys,
            bytes,
            leader,
            retired: true,
            ..
        }) => WireReply::RetiredStats {
            keys: *keys,
            bytes: *bytes,
            leader: leader.unwrap_or(0),
        },
        Ok(Reply::Stats {
            keys,
            bytes,
            split_key,
            leader,
            retired: false,
        }) => WireReply::Stats {
            keys: *keys,
            bytes: *bytes,
            split_key: split_key.clone(),
            leader: leader.unwrap_or(0),
        },
        Err(StoreError::NotLeader { range, leader }) => WireReply::NotLeader {
            range: *range,
            leader: leader.unwrap_or(0),
        },
        Err(StoreError::RangeNotFound { range }) => WireReply::RangeNotFound { range: *range },
        Err(StoreError::EpochMismatch {
            range,
            requested,
            current,
        }) => WireReply::EpochMismatch {
            range: *range,
            requested: *requested,
            descriptor: current.encode(),
        },
        Err(StoreError::Busy { range }) => WireReply::Busy { range: *range },
        Err(StoreError::Dropped { range }) => WireReply::Dropped { range: *range },
        Err(StoreError::Ambiguous { range }) => WireReply::Ambiguous { range: *range },
        Err(StoreError::Unavailable(why)) => WireReply::Unavailable(why.clone()),
        Err(StoreError::Stopped) => WireReply::Stopped,
        Ok(Reply::Accepted) => WireReply::Accepted,
        Err(StoreError::Invalid { range, why }) => WireReply::Invalid {
            range: *range,
            why: why.clone(),
        },
        Err(StoreError::KeyNotInRange { range, current }) => WireReply::KeyNotInRange {
            range: *range,
            descriptor: current.encode(),
        },
        Err(StoreError::RangeRetired { range }) => WireReply::RangeRetired { range: *range },
        Ok(Reply::Snapshot(bytes)) => WireReply::Snapshot(bytes.clone()),
    };
    encode(&wire, 0)
}

pub fn decode_reply(bytes: &[u8]) -> Result<Result<Reply, StoreError>, CodecError> {
    let wire =
        rkyv::from_bytes::<WireReply, rkyv::rancor::Error>(body(bytes)?).map_err(archive_err)?;
    Ok(match wire {
        WireReply::Applied(a) => Ok(Reply::Applied(match a {
            WireApply::Done => ApplyResult::Done,
            WireApply::Deleted(d) => ApplyResult::Deleted(d),
            WireApply::Cas { swapped, current } => ApplyResult::Cas { swapped, current },
            WireApply::Int(i) => ApplyResult::Int(i),
            WireApply::PutIf { written, old } => ApplyResult::PutIf { written, old },
            WireApply::EpochMismatch { proposal, current } => {
                ApplyResult::Error(ApplyError::EpochMismatch { proposal, current })
            }
            WireApply::KeyOutOfRange { key } => {
                ApplyResult::Error(ApplyError::KeyOutOfRange { key })
            }
            WireApply::NotAnInteger => ApplyResult::Error(ApplyError::NotAnInteger),
            WireApply::Overflow => ApplyResult::Error(ApplyError::Overflow),
            WireApply::InvalidSplit { why } => ApplyResult::Error(ApplyError::InvalidSplit { why }),
            WireApply::ValueTooLarge { len, max } => {
                ApplyResult::Error(ApplyError::ValueTooLarge { len, max })
            }
            WireApply::Split { left, right } => ApplyResult::Split {
                left: RangeDescriptor::decode(&left).map_err(archive_err)?,
                right: RangeDescriptor::decode(&right).map_err(archive_err)?,
            },
            WireApply::Replicas(d) => {
                ApplyResult::Replicas(RangeDescriptor::decode(&d).map_err(archive_err)?)
            }
            WireApply::Retired(d) => {
                ApplyResult::Retired(RangeDescriptor::decode(&d).map_err(archive_err)?)
            }
            WireApply::Merged { left, right } => ApplyResult::Merged {
                left: RangeDescriptor::decode(&left).map_err(archive_err)?,
                right: RangeDescriptor::decode(&right).map_err(archive_err)?,
            },
            WireApply::RetiredRange => ApplyResult::Error(ApplyError::Retired),
            WireApply::InvalidMerge { why } => ApplyResult::Error(ApplyError::InvalidMerge { why }),
        })),
        WireReply::Value(v) => Ok(Reply::Value(v)),
        WireReply::Pairs(ps) => Ok(Reply::Pairs(
            ps.into_iter().map(|p| (p.key, p.value)).collect(),
        )),
        WireReply::Hash { index, hash } => Ok(Reply::Hash { index, hash }),
        WireReply::Count(n) => Ok(Reply::Count(n)),
        WireReply::Stats {
            keys,
            bytes,
            split_key,
            leader,
        } => Ok(Reply::Stats {
            keys,
            bytes,
            split_key,
            leader: (leader != 0).then_some(leader),
            retired: false,
        }),
        WireReply::RetiredStats {
            keys,
            bytes,
            leader,
        } => Ok(Reply::Stats {
            keys,
            bytes,
            split_key: None,
            leader: (leader != 0).then_some(leader),
            retired: true,
        }),
        WireReply::RangeRetired { range } => Err(StoreError::RangeRetired { range }),
        WireReply::Snapshot(bytes) => Ok(Reply::Snapshot(bytes)),
        WireReply::NotLeader { range, leader } => Err(StoreError::NotLeader {
            range,
            leader: (leader != 0).then_some(leader),
        }),
        WireReply::RangeNotFound { range } => Err(StoreError::RangeNotFound { range }),
        WireReply::EpochMismatch {
            range,
            requested,
            descriptor,
        } => Err(StoreError::EpochMismatch {
            range,
            requested,
            current: Box::new(RangeDescriptor::decode(&descriptor).map_err(archive_err)?),
        }),
        WireReply::Busy { range } => Err(StoreError::Busy { range }),
        WireReply::Dropped { range } => Err(StoreError::Dropped { range }),
        WireReply::Ambiguous { range } => Err(StoreError::Ambiguous { range }),
        WireReply::Unavailable(why) => Err(StoreError::Unavailable(why)),
        WireReply::Stopped => Err(StoreError::Stopped),
        WireReply::Accepted => Ok(Reply::Accepted),
        WireReply::Invalid { range, why } => Err(StoreError::Invalid { range, why }),
        WireReply::KeyNotInRange { range, descriptor } => Err(StoreError::KeyNotInRange {
            range,
            current: Box::new(RangeDescriptor::decode(&descriptor).map_err(archive_err)?),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::range::Command;

    #[test]
    fn requests_and_replies_round_trip() {
        let reqs = vec![
            Request::Write {
                range: 3,
                epoch: 2,
                command: Command::Increment {
                    key: Bytes::from_static(b"k"),
                    delta: -4,
                },
            },
            Request::Read {
                range: 4,
                epoch: 1,
                op: ReadOp::Scan {
                    start: Bytes::from_static(b"a"),
                    end: Bytes::new(),
                    limit: 10,
                    keys_only: true,
                },
                consistency: ReadConsistency::Lease,
            },
            Request::Read {
                range: 4,
                epoch: 1,
                op: ReadOp::Scan {
                    start: Bytes::from_static(b"a"),
                    end: Bytes::from_static(b"q"),
                    limit: 10,
                    keys_only: false,
                },
                consistency: ReadConsistency::Linearizable,
            },
            Request::Retire { range: 5, epoch: 3 },
            Request::Absorb {
                range: 4,
                epoch: 2,
                right: Bytes::from_static(b"snapshot"),
            },
            Request::Read {
                range: 5,
                epoch: 3,
                op: ReadOp::Export,
                consistency: ReadConsistency::Stale,
            },
        ];
        for r in reqs {
            let back = decode_request(&encode_request(&r));
            match (&r, back) {
                // A write arrives as its encoded proposal, proposed as is.
                (
                    Request::Write {
                        range,
                        epoch,
                        command,
                    },
                    Ok(Request::WriteEncoded {
                        range: r2,
                        epoch: e2,
                        proposal,
                    }),
                ) => {
                    assert_eq!((*range, *epoch), (r2, e2));
                    let p = Proposal::decode(proposal.bytes()).expect("valid proposal");
                    assert_eq!((p.epoch, &p.command), (*epoch, command));
                    // And forwarded again, it is the same request.
                    let again = Request::WriteEncoded {
                        range: r2,
                        epoch: e2,
                        proposal,
                    };
                    assert_eq!(decode_request(&encode_request(&again)), Ok(again));
                }
                (_, back) => assert_eq!(back, Ok(r)),
            }
        }
        let d = RangeDescriptor {
            id: 5,
            start: Bytes::from_static(b"a"),
            end: Bytes::from_static(b"m"),
            replicas: vec![1, 2, 3],
            epoch: 4,
            conf_ver: 1,
        };
        let replies = vec![
            Ok(Reply::Applied(ApplyResult::Cas {
                swapped: false,
                current: Some(Bytes::from_static(b"v")),
            })),
            Ok(Reply::Pairs(vec![(
                Bytes::from_static(b"a"),
                Bytes::from_static(b"1"),
            )])),
            Ok(Reply::Applied(ApplyResult::Error(ApplyError::NotAnInteger))),
            Ok(Reply::Applied(ApplyResult::Error(
                ApplyError::ValueTooLarge {
                    len: 5 << 20,
                    max: 4 << 20,
                },
            ))),
            Err(StoreError::NotLeader {
                range: 9,
                leader: Some(2),
            }),
            Err(StoreError::Unavailable("down".into())),
            Err(StoreError::RangeRetired { range: 5 }),
            Ok(Reply::Snapshot(Bytes::from_static(b"snapshot"))),
            Ok(Reply::Applied(ApplyResult::Retired(d.clone()))),
            Ok(Reply::Applied(ApplyResult::Merged {
                left: d.clone(),
                right: RangeDescriptor { id: 6, ..d.clone() },
            })),
            Ok(Reply::Applied(ApplyResult::Error(ApplyError::Retired))),
            Ok(Reply::Applied(ApplyResult::Error(
                ApplyError::InvalidMerge {
                    why: "apart".into(),
                },
            ))),
            Ok(Reply::Stats {
                keys: 3,
                bytes: 30,
                split_key: Some(Bytes::from_static(b"m")),
                leader: Some(2),
                retired: false,
            }),
            Ok(Reply::Stats {
                keys: 3,
                bytes: 30,
                split_key: None,
                leader: None,
                retired: true,
            }),
        ];
        for r in replies {
            assert_eq!(decode_reply(&encode_reply(&r)), Ok(r));
        }
    }

    #[test]
    fn a_forwarded_write_is_checked_before_it_is_proposed() {
        let forward = |epoch: u64, command: Command| {
            encode(
                &WireRequest::Write {
                    range: 4,
                    epoch,
                    proposal: Proposal { epoch: 7, command }.encode(),
                },
                0,
            )
        };
        let put = Command::Put {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
        };
        assert!(matches!(
            decode_request(&forward(7, put.clone())),
            Ok(Request::WriteEncoded { epoch: 7, .. })
        ));
        // The epoch it was routed with must be the proposal's.
        assert!(decode_request(&forward(8, put)).is_err());
        // A split is never proposed as a write.
        let split = Command::Split {
            at: Bytes::from_static(b"m"),
            new_range: 9,
        };
        assert!(decode_request(&forward(7, split)).is_err());
        // Nor are bytes that are not a proposal.
        let junk = encode(
            &WireRequest::Write {
                range: 4,
                epoch: 7,
                proposal: Bytes::from_static(&[crate::range::PROPOSAL_FORMAT_VERSION, 1, 2, 3]),
            },
            0,
        );
        assert!(decode_request(&junk).is_err());
    }

    #[test]
    fn garbage_is_an_error() {
        for len in 0..80usize {
            let raw: Vec<u8> = (0..len).map(|i| (i * 131 + 7) as u8).collect();
            let _ = decode_request(&raw);
            let _ = decode_reply(&raw);
        }
    }
}
