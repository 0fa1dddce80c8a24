//! Splitting a client's byte stream into requests: RESP2 multibulk arrays
//! (what client libraries send) and inline commands (what people type into
//! telnet or `redis-cli` sends for some commands).
//!
//! A multibulk request is walked by a small, resumable scanner that checks its
//! shape as Redis does (an array of bulk strings, nothing nested, each value
//! followed by CRLF) and bounds its size by `max_request_bytes` before a byte
//! of a value is buffered in full. The scan notes where each value lies; once
//! the request is complete its values are sliced out of the read buffer
//! without copying them. The scan resumes where it stopped when more bytes
//! arrive, so a large request is not rescanned from its start. (An earlier
//! version handed the complete request to `redis-protocol`'s decoder, which
//! parsed every header a second time: a tenth of a node's CPU under pipelined
//! SETs.)

use bytes::{Buf, Bytes, BytesMut};

/// Longest inline command line and longest header line (`*N` / `$N`), as
/// Redis (`PROTO_INLINE_MAX_SIZE`).
pub const INLINE_BYTES_MAX: usize = 64 * 1024;

/// A request that breaks the protocol; the connection is answered
/// `-ERR Protocol error: <0>` and closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Protocol error: {0}")]
pub struct ProtocolError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ProtocolError> {
    Err(ProtocolError(msg.into()))
}

/// Where the scan of an incomplete multibulk request stopped.
#[derive(Clone, Copy, Debug)]
struct Pending {
    /// Elements the array declares.
    elements: usize,
    /// Elements scanned completely so far.
    done: usize,
    /// Offset in the buffer of the next element.
    offset: usize,
}

/// Decodes requests from a connection's read buffer.
#[derive(Debug)]
pub struct RequestDecoder {
    max_request_bytes: usize,
    pending: Option<Pending>,
    /// Where the values of the request being scanned lie: (offset, length)
    /// from the start of the request.
    spans: Vec<(usize, usize)>,
}

impl RequestDecoder {
    /// A decoder refusing any request longer than `max_request_bytes` bytes on
    /// the wire.
    pub fn new(max_request_bytes: usize) -> Self {
        assert!(max_request_bytes >= 16, "max_request_bytes is too small");
        RequestDecoder {
            max_request_bytes,
            pending: None,
            spans: Vec::new(),
        }
    }

    /// Changes the bound for the requests after the one being decoded (a
    /// connection lifts it once authenticated).
    pub fn set_max_request_bytes(&mut self, max_request_bytes: usize) {
        assert!(max_request_bytes >= 16, "max_request_bytes is too small");
        self.max_request_bytes = max_request_bytes;
    }

    /// The next request in `buf`, removed from it: `Ok(None)` if `buf` holds
    /// no complete request yet. A request may be empty (a blank inline line,
    /// `*0`): the caller ignores it, as Redis does. After an error the
    /// connection must be closed (the buffer's state is undefined).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        if buf.is_empty() {
            return Ok(None);
        }
        if buf[0] == b'*' {
            self.decode_multibulk(buf)
        } else {
            self.pending = None;
            decode_inline(buf, self.max_request_bytes.min(INLINE_BYTES_MAX))
        }
    }

    fn decode_multibulk(
        &mut self,
        buf: &mut BytesMut,
    ) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        let mut p = match self.pending {
            Some(p) => p,
            None => {
                let Some((line, next)) = header_line(buf, 1, "mbulk count")? else {
                    return Ok(None);
                };
                let Some(n) = parse_len(line) else {
                    return err("invalid multibulk length");
                };
                if n <= 0 {
                    // `*0` and `*-1`: Redis skips them without a reply.
                    buf.advance(next);
                    return Ok(Some(Vec::new()));
                }
                // Each element takes at least 6 bytes (`$0\r\n\r\n`).
                let n = n as u64;
                if n.saturating_mul(6) > self.max_request_bytes as u64 {
                    return err("invalid multibulk length");
                }
                self.spans.clear();
                Pending {
                    elements: n as usize,
                    done: 0,
                    offset: next,
                }
            }
        };
        while p.done < p.elements {
            if p.offset >= buf.len() {
                self.pending = Some(p);
                return Ok(None);
            }
            if buf[p.offset] != b'$' {
                return err(format!(
                    "expected '$', got '{}'",
                    char::from(buf[p.offset]).escape_default()
                ));
            }
            let Some((line, next)) = header_line(buf, p.offset + 1, "bulk length")? else {
                self.pending = Some(p);
                return Ok(None);
            };
            let len = match parse_len(line) {
                Some(len) if len >= 0 => len as u64,
                _ => return err("invalid bulk length"),
            };
            let end = (next as u64).saturating_add(len).saturating_add(2);
            if end > self.max_request_bytes as u64 {
                return err(format!(
                    "request is larger than {} bytes",
                    self.max_request_bytes
                ));
            }
            if end > buf.len() as u64 {
                self.pending = Some(p);
                return Ok(None);
            }
            // `end` fits in the buffer, so in usize.
            let end = end as usize;
            if &buf[end - 2..end] != b"\r\n" {
                return err("expected CRLF after a bulk string");
            }
            self.spans.push((next, len as usize));
            p.offset = end;
            p.done += 1;
        }
        self.pending = None;
        debug_assert_eq!(self.spans.len(), p.elements);
        let request = buf.split_to(p.offset).freeze();
        Ok(Some(
            self.spans
                .iter()
                .map(|&(at, len)| request.slice(at..at + len))
                .collect(),
        ))
    }
}

