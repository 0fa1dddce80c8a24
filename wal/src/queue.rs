//! The request queue between submitters and the writer thread: a bounded
//! crossbeam channel for the requests (and for backpressure), and a futex
//! doorbell that wakes the writer only when it has something to do.
//!
//! Why not the channel's own blocking receive: while the writer lingers for a
//! fuller round (see [`crate::config::Linger`]), every request that arrived
//! woke it, and before it parked again crossbeam's receiver spun and called
//! `sched_yield`, which on 2 cores shared with the store loops, the QUIC tasks
//! and the clients hands the core away each time. Here a lingering writer
//! sleeps until enough entries are queued or its deadline passes, and an idle
//! one until the first request: a submitter rings only when its request is
//! what the writer waits for. The engine's puts/s rose 4-30% with it
//! (docs/wal.md, "Waking the writer").

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, SendError, Sender, TryRecvError};

use crate::futex;

/// Where the writer sleeps, and what it waits for.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Doorbell {
    /// Futex word, bumped by every wake-up call.
    word: AtomicU32,
    /// Weight queued that wakes the writer; 0 while it is not waiting.
    want: AtomicI64,
    /// Weight of the requests sent and not yet received. Briefly negative
    /// when the writer receives a request before its sender counts it.
    queued: AtomicI64,
    /// The sending end is gone.
    closed: AtomicBool,
}

impl Doorbell {
    fn wake(&self) {
        self.word.fetch_add(1, Ordering::SeqCst);
        futex::wake(&self.word, 1);
    }
}

/// A bounded queue with `depth` slots.
pub(crate) fn bounded<T>(depth: usize) -> (Tx<T>, Rx<T>) {
    let (tx, rx) = crossbeam_channel::bounded(depth);
    let door = Arc::new(Doorbell::default());
    (
        Tx {
            tx: Some(tx),
            door: door.clone(),
        },
        Rx { rx, door },
    )
}

/// The submitters' end. Dropping it closes the queue and wakes the writer.
pub(crate) struct Tx<T> {
    tx: Option<Sender<(T, i64)>>,
    door: Arc<Doorbell>,
}

impl<T> Tx<T> {
    /// Queues `m` of `weight` (its entries; at least 1), blocking while the
    /// queue is full; `Err` once the writer is gone.
    pub fn send(&self, m: T, weight: usize) -> Result<(), SendError<T>> {
        let Some(tx) = &self.tx else {
            return Err(SendError(m));
        };
        let w = weight.clamp(1, i64::MAX as usize) as i64;
        tx.send((m, w)).map_err(|SendError((m, _))| SendError(m))?;
        // SeqCst pairs with `Rx::wait_for`: either the writer's look at
        // `queued` after publishing `want` counts this request, or this load
        // sees what it wants.
        let queued = self.door.queued.fetch_add(w, Ordering::SeqCst) + w;
        let want = self.door.want.load(Ordering::SeqCst);
        if want > 0
            && queued >= want
            && self
                .door
                .want
                .compare_exchange(want, 0, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            self.door.wake();
        }
        Ok(())
    }
}

impl<T> std::fmt::Debug for Tx<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("open", &self.tx.is_some())
            .field("queued", &self.door.queued.load(Ordering::Relaxed))
            .finish()
    }
}

impl<T> Drop for Tx<T> {
    fn drop(&mut self) {
        drop(self.tx.take());
        self.door.closed.store(true, Ordering::SeqCst);
        self.door.want.store(0, Ordering::SeqCst);
        self.door.wake();
    }
}

/// The writer's end. Clones share one doorbell: only one of them may wait at
/// a time (the writer, or the dying writer's drain after it).
pub(crate) struct Rx<T> {
    rx: Receiver<(T, i64)>,
    door: Arc<Doorbell>,
}

impl<T> Clone for Rx<T> {
    fn clone(&self) -> Self {
        Rx {
            rx: self.rx.clone(),
            door: self.door.clone(),
        }
    }
}

/// Why [`Rx::wait_for`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woke {
    /// What was asked for may be queued (look with `try_recv`).
    Ready,
    /// The deadline passed first.
    Timeout,
    /// The queue is closed.
    Closed,
}

