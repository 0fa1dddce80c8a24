//! The RESP2 target: any Redis-protocol server (a Tessera cluster, or Redis itself as a
//! baseline), `resp://H:P[,H:P...]`. Worker `w` connects to address `w % n`.
//!
//! A small client on tokio: one request in flight per connection (no pipelining),
//! frames decoded by `redis-protocol`. Commands: `GET`, `SET`, `DEL`, `PING`, and for
//! scans `SCAN 0 COUNT limit` then `MGET` of the keys it returned: Redis has no ordered
//! range scan, so a scan reads about `limit` keys and values but ignores the start key.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::decode::decode_bytes_mut;
use redis_protocol::resp2::encode::extend_encode_borrowed;
use redis_protocol::resp2::types::{BorrowedFrame, BytesFrame};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::{BoxFuture, CONNECT_TIMEOUT, Client, Target, TargetError, TargetInfo};

/// The RESP2 target over a list of addresses.
#[derive(Debug)]
pub struct RespTarget {
    addrs: Vec<String>,
    connect_timeout: Duration,
}

impl RespTarget {
    /// Checks that every address answers `PING` (failing fast with the address that
    /// does not), then returns the target.
    pub async fn open(addrs: Vec<String>) -> Result<Self, TargetError> {
        Self::open_with_timeout(addrs, CONNECT_TIMEOUT).await
    }

    /// [`RespTarget::open`] with another connect timeout.
    pub async fn open_with_timeout(
        addrs: Vec<String>,
        connect_timeout: Duration,
    ) -> Result<Self, TargetError> {
        assert!(!addrs.is_empty(), "a RESP target needs an address");
        for addr in &addrs {
            let mut conn = Conn::open(addr, connect_timeout).await?;
            // A server that accepts but never answers (stopped, or its
            // accept queue full) must not hold the run before it starts.
            tokio::time::timeout(connect_timeout, conn.ping())
                .await
                .map_err(|_| TargetError::ConnectTimeout {
                    addr: addr.clone(),
                    timeout_ms: connect_timeout.as_millis() as u64,
                })??;
        }
        Ok(RespTarget {
            addrs,
            connect_timeout,
        })
    }
}

impl Target for RespTarget {
    fn info(&self) -> TargetInfo {
        TargetInfo {
            name: format!("resp://{}", self.addrs.join(",")),
            nodes: Some(self.addrs.len() as u32),
            ranges: None,
            fsync: None,
            tls: Some(false),
            read_consistency: None,
            storage: None,
            network: None,
            leaders_on: None,
        }
    }

    fn connect(&self, worker: usize) -> BoxFuture<'_, Result<Box<dyn Client>, TargetError>> {
        Box::pin(async move {
            let addr = self.addrs[worker % self.addrs.len()].clone();
            let conn = Conn::open(&addr, self.connect_timeout).await?;
            let client = RespClient {
                addr,
                connect_timeout: self.connect_timeout,
                conn: Some(conn),
                reconnects: 0,
            };
            Ok(Box::new(client) as Box<dyn Client>)
        })
    }
}

/// One worker's connection; reconnects (counted as a `reconnect` retry) after an error
/// that leaves the connection in an unknown state.
#[derive(Debug)]
pub struct RespClient {
    addr: String,
    connect_timeout: Duration,
    conn: Option<Conn>,
    reconnects: u64,
}

impl RespClient {
    async fn call(&mut self, args: &[&[u8]]) -> Result<BytesFrame, TargetError> {
        // A request whose future was dropped (the runner's timeout) left its
        // reply due on the connection: the next request would read it as its
        // own. Such a connection is replaced.
        if self.conn.as_ref().is_some_and(|c| c.awaiting_reply) {
            self.conn = None;
        }
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => {
                self.reconnects += 1;
                self.conn
                    .insert(Conn::open(&self.addr, self.connect_timeout).await?)
            }
        };
        match conn.call(args).await {
            Ok(BytesFrame::Error(message)) => Err(server_error(&message)),
            Ok(frame) => Ok(frame),
            Err(e) => {
                if e.breaks_connection() {
                    self.conn = None;
                }
                Err(e)
            }
        }
    }
}

fn server_error(message: &str) -> TargetError {
    let code = message
        .split_whitespace()
        .next()
        .unwrap_or("ERR")
        .to_string();
    TargetError::Server {
        code,
        message: message.to_string(),
    }
}

fn unexpected(command: &str, frame: &BytesFrame) -> TargetError {
    TargetError::Protocol(format!("unexpected reply to {command}: {frame:?}"))
}

