//! The persistence layer when its write-ahead log does not line up with its store, and when
//! an append nobody waits for fails (issue "Close the durability holes a review found", items
//! 4 and 5). Runs on the WAL's in-memory file system with an in-memory store.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keelmq::persistence::records::*;
use keelmq::persistence::{Error, Persistence, PersistenceOptions};
use keelmq_storage::MemStore;
use keelmq_wal::fs::MemFs;

fn options() -> PersistenceOptions {
    common::memfs_persistence_options()
}

fn session(client: &str) -> Record {
    Record::Session(SessionRecord {
        client: client.to_string(),
        protocol: 5,
        expiry_interval: 300,
        disconnected_at_ms: None,
    })
}

fn open(fs: &MemFs, wal: &str, store: &MemStore) -> Result<Persistence, Error> {
    Persistence::open_parts(
        Arc::new(fs.clone()),
        wal.as_ref(),
        Box::new(store.clone()),
        options(),
        None,
    )
    .map(|(p, _)| p)
}

fn has_session(p: &Persistence, client: &str) -> bool {
    let prefix = format!("session {client} ");
    p.canonical().iter().any(|l| l.starts_with(&prefix))
}

/// Item 4: a WAL directory moved aside (as the broker's corruption message advises) must not
/// make new records reuse sequence numbers the store has applied: the next recovery would skip
/// them, losing everything acknowledged since. And a log whose newest records are missing is
/// refused, not silently continued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_wal_continues_above_the_store_and_a_short_one_is_refused() {
    let fs = MemFs::new();
    let store = MemStore::new();
    let p = open(&fs, "/wal", &store).unwrap();
    for i in 0..5 {
        p.commit(vec![session(&format!("old{i}"))]).await.unwrap();
    }
    p.checkpoint().unwrap();
    p.close().unwrap();
    // The WAL directory is moved aside: the broker starts on an empty one.
    let p = open(&fs, "/wal-new", &store).unwrap();
    assert!(
        p.wal().last_seq() >= 5,
        "new records go on above the store's"
    );
    p.commit(vec![session("new")]).await.unwrap();
    drop(p); // a crash: committed, never checkpointed
    let p = open(&fs, "/wal-new", &store).unwrap();
    assert!(
        has_session(&p, "new"),
        "the acknowledged record was skipped"
    );
    assert!(has_session(&p, "old4"));
    p.checkpoint().unwrap();
    p.close().unwrap();
    // The old directory ends before what the store has applied now: refused, with both.
    match open(&fs, "/wal", &store) {
        Err(e @ Error::WalGap { .. }) => {
            let text = e.to_string();
            assert!(text.contains("/wal") && text.contains("applied"), "{text}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a log ending before the store's applied_seq was accepted"),
    }
}

/// Item 5: a lazy append that fails (ENOSPC; the log gives its number back) must not go
/// unseen: persistence fails, the callback is told, and no checkpoint writes the image that
/// holds what the log lost. After a restart the state is the log's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_lazy_append_fails_persistence_and_stops_checkpoints() {
    let fs = MemFs::new();
    let store = MemStore::new();
    let p = open(&fs, "/wal", &store).unwrap();
    p.commit(vec![session("durable")]).await.unwrap();
    fs.set_space_limit(Some(fs.used_bytes()));
    let told = Arc::new(AtomicBool::new(false));
    let flag = told.clone();
    p.log_lazy(vec![session("lost")], move |_| {
        flag.store(true, Ordering::SeqCst)
    })
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !told.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(told.load(Ordering::SeqCst), "the failure was not reported");
    assert!(p.has_failed());
    fs.set_space_limit(None);
    assert!(p.checkpoint().is_err(), "a checkpoint after the failure");
    assert!(p.commit(vec![session("after")]).await.is_err());
    drop(p);
    let p = open(&fs, "/wal", &store).unwrap();
    assert!(has_session(&p, "durable"));
    assert!(!has_session(&p, "lost"));
    assert!(!has_session(&p, "after"));
}
