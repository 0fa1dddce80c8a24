//! The Redis protocol front end's request decoder
//! (`tessera_engine::resp::RequestDecoder`: multibulk arrays, inline
//! commands, size limits) on arbitrary client bytes.
//!
//! The first byte picks where the input is cut in two; the decoder is fed the
//! first part, then both. It must never panic; it must give the same requests
//! (and the same error, if any) as when fed everything at once; and every
//! request it decodes, re-encoded as a multibulk array, must decode to itself.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tessera_engine::resp::{ProtocolError, RequestDecoder};

const MAX: usize = 4096;

fn drain(
    d: &mut RequestDecoder,
    buf: &mut BytesMut,
    out: &mut Vec<Vec<Bytes>>,
) -> Option<ProtocolError> {
    loop {
        match d.decode(buf) {
            Ok(Some(r)) => out.push(r),
            Ok(None) => return None,
            Err(e) => return Some(e),
        }
    }
}

fn encode(args: &[Bytes]) -> BytesMut {
    let mut b = BytesMut::new();
    b.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        b.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        b.extend_from_slice(a);
        b.extend_from_slice(b"\r\n");
    }
    b
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, input)) = data.split_first() else {
        return;
    };
    // All at once.
    let mut whole = Vec::new();
    let mut buf = BytesMut::from(input);
    let whole_err = drain(&mut RequestDecoder::new(MAX), &mut buf, &mut whole);

    // In two parts.
    let cut = (cut as usize * input.len()) / 255;
    let mut parts = Vec::new();
    let mut d = RequestDecoder::new(MAX);
    let mut buf = BytesMut::from(&input[..cut]);
    let mut parts_err = drain(&mut d, &mut buf, &mut parts);
    if parts_err.is_none() {
        buf.extend_from_slice(&input[cut..]);
        parts_err = drain(&mut d, &mut buf, &mut parts);
    }
    if whole_err.is_none() && parts_err.is_none() {
        assert_eq!(whole, parts);
    }
    if whole_err.is_some() || parts_err.is_some() {
        // The same requests before the error, whichever way it was fed (an
        // error may be found earlier when fewer bytes are there: a too-long
        // header line is refused only once it is known to be too long).
        let n = whole.len().min(parts.len());
        assert_eq!(whole[..n], parts[..n]);
    }

    for req in whole.iter().filter(|r| !r.is_empty()) {
        let mut wire = encode(req);
        let mut again = Vec::new();
        if wire.len() <= MAX {
            assert!(drain(&mut RequestDecoder::new(MAX), &mut wire, &mut again).is_none());
            assert_eq!(again, vec![req.clone()]);
            assert!(wire.is_empty());
        }
    }
});
