//! Interoperability with Debian's `mosquitto_pub` and `mosquitto_sub` (libmosquitto 2.x): each
//! test starts the `keelmq` binary on an ephemeral loopback port and drives it with the command
//! line clients, in MQTT 3.1, 3.1.1 and 5.0.
//!
//! # Knowing a subscriber is subscribed
//! `mosquitto_sub` says nothing on a pipe until it prints a message (its debug output is not
//! flushed), so each subscriber also subscribes, last, to a probe topic that holds a retained
//! message published before it starts. The broker answers a SUBSCRIBE only after applying all of
//! its filters and queues retained messages behind the SUBACK, so once the probe is printed every
//! filter of the subscriber is in place, and anything retained on its other filters was printed
//! before the probe. The probe is exactly one message, counted in `-C`.
//!
//! The probe is published at QoS 2: libmosquitto hands a QoS 2 message to the application only
//! when its PUBREL arrives, so a QoS 2 retained message followed by a QoS 0/1 probe could be
//! printed after the probe. Delivered at the subscription's QoS (at most the probe's), the probe
//! is printed after everything the broker sent before it.
//!
//! Without the tools the tests skip, unless `KEELMQ_REQUIRE_INTEROP` is set, where they fail.

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest wait for anything the broker should do promptly.
const TIMEOUT: Duration = Duration::from_secs(10);
/// `-W` of every subscriber: it exits by itself after this long, whatever happens.
const SUB_TIMEOUT_SECS: &str = "20";
/// The output format of every subscriber: QoS, retain flag, topic, payload.
const FORMAT: &str = "MSG %q %r %t %p";
const VERSIONS: [&str; 3] = ["mqttv31", "mqttv311", "mqttv5"];

struct Tools {
    publisher: PathBuf,
    subscriber: PathBuf,
}

fn tools() -> Option<Tools> {
    Some(Tools {
        publisher: common::tool("mosquitto_pub")?,
        subscriber: common::tool("mosquitto_sub")?,
    })
}

/// A broker for one test, with `$SYS` every second and data in a directory removed afterwards.
struct Broker {
    process: common::BrokerProcess,
    dir: PathBuf,
}