impl Client for RespClient {
    fn get<'a>(&'a mut self, key: &'a [u8]) -> BoxFuture<'a, Result<Option<Bytes>, TargetError>> {
        Box::pin(async move {
            match self.call(&[b"GET", key]).await? {
                BytesFrame::BulkString(value) => Ok(Some(value)),
                BytesFrame::Null => Ok(None),
                other => Err(unexpected("GET", &other)),
            }
        })
    }

    fn put<'a>(
        &'a mut self,
        key: &'a [u8],
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<(), TargetError>> {
        Box::pin(async move {
            match self.call(&[b"SET", key, value]).await? {
                BytesFrame::SimpleString(s) if s.as_ref() == b"OK" => Ok(()),
                other => Err(unexpected("SET", &other)),
            }
        })
    }

    fn delete<'a>(&'a mut self, key: &'a [u8]) -> BoxFuture<'a, Result<bool, TargetError>> {
        Box::pin(async move {
            match self.call(&[b"DEL", key]).await? {
                BytesFrame::Integer(n) => Ok(n > 0),
                other => Err(unexpected("DEL", &other)),
            }
        })
    }

    fn scan<'a>(
        &'a mut self,
        _start: &'a [u8],
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<(Bytes, Bytes)>, TargetError>> {
        Box::pin(async move {
            let count = limit.to_string();
            let keys = match self
                .call(&[b"SCAN", b"0", b"COUNT", count.as_bytes()])
                .await?
            {
                BytesFrame::Array(mut parts) if parts.len() == 2 => match parts.pop() {
                    Some(BytesFrame::Array(keys)) => keys,
                    other => return Err(TargetError::Protocol(format!("SCAN keys: {other:?}"))),
                },
                other => return Err(unexpected("SCAN", &other)),
            };
            let mut keys: Vec<Bytes> = keys
                .into_iter()
                .filter_map(|k| match k {
                    BytesFrame::BulkString(k) => Some(k),
                    _ => None,
                })
                .collect();
            keys.truncate(limit);
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let mut args: Vec<&[u8]> = Vec::with_capacity(keys.len() + 1);
            args.push(b"MGET");
            args.extend(keys.iter().map(|k| k.as_ref()));
            let values = match self.call(&args).await? {
                BytesFrame::Array(values) if values.len() == keys.len() => values,
                other => return Err(unexpected("MGET", &other)),
            };
            Ok(keys
                .into_iter()
                .zip(values)
                .filter_map(|(k, v)| match v {
                    BytesFrame::BulkString(v) => Some((k, v)),
                    _ => None,
                })
                .collect())
        })
    }

    fn retries(&self) -> BTreeMap<String, u64> {
        let mut retries = BTreeMap::new();
        if self.reconnects > 0 {
            retries.insert("reconnect".to_string(), self.reconnects);
        }
        retries
    }
}

/// One TCP connection with its buffers.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    read_buf: BytesMut,
    write_buf: BytesMut,
    /// A request was written and its reply not read yet.
    awaiting_reply: bool,
}

const READ_BUF_BYTES: usize = 16 * 1024;

