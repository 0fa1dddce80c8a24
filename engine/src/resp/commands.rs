//! The command table and each command.
//!
//! Checks run in Redis's order: unknown command, then arity, then
//! authentication, then the command's own argument checks. Error texts are
//! Redis's where Redis has one.

use bytes::{Bytes, BytesMut};

use super::connection::Session;
use super::reply::Reply;
use super::scan::{glob_match, key_after};
use super::{REDIS_VERSION, RespStats, Shared};
use crate::range::{ApplyResult, BatchOp, Command, PutCond};
use crate::{Db, DbError};

/// A command as `COMMAND` describes it.
#[derive(Clone, Copy, Debug)]
pub struct CommandSpec {
    /// Lower case.
    pub name: &'static str,
    /// Number of arguments including the name; negative: at least that many.
    pub arity: i32,
    pub flags: &'static [&'static str],
    pub first_key: i32,
    pub last_key: i32,
    pub step: i32,
    /// Runs before AUTH (AUTH, HELLO, QUIT).
    pub no_auth: bool,
}

const fn spec(
    name: &'static str,
    arity: i32,
    flags: &'static [&'static str],
    keys: (i32, i32, i32),
) -> CommandSpec {
    CommandSpec {
        name,
        arity,
        flags,
        first_key: keys.0,
        last_key: keys.1,
        step: keys.2,
        no_auth: false,
    }
}

const fn no_auth(mut s: CommandSpec) -> CommandSpec {
    s.no_auth = true;
    s
}

const W: &[&str] = &["write"];
const WD: &[&str] = &["write", "denyoom"];
const R: &[&str] = &["readonly", "fast"];
const F: &[&str] = &["fast"];
const NO_KEYS: (i32, i32, i32) = (0, 0, 0);
const ONE_KEY: (i32, i32, i32) = (1, 1, 1);
const ALL_KEYS: (i32, i32, i32) = (1, -1, 1);

/// Every command served, in the order `COMMAND` lists them.
pub static COMMANDS: &[CommandSpec] = &[
    spec("ping", -1, F, NO_KEYS),
    spec("echo", 2, F, NO_KEYS),
    no_auth(spec("hello", -1, F, NO_KEYS)),
    no_auth(spec("auth", -2, F, NO_KEYS)),
    no_auth(spec("quit", -1, F, NO_KEYS)),
    spec("select", 2, F, NO_KEYS),
    spec("client", -2, &["admin"], NO_KEYS),
    spec("command", -1, &["random"], NO_KEYS),
    spec("info", -1, &["random"], NO_KEYS),
    spec("config", -2, &["admin"], NO_KEYS),
    spec("get", 2, R, ONE_KEY),
    spec("set", -3, WD, ONE_KEY),
    spec("setnx", 3, WD, ONE_KEY),
    spec("getset", 3, WD, ONE_KEY),
    spec("append", 3, WD, ONE_KEY),
    spec("strlen", 2, R, ONE_KEY),
    spec("del", -2, W, ALL_KEYS),
    spec("exists", -2, R, ALL_KEYS),
    spec("mget", -2, R, ALL_KEYS),
    spec("mset", -3, WD, (1, -1, 2)),
    spec("incr", 2, WD, ONE_KEY),
    spec("decr", 2, WD, ONE_KEY),
    spec("incrby", 3, WD, ONE_KEY),
    spec("decrby", 3, WD, ONE_KEY),
    spec("scan", -2, &["readonly"], NO_KEYS),
    spec("dbsize", 1, &["readonly"], NO_KEYS),
    spec("flushall", -1, W, NO_KEYS),
    spec("flushdb", -1, W, NO_KEYS),
];

/// What the connection does after a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    /// Flush the replies, then close (QUIT).
    Close,
    /// Close without a reply (an HTTP request sent to the Redis port).
    Drop,
}

/// Kinds of error replies, for [`RespStats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ErrorKind {
    Auth,
    Unknown,
    Usage,
    Store,
    Other,
}

#[derive(Debug)]
pub(crate) struct CmdError {
    kind: ErrorKind,
    /// With its prefix (`ERR ...`).
    text: String,
}

pub(crate) type CmdResult = Result<Reply, CmdError>;

