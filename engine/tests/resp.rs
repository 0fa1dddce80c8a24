//! The Redis protocol front end (`tessera_engine::resp`) against a real Redis
//! client library (the `redis` crate), over one single-node `Db` per test.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use tessera_engine::DbError;
use tessera_engine::range::BatchOp;
use tessera_engine::resp::pipeline::{
    RUN_COMMANDS_MAX, RUN_WRITE_BYTES_MAX, RunKind, next_run, write_run,
};
use tessera_engine::resp::request::{INLINE_BYTES_MAX, ProtocolError, RequestDecoder};
use tessera_engine::resp::scan::{CURSORS_MAX, Cursors, glob_match, key_after};
use tessera_engine::resp::{Reply, RespOptions, RespStats, serve};
use tessera_engine::{Db, NodeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Server {
    db: Db,
    addr: SocketAddr,
    stats: std::sync::Arc<RespStats>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(password: Option<&str>) -> Server {
        Server::start_with(RespOptions {
            password: password.map(str::to_string),
            ..RespOptions::default()
        })
        .await
    }

    async fn start_with(opts: RespOptions) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = NodeConfig::new(1, dir.path());
        cfg.initial_ranges = 4;
        let db = Db::open(cfg).await.expect("open the db");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let opts = RespOptions {
            shutdown: Some(stopped),
            ..opts
        };
        let stats = opts.stats.clone();
        let task = tokio::spawn(serve(listener, db.clone(), opts));
        Server {
            db,
            addr,
            stats,
            stop,
            task,
            _dir: dir,
        }
    }

    async fn connect(&self) -> MultiplexedConnection {
        self.connect_url(&format!("redis://{}/", self.addr)).await
    }

    async fn connect_url(&self, url: &str) -> MultiplexedConnection {
        redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connect")
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("serve returns after shutdown")
            .unwrap()
            .unwrap();
        self.db.shutdown().await;
    }
}

fn err_text(e: redis::RedisError) -> String {
    e.to_string()
}

/// Writes `bytes` on a new connection to `addr` and reads until the server
/// closes it (within 5 s); what it wrote back.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut t = TcpStream::connect(addr).await.unwrap();
    t.write_all(bytes).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), t.read_to_end(&mut got))
        .await
        .expect("the server closes the connection")
        .unwrap();
    String::from_utf8_lossy(&got).into_owned()
}

