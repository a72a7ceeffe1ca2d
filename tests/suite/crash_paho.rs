//! Crash consistency as seen by an independent client: `tests/paho/crash.py` drives Eclipse Paho
//! for Python (paho-mqtt 2.x) against the real `keelmq` binary, which it starts itself and
//! SIGKILLs at random moments (`KEELMQ_PAHO_CRASH_KILLS` times, default 10), restarting it on the
//! same data directory. Persistent MQTT 5 and 3.1.1 subscribers and publishers (paho re-sends what
//! is unacknowledged after each reconnect) check that every message acknowledged with PUBACK or
//! PUBCOMP was delivered, that no QoS 2 message was delivered twice and that every session
//! survived. The script prints its seed (`KEELMQ_CRASH_SEED` replays the kill moments) and a
//! summary; its output is shown when the test fails.
//!
//! The interpreter is `$KEELMQ_PYTHON`, else `python3`. Without it or without paho-mqtt 2.x the
//! test skips, unless `KEELMQ_REQUIRE_INTEROP` is set (scripts/test.sh), where it fails.

use crate::common;

use std::net::TcpListener;
use std::path::Path;

use std::time::{Duration, Instant};

/// Kills when `KEELMQ_PAHO_CRASH_KILLS` is not set.
const KILLS_DEFAULT: u32 = 10;

/// The script's own watchdog ends it after 30 s + 4 s per kill (70 s for 10; a run of 10 kills
/// takes 10 to 25 s); this is the longest the test waits for it beyond that.
const TIMEOUT_MARGIN: Duration = Duration::from_secs(30);

/// A free loopback port below the kernel's ephemeral range (32768 and up by default), found by
/// binding random candidates. The broker is restarted on it about ten times and is down in
/// between; a port from the ephemeral range (`127.0.0.1:0`) could meanwhile be handed to another
/// socket, or to a reconnecting client's own end (a TCP self-connect), and the restart would fail.
fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    const LOW: u16 = 20_000;
    const HIGH: u16 = 32_000;
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    for attempt in 0u64..1000 {
        hasher.write_u64(attempt);
        let port = LOW + (hasher.finish() % u64::from(HIGH - LOW)) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{HIGH}");
}

/// Acknowledged QoS 1/2 messages survive repeated SIGKILLs of the broker, QoS 2 is never
/// duplicated, and persistent sessions (MQTT 5 and 3.1.1) stay present, with paho as the client.
#[test]
fn paho_acknowledged_messages_survive_broker_kills() {
    let Some(python) = common::paho_python() else {
        return;
    };
    let kills: u32 = match std::env::var("KEELMQ_PAHO_CRASH_KILLS") {
        Ok(v) => v.parse().expect("KEELMQ_PAHO_CRASH_KILLS is a number"),
        Err(_) => KILLS_DEFAULT,
    };
    let dir = common::temp_dir("paho-crash");
    std::fs::create_dir_all(&dir).expect("creates the data directory");
    let port = free_port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/paho/crash.py");
    let timeout = Duration::from_secs(30 + 4 * u64::from(kills)) + TIMEOUT_MARGIN;
    let started = Instant::now();
    let (port_arg, kills_arg) = (port.to_string(), kills.to_string());
    let args: Vec<&std::ffi::OsStr> = vec![
        env!("CARGO_BIN_EXE_keelmq").as_ref(),
        dir.as_os_str(),
        port_arg.as_ref(),
        kills_arg.as_ref(),
    ];
    let run = common::run_python(&python, &script, &args, timeout);
    let elapsed = started.elapsed();
    let (status, stdout, stderr) = (run.status, run.stdout, run.stderr);
    let outcome = match status {
        Some(s) if s.success() => {
            eprintln!("paho crash test: passed in {elapsed:.1?}\n{stdout}");
            let _ = std::fs::remove_dir_all(&dir);
            return;
        }
        Some(s) => format!("failed ({s})"),
        None => format!("killed after {timeout:?}"),
    };
    // The data directory is kept for `keelmq inspect`.
    panic!(
        "paho crash test {outcome} after {elapsed:.1?} on 127.0.0.1:{port} with {kills} kills; \
         data directory kept at {}\n--- stdout\n{stdout}--- stderr\n{stderr}",
        dir.display()
    );
}