fn usage(msg: impl Into<String>) -> CmdError {
    CmdError {
        kind: ErrorKind::Usage,
        text: format!("ERR {}", msg.into()),
    }
}

fn other(text: impl Into<String>) -> CmdError {
    CmdError {
        kind: ErrorKind::Other,
        text: text.into(),
    }
}

fn syntax() -> CmdError {
    usage("syntax error")
}

fn not_an_integer() -> CmdError {
    usage("value is not an integer or out of range")
}

fn arity(name: &str) -> CmdError {
    usage(format!("wrong number of arguments for '{name}' command"))
}

fn unknown_subcommand(sub: &[u8], cmd: &str) -> CmdError {
    usage(format!(
        "unknown subcommand '{}'. Try {} HELP.",
        lossy(sub, 128),
        cmd.to_uppercase()
    ))
}

impl From<DbError> for CmdError {
    fn from(e: DbError) -> Self {
        CmdError::from(&e)
    }
}

impl From<&DbError> for CmdError {
    fn from(e: &DbError) -> Self {
        let (kind, text) = match e {
            DbError::NotAnInteger => (
                ErrorKind::Other,
                "ERR value is not an integer or out of range".to_string(),
            ),
            DbError::Overflow => (
                ErrorKind::Other,
                "ERR increment or decrement would overflow".to_string(),
            ),
            DbError::CrossRange { first, second } => (
                ErrorKind::Other,
                format!(
                    "CROSSSLOT keys in ranges {first} and {second}; atomic only within one range"
                ),
            ),
            DbError::Timeout { elapsed, last } => (
                ErrorKind::Store,
                format!(
                    "TRYAGAIN request timed out after {} ms (a write may or may not have \
                     been applied); last error: {last}",
                    elapsed.as_millis()
                ),
            ),
            DbError::Ambiguous(why) => (
                ErrorKind::Store,
                format!("ERR outcome unknown: the write may or may not have been applied ({why})"),
            ),
            DbError::Unavailable(why) => (
                ErrorKind::Store,
                format!("TRYAGAIN range unavailable, nothing was applied: {why}"),
            ),
            DbError::Invalid(why) => (ErrorKind::Other, format!("ERR {why}")),
            other => (ErrorKind::Store, format!("ERR store error: {other}")),
        };
        CmdError { kind, text }
    }
}

fn lossy(b: &[u8], max: usize) -> String {
    String::from_utf8_lossy(&b[..b.len().min(max)]).into_owned()
}

/// An integer argument as Redis's `string2ll` accepts it: canonical decimal.
fn parse_i64(b: &[u8]) -> Result<i64, CmdError> {
    let s = std::str::from_utf8(b).map_err(|_| not_an_integer())?;
    match s.parse::<i64>() {
        Ok(v) if v.to_string() == s => Ok(v),
        _ => Err(not_an_integer()),
    }
}

fn eq_ic(a: &[u8], b: &str) -> bool {
    a.eq_ignore_ascii_case(b.as_bytes())
}

/// Runs one request and appends its reply to `out`.
pub(crate) async fn execute(
    shared: &Shared,
    session: &mut Session,
    args: &[Bytes],
    out: &mut BytesMut,
) -> Flow {
    debug_assert!(!args.is_empty());
    let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
    let (flow, result) = dispatch(shared, session, &name, args).await;
    let reply = account(&shared.opts.stats, result);
    if flow != Flow::Drop {
        reply.encode(out);
    }
    flow
}

/// Counts a command executed and, if it failed, its kind of error; its reply.
pub(crate) fn account(stats: &RespStats, result: CmdResult) -> Reply {
    RespStats::bump(&stats.commands);
    match result {
        Ok(r) => r,
        Err(e) => {
            RespStats::bump(match e.kind {
                ErrorKind::Auth => &stats.errors_auth,
                ErrorKind::Unknown => &stats.errors_unknown_command,
                ErrorKind::Usage => &stats.errors_usage,
                ErrorKind::Store => &stats.errors_store,
                ErrorKind::Other => &stats.errors_other,
            });
            Reply::Error(e.text)
        }
    }
}

