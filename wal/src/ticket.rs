//! Tickets: what a caller holds until its batch is durable.
//!
//! A blocking waiter sleeps on its WAL's [`Bell`], not on its own ticket: the
//! writer resolves every ticket of a round, then rings the bell once, which wakes
//! that round's sleepers with one `futex` call (Linux only, like the rest of
//! the crate's durability code). Waking each ticket's waiter with
//! its own call cost about 8 µs per waiter on this machine's 2 vCPUs, on the
//! writer's critical path (see docs/wal.md, "Waking waiters").

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use crate::error::{Result, WalError};

/// Where blocking waiters of one WAL sleep. The writer numbers its rounds (each
/// drain of the queue) from 1 and stamps every ticket it takes with its round; a
/// round's tickets are resolved, then the bell word of its parity is rung. A
/// sleeper listens on the word of its ticket's round, so that finishing round k
/// does not wake the waiters of round k+1 (at 64 writers, half of them; waking
/// them all measured 12% slower than one call per waiter).
/// Aligned to its own cache lines: every ticket holds an `Arc` of it, and the
/// reference counts the submitters bump must not share a line with the words
/// the writer and the sleepers use.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Bell {
    /// Futex words, by round parity; bumped by every ring.
    words: [AtomicU32; 2],
    /// The last round whose queue drain is over: every ticket of it is stamped.
    sealed: AtomicU64,
    /// Threads inside `wait_until`, so that a ring with nobody asleep (the
    /// engine only `.await`s tickets) makes no system call.
    sleepers: AtomicU32,
    /// Set before any ticket is failed with `WriterGone`: the WAL refuses
    /// work from then on, even before the dying writer poisons it.
    gone: AtomicBool,
}

impl Bell {
    /// True once a ticket was failed because the writer went away.
    pub fn writer_gone(&self) -> bool {
        self.gone.load(Ordering::SeqCst)
    }

    /// Marks `round`'s drain over; called after stamping its tickets.
    pub fn seal(&self, round: u64) {
        self.sealed.store(round, Ordering::SeqCst);
    }

    /// Wakes the sleepers of rounds of `round`'s parity, after the tickets of
    /// `round` are resolved.
    pub fn ring(&self, round: u64) {
        let word = &self.words[(round % 2) as usize];
        // SeqCst pairs with `wait_until`: either the sleeper registers before
        // this load (and is woken), or it reads the bumped word and does not
        // sleep.
        word.fetch_add(1, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            crate::futex::wake(word, i32::MAX);
        }
    }

    /// Blocks until `c` is resolved. `c`'s resolution happens before the ring
    /// of its round.
    fn wait_until(&self, c: &Completion) {
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        loop {
            let mut round = c.round.load(Ordering::SeqCst);
            let mut guessed_after = None;
            if round == UNSTAMPED {
                // Not taken yet. Every ticket of round `sealed` is stamped, so
                // this one will be in a later round: listen for the next one.
                // If it lands further on, that round's ring wakes us to look
                // again (every round rings once its tickets are resolved).
                let sealed = self.sealed.load(Ordering::SeqCst);
                round = c.round.load(Ordering::SeqCst);
                if round == UNSTAMPED {
                    round = sealed + 1;
                    guessed_after = Some(sealed);
                }
            }
            let word = &self.words[(round % 2) as usize];
            let seen = word.load(Ordering::SeqCst);
            if c.done.load(Ordering::SeqCst) {
                break;
            }
            // A guess holds only while round `sealed + 1` has not sealed: once
            // it has, `seen` may already count its ring, and the ticket is in a
            // later round, rung on the other word. While `sealed` is unchanged
            // here, that seal (and so that ring) comes after `seen` was read,
            // and the wait below cannot miss it.
            if let Some(sealed) = guessed_after
                && (self.sealed.load(Ordering::SeqCst) != sealed
                    || c.round.load(Ordering::SeqCst) != UNSTAMPED)
            {
                continue;
            }
            crate::futex::wait(word, seen, None);
        }
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `Completion::round` of a ticket the writer has not taken yet.
const UNSTAMPED: u64 = 0;

/// Run by the thread that resolves a ticket; see [`Ticket::on_done`].
type Callback = Box<dyn FnOnce(Result<()>) + Send>;

#[derive(Default)]
struct State {
    result: Option<Result<()>>,
    waker: Option<Waker>,
    callback: Option<Callback>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("result", &self.result)
            .field("waker", &self.waker)
            .field("callback", &self.callback.is_some())
            .finish()
    }
}

/// The writer's side of a ticket.
#[derive(Debug)]
pub(crate) struct Completion {
    state: Mutex<State>,
    /// `state.result` is set; read without the lock by sleepers.
    done: AtomicBool,
    /// The writer round that took this ticket ([`UNSTAMPED`] before).
    round: AtomicU64,
    bell: Arc<Bell>,
}

impl Completion {
    /// Resolves the ticket and wakes an async waiter, but not a blocking one:
    /// the caller rings the bell once after resolving a round's tickets.
    pub fn resolve(&self, result: Result<()>) {
        let (waker, callback) = {
            let mut s = self.state.lock();
            debug_assert!(s.result.is_none(), "ticket completed twice");
            let callback = s.callback.take().map(|f| (f, result.clone()));
            s.result = Some(result);
            self.done.store(true, Ordering::SeqCst);
            (s.waker.take(), callback)
        };
        if let Some(w) = waker {
            w.wake();
        }
        if let Some((f, result)) = callback {
            run_callback(f, result);
        }
    }