async fn raw(con: &mut MultiplexedConnection, args: &[&str]) -> redis::RedisResult<redis::Value> {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query_async(con).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_commands_behave_like_redis() {
    let s = Server::start(None).await;
    let mut c = s.connect().await;

    // PING, ECHO, SELECT, CLIENT, HELLO.
    let pong: String = redis::cmd("PING").query_async(&mut c).await.unwrap();
    assert_eq!(pong, "PONG");
    let echo: String = redis::cmd("ECHO")
        .arg("hi")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(echo, "hi");
    let () = redis::cmd("SELECT")
        .arg(0)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(raw(&mut c, &["SELECT", "1"]).await.is_err());
    let () = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg("me")
        .query_async(&mut c)
        .await
        .unwrap();
    let name: String = redis::cmd("CLIENT")
        .arg("GETNAME")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(name, "me");
    let hello: Vec<redis::Value> = redis::cmd("HELLO")
        .arg(2)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(hello.len(), 14);
    let e = err_text(raw(&mut c, &["HELLO", "3"]).await.unwrap_err());
    assert!(
        e.contains("NOPROTO") && e.contains("only RESP2 is supported"),
        "{e}"
    );
    let info: String = redis::cmd("INFO").query_async(&mut c).await.unwrap();
    assert!(
        info.contains("# Server\r\nredis_version:7.0.0-tessera-compatible"),
        "{info}"
    );
    assert!(info.contains("tessera_ranges:4"), "{info}");
    let save: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("save")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(save, vec!["save".to_string(), String::new()]);
    let count: i64 = redis::cmd("COMMAND")
        .arg("COUNT")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(count > 20);

    // GET, SET, DEL, EXISTS.
    let none: Option<String> = c.get("a").await.unwrap();
    assert_eq!(none, None);
    let () = c.set("a", "1").await.unwrap();
    let () = c.set("b", "2").await.unwrap();
    let a: String = c.get("a").await.unwrap();
    assert_eq!(a, "1");
    let n: i64 = c.exists(&["a", "b", "zz", "a"]).await.unwrap();
    assert_eq!(n, 3);
    let n: i64 = c.del(&["a", "zz"]).await.unwrap();
    assert_eq!(n, 1);
    let n: i64 = c.exists("a").await.unwrap();
    assert_eq!(n, 0);

    // SET NX / XX / GET.
    let r: Option<String> = redis::cmd("SET")
        .arg("k")
        .arg("v1")
        .arg("XX")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(r, None, "XX on an absent key writes nothing");
    let r: Option<String> = redis::cmd("SET")
        .arg("k")
        .arg("v1")
        .arg("NX")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(r.as_deref(), Some("OK"));
    let r: Option<String> = redis::cmd("SET")
        .arg("k")
        .arg("v2")
        .arg("NX")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(r, None);
    let r: Option<String> = redis::cmd("SET")
        .arg("k")
        .arg("v3")
        .arg("XX")
        .arg("GET")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(r.as_deref(), Some("v1"));
    let e = err_text(
        raw(&mut c, &["SET", "k", "v", "EX", "10"])
            .await
            .unwrap_err(),
    );
    assert!(e.contains("expiry is not supported"), "{e}");
    let e = err_text(
        raw(&mut c, &["SET", "k", "v", "NX", "XX"])
            .await
            .unwrap_err(),
    );
    assert!(e.contains("syntax error"), "{e}");

    // SETNX, GETSET, APPEND, STRLEN.
    let w: i64 = redis::cmd("SETNX")
        .arg("k")
        .arg("x")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(w, 0);
    let w: i64 = redis::cmd("SETNX")
        .arg("n1")
        .arg("x")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(w, 1);
    let old: Option<String> = c.getset("k", "new").await.unwrap();
    assert_eq!(old.as_deref(), Some("v3"));
    let old: Option<String> = c.getset("fresh", "1").await.unwrap();
    assert_eq!(old, None);
    let len: i64 = c.append("k", "er").await.unwrap();
    assert_eq!(len, 5);
    let len: i64 = c.strlen("k").await.unwrap();
    assert_eq!(len, 5);
    let len: i64 = c.strlen("absent").await.unwrap();
    assert_eq!(len, 0);

    // INCR family and its errors.
    let v: i64 = c.incr("ctr", 1).await.unwrap();
    assert_eq!(v, 1);
    let v: i64 = redis::cmd("INCRBY")
        .arg("ctr")
        .arg(41)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(v, 42);
    let v: i64 = redis::cmd("DECR")
        .arg("ctr")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(v, 41);
    let v: i64 = redis::cmd("DECRBY")
        .arg("ctr")
        .arg(50)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(v, -9);
    let e = err_text(raw(&mut c, &["INCR", "k"]).await.unwrap_err());
    assert!(e.contains("value is not an integer or out of range"), "{e}");
    let e = err_text(raw(&mut c, &["INCRBY", "ctr", "1x"]).await.unwrap_err());
    assert!(e.contains("value is not an integer or out of range"), "{e}");
    let () = c.set("big", i64::MAX).await.unwrap();
    let e = err_text(raw(&mut c, &["INCR", "big"]).await.unwrap_err());
    assert!(e.contains("increment or decrement would overflow"), "{e}");

    // MGET, MSET (one range), MSET across ranges refused.
    let ranges = s.db.ranges();
    assert_eq!(ranges.len(), 4);
    let key_in = |r: usize| -> Vec<u8> {
        (0..=255u8)
            .map(|b| vec![b, b'k'])
            .find(|k| s.db.range_of(k).id == ranges[r].id)
            .expect("a key in every range")
    };
    let (k0, k0b, k1) = (key_in(0), [key_in(0), b"2".to_vec()].concat(), key_in(1));
    let () = redis::cmd("MSET")
        .arg(&k0)
        .arg("x")
        .arg(&k0b)
        .arg("y")
        .query_async(&mut c)
        .await
        .unwrap();
    let got: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&k0)
        .arg("nope")
        .arg(&k0b)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(got, vec![Some("x".into()), None, Some("y".into())]);
    let e = redis::cmd("MSET")
        .arg(&k0)
        .arg("z")
        .arg(&k1)
        .arg("z")
        .query_async::<()>(&mut c)
        .await
        .unwrap_err();
    let e = err_text(e);
    assert!(
        e.contains("MSET keys span ranges; atomic only within one range"),
        "{e}"
    );
    let v: String = c.get(&k0).await.unwrap();
    assert_eq!(v, "x", "a refused MSET writes nothing");
    let v: Option<String> = c.get(&k1).await.unwrap();
    assert_eq!(v, None);

    // Unknown commands and wrong arity.
    let e = err_text(raw(&mut c, &["XYZZY", "a", "b"]).await.unwrap_err());
    assert!(
        e.contains("unknown command 'XYZZY', with args beginning with: 'a' 'b'"),
        "{e}"
    );
    let e = err_text(raw(&mut c, &["GET"]).await.unwrap_err());
    assert!(
        e.contains("wrong number of arguments for 'get' command"),
        "{e}"
    );
    let e = err_text(raw(&mut c, &["FLUSHALL"]).await.unwrap_err());
    assert!(e.contains("not supported"), "{e}");

    let stats = s.stats.snapshot();
    assert!(stats.commands > 40);
    assert_eq!(stats.errors_unknown_command, 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_visits_every_key_once_and_dbsize_counts_them() {
    let s = Server::start(None).await;
    let mut c = s.connect().await;
    let mut want = BTreeSet::new();
    let mut p = redis::pipe();
    // Keys spread over all four ranges (first byte varies).
    for i in 0..200u32 {
        let k = format!("{}scan:{i}", char::from(b'!' + (i % 90) as u8));
        want.insert(k.clone());
        p.set(k, i).ignore();
    }
    for i in 0..50u32 {
        p.set(format!("other:{i}"), i).ignore();
    }
    let () = p.query_async(&mut c).await.unwrap();

    let mut seen = Vec::new();
    let mut cursor = 0u64;
    let mut calls = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("?scan:*")
            .arg("COUNT")
            .arg(17)
            .query_async(&mut c)
            .await
            .unwrap();
        seen.extend(keys);
        calls += 1;
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    assert!(calls >= 250 / 17, "{calls} calls");
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "a key was returned twice");
    assert_eq!(unique, want);

    // Without MATCH, in one go; and COUNT larger than the data.
    let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
        .arg(0)
        .arg("COUNT")
        .arg(1000)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!((next, keys.len()), (0, 250));
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(sorted, keys, "SCAN returns keys in key order");

    let e = err_text(raw(&mut c, &["SCAN", "12345"]).await.unwrap_err());
    assert!(e.contains("invalid cursor"), "{e}");

    let n: i64 = redis::cmd("DBSIZE").query_async(&mut c).await.unwrap();
    assert_eq!(n, 250);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_are_answered_in_order_and_garbage_closes_only_its_connection() {
    let s = Server::start(None).await;
    let mut c = s.connect().await;
    let mut p = redis::pipe();
    for i in 0..100i64 {
        match i % 4 {
            0 => p.set(format!("p{i}"), i),
            1 => p.get(format!("p{}", i - 1)),
            2 => p.incr("pctr", 1),
            _ => p.cmd("ECHO").arg(i),
        };
    }
    let replies: Vec<redis::Value> = p.query_async(&mut c).await.unwrap();
    assert_eq!(replies.len(), 100);
    for (i, r) in replies.iter().enumerate() {
        let i = i as i64;
        let want = match i % 4 {
            0 => redis::Value::Okay,
            1 => redis::Value::BulkString((i - 1).to_string().into_bytes()),
            2 => redis::Value::Int(i / 4 + 1),
            _ => redis::Value::BulkString(i.to_string().into_bytes()),
        };
        assert_eq!(r, &want, "reply {i}");
    }

    // A raw pipeline of inline and multibulk commands in one write.
    let got = exchange(
        s.addr,
        b"PING\r\nECHO \"a b\"\r\n*2\r\n$3\r\nGET\r\n$2\r\np0\r\nQUIT\r\n",
    )
    .await;
    assert_eq!(got, "+PONG\r\n$3\r\na b\r\n$1\r\n0\r\n+OK\r\n");

    // Garbage: a protocol error, then the server closes that connection.
    for garbage in [
        &b"*1\r\n:5\r\n"[..],
        b"*\xff\xfe\x00garbage\r\n",
        b"*1\r\n$-7\r\n",
    ] {
        let got = exchange(s.addr, garbage).await;
        assert!(got.starts_with("-ERR Protocol error: "), "{got}");
        assert!(
            got.ends_with("\r\n") && got.matches("\r\n").count() == 1,
            "{got}"
        );
    }
    assert_eq!(s.stats.snapshot().errors_protocol, 3);

    // The first client and new ones keep working.
    let v: i64 = c.incr("pctr", 1).await.unwrap();
    assert_eq!(v, 26);
    let mut c2 = s.connect().await;
    let pong: String = redis::cmd("PING").query_async(&mut c2).await.unwrap();
    assert_eq!(pong, "PONG");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_is_required_when_a_password_is_set() {
    let s = Server::start(Some("s3cret")).await;
    let mut c = s.connect().await;
    let e = err_text(raw(&mut c, &["GET", "a"]).await.unwrap_err());
    assert!(
        e.contains("NOAUTH") && e.contains("Authentication required"),
        "{e}"
    );
    let e = err_text(raw(&mut c, &["SET", "a", "1"]).await.unwrap_err());
    assert!(e.contains("NOAUTH"), "{e}");
    let e = err_text(raw(&mut c, &["AUTH", "wrong"]).await.unwrap_err());
    assert!(e.contains("WRONGPASS"), "{e}");
    let e = err_text(raw(&mut c, &["AUTH", "bob", "s3cret"]).await.unwrap_err());
    assert!(e.contains("WRONGPASS"), "{e}");
    let e = err_text(raw(&mut c, &["PING"]).await.unwrap_err());
    assert!(e.contains("NOAUTH"), "{e}");
    let () = redis::cmd("AUTH")
        .arg("s3cret")
        .query_async(&mut c)
        .await
        .unwrap();
    let () = c.set("a", "1").await.unwrap();
    let a: String = c.get("a").await.unwrap();
    assert_eq!(a, "1");

    // The password in the URL (the client sends AUTH on connect), with a user.
    let mut c2 = s.connect_url(&format!("redis://:s3cret@{}/", s.addr)).await;
    let a: String = c2.get("a").await.unwrap();
    assert_eq!(a, "1");
    let mut c3 = s
        .connect_url(&format!("redis://default:s3cret@{}/", s.addr))
        .await;
    let a: String = c3.get("a").await.unwrap();
    assert_eq!(a, "1");
    // HELLO 2 AUTH authenticates too.
    let mut c4 = s.connect().await;
    let _: Vec<redis::Value> = redis::cmd("HELLO")
        .arg(2)
        .arg("AUTH")
        .arg("default")
        .arg("s3cret")
        .query_async(&mut c4)
        .await
        .unwrap();
    let a: String = c4.get("a").await.unwrap();
    assert_eq!(a, "1");
    assert!(s.stats.snapshot().errors_auth >= 5);

    // In one pipeline, the commands before AUTH are refused, those after run
    // (the plain writes and the reads after it together).
    let got = exchange(
        s.addr,
        b"SET a 2\r\nGET a\r\nAUTH s3cret\r\nSET a 2\r\nSET b 3\r\nGET a\r\nGET b\r\nQUIT\r\n",
    )
    .await;
    let noauth = "-NOAUTH Authentication required.\r\n";
    assert_eq!(
        got,
        format!("{noauth}{noauth}+OK\r\n+OK\r\n+OK\r\n$1\r\n2\r\n$1\r\n3\r\n+OK\r\n")
    );

    // Before AUTH a request is bounded small (16 KiB), however large
    // max_request_bytes: a larger one is a protocol error that closes the
    // connection. Right after AUTH, in the same write, the full bound holds.
    let big = "v".repeat(100_000);
    let set = format!(
        "*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n${}\r\n{big}\r\n",
        big.len()
    );
    let got = exchange(s.addr, set.as_bytes()).await;
    assert!(
        got.starts_with("-ERR Protocol error") && got.contains("16384"),
        "{got}"
    );
    // Inline requests too.
    let inline = format!("SET big {}\r\n", "w".repeat(20_000));
    let got = exchange(s.addr, inline.as_bytes()).await;
    assert!(got.contains("too big inline request"), "{got}");
    let authed = format!("AUTH s3cret\r\n{set}GET a\r\nQUIT\r\n");
    let got = exchange(s.addr, authed.as_bytes()).await;
    assert_eq!(got, "+OK\r\n+OK\r\n$1\r\n2\r\n+OK\r\n");
    s.stop().await;
}

/// Without a password the default user takes any password, as Redis's
/// `nopass` default user does: clients configured with a username connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_password_the_default_user_takes_any_like_redis() {
    let s = Server::start(None).await;
    let mut c = s.connect().await;
    let e = err_text(raw(&mut c, &["AUTH", "x"]).await.unwrap_err());
    assert!(e.contains("without any password configured"), "{e}");
    let ok = raw(&mut c, &["AUTH", "default", "anything"]).await.unwrap();
    assert_eq!(ok, redis::Value::Okay);
    let e = err_text(raw(&mut c, &["AUTH", "bob", "x"]).await.unwrap_err());
    assert!(e.contains("WRONGPASS"), "{e}");
    let mut c2 = s
        .connect_url(&format!("redis://default:whatever@{}/", s.addr))
        .await;
    let () = c2.set("k", "v").await.unwrap();
    let _: Vec<redis::Value> = redis::cmd("HELLO")
        .arg(2)
        .arg("AUTH")
        .arg("default")
        .arg("x")
        .query_async(&mut c2)
        .await
        .unwrap();
    s.stop().await;
}

/// A client that stops reading its replies cannot hold up a shutdown past
/// its grace: its connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_after_the_shutdown_grace() {
    let s = Server::start_with(RespOptions {
        shutdown_grace: Duration::from_millis(300),
        ..RespOptions::default()
    })
    .await;
    let value = vec![b'v'; 1 << 20];
    s.db.put("big", value).await.expect("put");
    // Replies far beyond the socket buffers, never read.
    let mut stuck = TcpStream::connect(s.addr).await.unwrap();
    let mut gets = Vec::new();
    for _ in 0..64 {
        gets.extend_from_slice(b"GET big\r\n");
    }
    stuck.write_all(&gets).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.stats.snapshot().connections_open, 1);
    let stats = s.stats.clone();
    // `stop` allows 5 s; the grace is 0.3 s.
    s.stop().await;
    assert_eq!(stats.snapshot().connections_open, 0);
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_refused_and_shutdown_closes_idle_ones() {
    let s = Server::start_with(RespOptions {
        max_connections: 1,
        ..RespOptions::default()
    })
    .await;
    let mut first = TcpStream::connect(s.addr).await.unwrap();
    first.write_all(b"PING\r\n").await.unwrap();
    let mut pong = [0u8; 7];
    first.read_exact(&mut pong).await.unwrap();
    assert_eq!(&pong, b"+PONG\r\n");
    let mut second = TcpStream::connect(s.addr).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), second.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"-ERR max number of clients reached\r\n");
    let stats = s.stats.snapshot();
    assert_eq!((stats.connections_refused, stats.connections_open), (1, 1));
    // Shutdown: serve returns and the idle connection is closed.
    s.stop().await;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), first.read_to_end(&mut rest))
        .await
        .expect("closed at shutdown")
        .unwrap();
    assert!(rest.is_empty());
}

