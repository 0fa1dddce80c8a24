//! Waking waiters: many threads, blocking and async, across many writer rounds,
//! small rounds woken on the writer thread and large ones on the completer
//! thread. Every ticket must resolve (a lost wake-up hangs a waiter forever,
//! which the watchdog turns into a failure) and every entry must read back.
//! Completion callbacks (`Ticket::on_done`) run once per registration.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::mpsc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::Duration;

use bytes::Bytes;
use tessera_wal::{Config, Entry, LogBatch, Wal};

const THREADS: u64 = 24;
const ASYNC_THREADS: u64 = 4;
const WRITES: u64 = 200;
/// Entries this large make a round exceed the inline-wake limit, so its
/// waiters are woken by the completer thread.
const LARGE: usize = 200 << 10;

fn data(group: u64, index: u64) -> Vec<u8> {
    let len = if group == 0 && index % 10 == 0 {
        LARGE
    } else {
        64
    };
    (0..len)
        .map(|i| (group as usize * 31 + index as usize * 7 + i) as u8)
        .collect()
}

fn batch(group: u64, index: u64) -> LogBatch {
    let mut b = LogBatch::new();
    b.add_entries(
        group,
        vec![Entry {
            index,
            term: 1,
            data: Bytes::from(data(group, index)),
        }],
    )
    .expect("entries");
    b
}

struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `f` to completion on this thread, parking between polls.
fn block_on<F: Future>(f: F) -> F::Output {
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => thread::park(),
        }
    }
}

/// Runs `write(wal, group)` on a thread per group and waits for them all. A
/// thread still running after two minutes fails the test: the whole test
/// takes about a second, and only a waiter that is never woken takes that long.
fn on_threads(wal: &Arc<Wal>, groups: std::ops::RangeInclusive<u64>, write: fn(&Wal, u64)) {
    let (done_tx, done_rx) = mpsc::channel();
    let n = groups.clone().count();
    for group in groups {
        let (wal, done_tx) = (wal.clone(), done_tx.clone());
        thread::spawn(move || {
            write(&wal, group);
            let _ = done_tx.send(());
        });
    }
    for _ in 0..n {
        done_rx
            .recv_timeout(Duration::from_secs(120))
            .expect("a writer thread never saw its ticket resolve");
    }
}

fn open(config: Config) -> (tempfile::TempDir, Arc<Wal>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = Wal::open(dir.path(), config).expect("open");
    (dir, Arc::new(wal))
}

fn run(sync: bool) {
    let (_dir, wal) = open(Config {
        sync,
        segment_bytes: 16 << 20,
        ..Config::default()
    });
    on_threads(&wal, 0..=THREADS - 1, |wal, group| {
        for index in 1..=WRITES {
            let ticket = wal.submit(batch(group, index));
            let r = if group < ASYNC_THREADS {
                block_on(ticket)
            } else {
                ticket.wait()
            };
            r.expect("durable");
        }
    });
    for group in 0..THREADS {
        assert_eq!(wal.last_index(group), Some(WRITES));
        let es = wal.entries(group, 1, WRITES + 1, usize::MAX).expect("read");
        assert_eq!(es.len() as u64, WRITES);
        for e in es {
            assert_eq!(&e.data[..], &data(group, e.index)[..], "group {group}");
        }
    }
    let s = wal.stats();
    assert_eq!(s.requests, THREADS * WRITES);
    assert_eq!(s.syncs > 0, sync, "{s:?}");
}

#[test]
fn every_waiter_wakes_without_sync() {
    run(false);
}

#[test]
fn every_waiter_wakes_with_sync() {
    run(true);
}

#[test]
fn callbacks_run_once_per_ticket_with_the_outcome() {
    let (_dir, wal) = open(Config {
        sync: false,
        ..Config::default()
    });
    let (tx, rx) = mpsc::channel();
    for index in 1..=100u64 {
        let ticket = wal.submit(batch(1, index));
        // A clone registering too: both run.
        let (a, b) = (tx.clone(), tx.clone());
        ticket
            .clone()
            .on_done(move |r| a.send((index, r.is_ok())).expect("send"));
        ticket.on_done(move |r| b.send((index, r.is_ok())).expect("send"));
    }
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..200 {
        let (index, ok) = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("a callback never ran");
        assert!(ok, "entry {index} failed");
        *seen.entry(index).or_insert(0) += 1;
    }
    assert!(
        seen.values().all(|&n| n == 2) && seen.len() == 100,
        "{seen:?}"
    );
    // A ticket already resolved runs its callback at once, here: an invalid
    // append (a gap after index 100) fails.
    let bad = wal.submit(batch(1, 300));
    let _ = bad.clone().wait();
    let (tx, rx) = mpsc::channel();
    bad.on_done(move |r| tx.send(r.is_err()).expect("send"));
    assert_eq!(rx.try_recv(), Ok(true));
}

/// Drains capped at about one request: tickets often land a round or more
/// after the one their waiter guessed, and the last writes of each thread
/// have no later traffic to wake them by accident.
#[test]
fn every_waiter_wakes_with_one_request_per_round() {
    for _ in 0..5 {
        let (_dir, wal) = open(Config {
            sync: false,
            batch_bytes_max: 1,
            ..Config::default()
        });
        on_threads(&wal, 1..=16, |wal, group| {
            for index in 1..=50 {
                wal.submit(batch(group, index)).wait().expect("durable");
            }
        });
    }
}

#[test]
fn a_panicking_callback_does_not_strand_the_round() {
    let (_dir, wal) = open(Config {
        sync: false,
        ..Config::default()
    });
    // Many writers, so that panicking callbacks share rounds with waiters.
    on_threads(&wal, 1..=8, |wal, group| {
        for index in 1..=50 {
            let t = wal.submit(batch(group, index));
            if index % 5 == 0 {
                // A ticket already resolved runs the callback here, at once:
                // that panic is this thread's to catch.
                let t = t.clone();
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                    t.on_done(|_| panic!("a callback that panics (expected)"))
                }));
            }
            t.wait().expect("durable");
        }
    });
    // And the WAL still works.
    wal.write(batch(1, 51)).expect("write after the panics");
}