async fn dispatch(
    shared: &Shared,
    session: &mut Session,
    name: &str,
    args: &[Bytes],
) -> (Flow, CmdResult) {
    // Redis closes connections that send HTTP to it (a browser, or a
    // cross-protocol attack from a web page).
    if name == "post" || name == "host:" {
        tracing::warn!(peer = %session.peer, "resp: HTTP request on the Redis port; closing");
        return (Flow::Drop, Ok(Reply::OK));
    }
    let Some(spec) = COMMANDS.iter().find(|c| c.name == name) else {
        let mut rest = String::new();
        for a in &args[1..] {
            if rest.len() >= 128 {
                break;
            }
            rest.push_str(&format!("'{}' ", lossy(a, 128 - rest.len())));
        }
        let err = CmdError {
            kind: ErrorKind::Unknown,
            text: format!(
                "ERR unknown command '{}', with args beginning with: {rest}",
                lossy(&args[0], 128)
            ),
        };
        return (Flow::Continue, Err(err));
    };
    let n = args.len() as i32;
    if (spec.arity > 0 && n != spec.arity) || (spec.arity < 0 && n < -spec.arity) {
        return (Flow::Continue, Err(arity(spec.name)));
    }
    if !spec.no_auth && !session.authenticated {
        let err = CmdError {
            kind: ErrorKind::Auth,
            text: "NOAUTH Authentication required.".into(),
        };
        return (Flow::Continue, Err(err));
    }
    let db = &shared.db;
    let a = args;
    let result = match name {
        "quit" => return (Flow::Close, Ok(Reply::OK)),
        "ping" => match a.len() {
            1 => Ok(Reply::Simple("PONG")),
            2 => Ok(Reply::Bulk(a[1].clone())),
            _ => Err(arity("ping")),
        },
        "echo" => Ok(Reply::Bulk(a[1].clone())),
        "hello" => hello(shared, session, a),
        "auth" => auth(shared, session, a),
        "select" => match parse_i64(&a[1]) {
            Ok(0) => Ok(Reply::OK),
            Ok(_) => Err(other("ERR DB index is out of range")),
            Err(e) => Err(e),
        },
        "client" => client(session, a),
        "command" => command(a),
        "info" => info(shared, a),
        "config" => config(shared, a),
        "flushall" | "flushdb" => Err(other(format!(
            "ERR {} is not supported by tessera",
            name.to_uppercase()
        ))),
        "get" | "strlen" | "exists" | "mget" => read(db, name, a).await,
        "set" => set(db, a).await,
        "setnx" => db
            .put_if(a[1].clone(), a[2].clone(), PutCond::IfAbsent, false)
            .await
            .map(|(written, _)| Reply::Int(i64::from(written)))
            .map_err(Into::into),
        "getset" => db
            .put_if(a[1].clone(), a[2].clone(), PutCond::Always, true)
            .await
            .map(|(_, old)| Reply::opt(old))
            .map_err(Into::into),
        "append" => append(db, a).await,
        "del" => del(db, a).await,
        "mset" => mset(db, a).await,
        "incr" => incr(db, &a[1], 1).await,
        "decr" => incr(db, &a[1], -1).await,
        "incrby" => match parse_i64(&a[2]) {
            Ok(d) => incr(db, &a[1], d).await,
            Err(e) => Err(e),
        },
        "decrby" => match parse_i64(&a[2]) {
            Ok(i64::MIN) => Err(other("ERR decrement would overflow")),
            Ok(d) => incr(db, &a[1], -d).await,
            Err(e) => Err(e),
        },
        "scan" => scan(shared, a).await,
        "dbsize" => dbsize(db).await,
        _ => unreachable!("{name} is in the table but not dispatched"),
    };
    (Flow::Continue, result)
}

// ----- Connection commands -----

