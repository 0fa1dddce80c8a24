//! The HTTP admin endpoint of a node: `/status` (JSON: the node, its
//! replicas and leaders, which peers are reachable), `/ranges` (JSON: every
//! range's descriptor and the leader this node knows of), `/metrics`
//! (Prometheus text format: store, WAL, transport and Redis protocol
//! counters), and
//! `POST /transfer-leader?range=R&to=N` (routed to the range's leader),
//! `POST /split?range=R&key=HEX` (splits range R at the key; answers the two
//! halves as `/ranges` rows), `POST /merge?range=R` (merges range R with
//! the range to its right; answers the merged range as a `/ranges` row), and
//! `POST /change-replicas?range=R&add=N,..&remove=N,..` (adds and removes
//! replicas in one membership change; answers the range as a `/ranges` row),
//! `GET /nodes` (JSON: every node, its address, whether this node reaches
//! it, whether it is draining, how many replicas it holds), and
//! `POST /drain?node=N` / `POST /undrain?node=N` (mark a node draining, or
//! not) and `POST /remove-node?node=N` (a drained, stopped node out of the
//! cluster for good); all three answer `/nodes`.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRef, Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde::Serialize;
use tokio::sync::watch;

use crate::db::Db;
use crate::raft::NodeId;
use crate::range::RangeId;
use crate::resp::RespStats;
use crate::store::StoreStats;

/// What `/status` answers.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Status {
    pub node_id: NodeId,
    pub peer_addr: String,
    pub replicas: usize,
    pub leaders: usize,
    pub quiesced: usize,
    pub ranges_led: Vec<RangeId>,
    pub peers: Vec<PeerStatus>,
    /// The meta range's replicas as this node knows them (they move like
    /// any range's).
    #[serde(default)]
    pub meta_replicas: Vec<NodeId>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct PeerStatus {
    pub id: NodeId,
    pub reachable: bool,
}

/// One row of `/ranges`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct RangeStatus {
    pub id: RangeId,
    /// Hex of the start key (empty: the beginning of the key space).
    pub start: String,
    /// Hex of the end key (empty: the end of the key space).
    pub end: String,
    pub replicas: Vec<NodeId>,
    pub epoch: u64,
    /// Version of the replica set (bumped by every membership change).
    #[serde(default)]
    pub conf_ver: u64,
    /// The leader this node knows of (only for ranges it holds a replica of).
    pub leader: Option<NodeId>,
}

/// One row of `/nodes`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct NodeRow {
    pub id: NodeId,
    /// Its peer address in the node registry (none before it registered).
    pub addr: Option<String>,
    /// Whether the node answering reaches it (itself: true).
    pub reachable: bool,
    /// `None` when the draining set could not be read.
    pub draining: Option<bool>,
    /// Replicas the range descriptors place on it (the meta range's too).
    pub replicas: usize,
}

/// What the handlers share.
#[derive(Clone)]
struct AdminState {
    db: Db,
    resp: Option<Arc<RespStats>>,
}

impl FromRef<AdminState> for Db {
    fn from_ref(s: &AdminState) -> Db {
        s.db.clone()
    }
}

/// Serves the admin endpoint until `shutdown` turns true. `resp`: the
/// counters of the node's Redis protocol server, if it runs one
/// ([`RespOptions::stats`](crate::resp::RespOptions::stats)), for `/metrics`.
pub async fn serve_admin(
    listener: tokio::net::TcpListener,
    db: Db,
    resp: Option<Arc<RespStats>>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/status", get(status))
        .route("/ranges", get(ranges))
        .route("/metrics", get(metrics))
        .route("/transfer-leader", post(transfer_leader))
        .route("/split", post(split))
        .route("/merge", post(merge))
        .route("/change-replicas", post(change_replicas))
        .route("/nodes", get(nodes))
        .route("/drain", post(drain))
        .route("/undrain", post(undrain))
        .route("/remove-node", post(remove_node))
        .with_state(AdminState { db, resp });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|&stop| stop).await;
        })
        .await
}

/// The node's status, as `/status` reports it.
pub async fn node_status(db: &Db) -> Option<Status> {
    let node = db.node();
    let peer_addr = node.addr().to_string();
    let id = node.id();
    let meta_replicas = db.meta_descriptor().replicas;
    node.handle()
        .inspect(move |store| {
            let stats = store.stats();
            let ranges_led: Vec<RangeId> = store
                .range_ids()
                .filter(|&r| store.replica_raft(r).is_some_and(|raft| raft.is_leader()))
                .collect();
            let peers = store
                .peer_ids()
                .map(|p| PeerStatus {
                    id: p,
                    reachable: store.peer_live(p),
                })
                .collect();
            Status {
                node_id: id,
                peer_addr,
                replicas: stats.replicas,
                leaders: stats.leaders,
                quiesced: stats.replicas - stats.awake,
                ranges_led,
                peers,
                meta_replicas,
            }
        })
        .await
}