impl<T> Rx<T> {
    /// The next request, waiting for one; `None` once the queue is closed and
    /// empty.
    pub fn recv(&self) -> Option<T> {
        loop {
            match self.try_recv() {
                Ok(m) => return Some(m),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {}
            }
            if self.wait_for(1, None) == Woke::Closed && self.rx.is_empty() {
                return None;
            }
        }
    }

    /// The next request if there is one now.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        let (m, w) = self.rx.try_recv()?;
        self.door.queued.fetch_sub(w, Ordering::Relaxed);
        Ok(m)
    }

    /// Sleeps until requests of at least `weight` are queued, `deadline`
    /// passes, or the queue closes. May return `Ready` early.
    pub fn wait_for(&self, weight: usize, deadline: Option<Instant>) -> Woke {
        let door = &*self.door;
        // Clamped: a writer that never ends a linger early asks for usize::MAX.
        let want = weight.clamp(1, i64::MAX as usize) as i64;
        loop {
            if self.rx.is_empty() && door.closed.load(Ordering::SeqCst) {
                return Woke::Closed;
            }
            let timeout = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Woke::Timeout,
                },
            };
            // Read the word before publishing `want`: a ring that sees it
            // bumps the word afterwards, so the wait below either sees the
            // bump and returns at once, or is woken by the call.
            let seen = door.word.load(Ordering::SeqCst);
            door.want.store(want, Ordering::SeqCst);
            if door.queued.load(Ordering::SeqCst) >= want || door.closed.load(Ordering::SeqCst) {
                door.want.store(0, Ordering::SeqCst);
                return Woke::Ready;
            }
            futex::wait(&door.word, seen, timeout);
            door.want.store(0, Ordering::SeqCst);
            if door.queued.load(Ordering::SeqCst) >= want {
                return Woke::Ready;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn every_request_arrives_and_close_wakes_the_receiver() {
        let (tx, rx) = bounded::<u64>(8);
        let consumer = std::thread::spawn(move || {
            let (mut n, mut sum) = (0u64, 0u64);
            while let Some(v) = rx.recv() {
                sum += v;
                n += 1;
            }
            (n, sum)
        });
        let tx = Arc::new(tx);
        let producers: Vec<_> = (0..4u64)
            .map(|p| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u64 {
                        tx.send(p * 1_000_000 + i, 1).expect("queue open");
                        if i % 1000 == 0 {
                            // Let the receiver fall asleep now and then.
                            std::thread::sleep(Duration::from_micros(200));
                        }
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().expect("producer");
        }
        drop(tx);
        let (n, sum) = consumer.join().expect("consumer");
        let want: u64 = (0..4u64)
            .map(|p| (0..20_000u64).map(|i| p * 1_000_000 + i).sum::<u64>())
            .sum();
        assert_eq!((n, sum), (80_000, want));
    }

    #[test]
    fn a_waiter_for_more_sleeps_through_smaller_sends_until_enough() {
        let (tx, rx) = bounded::<u8>(64);
        let sender = std::thread::spawn(move || {
            for _ in 0..5 {
                std::thread::sleep(Duration::from_millis(2));
                tx.send(1, 2).expect("queue open");
            }
            tx
        });
        // Waits for weight 10: the fifth send of weight 2 wakes it.
        let r = rx.wait_for(10, Some(Instant::now() + Duration::from_secs(60)));
        assert_eq!(r, Woke::Ready);
        let got = std::iter::from_fn(|| rx.try_recv().ok()).count();
        assert_eq!(got, 5);
        drop(sender.join());
    }

    #[test]
    fn a_deadline_passes_and_a_close_is_seen() {
        let (tx, rx) = bounded::<u8>(4);
        let start = Instant::now();
        tx.send(1, 1).expect("queue open");
        assert_eq!(
            rx.wait_for(5, Some(start + Duration::from_millis(20))),
            Woke::Timeout
        );
        assert!(start.elapsed() >= Duration::from_millis(20));
        // A writer that never ends its linger early asks for everything.
        assert_eq!(
            rx.wait_for(usize::MAX, Some(Instant::now() + Duration::from_millis(5))),
            Woke::Timeout
        );
        assert_eq!(rx.try_recv().ok(), Some(1));
        let closer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            drop(tx);
        });
        assert_eq!(rx.wait_for(1, None), Woke::Closed);
        assert_eq!(rx.recv(), None);
        closer.join().expect("closer");
    }
}
