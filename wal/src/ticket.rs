//! Tickets: what a caller holds until its batch is durable.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::{Condvar, Mutex};

use crate::error::Result;

#[derive(Debug, Default)]
struct State {
    result: Option<Result<()>>,
    waker: Option<Waker>,
}

/// The writer's side of a ticket.
#[derive(Debug, Default)]
pub(crate) struct Completion {
    state: Mutex<State>,
    cv: Condvar,
}

impl Completion {
    /// Resolves the ticket. Called exactly once, by the writer thread, after the
    /// batch is durable (or failed).
    pub fn complete(&self, result: Result<()>) {
        let waker = {
            let mut s = self.state.lock();
            debug_assert!(s.result.is_none(), "ticket completed twice");
            s.result = Some(result);
            s.waker.take()
        };
        self.cv.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// A claim on the durability of one submitted [`crate::LogBatch`]: resolves to
/// `Ok(())` once every record of it is durable (or written, with `sync = false`),
/// or to the error that stopped it. Wait on it blocking ([`Ticket::wait`]) or
/// `.await` it.
#[derive(Debug, Clone)]
pub struct Ticket {
    inner: Arc<Completion>,
}

impl Ticket {
    pub(crate) fn new() -> (Ticket, Arc<Completion>) {
        let c = Arc::new(Completion::default());
        (Ticket { inner: c.clone() }, c)
    }

    pub(crate) fn resolved(result: Result<()>) -> Ticket {
        let (t, c) = Ticket::new();
        c.complete(result);
        t
    }

    /// Blocks until the batch is durable or failed.
    pub fn wait(&self) -> Result<()> {
        let mut s = self.inner.state.lock();
        loop {
            if let Some(r) = &s.result {
                return r.clone();
            }
            self.inner.cv.wait(&mut s);
        }
    }

    /// The outcome, if known yet.
    pub fn try_result(&self) -> Option<Result<()>> {
        self.inner.state.lock().result.clone()
    }
}

impl Future for Ticket {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let mut s = self.inner.state.lock();
        match &s.result {
            Some(r) => Poll::Ready(r.clone()),
            None => {
                if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    s.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}
