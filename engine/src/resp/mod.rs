//! The Redis protocol (RESP2) front end: any Redis client talks to a [`Db`].
//!
//! [`serve`] accepts connections on a listener and runs one task per
//! connection. Each connection reads what the client sent, executes the
//! complete requests, and writes all the replies in one flush, in request
//! order. A pipeline's plain writes (SET, MSET) are written as one batch per
//! range and its reads are served at once, with the replies in-order
//! execution gives (see [`pipeline`]); everything else runs one at a time. Malformed input is answered
//! `-ERR Protocol error: ...` and that connection is closed; the others go on.
//!
//! ```no_run
//! # async fn run(db: tessera_engine::Db) -> std::io::Result<()> {
//! use tessera_engine::resp::{RespOptions, serve};
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:6379").await?;
//! let (stop, stopped) = tokio::sync::watch::channel(false);
//! let opts = RespOptions { shutdown: Some(stopped), ..RespOptions::default() };
//! let stats = opts.stats.clone(); // counters, readable while it runs
//! let server = tokio::spawn(serve(listener, db, opts));
//! // ... later:
//! stop.send(true).ok();
//! server.await.expect("server task")?;
//! # Ok(()) }
//! ```
//!
//! It is: the string commands of Redis (GET, SET with NX/XX/GET, DEL,
//! EXISTS, MGET, MSET, INCR family, SETNX, STRLEN, APPEND, GETSET), SCAN,
//! DBSIZE and the connection commands clients and tools send (PING, ECHO,
//! HELLO 2, AUTH, SELECT 0, CLIENT, COMMAND, INFO, CONFIG GET, QUIT).
//!
//! It is not: RESP3, expiry (EX/PX are refused), other data types, multiple
//! databases, MULTI/EXEC, pub/sub, cluster redirections (any node serves any
//! key: the `Db` forwards to the range's leader). MSET is atomic only when all
//! its keys are in one range; otherwise it is refused and writes nothing.
//! DEL of several keys deletes them one by one (not atomically).
//!
//! Files: `request.rs` (splitting the byte stream into requests),
//! `reply.rs` (RESP2 replies), `connection.rs` (one client), `pipeline.rs`
//! (which requests of a pipeline run together, and how), `commands.rs` (the
//! command table and each command), `scan.rs` (SCAN cursors and glob).

mod commands;
mod connection;
pub mod pipeline;
pub mod reply;
pub mod request;
pub mod scan;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::Db;

pub use commands::COMMANDS;
pub use reply::Reply;
pub use request::{ProtocolError, RequestDecoder};

/// The version INFO and HELLO report.
pub const REDIS_VERSION: &str = "7.0.0-tessera-compatible";

/// Options of [`serve`].
#[derive(Clone, Debug)]
pub struct RespOptions {
    /// When set, a client must `AUTH` (or `HELLO 2 AUTH default <pw>`) before
    /// any command but AUTH, HELLO and QUIT. Default none.
    pub password: Option<String>,
    /// Largest request on the wire (all of a command's arguments); a larger
    /// one is a protocol error. Default 16 MiB: a write holds at most 4 MiB
    /// (`StoreConfig::proposal_bytes_max`; a larger one below this is refused
    /// with that reason), and each connection may buffer a whole request, so
    /// Redis's 512 MiB would let 10,000 clients claim terabytes.
    pub max_request_bytes: usize,
    /// Connections open at once; one more is answered
    /// `-ERR max number of clients reached` and closed. Default 10,000, as Redis.
    pub max_connections: usize,
    /// Largest COUNT a SCAN may ask for (larger ones are lowered). Default 100,000.
    pub scan_count_max: usize,
    /// When it becomes `true` (or its sender is dropped), the server stops
    /// accepting, each connection finishes the requests it has read and
    /// closes, and [`serve`] returns. Default none: serve for ever.
    pub shutdown: Option<watch::Receiver<bool>>,
    /// How long connections get to finish after shutdown is asked for; then
    /// those still open (a client that stopped reading its replies, say)
    /// are closed. Default 5 s.
    pub shutdown_grace: std::time::Duration,
    /// Counters, shared with whoever holds a clone.
    pub stats: Arc<RespStats>,
}

impl Default for RespOptions {
    fn default() -> Self {
        RespOptions {
            password: None,
            max_request_bytes: 16 << 20,
            max_connections: 10_000,
            scan_count_max: 100_000,
            shutdown: None,
            shutdown_grace: std::time::Duration::from_secs(5),
            stats: Arc::new(RespStats::default()),
        }
    }
}

impl RespOptions {
    /// Refuses options that cannot work, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_request_bytes < 1024 {
            return Err("max_request_bytes must be at least 1024".into());
        }
        if self.max_connections == 0 {
            return Err("max_connections must be at least 1".into());
        }
        if self.scan_count_max == 0 {
            return Err("scan_count_max must be at least 1".into());
        }
        if self.password.as_deref() == Some("") {
            return Err("password must not be empty (use none for no password)".into());
        }
        Ok(())
    }
}

