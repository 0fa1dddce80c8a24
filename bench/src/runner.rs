//! Drives a [`Target`]: connects one client per worker, loads the key space, then
//! runs the workload closed loop (each worker issues its next operation when the last
//! one completes) or open loop (`rate` ops/s on a fixed schedule; latency measured
//! from the intended send time, so a slow target is not excused by the harness waiting
//! for it: no coordinated omission). Warmup is run but not recorded. Ctrl-C (or any
//! sender on the stop channel) ends the run early with what was measured.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::keys::{Distribution, KeyChooser, KeySpace, ValueSource};
use crate::process::ProcessUsage;
use crate::report::{Recorder, ThroughputSample};
use crate::rng::Rng;
use crate::target::{Client, Target, TargetError};
use crate::workload::{Op, OpGenerator, OpKind, Workload};

/// An operation that takes longer than this is counted as a `timeout` error (and the
/// client reconnects).
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// Workers share this many recorders (latency histograms are ~200 KiB each; one per
/// worker would not scale to thousands of workers).
const RECORDER_SHARDS_MAX: usize = 16;

/// The error kind of an open-loop operation still due when the run ended
/// (the target fell behind the offered rate): never issued.
pub const MISSED: &str = "missed";

/// What to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The operation mix.
    pub workload: Workload,
    /// The key space.
    pub keys: KeySpace,
    /// How keys are chosen.
    pub distribution: Distribution,
    /// Bytes per value.
    pub value_size: usize,
    /// Workers, each with its own client.
    pub concurrency: usize,
    /// Open loop at this many ops/s over all workers; `None`: closed loop.
    pub rate: Option<u64>,
    /// Run but not recorded.
    pub warmup: Duration,
    /// Recorded.
    pub duration: Duration,
    /// The workload seed.
    pub seed: u64,
    /// Whether to draw the progress bar (it is drawn only on a terminal anyway).
    pub progress: bool,
    /// Per-operation timeout.
    pub op_timeout: Duration,
}

/// A run that could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The configuration cannot be run.
    #[error("invalid run configuration: {0}")]
    Config(String),
    /// A worker could not connect.
    #[error("worker {worker} could not connect: {source}")]
    Connect {
        /// The worker.
        worker: usize,
        /// Why.
        source: TargetError,
    },
    /// Loading the key space failed.
    #[error("loading the key space failed at key {index}: {source}")]
    Load {
        /// The key number.
        index: u64,
        /// Why.
        source: TargetError,
    },
    /// A worker task panicked.
    #[error("a worker panicked: {0}")]
    Worker(String),
}

/// What a run measured (the input of [`crate::report::Report::build`]).
#[derive(Debug)]
pub struct RunOutcome {
    /// Latencies and errors of the measured part.
    pub recorder: Recorder,
    /// Seconds measured (shorter than asked if stopped early; 0 if stopped in warmup).
    pub measured_secs: f64,
    /// Whether the stop channel ended the run.
    pub interrupted: bool,
    /// Seconds spent loading the key space, if it was loaded.
    pub load_secs: Option<f64>,
    /// Throughput per second over the whole run.
    pub throughput: Vec<ThroughputSample>,
    /// Retries the clients made during the measured part, by kind.
    pub retries_by_kind: BTreeMap<String, u64>,
    /// CPU time of this whole process (the target's threads too, when embedded)
    /// during the measured part, and its peak RSS at the end.
    pub process: ProcessUsage,
}

impl RunConfig {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), RunError> {
        if self.concurrency == 0 && !self.workload.is_idle() {
            return Err(RunError::Config("--concurrency must be at least 1".into()));
        }
        if self.rate == Some(0) {
            return Err(RunError::Config("--rate must be at least 1 op/s".into()));
        }
        if self.duration.is_zero() {
            return Err(RunError::Config("--duration must be positive".into()));
        }
        Ok(())
    }
}

/// Counters shared by the workers and the sampler.
#[derive(Debug)]
struct Shared {
    recorders: Vec<Mutex<Recorder>>,
    completed: AtomicU64,
    failed: AtomicU64,
}

