//! `tessera`: make a local cluster's files, run a node, look at a cluster.
//!
//!     tessera init --nodes 3 --dir cluster
//!     tessera serve --config cluster/node1.toml
//!     tessera ctl --admin 127.0.0.1:8101 status
//!     tessera add-node --dir cluster        # node 4 joins the running cluster
//!     tessera ctl --admin 127.0.0.1:8101 drain 4

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tessera_engine::admin::{NodeRow, RangeStatus, Status};
use tessera_engine::config::{NodeFile, PeerEntry, TlsFiles};
use tessera_engine::{Db, DbOptions, Node};

#[derive(Parser, Debug)]
#[command(
    name = "tessera",
    version,
    about = "Tessera: a multi-raft key-value store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Writes a local cluster: a CA, a certificate and key per node, and one
    /// config file per node with free ports on 127.0.0.1.
    Init {
        /// Nodes in the cluster.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Directory for the files (created; must not hold a cluster already).
        #[arg(long)]
        dir: PathBuf,
        /// User ranges the cluster starts with.
        #[arg(long, default_value_t = 64)]
        initial_ranges: u32,
        /// Password clients must AUTH with.
        #[arg(long)]
        password: Option<String>,
    },
    /// Adds a node to a cluster `init` made in DIR: a certificate from the
    /// cluster's CA (`ca.key`), free ports on 127.0.0.1, and a config that
    /// joins the running cluster through the nodes already there. Start it
    /// with `serve`; the placement driver moves replicas to it.
    AddNode {
        /// The directory `init` wrote.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Runs a node.
    Serve {
        /// The node's config file (see `tessera init`).
        #[arg(long)]
        config: PathBuf,
    },
    /// Shows a running cluster through a node's admin endpoint.
    Ctl {
        /// The node's admin address (`admin_addr` in its config).
        #[arg(long)]
        admin: SocketAddr,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        what: CtlCommand,
    },
}

#[derive(Subcommand, Debug)]
enum CtlCommand {
    /// The node: replicas, leaders, which peers it reaches.
    Status,
    /// Every range: span, replicas, the leader the node knows of.
    Ranges,
    /// Moves a range's leadership to a node holding one of its replicas.
    TransferLeader {
        /// The range id (see `ranges`).
        range: u64,
        /// The node to lead it.
        node: u64,
    },
    /// Moves a range's replica from one node to another (one membership
    /// change: the new replica catches up from a snapshot, the old one
    /// deletes its data). Prints the range.
    MoveReplica {
        /// The range id (see `ranges`).
        range: u64,
        /// The node whose replica goes.
        from: u64,
        /// The node that gets one.
        to: u64,
    },
    /// Adds and removes replicas of a range in one membership change
    /// (comma-separated node ids). Prints the range.
    ChangeReplicas {
        /// The range id (see `ranges`).
        range: u64,
        /// Nodes to add a replica on.
        #[arg(long, value_delimiter = ',')]
        add: Vec<u64>,
        /// Nodes whose replica goes.
        #[arg(long, value_delimiter = ',')]
        remove: Vec<u64>,
    },
    /// Splits a range in two at KEY: the range keeps the keys below KEY, a
    /// new range takes KEY and above. Prints the two halves.
    Split {
        /// The range id (see `ranges`).
        range: u64,
        /// The first key of the new range (raw bytes; hex with --hex).
        key: String,
        /// KEY is hex (e.g. 8000 for the two bytes 0x80 0x00).
        #[arg(long)]
        hex: bool,
    },
    /// Merges a range with the range to its right (which goes away; its
    /// replicas move to the range's nodes first if they are elsewhere).
    /// Prints the merged range.
    Merge {
        /// The left-hand range's id (see `ranges`).
        range: u64,
    },
    /// Every node: its address, whether this node reaches it, whether it is
    /// draining, how many replicas it holds.
    Nodes,
    /// Drains a node: the placement driver hands its leaderships on and
    /// moves every replica off it, and gives it none back. Stop the node once
    /// it holds none (see `nodes`). Prints the nodes.
    Drain {
        /// The node's id.
        node: u64,
    },
    /// Stops draining a node: it takes replicas and leaderships again.
    Undrain {
        /// The node's id.
        node: u64,
    },
    /// Removes a drained node for good, once it holds no replica and is
    /// stopped: no node counts it as a peer any more, its batches are
    /// refused, its id is never used again. Prints the nodes.
    RemoveNode {
        /// The node's id.
        node: u64,
    },
}