async fn status(State(db): State<Db>) -> impl IntoResponse {
    match node_status(&db).await {
        Some(s) => axum::Json(s).into_response(),
        None => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "node is shutting down\n",
        )
            .into_response(),
    }
}

async fn ranges(State(db): State<Db>) -> impl IntoResponse {
    // Splits made through other nodes reach this one's table through the
    // meta range.
    if let Err(e) = db.refresh_routes().await {
        tracing::debug!(error = %e, "/ranges: route refresh failed; showing the cached table");
    }
    axum::Json(range_rows(&db, db.ranges()).await)
}

/// `/ranges` rows of `descs`, with the leaders this node knows of.
async fn range_rows(db: &Db, descs: Vec<crate::range::RangeDescriptor>) -> Vec<RangeStatus> {
    let ids: Vec<RangeId> = descs.iter().map(|d| d.id).collect();
    let leaders = db
        .node()
        .handle()
        .inspect(move |store| ids.iter().map(|&r| store.leader_of(r)).collect::<Vec<_>>())
        .await
        .unwrap_or_default();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let rows: Vec<RangeStatus> = descs
        .iter()
        .enumerate()
        .map(|(i, d)| RangeStatus {
            id: d.id,
            start: hex(&d.start),
            end: hex(&d.end),
            replicas: d.replicas.clone(),
            epoch: d.epoch,
            conf_ver: d.conf_ver,
            leader: leaders.get(i).copied().flatten(),
        })
        .collect();
    rows
}

/// Query of `POST /split`.
#[derive(Debug, serde::Deserialize)]
pub struct SplitQuery {
    pub range: RangeId,
    /// The split key in hex: the first key of the new range.
    pub key: String,
}

async fn split(State(db): State<Db>, Query(q): Query<SplitQuery>) -> axum::response::Response {
    use axum::http::StatusCode;
    let Some(key) = from_hex(&q.key) else {
        return (StatusCode::BAD_REQUEST, "key: not hex\n".to_string()).into_response();
    };
    match db.split_range(q.range, bytes::Bytes::from(key)).await {
        Ok((left, right)) => axum::Json(range_rows(&db, vec![left, right]).await).into_response(),
        Err(e @ crate::db::DbError::Invalid(_)) => {
            (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
        }
        Err(e) => (StatusCode::CONFLICT, format!("{e}\n")).into_response(),
    }
}

/// Query of `POST /merge`.
#[derive(Debug, serde::Deserialize)]
pub struct MergeQuery {
    /// The left-hand range: it takes over the range to its right.
    pub range: RangeId,
}

async fn merge(State(db): State<Db>, Query(q): Query<MergeQuery>) -> axum::response::Response {
    use axum::http::StatusCode;
    match db.merge_range(q.range).await {
        Ok(merged) => axum::Json(range_rows(&db, vec![merged]).await).into_response(),
        Err(e @ crate::db::DbError::Invalid(_)) => {
            (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
        }
        Err(e) => (StatusCode::CONFLICT, format!("{e}\n")).into_response(),
    }
}

/// Query of `POST /change-replicas`: comma-separated node ids, either list
/// may be empty or absent.
#[derive(Debug, serde::Deserialize)]
pub struct ChangeReplicasQuery {
    pub range: RangeId,
    #[serde(default)]
    pub add: String,
    #[serde(default)]
    pub remove: String,
}

/// Parses "1,2,3" (or "") into node ids.
fn node_list(s: &str) -> Option<Vec<NodeId>> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| p.trim().parse().ok())
        .collect()
}

