//! Interoperability with Eclipse Paho for Python (paho-mqtt 2.x): each test starts the `keelmq`
//! binary on an ephemeral loopback port and runs one scenario of `tests/paho/interop.py` against
//! it, across MQTT 3.1, 3.1.1 and 5.0 as the scenario says. The script does the checking and
//! exits non-zero naming the failed check; its output is shown when a test fails.
//!
//! The interpreter is `$KEELMQ_PYTHON`, else `python3`. Without it or without paho-mqtt 2.x the
//! tests skip, unless `KEELMQ_REQUIRE_INTEROP` is set (scripts/test.sh), where they fail.

use crate::common;

use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

/// Longest one scenario may run; the script's own watchdog ends it at 50 s, the slowest scenario
/// takes about 5 s.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(60);

/// A directory for one test's configuration and data, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("keelmq-paho-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creates the test directory");
        TempDir(dir)
    }

    /// Writes a configuration: data in this directory, `$SYS` every second, plus `extra` (TOML
    /// tables).
    fn config(&self, extra: &str) -> PathBuf {
        let path = self.0.join("keelmq.toml");
        let data = self.0.join("data");
        let text = format!(
            "data_dir = {:?}\n\n[sys]\ninterval_secs = 1\n\n{extra}",
            data.display().to_string()
        );
        std::fs::write(&path, text).expect("writes the configuration");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs scenario `name` of `tests/paho/interop.py` against a fresh broker configured with
/// `extra_config`, and fails the test unless the script exits 0.
fn scenario(name: &str, extra_config: &str) {
    let Some(python) = common::paho_python() else {
        return;
    };
    let dir = TempDir::new(name);
    let config = dir.config(extra_config);
    let broker = common::BrokerProcess::start(&["--config", config.to_str().expect("UTF-8 path")]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/paho/interop.py");
    let started = Instant::now();
    let port = broker.port().to_string();
    let args: Vec<&std::ffi::OsStr> = vec![name.as_ref(), "127.0.0.1".as_ref(), port.as_ref()];
    let run = common::run_python(&python, &script, &args, SCENARIO_TIMEOUT);
    let elapsed = started.elapsed();
    let (status, stdout, stderr) = (run.status, run.stdout, run.stderr);
    let outcome = match status {
        Some(s) if s.success() => {
            eprintln!("paho scenario {name}: passed in {elapsed:.1?}");
            return;
        }
        Some(s) => format!("failed ({s})"),
        None => format!("killed after {SCENARIO_TIMEOUT:?}"),
    };
    panic!(
        "paho scenario {name} {outcome} after {elapsed:.1?} against {}\n--- stdout\n{stdout}--- stderr\n{stderr}",
        broker.addr
    );
}

/// QoS 0/1/2 both ways for 3.1, 3.1.1 and 5: delivered at min(publish, granted) QoS, every
/// publish acknowledged; and across versions.
#[test]
fn paho_qos_matrix_each_version() {
    scenario("qos", "");
}

/// Retained messages set, replaced and deleted (3.1.1, 5), seen by new subscribers on exact and
/// wildcard filters with the retain flag.
#[test]
fn paho_retained_set_replace_delete() {
    scenario("retained", "");
}

/// Wills: on a lost connection (with v5 properties, retained), none after DISCONNECT, after v5
/// DISCONNECT 0x04, and a v5 Will Delay Interval cancelled by reconnecting.
#[test]
fn paho_will_messages() {
    scenario("will", "");
}

/// Persistent sessions (3.1.1 clean session 0, v5 clean start 0 with expiry) get what was
/// published while they were offline, with session present.
#[test]
fn paho_session_resume() {
    scenario("session", "");
}

/// Subscriptions made while a retained QoS 1 PUBLISH is being handled each get it, live or as the
/// retained copy (20 rounds of 12 racing SUBSCRIBEs).
#[test]
fn paho_retained_update_racing_subscriptions() {
    scenario("retained_race", "");
}

/// A second connection with the same client id takes over (v5: DISCONNECT 0x8E to the first).
#[test]
fn paho_session_takeover() {
    scenario("takeover", "");
}

/// 3.1.1: a CleanSession=0 connection taking over a CleanSession=1 one gets no session.
#[test]
fn paho_clean_session_not_reused_by_takeover() {
    scenario("clean_session_takeover", "");
}

/// `$share/g/...`: each message to exactly one member of the group (3.1.1 and 5).
#[test]
fn paho_shared_subscriptions() {
    scenario("shared", "");
}

/// v5 topic aliases from the publisher, and to a subscriber allowing 5 (and one allowing none).
#[test]
fn paho_v5_topic_alias() {
    scenario("topic_alias", "[mqtt]\ntopic_alias_maximum = 4\n");
}

/// v5 Message Expiry Interval on messages queued for an offline session.
#[test]
fn paho_v5_message_expiry() {
    scenario("expiry", "");
}

/// Overlapping subscriptions: one copy at the highest QoS, with every v5 Subscription
/// Identifier.
#[test]
fn paho_overlapping_subscriptions_and_identifiers() {
    scenario("sub_ids", "");
}

/// `$SYS/broker/uptime` to an explicit subscriber, no `$SYS` topic to `#`.
#[test]
fn paho_sys_topics() {
    scenario("sys", "");
}

/// v5 user properties (order kept), content type, response topic, correlation data and payload
/// format indicator pass through unchanged.
#[test]
fn paho_v5_properties_pass_through() {
    scenario("properties", "");
}

/// A client with keep-alive 1 s that stops sending is disconnected after 1.5 s; its will shows
/// it.
#[test]
fn paho_keep_alive_timeout() {
    scenario("keepalive", "");
}