/// mimalloc: the store's many small allocations (entries, messages, keys)
/// made the system allocator about a tenth of the CPU; see bench/README.md.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Init {
            nodes,
            dir,
            initial_ranges,
            password,
        } => init(nodes, &dir, initial_ranges, password),
        Command::AddNode { dir } => add_node(&dir),
        Command::Serve { config } => serve(&config),
        Command::Ctl { admin, json, what } => {
            die_quietly_on_closed_stdout();
            ctl(admin, json, what)
        }
    }
}

/// `tessera ctl ... | head` must end quietly when `head` closes the pipe, as
/// other command-line tools do: Rust ignores SIGPIPE, which turns the next
/// print into a panic. Only for the short-lived commands that print; `serve`
/// keeps ignoring it (a client closing its socket must not kill the node).
fn die_quietly_on_closed_stdout() {
    // SAFETY: restoring a signal's default disposition at startup, before any
    // thread is spawned, has no memory-safety preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

// ----- init -----

/// Free ports on 127.0.0.1, all different: each socket is held until every
/// port is chosen (released one at a time, the kernel could hand the same
/// port out twice, and two nodes' addresses would collide).
#[derive(Default)]
struct FreePorts {
    tcp: Vec<TcpListener>,
    udp: Vec<UdpSocket>,
}

impl FreePorts {
    fn tcp(&mut self) -> Result<u16> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        self.tcp.push(l);
        Ok(port)
    }

    fn udp(&mut self) -> Result<u16> {
        let s = UdpSocket::bind("127.0.0.1:0")?;
        let port = s.local_addr()?.port();
        self.udp.push(s);
        Ok(port)
    }
}

/// A node's three addresses: peers (UDP), clients and admin (TCP).
struct NodeAddrs {
    peer: SocketAddr,
    client: SocketAddr,
    admin: SocketAddr,
}

impl FreePorts {
    /// Three free ports, none of them in `taken` (ports of nodes that are
    /// stopped now, whose sockets the kernel would hand out).
    fn node(&mut self, taken: &std::collections::BTreeSet<u16>) -> Result<NodeAddrs> {
        let mut pick = |udp: bool| -> Result<SocketAddr> {
            loop {
                let port = if udp { self.udp()? } else { self.tcp()? };
                if !taken.contains(&port) {
                    return Ok(format!("127.0.0.1:{port}").parse()?);
                }
            }
        };
        Ok(NodeAddrs {
            peer: pick(true)?,
            client: pick(false)?,
            admin: pick(false)?,
        })
    }
}

