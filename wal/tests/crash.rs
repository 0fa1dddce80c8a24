//! Crash test with real processes: a child appends with sync and reports every
//! acknowledged write; the parent SIGKILLs it at random moments, reopens the WAL
//! and checks that every acknowledged record is there and intact and that
//! nothing it serves is corrupt. `TESSERA_WAL_CRASH_ITERS` sets the number of
//! kills (default 50).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tessera_wal::{Config, Wal};

mod common;
use common::crash_data::entry_data;

#[derive(Default, Debug, Clone, Copy)]
struct Acked {
    last: u64,
    compacted: u64,
}

#[test]
fn sigkill_never_loses_acknowledged_records() {
    let iters: u64 = std::env::var("TESSERA_WAL_CRASH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = env!("CARGO_BIN_EXE_wal-crash-child");
    let mut acked: BTreeMap<u64, Acked> = BTreeMap::new();
    let mut rng = 0x1234_5678_9abc_def1u64;
    let started = Instant::now();
    let mut total_acks = 0u64;
    let mut torn = 0;
    for it in 0..iters {
        let mut child = Command::new(exe)
            .arg(dir.path())
            .arg(it.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let stdout = child.stdout.take().expect("stdout");
        let l2 = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => l2.lock().expect("lock").push(l),
                    Err(_) => break,
                }
            }
        });
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(30 + rng % 150));
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("wait");
        reader.join().expect("reader");
        if let Some(code) = status.code() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            panic!("child exited by itself with {code}: {err}");
        }
        // Only whole lines count: a line cut by the kill was never fully reported.
        for l in lines.lock().expect("lock").iter() {
            let f: Vec<u64> = l
                .split(' ')
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            match (l.split(' ').next(), f.as_slice()) {
                (Some("A"), [g, _first, last]) => {
                    let a = acked.entry(*g).or_default();
                    a.last = a.last.max(*last);
                    total_acks += 1;
                }
                (Some("C"), [g, c]) => {
                    let a = acked.entry(*g).or_default();
                    a.compacted = a.compacted.max(*c);
                }
                _ => {}
            }
        }
        let (wal, report) = Wal::open(dir.path(), Config::default())
            .unwrap_or_else(|e| panic!("iteration {it}: reopen failed: {e}"));
        torn += report.torn_tail.is_some() as u32;
        for (&g, a) in &acked {
            let first = wal.first_index(g).expect("group known");
            let last = wal.last_index(g).expect("group known");
            assert!(
                last >= a.last,
                "iteration {it}: group {g} lost acked {} (last {last})",
                a.last
            );
            assert!(
                first > a.compacted,
                "group {g}: acked compaction {} lost",
                a.compacted
            );
            // Everything served, acknowledged or not, is intact.
            let es = wal.entries(g, first, last + 1, usize::MAX).expect("read");
            assert_eq!(es.len() as u64, last + 1 - first);
            for e in es {
                assert_eq!(
                    &e.data[..],
                    &entry_data(g, e.index)[..],
                    "group {g} index {}",
                    e.index
                );
            }
        }
        wal.close().expect("close");
    }
    assert!(
        total_acks > iters * 5,
        "the child acknowledged too little: {total_acks}"
    );
    eprintln!(
        "{iters} kills, {total_acks} acknowledged writes, {torn} torn tails, {:?}",
        started.elapsed()
    );
}