fn password_matches(expected: &str, given: &[u8]) -> bool {
    let e = expected.as_bytes();
    // Constant time for equal lengths.
    e.len() == given.len() && e.iter().zip(given).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn wrongpass() -> CmdError {
    CmdError {
        kind: ErrorKind::Auth,
        text: "WRONGPASS invalid username-password pair or user is disabled.".into(),
    }
}

/// Checks `user` (only `default` exists; `None`: the one-argument `AUTH`)
/// and `pass`. Without a password the default user takes any, as Redis's
/// `nopass` default user does, so clients configured with a username and
/// password connect alike; only the one-argument form is an error then.
fn check_auth(
    shared: &Shared,
    session: &mut Session,
    user: Option<&[u8]>,
    pass: &[u8],
) -> CmdResult {
    let is_default = user.is_none_or(|u| eq_ic(u, "default"));
    let Some(expected) = shared.opts.password.as_deref() else {
        return match user {
            None => Err(other(
                "ERR AUTH <password> called without any password configured for the default user. \
                 Are you sure your configuration is correct?",
            )),
            Some(_) if is_default => {
                session.authenticated = true;
                Ok(Reply::OK)
            }
            Some(_) => Err(wrongpass()),
        };
    };
    if is_default && password_matches(expected, pass) {
        session.authenticated = true;
        Ok(Reply::OK)
    } else {
        Err(wrongpass())
    }
}

fn auth(shared: &Shared, session: &mut Session, a: &[Bytes]) -> CmdResult {
    match a.len() {
        2 => check_auth(shared, session, None, &a[1]),
        3 => check_auth(shared, session, Some(&a[1]), &a[2]),
        _ => Err(syntax()),
    }
}

fn valid_client_name(name: &[u8]) -> bool {
    name.iter().all(|&c| (b'!'..=b'~').contains(&c))
}

fn hello(shared: &Shared, session: &mut Session, a: &[Bytes]) -> CmdResult {
    if a.len() >= 2 {
        let Ok(v) = parse_i64(&a[1]) else {
            return Err(usage("Protocol version is not an integer or out of range"));
        };
        if v != 2 {
            return Err(other("NOPROTO only RESP2 is supported"));
        }
    }
    let mut i = 2;
    let mut name = None;
    while i < a.len() {
        if eq_ic(&a[i], "auth") && i + 2 < a.len() {
            check_auth(shared, session, Some(&a[i + 1]), &a[i + 2])?;
            i += 3;
        } else if eq_ic(&a[i], "setname") && i + 1 < a.len() {
            name = Some(a[i + 1].clone());
            i += 2;
        } else {
            return Err(usage(format!(
                "Syntax error in HELLO option '{}'",
                lossy(&a[i], 128)
            )));
        }
    }
    if !session.authenticated {
        return Err(CmdError {
            kind: ErrorKind::Auth,
            text: "NOAUTH HELLO must be called with the client already authenticated, \
                   otherwise the HELLO <proto> AUTH <user> <pass> option can be used to \
                   authenticate the client and select the RESP protocol version at the same time"
                .into(),
        });
    }
    if let Some(n) = name {
        if !valid_client_name(&n) {
            return Err(usage(
                "Client names cannot contain spaces, newlines or special characters.",
            ));
        }
        session.name = (!n.is_empty()).then_some(n);
    }
    let s = |x: &'static str| Reply::Bulk(Bytes::from_static(x.as_bytes()));
    Ok(Reply::Array(vec![
        s("server"),
        s("redis"),
        s("version"),
        s(REDIS_VERSION),
        s("proto"),
        Reply::Int(2),
        s("id"),
        Reply::Int(session.id as i64),
        s("mode"),
        s("standalone"),
        s("role"),
        s("master"),
        s("modules"),
        Reply::Array(vec![]),
    ]))
}

fn client(session: &mut Session, a: &[Bytes]) -> CmdResult {
    let sub = String::from_utf8_lossy(&a[1]).to_ascii_lowercase();
    match (sub.as_str(), a.len()) {
        ("setname", 3) => {
            if !valid_client_name(&a[2]) {
                return Err(usage(
                    "Client names cannot contain spaces, newlines or special characters.",
                ));
            }
            session.name = (!a[2].is_empty()).then(|| a[2].clone());
            Ok(Reply::OK)
        }
        ("getname", 2) => Ok(Reply::opt(session.name.clone())),
        ("id", 2) => Ok(Reply::Int(session.id as i64)),
        ("info" | "list", _) => {
            let name = session
                .name
                .as_deref()
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .unwrap_or_default();
            Ok(Reply::bulk(format!(
                "id={} addr={} name={} db=0 resp=2\n",
                session.id, session.peer, name
            )))
        }
        // Client libraries send these on connect; there is nothing to set.
        ("setinfo", 4) | ("no-evict" | "no-touch", 3) => Ok(Reply::OK),
        ("reply", 3) if eq_ic(&a[2], "on") => Ok(Reply::OK),
        ("setname" | "getname" | "id" | "setinfo" | "no-evict" | "no-touch" | "reply", _) => {
            Err(usage(format!(
                "wrong number of arguments for 'client|{sub}' command"
            )))
        }
        ("help", _) => Ok(Reply::Array(
            [
                "CLIENT <subcommand> [<arg> ...]. Subcommands are:",
                "GETNAME, SETNAME <name>, ID, INFO, LIST, SETINFO <attr> <value>, NO-EVICT, \
                 NO-TOUCH, REPLY ON",
            ]
            .iter()
            .map(|s| Reply::bulk(*s))
            .collect(),
        )),
        _ => Err(unknown_subcommand(&a[1], "client")),
    }
}

fn command_info(c: &CommandSpec) -> Reply {
    Reply::Array(vec![
        Reply::bulk(c.name),
        Reply::Int(i64::from(c.arity)),
        Reply::Array(c.flags.iter().map(|f| Reply::Simple(f)).collect()),
        Reply::Int(i64::from(c.first_key)),
        Reply::Int(i64::from(c.last_key)),
        Reply::Int(i64::from(c.step)),
        Reply::Array(vec![]),
        Reply::Array(vec![]),
        Reply::Array(vec![]),
        Reply::Array(vec![]),
    ])
}

fn command(a: &[Bytes]) -> CmdResult {
    if a.len() == 1 {
        return Ok(Reply::Array(COMMANDS.iter().map(command_info).collect()));
    }
    let sub = String::from_utf8_lossy(&a[1]).to_ascii_lowercase();
    match sub.as_str() {
        "count" => Ok(Reply::Int(COMMANDS.len() as i64)),
        // redis-cli asks for docs to show hints; it works without them.
        "docs" => Ok(Reply::Array(vec![])),
        "list" => Ok(Reply::Array(
            COMMANDS.iter().map(|c| Reply::bulk(c.name)).collect(),
        )),
        "info" => Ok(Reply::Array(
            a[2..]
                .iter()
                .map(|n| {
                    COMMANDS
                        .iter()
                        .find(|c| eq_ic(n, c.name))
                        .map_or(Reply::Nil, command_info)
                })
                .collect(),
        )),
        _ => Err(unknown_subcommand(&a[1], "command")),
    }
}

fn info(shared: &Shared, a: &[Bytes]) -> CmdResult {
    let stats = shared.opts.stats.snapshot();
    let db = &shared.db;
    let sections: Vec<(&str, String)> = vec![
        (
            "server",
            format!(
                "redis_version:{REDIS_VERSION}\r\nredis_mode:standalone\r\nos:{}\r\n\
                 arch_bits:{}\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n\
                 tessera_version:{}\r\ntessera_node_id:{}\r\ntessera_ranges:{}\r\n",
                std::env::consts::OS,
                usize::BITS,
                std::process::id(),
                shared.port,
                shared.started.elapsed().as_secs(),
                env!("CARGO_PKG_VERSION"),
                db.node().id(),
                db.ranges().len(),
            ),
        ),
        (
            "clients",
            format!(
                "connected_clients:{}\r\nmaxclients:{}\r\n",
                stats.connections_open, shared.opts.max_connections
            ),
        ),
        (
            "stats",
            format!(
                "total_connections_received:{}\r\ntotal_commands_processed:{}\r\n\
                 rejected_connections:{}\r\ntotal_error_replies:{}\r\n\
                 tessera_protocol_errors:{}\r\ntessera_store_errors:{}\r\n",
                stats.connections_accepted,
                stats.commands,
                stats.connections_refused,
                stats.errors_auth
                    + stats.errors_unknown_command
                    + stats.errors_usage
                    + stats.errors_store
                    + stats.errors_other,
                stats.errors_protocol,
                stats.errors_store,
            ),
        ),
        (
            "persistence",
            "loading:0\r\naof_enabled:0\r\ntessera_durability:raft-wal-fsync\r\n".into(),
        ),
        (
            "replication",
            "role:master\r\nconnected_slaves:0\r\n".into(),
        ),
        ("keyspace", String::new()),
    ];
    let wanted: Vec<String> = a[1..]
        .iter()
        .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase())
        .collect();
    let all = wanted.is_empty()
        || wanted
            .iter()
            .any(|w| w == "all" || w == "everything" || w == "default");
    let mut text = String::new();
    for (name, body) in sections {
        if all || wanted.iter().any(|w| w == name) {
            if !text.is_empty() {
                text.push_str("\r\n");
            }
            let mut title = name.to_string();
            title[..1].make_ascii_uppercase();
            text.push_str(&format!("# {title}\r\n{body}"));
        }
    }
    Ok(Reply::bulk(text))
}