/// Runs `cfg` against `target` until done or until `stop` turns true.
pub async fn run(
    target: Arc<dyn Target>,
    cfg: &RunConfig,
    mut stop: watch::Receiver<bool>,
) -> Result<RunOutcome, RunError> {
    cfg.validate()?;
    let progress = ProgressBar::with_draw_target(None, draw_target(cfg.progress));

    let mut outcome = RunOutcome {
        recorder: Recorder::default(),
        measured_secs: 0.0,
        interrupted: false,
        load_secs: None,
        throughput: Vec::new(),
        retries_by_kind: BTreeMap::new(),
        process: ProcessUsage::default(),
    };

    let workers = if cfg.workload.is_idle() {
        0
    } else {
        cfg.concurrency
    };
    progress.set_style(spinner_style());
    progress.set_message(format!("connecting {workers} clients"));
    let mut clients = connect_all(&target, workers).await?;

    if cfg.workload.needs_load() {
        let started = Instant::now();
        clients = load(clients, cfg, &progress, stop.clone()).await?;
        outcome.load_secs = Some(started.elapsed().as_secs_f64());
    }
    if *stop.borrow() {
        outcome.interrupted = true;
        progress.finish_and_clear();
        return Ok(outcome);
    }

    let shards = workers.clamp(1, RECORDER_SHARDS_MAX);
    let shared = Arc::new(Shared {
        recorders: (0..shards)
            .map(|_| Mutex::new(Recorder::default()))
            .collect(),
        completed: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let start = Instant::now();
    let measure_start = start + cfg.warmup;
    let end = measure_start + cfg.duration;
    let chooser = KeyChooser::new(cfg.distribution, cfg.keys.count());
    let usage_at_measure_start = tokio::spawn(async move {
        tokio::time::sleep_until(tokio::time::Instant::from_std(measure_start)).await;
        ProcessUsage::now()
    });
    let window_target = target.clone();
    let window_marks = tokio::spawn(async move {
        tokio::time::sleep_until(tokio::time::Instant::from_std(measure_start)).await;
        window_target.window_started().await;
        tokio::time::sleep_until(tokio::time::Instant::from_std(end)).await;
        window_target.window_ended().await;
    });
    // At the end of the window, not when the last operation (perhaps one
    // timing out) returns: the usage is divided by the window.
    let usage_at_window_end = tokio::spawn(async move {
        tokio::time::sleep_until(tokio::time::Instant::from_std(end)).await;
        ProcessUsage::now()
    });

    let mut tasks = JoinSet::new();
    for (worker, client) in clients.into_iter().enumerate() {
        let gen_ = OpGenerator::new(
            cfg.workload,
            cfg.keys,
            chooser,
            cfg.value_size,
            cfg.seed,
            worker as u64,
            workers as u64,
        );
        let ctx = WorkerCtx {
            worker,
            workers,
            shared: shared.clone(),
            rate: cfg.rate,
            start,
            measure_start,
            end,
            op_timeout: cfg.op_timeout,
            stop: stop.clone(),
        };
        tasks.spawn(worker_loop(ctx, client, gen_));
    }

    let total = (cfg.warmup + cfg.duration).as_secs().max(1);
    progress.set_length(total);
    progress.set_style(bar_style());
    progress.set_message("warmup");

    // Sample throughput every second until every worker is done (or, idle, until the
    // end); stop early on the stop channel.
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::from_std(start + Duration::from_secs(1)),
        Duration::from_secs(1),
    );
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (start, 0u64, 0u64);
    let mut stopped_at: Option<Instant> = None;
    let mut stop_closed = false;
    let mut retries_total: BTreeMap<String, u64> = BTreeMap::new();
    let take_sample = |now: Instant, last: &mut (Instant, u64, u64), samples: &mut Vec<_>| {
        let completed = shared.completed.load(Ordering::Relaxed);
        let failed = shared.failed.load(Ordering::Relaxed);
        let interval = now.saturating_duration_since(last.0).as_secs_f64();
        if interval < 0.05 {
            return 0.0;
        }
        let ops_per_sec = (completed - last.1) as f64 / interval;
        samples.push(ThroughputSample {
            t_secs: signed_secs(now, measure_start),
            interval_secs: interval,
            ops_per_sec,
            errors_per_sec: (failed - last.2) as f64 / interval,
            measured: now > measure_start,
        });
        *last = (now, completed, failed);
        ops_per_sec
    };
    loop {
        let idle_done = workers == 0 && Instant::now() >= end;
        if idle_done || (workers > 0 && tasks.is_empty()) {
            break;
        }
        tokio::select! {
            _ = ticker.tick() => {
                let now = Instant::now();
                let rate = take_sample(now, &mut last, &mut outcome.throughput);
                progress.set_position(now.duration_since(start).as_secs().min(total));
                let phase = if now < measure_start { "warmup" } else { "measuring" };
                progress.set_message(format!("{phase}  {rate:.0} ops/s"));
            }
            changed = stop.changed(), if stopped_at.is_none() && !stop_closed => {
                if changed.is_err() {
                    stop_closed = true;
                } else if *stop.borrow() {
                    stopped_at = Some(Instant::now());
                    progress.set_message("stopping");
                    if workers == 0 {
                        break;
                    }
                }
            }
            joined = tasks.join_next(), if !tasks.is_empty() => {
                match joined {
                    Some(Ok(retries)) => {
                        for (kind, n) in retries {
                            *retries_total.entry(kind).or_default() += n;
                        }
                    }
                    Some(Err(e)) => return Err(RunError::Worker(e.to_string())),
                    None => {}
                }
            }
        }
    }
    let finished = Instant::now();
    // The workers saw the stop and were all done before the loop above did.
    if stopped_at.is_none() && *stop.borrow() {
        stopped_at = Some(finished);
    }
    let usage_at_end = if usage_at_window_end.is_finished() {
        usage_at_window_end
            .await
            .unwrap_or_else(|_| ProcessUsage::now())
    } else {
        usage_at_window_end.abort();
        ProcessUsage::now()
    };
    let usage_at_start = if usage_at_measure_start.is_finished() {
        usage_at_measure_start.await.unwrap_or(usage_at_end)
    } else {
        usage_at_measure_start.abort();
        usage_at_end
    };
    outcome.process = usage_at_end.since(&usage_at_start);
    if Instant::now() < end {
        // Stopped early: the window never ended.
        window_marks.abort();
    } else {
        // It reads the target's counters at the end: let it finish.
        let _ = tokio::time::timeout(Duration::from_secs(5), window_marks).await;
    }
    take_sample(finished, &mut last, &mut outcome.throughput);
    progress.finish_and_clear();

    let measured_end = stopped_at.map_or(end, |s| s.min(end));
    outcome.interrupted = stopped_at.is_some_and(|s| s < end);
    outcome.measured_secs = measured_end
        .saturating_duration_since(measure_start)
        .as_secs_f64();
    outcome.retries_by_kind = retries_total;
    for shard in &shared.recorders {
        outcome.recorder.merge(&shard.lock());
    }
    Ok(outcome)
}

fn signed_secs(t: Instant, origin: Instant) -> f64 {
    if t >= origin {
        t.duration_since(origin).as_secs_f64()
    } else {
        -origin.duration_since(t).as_secs_f64()
    }
}

fn draw_target(enabled: bool) -> ProgressDrawTarget {
    if enabled && std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {msg}").expect("static template")
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} s  {msg}")
        .expect("static template")
        .progress_chars("=> ")
}

