//! The store's and node's decoders of untrusted bytes, chosen by the first byte:
//! - 0: a peer's message batch (`store::codec::decode_batch`); one that decodes
//!   must re-encode and decode to itself;
//! - 1: an entry payload as stored in the WAL (`decode_payload`), which must
//!   round-trip through `encode_payload`;
//! - 2: snapshot metadata (`decode_snapshot_meta`), round-tripping;
//! - 3: a snapshot file (`node::datadir::decode_snapshot_file`);
//! - 4 / 5: a forwarded request / reply (`store::remote`), round-tripping.
//!
//! Decoding must never panic.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tessera_engine::node::datadir;
use tessera_engine::store::remote;
use tessera_engine::store::codec;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 6 {
        0 => {
            if let Ok(batch) = codec::decode_batch(rest) {
                let again = codec::decode_batch(&codec::encode_batch(&batch));
                assert_eq!(again.as_ref(), Ok(&batch));
            }
        }
        1 => {
            if let Ok(p) = codec::decode_payload(Bytes::copy_from_slice(rest)) {
                assert_eq!(codec::decode_payload(codec::encode_payload(&p)), Ok(p));
            }
        }
        2 => {
            if let Ok(m) = codec::decode_snapshot_meta(rest) {
                assert_eq!(codec::decode_snapshot_meta(&codec::encode_snapshot_meta(&m)), Ok(m));
            }
        }
        3 => {
            let _ = datadir::decode_snapshot_file(rest);
        }
        4 => {
            if let Ok(r) = remote::decode_request(rest) {
                assert_eq!(remote::decode_request(&remote::encode_request(&r)), Ok(r));
            }
        }
        _ => {
            if let Ok(r) = remote::decode_reply(rest) {
                assert_eq!(remote::decode_reply(&remote::encode_reply(&r)), Ok(r));
            }
        }
    }
});
