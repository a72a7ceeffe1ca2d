//! `keelmq bench` end to end: the real binary's `sub` and `pub` against a real broker (KeelMQ,
//! and Mosquitto when installed), checking that the summaries count exactly what was sent —
//! so that the numbers the comparison script reports can be trusted.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

fn keelmq() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keelmq"))
}

/// Starts `keelmq bench sub` and returns once it reports every subscriber subscribed.
fn start_sub(port: u16, args: &[&str]) -> Child {
    let mut child = keelmq()
        .args(["bench", "sub", "--quiet", "-p", &port.to_string()])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("keelmq bench sub starts");
    let stderr = child.stderr.take().expect("piped");
    let mut lines = BufReader::new(stderr).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.starts_with("ready:") => {
                assert!(!line.contains(" 0 of"), "{line}");
                break;
            }
            Some(Ok(_)) => {}
            _ => panic!("bench sub ended before it was ready"),
        }
    }
    // Keep draining stderr so that the child never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    child
}

/// The JSON summary (last line of stdout) of a finished bench process.
fn summary(out: std::process::Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON summary in {stdout}"));
    serde_json::from_str(line).expect("the summary is JSON")
}

fn run_pub(port: u16, args: &[&str]) -> Value {
    let out = keelmq()
        .args(["bench", "pub", "--quiet", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("keelmq bench pub runs");
    summary(out)
}

fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// 2 subscribers, 3 publishers × 400 messages at `qos`: every subscriber gets all 1,200 once.
fn exact_counts(port: u16, qos: &str, mqtt: &str) {
    let sub = start_sub(
        port,
        &[
            "-c",
            "2",
            "-t",
            "bench/#",
            "-q",
            qos,
            "-V",
            mqtt,
            "--idle-exit",
            "2",
            "-d",
            "60",
        ],
    );
    let p = run_pub(
        port,
        &[
            "-c", "3", "-t", "bench/%i", "-q", qos, "-V", mqtt, "-s", "64", "-L", "400",
        ],
    );
    let s = summary(sub.wait_with_output().expect("bench sub ends"));
    assert_eq!(n(&p, "connected"), 3, "{p}");
    assert_eq!(n(&p, "sent"), 1200, "{p}");
    if qos != "0" {
        assert_eq!(n(&p, "acked"), 1200, "{p}");
        assert_eq!(n(&p["ack_latency"], "count"), 1200, "{p}");
    }
    assert_eq!(n(&s, "subscribed"), 2, "{s}");
    assert_eq!(n(&s, "streams"), 6, "{s}");
    assert_eq!(n(&s, "unique"), 2400, "{s}");
    assert_eq!(n(&s, "received"), 2400, "{s}");
    assert_eq!(n(&s, "duplicated"), 0, "{s}");
    assert_eq!(n(&s, "lost"), 0, "{s}");
    assert_eq!(n(&s["latency"], "count"), 2400, "{s}");
    assert!(
        n(&s["latency"], "p50_us") <= n(&s["latency"], "p99_us"),
        "{s}"
    );
}

#[test]
fn pub_and_sub_count_exactly_at_every_qos() {
    let broker = common::BrokerProcess::start(&[]);
    exact_counts(broker.port(), "0", "3.1.1");
    exact_counts(broker.port(), "1", "5");
    exact_counts(broker.port(), "2", "3.1.1");
}

#[test]
fn paced_publishing_keeps_its_rate() {
    let broker = common::BrokerProcess::start(&[]);
    let p = run_pub(
        broker.port(),
        &[
            "-c", "4", "-t", "paced/%i", "-q", "1", "--rate", "400", "-d", "2",
        ],
    );
    let sent = n(&p, "sent");
    assert!((700..=900).contains(&sent), "400/s for 2 s: {p}");
    assert_eq!(n(&p, "acked"), sent, "{p}");
    let p = run_pub(
        broker.port(),
        &["-c", "2", "-t", "paced/%i", "-I", "20", "-d", "1"],
    );
    let sent = n(&p, "sent");
    assert!((80..=120).contains(&sent), "2 × 50/s for 1 s: {p}");
}

#[test]
fn conn_holds_idle_connections() {
    let broker = common::BrokerProcess::start(&[]);
    let out = keelmq()
        .args(["bench", "conn", "--quiet", "-p", &broker.port().to_string()])
        .args(["-c", "200", "-R", "1000", "-d", "1", "-V", "5"])
        .output()
        .expect("keelmq bench conn runs");
    let s = summary(out);
    assert_eq!(n(&s, "connected"), 200, "{s}");
    assert_eq!(n(&s, "conn_errors"), 0, "{s}");
    assert_eq!(n(&s, "dropped"), 0, "{s}");
    assert_eq!(n(&s["connect_latency"], "count"), 200, "{s}");
}

#[test]
fn conn_counts_refused_connections() {
    // Nothing listens on the port: every attempt is an error, and the run still ends.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let out = keelmq()
        .args(["bench", "conn", "--quiet", "-p", &port.to_string()])
        .args(["-c", "5", "-d", "1"])
        .output()
        .expect("keelmq bench conn runs");
    let s = summary(out);
    assert_eq!(n(&s, "connected"), 0, "{s}");
    assert_eq!(n(&s, "conn_errors"), 5, "{s}");
}

#[test]
fn bad_arguments_are_refused_with_a_reason() {
    let out = keelmq()
        .args(["bench", "pub", "-t", "x", "-q", "1", "-F", "0", "-L", "1"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--inflight"));
    let out = keelmq()
        .args(["bench", "pub", "-t", "x"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--duration or --limit"));
}

/// The tool works against another broker: Mosquitto on a private port.
#[test]
fn works_against_mosquitto() {
    let Some(mosquitto) = common::tool("mosquitto") else {
        return;
    };
    let dir = common::temp_dir("bench-mosquitto");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    std::fs::create_dir_all(&dir).expect("create the test directory");
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        // No queue limit: Mosquitto drops QoS 1 messages beyond 1000 queued for a subscriber
        // by default, and this test counts the tool, not Mosquitto's overflow policy.
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest none\n\
             max_queued_messages 0\n"
        ),
    )
    .expect("write config");
    let mut broker = Command::new(mosquitto)
        .arg("-c")
        .arg(&conf)
        .spawn()
        .expect("mosquitto starts");
    let up = common::wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up, "mosquitto listens on {port}");
    let result = std::panic::catch_unwind(|| exact_counts(port, "1", "3.1.1"));
    let _ = broker.kill();
    let _ = broker.wait();
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