async fn connect_all(
    target: &Arc<dyn Target>,
    workers: usize,
) -> Result<Vec<Box<dyn Client>>, RunError> {
    let mut set = JoinSet::new();
    for worker in 0..workers {
        let target = target.clone();
        set.spawn(async move { (worker, target.connect(worker).await) });
    }
    let mut clients: Vec<Option<Box<dyn Client>>> = (0..workers).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        let (worker, result) = joined.map_err(|e| RunError::Worker(e.to_string()))?;
        clients[worker] = Some(result.map_err(|source| RunError::Connect { worker, source })?);
    }
    Ok(clients
        .into_iter()
        .map(|c| c.expect("every worker connected"))
        .collect())
}

/// Writes every key of the key space once, the workers splitting it by residue.
async fn load(
    clients: Vec<Box<dyn Client>>,
    cfg: &RunConfig,
    progress: &ProgressBar,
    stop: watch::Receiver<bool>,
) -> Result<Vec<Box<dyn Client>>, RunError> {
    let workers = clients.len() as u64;
    let loaded = Arc::new(AtomicU64::new(0));
    progress.set_length(cfg.keys.count());
    progress.set_position(0);
    progress.set_style(bar_style());
    progress.set_message("loading keys");
    let mut set = JoinSet::new();
    for (worker, mut client) in clients.into_iter().enumerate() {
        let keys = cfg.keys;
        let loaded = loaded.clone();
        let stop = stop.clone();
        let timeout = cfg.op_timeout;
        let mut rng = Rng::for_stream(cfg.seed ^ 0x10AD, worker as u64);
        let values = ValueSource::new(cfg.value_size, &mut rng);
        set.spawn(async move {
            let mut key = Vec::with_capacity(keys.key_bytes());
            let mut index = worker as u64;
            while index < keys.count() && !*stop.borrow() {
                keys.write_key(index, &mut key);
                let value = values.next_value(&mut rng);
                match tokio::time::timeout(timeout, client.put(&key, value)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(source)) => return Err(RunError::Load { index, source }),
                    Err(_) => {
                        let source = TargetError::Timeout {
                            timeout_ms: timeout.as_millis() as u64,
                        };
                        return Err(RunError::Load { index, source });
                    }
                }
                loaded.fetch_add(1, Ordering::Relaxed);
                index += workers;
            }
            Ok((worker, client))
        });
    }
    let mut clients: Vec<Option<Box<dyn Client>>> = (0..workers).map(|_| None).collect();
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = ticker.tick() => progress.set_position(loaded.load(Ordering::Relaxed)),
            joined = set.join_next() => match joined {
                Some(joined) => {
                    let (worker, client) = joined.map_err(|e| RunError::Worker(e.to_string()))??;
                    clients[worker] = Some(client);
                }
                None => break,
            },
        }
    }
    Ok(clients
        .into_iter()
        .map(|c| c.expect("every loader returned its client"))
        .collect())
}