/// Counters of a [`serve`]; all monotonic but `connections_open`.
#[derive(Debug, Default)]
pub struct RespStats {
    pub connections_accepted: AtomicU64,
    /// Refused for `max_connections`.
    pub connections_refused: AtomicU64,
    pub connections_open: AtomicU64,
    /// `accept` calls that failed (each is retried after a pause).
    pub accept_failures: AtomicU64,
    pub commands: AtomicU64,
    /// Malformed input (the connection was closed).
    pub errors_protocol: AtomicU64,
    /// NOAUTH and WRONGPASS.
    pub errors_auth: AtomicU64,
    pub errors_unknown_command: AtomicU64,
    /// Wrong number of arguments, syntax errors, bad integers.
    pub errors_usage: AtomicU64,
    /// Errors from the store: timeouts, unknown outcomes, unavailable ranges.
    pub errors_store: AtomicU64,
    /// Other error replies (NotAnInteger, Overflow, cross-range MSET...).
    pub errors_other: AtomicU64,
}

/// A plain copy of [`RespStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RespStatsSnapshot {
    pub connections_accepted: u64,
    pub connections_refused: u64,
    pub connections_open: u64,
    pub accept_failures: u64,
    pub commands: u64,
    pub errors_protocol: u64,
    pub errors_auth: u64,
    pub errors_unknown_command: u64,
    pub errors_usage: u64,
    pub errors_store: u64,
    pub errors_other: u64,
}

impl RespStats {
    pub fn snapshot(&self) -> RespStatsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RespStatsSnapshot {
            connections_accepted: l(&self.connections_accepted),
            connections_refused: l(&self.connections_refused),
            connections_open: l(&self.connections_open),
            accept_failures: l(&self.accept_failures),
            commands: l(&self.commands),
            errors_protocol: l(&self.errors_protocol),
            errors_auth: l(&self.errors_auth),
            errors_unknown_command: l(&self.errors_unknown_command),
            errors_usage: l(&self.errors_usage),
            errors_store: l(&self.errors_store),
            errors_other: l(&self.errors_other),
        }
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What every connection of a server shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub db: Db,
    pub opts: RespOptions,
    pub cursors: scan::Cursors,
    pub started: Instant,
    pub next_client_id: AtomicU64,
    pub port: u16,
}

/// Serves the Redis protocol on `listener` until `opts.shutdown` fires; then
/// returns `Ok` once every connection has closed (or been closed after
/// `opts.shutdown_grace`). Bad options are an error at once. A failed
/// `accept` is logged and tried again after a pause (growing to a second):
/// accept(2) errors are about one connection or a passing shortage (of file
/// descriptors, of buffers, a firewall's refusal), and a server that gave up
/// on them would leave its node running with no client port.
pub async fn serve(listener: TcpListener, db: Db, opts: RespOptions) -> std::io::Result<()> {
    opts.validate()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut shutdown = opts.shutdown.clone();
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let shared = Arc::new(Shared {
        db,
        opts,
        cursors: scan::Cursors::default(),
        started: Instant::now(),
        next_client_id: AtomicU64::new(1),
        port,
    });
    let stats = shared.opts.stats.clone();
    let mut tasks = JoinSet::new();
    let mut pause = ACCEPT_PAUSE_MIN;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = stopped(&mut shutdown) => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                pause = ACCEPT_PAUSE_MIN;
                a
            }
            Err(e) => {
                RespStats::bump(&stats.accept_failures);
                tracing::warn!(error = %e, retry_in = ?pause, "resp: accept failed");
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = stopped(&mut shutdown) => break,
                }
                pause = (pause * 2).min(ACCEPT_PAUSE_MAX);
                continue;
            }
        };
        RespStats::bump(&stats.connections_accepted);
        let open = stats.connections_open.load(Ordering::Relaxed) as usize;
        if open >= shared.opts.max_connections {
            RespStats::bump(&stats.connections_refused);
            tasks.spawn(connection::refuse(stream));
            continue;
        }
        stats.connections_open.fetch_add(1, Ordering::Relaxed);
        // Counted down however the task ends: aborted at the grace's end,
        // even before its first poll, too.
        let open = OpenConnection(stats.clone());
        let shared = shared.clone();
        let shutdown = shared.opts.shutdown.clone();
        tasks.spawn(async move {
            let _open = open;
            let _ = stream.set_nodelay(true);
            if let Err(e) = connection::run(stream, &shared, shutdown).await {
                tracing::debug!(%peer, error = %e, "resp: connection ended with an error");
            }
        });
    }
    drop(listener);
    let grace = shared.opts.shutdown_grace;
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            open = tasks.len(),
            ?grace,
            "resp: closing connections still open after the shutdown grace"
        );
        tasks.shutdown().await;
    }
    Ok(())
}

/// Pauses after a failed `accept`: from 20 ms, doubling up to 1 s.
const ACCEPT_PAUSE_MIN: std::time::Duration = std::time::Duration::from_millis(20);
const ACCEPT_PAUSE_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// Counts an open connection down when its task ends.
struct OpenConnection(Arc<RespStats>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Resolves once shutdown is asked for (never without a receiver).
pub(crate) async fn stopped(shutdown: &mut Option<watch::Receiver<bool>>) {
    match shutdown {
        Some(rx) => {
            // A dropped sender counts as a shutdown.
            let _ = rx.wait_for(|&stop| stop).await;
        }
        None => std::future::pending().await,
    }
}
