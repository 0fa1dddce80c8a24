//! Request/response calls (forwarded client requests): the callee side.

use std::future::Future;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::NodeId;

/// A call from a peer. Answer with [`IncomingCall::respond`]; dropping it
/// unanswered makes the caller's `call` fail with `CallRefused`.
#[derive(Debug)]
pub struct IncomingCall {
    pub from: NodeId,
    pub request: Bytes,
    reply: oneshot::Sender<Bytes>,
}

impl IncomingCall {
    pub(crate) fn new(from: NodeId, request: Bytes) -> (IncomingCall, oneshot::Receiver<Bytes>) {
        let (reply, rx) = oneshot::channel();
        (
            IncomingCall {
                from,
                request,
                reply,
            },
            rx,
        )
    }

    /// Sends the response. If the caller has gone (timed out, disconnected) the
    /// response is discarded.
    pub fn respond(self, response: Bytes) {
        // The caller may have given up; nothing to do then.
        let _ = self.reply.send(response);
    }
}

/// Registers `handler` for incoming calls: every call is answered by
/// `handler(from, request)` on its own task, so a slow call does not hold up
/// the others. Returns the task draining `calls`.
pub fn spawn_call_handler<F, Fut>(
    mut calls: mpsc::Receiver<IncomingCall>,
    handler: F,
) -> JoinHandle<()>
where
    F: Fn(NodeId, Bytes) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Bytes> + Send + 'static,
{
    tokio::spawn(async move {
        while let Some(call) = calls.recv().await {
            let response = handler(call.from, call.request.clone());
            tokio::spawn(async move { call.respond(response.await) });
        }
    })
}