struct WorkerCtx {
    worker: usize,
    workers: usize,
    shared: Arc<Shared>,
    rate: Option<u64>,
    start: Instant,
    measure_start: Instant,
    end: Instant,
    op_timeout: Duration,
    stop: watch::Receiver<bool>,
}

/// One worker: issues operations until the end or a stop, records those that began
/// (or, open loop, were due) in the measured window. Returns the client's retries
/// during the measured window.
async fn worker_loop(
    mut ctx: WorkerCtx,
    mut client: Box<dyn Client>,
    mut generator: OpGenerator,
) -> BTreeMap<String, u64> {
    let shard = &ctx.shared.recorders[ctx.worker % ctx.shared.recorders.len()];
    // Open loop: this worker's share of the rate, staggered against the others.
    let interval = ctx
        .rate
        .map(|rate| Duration::from_secs_f64(ctx.workers as f64 / rate as f64));
    let mut due = ctx.start
        + interval.map_or(Duration::ZERO, |i| {
            i.mul_f64(ctx.worker as f64 / ctx.workers as f64)
        });
    let mut retries_at_measure_start: Option<BTreeMap<String, u64>> = None;
    loop {
        if *ctx.stop.borrow() {
            break;
        }
        let begin = match interval {
            None => Instant::now(),
            Some(interval) => {
                let this = due;
                due += interval;
                if this >= ctx.end {
                    break;
                }
                let now = Instant::now();
                if now >= ctx.end {
                    // Behind schedule when the run ends: what is still due was
                    // never issued. Counted, not issued late: a target slower
                    // than the offered rate would otherwise stretch the run
                    // and be credited with the offered rate.
                    let mut missed = this;
                    while missed < ctx.end {
                        if missed >= ctx.measure_start {
                            let op = generator.next_op();
                            ctx.shared.failed.fetch_add(1, Ordering::Relaxed);
                            shard.lock().record_error(op.kind, MISSED.to_string());
                        }
                        missed += interval;
                    }
                    break;
                }
                if this > now {
                    let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(this));
                    tokio::pin!(sleep);
                    tokio::select! {
                        _ = &mut sleep => {}
                        changed = ctx.stop.changed() => match changed {
                            Ok(()) => continue,
                            // No one can stop the run any more: just wait.
                            Err(_) => sleep.await,
                        },
                    }
                }
                this
            }
        };
        if begin >= ctx.end {
            break;
        }
        let measured = begin >= ctx.measure_start;
        if measured && retries_at_measure_start.is_none() {
            retries_at_measure_start = Some(client.retries());
        }
        let op = generator.next_op();
        let result = execute(client.as_mut(), &op, ctx.op_timeout).await;
        let latency_ns = begin.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        match result {
            Ok(bytes) => {
                ctx.shared.completed.fetch_add(1, Ordering::Relaxed);
                if measured {
                    shard.lock().record(op.kind, latency_ns, bytes);
                }
            }
            Err(e) => {
                ctx.shared.failed.fetch_add(1, Ordering::Relaxed);
                if measured {
                    shard.lock().record_error(op.kind, e.kind());
                }
            }
        }
    }
    let before = retries_at_measure_start.unwrap_or_else(|| client.retries());
    client
        .retries()
        .into_iter()
        .filter_map(|(kind, n)| {
            let n = n.saturating_sub(before.get(&kind).copied().unwrap_or(0));
            (n > 0).then_some((kind, n))
        })
        .collect()
}

