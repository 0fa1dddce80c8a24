//! Bytes from the network through the transport's frame decoder: length
//! prefixes, rkyv validation (bytecheck), and the conversion to owned frames.
//! Must never panic; a frame that decodes must re-encode and decode to itself.
#![no_main]

use tessera_transport::bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tessera_transport::codec;

/// Small, so oversized prefixes are exercised as often as valid ones.
const FRAME_BYTES_MAX: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    // The first two bytes play the stream header, the rest the frames.
    if data.len() >= codec::STREAM_HEADER_BYTES {
        let _ = codec::parse_stream_header([data[0], data[1]]);
    }
    let buf = Bytes::copy_from_slice(data);
    if let Ok(frames) = codec::decode_frames(&buf, FRAME_BYTES_MAX) {
        let mut out = Vec::new();
        for frame in &frames {
            codec::encode_frame(frame, &mut out).expect("a decoded frame re-encodes");
        }
        let again = codec::decode_frames(&Bytes::from(out), usize::MAX >> 1).expect("re-encoded frames decode");
        assert_eq!(again, frames);
    }
});
