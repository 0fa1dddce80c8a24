//! The Redis protocol front end (`tessera_engine::resp`) against a real Redis
//! client library (the `redis` crate), over one single-node `Db` per test.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
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
    let mut t = TcpStream::connect(s.addr).await.unwrap();
    t.write_all(b"PING\r\nECHO \"a b\"\r\n*2\r\n$3\r\nGET\r\n$2\r\np0\r\nQUIT\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), t.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"+PONG\r\n$3\r\na b\r\n$1\r\n0\r\n+OK\r\n");

    // Garbage: a protocol error, then the server closes that connection.
    for garbage in [
        &b"*1\r\n:5\r\n"[..],
        b"*\xff\xfe\x00garbage\r\n",
        b"*1\r\n$-7\r\n",
    ] {
        let mut t = TcpStream::connect(s.addr).await.unwrap();
        t.write_all(garbage).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), t.read_to_end(&mut got))
            .await
            .expect("the server closes the connection")
            .unwrap();
        let got = String::from_utf8_lossy(&got).into_owned();
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
    s.stop().await;
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
