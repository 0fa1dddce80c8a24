//! Throughput of the QUIC transport between two endpoints on loopback, against
//! a plain-TCP baseline that uses the same framing (rkyv `Messages` frames
//! behind a length prefix, validated on receipt) in the same run.
//!
//!     cargo run --release -p tessera-transport --bin transport-bench -- [--seconds 3] [--mtu 1452] [--sizes 100,65536]
//!
//! Both ends live in this process, so CPU per GiB (getrusage, user + system)
//! counts sender and receiver together.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{CommandFactory, Parser};
use tessera_transport::codec::{self, Frame};
use tessera_transport::framed_io;
use tessera_transport::{NodeId, QuicTransport, Transport, TransportConfig, bootstrap_cluster};
use tokio::io::AsyncWriteExt;

/// Throughput of the QUIC transport against a plain-TCP baseline with the
/// same framing, two endpoints in this process on loopback.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "transport-bench")]
struct Args {
    /// Measured seconds per run (after a 0.5 s warm-up).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Upper bound for QUIC path-MTU discovery, in bytes of UDP payload
    /// (at least 1200).
    #[arg(long, default_value_t = 1452, value_parser = clap::value_parser!(u16).range(1200..))]
    mtu: u16,
    /// Message sizes in bytes, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = [100, 64 << 10])]
    sizes: Vec<usize>,
}

/// CPU time (user + system) of this process so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the struct we pass, which is zeroed
    // and properly sized; RUSAGE_SELF is always valid.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[derive(Debug, Clone, Copy)]
struct Measured {
    messages_per_s: f64,
    mib_per_s: f64,
    cpu_s_per_gib: f64,
}

/// Counts what the receiver got during the measured window.
#[derive(Debug, Default)]
struct Counter {
    messages: AtomicU64,
    bytes: AtomicU64,
}

/// Waits for warm-up, then measures `seconds` of receiving.
async fn measure(counter: &Counter, seconds: f64) -> Measured {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (m0, b0) = (
        counter.messages.load(Ordering::Relaxed),
        counter.bytes.load(Ordering::Relaxed),
    );
    let (t0, c0) = (Instant::now(), cpu_time());
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let (m1, b1) = (
        counter.messages.load(Ordering::Relaxed),
        counter.bytes.load(Ordering::Relaxed),
    );
    let (elapsed, cpu) = (t0.elapsed().as_secs_f64(), (cpu_time() - c0).as_secs_f64());
    let gib = (b1 - b0) as f64 / f64::from(1u32 << 30);
    Measured {
        messages_per_s: (m1 - m0) as f64 / elapsed,
        mib_per_s: (b1 - b0) as f64 / elapsed / f64::from(1u32 << 20),
        cpu_s_per_gib: if gib > 0.0 { cpu / gib } else { f64::INFINITY },
    }
}

/// Messages handed to `send` per call: about 64 KiB worth, at least one.
fn group(size: usize) -> usize {
    ((64 << 10) / size.max(1)).clamp(1, 1024)
}

