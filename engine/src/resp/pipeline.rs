//! Executing a pipeline's requests together, with the replies in-order
//! execution gives.
//!
//! A connection decodes the complete requests it has read and cuts them, from
//! the front, into runs ([`next_run`]):
//!
//! - **Writes**: plain writes, `SET key value` (no options) and `MSET` whose
//!   keys are in one range. Their ops are grouped by range, each group keeping
//!   the pipeline's order, and each group is written as one atomic batch
//!   ([`write_run`]); the groups are in flight at once.
//! - **Reads**: GET, STRLEN, EXISTS, MGET; all in flight at once.
//! - **Alone**: anything else (INCR, SET NX/XX/GET, DEL, AUTH, SCAN, connection
//!   commands, unknown or malformed commands): a run of one, as before.
//!
//! Why the pipelining client gets exactly the replies in-order execution gives:
//!
//! - A run starts once every run before it has completed, and the next run
//!   starts once it has completed; so across runs, order is kept.
//! - A plain write answers `+OK` whatever the state it finds, so its reply does
//!   not depend on the other writes of its run. Its effect does not either,
//!   except through later writes of the same key: a key lives in one range, so
//!   every write of a key in the run is in the same group, in pipeline order,
//!   and the batch applies its ops in order: the last write wins, as in order.
//! - A run of reads holds no write, so each read sees the same writes of this
//!   connection as in order: those of the runs before, none of the runs after.
//! - Any other command (a write whose reply or effect depends on the state
//!   it finds, or one that changes the session) is alone. Runs are formed only when the session is authenticated (otherwise
//!   everything is alone and refused as before), and AUTH is alone, so the
//!   session never changes within a run.
//! - Errors: a group's batch is all or nothing, and each of its commands gets
//!   its outcome (`+OK` or the batch's error); other groups are not affected.
//!   In order, the commands of a range that fails would fail one by one.
//!
//! What other clients may see differently: the groups and the reads of a run
//! are concurrent, so another client may observe a write to one range before
//! an earlier write of the same run to another range (or a read of the run
//! may be served before an earlier one), as if this client had spread the
//! run over several connections; and it sees a group's writes all at once.
//! This is the one departure from Redis, which executes a pipeline in order
//! and so also shows its writes to others in order; a client that needs that
//! order across keys waits for a write's reply before sending the next.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;

use crate::DbError;
use crate::range::{BatchOp, RangeId};

/// Commands in one run, at most.
pub const RUN_COMMANDS_MAX: usize = 256;
/// Argument bytes of a run of writes, at most (bounds a Raft entry); a single
/// larger write is a run of its own.
pub const RUN_WRITE_BYTES_MAX: usize = 1 << 20;

/// How the commands of a run are executed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunKind {
    /// Plain writes: one batch per range, the batches at once.
    Writes,
    /// Read-only key commands, all at once.
    Reads,
    /// One command, executed as it always was.
    Alone,
}

/// What kind of run `req` may join. `range_of` names the range of a key.
pub fn kind_of(req: &[Bytes], range_of: impl Fn(&[u8]) -> RangeId) -> RunKind {
    let Some(name) = req.first() else {
        return RunKind::Alone;
    };
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    let n = req.len();
    if is("set") && n == 3 {
        return RunKind::Writes;
    }
    if is("mset") && n >= 3 && n % 2 == 1 {
        let first = range_of(&req[1]);
        if req[3..].iter().step_by(2).all(|k| range_of(k) == first) {
            return RunKind::Writes;
        }
    }
    if ((is("get") || is("strlen")) && n == 2) || ((is("exists") || is("mget")) && n >= 2) {
        return RunKind::Reads;
    }
    RunKind::Alone
}

/// The run at the front of `reqs` (not empty): its kind and how many requests
/// it takes. An `Alone` run takes one.
pub fn next_run(
    reqs: &[Vec<Bytes>],
    authenticated: bool,
    range_of: impl Fn(&[u8]) -> RangeId,
) -> (RunKind, usize) {
    debug_assert!(!reqs.is_empty());
    let Some(first) = reqs.first() else {
        return (RunKind::Alone, 0);
    };
    let kind = if authenticated {
        kind_of(first, &range_of)
    } else {
        RunKind::Alone
    };
    if kind == RunKind::Alone {
        return (kind, 1);
    }
    let (mut len, mut bytes) = (0, 0);
    for req in reqs.iter().take(RUN_COMMANDS_MAX) {
        if kind_of(req, &range_of) != kind {
            break;
        }
        let b: usize = req.iter().map(Bytes::len).sum();
        if kind == RunKind::Writes && len > 0 && bytes + b > RUN_WRITE_BYTES_MAX {
            break;
        }
        len += 1;
        bytes += b;
    }
    (kind, len)
}

/// The ops of a plain write (`SET k v`, `MSET k v ...`).
fn write_ops(req: &[Bytes]) -> impl Iterator<Item = BatchOp> + '_ {
    req.get(1..)
        .unwrap_or_default()
        .chunks_exact(2)
        .map(|kv| BatchOp::Put {
            key: kv[0].clone(),
            value: kv[1].clone(),
        })
}

/// Executes a run of plain writes: one batch per range with the ops in
/// pipeline order, submitted at once. Each command's outcome, in order.
///
/// A batch refused as [`DbError::CrossRange`] wrote nothing (the range split
/// after grouping); its commands are then submitted one at a time, in order.
pub async fn write_run<F, Fut>(
    reqs: &[Vec<Bytes>],
    range_of: impl Fn(&[u8]) -> RangeId,
    submit: F,
) -> Vec<Result<(), Arc<DbError>>>
where
    F: Fn(Vec<BatchOp>) -> Fut,
    Fut: Future<Output = Result<(), DbError>>,
{
    // Commands by range (of their first key), each group in pipeline order.
    let mut groups: Vec<(RangeId, Vec<usize>)> = Vec::new();
    for (i, req) in reqs.iter().enumerate() {
        debug_assert!(
            req.len() >= 3 && req.len() % 2 == 1,
            "not a plain write: {req:?}"
        );
        let Some(key) = req.get(1) else { continue };
        let range = range_of(key);
        match groups.iter_mut().find(|(r, _)| *r == range) {
            Some((_, cmds)) => cmds.push(i),
            None => groups.push((range, vec![i])),
        }
    }
    let submit = &submit;
    let outcomes = join_all(groups.iter().map(|(_, cmds)| async move {
        let batch = cmds.iter().flat_map(|&c| write_ops(&reqs[c])).collect();
        match submit(batch).await {
            Err(DbError::CrossRange { .. }) if cmds.len() > 1 => {
                let mut each = Vec::with_capacity(cmds.len());
                for &c in cmds {
                    let ops = write_ops(&reqs[c]).collect();
                    each.push(submit(ops).await.map_err(Arc::new));
                }
                each
            }
            outcome => vec![outcome.map_err(Arc::new); cmds.len()],
        }
    }))
    .await;
    let mut out = vec![Ok(()); reqs.len()];
    for ((_, cmds), outcome) in groups.iter().zip(outcomes) {
        for (&c, o) in cmds.iter().zip(outcome) {
            out[c] = o;
        }
    }
    out
}

/// Polls all of `futures` at once in the calling task; their outputs in order.
pub async fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in futures.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *out = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}
