//! `keelmq inspect DATA_DIR`: verifies a data directory without changing it and prints what
//! it holds. Every WAL segment is checked frame by frame (crc, sequence continuity, header) and
//! every record decoded; the state store is opened read-only and loaded; the WAL tail after the
//! checkpoint is replayed over it. Damage is reported with the file and the byte offset, and
//! makes the command exit non-zero.

use std::io::Write;
use std::path::{Path, PathBuf};

use keelmq_storage::{MemStore, RocksStore, Store, Table};
use keelmq_wal::{format, scan_segment, RecoveryMode, ScanOutcome};

use super::records::decode_value;
use super::{Image, Record, StoredMessage};

/// What `inspect` found.
#[derive(Debug, Default)]
pub struct InspectReport {
    pub problems: Vec<String>,
    pub wal_segments: usize,
    pub wal_bytes: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub checkpoint_seq: u64,
    pub replayed: u64,
}

fn segments(wal_dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    if !wal_dir.exists() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(wal_dir)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some(format::SEGMENT_EXTENSION) {
            continue;
        }
        let seq = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| u64::from_str_radix(s, 16).ok());
        if let Some(seq) = seq {
            out.push((seq, path));
        }
    }
    out.sort();
    Ok(out)
}

/// Verifies `dir` and writes a report to `out` (every WAL record too when `dump`).
pub fn inspect(dir: &Path, dump: bool, out: &mut dyn Write) -> anyhow::Result<InspectReport> {
    let mut report = InspectReport::default();
    let mut records: Vec<(u64, Vec<Record>)> = Vec::new();
    let segs = segments(&dir.join("wal"))?;
    report.wal_segments = segs.len();
    let mut expected = None;
    for (i, (seq, path)) in segs.iter().enumerate() {
        let bytes = std::fs::read(path)?;
        report.wal_bytes += bytes.len() as u64;
        let newest = i + 1 == segs.len();
        let scan = scan_segment(
            *seq,
            &bytes,
            newest,
            expected,
            RecoveryMode::TolerateTornTail,
        );
        match &scan.outcome {
            ScanOutcome::Clean => {}
            ScanOutcome::TornTail { offset, reason } => writeln!(
                out,
                "note: {} holds no records after offset {offset} ({reason}): a write torn by a crash, or the unused rest of a recycled segment; the broker cuts it there at start",
                path.display()
            )?,
            ScanOutcome::TornCreation { reason } => writeln!(
                out,
                "note: {} is an interrupted segment creation ({reason}); the broker removes it",
                path.display()
            )?,
            ScanOutcome::Corrupt { offset, reason } => report.problems.push(format!(
                "{}: corrupt at offset {offset}: {reason}",
                path.display()
            )),
        }
        for r in &scan.records {
            let start = r.offset as usize + format::RECORD_HEADER_LEN;
            let payload = bytes.get(start..(r.offset + r.len) as usize).unwrap_or(&[]);
            match Record::decode_batch(r.record_type, payload) {
                Ok(batch) => {
                    if dump {
                        for rec in &batch {
                            writeln!(
                                out,
                                "seq {} ({}@{}): {rec:?}",
                                r.seq,
                                path.display(),
                                r.offset
                            )?;
                        }
                    }
                    records.push((r.seq, batch));
                }
                Err(e) => report.problems.push(format!(
                    "{}: record {} at offset {} does not decode: {e}",
                    path.display(),
                    r.seq,
                    r.offset
                )),
            }
            report.first_seq.get_or_insert(r.seq);
            report.last_seq = Some(r.seq);
        }
        expected = Some(scan.next_seq);
    }
    let store_dir = dir.join("store");
    let mut image = Image::default();
    let mut store: Box<dyn Store> = Box::new(MemStore::new());
    if store_dir.exists() {
        match RocksStore::open_read_only(&store_dir) {
            Ok(s) => {
                report.checkpoint_seq = s.persisted_applied_seq()?;
                match Image::load(&s) {
                    Ok(i) => image = i,
                    Err(e) => report
                        .problems
                        .push(format!("{}: {e}", store_dir.display())),
                }
                store = Box::new(s);
            }
            Err(e) => report.problems.push(e.to_string()),
        }
    }
    if let Some(first) = report.first_seq {
        if first > report.checkpoint_seq + 1 {
            report.problems.push(format!(
                "WAL starts at {first} but the checkpoint covers only up to {}: records are missing",
                report.checkpoint_seq
            ));
        }
    }
    if let Some(last) = report.last_seq {
        if last < report.checkpoint_seq {
            report.problems.push(format!(
                "WAL ends at {last} but the checkpoint covers up to {}: the WAL's newest \
                 segments are missing (the broker refuses to start; move the whole WAL \
                 directory aside to start from the store)",
                report.checkpoint_seq
            ));
        }
    }
    for (seq, batch) in records {
        if seq > report.checkpoint_seq {
            for record in batch {
                image.apply(record);
            }
            report.replayed += 1;
        }
    }
    let [sessions, subscriptions, deliveries, inbound, bodies] = image.counts();
    let retained = match image.retained_count(&*store) {
        Ok(n) => n.to_string(),
        Err(e) => {
            report
                .problems
                .push(format!("{}: {e}", store_dir.display()));
            "?".to_string()
        }
    };
    // Every queue entry's body must be in memory (the WAL tail) or in the store, and every
    // stored body must decode.
    let mut stored_bodies = std::collections::HashSet::new();
    let scanned = store.scan(Table::Messages, &mut |k, v| {
        match decode_value::<StoredMessage>(v) {
            Ok(m) => {
                stored_bodies.insert(m.id);
            }
            Err(e) => report.problems.push(format!(
                "{}: message {k:?} does not decode: {e}",
                store_dir.display()
            )),
        }
        Ok(())
    });
    if let Err(e) = scanned {
        report
            .problems
            .push(format!("{}: {e}", store_dir.display()));
    }
    for (client, s) in &image.sessions {
        for (pid, d) in &s.deliveries {
            if image.resident_message(d.message_id).is_none()
                && !stored_bodies.contains(&d.message_id)
            {
                report.problems.push(format!(
                    "queue entry {pid} of client {client:?} refers to message {} that is missing",
                    d.message_id
                ));
            }
        }
    }
    let inflight = image
        .sessions
        .values()
        .flat_map(|s| s.deliveries.values())
        .filter(|d| d.awaiting_pubcomp)
        .count();
    writeln!(out, "data directory: {}", dir.display())?;
    writeln!(
        out,
        "wal: {} segments, {} bytes, records {}..{}",
        report.wal_segments,
        report.wal_bytes,
        report.first_seq.map_or("-".into(), |s| s.to_string()),
        report.last_seq.map_or("-".into(), |s| s.to_string())
    )?;
    writeln!(
        out,
        "store: checkpoint at seq {}, {} WAL records after it",
        report.checkpoint_seq, report.replayed
    )?;
    writeln!(out, "sessions: {sessions}")?;
    writeln!(out, "subscriptions: {subscriptions}")?;
    writeln!(
        out,
        "queued messages: {deliveries} ({inflight} awaiting PUBCOMP), {bodies} bodies"
    )?;
    writeln!(out, "inbound qos2 awaiting PUBREL: {inbound}")?;
    writeln!(out, "retained: {retained}")?;
    if image.inconsistencies > 0 {
        report.problems.push(format!(
            "{} records refer to missing messages",
            image.inconsistencies
        ));
    }
    for p in &report.problems {
        writeln!(out, "PROBLEM: {p}")?;
    }
    if !report.problems.is_empty() {
        writeln!(
            out,
            "To start anyway, move the damaged file aside (e.g. `mv FILE FILE.bad`); data in it is lost."
        )?;
    }
    Ok(report)
}
