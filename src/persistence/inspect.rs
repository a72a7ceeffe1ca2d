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
    let records = scan_wal(&dir.join("wal"), dump, out, &mut report)?;
    let store_dir = dir.join("store");
    let (mut image, store) = open_store(&store_dir, &mut report)?;
    check_coverage(&mut report);
    for (seq, batch) in records {
        if seq > report.checkpoint_seq {
            for record in batch {
                image.apply(record);
            }
            report.replayed += 1;
        }
    }
    let retained = match image.retained_count(&*store) {
        Ok(n) => n.to_string(),
        Err(e) => {
            let problem = format!("{}: {e}", store_dir.display());
            report.problems.push(problem);
            "?".to_string()
        }
    };
    check_bodies(&image, &*store, &store_dir, &mut report);
    if image.inconsistencies > 0 {
        report.problems.push(format!(
            "{} records refer to missing messages",
            image.inconsistencies
        ));
    }
    print_summary(dir, &image, &retained, &report, out)?;
    Ok(report)
}

/// Every WAL segment checked frame by frame and every record decoded; the decoded batches by
/// sequence number.
fn scan_wal(
    wal_dir: &Path,
    dump: bool,
    out: &mut dyn Write,
    report: &mut InspectReport,
) -> anyhow::Result<Vec<(u64, Vec<Record>)>> {
    let mut records = Vec::new();
    let segs = segments(wal_dir)?;
    report.wal_segments = segs.len();
    let mut expected = None;
    for (i, (seq, path)) in segs.iter().enumerate() {
        let bytes = std::fs::read(path)?;
        report.wal_bytes += bytes.len() as u64;
        let newest = i + 1 == segs.len();
        let mode = RecoveryMode::TolerateTornTail;
        let scan = scan_segment(*seq, &bytes, newest, expected, mode);
        report_outcome(&scan.outcome, path, out, report)?;
        for r in &scan.records {
            let start = r.offset as usize + format::RECORD_HEADER_LEN;
            let payload = bytes.get(start..(r.offset + r.len) as usize).unwrap_or(&[]);
            match Record::decode_batch(r.record_type, payload) {
                Ok(batch) => {
                    if dump {
                        for rec in &batch {
                            let (seq, at) = (r.seq, r.offset);
                            writeln!(out, "seq {seq} ({}@{at}): {rec:?}", path.display())?;
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
    Ok(records)
}

/// A note for a torn tail or an interrupted creation (the broker repairs those), a problem for
/// corruption.
fn report_outcome(
    outcome: &ScanOutcome,
    path: &Path,
    out: &mut dyn Write,
    report: &mut InspectReport,
) -> std::io::Result<()> {
    let path = path.display();
    match outcome {
        ScanOutcome::Clean => {}
        ScanOutcome::TornTail { offset, reason } => writeln!(
            out,
            "note: {path} holds no records after offset {offset} ({reason}): a write torn by a crash, or the unused rest of a recycled segment; the broker cuts it there at start",
        )?,
        ScanOutcome::TornCreation { reason } => writeln!(
            out,
            "note: {path} is an interrupted segment creation ({reason}); the broker removes it",
        )?,
        ScanOutcome::Corrupt { offset, reason } => report
            .problems
            .push(format!("{path}: corrupt at offset {offset}: {reason}")),
    }
    Ok(())
}

/// The store opened read-only and its image loaded (empty if there is no store yet).
fn open_store(
    store_dir: &Path,
    report: &mut InspectReport,
) -> anyhow::Result<(Image, Box<dyn Store>)> {
    let mut image = Image::default();
    let mut store: Box<dyn Store> = Box::new(MemStore::new());
    if store_dir.exists() {
        match RocksStore::open_read_only(store_dir) {
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
    Ok((image, store))
}

/// The WAL must continue where the checkpoint ends, and reach at least to it.
fn check_coverage(report: &mut InspectReport) {
    let checkpoint = report.checkpoint_seq;
    if let Some(first) = report.first_seq.filter(|&f| f > checkpoint + 1) {
        report.problems.push(format!(
            "WAL starts at {first} but the checkpoint covers only up to {checkpoint}: records are missing"
        ));
    }
    if let Some(last) = report.last_seq.filter(|&l| l < checkpoint) {
        report.problems.push(format!(
            "WAL ends at {last} but the checkpoint covers up to {checkpoint}: the WAL's newest \
             segments are missing (the broker refuses to start; move the whole WAL \
             directory aside to start from the store)"
        ));
    }
}

/// Every queue entry's body must be in memory (the WAL tail) or in the store, and every stored
/// body must decode.
fn check_bodies(image: &Image, store: &dyn Store, store_dir: &Path, report: &mut InspectReport) {
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
        let problem = format!("{}: {e}", store_dir.display());
        report.problems.push(problem);
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
}

/// What the directory holds, and every problem found.
fn print_summary(
    dir: &Path,
    image: &Image,
    retained: &str,
    report: &InspectReport,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let [sessions, subscriptions, deliveries, inbound, bodies] = image.counts();
    let inflight = image
        .sessions
        .values()
        .flat_map(|s| s.deliveries.values())
        .filter(|d| d.awaiting_pubcomp)
        .count();
    let seq = |s: Option<u64>| s.map_or("-".into(), |s| s.to_string());
    writeln!(out, "data directory: {}", dir.display())?;
    writeln!(
        out,
        "wal: {} segments, {} bytes, records {}..{}",
        report.wal_segments,
        report.wal_bytes,
        seq(report.first_seq),
        seq(report.last_seq)
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
    for p in &report.problems {
        writeln!(out, "PROBLEM: {p}")?;
    }
    if !report.problems.is_empty() {
        writeln!(
            out,
            "To start anyway, move the damaged file aside (e.g. `mv FILE FILE.bad`); data in it is lost."
        )?;
    }
    Ok(())
}
