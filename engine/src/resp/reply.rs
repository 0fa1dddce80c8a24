//! Replies and their RESP2 encoding.

use bytes::{BufMut, Bytes, BytesMut};

/// One RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`-style status.
    Simple(&'static str),
    /// `-PREFIX message`; the text starts with its prefix (`ERR`, `NOAUTH`...).
    Error(String),
    Int(i64),
    Bulk(Bytes),
    /// `$-1`.
    Nil,
    Array(Vec<Reply>),
}

impl Reply {
    pub const OK: Reply = Reply::Simple("OK");

    /// `-ERR <msg>`.
    pub fn err(msg: impl AsRef<str>) -> Reply {
        Reply::Error(format!("ERR {}", msg.as_ref()))
    }

    pub fn bulk(b: impl Into<Bytes>) -> Reply {
        Reply::Bulk(b.into())
    }

    pub fn opt(v: Option<Bytes>) -> Reply {
        v.map_or(Reply::Nil, Reply::Bulk)
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// Appends the reply's RESP2 bytes to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Reply::Simple(s) => {
                out.put_u8(b'+');
                out.put_slice(s.as_bytes());
                out.put_slice(b"\r\n");
            }
            Reply::Error(e) => {
                out.put_u8(b'-');
                // An error is one line: no CR or LF may reach the wire.
                out.extend(
                    e.bytes()
                        .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
                );
                out.put_slice(b"\r\n");
            }
            Reply::Int(i) => {
                out.put_u8(b':');
                out.put_slice(i.to_string().as_bytes());
                out.put_slice(b"\r\n");
            }
            Reply::Bulk(b) => {
                out.put_u8(b'$');
                out.put_slice(b.len().to_string().as_bytes());
                out.put_slice(b"\r\n");
                out.put_slice(b);
                out.put_slice(b"\r\n");
            }
            Reply::Nil => out.put_slice(b"$-1\r\n"),
            Reply::Array(items) => {
                out.put_u8(b'*');
                out.put_slice(items.len().to_string().as_bytes());
                out.put_slice(b"\r\n");
                for item in items {
                    item.encode(out);
                }
            }
        }
    }
}