fn config(shared: &Shared, a: &[Bytes]) -> CmdResult {
    let sub = String::from_utf8_lossy(&a[1]).to_ascii_lowercase();
    match sub.as_str() {
        "get" if a.len() >= 3 => {
            let params = [
                ("save", String::new()),
                ("appendonly", "no".to_string()),
                ("databases", "1".to_string()),
                ("maxmemory", "0".to_string()),
                ("timeout", "0".to_string()),
                ("maxclients", shared.opts.max_connections.to_string()),
                (
                    "proto-max-bulk-len",
                    shared.opts.max_request_bytes.to_string(),
                ),
            ];
            let mut out = Vec::new();
            for (name, value) in params {
                if a[2..]
                    .iter()
                    .any(|p| glob_match(&p.to_ascii_lowercase(), name.as_bytes()))
                {
                    out.push(Reply::bulk(name));
                    out.push(Reply::bulk(value));
                }
            }
            Ok(Reply::Array(out))
        }
        "get" => Err(arity("config|get")),
        "set" | "resetstat" | "rewrite" => Err(other(format!(
            "ERR CONFIG {} is not supported by tessera",
            sub.to_uppercase()
        ))),
        _ => Err(unknown_subcommand(&a[1], "config")),
    }
}

// ----- Key commands -----