    /// Resolves the ticket and rings its bell. Called exactly once per ticket,
    /// by the writer side, after the batch is durable (or failed).
    pub fn complete(&self, result: Result<()>) {
        self.resolve(result);
        match self.round.load(Ordering::SeqCst) {
            UNSTAMPED => (0..2).for_each(|r| self.bell.ring(r)),
            r => self.bell.ring(r),
        }
    }

    /// Records the writer round that took this ticket.
    pub fn stamp(&self, round: u64) {
        debug_assert_ne!(round, UNSTAMPED);
        self.round.store(round, Ordering::SeqCst);
    }
}

/// The WAL's side of one ticket: resolving it consumes it. One dropped
/// unresolved (the writer thread panicked mid-round, or the WAL went away with
/// the request still queued) resolves its ticket with
/// [`WalError::WriterGone`], so that no waiter sleeps forever.
#[derive(Debug)]
pub(crate) struct Resolver(Arc<Completion>);

impl Resolver {
    /// See [`Completion::stamp`].
    pub fn stamp(&self, round: u64) {
        self.0.stamp(round);
    }

    /// See [`Completion::complete`].
    pub fn complete(self, result: Result<()>) {
        self.0.complete(result);
    }

    /// See [`Completion::resolve`]: the caller rings the bell.
    fn resolve(self, result: Result<()>) {
        self.0.resolve(result);
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        if !self.0.done.load(Ordering::SeqCst) {
            // Refuse new work first: a caller that sees this failure must not
            // get its next submit queued behind a writer that is gone.
            self.0.bell.gone.store(true, Ordering::SeqCst);
            self.0.complete(Err(WalError::WriterGone));
        }
    }
}

/// Runs a caller's callback on a WAL thread. A panic in it is contained (the
/// panic hook has reported it): unwinding through the writer would leave the
/// rest of the round's tickets unresolved and their waiters asleep for good.
fn run_callback(f: Callback, result: Result<()>) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(result)));
}

/// Resolves the tickets of writer round `round`, then rings its bell once.
pub(crate) fn complete_all(
    bell: &Bell,
    round: u64,
    items: impl IntoIterator<Item = (Resolver, Result<()>)>,
) {
    for (c, r) in items {
        debug_assert!(std::ptr::eq(&*c.0.bell, bell), "a ticket of another WAL");
        c.resolve(r);
    }
    bell.ring(round);
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
    pub(crate) fn new(bell: &Arc<Bell>) -> (Ticket, Resolver) {
        let c = Arc::new(Completion {
            state: Mutex::default(),
            done: AtomicBool::new(false),
            round: AtomicU64::new(UNSTAMPED),
            bell: bell.clone(),
        });
        (Ticket { inner: c.clone() }, Resolver(c))
    }

    pub(crate) fn resolved(result: Result<()>) -> Ticket {
        let (t, c) = Ticket::new(&Arc::default());
        c.resolve(result);
        t
    }

    /// Blocks until the batch is durable or failed.
    pub fn wait(&self) -> Result<()> {
        let c = &self.inner;
        if !c.done.load(Ordering::SeqCst) {
            c.bell.wait_until(c);
        }
        match &c.state.lock().result {
            Some(r) => r.clone(),
            None => unreachable!("a done ticket holds its result"),
        }
    }

    /// Runs `f` with the outcome once it is known: at once on this thread if
    /// it already is, otherwise on the WAL's thread that resolves the ticket,
    /// right after the batch is durable (or failed). `f` must be quick and must
    /// not block (it delays the waiters of the same round), and must not
    /// submit to or wait on the same WAL (the writer would wait on itself):
    /// send the outcome on a channel, say. A panic in it is caught and the
    /// WAL goes on. This spares an async caller the task that would
    /// `.await` the ticket only to pass its outcome on.
    pub fn on_done(self, f: impl FnOnce(Result<()>) + Send + 'static) {
        let mut s = self.inner.state.lock();
        match &s.result {
            Some(r) => {
                let r = r.clone();
                drop(s);
                f(r);
            }
            // A clone of the ticket may have registered one already: both run.
            None => {
                s.callback = Some(match s.callback.take() {
                    None => Box::new(f),
                    Some(earlier) => Box::new(move |r: Result<()>| {
                        run_callback(earlier, r.clone());
                        f(r);
                    }),
                })
            }
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