/// The file in a cluster's directory holding the next node id to give:
/// ids are never given twice, even after a node's files were deleted (its
/// peers would refuse a new node under its id).
const NEXT_NODE_ID_FILE: &str = "next-node-id";

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, pem: &str) -> Result<()> {
    std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// Writes node `id`'s certificate, key and config file into `dir`.
fn write_node(
    dir: &Path,
    identity: &tessera_transport::NodeIdentity,
    addrs: &NodeAddrs,
    mut file: NodeFile,
) -> Result<()> {
    let id = file.node_id;
    let pem = identity.to_pem();
    std::fs::write(dir.join(format!("node{id}.pem")), &pem.cert)?;
    write_private(&dir.join(format!("node{id}.key")), &pem.key)?;
    file.data_dir = PathBuf::from(format!("node{id}"));
    file.peer_addr = addrs.peer;
    file.client_addr = addrs.client;
    file.admin_addr = addrs.admin;
    file.tls = Some(TlsFiles {
        ca_cert: "ca.pem".into(),
        cert: format!("node{id}.pem").into(),
        key: format!("node{id}.key").into(),
    });
    file.validate()?;
    let path = dir.join(format!("node{id}.toml"));
    std::fs::write(&path, toml::to_string(&file)?)?;
    println!(
        "node {id}: config {}  redis {}  admin {}",
        path.display(),
        addrs.client,
        addrs.admin
    );
    Ok(())
}

fn init(nodes: u64, dir: &Path, initial_ranges: u32, password: Option<String>) -> Result<()> {
    if nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    if dir.join("node1.toml").exists() {
        bail!(
            "{} already holds a cluster (node1.toml exists)",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ids: Vec<tessera_transport::NodeId> = (1..=nodes).map(tessera_transport::NodeId).collect();
    let (ca, identities) =
        tessera_transport::bootstrap_cluster(&ids).context("making the cluster's certificates")?;
    std::fs::write(dir.join("ca.pem"), ca.cert_pem())?;
    // Kept to issue the certificates of nodes added later (`add-node`).
    write_private(&dir.join("ca.key"), &ca.key_pem())?;
    let mut ports = FreePorts::default();
    let addrs = (0..nodes)
        .map(|_| ports.node(&Default::default()))
        .collect::<Result<Vec<_>>>()?;
    drop(ports);
    std::fs::write(dir.join(NEXT_NODE_ID_FILE), format!("{}\n", nodes + 1))?;
    for (i, identity) in identities.iter().enumerate() {
        let id = i as u64 + 1;
        let peers = (0..addrs.len())
            .filter(|&j| j != i)
            .map(|j| PeerEntry {
                id: j as u64 + 1,
                addr: addrs[j].peer,
            })
            .collect();
        let file = NodeFile {
            node_id: id,
            data_dir: PathBuf::new(),
            peer_addr: addrs[i].peer,
            client_addr: addrs[i].client,
            admin_addr: addrs[i].admin,
            peers,
            join: false,
            tls: None,
            initial_ranges,
            tick_ms: 100,
            election_ticks: 10,
            password: password.clone(),
            wal_sync: true,
            log: "info".into(),
            // The default, though these nodes talk over loopback: the bench
            // harness and redis-benchmark figures are measured with it.
            peer_mtu_max: tessera_transport::TransportConfig::default().mtu_upper_bound_bytes,
            placement: Default::default(),
        };
        write_node(dir, identity, &addrs[i], file)?;
    }
    Ok(())
}

fn add_node(dir: &Path) -> Result<()> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    let ca_key = read("ca.key").context(
        "the cluster CA's key is needed to admit a node (`tessera init` keeps it as ca.key)",
    )?;
    let ca = tessera_transport::ClusterCa::from_pem(&read("ca.pem")?, &ca_key)
        .context("loading the cluster CA")?;
    // The nodes already there: node<N>.toml.
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        let is_node = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("node")?.strip_suffix(".toml"))
            .is_some_and(|n| n.parse::<u64>().is_ok());
        if is_node {
            files.push(NodeFile::load(&path).with_context(|| format!("{}", path.display()))?);
        }
    }
    files.sort_by_key(|f| f.node_id);
    let Some(first) = files.first().cloned() else {
        bail!(
            "{} holds no node<N>.toml: make the cluster with `tessera init`",
            dir.display()
        );
    };
    let next_path = dir.join(NEXT_NODE_ID_FILE);
    let recorded: u64 = match std::fs::read_to_string(&next_path) {
        Ok(text) => text
            .trim()
            .parse()
            .with_context(|| format!("{}: not a node id", next_path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e).with_context(|| format!("reading {}", next_path.display())),
    };
    let seen = files
        .iter()
        .flat_map(|f| std::iter::once(f.node_id).chain(f.peers.iter().map(|p| p.id)))
        .max()
        .unwrap_or(0);
    let id = recorded.max(seen + 1);
    let identity = ca
        .issue(tessera_transport::NodeId(id))
        .context("issuing the node's certificate")?;
    let taken = files
        .iter()
        .flat_map(|f| [f.peer_addr, f.client_addr, f.admin_addr])
        .map(|a| a.port())
        .collect();
    let addrs = FreePorts::default().node(&taken)?;
    // Before the node's files: an id is never given twice.
    std::fs::write(&next_path, format!("{}\n", id + 1))?;
    let file = NodeFile {
        node_id: id,
        peers: files
            .iter()
            .map(|f| PeerEntry {
                id: f.node_id,
                addr: f.peer_addr,
            })
            .collect(),
        join: true,
        // The cluster's settings, as its first node has them.
        ..first
    };
    write_node(dir, &identity, &addrs, file)
}

// ----- serve -----

fn serve(config: &Path) -> Result<()> {
    let file = NodeFile::load(config)?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&file.log));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_node(file))
}