impl Broker {
    fn start(name: &str) -> Broker {
        let dir =
            std::env::temp_dir().join(format!("keelmq-mosquitto-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creates the test directory");
        let config = dir.join("keelmq.toml");
        let data = dir.join("data").display().to_string();
        std::fs::write(
            &config,
            format!("data_dir = {data:?}\n\n[sys]\ninterval_secs = 1\n"),
        )
        .expect("writes the configuration");
        let process =
            common::BrokerProcess::start(&["--config", config.to_str().expect("UTF-8 path")]);
        Broker { process, dir }
    }

    fn port(&self) -> String {
        self.process.port().to_string()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `mosquitto_pub` against the broker and fails the test unless it exits 0 in time (it
/// exits after the PUBACK / PUBCOMP of a QoS 1 / 2 message).
fn publish(tools: &Tools, broker: &Broker, args: &[&str]) {
    let mut child = Command::new(&tools.publisher)
        .args(["-h", "127.0.0.1", "-p", &broker.port()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub starts");
    let stdout = common::drain(child.stdout.take().expect("piped"));
    let stderr = common::drain(child.stderr.take().expect("piped"));
    let status = common::wait_timeout(&mut child, TIMEOUT);
    let out = Output {
        status: status
            .unwrap_or_else(|| panic!("mosquitto_pub {args:?} still running after {TIMEOUT:?}")),
        stdout: stdout.join().unwrap_or_default().into_bytes(),
        stderr: stderr.join().unwrap_or_default().into_bytes(),
    };
    assert!(
        out.status.success(),
        "mosquitto_pub {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A message printed by a subscriber in [`FORMAT`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Msg {
    qos: u8,
    retain: bool,
    topic: String,
    payload: String,
}

impl Msg {
    fn new(qos: u8, retain: bool, topic: &str, payload: &str) -> Msg {
        Msg {
            qos,
            retain,
            topic: topic.to_string(),
            payload: payload.to_string(),
        }
    }

    fn parse(line: &str) -> Option<Msg> {
        let rest = line.strip_prefix("MSG ")?;
        let mut fields = rest.splitn(4, ' ');
        let qos = fields.next()?.parse().ok()?;
        let retain = fields.next()? == "1";
        let topic = fields.next()?.to_string();
        let payload = fields.next().unwrap_or("").to_string();
        Some(Msg {
            qos,
            retain,
            topic,
            payload,
        })
    }
}

/// A `mosquitto_sub` child process whose printed lines arrive on a channel; killed on drop.
struct Sub {
    name: String,
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Option<JoinHandle<String>>,
}

impl Sub {
    /// Publishes the retained probe, starts `mosquitto_sub -i name -F FORMAT -W .. args -t probe`
    /// and waits until the probe is printed (see the module documentation).
    fn start(tools: &Tools, broker: &Broker, name: &str, args: &[&str]) -> Sub {
        let (mut sub, probe) = Sub::start_probed(tools, broker, name, args, FORMAT);
        let before = sub.until(&probe);
        assert!(
            before.is_empty(),
            "{name}: expected the probe first, got {before:?}\n{}",
            sub.report()
        );
        sub
    }

    /// Publishes the retained probe and starts the subscriber with it as its last filter,
    /// without waiting; returns the probe topic.
    fn start_probed(
        tools: &Tools,
        broker: &Broker,
        name: &str,
        args: &[&str],
        format: &str,
    ) -> (Sub, String) {
        let probe = format!("probe/{name}");
        publish(
            tools,
            broker,
            &["-q", "2", "-r", "-t", &probe, "-m", "ready"],
        );
        let mut args = args.to_vec();
        args.extend(["-t", &probe]);
        (Sub::spawn(tools, broker, name, &args, format), probe)
    }

    /// Starts `mosquitto_sub -i name -W .. -F format args` without waiting for anything.
    fn spawn(tools: &Tools, broker: &Broker, name: &str, args: &[&str], format: &str) -> Sub {
        let mut cmd = Command::new(&tools.subscriber);
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port(),
            "-i",
            name,
            "-W",
            SUB_TIMEOUT_SECS,
        ]);
        cmd.args(["-F", format]).args(args);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub starts");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Some(common::drain(child.stderr.take().expect("piped")));
        Sub {
            name: name.to_string(),
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// The next printed message, or `None` after `timeout`.
    fn next(&mut self, timeout: Duration) -> Option<Msg> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).ok()?;
            self.seen.push(line.clone());
            if let Some(m) = Msg::parse(&line) {
                return Some(m);
            }
        }
    }

    /// The messages printed before the one on topic `probe`.
    fn until(&mut self, probe: &str) -> Vec<Msg> {
        let mut before = Vec::new();
        loop {
            match self.next(TIMEOUT) {
                Some(m) if m.topic == probe => return before,
                Some(m) => before.push(m),
                None => panic!(
                    "probe {probe} not received, got {before:?}\n{}",
                    self.report()
                ),
            }
        }
    }

    /// The next `n` messages; fails the test if they do not all arrive in time.
    fn collect(&mut self, n: usize) -> Vec<Msg> {
        let end = Instant::now() + TIMEOUT;
        (0..n)
            .map(|i| {
                let left = end.saturating_duration_since(Instant::now());
                self.next(left).unwrap_or_else(|| {
                    panic!(
                        "received {i} of {n} messages within {TIMEOUT:?}\n{}",
                        self.report()
                    )
                })
            })
            .collect()
    }

    /// Waits for the subscriber to exit by itself (after `-C` messages) and checks it exited 0.
    fn expect_exit_ok(&mut self) {
        match common::wait_timeout(&mut self.child, TIMEOUT) {
            Some(s) if s.success() => {}
            other => panic!("exit status {other:?}, expected 0\n{}", self.report()),
        }
    }

    /// What the subscriber printed so far, for failure messages.
    fn report(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        let stderr = if self.child.try_wait().ok().flatten().is_some() {
            self.stderr
                .take()
                .map(|h| h.join().unwrap_or_default())
                .unwrap_or_default()
        } else {
            "(still running)".to_string()
        };
        format!(
            "--- {} stdout\n{}\n--- stderr\n{stderr}",
            self.name,
            self.seen.join("\n")
        )
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// QoS 0/1/2 from a publisher of every version to subscribers of every version and granted QoS:
/// each delivered once, at min(publish QoS, granted QoS), without the retain flag.
#[test]
fn mosquitto_qos_each_version_and_across_versions() {
    let Some(tools) = tools() else { return };
    let broker = Broker::start("qos");
    let mut subs = Vec::new();
    for v in VERSIONS {
        for granted in 0..3u8 {
            let name = format!("s-{v}-q{granted}");
            let q = granted.to_string();
            // 9 messages plus the probe.
            let args = ["-V", v, "-q", &q, "-t", "mq/qos/#", "-C", "10"];
            subs.push((granted, Sub::start(&tools, &broker, &name, &args)));
        }
    }
    let mut sent = Vec::new();
    for v in VERSIONS {
        for qos in 0..3u8 {
            let topic = format!("mq/qos/{v}/q{qos}");
            let payload = format!("from {v} at qos {qos}");
            publish(
                &tools,
                &broker,
                &[
                    "-V",
                    v,
                    "-i",
                    &format!("p-{v}-q{qos}"),
                    "-q",
                    &qos.to_string(),
                    "-t",
                    &topic,
                    "-m",
                    &payload,
                ],
            );
            sent.push((qos, topic, payload));
        }
    }
    for (granted, sub) in &mut subs {
        let mut got = sub.collect(sent.len());
        got.sort();
        let mut want: Vec<Msg> = sent
            .iter()
            .map(|(q, t, p)| Msg::new((*q).min(*granted), false, t, p))
            .collect();
        want.sort();
        let report = sub.report();
        assert_eq!(got, want, "{report}");
        sub.expect_exit_ok();
    }
}

/// A retained message reaches later subscribers (exact and wildcard filters) with the retain
/// flag and its own QoS, is replaced by the next one, and `-r -n` deletes it. Every publish is
/// QoS 1 or 2: `mosquitto_pub` then exits only once the broker acknowledged it, so the retained
/// store is known to hold it when the next subscriber starts (a QoS 0 publish gives no such
/// point).
#[test]
fn mosquitto_retained_set_replace_delete() {
    let Some(tools) = tools() else { return };
    let broker = Broker::start("retained");
    for v in VERSIONS {
        let topic = format!("mq/ret/{v}/state");
        let filters = [
            topic.clone(),
            format!("mq/ret/{v}/+"),
            format!("mq/ret/{v}/#"),
        ];
        // What a new subscriber to each filter receives before its probe.
        let retained_now = |round: &str| -> Vec<Vec<Msg>> {
            filters
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let name = format!("r-{v}-{round}-{i}");
                    let args = ["-V", v, "-q", "2", "-t", f.as_str()];
                    let (mut sub, probe) = Sub::start_probed(&tools, &broker, &name, &args, FORMAT);
                    sub.until(&probe)
                })
                .collect()
        };
        publish(
            &tools,
            &broker,
            &["-V", v, "-q", "2", "-r", "-t", &topic, "-m", "first"],
        );
        for got in retained_now("set") {
            assert_eq!(
                got,
                vec![Msg::new(2, true, &topic, "first")],
                "{v}: after set"
            );
        }
        publish(
            &tools,
            &broker,
            &["-V", v, "-q", "1", "-r", "-t", &topic, "-m", "second"],
        );
        for got in retained_now("replaced") {
            assert_eq!(
                got,
                vec![Msg::new(1, true, &topic, "second")],
                "{v}: after replace"
            );
        }
        publish(
            &tools,
            &broker,
            &["-V", v, "-q", "1", "-r", "-n", "-t", &topic],
        );
        for got in retained_now("deleted") {
            assert_eq!(got, vec![], "{v}: after delete with -r -n");
        }
    }
}

/// A will set with `mosquitto_sub --will-*` is published when the client is killed (SIGKILL: its
/// socket closes without DISCONNECT), and not when it exits normally (with DISCONNECT).
#[test]
fn mosquitto_will_on_kill() {
    let Some(tools) = tools() else { return };
    let broker = Broker::start("will");
    for v in VERSIONS {
        let will_topic = format!("mq/will/{v}");
        // The killed client's will, then the marker (the clean exit published no will).
        let mut watcher = Sub::start(
            &tools,
            &broker,
            &format!("w-{v}"),
            &["-V", v, "-q", "1", "-t", &will_topic, "-C", "3"],
        );

        let will_args = |payload: &str| {
            vec![
                "-V",
                v,
                "-t",
                "mq/nothing",
                "--will-topic",
                &will_topic,
                "--will-qos",
                "1",
            ]
            .into_iter()
            .map(str::to_string)
            .chain(["--will-payload".to_string(), payload.to_string()])
            .collect::<Vec<String>>()
        };
        let args = will_args("killed");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut doomed = Sub::start(&tools, &broker, &format!("k-{v}"), &args);
        doomed.child.kill().expect("SIGKILL");
        let _ = doomed.child.wait();
        let m = watcher.next(TIMEOUT);
        assert_eq!(
            m,
            Some(Msg::new(1, false, &will_topic, "killed")),
            "{v}\n{}",
            watcher.report()
        );

        // -C 1: exits with DISCONNECT once it has printed its probe.
        let mut args = will_args("clean exit");
        args.extend(["-C".to_string(), "1".to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut clean = Sub::start(&tools, &broker, &format!("c-{v}"), &args);
        clean.expect_exit_ok();
        std::thread::sleep(Duration::from_millis(200));
        publish(
            &tools,
            &broker,
            &["-V", v, "-q", "1", "-t", &will_topic, "-m", "marker"],
        );
        let m = watcher.next(TIMEOUT);
        assert_eq!(
            m,
            Some(Msg::new(1, false, &will_topic, "marker")),
            "{v}: will published after a clean exit?\n{}",
            watcher.report()
        );
        watcher.expect_exit_ok();
    }
}

/// `$SYS/broker/version` (published every second, retained) reaches an explicit subscriber.
#[test]
fn mosquitto_sys_broker_version() {
    let Some(tools) = tools() else { return };
    let broker = Broker::start("sys");
    for v in VERSIONS {
        let args = ["-V", v, "-t", "$SYS/broker/version", "-C", "1"];
        let mut sub = Sub::spawn(&tools, &broker, &format!("sys-{v}"), &args, FORMAT);
        let m = sub.next(TIMEOUT);
        assert!(
            m.as_ref().is_some_and(
                |m| m.topic == "$SYS/broker/version" && m.payload.starts_with("keelmq ")
            ),
            "{v}: {m:?}\n{}",
            sub.report()
        );
        sub.expect_exit_ok();
    }
}

/// v5 publish properties set with `mosquitto_pub -D` reach a v5 `mosquitto_sub` unchanged (user
/// properties in order, duplicates kept).
#[test]
fn mosquitto_v5_properties() {
    let Some(tools) = tools() else { return };
    let broker = Broker::start("props");
    let args = ["-V", "mqttv5", "-q", "1", "-t", "mq/props", "-C", "2"];
    let format = "MSG %q %r %t %C|%R|%D|%P|%F|%E|%p";
    let (mut sub, probe) = Sub::start_probed(&tools, &broker, "props-v5", &args, format);
    let before = sub.until(&probe);
    assert!(before.is_empty(), "{before:?}");
    publish(
        &tools,
        &broker,
        &[
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            "mq/props",
            "-m",
            "hello properties",
            "-D",
            "publish",
            "user-property",
            "k1",
            "v1",
            "-D",
            "publish",
            "user-property",
            "k2",
            "v2",
            "-D",
            "publish",
            "user-property",
            "k1",
            "v3",
            "-D",
            "publish",
            "content-type",
            "text/plain",
            "-D",
            "publish",
            "response-topic",
            "mq/reply",
            "-D",
            "publish",
            "correlation-data",
            "corr-1",
            "-D",
            "publish",
            "payload-format-indicator",
            "1",
            "-D",
            "publish",
            "message-expiry-interval",
            "60",
        ],
    );
    let m = sub.next(TIMEOUT);
    let want = "text/plain|mq/reply|corr-1|k1:v1 k2:v2 k1:v3|1|60|hello properties";
    assert!(
        m.as_ref().is_some_and(|m| m.topic == "mq/props"
            && (m.payload == want || m.payload == want.replace("|60|", "|59|"))),
        "got {m:?}, expected properties {want}\n{}",
        sub.report()
    );
    sub.expect_exit_ok();
}
