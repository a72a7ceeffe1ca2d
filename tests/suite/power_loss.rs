//! Power loss under the persistence layer: a recorded workload of commits and checkpoints runs
//! on the WAL's fault-injecting in-memory file system; then, for every write/fsync boundary of
//! its trace and every crash mode (drop unsynced data, keep a random part, tear the last write),
//! the file system is cut there, the persistence layer recovers, and the recovered state must
//! equal the state after some prefix of the commits that contains every commit that had
//! returned — nothing acknowledged lost, nothing invented, no commit half-applied.

use crate::common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keelmq::persistence::image::Image;
use keelmq::persistence::records::*;
use keelmq::persistence::{Persistence, PersistenceOptions};
use keelmq_storage::{Change, MemStore, Store, Table};
use keelmq_wal::fs::{CrashMode, MemFs};

/// A store that remembers its contents after each checkpoint, with the file-system trace
/// length at that moment, so a crash at trace point k sees the last checkpoint before k.
#[derive(Clone)]
struct RecordingStore {
    inner: MemStore,
    fs: MemFs,
    snapshots: Arc<Mutex<Vec<(usize, MemStore)>>>,
}

impl Store for RecordingStore {
    fn persisted_applied_seq(&self) -> keelmq_storage::Result<u64> {
        self.inner.persisted_applied_seq()
    }
    fn write_checkpoint(&self, changes: Vec<Change>, seq: u64) -> keelmq_storage::Result<()> {
        self.inner.write_checkpoint(changes, seq)?;
        self.snapshots
            .lock()
            .unwrap()
            .push((self.fs.trace_len(), self.inner.deep_copy()));
        Ok(())
    }
    fn scan(&self, t: Table, v: &mut keelmq_storage::Visitor<'_>) -> keelmq_storage::Result<()> {
        self.inner.scan(t, v)
    }
    fn get_many(&self, t: Table, keys: &[Vec<u8>]) -> keelmq_storage::Result<Vec<Option<Vec<u8>>>> {
        self.inner.get_many(t, keys)
    }
}

fn options() -> PersistenceOptions {
    common::memfs_persistence_options()
}

fn message(id: u64, topic: &str) -> StoredMessage {
    StoredMessage {
        id,
        topic: topic.into(),
        payload: vec![id as u8; 40],
        qos: 2,
        retain: false,
        payload_format_indicator: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: vec![],
        expires_at_ms: None,
        publisher: Some("pub".into()),
    }
}

fn will(i: u64) -> StoredWill {
    StoredWill {
        topic: format!("gone/{i}"),
        payload: vec![i as u8; 12],
        qos: 1,
        retain: i.is_multiple_of(2),
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(60),
        content_type: None,
        response_topic: None,
        correlation_data: Some(vec![7]),
        user_properties: vec![("k".into(), "v".into())],
        due_at_ms: 1_700_000_000_000 + i,
        disconnected_at_ms: 1_700_000_000_000,
    }
}

/// The workload: batches of records as the broker would commit them.
fn workload() -> Vec<Vec<Record>> {
    let session = |c: &str| {
        Record::Session(SessionRecord {
            client: c.into(),
            protocol: 5,
            expiry_interval: 600,
            disconnected_at_ms: None,
        })
    };
    let mut batches = vec![
        vec![session("sub-a"), session("sub-b"), session("pub")],
        vec![Record::Subscribe {
            client: "sub-a".into(),
            filter: "t/#".into(),
            subscription: StoredSubscription {
                options: 2,
                identifier: Some(7),
            },
        }],
    ];
    for i in 1..=40u64 {
        let pid = (i % 20) as u32 + 1;
        let mut b = vec![
            Record::Message(message(i, "t/x")),
            Record::Enqueue {
                client: "sub-a".into(),
                packet_id: pid,
                message_id: i,
                qos: 2,
                retain: false,
                subscription_ids: vec![7],
                shared_group: None,
            },
            Record::InboundQos2 {
                client: "pub".into(),
                packet_id: pid as u16,
            },
        ];
        if i % 5 == 0 {
            b.push(Record::RetainSet(StoredMessage {
                retain: true,
                ..message(i, "t/r")
            }));
        }
        // Wills waiting for their delay: set, replaced, published (cleared in a publish's
        // commit); one belongs to a session that is removed later.
        match i % 7 {
            0 | 5 => {
                // As the broker logs it: with the session record of the disconnect it follows.
                let client = if i == 19 { "sub-b" } else { "pub" };
                b.push(Record::Session(SessionRecord {
                    client: client.into(),
                    protocol: 5,
                    expiry_interval: 600,
                    disconnected_at_ms: Some(1_700_000_000_000),
                }));
                b.push(Record::WillSet {
                    client: client.into(),
                    will: will(i),
                });
            }
            3 => b.push(Record::WillClear {
                client: "pub".into(),
            }),
            _ => {}
        }
        batches.push(b);
        // The subscriber works through its queue: PUBREC, then PUBCOMP; the publisher PUBRELs.
        batches.push(vec![Record::PubRec {
            client: "sub-a".into(),
            packet_id: pid,
        }]);
        batches.push(vec![
            Record::DequeueMessage {
                client: "sub-a".into(),
                packet_id: pid,
                message_id: i,
            },
            Record::InboundRelease {
                client: "pub".into(),
                packet_id: pid as u16,
            },
        ]);
        if i == 25 {
            batches.push(vec![Record::SessionRemove {
                client: "sub-b".into(),
            }]);
            batches.push(vec![Record::RetainDelete {
                topic: "t/r".into(),
            }]);
        }
    }
    batches
}