async fn run_node(file: NodeFile) -> Result<()> {
    let cfg = file.node_config()?;
    // Binding peer_addr is the likeliest failure here (in use): name it.
    let node = Node::start(cfg)
        .await
        .with_context(|| format!("starting the node (peer_addr {})", file.peer_addr))?;
    tracing::info!(node = file.node_id, peer_addr = %node.addr(), "node started; waiting for the cluster");
    let db = Db::on_node(
        node,
        &file.cluster_nodes(),
        file.initial_ranges,
        DbOptions::default(),
    )
    .await
    .context("reading the range descriptors (is a majority of the meta range's nodes up?)")?;
    if file.placement.enabled {
        db.start_placement(file.placement.config());
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let admin = tokio::net::TcpListener::bind(file.admin_addr)
        .await
        .with_context(|| format!("admin_addr {}", file.admin_addr))?;
    let clients = tokio::net::TcpListener::bind(file.client_addr)
        .await
        .with_context(|| format!("client_addr {}", file.client_addr))?;
    let resp_opts = tessera_engine::resp::RespOptions {
        password: file.password.clone(),
        shutdown: Some(stop_rx.clone()),
        ..Default::default()
    };
    let admin_task = tokio::spawn(tessera_engine::admin::serve_admin(
        admin,
        db.clone(),
        Some(resp_opts.stats.clone()),
        stop_rx.clone(),
    ));
    let mut resp_task = tokio::spawn(tessera_engine::resp::serve(clients, db.clone(), resp_opts));
    tracing::info!(redis = %file.client_addr, admin = %file.admin_addr, "serving");
    // The servers run until a signal; one that ends before is a failure
    // (a node without its client port must not look healthy).
    let node = db.node().clone();
    let failed = tokio::select! {
        () = wait_for_signal() => None,
        r = &mut resp_task => Some(format!("the Redis protocol server stopped: {}", ended(r))),
        why = node.failed() => Some(format!("the node's storage failed: {why}")),
    };
    if let Some(why) = &failed {
        tracing::error!("{why}; shutting down");
    } else {
        tracing::info!("shutting down: no new connections; answering what was read");
    }
    // A second signal while shutting down stops the process at once.
    tokio::spawn(async {
        wait_for_signal().await;
        tracing::warn!("second signal: exiting without a clean shutdown");
        std::process::exit(130);
    });
    let _ = stop_tx.send(true);
    if failed.is_none() {
        let _ = resp_task.await;
    }
    if tokio::time::timeout(Duration::from_secs(10), admin_task)
        .await
        .is_err()
    {
        tracing::warn!("the admin endpoint did not stop within 10 s; going on");
    }
    db.shutdown().await;
    match failed {
        Some(why) => Err(anyhow::anyhow!(why)),
        None => Ok(()),
    }
}

/// What a server task's end says.
fn ended(r: Result<std::io::Result<()>, tokio::task::JoinError>) -> String {
    match r {
        Ok(Ok(())) => "it returned".into(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

// ----- ctl -----

/// GET `path` from the admin endpoint; the body.
fn http_get(admin: SocketAddr, path: &str) -> Result<String> {
    http(admin, "GET", path)
}

/// One HTTP/1.1 request to the admin endpoint; the body of a 200 answer.
fn http(admin: SocketAddr, method: &str, path: &str) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(3))
        .with_context(|| format!("cannot reach the admin endpoint at {admin}"))?;
    // Longer than the node's own request deadline (10 s), so that a slow
    // answer (a split's steps, routes reloaded from an unhealthy meta
    // range) arrives instead of a read timeout.
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200 ") {
        bail!("{admin}{path}: {status}: {}", body.trim());
    }
    Ok(body.to_string())
}

fn ctl(admin: SocketAddr, json: bool, what: CtlCommand) -> Result<()> {
    match what {
        CtlCommand::Status => {
            let body = http_get(admin, "/status")?;
            if json {
                println!("{body}");
                return Ok(());
            }
            let s: Status = serde_json::from_str(&body).context("decoding /status")?;
            println!("node        {}", s.node_id);
            println!("peer addr   {}", s.peer_addr);
            println!("replicas    {} ({} quiesced)", s.replicas, s.quiesced);
            println!("leaders     {}", s.leaders);
            let meta: Vec<String> = s.meta_replicas.iter().map(|n| n.to_string()).collect();
            println!("meta range  on nodes {}", meta.join(","));
            for p in &s.peers {
                println!(
                    "peer {:<6} {}",
                    p.id,
                    if p.reachable {
                        "reachable"
                    } else {
                        "UNREACHABLE"
                    }
                );
            }
        }
        CtlCommand::TransferLeader { range, node } => {
            http(
                admin,
                "POST",
                &format!("/transfer-leader?range={range}&to={node}"),
            )?;
            // Wait until this node sees the new leader. It sees the leaders
            // of the ranges it holds a replica of only (and `/ranges` does
            // not list the meta range): for others the transfer is
            // reported started, not confirmed.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let rows: Vec<RangeStatus> = serde_json::from_str(&http_get(admin, "/ranges")?)?;
                let row = rows.iter().find(|r| r.id == range);
                let leader = row.and_then(|r| r.leader);
                let done = leader == Some(node);
                // Not listed (the meta range): nothing to wait for here.
                if done || row.is_none() || std::time::Instant::now() > deadline {
                    if let Some(l) = leader.filter(|&l| l != node) {
                        bail!("range {range}: leader is node {l} after 10 s, not {node}");
                    }
                    if json {
                        let leader = if done {
                            node.to_string()
                        } else {
                            "null".into()
                        };
                        println!("{{\"range\":{range},\"leader\":{leader},\"confirmed\":{done}}}");
                    } else if done {
                        println!("range {range} is now led by node {node}");
                    } else {
                        println!(
                            "range {range}: transfer to node {node} started, not confirmed: this \
                             node sees no leader of the range (it may hold no replica of it)"
                        );
                    }
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        CtlCommand::MoveReplica { range, from, to } => {
            change_replicas(admin, json, range, &[to], &[from])?;
        }
        CtlCommand::ChangeReplicas { range, add, remove } => {
            if add.is_empty() && remove.is_empty() {
                bail!("nothing to change: give --add and/or --remove");
            }
            change_replicas(admin, json, range, &add, &remove)?;
        }
        CtlCommand::Split { range, key, hex } => {
            let key_hex = if hex {
                if tessera_engine::admin::from_hex(&key).is_none() {
                    bail!("KEY {key:?} is not hex (two digits per byte)");
                }
                key.to_ascii_lowercase()
            } else {
                key.bytes().map(|b| format!("{b:02x}")).collect()
            };
            if key_hex.is_empty() {
                bail!("KEY must not be empty (the empty key starts the key space)");
            }
            let body = http(
                admin,
                "POST",
                &format!("/split?range={range}&key={key_hex}"),
            )?;
            if json {
                println!("{body}");
                return Ok(());
            }
            let rows: Vec<RangeStatus> = serde_json::from_str(&body).context("decoding /split")?;
            print_range_rows(rows);
        }
        CtlCommand::Merge { range } => {
            let body = http(admin, "POST", &format!("/merge?range={range}"))?;
            if json {
                println!("{body}");
                return Ok(());
            }
            let rows: Vec<RangeStatus> = serde_json::from_str(&body).context("decoding /merge")?;
            print_range_rows(rows);
        }
        CtlCommand::Nodes => print_nodes(http_get(admin, "/nodes")?, json)?,
        CtlCommand::Drain { node } => {
            print_nodes(http(admin, "POST", &format!("/drain?node={node}"))?, json)?
        }
        CtlCommand::Undrain { node } => {
            print_nodes(http(admin, "POST", &format!("/undrain?node={node}"))?, json)?
        }
        CtlCommand::RemoveNode { node } => print_nodes(
            http(admin, "POST", &format!("/remove-node?node={node}"))?,
            json,
        )?,
        CtlCommand::Ranges => {
            let body = http_get(admin, "/ranges")?;
            if json {
                println!("{body}");
                return Ok(());
            }
            let rows: Vec<RangeStatus> = serde_json::from_str(&body).context("decoding /ranges")?;
            print_range_rows(rows);
        }
    }
    Ok(())
}

/// `POST /change-replicas` and prints the range it answers.
fn change_replicas(
    admin: SocketAddr,
    json: bool,
    range: u64,
    add: &[u64],
    remove: &[u64],
) -> Result<()> {
    let list = |ns: &[u64]| ns.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    let body = http(
        admin,
        "POST",
        &format!(
            "/change-replicas?range={range}&add={}&remove={}",
            list(add),
            list(remove)
        ),
    )?;
    if json {
        println!("{body}");
        return Ok(());
    }
    let rows: Vec<RangeStatus> =
        serde_json::from_str(&body).context("decoding /change-replicas")?;
    print_range_rows(rows);
    Ok(())
}

/// The `ctl nodes` table (or the JSON as it came).
fn print_nodes(body: String, json: bool) -> Result<()> {
    if json {
        println!("{body}");
        return Ok(());
    }
    // A change made whose node list could not be read answers in words.
    let Ok(rows) = serde_json::from_str::<Vec<NodeRow>>(&body) else {
        print!("{body}");
        return Ok(());
    };
    println!(
        "{:>6}  {:<22} {:<12} {:<9} replicas",
        "node", "peer addr", "reachable", "draining"
    );
    for n in rows {
        println!(
            "{:>6}  {:<22} {:<12} {:<9} {}",
            n.id,
            n.addr.as_deref().unwrap_or("?"),
            if n.reachable { "yes" } else { "UNREACHABLE" },
            match n.draining {
                Some(true) => "yes",
                Some(false) => "no",
                None => "?",
            },
            n.replicas
        );
    }
    Ok(())
}

/// The `ctl ranges` table.
fn print_range_rows(rows: Vec<RangeStatus>) {
    println!(
        "{:>6}  {:<10} {:<10} {:<12} {:>5}  leader",
        "range", "start", "end", "replicas", "epoch"
    );
    for r in rows {
        let replicas = r
            .replicas
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let leader = r.leader.map_or("?".to_string(), |l| l.to_string());
        println!(
            "{:>6}  {:<10} {:<10} {:<12} {:>5}  {leader}",
            r.id,
            if r.start.is_empty() { "-" } else { &r.start },
            if r.end.is_empty() { "-" } else { &r.end },
            replicas,
            r.epoch
        );
    }
}
