//! A real process is SIGKILLed while appending, over and over (as sled's crash tests do: the
//! test binary re-executes itself as the child).
//!
//! The child appends from several threads with `SyncPolicy::Always` and prints
//! `durable <seq> <id>` for every record whose durability it was told about. The parent kills
//! it at a random moment, reopens the log and checks that every reported record is there,
//! with the payload that id implies. 100 kills by default; `KEELMQ_WAL_SOAK=1` does 500.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{check_payload, payload_for, seed, soak, Rng, TempDir};
use keelmq_wal::{Wal, WalOptions};

const CHILD_DIR_ENV: &str = "KEELMQ_WAL_SIGKILL_CHILD_DIR";
const CHILD_RUN_ENV: &str = "KEELMQ_WAL_SIGKILL_CHILD_RUN";
const TEST_NAME: &str = "sigkill_never_loses_a_reported_record";
const APPENDER_THREADS: u64 = 4;
/// The child stops by itself after this long, in case the parent died without killing it.
const CHILD_MAX_LIFETIME: Duration = Duration::from_secs(30);

fn options() -> WalOptions {
    WalOptions {
        // Small enough that the run crosses many rotations (and truncations) while killed.
        segment_size_bytes: 64 * 1024,
        ..WalOptions::default()
    }
}

fn child_main(dir: &Path, run: u64) -> ! {
    let (wal, _) = Wal::open(dir, options()).expect("child: open");
    let wal = Arc::new(wal);
    let started = Instant::now();
    let threads: Vec<_> = (0..APPENDER_THREADS)
        .map(|t| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                let stdout = std::io::stdout();
                for counter in 0u64.. {
                    if started.elapsed() > CHILD_MAX_LIFETIME {
                        std::process::exit(0);
                    }
                    let id = (run << 40) | (t << 32) | counter;
                    let appended = wal.append(t as u8, payload_for(id)).expect("child: append");
                    let seq = appended.durable.wait().expect("child: durable");
                    let mut out = stdout.lock();
                    if writeln!(out, "durable {seq} {id}")
                        .and_then(|()| out.flush())
                        .is_err()
                    {
                        std::process::exit(0); // the parent is gone
                    }
                    if t == 0 && counter % 256 == 255 {
                        // Checkpoint-style truncation well behind the durable point.
                        let _ = wal.truncate_through(seq.saturating_sub(2000));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    std::process::exit(0);
}

/// Runs one child, kills it after `delay`, returns the (seq, id) pairs it reported.
fn run_child(
    dir: &Path,
    run: u64,
    delay: Duration,
    wait_for_first_report: bool,
) -> Vec<(u64, u64)> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_RUN_ENV, run.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().unwrap();
    let (first_tx, first_rx) = std::sync::mpsc::sync_channel(1);
    let reader = std::thread::spawn(move || {
        let mut reports = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let mut parts = line.split_whitespace();
            if parts.next() != Some("durable") {
                continue; // test-harness chatter
            }
            // A line cut by the kill has no newline and never reaches here, so every parsed
            // line was completely reported.
            let seq = parts.next().and_then(|s| s.parse().ok());
            let id = parts.next().and_then(|s| s.parse().ok());
            if let (Some(seq), Some(id)) = (seq, id) {
                if reports.is_empty() {
                    let _ = first_tx.try_send(());
                }
                reports.push((seq, id));
            }
        }
        reports
    });
    if wait_for_first_report {
        let _ = first_rx.recv_timeout(Duration::from_secs(20));
    }
    std::thread::sleep(delay);
    // Child::kill sends SIGKILL on Unix, to exactly the process we started.
    child.kill().expect("SIGKILL child");
    child.wait().expect("reap child");
    reader.join().expect("reader thread")
}

fn verify(dir: &Path, reports: &[(u64, u64)], what: &str) -> u64 {
    let (wal, recovery) =
        Wal::open(dir, options()).unwrap_or_else(|e| panic!("{what}: reopen: {e}"));
    let Some(min_reported) = reports.iter().map(|r| r.0).min() else {
        wal.close().unwrap();
        return recovery.last_seq;
    };
    let from = min_reported.max(recovery.first_seq);
    let mut found = std::collections::HashMap::new();
    for r in wal
        .read_from(from)
        .unwrap_or_else(|e| panic!("{what}: read_from: {e}"))
    {
        let r = r.unwrap_or_else(|e| panic!("{what}: read: {e}"));
        let id =
            check_payload(&r.payload).unwrap_or_else(|| panic!("{what}: bad payload at {}", r.seq));
        found.insert(r.seq, id);
    }
    for &(seq, id) in reports {
        if seq < recovery.first_seq {
            continue; // removed by a checkpoint truncation, legitimately
        }
        assert_eq!(
            found.get(&seq),
            Some(&id),
            "{what}: reported durable record {seq} (id {id}) lost"
        );
    }
    wal.close().unwrap();
    recovery.last_seq
}

#[test]
fn sigkill_never_loses_a_reported_record() {
    if let Ok(dir) = std::env::var(CHILD_DIR_ENV) {
        let run = std::env::var(CHILD_RUN_ENV)
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        child_main(Path::new(&dir), run);
    }
    let kills = if soak() { 500 } else { 100 };
    let mut rng = Rng::new(seed(TEST_NAME));
    let tmp = TempDir::new("sigkill");
    let mut total_reported = 0;
    let mut last_seq = 0;
    for run in 1..=kills {
        // Mostly kill mid-stream; sometimes during start-up and recovery.
        let mid_stream = rng.chance(85);
        let delay = Duration::from_millis(rng.below(if mid_stream { 120 } else { 15 }));
        let reports = run_child(tmp.path(), run, delay, mid_stream);
        total_reported += reports.len();
        last_seq = verify(tmp.path(), &reports, &format!("kill {run}"));
    }
    eprintln!("{kills} kills, {total_reported} reported records verified, log at seq {last_seq}");
    assert!(
        total_reported > kills as usize,
        "children reported too little to prove anything"
    );
}