/// Images after each number of commits applied, from an empty start. A commit is one WAL
/// record, so recovery must land exactly on a commit boundary.
fn model_prefixes(batches: &[Vec<Record>]) -> Vec<Vec<String>> {
    let mut image = Image::default();
    let empty = MemStore::new();
    let mut out = vec![image.canonical(&empty)];
    for batch in batches {
        for r in batch {
            image.apply(r.clone());
        }
        out.push(image.canonical(&empty));
    }
    out
}

/// How a batch of the workload is logged: committed (waited for), or lazily as the broker
/// logs a subscriber's acknowledgement (nobody waits; a later commit's fdatasync covers it).
fn is_lazy(batch: &[Record]) -> bool {
    batch
        .iter()
        .all(|r| matches!(r, Record::DequeueMessage { .. }))
}

/// The workload with each `Dequeue` in a batch of its own, to be logged lazily.
fn workload_with_lazy_dequeues() -> Vec<Vec<Record>> {
    let mut out = Vec::new();
    for batch in workload() {
        let (dequeues, rest): (Vec<Record>, Vec<Record>) = batch
            .into_iter()
            .partition(|r| matches!(r, Record::DequeueMessage { .. }));
        if !dequeues.is_empty() {
            out.push(dequeues);
        }
        if !rest.is_empty() {
            out.push(rest);
        }
    }
    out
}

