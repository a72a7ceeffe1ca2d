//! walbench: WAL group-commit throughput against the disk's own limit.
//!
//! For each number of concurrent appenders (1, 8, 64, 256 by default) it runs:
//! 1. the WAL under `SyncPolicy::Always`: every appender keeps exactly one 128-byte append
//!    outstanding and issues the next as soon as the previous one is durable (closed loop);
//! 2. the physical limit on the same disk, in the same run: a plain loop of one `pwrite` of
//!    N frame-sized records + one `fdatasync`, with N = the records per fdatasync the WAL
//!    achieved, appending to a new file (`raw_records_per_s`, `wal_to_raw_ratio`);
//! 3. the same loop writing over a file that already has its blocks, as the WAL does in a
//!    recycled segment (`raw_overwrite_records_per_s`, `wal_to_overwrite_ratio`): the
//!    like-for-like limit.
//!
//! The WAL is measured in the state a running broker's log is in: one log per configuration,
//! kept open across its rounds, warmed up until a rotation has reused a checkpointed segment
//! (`WalOptions::spare_segments`), with a checkpointer thread that calls `truncate_through`
//! once a rotation has happened, as the broker's size-triggered checkpoint does. A fresh
//! log's first segments are new files that grow by extending, which costs each fdatasync a
//! metadata commit; that is what loop 2 measures and loop 3 does not.
//!
//! Appenders are driven the way the broker drives the WAL: `--mode callback` (the default)
//! registers `Durable::on_complete` callbacks that hand the appender back to a small pool of
//! driver threads (as a completion wakes an async task); `--mode threads` runs one OS thread
//! per appender blocked in `Durable::wait`.
//!
//! Each configuration runs `--rounds` (5) alternating rounds of `--secs` (2) seconds per
//! side; rates are averaged over the rounds, latency percentiles are the median round's.
//! Each ratio is the median of the per-round ratios (each WAL round against the raw rounds
//! right after it), which a burst of load from elsewhere on a shared machine moves less than
//! a ratio of averages; `round_ratios` and `overwrite_round_ratios` list them all.
//!
//! The raw loop runs on a thread with the niceness the WAL's writer thread got
//! (`writer_nice`, see `WalOptions::writer_nice`), so both sides run at the same priority.
//!
//! Usage: `cargo run --release -p keelmq-wal --example walbench -- [--json] [--secs S]
//! [--rounds N] [--dir DIR] [--appenders 1,8,64,256] [--mode callback|threads]`. The directory defaults to
//! `./target-walbench-tmp` (on the same disk as the working tree) and is removed afterwards.
//! The last line of output is one JSON object. `WALBENCH_DEBUG=1` also prints how the writer
//! thread's time splits between fdatasync, write and everything else; `WALBENCH_DRIVERS=n`
//! changes the number of driver threads in callback mode (2).

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use keelmq_wal::format::frame_len;
use keelmq_wal::{SyncPolicy, Wal, WalOptions};

const RECORD_BYTES: usize = 128;
/// Driver threads in callback mode: the machine has few cores, and a driver only does
/// non-blocking appends.
const DRIVER_THREADS: usize = 2;

struct Config {
    json: bool,
    secs: f64,
    rounds: usize,
    dir: PathBuf,
    appenders: Vec<usize>,
    threads_mode: bool,
}

fn parse_args() -> Config {
    let mut config = Config {
        json: false,
        secs: 2.0,
        rounds: 5,
        dir: PathBuf::from("target-walbench-tmp"),
        appenders: vec![1, 8, 64, 256],
        threads_mode: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| panic!("{name} needs a value"))
        };
        match arg.as_str() {
            "--json" => config.json = true,
            "--secs" => config.secs = value("--secs").parse().expect("--secs S"),
            "--rounds" => config.rounds = value("--rounds").parse().expect("--rounds N"),
            "--dir" => config.dir = PathBuf::from(value("--dir")),
            "--appenders" => {
                config.appenders = value("--appenders")
                    .split(',')
                    .map(|n| n.parse().expect("--appenders 1,8,64"))
                    .collect()
            }
            "--mode" => config.threads_mode = value("--mode") == "threads",
            "--bench" => {} // passed by `cargo bench`-style runners
            other => panic!("unknown argument {other}"),
        }
    }
    config
}

struct WalResult {
    writer_nice: Option<i32>,
    rotations: u64,
    recycled: u64,
    records_per_s: f64,
    fsyncs_per_s: f64,
    records_per_fsync: f64,
    p50_us: u64,
    p99_us: u64,
}

fn percentile(sorted: &[u32], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    u64::from(sorted[i])
}