async fn set(db: &Db, a: &[Bytes]) -> CmdResult {
    let (mut nx, mut xx, mut get) = (false, false, false);
    let mut i = 3;
    while i < a.len() {
        let o = &a[i];
        if eq_ic(o, "nx") && !xx {
            nx = true;
        } else if eq_ic(o, "xx") && !nx {
            xx = true;
        } else if eq_ic(o, "get") {
            get = true;
        } else if ["ex", "px", "exat", "pxat", "keepttl"]
            .iter()
            .any(|x| eq_ic(o, x))
        {
            return Err(other("ERR expiry is not supported"));
        } else {
            return Err(syntax());
        }
        i += 1;
    }
    let (key, value) = (a[1].clone(), a[2].clone());
    if !nx && !xx && !get {
        db.put(key, value).await?;
        return Ok(Reply::OK);
    }
    let cond = if nx {
        PutCond::IfAbsent
    } else if xx {
        PutCond::IfPresent
    } else {
        PutCond::Always
    };
    let (written, old) = db.put_if(key, value, cond, get).await?;
    Ok(if get {
        Reply::opt(old)
    } else if written {
        Reply::OK
    } else {
        Reply::Nil
    })
}

async fn append(db: &Db, a: &[Bytes]) -> CmdResult {
    let cmd = Command::Append {
        key: a[1].clone(),
        value: a[2].clone(),
    };
    match db.write(&a[1], cmd).await? {
        ApplyResult::Int(n) => Ok(Reply::Int(n)),
        other => Err(DbError::Protocol(format!("APPEND answered {other:?}")).into()),
    }
}

/// The read-only key commands (GET, STRLEN, EXISTS, MGET), whose arity has
/// been checked; `name` is lower case. They need no session, so a pipeline
/// runs several at once.
pub(crate) async fn read(db: &Db, name: &str, a: &[Bytes]) -> CmdResult {
    match name {
        "get" => Ok(Reply::opt(db.get(&a[1]).await?)),
        "strlen" => Ok(Reply::Int(
            db.get(&a[1]).await?.map_or(0, |v| v.len() as i64),
        )),
        "exists" => exists(db, a).await,
        "mget" => mget(db, a).await,
        _ => Err(other(format!("ERR {name} is not a read"))),
    }
}