async fn change_replicas(
    State(db): State<Db>,
    Query(q): Query<ChangeReplicasQuery>,
) -> axum::response::Response {
    use axum::http::StatusCode;
    let (Some(add), Some(remove)) = (node_list(&q.add), node_list(&q.remove)) else {
        let why = "add, remove: comma-separated node ids\n".to_string();
        return (StatusCode::BAD_REQUEST, why).into_response();
    };
    match db.change_replicas(q.range, &add, &remove).await {
        Ok(d) => axum::Json(range_rows(&db, vec![d]).await).into_response(),
        Err(e @ crate::db::DbError::Invalid(_)) => {
            (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
        }
        Err(e) => (StatusCode::CONFLICT, format!("{e}\n")).into_response(),
    }
}

/// Decodes lower- or upper-case hex; `None` if it is not hex.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    // `from_str_radix` alone would take a sign: "+f+f" is not hex.
    if s.len() % 2 != 0 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Query of `POST /transfer-leader`.
#[derive(Debug, serde::Deserialize)]
pub struct TransferQuery {
    pub range: RangeId,
    pub to: NodeId,
}

async fn transfer_leader(
    State(db): State<Db>,
    Query(q): Query<TransferQuery>,
) -> impl IntoResponse {
    match db.transfer_leader(q.range, q.to).await {
        Ok(()) => (axum::http::StatusCode::OK, "transfer started\n".to_string()),
        Err(e @ crate::db::DbError::Invalid(_)) => {
            (axum::http::StatusCode::BAD_REQUEST, format!("{e}\n"))
        }
        Err(e) => (axum::http::StatusCode::CONFLICT, format!("{e}\n")),
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let db = &state.db;
    let node = db.node();
    let stats = node.handle().stats().await.unwrap_or_default();
    let mut out = String::new();
    store_metrics(&mut out, &stats);
    db.latency().write_prometheus(&mut out);
    let p = db.placement_counters();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let rows = [
        (
            "tessera_placement_rounds_total",
            "Placement rounds this node ran (it led the meta range).",
            load(&p.rounds),
        ),
        (
            "tessera_placement_splits_total",
            "Ranges the placement driver split.",
            load(&p.splits),
        ),
        (
            "tessera_placement_merges_total",
            "Merges the placement driver made or completed.",
            load(&p.merges),
        ),
        (
            "tessera_placement_transfers_total",
            "Leaderships the placement driver moved.",
            load(&p.transfers),
        ),
        (
            "tessera_placement_replica_changes_total",
            "Replica changes the placement driver made (repairs and moves).",
            load(&p.replica_changes),
        ),
        (
            "tessera_placement_lost_nodes",
            "Nodes down longer than dead_after at the last placement round this node ran.",
            load(&p.lost_nodes),
        ),
        (
            "tessera_placement_failed_total",
            "Placement operators that failed (retried next round if still due).",
            load(&p.failed),
        ),
        (
            "tessera_placement_rounds_failed_total",
            "Placement rounds that ended early (the routing table was unreadable).",
            load(&p.rounds_failed),
        ),
        (
            "tessera_placement_stats_unread_total",
            "Ranges whose size and leader a placement round could not read.",
            load(&p.stats_unread),
        ),
    ];
    metric_rows(&mut out, &rows);
    if let Some(w) = node.wal_stats() {
        let rows: [(&str, &str, u64); 7] = [
            (
                "tessera_wal_syncs_total",
                "WAL syncs (fdatasync or msync).",
                w.syncs,
            ),
            ("tessera_wal_batches_total", "WAL write batches.", w.batches),
            (
                "tessera_wal_requests_total",
                "WAL requests (one per store write batch).",
                w.requests,
            ),
            (
                "tessera_wal_bytes_written_total",
                "Bytes written to WAL segments.",
                w.bytes_written,
            ),
            (
                "tessera_wal_bytes_rewritten_total",
                "Live bytes rewritten forward by compaction.",
                w.bytes_rewritten,
            ),
            (
                "tessera_wal_segments",
                "WAL segment files.",
                w.segments as u64,
            ),
            (
                "tessera_wal_disk_bytes",
                "Bytes of WAL segment files.",
                w.disk_bytes,
            ),
        ];
        metric_rows(&mut out, &rows);
    }
    if let Some(t) = node.transport_metrics() {
        let rows: [(&str, &str, u64); 6] = [
            (
                "tessera_transport_messages_sent_total",
                "Peer messages sent.",
                t.messages_sent,
            ),
            (
                "tessera_transport_messages_received_total",
                "Peer messages received.",
                t.messages_received,
            ),
            (
                "tessera_transport_messages_dropped_total",
                "Peer messages dropped (queue full or peer down).",
                t.messages_dropped,
            ),
            (
                "tessera_transport_bytes_sent_total",
                "Frame bytes sent to peers.",
                t.bytes_sent,
            ),
            (
                "tessera_transport_bytes_received_total",
                "Frame bytes received from peers.",
                t.bytes_received,
            ),
            (
                "tessera_transport_handshake_failures_total",
                "Inbound TLS handshakes refused.",
                t.handshake_failures,
            ),
        ];
        metric_rows(&mut out, &rows);
    }
    if let Some(resp) = &state.resp {
        resp_metrics(&mut out, resp);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

fn resp_metrics(out: &mut String, stats: &RespStats) {
    let s = stats.snapshot();
    let rows: [(&str, &str, u64); 5] = [
        (
            "tessera_resp_connections_accepted_total",
            "Redis protocol connections accepted (refused ones included).",
            s.connections_accepted,
        ),
        (
            "tessera_resp_connections_refused_total",
            "Redis protocol connections refused for max_connections.",
            s.connections_refused,
        ),
        (
            "tessera_resp_connections_open",
            "Redis protocol connections open.",
            s.connections_open,
        ),
        (
            "tessera_resp_accept_failures_total",
            "Redis protocol accept calls that failed (each retried after a pause).",
            s.accept_failures,
        ),
        (
            "tessera_resp_commands_total",
            "Redis protocol commands executed.",
            s.commands,
        ),
    ];
    metric_rows(out, &rows);
    let name = "tessera_resp_errors_total";
    let _ = writeln!(
        out,
        "# HELP {name} Redis protocol error replies, by kind.\n# TYPE {name} counter"
    );
    for (kind, v) in [
        ("protocol", s.errors_protocol),
        ("auth", s.errors_auth),
        ("unknown_command", s.errors_unknown_command),
        ("usage", s.errors_usage),
        ("store", s.errors_store),
        ("other", s.errors_other),
    ] {
        let _ = writeln!(out, "{name}{{kind=\"{kind}\"}} {v}");
    }
}

fn store_metrics(out: &mut String, s: &StoreStats) {
    let rows: [(&str, &str, u64); 18] = [
        (
            "tessera_replicas",
            "Replicas on this node.",
            s.replicas as u64,
        ),
        (
            "tessera_leaders",
            "Replicas on this node that lead their range.",
            s.leaders as u64,
        ),
        (
            "tessera_replicas_awake",
            "Replicas that tick (not quiesced).",
            s.awake as u64,
        ),
        (
            "tessera_proposals_total",
            "Writes proposed by leaders on this node.",
            s.proposals,
        ),
        (
            "tessera_applied_entries_total",
            "Log entries applied.",
            s.applied_entries,
        ),
        (
            "tessera_store_write_batches_total",
            "Write batches (one per loop iteration with writes).",
            s.write_batches,
        ),
        (
            "tessera_entries_written_total",
            "Log entries written to the WAL.",
            s.written_entries,
        ),
        (
            "tessera_quiesced_total",
            "Times a replica quiesced.",
            s.quiesced_total,
        ),
        (
            "tessera_woken_total",
            "Times a quiesced replica woke.",
            s.woken_total,
        ),
        (
            "tessera_snapshots_installed_total",
            "Snapshots installed from leaders.",
            s.snapshots_installed,
        ),
        (
            "tessera_rejected_batches_total",
            "Peer batches refused (unknown peer or wiped node).",
            s.rejected_batches,
        ),
        (
            "tessera_forwarded_total",
            "Requests forwarded to a leader on another node.",
            s.forwarded,
        ),
        (
            "tessera_forwards_abandoned_total",
            "Forwarded requests given up (no answer in time, or the leader's node down).",
            s.forwards_abandoned,
        ),
        (
            "tessera_forwards_served_total",
            "Requests other nodes forwarded here.",
            s.forwards_served,
        ),
        (
            "tessera_splits_applied_total",
            "Ranges this node created by applying a split.",
            s.splits_applied,
        ),
        (
            "tessera_merges_applied_total",
            "Replicas this node deleted because a merge took their range over.",
            s.merges_applied,
        ),
        (
            "tessera_replicas_removed_total",
            "Replicas this node deleted because a membership change took them out.",
            s.replicas_removed,
        ),
        (
            "tessera_uninitialized_replicas_total",
            "Empty replicas created for a range's messages (a split not applied here yet).",
            s.uninitialized_created,
        ),
    ];
    metric_rows(out, &rows);
}

/// [`metric`] for each (name, help, value) row.
fn metric_rows(out: &mut String, rows: &[(&str, &str, u64)]) {
    for &(name, help, value) in rows {
        metric(out, name, help, value);
    }
}

fn metric(out: &mut String, name: &str, help: &str, value: u64) {
    let kind = if name.ends_with("_total") {
        "counter"
    } else {
        "gauge"
    };
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

#[cfg(test)]
mod tests {
    use super::from_hex;

    #[test]
    fn hex_is_only_hex_digits() {
        assert_eq!(from_hex("00fFa1"), Some(vec![0x00, 0xff, 0xa1]));
        assert_eq!(from_hex(""), Some(vec![]));
        for bad in ["+f+f", "-1", "0", "zz", "0x", " 1", "é1"] {
            assert_eq!(from_hex(bad), None, "{bad:?}");
        }
    }
}

/// Every node: those this node knows, those registered, and those a range
/// names.
pub async fn node_rows(db: &Db) -> Result<Vec<NodeRow>, crate::db::DbError> {
    if let Err(e) = db.refresh_routes().await {
        tracing::debug!(error = %e, "/nodes: route refresh failed; using the cached table");
    }
    let registry = db.registered_nodes().await?;
    // The rest of the page is worth having without it.
    let draining = db.draining_nodes().await.ok();
    let removed = db.removed_nodes_stale().await.unwrap_or_default();
    let mut descs = db.ranges();
    descs.push(db.meta_descriptor());
    let mut replicas: std::collections::BTreeMap<NodeId, usize> = Default::default();
    for d in &descs {
        for &n in &d.replicas {
            *replicas.entry(n).or_default() += 1;
        }
    }
    let me = db.node().id();
    let known = db.known_nodes().await;
    let ids: std::collections::BTreeSet<NodeId> = known
        .iter()
        .copied()
        .chain(registry.keys().copied())
        .chain(replicas.keys().copied())
        .chain(draining.iter().flatten().copied())
        .filter(|n| !removed.contains(n))
        .collect();
    let reachable = db
        .node()
        .handle()
        .inspect({
            let ids = ids.clone();
            move |s| {
                ids.iter()
                    .map(|&n| (n, n == me || s.peer_live(n)))
                    .collect::<std::collections::BTreeMap<_, _>>()
            }
        })
        .await
        .unwrap_or_default();
    Ok(ids
        .into_iter()
        .map(|id| NodeRow {
            id,
            addr: registry.get(&id).map(|a| a.to_string()),
            reachable: reachable.get(&id).copied().unwrap_or(false),
            draining: draining.as_ref().map(|d| d.contains(&id)),
            replicas: replicas.get(&id).copied().unwrap_or(0),
        })
        .collect())
}

/// An error of a `Db` call as an HTTP answer: a bad request for what the
/// caller asked wrongly, unavailable for what timed out or found no one to
/// ask, a conflict for the rest.
fn db_error(e: crate::db::DbError) -> axum::response::Response {
    use crate::db::DbError;
    use axum::http::StatusCode;
    let status = match e {
        DbError::Invalid(_) => StatusCode::BAD_REQUEST,
        DbError::Timeout { .. } | DbError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::CONFLICT,
    };
    (status, format!("{e}\n")).into_response()
}

async fn nodes(State(db): State<Db>) -> axum::response::Response {
    match node_rows(&db).await {
        Ok(rows) => axum::Json(rows).into_response(),
        Err(e) => db_error(e),
    }
}

/// Query of `POST /drain` and `POST /undrain`.
#[derive(Debug, serde::Deserialize)]
pub struct NodeQuery {
    pub node: NodeId,
}

async fn drain(State(db): State<Db>, Query(q): Query<NodeQuery>) -> axum::response::Response {
    match db.drain_node(q.node).await {
        Ok(()) => done_with_nodes(&db, format!("node {} is draining", q.node)).await,
        Err(e) => db_error(e),
    }
}

async fn undrain(State(db): State<Db>, Query(q): Query<NodeQuery>) -> axum::response::Response {
    match db.undrain_node(q.node).await {
        Ok(()) => done_with_nodes(&db, format!("node {} is not draining", q.node)).await,
        Err(e) => db_error(e),
    }
}

async fn remove_node(State(db): State<Db>, Query(q): Query<NodeQuery>) -> axum::response::Response {
    match db.remove_node(q.node).await {
        Ok(()) => done_with_nodes(&db, format!("node {} is removed", q.node)).await,
        Err(e) => db_error(e),
    }
}

/// The answer to a change that was made: `/nodes`, or, if that cannot be
/// read now, what was done (never an error: the change stands).
async fn done_with_nodes(db: &Db, done: String) -> axum::response::Response {
    match node_rows(db).await {
        Ok(rows) => axum::Json(rows).into_response(),
        Err(e) => format!("{done} (the node list could not be read: {e})\n").into_response(),
    }
}