/// Opens a fresh log in `dir` (default options, `SyncPolicy::Always`) and warms it up: bursts
/// of appends, each followed by a checkpoint of everything durable, until a rotation has
/// reused a spare, so that the active segment is a recycled one and every later rotation
/// finds a spare.
fn open_warm(dir: &Path) -> Arc<Wal> {
    let _ = std::fs::remove_dir_all(dir);
    let options = WalOptions {
        sync_policy: SyncPolicy::Always,
        ..WalOptions::default()
    };
    let (wal, _) = Wal::open(dir, options).expect("open wal");
    let payload = vec![0x5Au8; RECORD_BYTES];
    while wal.stats().recycled == 0 {
        let burst: Vec<_> = (0..4096)
            .map(|_| wal.append(0, payload.as_slice()).unwrap())
            .collect();
        for appended in burst {
            appended.durable.wait().unwrap();
        }
        wal.truncate_through(wal.durable_seq()).unwrap();
    }
    Arc::new(wal)
}

/// While the log has more than one segment, checkpoints everything durable, so obsolete
/// segments become spares; polls every 20 ms until `stop`.
fn spawn_checkpointer(wal: Arc<Wal>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if wal.segment_paths().len() > 1 {
                wal.truncate_through(wal.durable_seq()).unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

fn run_wal(wal: &Arc<Wal>, appenders: usize, secs: f64, threads_mode: bool) -> WalResult {
    let payload = vec![0x5Au8; RECORD_BYTES];
    let stop = Arc::new(AtomicBool::new(false));
    let checkpointer = spawn_checkpointer(Arc::clone(wal), Arc::clone(&stop));
    let completed = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::<u32>::with_capacity(1 << 20)));
    let before = wal.stats();
    let start = Instant::now();

    if threads_mode {
        let handles: Vec<_> = (0..appenders)
            .map(|_| {
                let (wal, stop, completed, payload) = (
                    Arc::clone(wal),
                    Arc::clone(&stop),
                    Arc::clone(&completed),
                    payload.clone(),
                );
                std::thread::spawn(move || {
                    let mut mine = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        wal.append(0, payload.as_slice())
                            .unwrap()
                            .durable
                            .wait()
                            .unwrap();
                        mine.push(t.elapsed().as_micros() as u32);
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                    mine
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
        let elapsed_records = completed.load(Ordering::Relaxed);
        let after = wal.stats();
        let elapsed = start.elapsed().as_secs_f64();
        let mut all = latencies.lock().unwrap();
        for h in handles {
            all.extend(h.join().unwrap());
        }
        checkpointer.join().unwrap();
        return summarize(elapsed_records, after, before, elapsed, &mut all);
    }

    // Callback mode: a ready queue of appender ids, served by a few driver threads.
    let ready = Arc::new((
        Mutex::new((0..appenders).collect::<VecDeque<usize>>()),
        Condvar::new(),
    ));
    let driver_threads = std::env::var("WALBENCH_DRIVERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DRIVER_THREADS);
    let drivers: Vec<_> = (0..driver_threads.min(appenders))
        .map(|_| {
            let (wal, stop, ready, completed, latencies, payload) = (
                Arc::clone(wal),
                Arc::clone(&stop),
                Arc::clone(&ready),
                Arc::clone(&completed),
                Arc::clone(&latencies),
                payload.clone(),
            );
            std::thread::spawn(move || {
                let mut batch = Vec::new();
                loop {
                    {
                        let (queue, cond) = &*ready;
                        let mut q = queue.lock().unwrap();
                        while q.is_empty() && !stop.load(Ordering::Relaxed) {
                            q = cond.wait_timeout(q, Duration::from_millis(50)).unwrap().0;
                        }
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        batch.extend(q.drain(..));
                    }
                    for id in batch.drain(..) {
                        let t = Instant::now();
                        let appended = wal.append(0, payload.as_slice()).unwrap();
                        let (ready, completed, latencies) = (
                            Arc::clone(&ready),
                            Arc::clone(&completed),
                            Arc::clone(&latencies),
                        );
                        appended.durable.on_complete(move |r| {
                            r.unwrap();
                            latencies
                                .lock()
                                .unwrap()
                                .push(t.elapsed().as_micros() as u32);
                            completed.fetch_add(1, Ordering::Relaxed);
                            // Wake a driver only if the queue was empty, as a runtime
                            // wakes a parked worker only when it has nothing to do.
                            let (queue, cond) = &*ready;
                            let mut q = queue.lock().unwrap();
                            q.push_back(id);
                            if q.len() == 1 {
                                cond.notify_one();
                            }
                        });
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let elapsed_records = completed.load(Ordering::Relaxed);
    let after = wal.stats();
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    ready.1.notify_all();
    for d in drivers {
        d.join().unwrap();
    }
    checkpointer.join().unwrap();
    // Let the last callbacks finish before the next round starts from the same log.
    wal.sync().unwrap();
    let mut all = latencies.lock().unwrap();
    summarize(elapsed_records, after, before, elapsed, &mut all)
}

fn summarize(
    records: u64,
    after: keelmq_wal::WalStats,
    before: keelmq_wal::WalStats,
    elapsed: f64,
    latencies: &mut [u32],
) -> WalResult {
    latencies.sort_unstable();
    let fsyncs = (after.fsyncs - before.fsyncs) as f64;
    if std::env::var("WALBENCH_DEBUG").is_ok() {
        eprintln!(
            "  writer time: fdatasync {:.0}% write {:.0}% of {elapsed:.2}s, {:.0} us per fdatasync",
            (after.sync_micros - before.sync_micros) as f64 / elapsed / 1e4,
            (after.write_micros - before.write_micros) as f64 / elapsed / 1e4,
            (after.sync_micros - before.sync_micros) as f64 / fsyncs.max(1.0),
        );
    }
    let batches = (after.batches - before.batches).max(1) as f64;
    WalResult {
        writer_nice: after.writer_nice,
        rotations: after.rotations - before.rotations,
        recycled: after.recycled - before.recycled,
        records_per_s: records as f64 / elapsed,
        fsyncs_per_s: fsyncs / elapsed,
        records_per_fsync: (after.records - before.records) as f64 / batches,
        p50_us: percentile(latencies, 0.50),
        p99_us: percentile(latencies, 0.99),
    }
}

/// Where the raw loop writes.
#[derive(Clone)]
enum RawTarget {
    /// A new file in this directory, grown by every write (then removed).
    Append(PathBuf),
    /// This existing, fully written file, from its start; back to the start at its end.
    Overwrite(PathBuf),
}

/// The physical limit: one pwrite of `records` frame-sized records, one fdatasync, repeat;
/// on its own thread at niceness `nice` (the WAL writer's).
fn run_raw(target: &RawTarget, records: usize, secs: f64, nice: Option<i32>) -> (f64, f64) {
    let target = target.clone();
    std::thread::spawn(move || {
        if let Some(nice) = nice {
            rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice)
                .expect("the WAL writer got this priority, so the raw loop can too");
        }
        raw_loop(&target, records, secs)
    })
    .join()
    .unwrap()
}

/// A file of `len` bytes whose blocks are all written and synced, for the overwrite loop.
fn prepare_overwrite_file(dir: &Path, len: u64) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("raw-overwrite.bin");
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .unwrap();
    let chunk = vec![0u8; 1 << 20];
    let mut offset = 0;
    while offset < len {
        file.write_all_at(&chunk, offset).unwrap();
        offset += chunk.len() as u64;
    }
    file.sync_all().unwrap();
    path
}

fn raw_loop(target: &RawTarget, records: usize, secs: f64) -> (f64, f64) {
    let (file, path, wrap_at) = match target {
        RawTarget::Append(dir) => {
            std::fs::create_dir_all(dir).unwrap();
            let path = dir.join("raw.bin");
            let file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            (file, Some(path), u64::MAX)
        }
        RawTarget::Overwrite(path) => {
            let file = OpenOptions::new().write(true).open(path).unwrap();
            let len = file.metadata().unwrap().len();
            (file, None, len)
        }
    };
    let buf = vec![0xA5u8; records * frame_len(RECORD_BYTES)];
    let mut offset = 0u64;
    let mut syncs = 0u64;
    let start = Instant::now();
    let deadline = Duration::from_secs_f64(secs);
    while start.elapsed() < deadline {
        if offset + buf.len() as u64 > wrap_at {
            offset = 0;
        }
        file.write_all_at(&buf, offset).unwrap();
        file.sync_data().unwrap();
        offset += buf.len() as u64;
        syncs += 1;
    }
    let elapsed = start.elapsed().as_secs_f64();
    drop(file);
    if let Some(path) = path {
        let _ = std::fs::remove_file(&path);
    }
    (
        syncs as f64 * records as f64 / elapsed,
        syncs as f64 / elapsed,
    )
}

/// The median of `values` (which must not be empty).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn format_ratios(ratios: &[f64]) -> String {
    ratios
        .iter()
        .map(|r| format!("{r:.3}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() {
    let config = parse_args();
    let root = config.dir.clone();
    let overwrite = RawTarget::Overwrite(prepare_overwrite_file(
        &root,
        keelmq_wal::DEFAULT_SEGMENT_SIZE_BYTES,
    ));
    let mut rows = Vec::new();
    for &n in &config.appenders {
        // Alternate WAL and raw rounds so that load from elsewhere on the machine hits both
        // sides alike; each raw round uses the batch size its WAL round just achieved.
        let wal_dir = root.join(format!("wal-{n}"));
        let wal = open_warm(&wal_dir);
        let mut wal_rounds = Vec::new();
        let (mut round_ratios, mut overwrite_ratios) = (Vec::new(), Vec::new());
        let (mut raw_records, mut raw_syncs, mut overwrite_records) = (0.0, 0.0, 0.0);
        for _ in 0..config.rounds.max(1) {
            let result = run_wal(&wal, n, config.secs, config.threads_mode);
            let rpf = result.records_per_fsync.round().max(1.0) as usize;
            let append = RawTarget::Append(root.clone());
            let (records, syncs) = run_raw(&append, rpf, config.secs, result.writer_nice);
            let (over, _) = run_raw(&overwrite, rpf, config.secs, result.writer_nice);
            round_ratios.push(result.records_per_s / records);
            overwrite_ratios.push(result.records_per_s / over);
            raw_records += records;
            raw_syncs += syncs;
            overwrite_records += over;
            wal_rounds.push(result);
        }
        drop(wal);
        let _ = std::fs::remove_dir_all(&wal_dir);
        let rounds = wal_rounds.len() as f64;
        let (raw_records_per_s, raw_fsyncs_per_s) = (raw_records / rounds, raw_syncs / rounds);
        let raw_overwrite_records_per_s = overwrite_records / rounds;
        let mean = |f: fn(&WalResult) -> f64| wal_rounds.iter().map(f).sum::<f64>() / rounds;
        let mut p50s: Vec<u64> = wal_rounds.iter().map(|w| w.p50_us).collect();
        let mut p99s: Vec<u64> = wal_rounds.iter().map(|w| w.p99_us).collect();
        p50s.sort_unstable();
        p99s.sort_unstable();
        let wal = WalResult {
            writer_nice: wal_rounds[0].writer_nice,
            rotations: wal_rounds.iter().map(|w| w.rotations).sum(),
            recycled: wal_rounds.iter().map(|w| w.recycled).sum(),
            records_per_s: mean(|w| w.records_per_s),
            fsyncs_per_s: mean(|w| w.fsyncs_per_s),
            records_per_fsync: mean(|w| w.records_per_fsync),
            p50_us: p50s[p50s.len() / 2],
            p99_us: p99s[p99s.len() / 2],
        };
        let (ratio, overwrite_ratio) = (median(&round_ratios), median(&overwrite_ratios));
        let (round_ratios, overwrite_ratios) = (
            format_ratios(&round_ratios),
            format_ratios(&overwrite_ratios),
        );
        if !config.json {
            println!(
                "appenders {n:>4}: wal {:>10.0} rec/s {:>8.0} fsync/s  p50 {:>6} us  p99 {:>6} us  {:>7.1} rec/fsync | raw {:>10.0} rec/s {:>8.0} fsync/s, overwriting {:>10.0} rec/s | ratio {:.2}, to overwriting {:.2}",
                wal.records_per_s, wal.fsyncs_per_s, wal.p50_us, wal.p99_us, wal.records_per_fsync,
                raw_records_per_s, raw_fsyncs_per_s, raw_overwrite_records_per_s, ratio,
                overwrite_ratio
            );
        } else {
            eprintln!(
                "appenders {n}: ratio {ratio:.2} (rounds {round_ratios}), to overwriting \
                 {overwrite_ratio:.2} (rounds {overwrite_ratios})"
            );
        }
        rows.push(format!(
            "{{\"appenders\": {n}, \"wal_records_per_s\": {:.0}, \"wal_fsyncs_per_s\": {:.0}, \"p50_us\": {}, \"p99_us\": {}, \"raw_records_per_s\": {:.0}, \"records_per_fsync\": {:.2}, \"raw_fsyncs_per_s\": {:.0}, \"wal_to_raw_ratio\": {:.3}, \"round_ratios\": [{round_ratios}], \"raw_overwrite_records_per_s\": {:.0}, \"wal_to_overwrite_ratio\": {:.3}, \"overwrite_round_ratios\": [{overwrite_ratios}], \"rotations\": {}, \"recycled_rotations\": {}, \"writer_nice\": {}}}",
            wal.records_per_s, wal.fsyncs_per_s, wal.p50_us, wal.p99_us, raw_records_per_s,
            wal.records_per_fsync, raw_fsyncs_per_s, ratio, raw_overwrite_records_per_s,
            overwrite_ratio, wal.rotations, wal.recycled,
            wal.writer_nice.map_or("null".to_string(), |n| n.to_string())
        ));
    }
    let _ = std::fs::remove_dir_all(&root);
    println!(
        "{{\"results\": [{}], \"mode\": \"{}\", \"record_bytes\": {RECORD_BYTES}}}",
        rows.join(", "),
        if config.threads_mode {
            "threads"
        } else {
            "callback"
        },
    );
}
