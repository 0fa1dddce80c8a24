//! WAL record decoder. Two modes chosen by the first byte:
//! - even: arbitrary bytes as a segment image (the next 8 bytes pick the segment
//!   sequence number), scanned like recovery scans;
//! - odd: arbitrary header fields and payload wrapped in a record with valid
//!   checksums, so the rkyv payload validation is reached.
//!
//! Decoding must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let (seq, image) = match rest.split_first_chunk::<8>() {
            Some((s, img)) => (u64::from_le_bytes(*s) % 4, img),
            None => (1, rest),
        };
        let n = tessera_wal::fuzzing::decode_segment_image(image, seq);
        assert_eq!(n, tessera_wal::fuzzing::decode_segment_image(image, seq));
        let _ = tessera_wal::format::decode_segment_header(image);
    } else if let Some((fields, payload)) = rest.split_first_chunk::<13>() {
        let kind = fields[0] % 7;
        let first = u64::from_le_bytes(fields[1..9].try_into().unwrap_or_default());
        let count = u32::from_le_bytes(fields[9..13].try_into().unwrap_or_default()) % 64;
        let _ = tessera_wal::fuzzing::decode_payload(kind, first, count, payload);
    }
});