async fn bench_quic(size: usize, args: &Args) -> anyhow::Result<Measured> {
    let (_ca, ids) = bootstrap_cluster(&[NodeId(1), NodeId(2)])?;
    let config = TransportConfig {
        mtu_upper_bound_bytes: args.mtu,
        ..TransportConfig::default()
    };
    let loopback: SocketAddr = "127.0.0.1:0".parse()?;
    let (a, _a_in) = QuicTransport::bind(loopback, &ids[0], config.clone())?;
    let (b, mut b_in) = QuicTransport::bind(loopback, &ids[1], config.clone())?;
    a.set_peer_address(NodeId(2), b.local_addr()?)?;
    let a = Arc::new(a);

    let counter = Arc::new(Counter::default());
    let counted = counter.clone();
    let receiver = tokio::spawn(async move {
        while let Some(batch) = b_in.batches.recv().await {
            let bytes: usize = batch.messages.iter().map(Bytes::len).sum();
            counted
                .messages
                .fetch_add(batch.messages.len() as u64, Ordering::Relaxed);
            counted.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let (sender, stopping) = (a.clone(), stop.clone());
    let payload = Bytes::from(vec![0x5a; size]);
    // Keep the queue fed but below its bound, so nothing is dropped.
    let high_water = (config.queue_messages_max / 2)
        .min(config.queue_bytes_max / 2 / size.max(1))
        .max(1);
    let producer = tokio::spawn(async move {
        let mut dropped = 0;
        while !stopping.load(Ordering::Relaxed) {
            sender.queue_below(NodeId(2), high_water).await;
            let batch = vec![payload.clone(); group(size)];
            dropped += sender
                .send(NodeId(2), batch)
                .map(|r| r.dropped)
                .unwrap_or(0);
        }
        dropped
    });
    let result = measure(&counter, args.seconds).await;
    stop.store(true, Ordering::Relaxed);
    let dropped = producer.await?;
    if dropped > 0 {
        eprintln!("note: QUIC producer saw {dropped} messages dropped");
    }
    receiver.abort();
    Ok(result)
}

async fn bench_tcp(size: usize, args: &Args) -> anyhow::Result<Measured> {
    let config = TransportConfig::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let counter = Arc::new(Counter::default());
    let counted = counter.clone();
    let frame_bytes_max = config.frame_bytes_max;
    let receiver = tokio::spawn(async move {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let mut reader =
            framed_io::AsyncSource(tokio::io::BufReader::with_capacity(256 << 10, stream));
        while let Some(frame) = framed_io::read_frame(&mut reader, frame_bytes_max).await? {
            if let Frame::Messages(messages) = frame {
                let bytes: usize = messages.iter().map(Bytes::len).sum();
                counted
                    .messages
                    .fetch_add(messages.len() as u64, Ordering::Relaxed);
                counted.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
            }
        }
        anyhow::Ok(())
    });
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let payload = Bytes::from(vec![0x5a; size]);
    let batch_bytes_max = config.batch_bytes_max;
    // Same batching as the QUIC peer task: messages packed into a frame up
    // to `batch_bytes_max`, encoded, written.
    let writer = tokio::spawn(async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let per_frame = (1..)
            .take_while(|&n| codec::messages_frame_bound(n, n * size) <= batch_bytes_max)
            .last()
            .unwrap_or(1);
        let mut frame = Vec::new();
        while !stopping.load(Ordering::Relaxed) {
            frame.clear();
            codec::encode_frame(
                &Frame::Messages(vec![payload.clone(); per_frame]),
                &mut frame,
            )?;
            stream.write_all(&frame).await?;
        }
        stream.shutdown().await?;
        anyhow::Ok(())
    });
    let result = measure(&counter, args.seconds).await;
    stop.store(true, Ordering::Relaxed);
    writer.await??;
    receiver.await??;
    Ok(result)
}

fn human(size: usize) -> String {
    if size >= 1 << 10 && size % (1 << 10) == 0 {
        format!("{} KiB", size >> 10)
    } else {
        format!("{size} B")
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Checked here so a bad value gets clap's usage error, not a backtrace.
    let invalid = |msg: String| {
        Args::command()
            .error(clap::error::ErrorKind::ValueValidation, msg)
            .exit()
    };
    if !(args.seconds > 0.0 && args.seconds.is_finite()) {
        invalid(format!("--seconds must be positive, got {}", args.seconds));
    }
    let batch_bytes_max = TransportConfig::default().batch_bytes_max;
    if let Some(&bad) = args
        .sizes
        .iter()
        .find(|&&s| s == 0 || codec::messages_frame_bound(1, s) > batch_bytes_max)
    {
        invalid(format!(
            "--sizes: {bad} B is zero or does not fit a {batch_bytes_max} B batch"
        ));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!(
        "transport-bench: 2 endpoints on loopback, {} s per run, QUIC MTU upper bound {} B, {} CPUs",
        args.seconds,
        args.mtu,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:>8} {:>6} {:>14} {:>10} {:>12}",
        "size", "link", "messages/s", "MiB/s", "CPU s/GiB"
    );
    for &size in &args.sizes {
        let quic = runtime.block_on(bench_quic(size, &args))?;
        let tcp = runtime.block_on(bench_tcp(size, &args))?;
        for (name, r) in [("QUIC", quic), ("TCP", tcp)] {
            println!(
                "{:>8} {:>6} {:>14.0} {:>10.1} {:>12.2}",
                human(size),
                name,
                r.messages_per_s,
                r.mib_per_s,
                r.cpu_s_per_gib
            );
        }
        println!(
            "{:>8} {:>6} {:>14} {:>10.2}",
            human(size),
            "ratio",
            "QUIC/TCP",
            quic.mib_per_s / tcp.mib_per_s
        );
    }
    Ok(())
}
