//! Range decoders: proposals (log entries), descriptors (meta range) and range
//! snapshots (InstallSnapshot), chosen by the first byte:
//! - 0: `Proposal::decode`; a proposal that decodes must re-encode and decode to
//!   itself, and applying it to a small range must not panic (any command, any
//!   keys, any epoch; a merge's `Absorb` decodes the snapshot it carries);
//! - 1: `RangeDescriptor::decode`; one that decodes has a sane span and
//!   round-trips;
//! - 2: `RangeState::restore` of the bytes as they are (almost always a CRC
//!   failure);
//! - 3: the bytes as the body of a snapshot with a valid header and CRC, so that
//!   the body parser is reached (retired or not, by the body's first bit); a
//!   state that restores must snapshot and restore to the same state, and a
//!   small range must take it over (`Command::Absorb`) without panicking.
//!
//! Decoding must never panic.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tessera_engine::range::{Command, Proposal, RangeDescriptor, RangeState};

fn small_range() -> RangeState {
    RangeState::new(RangeDescriptor {
        id: 1,
        start: Bytes::from_static(b"b"),
        end: Bytes::from_static(b"y"),
        replicas: vec![1, 2, 3],
        epoch: 1,
        conf_ver: 0,
    })
}

fn check_restored(state: RangeState) {
    let again = RangeState::restore(&state.snapshot()).expect("a restored state re-restores");
    assert_eq!(again.state_hash(), state.state_hash());
    assert_eq!(again.descriptor(), state.descriptor());
    assert_eq!(again.applied(), state.applied());
    assert_eq!(
        again.scan(b"", b"", usize::MAX),
        state.scan(b"", b"", usize::MAX)
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            if let Ok(p) = Proposal::decode(rest) {
                assert_eq!(Proposal::decode(&p.encode()).as_ref(), Ok(&p));
                let mut s = small_range();
                // `apply_entry`, not `apply`: a split that succeeds is fine.
                let _ = s.apply_entry(1, 1, p.clone());
                let _ = s.apply_entry(2, 1, Proposal { epoch: 1, ..p });
                check_restored(s);
            }
        }
        1 => {
            if let Ok(d) = RangeDescriptor::decode(rest) {
                assert!(d.end.is_empty() || d.start < d.end);
                assert_eq!(RangeDescriptor::decode(&d.encode()).as_ref(), Ok(&d));
            }
        }
        2 => {
            if let Ok(s) = RangeState::restore(rest) {
                check_restored(s);
            }
        }
        _ => {
            let retired = rest.first().is_some_and(|b| b & 1 == 1);
            let mut image = b"TSRANGE\0\x01\0\0\0".to_vec();
            image[10] = u8::from(retired);
            image.extend_from_slice(&[0; 4]);
            image.extend_from_slice(&(rest.len() as u64).to_le_bytes());
            image.extend_from_slice(rest);
            let crc = crc32c_of(&image[16..]);
            image[12..16].copy_from_slice(&crc.to_le_bytes());
            if let Ok(s) = RangeState::restore(&image) {
                assert_eq!(s.is_retired(), retired);
                check_restored(s);
            }
            let mut left = small_range();
            let command = Command::Absorb {
                right: Bytes::from(image),
            };
            let _ = left.apply_entry(1, 1, Proposal { epoch: 1, command });
            check_restored(left);
        }
    }
});

/// Bitwise CRC32C (Castagnoli, reflected 0x82F63B78), so the fuzz crate needs
/// no other dependency.
fn crc32c_of(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