/// Issues `op`; the number of key and value bytes it moved.
async fn execute(
    client: &mut dyn Client,
    op: &Op<'_>,
    timeout: Duration,
) -> Result<u64, TargetError> {
    let key_bytes = op.key.len() as u64;
    let fut = async {
        match op.kind {
            OpKind::Read => {
                let value = client.get(op.key).await?;
                Ok(key_bytes + value.map_or(0, |v| v.len() as u64))
            }
            OpKind::Update | OpKind::Insert => {
                client.put(op.key, op.value).await?;
                Ok(key_bytes + op.value.len() as u64)
            }
            OpKind::Scan => {
                let pairs = client.scan(op.key, op.scan_len).await?;
                Ok(pairs.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum())
            }
            OpKind::ReadModifyWrite => {
                client.read_modify_write(op.key, op.value).await?;
                Ok(2 * key_bytes + op.value.len() as u64)
            }
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result,
        Err(_) => Err(TargetError::Timeout {
            timeout_ms: timeout.as_millis() as u64,
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::keys::KEY_BYTES_DEFAULT;
    use crate::target::{BoxFuture, TargetInfo};
    use bytes::Bytes;
    use std::collections::BTreeMap as Map;

    /// An in-memory target: a shared map behind a mutex, each op sleeping `delay`,
    /// every `fail_every`-th put failing.
    #[derive(Debug, Default)]
    pub(crate) struct MemTarget {
        pub(crate) map: Arc<Mutex<Map<Vec<u8>, Bytes>>>,
        pub(crate) delay: Duration,
        pub(crate) fail_every: Option<u64>,
        pub(crate) puts: Arc<AtomicU64>,
    }

    struct MemClient {
        map: Arc<Mutex<Map<Vec<u8>, Bytes>>>,
        delay: Duration,
        fail_every: Option<u64>,
        puts: Arc<AtomicU64>,
    }

    impl Target for MemTarget {
        fn info(&self) -> TargetInfo {
            TargetInfo {
                name: "memory".into(),
                nodes: Some(1),
                ranges: Some(1),
                fsync: Some(false),
                tls: Some(false),
                read_consistency: None,
                storage: None,
                network: None,
                leaders_on: None,
            }
        }

        fn connect(&self, _worker: usize) -> BoxFuture<'_, Result<Box<dyn Client>, TargetError>> {
            let client = MemClient {
                map: self.map.clone(),
                delay: self.delay,
                fail_every: self.fail_every,
                puts: self.puts.clone(),
            };
            Box::pin(async move { Ok(Box::new(client) as Box<dyn Client>) })
        }
    }

    impl Client for MemClient {
        fn get<'a>(
            &'a mut self,
            key: &'a [u8],
        ) -> BoxFuture<'a, Result<Option<Bytes>, TargetError>> {
            Box::pin(async move {
                tokio::time::sleep(self.delay).await;
                Ok(self.map.lock().get(key).cloned())
            })
        }

        fn put<'a>(
            &'a mut self,
            key: &'a [u8],
            value: &'a [u8],
        ) -> BoxFuture<'a, Result<(), TargetError>> {
            Box::pin(async move {
                tokio::time::sleep(self.delay).await;
                let n = self.puts.fetch_add(1, Ordering::Relaxed) + 1;
                if self.fail_every.is_some_and(|k| n % k == 0) {
                    return Err(TargetError::Other {
                        kind: "injected".into(),
                        message: "injected".into(),
                    });
                }
                self.map
                    .lock()
                    .insert(key.to_vec(), Bytes::copy_from_slice(value));
                Ok(())
            })
        }

        fn delete<'a>(&'a mut self, key: &'a [u8]) -> BoxFuture<'a, Result<bool, TargetError>> {
            Box::pin(async move { Ok(self.map.lock().remove(key).is_some()) })
        }

        fn scan<'a>(
            &'a mut self,
            start: &'a [u8],
            limit: usize,
        ) -> BoxFuture<'a, Result<Vec<(Bytes, Bytes)>, TargetError>> {
            Box::pin(async move {
                let map = self.map.lock();
                Ok(map
                    .range(start.to_vec()..)
                    .take(limit)
                    .map(|(k, v)| (Bytes::copy_from_slice(k), v.clone()))
                    .collect())
            })
        }
    }

    pub(crate) fn config(workload: Workload) -> RunConfig {
        RunConfig {
            workload,
            keys: KeySpace::new(500, KEY_BYTES_DEFAULT).unwrap(),
            distribution: Distribution::Zipfian,
            value_size: 16,
            concurrency: 4,
            rate: None,
            warmup: Duration::from_millis(200),
            duration: Duration::from_millis(800),
            seed: 1,
            progress: false,
            op_timeout: OP_TIMEOUT,
        }
    }

    #[tokio::test]
    async fn closed_loop_loads_then_measures_every_kind_of_the_mix() {
        let target = Arc::new(MemTarget {
            delay: Duration::from_micros(200),
            ..Default::default()
        });
        let (_tx, rx) = watch::channel(false);
        let out = run(target.clone(), &config(Workload::A), rx).await.unwrap();
        assert_eq!(target.map.lock().len(), 500, "the key space was loaded");
        assert!(out.load_secs.is_some());
        assert!(!out.interrupted);
        assert!((out.measured_secs - 0.8).abs() < 1e-6);
        let reads = out.recorder.histogram(OpKind::Read).unwrap().len();
        let updates = out.recorder.histogram(OpKind::Update).unwrap().len();
        assert!(
            reads > 100 && updates > 100,
            "reads {reads} updates {updates}"
        );
        // Every measured op took at least the target's delay.
        assert!(out.recorder.histogram(OpKind::Read).unwrap().min() >= 200_000);
        assert!(out.throughput.iter().any(|s| s.measured));
        assert_eq!(out.recorder.error_count(), 0);
    }

    #[tokio::test]
    async fn errors_are_counted_by_kind() {
        let target = Arc::new(MemTarget {
            fail_every: Some(10),
            ..Default::default()
        });
        let (_tx, rx) = watch::channel(false);
        let out = run(target, &config(Workload::WriteOnly), rx).await.unwrap();
        let ok = out.recorder.histogram(OpKind::Update).unwrap().len();
        let failed = out.recorder.error_count();
        assert!(failed > 0);
        let ratio = failed as f64 / (ok + failed) as f64;
        assert!((ratio - 0.1).abs() < 0.02, "error ratio {ratio}");
    }

    #[tokio::test]
    async fn open_loop_holds_the_rate_and_measures_from_the_schedule() {
        let target = Arc::new(MemTarget {
            delay: Duration::from_millis(1),
            ..Default::default()
        });
        let (_tx, rx) = watch::channel(false);
        let mut cfg = config(Workload::WriteOnly);
        cfg.rate = Some(1000);
        cfg.warmup = Duration::ZERO;
        cfg.duration = Duration::from_secs(1);
        let out = run(target.clone(), &cfg, rx).await.unwrap();
        let h = out.recorder.histogram(OpKind::Update).unwrap();
        assert!(
            (900..=1010).contains(&h.len()),
            "{} ops at 1000/s for 1 s",
            h.len()
        );

        // A target slower than the offered load: latency grows with the backlog, as
        // seen from the schedule (about 0.5 s at the end), not the 10 ms service time.
        let slow = Arc::new(MemTarget {
            delay: Duration::from_millis(10),
            ..Default::default()
        });
        let (_tx, rx) = watch::channel(false);
        cfg.concurrency = 1;
        cfg.rate = Some(200);
        let started = Instant::now();
        let out = run(slow, &cfg, rx).await.unwrap();
        let h = out.recorder.histogram(OpKind::Update).unwrap();
        assert!(
            h.max() > 300_000_000,
            "max latency {} ns hides the backlog",
            h.max()
        );
        // It serves about 100/s: the run ends on time, and what was still
        // due then is counted as missed, not issued late and credited.
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "ran {:?}",
            started.elapsed()
        );
        let missed = out.recorder.error_count();
        assert!(h.len() <= 110, "{} done at 100/s at most", h.len());
        assert!(missed >= 80, "{missed} missed of 200 due, {} done", h.len());
        assert!(
            (190..=201).contains(&(h.len() + missed)),
            "every op due is done or missed: {} + {missed}",
            h.len()
        );
    }

    #[tokio::test]
    async fn stop_ends_the_run_early_and_keeps_what_was_measured() {
        let target = Arc::new(MemTarget {
            delay: Duration::from_micros(100),
            ..Default::default()
        });
        let (tx, rx) = watch::channel(false);
        let mut cfg = config(Workload::C);
        cfg.warmup = Duration::ZERO;
        cfg.duration = Duration::from_secs(30);
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            tx.send(true).unwrap();
            tx
        });
        let started = Instant::now();
        let out = run(target, &cfg, rx).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(out.interrupted);
        assert!(
            out.measured_secs > 0.3 && out.measured_secs < 2.0,
            "{}",
            out.measured_secs
        );
        assert!(out.recorder.histogram(OpKind::Read).unwrap().len() > 10);
        drop(stopper.await);
    }

    #[tokio::test]
    async fn idle_runs_for_its_duration_without_clients() {
        let target = Arc::new(MemTarget::default());
        let (_tx, rx) = watch::channel(false);
        let mut cfg = config(Workload::Idle);
        cfg.warmup = Duration::ZERO;
        cfg.duration = Duration::from_millis(1500);
        let started = Instant::now();
        let out = run(target.clone(), &cfg, rx).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(1500));
        assert_eq!(out.recorder.count(), 0);
        assert!(target.map.lock().is_empty());
        assert!(!out.throughput.is_empty());
    }

    #[test]
    fn bad_configs_are_refused() {
        let mut cfg = config(Workload::A);
        cfg.rate = Some(0);
        assert!(matches!(cfg.validate(), Err(RunError::Config(_))));
        let mut cfg = config(Workload::A);
        cfg.concurrency = 0;
        assert!(cfg.validate().is_err());
    }
}