async fn del(db: &Db, a: &[Bytes]) -> CmdResult {
    let mut n = 0;
    for k in &a[1..] {
        n += i64::from(db.delete(k.clone()).await?);
    }
    Ok(Reply::Int(n))
}

async fn exists(db: &Db, a: &[Bytes]) -> CmdResult {
    let mut n = 0;
    for k in &a[1..] {
        n += i64::from(db.get(k).await?.is_some());
    }
    Ok(Reply::Int(n))
}

async fn mget(db: &Db, a: &[Bytes]) -> CmdResult {
    let mut out = Vec::with_capacity(a.len() - 1);
    for k in &a[1..] {
        out.push(Reply::opt(db.get(k).await?));
    }
    Ok(Reply::Array(out))
}

async fn mset(db: &Db, a: &[Bytes]) -> CmdResult {
    if a.len() % 2 == 0 {
        return Err(arity("mset"));
    }
    let ops = a[1..]
        .chunks(2)
        .map(|kv| BatchOp::Put {
            key: kv[0].clone(),
            value: kv[1].clone(),
        })
        .collect();
    write_reply(db.batch(ops).await.as_ref())
}

/// The reply to a plain write (SET key value, MSET) from its batch's outcome.
pub(crate) fn write_reply(outcome: Result<&(), &DbError>) -> CmdResult {
    match outcome {
        Ok(()) => Ok(Reply::OK),
        // Only an MSET can span ranges (a SET has one key).
        Err(DbError::CrossRange { .. }) => Err(other(
            "ERR MSET keys span ranges; atomic only within one range",
        )),
        Err(e) => Err(e.into()),
    }
}

async fn incr(db: &Db, key: &Bytes, delta: i64) -> CmdResult {
    Ok(Reply::Int(db.increment(key.clone(), delta).await?))
}

async fn scan(shared: &Shared, a: &[Bytes]) -> CmdResult {
    let cursor = std::str::from_utf8(&a[1])
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| usage("invalid cursor"))?;
    let mut pattern: Option<Bytes> = None;
    let mut count = 10usize;
    let mut only_strings = true;
    let mut i = 2;
    while i < a.len() {
        if i + 1 >= a.len() {
            return Err(syntax());
        }
        let v = &a[i + 1];
        if eq_ic(&a[i], "match") {
            pattern = Some(v.clone());
        } else if eq_ic(&a[i], "count") {
            let n = parse_i64(v)?;
            if n < 1 {
                return Err(syntax());
            }
            count = (n as u64).min(shared.opts.scan_count_max as u64) as usize;
        } else if eq_ic(&a[i], "type") {
            only_strings = eq_ic(v, "string");
        } else {
            return Err(syntax());
        }
        i += 2;
    }
    let start = shared
        .cursors
        .resume(cursor)
        .ok_or_else(|| usage("invalid cursor"))?;
    let found = shared.db.scan_keys(&start, b"", count).await?;
    let next = match found.last() {
        Some(last) if found.len() >= count => shared.cursors.issue(key_after(last)),
        _ => 0,
    };
    let keys = found
        .into_iter()
        .filter(|k| only_strings && pattern.as_ref().is_none_or(|p| glob_match(p, k)))
        .map(Reply::Bulk)
        .collect();
    Ok(Reply::Array(vec![
        Reply::bulk(next.to_string()),
        Reply::Array(keys),
    ]))
}

/// Keys counted per scan while counting all of them.
const DBSIZE_PAGE: usize = 10_000;

/// Counts every key by scanning all ranges' keys (not their values), a page
/// at a time: linear in the number of keys.
async fn dbsize(db: &Db) -> CmdResult {
    let mut n = 0i64;
    let mut from = Bytes::new();
    loop {
        let page = db.scan_keys(&from, b"", DBSIZE_PAGE).await?;
        n += page.len() as i64;
        match page.last() {
            Some(last) if page.len() == DBSIZE_PAGE => from = key_after(last),
            _ => return Ok(Reply::Int(n)),
        }
    }
}