/// Runs `batches` on a fresh recording file system and store, committing (or, for lazy ones,
/// logging lazily) each in turn, with checkpoints every 17 batches or, with
/// `concurrent_checkpoints`, from a thread of their own all along. Returns the trace, the
/// (trace length, batches that must survive) of every commit that returned, and the store's
/// snapshots.
async fn record_run(
    batches: &[Vec<Record>],
    concurrent_checkpoints: bool,
) -> (
    Vec<keelmq_wal::fs::TraceOp>,
    Vec<(usize, usize)>,
    Vec<(usize, MemStore)>,
) {
    let fs = MemFs::new();
    fs.start_trace();
    let store = RecordingStore {
        inner: MemStore::new(),
        fs: fs.clone(),
        snapshots: Default::default(),
    };
    let (p, _) = Persistence::open_parts(
        Arc::new(fs.clone()),
        Path::new("/data/wal"),
        Box::new(store.clone()),
        options(),
        None,
    )
    .expect("opens");
    let p = Arc::new(p);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checkpointer = concurrent_checkpoints.then(|| {
        let (p, stop) = (p.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                p.checkpoint().expect("checkpoint");
                std::thread::sleep(Duration::from_micros(300));
            }
        })
    });
    let mut committed: Vec<(usize, usize)> = Vec::new();
    for (i, batch) in batches.iter().enumerate() {
        if is_lazy(batch) {
            p.log_lazy(batch.clone(), |e| panic!("lazy append failed: {e}"))
                .expect("lazy append");
            continue;
        }
        p.commit(batch.clone()).await.expect("commit");
        // Everything logged before it (lazy batches too) is covered by its fdatasync.
        committed.push((fs.trace_len(), i + 1));
        if !concurrent_checkpoints && i % 17 == 16 {
            tokio::task::block_in_place(|| p.checkpoint()).expect("checkpoint");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(t) = checkpointer {
        t.join().expect("checkpointer");
    }
    let trace = fs.trace();
    let snapshots = store.snapshots.lock().unwrap().clone();
    assert!(snapshots.len() >= 3, "checkpoints ran");
    (trace, committed, snapshots)
}

/// Cuts the trace at every point, in every crash mode, recovers, and checks that the state is
/// the one after some prefix of the batches that holds every commit that had returned.
fn check_every_crash_point(
    batches: &[Vec<Record>],
    trace: &[keelmq_wal::fs::TraceOp],
    committed: &[(usize, usize)],
    snapshots: &[(usize, MemStore)],
) -> usize {
    let models = model_prefixes(batches);
    let mut checked = 0;
    for k in 0..=trace.len() {
        let must_have = committed
            .iter()
            .filter(|(t, _)| *t <= k)
            .map(|(_, n)| *n)
            .max()
            .unwrap_or(0);
        for (mode, seed) in [
            (CrashMode::DropUnsynced, 0),
            (CrashMode::KeepRandomPart, k as u64),
            (CrashMode::TearLastWrite, k as u64 * 7 + 1),
        ] {
            let crashed = MemFs::replay(&trace[..k]).expect("trace replays");
            crashed.crash(mode, seed);
            let store = snapshots
                .iter()
                .rfind(|(t, _)| *t <= k)
                .map(|(_, s)| s.deep_copy())
                .unwrap_or_default();
            let opened = Persistence::open_parts(
                Arc::new(crashed),
                Path::new("/data/wal"),
                Box::new(store),
                options(),
                None,
            );
            let (p, _) = match opened {
                Ok(x) => x,
                Err(e) => panic!("crash point {k} ({mode:?}): recovery failed: {e}"),
            };
            let got = p.canonical();
            let matching = (must_have..models.len()).find(|m| models[*m] == got);
            assert!(
                matching.is_some(),
                "crash point {k} ({mode:?}): the recovered state is not the state after any prefix of \
                 at least {must_have} commits"
            );
            checked += 1;
            drop(p);
        }
    }
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_at_every_fsync_boundary_keeps_every_committed_record() {
    let batches = workload();
    let (trace, committed, snapshots) = record_run(&batches, false).await;
    let checked = check_every_crash_point(&batches, &trace, &committed, &snapshots);
    eprintln!(
        "checked {checked} crash points over a trace of {} operations",
        trace.len()
    );
}

/// The same with the subscriber's `Dequeue`s logged lazily, as the broker does, and a
/// checkpoint running concurrently with the commits all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_appends_and_concurrent_checkpoints_keep_every_committed_record() {
    let batches = workload_with_lazy_dequeues();
    assert!(batches.iter().any(|b| is_lazy(b)));
    let (trace, committed, snapshots) = record_run(&batches, true).await;
    let checked = check_every_crash_point(&batches, &trace, &committed, &snapshots);
    eprintln!(
        "checked {checked} crash points over a trace of {} operations ({} checkpoints)",
        trace.len(),
        snapshots.len()
    );
}

/// ENOSPC on the WAL at every write of the workload: the commit that meets it fails (and
/// every one after it: persistence stops), a lazy append that meets it fails persistence too,
/// and whatever happens, a recovery afterwards holds every commit that returned and no part
/// of the one that failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enospc_at_every_write_loses_nothing_committed() {
    let batches = workload_with_lazy_dequeues();
    let models = model_prefixes(&batches);
    // Space used after each write of an unconstrained run: a limit one byte below each.
    let sizes = {
        let fs = MemFs::new();
        let (p, _) = Persistence::open_parts(
            Arc::new(fs.clone()),
            Path::new("/wal"),
            Box::new(MemStore::new()),
            options(),
            None,
        )
        .expect("opens");
        let mut sizes = vec![fs.used_bytes()];
        for batch in &batches {
            p.commit(batch.clone()).await.expect("commit");
            sizes.push(fs.used_bytes());
        }
        sizes
    };
    let mut failures = 0;
    for limit in sizes.windows(2).map(|w| w[1] - 1) {
        let fs = MemFs::new();
        let store = MemStore::new();
        let (p, _) = Persistence::open_parts(
            Arc::new(fs.clone()),
            Path::new("/wal"),
            Box::new(store.clone()),
            options(),
            None,
        )
        .expect("opens");
        fs.set_space_limit(Some(limit));
        let mut returned = 0;
        for (i, batch) in batches.iter().enumerate() {
            let ok = if is_lazy(batch) {
                p.log_lazy(batch.clone(), |_| {}).is_ok()
            } else {
                p.commit(batch.clone()).await.is_ok()
            };
            if !ok {
                break;
            }
            if !is_lazy(batch) {
                returned = i + 1;
            }
        }
        // A lazy append's failure is seen shortly after: wait for the writer to report.
        tokio::time::sleep(Duration::from_millis(20)).await;
        if p.has_failed() {
            failures += 1;
            assert!(
                p.checkpoint().is_err(),
                "limit {limit}: a checkpoint after ENOSPC"
            );
        }
        drop(p);
        fs.set_space_limit(None);
        let (p, _) = Persistence::open_parts(
            Arc::new(fs.clone()),
            Path::new("/wal"),
            Box::new(store),
            options(),
            None,
        )
        .unwrap_or_else(|e| panic!("limit {limit}: recovery failed: {e}"));
        let got = p.canonical();
        assert!(
            (returned..models.len()).any(|m| models[m] == got),
            "limit {limit}: the recovered state is not a prefix holding the {returned} commits \
             that returned"
        );
    }
    assert!(failures > 0, "ENOSPC was met");
    eprintln!(
        "ENOSPC at {} write points, {failures} of them failed persistence",
        sizes.len() - 1
    );
}