impl Conn {
    async fn open(addr: &str, timeout: Duration) -> Result<Self, TargetError> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => {
                return Err(TargetError::Connect {
                    addr: addr.into(),
                    source,
                });
            }
            Err(_) => {
                return Err(TargetError::ConnectTimeout {
                    addr: addr.into(),
                    timeout_ms: timeout.as_millis() as u64,
                });
            }
        };
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            read_buf: BytesMut::with_capacity(READ_BUF_BYTES),
            write_buf: BytesMut::with_capacity(1024),
            awaiting_reply: false,
        })
    }

    async fn ping(&mut self) -> Result<(), TargetError> {
        match self.call(&[b"PING"]).await? {
            BytesFrame::SimpleString(s) if s.as_ref() == b"PONG" => Ok(()),
            BytesFrame::Error(message) => Err(server_error(&message)),
            other => Err(unexpected("PING", &other)),
        }
    }

    /// Sends one command and reads its reply (an error reply is returned as a frame).
    async fn call(&mut self, args: &[&[u8]]) -> Result<BytesFrame, TargetError> {
        let parts: Vec<BorrowedFrame<'_>> =
            args.iter().map(|a| BorrowedFrame::BulkString(a)).collect();
        self.write_buf.clear();
        extend_encode_borrowed(&mut self.write_buf, &BorrowedFrame::Array(&parts), false)
            .map_err(|e| TargetError::Protocol(e.to_string()))?;
        self.awaiting_reply = true;
        self.stream.write_all(&self.write_buf).await?;
        loop {
            match decode_bytes_mut(&mut self.read_buf) {
                Ok(Some((frame, _, _))) => {
                    self.awaiting_reply = false;
                    return Ok(frame);
                }
                Ok(None) => {}
                Err(e) => return Err(TargetError::Protocol(e.to_string())),
            }
            if self.read_buf.capacity() - self.read_buf.len() < 1024 {
                self.read_buf.reserve(READ_BUF_BYTES);
            }
            if self.stream.read_buf(&mut self.read_buf).await? == 0 {
                return Err(TargetError::Closed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unreachable_target_fails_fast_and_names_the_address() {
        // Port 1 on loopback: nothing listens there, the connect is refused at once.
        let started = std::time::Instant::now();
        let err = RespTarget::open(vec!["127.0.0.1:1".into()])
            .await
            .unwrap_err();
        assert!(started.elapsed() < CONNECT_TIMEOUT + Duration::from_secs(1));
        assert_eq!(err.kind(), "connect");
        assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    }

    #[tokio::test]
    async fn talks_resp_to_a_scripted_server() {
        // A fake server: the first connection (the open check) gets PONG, the second
        // (the worker's) a scripted reply per request, then a protocol violation.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let scripts: [&[&[u8]]; 3] = [
                &[b"+PONG\r\n"],
                &[
                    b"+OK\r\n",
                    b"$2\r\nhi\r\n",
                    b":1\r\n",
                    b"-NOTLEADER range 3\r\n",
                    b"?\r\n",
                ],
                &[b"$-1\r\n"],
            ];
            let mut requests = Vec::new();
            for script in scripts {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                for reply in script {
                    let n = sock.read(&mut buf).await.unwrap();
                    assert!(n > 0, "connection closed early");
                    requests.push(buf[..n].to_vec());
                    sock.write_all(reply).await.unwrap();
                }
            }
            requests
        });
        let target = RespTarget::open(vec![addr.clone()]).await.unwrap();
        let mut client = target.connect(0).await.unwrap();
        client.put(b"k", b"hi").await.unwrap();
        assert_eq!(
            client.get(b"k").await.unwrap().as_deref(),
            Some(b"hi".as_slice())
        );
        assert!(client.delete(b"k").await.unwrap());
        let err = client.get(b"k").await.unwrap_err();
        assert_eq!(err.kind(), "server:NOTLEADER");
        // A server error keeps the connection; a protocol violation drops it and the
        // next call reconnects, counted as a retry.
        let err = client.get(b"k").await.unwrap_err();
        assert_eq!(err.kind(), "protocol");
        assert!(client.retries().is_empty());
        assert_eq!(client.get(b"k").await.unwrap(), None);
        assert_eq!(client.retries().get("reconnect"), Some(&1));
        let requests = server.await.unwrap();
        assert_eq!(requests[0], b"*1\r\n$4\r\nPING\r\n");
        assert_eq!(requests[1], b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nhi\r\n");
        assert_eq!(target.info().name, format!("resp://{addr}"));
    }
    #[tokio::test]
    async fn a_late_reply_to_an_abandoned_request_is_never_taken_for_the_next() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            // The open check.
            let (mut sock, _) = listener.accept().await.unwrap();
            assert!(sock.read(&mut buf).await.unwrap() > 0);
            sock.write_all(b"+PONG\r\n").await.unwrap();
            // The worker's first connection answers late, then on time.
            let (mut slow, _) = listener.accept().await.unwrap();
            assert!(slow.read(&mut buf).await.unwrap() > 0);
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = slow.write_all(b"$3\r\nold\r\n").await;
            let late = tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                if let Ok(n) = slow.read(&mut buf).await
                    && n > 0
                {
                    let _ = slow.write_all(b"$3\r\nnew\r\n").await;
                }
            });
            // A fresh connection, if the client makes one.
            let (mut sock, _) = listener.accept().await.unwrap();
            assert!(sock.read(&mut buf).await.unwrap() > 0);
            sock.write_all(b"$3\r\nnew\r\n").await.unwrap();
            late.abort();
        });
        let target = RespTarget::open(vec![addr]).await.unwrap();
        let mut client = target.connect(0).await.unwrap();
        // The runner's timeout drops the request with its reply still due.
        let abandoned = tokio::time::timeout(Duration::from_millis(50), client.get(b"a")).await;
        assert!(abandoned.is_err());
        tokio::time::sleep(Duration::from_millis(400)).await;
        let v = client.get(b"b").await.unwrap();
        assert_eq!(v.as_deref(), Some(b"new".as_slice()));
        assert_eq!(client.retries().get("reconnect"), Some(&1));
        server.await.unwrap();
    }
}