/// The header line starting at `from` (after its type byte) and the offset
/// after its CRLF, if it is complete.
fn header_line<'a>(
    buf: &'a [u8],
    from: usize,
    what: &str,
) -> Result<Option<(&'a [u8], usize)>, ProtocolError> {
    let rest = &buf[from..];
    match rest.iter().position(|&b| b == b'\r') {
        Some(cr) if cr + 1 < rest.len() => {
            if rest[cr + 1] != b'\n' {
                return err(format!("invalid {what}"));
            }
            Ok(Some((&rest[..cr], from + cr + 2)))
        }
        _ if rest.len() > INLINE_BYTES_MAX => err(format!("too big {what} string")),
        _ => Ok(None),
    }
}

/// A decimal length as Redis's `string2ll` reads it: an optional `-`, digits,
/// no leading zeros (but `0`), at most 18 digits.
fn parse_len(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.split_first() {
        Some((b'-', d)) => (true, d),
        _ => (false, s),
    };
    if digits.is_empty()
        || digits.len() > 18
        || !digits.iter().all(u8::is_ascii_digit)
        || (digits.len() > 1 && digits[0] == b'0')
    {
        return None;
    }
    let v = digits
        .iter()
        .fold(0i64, |acc, &d| acc * 10 + i64::from(d - b'0'));
    Some(if neg { -v } else { v })
}

/// An inline request (a line of words), of at most `max` bytes.
fn decode_inline(buf: &mut BytesMut, max: usize) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > max {
            return err("too big inline request");
        }
        return Ok(None);
    };
    if nl > max {
        return err("too big inline request");
    }
    let line = buf.split_to(nl + 1);
    let mut line = &line[..nl];
    if let Some(stripped) = line.strip_suffix(b"\r") {
        line = stripped;
    }
    split_args(line)
        .map(|args| Some(args.into_iter().map(Bytes::from).collect()))
        .ok_or_else(|| ProtocolError("unbalanced quotes in request".into()))
}

/// Splits an inline command line like Redis's `sdssplitargs`: words separated
/// by whitespace; "double quotes" with `\n \r \t \b \a \\ \" \xHH` escapes;
/// 'single quotes' with `\'`. A closing quote must end the word. `None`: the
/// quotes are unbalanced.
pub fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == line.len() {
            return Some(out);
        }
        let mut word = Vec::new();
        let mut in_dq = false;
        let mut in_sq = false;
        loop {
            if in_dq {
                let c = *line.get(i)?;
                if c == b'\\' && i + 3 < line.len() && line[i + 1] == b'x' {
                    let hex = |b: u8| (b as char).to_digit(16);
                    if let (Some(h), Some(l)) = (hex(line[i + 2]), hex(line[i + 3])) {
                        word.push((h * 16 + l) as u8);
                        i += 4;
                        continue;
                    }
                }
                if c == b'\\' && i + 1 < line.len() {
                    word.push(match line[i + 1] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        other => other,
                    });
                    i += 2;
                } else if c == b'"' {
                    // The closing quote must be followed by a space or the end.
                    if i + 1 < line.len() && !line[i + 1].is_ascii_whitespace() {
                        return None;
                    }
                    i += 1;
                    break;
                } else {
                    word.push(c);
                    i += 1;
                }
            } else if in_sq {
                let c = *line.get(i)?;
                if c == b'\\' && line.get(i + 1) == Some(&b'\'') {
                    word.push(b'\'');
                    i += 2;
                } else if c == b'\'' {
                    if i + 1 < line.len() && !line[i + 1].is_ascii_whitespace() {
                        return None;
                    }
                    i += 1;
                    break;
                } else {
                    word.push(c);
                    i += 1;
                }
            } else {
                match line.get(i) {
                    None => break,
                    Some(c) if c.is_ascii_whitespace() => break,
                    Some(b'"') => in_dq = true,
                    Some(b'\'') => in_sq = true,
                    Some(&c) => word.push(c),
                }
                i += 1;
            }
        }
        out.push(word);
    }
}
