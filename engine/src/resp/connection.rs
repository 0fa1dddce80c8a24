//! One client connection: read, execute the complete requests read (a
//! pipeline's runs together, see `pipeline.rs`), write the replies in order in
//! one flush.

use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::commands::{self, Flow};
use super::pipeline::{self, RunKind};
use super::reply::Reply;
use super::request::{ProtocolError, RequestDecoder};
use super::{RespStats, Shared};

/// Bytes read per `read` call (at least).
const READ_BYTES: usize = 16 * 1024;
/// Replies are flushed early once this many bytes are waiting, so a long
/// pipeline does not hold all its replies in memory.
const WRITE_BUFFER_BYTES_MAX: usize = 64 * 1024;
/// Requests decoded before they are executed, at most.
const PIPELINE_REQUESTS_MAX: usize = 1024;
/// Bytes of requests decoded before they are executed, at most (a request
/// larger than this is decoded alone).
const PIPELINE_BYTES_MAX: usize = 4 << 20;

/// Largest request of a client not yet authenticated (when a password is
/// set): room for AUTH and HELLO, not for the 16 MiB (and millions of empty
/// arguments) `max_request_bytes` allows, which every connection open could
/// otherwise make the node hold before any password was checked (Redis
/// bounds unauthenticated requests too, since CVE-2021-32675).
pub(crate) const UNAUTHENTICATED_REQUEST_BYTES_MAX: usize = 16 << 10;

/// The state of one client.
#[derive(Debug)]
pub(crate) struct Session {
    pub id: u64,
    pub authenticated: bool,
    pub name: Option<Bytes>,
    pub peer: String,
}

/// Answers a connection over `max_connections` and closes it.
pub(crate) async fn refuse(mut stream: TcpStream) {
    let _ = stream
        .write_all(b"-ERR max number of clients reached\r\n")
        .await;
    let _ = stream.shutdown().await;
}

pub(crate) async fn run(
    mut stream: TcpStream,
    shared: &Shared,
    mut shutdown: Option<watch::Receiver<bool>>,
) -> std::io::Result<()> {
    let stats = &shared.opts.stats;
    let mut session = Session {
        id: shared.next_client_id.fetch_add(1, Ordering::Relaxed),
        authenticated: shared.opts.password.is_none(),
        name: None,
        peer: stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
    };
    let bound = |authenticated: bool| {
        if authenticated {
            shared.opts.max_request_bytes
        } else {
            UNAUTHENTICATED_REQUEST_BYTES_MAX.min(shared.opts.max_request_bytes)
        }
    };
    let mut decoder = RequestDecoder::new(bound(session.authenticated));
    let mut rbuf = BytesMut::with_capacity(READ_BYTES);
    let mut wbuf = BytesMut::with_capacity(READ_BYTES);
    loop {
        // Until authenticated, one request at a time: the bound goes up
        // right after the AUTH that lifts it, before the next is decoded.
        let requests_max = if session.authenticated {
            PIPELINE_REQUESTS_MAX
        } else {
            1
        };
        let decoded = decode_pipeline(&mut decoder, &mut rbuf, requests_max);
        let mut rest = &decoded.requests[..];
        while !rest.is_empty() {
            let (kind, len) =
                pipeline::next_run(rest, session.authenticated, |k| shared.db.range_id_of(k));
            let (run, after) = rest.split_at(len);
            rest = after;
            match execute_run(shared, &mut session, kind, run, &mut wbuf).await {
                Flow::Continue => {}
                Flow::Close => {
                    stream.write_all(&wbuf).await?;
                    return stream.shutdown().await;
                }
                Flow::Drop => return Ok(()),
            }
            decoder.set_max_request_bytes(bound(session.authenticated));
            if wbuf.len() >= WRITE_BUFFER_BYTES_MAX {
                stream.write_all(&wbuf).await?;
                wbuf.clear();
            }
        }
        if let Some(e) = decoded.error {
            RespStats::bump(&stats.errors_protocol);
            tracing::debug!(peer = %session.peer, error = %e, "resp: protocol error");
            Reply::err(e.to_string()).encode(&mut wbuf);
            stream.write_all(&wbuf).await?;
            return stream.shutdown().await;
        }
        if decoded.more {
            continue;
        }
        if !wbuf.is_empty() {
            stream.write_all(&wbuf).await?;
            wbuf.clear();
        }
        rbuf.reserve(READ_BYTES);
        let n = tokio::select! {
            n = stream.read_buf(&mut rbuf) => n?,
            () = super::stopped(&mut shutdown) => return stream.shutdown().await,
        };
        if n == 0 {
            return Ok(());
        }
    }
}

/// Complete requests taken from the read buffer.
struct Decoded {
    requests: Vec<Vec<Bytes>>,
    /// Malformed input after `requests`: answer it and close.
    error: Option<ProtocolError>,
    /// The bounds stopped the decoding: more requests may be complete.
    more: bool,
}

/// Decodes the complete requests in `rbuf`, up to `requests_max` and
/// [`PIPELINE_BYTES_MAX`]; empty requests are skipped, as Redis does.
fn decode_pipeline(
    decoder: &mut RequestDecoder,
    rbuf: &mut BytesMut,
    requests_max: usize,
) -> Decoded {
    let start = rbuf.len();
    let mut decoded = Decoded {
        requests: Vec::new(),
        error: None,
        more: false,
    };
    loop {
        if decoded.requests.len() >= requests_max
            || start.saturating_sub(rbuf.len()) >= PIPELINE_BYTES_MAX
        {
            decoded.more = true;
            return decoded;
        }
        match decoder.decode(rbuf) {
            Ok(Some(args)) if args.is_empty() => {}
            Ok(Some(args)) => decoded.requests.push(args),
            Ok(None) => return decoded,
            Err(e) => {
                decoded.error = Some(e);
                return decoded;
            }
        }
    }
}

/// Executes one run (see [`pipeline::next_run`]) and appends its replies to
/// `out` in request order.
async fn execute_run(
    shared: &Shared,
    session: &mut Session,
    kind: RunKind,
    run: &[Vec<Bytes>],
    out: &mut BytesMut,
) -> Flow {
    let stats = &shared.opts.stats;
    let db = &shared.db;
    if kind == RunKind::Alone || run.len() == 1 {
        debug_assert_eq!(run.len(), 1);
        return match run.first() {
            Some(one) => commands::execute(shared, session, one, out).await,
            None => Flow::Continue,
        };
    }
    match kind {
        RunKind::Writes => {
            let range_of = |k: &[u8]| db.range_id_of(k);
            let outcomes = pipeline::write_run(run, range_of, |ops| db.batch(ops)).await;
            for o in outcomes {
                let result = commands::write_reply(o.as_ref().map_err(|e| &**e));
                commands::account(stats, result).encode(out);
            }
        }
        RunKind::Reads => {
            let reads = run.iter().map(|a| async move {
                let name = String::from_utf8_lossy(&a[0]).to_ascii_lowercase();
                commands::read(db, &name, a).await
            });
            for result in pipeline::join_all(reads).await {
                commands::account(stats, result).encode(out);
            }
        }
        RunKind::Alone => {}
    }
    Flow::Continue
}
