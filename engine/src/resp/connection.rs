//! One client connection: read, execute every complete request in order,
//! write the replies in one flush.

use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::commands::{self, Flow};
use super::reply::Reply;
use super::request::RequestDecoder;
use super::{RespStats, Shared};

/// Bytes read per `read` call (at least).
const READ_BYTES: usize = 16 * 1024;
/// Replies are flushed early once this many bytes are waiting, so a long
/// pipeline does not hold all its replies in memory.
const WRITE_BUFFER_BYTES_MAX: usize = 64 * 1024;

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
    let mut decoder = RequestDecoder::new(shared.opts.max_request_bytes);
    let mut rbuf = BytesMut::with_capacity(READ_BYTES);
    let mut wbuf = BytesMut::with_capacity(READ_BYTES);
    loop {
        // Execute every complete request read so far, in order.
        loop {
            match decoder.decode(&mut rbuf) {
                Ok(Some(args)) if args.is_empty() => continue,
                Ok(Some(args)) => {
                    let flow = commands::execute(shared, &mut session, args, &mut wbuf).await;
                    if flow == Flow::Close {
                        stream.write_all(&wbuf).await?;
                        return stream.shutdown().await;
                    }
                    if flow == Flow::Drop {
                        return Ok(());
                    }
                    if wbuf.len() >= WRITE_BUFFER_BYTES_MAX {
                        stream.write_all(&wbuf).await?;
                        wbuf.clear();
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    RespStats::bump(&stats.errors_protocol);
                    tracing::debug!(peer = %session.peer, error = %e, "resp: protocol error");
                    Reply::err(e.to_string()).encode(&mut wbuf);
                    stream.write_all(&wbuf).await?;
                    return stream.shutdown().await;
                }
            }
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