/// Sends `cmds` then QUIT in one write on a new connection; every reply but
/// QUIT's, as the server wrote them.
async fn pipeline_wire(addr: SocketAddr, cmds: &[Vec<Vec<u8>>]) -> Vec<u8> {
    let mut wire = Vec::new();
    for c in cmds.iter().chain([&vec![b"QUIT".to_vec()]]) {
        wire.extend(format!("*{}\r\n", c.len()).into_bytes());
        for a in c {
            wire.extend(format!("${}\r\n", a.len()).into_bytes());
            wire.extend(a);
            wire.extend(b"\r\n");
        }
    }
    let mut t = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = t.split();
    let mut got = Vec::new();
    let (written, read) = tokio::join!(
        wr.write_all(&wire),
        tokio::time::timeout(Duration::from_secs(30), rd.read_to_end(&mut got))
    );
    written.unwrap();
    read.expect("the server answers QUIT and closes").unwrap();
    assert!(
        got.ends_with(b"+OK\r\n"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    got.truncate(got.len() - 5);
    got
}

fn args(line: &str) -> Vec<Vec<u8>> {
    line.split(' ').map(|a| a.as_bytes().to_vec()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_gets_the_replies_in_order_execution_gives() {
    let s = Server::start(None).await;
    // (command with {p} for the key prefix, its reply in order).
    let script: &[(&str, &str)] = &[
        ("SET {p}a 1", "+OK"),
        ("SET {p}b 2", "+OK"),
        ("SET {p}a 3", "+OK"),
        ("GET {p}a", "$1\r\n3"),
        ("GET {p}b", "$1\r\n2"),
        ("INCR {p}n", ":1"),
        ("INCR {p}n", ":2"),
        ("SET {p}n 10", "+OK"),
        ("INCR {p}n", ":11"),
        ("GET {p}n", "$2\r\n11"),
        ("SET {p}a 4", "+OK"),
        ("DEL {p}a", ":1"),
        ("GET {p}a", "$-1"),
        ("DEL {p}a", ":0"),
        ("SET {p}a 5", "+OK"),
        ("SET {p}a 6 NX", "$-1"),
        ("GET {p}a", "$1\r\n5"),
        ("MSET {p}c 7 {p}c 8", "+OK"),
        ("SET {p}c 9", "+OK"),
        ("GET {p}c", "$1\r\n9"),
        ("EXISTS {p}a {p}b {p}zz", ":2"),
        ("MGET {p}a {p}zz {p}c", "*3\r\n$1\r\n5\r\n$-1\r\n$1\r\n9"),
        ("STRLEN {p}n", ":2"),
        ("SET {p}d x", "+OK"),
        ("GETSET {p}d y", "$1\r\nx"),
        ("GET {p}d", "$1\r\ny"),
        ("SET {p}e 1 EX 10", "-ERR expiry is not supported"),
        ("SET {p}e 2", "+OK"),
        ("GET", "-ERR wrong number of arguments for 'get' command"),
        ("GET {p}e", "$1\r\n2"),
        ("SET {p}f abc", "+OK"),
        ("INCR {p}f", "-ERR value is not an integer or out of range"),
        ("SET {p}f 1", "+OK"),
        ("INCR {p}f", ":2"),
        ("PING", "+PONG"),
        ("SET {p}f 7", "+OK"),
        ("GET {p}f", "$1\r\n7"),
    ];
    let cmds = |p: &str| -> Vec<Vec<Vec<u8>>> {
        script
            .iter()
            .map(|(c, _)| args(&c.replace("{p}", p)))
            .collect()
    };
    let want: String = script.iter().map(|(_, r)| format!("{r}\r\n")).collect();
    let before = s.stats.snapshot().commands;
    let piped = pipeline_wire(s.addr, &cmds("p:")).await;
    assert_eq!(String::from_utf8_lossy(&piped), want);
    // All the commands and QUIT were counted.
    assert_eq!(
        s.stats.snapshot().commands - before,
        script.len() as u64 + 1
    );
    // The same, one command per connection: strictly in order.
    let mut one_by_one = Vec::new();
    for c in cmds("s:") {
        one_by_one.extend(pipeline_wire(s.addr, &[c]).await);
    }
    assert_eq!(String::from_utf8_lossy(&one_by_one), want);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_of_sets_across_ranges_reads_every_value_back() {
    let s = Server::start(None).await;
    const N: usize = 2000;
    let key = |i: usize| {
        let mut k = vec![(i * 7 % 256) as u8];
        k.extend(format!(":{i}").into_bytes());
        k
    };
    let ranges: BTreeSet<u64> = (0..N).map(|i| s.db.range_of(&key(i)).id).collect();
    assert!(ranges.len() >= 3, "keys in ranges {ranges:?}");
    // Every key, then the first 100 again (a later value must win).
    let mut sets: Vec<Vec<Vec<u8>>> = (0..N)
        .map(|i| vec![b"SET".to_vec(), key(i), format!("v{i}").into_bytes()])
        .collect();
    sets.extend((0..100).map(|i| vec![b"SET".to_vec(), key(i), format!("w{i}").into_bytes()]));
    let proposals = || async { s.db.node().handle().stats().await.unwrap().proposals };
    let before = proposals().await;
    let got = pipeline_wire(s.addr, &sets).await;
    assert_eq!(got, b"+OK\r\n".repeat(N + 100));
    // Batched: a few proposals per range, not one per SET.
    let batches = proposals().await - before;
    assert!(batches <= (N as u64 + 100) / 10, "{batches} proposals");
    let gets: Vec<Vec<Vec<u8>>> = (0..N).map(|i| vec![b"GET".to_vec(), key(i)]).collect();
    let got = pipeline_wire(s.addr, &gets).await;
    let want: Vec<u8> = (0..N)
        .flat_map(|i| {
            let v = if i < 100 {
                format!("w{i}")
            } else {
                format!("v{i}")
            };
            format!("${}\r\n{v}\r\n", v.len()).into_bytes()
        })
        .collect();
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want)
    );
    for i in [0, 99, 100, N - 1] {
        let v = s.db.get(key(i)).await.unwrap().unwrap();
        assert_eq!(
            v,
            if i < 100 {
                format!("w{i}")
            } else {
                format!("v{i}")
            }
        );
    }
    assert_eq!(s.stats.snapshot().errors_store, 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_resp_counters() {
    let s = Server::start(None).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let admin = tokio::spawn(tessera_engine::admin::serve_admin(
        listener,
        s.db.clone(),
        Some(s.stats.clone()),
        stopped,
    ));
    let mut c = s.connect().await;
    let () = c.set("m", "1").await.unwrap();
    assert!(raw(&mut c, &["GET"]).await.is_err());
    let commands = s.stats.snapshot().commands;
    assert!(commands >= 2);

    let mut t = TcpStream::connect(admin_addr).await.unwrap();
    t.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), t.read_to_end(&mut body))
        .await
        .unwrap()
        .unwrap();
    let body = String::from_utf8_lossy(&body);
    for line in [
        format!("tessera_resp_commands_total {commands}"),
        "# TYPE tessera_resp_commands_total counter".to_string(),
        "tessera_resp_connections_open 1".to_string(),
        "tessera_resp_errors_total{kind=\"usage\"} 1".to_string(),
        "tessera_resp_errors_total{kind=\"store\"} 0".to_string(),
        "tessera_proposals_total".to_string(),
        "tessera_forwarded_total".to_string(),
        "tessera_forwards_served_total".to_string(),
    ] {
        assert!(
            body.lines().any(|l| l.starts_with(&line)),
            "{line} in\n{body}"
        );
    }
    stop.send(true).unwrap();
    admin.await.unwrap().unwrap();
    s.stop().await;
}

/// Runs a tool from the redis-tools package against the server.
async fn tool(name: &str, args: &[&str]) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(name)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{name} {args:?} hung"))
    .unwrap();
    assert!(out.status.success(), "{name} {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_and_redis_benchmark_work_when_installed() {
    let installed = |t: &str| {
        std::process::Command::new(t)
            .arg("--version")
            .output()
            .is_ok()
    };
    if !installed("redis-cli") || !installed("redis-benchmark") {
        eprintln!("redis-cli or redis-benchmark not installed (Debian redis-tools): skipped");
        return;
    }
    let s = Server::start(None).await;
    let port = s.addr.port().to_string();
    let p = port.as_str();
    assert_eq!(
        tool("redis-cli", &["-p", p, "SET", "cli:1", "v"]).await,
        "OK\n"
    );
    assert_eq!(tool("redis-cli", &["-p", p, "GET", "cli:1"]).await, "v\n");
    assert_eq!(
        tool("redis-cli", &["-p", p, "INCRBY", "cli:n", "5"]).await,
        "5\n"
    );
    assert_eq!(
        tool("redis-cli", &["-p", p, "APPEND", "cli:1", "w"]).await,
        "2\n"
    );
    let keys = tool("redis-cli", &["-p", p, "--scan", "--pattern", "cli:*"]).await;
    let mut keys: Vec<&str> = keys.lines().collect();
    keys.sort();
    assert_eq!(keys, ["cli:1", "cli:n"]);
    let info = tool("redis-cli", &["-p", p, "INFO", "server"]).await;
    assert!(
        info.contains("redis_version:7.0.0-tessera-compatible"),
        "{info}"
    );
    let bench = tool(
        "redis-benchmark",
        &[
            "-p", p, "-t", "set,get", "-n", "2000", "-c", "4", "-P", "16", "-q",
        ],
    )
    .await;
    eprintln!("redis-benchmark -t set,get -n 2000 -c 4 -P 16 -q:\n{bench}");
    assert!(bench.contains("SET:") && bench.contains("GET:"), "{bench}");
    let stats = s.stats.snapshot();
    assert_eq!(
        stats.errors_protocol + stats.errors_unknown_command,
        0,
        "{stats:?}"
    );
    s.stop().await;
}

// ----- The decoder, replies, glob and cursors, without a server -----

fn decode_all(input: &[u8]) -> (Vec<Vec<Bytes>>, Result<(), ProtocolError>, usize) {
    let mut d = RequestDecoder::new(1024);
    let mut buf = BytesMut::from(input);
    let mut out = Vec::new();
    loop {
        match d.decode(&mut buf) {
            Ok(Some(r)) => out.push(r),
            Ok(None) => return (out, Ok(()), buf.len()),
            Err(e) => return (out, Err(e), buf.len()),
        }
    }
}

fn strs(v: &[&str]) -> Vec<Bytes> {
    v.iter()
        .map(|s| Bytes::copy_from_slice(s.as_bytes()))
        .collect()
}

// ----- Pipelines: which requests run together -----

/// A fake range per key: its first byte.
fn first_byte(k: &[u8]) -> u64 {
    k.first().map_or(0, |&b| u64::from(b))
}

fn reqs(lines: &[&str]) -> Vec<Vec<Bytes>> {
    lines
        .iter()
        .map(|l| strs(&l.split(' ').collect::<Vec<_>>()))
        .collect()
}

#[test]
fn runs_are_plain_writes_or_reads_and_end_at_the_first_other_command() {
    let run = |lines: &[&str]| next_run(&reqs(lines), true, first_byte);
    use RunKind::*;
    // Plain writes, any case, MSET within one range; a run ends at a command
    // of another kind.
    assert_eq!(
        run(&["SET a 1", "set b 2", "Set a 3", "GET a"]),
        (Writes, 3)
    );
    assert_eq!(run(&["SET a 1", "MSET a1 1 a2 2", "SET b 1"]), (Writes, 3));
    assert_eq!(run(&["SET a 1", "MSET a 1 b 2", "SET b 1"]), (Writes, 1));
    assert_eq!(run(&["SET a 1", "INCR a", "SET b 1"]), (Writes, 1));
    assert_eq!(run(&["SET a 1", "SET a 2 NX"]), (Writes, 1));
    assert_eq!(run(&["SET a 1", "DEL a"]), (Writes, 1));
    assert_eq!(run(&["SET a 1", "AUTH pw", "SET b 1"]), (Writes, 1));
    // Reads.
    assert_eq!(
        run(&[
            "GET a",
            "get b",
            "EXISTS a b",
            "MGET a b c",
            "STRLEN a",
            "SET a 1"
        ]),
        (Reads, 5)
    );
    assert_eq!(run(&["GET a", "GET"]), (Reads, 1));
    assert_eq!(run(&["GET a", "GET a b"]), (Reads, 1));
    assert_eq!(run(&["GET a", "PING", "GET b"]), (Reads, 1));
    // Alone: everything else, always a run of one.
    for alone in [
        "SET a 1 NX",
        "SET a 1 GET",
        "SET a",
        "MSET a 1 b 2",
        "MSET a1 1 a2",
        "INCR a",
        "DEL a",
        "GETSET a 1",
        "AUTH pw",
        "PING",
        "SCAN 0",
        "NOSUCH a",
        "GET",
    ] {
        assert_eq!(run(&[alone, alone, "SET a 1"]), (Alone, 1), "{alone}");
    }
    // Before AUTH nothing runs together (each is refused as before).
    assert_eq!(
        next_run(&reqs(&["SET a 1", "SET b 2"]), false, first_byte),
        (Alone, 1)
    );
    // Bounds: commands per run, and argument bytes per run of writes (a
    // larger write is a run of its own).
    let many = reqs(&vec!["SET a 1"; RUN_COMMANDS_MAX + 5]);
    assert_eq!(
        next_run(&many, true, first_byte),
        (Writes, RUN_COMMANDS_MAX)
    );
    let many = reqs(&vec!["GET a"; RUN_COMMANDS_MAX + 5]);
    assert_eq!(next_run(&many, true, first_byte), (Reads, RUN_COMMANDS_MAX));
    let big = |n: usize| {
        vec![
            Bytes::from("SET"),
            Bytes::from("a"),
            Bytes::from(vec![b'x'; n]),
        ]
    };
    let half = RUN_WRITE_BYTES_MAX / 2;
    assert_eq!(
        next_run(&[big(half), big(half), big(10)], true, first_byte),
        (Writes, 1)
    );
    assert_eq!(
        next_run(&[big(half - 10), big(half - 10), big(10)], true, first_byte),
        (Writes, 2)
    );
    assert_eq!(
        next_run(&[big(2 * RUN_WRITE_BYTES_MAX), big(1)], true, first_byte),
        (Writes, 1)
    );
}

fn put_keys(ops: &[BatchOp]) -> String {
    ops.iter()
        .map(|op| match op {
            BatchOp::Put { key, value } => format!(
                "{}={}",
                String::from_utf8_lossy(key),
                String::from_utf8_lossy(value)
            ),
            BatchOp::Delete { key } => format!("-{}", String::from_utf8_lossy(key)),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test]
async fn a_run_of_writes_is_one_batch_per_range_in_order_and_errors_stay_with_their_range() {
    let run = reqs(&[
        "SET a1 1",
        "SET b1 1",
        "MSET a2 2 a1 3",
        "SET c1 1",
        "SET b2 2",
        "SET a1 4",
    ]);
    let submitted = std::sync::Mutex::new(Vec::new());
    let outcomes = write_run(&run, first_byte, |ops: Vec<BatchOp>| {
        submitted.lock().unwrap().push(put_keys(&ops));
        let fail = ops[0].key().starts_with(b"b");
        async move {
            if fail {
                Err(DbError::Unavailable("range b is down".into()))
            } else {
                Ok(())
            }
        }
    })
    .await;
    let mut submitted = submitted.into_inner().unwrap();
    submitted.sort();
    assert_eq!(
        submitted,
        ["a1=1 a2=2 a1=3 a1=4", "b1=1 b2=2", "c1=1"],
        "one batch per range, in pipeline order"
    );
    let failed: Vec<bool> = outcomes.iter().map(Result::is_err).collect();
    assert_eq!(failed, [false, true, false, false, true, false]);
    assert!(
        outcomes[1]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("range b is down")
    );
}

#[tokio::test]
async fn a_batch_refused_as_cross_range_is_retried_command_by_command() {
    // The writer's ranges are finer than the grouping's (a range split after
    // grouping): one key each. A batch mixing them is refused whole, as
    // `Db::batch` does.
    let run = reqs(&["SET a1 1", "SET a2 2", "MSET a1 3 a2 4", "SET a1 5"]);
    let submitted = std::sync::Mutex::new(Vec::new());
    let outcomes = write_run(&run, first_byte, |ops: Vec<BatchOp>| {
        submitted.lock().unwrap().push(put_keys(&ops));
        let spans = ops.iter().any(|op| op.key() != ops[0].key());
        async move {
            if spans {
                Err(DbError::CrossRange {
                    first: 1,
                    second: 2,
                })
            } else {
                Ok(())
            }
        }
    })
    .await;
    assert_eq!(
        submitted.into_inner().unwrap(),
        [
            "a1=1 a2=2 a1=3 a2=4 a1=5",
            "a1=1",
            "a2=2",
            "a1=3 a2=4",
            "a1=5"
        ]
    );
    let failed: Vec<bool> = outcomes.iter().map(Result::is_err).collect();
    assert_eq!(
        failed,
        [false, false, true, false],
        "only the MSET spans ranges"
    );
}

#[test]
fn multibulk_and_inline_requests_pipeline() {
    let (reqs, res, left) = decode_all(
        b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\nset a \"b c\\x41\" 'd\\'e'\n*1\r\n$4\r\nPI",
    );
    assert_eq!(res, Ok(()));
    assert_eq!(
        reqs,
        vec![
            strs(&["GET", "k"]),
            strs(&["PING"]),
            strs(&["set", "a", "b cA", "d'e"])
        ]
    );
    assert_eq!(left, 10);
}

#[test]
fn a_request_split_anywhere_decodes_the_same() {
    let wire = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n";
    for cut in 0..wire.len() {
        let mut d = RequestDecoder::new(1024);
        let mut buf = BytesMut::from(&wire[..cut]);
        assert_eq!(d.decode(&mut buf), Ok(None), "cut {cut}");
        buf.extend_from_slice(&wire[cut..]);
        assert_eq!(d.decode(&mut buf), Ok(Some(strs(&["SET", "key", "value"]))));
        assert!(buf.is_empty());
    }
}

#[test]
fn malformed_requests_are_refused() {
    for (input, msg) in [
        (&b"*abc\r\n"[..], "invalid multibulk length"),
        (b"*1\r\n:5\r\n", "expected '$', got ':'"),
        (b"*1\r\n*1\r\n$1\r\na\r\n", "expected '$', got '*'"),
        (b"*1\r\n$-1\r\n", "invalid bulk length"),
        (b"*1\r\n$+1\r\n", "invalid bulk length"),
        (b"*1\r\n$2000\r\n", "request is larger than 1024 bytes"),
        (b"*1\r\n$1\r\nab\r\n", "expected CRLF after a bulk string"),
        (
            b"*2\r\n$1\r\na\r\n$1\r\nb\n\n",
            "expected CRLF after a bulk string",
        ),
        (b"*1000\r\n", "invalid multibulk length"),
        (b"*1\rx", "invalid mbulk count"),
        (b"set \"a\"b\n", "unbalanced quotes in request"),
        (b"set \"ab\n", "unbalanced quotes in request"),
    ] {
        let (_, res, _) = decode_all(input);
        assert_eq!(res, Err(ProtocolError(msg.into())), "{input:?}");
    }
    let mut long = vec![b'x'; INLINE_BYTES_MAX + 10];
    long.push(b'\n');
    assert!(decode_all(&long).1.is_err());
}

#[test]
fn empty_requests_are_skipped() {
    let (reqs, res, _) = decode_all(b"*0\r\n*-1\r\n\r\n   \n");
    assert_eq!(res, Ok(()));
    assert!(reqs.iter().all(Vec::is_empty));
}

#[test]
fn encodes_resp2() {
    let r = Reply::Array(vec![
        Reply::OK,
        Reply::Error("ERR a\r\nb".into()),
        Reply::Int(-3),
        Reply::bulk("xy"),
        Reply::Nil,
        Reply::Array(vec![]),
    ]);
    let mut out = BytesMut::new();
    r.encode(&mut out);
    assert_eq!(
        &out[..],
        b"*6\r\n+OK\r\n-ERR a  b\r\n:-3\r\n$2\r\nxy\r\n$-1\r\n*0\r\n"
    );
}

#[test]
fn glob_like_redis() {
    for (p, s, want) in [
        ("*", "", true),
        ("*", "abc", true),
        ("a*", "abc", true),
        ("a*c", "abbbc", true),
        ("a*c", "abcd", false),
        ("?", "a", true),
        ("?", "", false),
        ("h?llo", "hello", true),
        ("h[ae]llo", "hallo", true),
        ("h[ae]llo", "hillo", false),
        ("h[^e]llo", "hallo", true),
        ("h[^e]llo", "hello", false),
        ("h[a-b]llo", "hbllo", true),
        ("h[a-b]llo", "hcllo", false),
        ("h\\*llo", "h*llo", true),
        ("h\\*llo", "hello", false),
        ("user:*:name", "user:12:name", true),
        ("user:*:name", "user:12:names", false),
        ("*a*b*", "xxaxxbxx", true),
        ("*a*b*", "xxbxxaxx", false),
    ] {
        assert_eq!(glob_match(p.as_bytes(), s.as_bytes()), want, "{p} ~ {s}");
    }
}

#[test]
fn cursors_resume_and_are_forgotten_oldest_first() {
    let c = Cursors::default();
    assert_eq!(c.resume(0), Some(Bytes::new()));
    let first = c.issue(Bytes::from_static(b"k1"));
    assert_ne!(first, 0);
    assert_eq!(c.resume(first), Some(Bytes::from_static(b"k1")));
    for i in 0..CURSORS_MAX {
        c.issue(Bytes::from(i.to_string()));
    }
    assert_eq!(c.resume(first), None);
    assert_eq!(key_after(b"a"), Bytes::from_static(b"a\0"));
}
