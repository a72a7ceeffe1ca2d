#!/usr/bin/env python3
"""Crash consistency of KeelMQ as seen by an independent client, Eclipse Paho for Python (2.x).

Usage: crash.py BINARY DATA_DIR PORT [KILLS]

Starts `BINARY serve --listen 127.0.0.1:PORT --data-dir DATA_DIR` itself, puts paho clients on
it, and SIGKILLs the broker KILLS times (default 10) at random moments, restarting it on the same
data directory each time. The clients run their network loops in threads and reconnect on their
own (short reconnect delay); every one of them has a persistent session, so paho re-sends what is
unacknowledged after each reconnect, which is what makes "acknowledged => delivered" checkable:

- two persistent subscribers of `crash/#` at QoS 2: MQTT 5 (Clean Start only on the first
  connect, Session Expiry Interval 3600) and 3.1.1 (Clean Session 0). Each subscribes once;
  the subscription must survive every crash, since it was acknowledged;
- four publishers with persistent sessions (one 5.0, three 3.1.1; up to 100 messages in flight
  each) sending sequence-numbered payloads,
  alternately QoS 1 on `crash/q1` and QoS 2 on `crash/q2`, with a bounded in-flight window, a
  bounded number of unacknowledged messages and a bounded total. Messages published while the
  broker is down wait in paho and go out after the reconnect.

A message is acknowledged when paho's on_publish fires for its mid: PUBACK (QoS 1) or PUBCOMP
(QoS 2). At the end publishing stops, the script waits (bounded) until everything acknowledged has
arrived, then checks, for each subscriber and publisher:

- every acknowledged QoS 1 and QoS 2 message was received at least once (QoS 1 duplicates are
  allowed and counted);
- no QoS 2 message was received twice;
- every acknowledgement had a success reason code, every message arrived at the QoS it was
  published with, and nothing arrived that was not published;
- every reconnect after the first found its session (CONNACK session present).

A PUBCOMP with 0x92 (packet identifier not found) counts as an acknowledgement and is only noted:
it answers a PUBREL re-sent after the broker had already released the id and lost its PUBCOMP in
the crash. Paho 2.2 has a QoS 2 sender bug that would make the broker deliver twice (see
`PahoClient`); the script corrects it, so a QoS 2 duplicate here is the broker's.

Kills mostly hit a broker that listens (recovery done) and carries traffic, sometimes one that
has just listened (clients reconnecting and re-sending), sometimes one still recovering.

Exit status: 0 when every check passed (with a summary); 1 naming the violations (with the first
few missing sequence numbers, each with paho's packet history for it, the kill times and the
tail of the broker's log), or when the run could not proceed (the broker did not start); 2 for
bad usage; 3 from the watchdog if the run hangs. The kill moments come from a seed, printed at
the start and taken from `KEELMQ_CRASH_SEED` when set (thread timing still varies between runs);
`KEELMQ_CRASH_VERBOSE=1` also shows the packet history behind notes. The broker is stopped by
PID at the end (SIGTERM, then SIGKILL), and dies with this script if it is killed
(PR_SET_PDEATHSIG).
"""

import collections
import ctypes
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import traceback

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

V311, V5 = mqtt.MQTTv311, mqtt.MQTTv5
HOST = "127.0.0.1"

# Broker uptime between kills: mostly long enough for all clients to reconnect and traffic to
# flow, sometimes short, to crash it while clients reconnect and re-send.
UPTIME_LONG_S = (0.4, 1.6)
UPTIME_SHORT_S = (0.02, 0.3)
UPTIME_SHORT_SHARE = 0.25
# Sometimes the broker is killed this long after it was started, without waiting for it to listen:
# during recovery (WAL replay takes tens to hundreds of milliseconds) or just after.
KILL_DURING_START_S = (0.0, 0.15)
KILL_DURING_START_SHARE = 0.15
# Time the broker stays down after a kill: clients fail to reconnect, publishers queue.
DOWNTIME_S = (0.0, 0.4)
# Paho's reconnect delay (doubling from min to max); short, so a restart is noticed quickly.
RECONNECT_DELAY_MIN_S = 0.05
RECONNECT_DELAY_MAX_S = 0.4
KEEPALIVE_S = 10
SESSION_EXPIRY_S = 3600

# Paho's in-flight window per publisher, and the unacknowledged messages (in flight or queued in
# paho) a publisher may have before it waits: bounds paho's queue while the broker is down.
INFLIGHT_WINDOW = 100
UNACKED_MAX = 200
# Publishing rate and total per publisher. The total stays far below 65535 so paho never reuses a
# mid within one run (the mid -> sequence-number map relies on that).
PUBLISH_RATE_PER_S = 400
PUBLISHED_MAX = 20000

# Bounded waits.
BROKER_START_TIMEOUT_S = 20.0
CONNECT_TIMEOUT_S = 10.0
SETTLE_TIMEOUT_S = 15.0  # after the last restart: clients back, acknowledgements, deliveries
DUPLICATE_GRACE_S = 0.5  # time given to a late duplicate after everything arrived
STOP_TIMEOUT_S = 5.0
MISSING_SHOWN = 10

START = time.monotonic()
# KEELMQ_CRASH_VERBOSE=1 also shows the packet history of messages behind notes, not only
# behind violations.
VERBOSE = bool(os.environ.get("KEELMQ_CRASH_VERBOSE"))
MID_IN_LOG = re.compile(r"(?:, m(\d+)\)|\(Mid: (\d+)\))")


def log(msg):
    print(f"[{time.monotonic() - START:6.2f}s] {msg}", flush=True)


class Failure(Exception):
    """The run could not proceed (broker did not start, client could not connect)."""


def props(packet_type, **values):
    p = Properties(packet_type)
    for k, v in values.items():
        setattr(p, k, v)
    return p


# ------------------------------------------------------------------------------------ broker

_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl
PR_SET_PDEATHSIG = 1


def _die_with_parent():
    # Runs in the forked child before exec: the broker gets SIGKILL when the thread that started
    # it (always the main thread) ends, so a killed script never leaves a broker behind.
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Broker:
    """The broker process, started and killed by this script; keeps the tail of its log."""

    def __init__(self, binary, data_dir, port):
        self.binary, self.data_dir, self.port = binary, data_dir, port
        # Queues that never fill in this run: a full queue of a subscriber that is draining it
        # refuses a 5.0 publisher (0x97) by design, and this script checks durability, not
        # flow control.
        os.makedirs(data_dir, exist_ok=True)
        self.config = os.path.join(data_dir, "crash.toml")
        with open(self.config, "w") as f:
            f.write("[limits]\nmax_queued_messages = 10000000\n")
        self.proc = None
        self.incarnation = 0
        self.log_tail = collections.deque(maxlen=300)
        self.recoveries = []  # the "recovered state" line of every start

    def start(self, wait=True):
        """Starts the broker; with `wait`, returns once it has recovered and listens."""
        self.incarnation += 1
        self.listening = threading.Event()
        env = dict(os.environ, RUST_LOG="info")
        self.proc = subprocess.Popen(
            [self.binary, "serve", "--listen", f"{HOST}:{self.port}", "--data-dir", self.data_dir,
             "--config", self.config],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            preexec_fn=_die_with_parent,
        )
        threading.Thread(target=self._read_log, args=(self.proc, self.incarnation, self.listening),
                         daemon=True).start()
        if wait:
            self._wait_listening()

    def _read_log(self, proc, incarnation, listening):
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            self.log_tail.append(f"[{incarnation}] {line}")
            if "recovered state" in line:
                self.recoveries.append((incarnation, line))
            if "local_addr=" in line:
                listening.set()

    def _wait_listening(self):
        """Waits for the log line saying it listens, which follows recovery. (The port accepts TCP
        connections earlier, during recovery: the listener is bound first.)"""
        end = time.monotonic() + BROKER_START_TIMEOUT_S
        while not self.listening.wait(0.02):
            code = self.proc.poll()
            if code is not None and not self.listening.wait(0.5):
                raise Failure(f"broker (start {self.incarnation}) exited with {code} before listening")
            if time.monotonic() > end:
                raise Failure(f"broker (start {self.incarnation}) not listening within {BROKER_START_TIMEOUT_S}s")

    def pid(self):
        return self.proc.pid if self.proc is not None else None

    def kill(self):
        code = self.proc.poll()
        if code is not None:
            raise Failure(f"broker (start {self.incarnation}) exited on its own with {code}")
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT_S; returns its exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log(f"broker did not stop on SIGTERM within {STOP_TIMEOUT_S}s; SIGKILL")
            os.kill(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()


# ------------------------------------------------------------------------------------ clients

class PahoClient(mqtt.Client):
    """paho-mqtt's Client with one fix to its QoS 2 sender (seen in 2.2.0).

    On every reconnect attempt paho resets its outgoing messages: a QoS 2 message waiting for
    PUBCOMP becomes "re-send PUBREL". But an attempt that fails (the broker is still down) is
    followed by another reset, which turns "re-send PUBREL" into "send PUBLISH" (DUP 0, same packet
    id). A broker that has already released that id then rightly takes it for a new message and
    delivers it again [MQTT-4.3.3]: a QoS 2 duplicate that is paho's. The fix puts such a message
    back to "waiting for PUBCOMP" before each reset, so the reset keeps re-sending PUBREL.
    """

    pubrel_kept = 0  # times this fix kept a message at PUBREL, shown in the summary

    def _messages_reconnect_reset_out(self):
        with self._out_message_mutex:
            for m in self._out_messages.values():
                if m.qos == 2 and m.state == mqtt.mqtt_ms_resend_pubrel:
                    m.state = mqtt.mqtt_ms_wait_for_pubcomp
                    self.pubrel_kept += 1
        super()._messages_reconnect_reset_out()


class Client:
    """One paho client with a persistent session, its loop in a thread, reconnecting on its own."""

    def __init__(self, name, version, port):
        self.name, self.version, self.port = name, version, port
        kwargs = dict(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=name,
            protocol=version,
            reconnect_on_failure=True,
        )
        if version != V5:
            kwargs["clean_session"] = False
        self.c = PahoClient(**kwargs)
        self.c.reconnect_delay_set(RECONNECT_DELAY_MIN_S, RECONNECT_DELAY_MAX_S)
        self.cond = threading.Condition()
        self.connects = []  # (time, session_present) of every successful CONNACK
        self.refused = []  # reason codes of refused CONNACKs
        self.disconnects = 0
        self.violations = []
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        with self.cond:
            if reason_code.is_failure:
                self.refused.append(str(reason_code))
            else:
                self.connects.append((time.monotonic() - START, flags.session_present))
            self.cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        with self.cond:
            self.disconnects += 1

    def start(self):
        """First connection (clean: v5 Clean Start 1 this time only, 3.1.1 Clean Session 0 on a
        fresh data directory), then the network loop in a thread."""
        if self.version == V5:
            self.c.connect(
                HOST, self.port, KEEPALIVE_S,
                clean_start=mqtt.MQTT_CLEAN_START_FIRST_ONLY,
                properties=props(PacketTypes.CONNECT, SessionExpiryInterval=SESSION_EXPIRY_S),
            )
        else:
            self.c.connect(HOST, self.port, KEEPALIVE_S)
        self.c.loop_start()
        with self.cond:
            if not self.cond.wait_for(lambda: self.connects, timeout=CONNECT_TIMEOUT_S):
                raise Failure(f"{self.name}: no CONNACK within {CONNECT_TIMEOUT_S}s (refused: {self.refused})")

    def connect_count(self):
        with self.cond:
            return len(self.connects)

    def lost_sessions(self):
        """Reconnects (every CONNACK after the first) that did not find the session."""
        with self.cond:
            return [(i, t) for i, (t, present) in enumerate(self.connects) if i > 0 and not present]

    def stop(self):
        try:
            if self.c.is_connected():
                self.c.disconnect()
        finally:
            self.c.loop_stop()


def payload_of(publisher, qos, seq):
    return f"{publisher}|{qos}|{seq}".encode()


class Publisher(Client):
    """Publishes sequence-numbered messages, alternately QoS 1 and QoS 2, from its own thread."""

    def __init__(self, name, version, port):
        super().__init__(name, version, port)
        self.c.max_inflight_messages_set(INFLIGHT_WINDOW)
        self.c.on_publish = self._on_publish
        self.pending = {}  # mid -> (qos, seq): published, not acknowledged yet
        self.early = {}  # mid -> reason code: acknowledged before publish() returned its mid
        self.published = {1: 0, 2: 0}  # sequence numbers 0..published-1 were handed to paho
        self.acked = {1: set(), 2: set()}
        self.rejected = []  # (qos, seq, reason code) of failed acknowledgements
        self.pubcomp_not_found = []  # QoS 2 seqs whose PUBCOMP said 0x92 (see _acknowledged)
        self.publish_errors = []  # (qos, seq, rc) of publish() calls paho refused
        self.seq_of_mid = {}  # mid -> (qos, seq), kept, for the evidence of a violation
        self.trace = collections.defaultdict(list)  # mid -> [(time, paho's log line)]
        self.c.on_log = self._on_log
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"{name}-publish", daemon=True)

    def _on_log(self, client, userdata, level, buf):
        # Paho logs every PUBLISH/PUBREL it queues and every PUBREC/PUBCOMP/PUBACK it receives;
        # kept per mid, to show a violating message's history.
        m = MID_IN_LOG.search(buf)
        if m is not None and ("PUB" in buf[:16]):
            self.trace[int(m.group(1) or m.group(2))].append((time.monotonic() - START, buf[:60]))

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        # Runs on paho's network thread, which may be before publish() returned this mid to the
        # publishing thread; then the publishing thread resolves it (see _record).
        with self.cond:
            entry = self.pending.pop(mid, None)
            if entry is None:
                self.early[mid] = reason_code
            else:
                self._acknowledged(entry, reason_code)
            self.cond.notify_all()

    def _acknowledged(self, entry, reason_code):
        qos, seq = entry
        if qos == 2 and reason_code.value == 0x92:
            # PUBCOMP "packet identifier not found" answers a PUBREL that paho re-sent after a
            # reconnect when the broker had already released the id (durably) and its PUBCOMP was
            # lost in the crash. The broker sent PUBREC for it, so it is acknowledged all the same.
            self.pubcomp_not_found.append(seq)
            self.acked[qos].add(seq)
        elif reason_code.value != 0:
            # Any other failure; 0x10 "no matching subscribers" would mean a lost subscription.
            self.rejected.append((qos, seq, f"{reason_code} ({reason_code.value:#x})"))
        else:
            self.acked[qos].add(seq)

    def unacked(self):
        with self.cond:
            return len(self.pending) + len(self.early)

    def total_published(self):
        with self.cond:
            return self.published[1] + self.published[2]

    def total_acked(self):
        with self.cond:
            return len(self.acked[1]) + len(self.acked[2])

    def _run(self):
        interval = 1.0 / PUBLISH_RATE_PER_S
        n = 0
        next_at = time.monotonic()
        while not self.stopping.is_set() and n < PUBLISHED_MAX:
            with self.cond:
                self.cond.wait_for(
                    lambda: len(self.pending) < UNACKED_MAX or self.stopping.is_set(), timeout=0.2)
                if len(self.pending) >= UNACKED_MAX or self.stopping.is_set():
                    continue
                qos = 1 if n % 2 == 0 else 2
                seq = self.published[qos]
                self.published[qos] += 1
            n += 1
            # publish() must run without self.cond held: paho's network thread calls _on_publish
            # (which takes self.cond) while holding paho's message lock, which publish() takes.
            info = self.c.publish(f"crash/q{qos}", payload_of(self.name, qos, seq), qos=qos)
            self._record(info, qos, seq)
            next_at = max(next_at + interval, time.monotonic() - 1.0)
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def _record(self, info, qos, seq):
        with self.cond:
            # MQTT_ERR_NO_CONN: the broker is down; paho keeps the message and sends it after the
            # reconnect. MQTT_ERR_QUEUE_SIZE: paho did not keep it (never expected here).
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                self.publish_errors.append((qos, seq, info.rc))
                if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
                    return
            self.seq_of_mid[info.mid] = (qos, seq)
            reason = self.early.pop(info.mid, None)
            if reason is not None:
                self._acknowledged((qos, seq), reason)
            else:
                self.pending[info.mid] = (qos, seq)
            self.cond.notify_all()


class Subscriber(Client):
    """Subscribes `crash/#` at QoS 2 once and records every message it receives."""

    def __init__(self, name, version, port, publishers):
        super().__init__(name, version, port)
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.subacks = {}
        # (publisher, qos) -> {seq: times received}
        self.received = {(p, q): collections.Counter() for p in publishers for q in (1, 2)}
        self.deliveries = 0
        self.receipts = collections.defaultdict(list)  # (publisher, qos, seq) -> [(time, mid, dup)]

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self.cond:
            self.subacks[mid] = [rc.value for rc in reason_codes]
            self.cond.notify_all()

    def _on_message(self, client, userdata, m):
        with self.cond:
            self.deliveries += 1
            try:
                publisher, qos, seq = m.payload.decode().split("|")
                key, seq = (publisher, int(qos)), int(seq)
            except ValueError:
                self.violations.append(f"unexpected message {m.topic} {m.payload[:60]!r}")
                return
            if key not in self.received or m.topic != f"crash/q{key[1]}":
                self.violations.append(f"unexpected message {m.topic} {m.payload[:60]!r}")
                return
            if m.qos != key[1]:
                self.violations.append(f"{publisher} QoS {key[1]} seq {seq} delivered at QoS {m.qos}")
            self.received[key][seq] += 1
            self.receipts[(publisher, key[1], seq)].append((time.monotonic() - START, m.mid, int(m.dup)))
            self.cond.notify_all()

    def subscribe(self):
        rc, mid = self.c.subscribe("crash/#", qos=2)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise Failure(f"{self.name}: subscribe not sent: {rc}")
        with self.cond:
            if not self.cond.wait_for(lambda: mid in self.subacks, timeout=CONNECT_TIMEOUT_S):
                raise Failure(f"{self.name}: no SUBACK within {CONNECT_TIMEOUT_S}s")
            if self.subacks[mid] != [2]:
                raise Failure(f"{self.name}: SUBACK {self.subacks[mid]}, expected [2]")

    def missing(self, publishers):
        """{(publisher, qos): sorted acknowledged seqs not received}."""
        out = {}
        with self.cond:
            for p in publishers:
                with p.cond:
                    acked = {q: set(p.acked[q]) for q in (1, 2)}
                for q in (1, 2):
                    got = self.received[(p.name, q)]
                    gone = sorted(s for s in acked[q] if s not in got)
                    if gone:
                        out[(p.name, q)] = gone
        return out


# ------------------------------------------------------------------------------------ the run

def history(publisher, subscriber, qos, seq):
    """What paho saw of one message: the publisher's packets for its mid, and its receipts."""
    with publisher.cond:
        mids = [mid for mid, entry in publisher.seq_of_mid.items() if entry == (qos, seq)]
        packets = [event for mid in mids for event in publisher.trace.get(mid, [])]
    with subscriber.cond:
        got = list(subscriber.receipts.get((publisher.name, qos, seq), []))
    lines = [f"evidence: {publisher.name} QoS {qos} seq {seq} (mid {mids}):"]
    lines += [f"    {t:6.2f}s {publisher.name} {line}" for t, line in packets]
    lines += [f"    {t:6.2f}s {subscriber.name} received (mid {mid}, dup {dup})" for t, mid, dup in got]
    return "\n".join(lines)


def wait_until(predicate, timeout, step=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def run(binary, data_dir, port, kills, seed):
    rng = random.Random(seed)
    broker = Broker(binary, data_dir, port)
    BROKER.append(broker)
    # As a new user's load that once showed QoS 2 duplicates (paho's own, see `PahoClient`):
    # several 3.1.1 publishers with up to 100 messages in flight each, and a 5.0 one.
    publishers = [Publisher("crash-pub-v5", V5, port)] + [
        Publisher(f"crash-pub-v311-{i}", V311, port) for i in range(3)]
    names = [p.name for p in publishers]
    subscribers = [Subscriber("crash-sub-v5", V5, port, names),
                   Subscriber("crash-sub-v311", V311, port, names)]
    clients = subscribers + publishers
    violations = []
    kill_times = []
    connects_at_kill = {c.name: 0 for c in clients}
    try:
        broker.start()
        log(f"broker pid {broker.pid()} listening on {HOST}:{port}, data in {data_dir}")
        for s in subscribers:
            s.start()
            s.subscribe()
        for p in publishers:
            p.start()
            p.thread.start()
        if not wait_until(lambda: all(p.total_acked() >= 20 for p in publishers), CONNECT_TIMEOUT_S):
            raise Failure("traffic does not flow before the first kill: "
                          f"acknowledged {[p.total_acked() for p in publishers]}")

        starting = False  # the broker now running was started without waiting for it
        for i in range(1, kills + 1):
            if starting:
                uptime = rng.uniform(*KILL_DURING_START_S)
            elif rng.random() < UPTIME_SHORT_SHARE:
                uptime = rng.uniform(*UPTIME_SHORT_S)
            else:
                uptime = rng.uniform(*UPTIME_LONG_S)
            downtime = rng.uniform(*DOWNTIME_S)
            time.sleep(uptime)
            pid, listening = broker.pid(), broker.listening.is_set()
            broker.kill()
            connects_at_kill = {c.name: c.connect_count() for c in clients}
            kill_times.append(round(time.monotonic() - START, 2))
            acked = sum(p.total_acked() for p in publishers)
            received = sum(s.deliveries for s in subscribers)
            log(f"kill {i}/{kills}: SIGKILL pid {pid} {uptime:.2f}s after it "
                f"{'was started' if starting else 'listened'}"
                f"{'' if listening else ' (still recovering)'}; acknowledged {acked}, "
                f"deliveries {received}; down {downtime:.2f}s")
            time.sleep(downtime)
            # Sometimes the next kill hits the broker while it recovers; never the last one.
            starting = i < kills and rng.random() < KILL_DURING_START_SHARE
            broker.start(wait=not starting)

        # Let every client come back to the last broker and traffic flow once more, then stop
        # publishing.
        def back(c):
            return c.connect_count() > connects_at_kill[c.name] and c.c.is_connected()

        if not wait_until(lambda: all(back(c) for c in clients), SETTLE_TIMEOUT_S):
            violations.append("clients not reconnected after the last restart within "
                              f"{SETTLE_TIMEOUT_S}s: {[c.name for c in clients if not back(c)]}")
        time.sleep(0.5)
        for p in publishers:
            p.stopping.set()
        for p in publishers:
            p.thread.join(timeout=5.0)
        log("publishing stopped; waiting for outstanding acknowledgements and deliveries")
        if not wait_until(lambda: all(p.unacked() == 0 for p in publishers), SETTLE_TIMEOUT_S):
            # Not a contract violation by itself (unacknowledged messages promise nothing), but
            # paho re-sends after every reconnect, so they should have been acknowledged by now.
            log(f"note: still unacknowledged after {SETTLE_TIMEOUT_S}s: "
                f"{ {p.name: p.unacked() for p in publishers} }")
        wait_until(lambda: not any(s.missing(publishers) for s in subscribers), SETTLE_TIMEOUT_S)
        time.sleep(DUPLICATE_GRACE_S)

        # ---------------------------------------------------------------- checks
        for c in clients:
            for i, t in c.lost_sessions():
                violations.append(f"{c.name}: CONNACK {i + 1} (at {t:.2f}s) had session present = 0")
            if c.refused:
                log(f"note: {c.name}: refused CONNACKs: {c.refused}")
        evidence = []
        for p in publishers:
            if p.pubcomp_not_found:
                log(f"note: {p.name}: {len(p.pubcomp_not_found)} PUBCOMPs with 0x92 (packet identifier "
                    f"not found) after re-sent PUBRELs, seqs {p.pubcomp_not_found[:MISSING_SHOWN]}")
                if VERBOSE:
                    log(f"kills at {kill_times}")
                    for seq in p.pubcomp_not_found[:3]:
                        log(history(p, subscribers[0], 2, seq))
            for qos, seq, reason in p.rejected[:MISSING_SHOWN]:
                violations.append(f"{p.name}: QoS {qos} seq {seq} acknowledged with failure {reason}")
            if p.publish_errors:
                violations.append(f"{p.name}: paho refused {len(p.publish_errors)} publish() calls, "
                                  f"first {p.publish_errors[:MISSING_SHOWN]}")
        for s in subscribers:
            violations.extend(f"{s.name}: {v}" for v in s.violations[:MISSING_SHOWN])
            for (pub, qos), gone in sorted(s.missing(publishers).items()):
                violations.append(f"{s.name}: {len(gone)} acknowledged QoS {qos} messages of {pub} never "
                                  f"received, first seqs {gone[:MISSING_SHOWN]}")
            for p in publishers:
                for q in (1, 2):
                    got = s.received[(p.name, q)]
                    phantom = sorted(seq for seq in got if seq >= p.published[q])
                    if phantom:
                        violations.append(f"{s.name}: received QoS {q} seqs of {p.name} never published: "
                                          f"{phantom[:MISSING_SHOWN]}")
                dups = sorted(seq for seq, n in s.received[(p.name, 2)].items() if n > 1)
                if dups:
                    violations.append(f"{s.name}: {len(dups)} QoS 2 messages of {p.name} received more "
                                      f"than once, first {[(d, s.received[(p.name, 2)][d]) for d in dups[:MISSING_SHOWN]]}")
                    evidence.extend(history(p, s, 2, d) for d in dups[:3])
            for (pub, qos), gone in sorted(s.missing(publishers).items()):
                p = next(p for p in publishers if p.name == pub)
                evidence.extend(history(p, s, qos, g) for g in gone[:3])
        if violations:
            log(f"kills at {kill_times}")
            for e in evidence:
                log(e)

        # ---------------------------------------------------------------- summary
        log(f"summary: seed {SEED}, {kills} kills, {broker.incarnation} broker starts")
        for p in publishers:
            log(f"  {p.name}: published QoS1 {p.published[1]} QoS2 {p.published[2]}, acknowledged "
                f"QoS1 {len(p.acked[1])} QoS2 {len(p.acked[2])}, unacknowledged {p.unacked()}, "
                f"connects {p.connect_count()} (after last kill: {p.connect_count() - connects_at_kill[p.name]}), "
                f"PUBREL kept by the paho fix {p.c.pubrel_kept}, PUBCOMP 0x92 {len(p.pubcomp_not_found)}")
        for s in subscribers:
            parts = []
            for q in (1, 2):
                unique = sum(len(s.received[(p.name, q)]) for p in publishers)
                total = sum(sum(s.received[(p.name, q)].values()) for p in publishers)
                parts.append(f"QoS{q} {unique} (+{total - unique} duplicates)")
            log(f"  {s.name}: received {', '.join(parts)}, connects {s.connect_count()}")
        for incarnation, line in broker.recoveries[1:]:
            fields = " ".join(f for f in line.split() if f.split("=")[0] in
                              ("sessions", "queued", "inbound_qos2", "replayed", "torn_tail", "elapsed_ms"))
            log(f"  start {incarnation}: {fields}")
        return violations
    finally:
        for c in clients:
            if isinstance(c, Publisher):
                c.stopping.set()
            try:
                c.stop()
            except Exception:  # noqa: BLE001 - cleanup must not hide the real failure
                pass
        code = broker.stop()
        log(f"broker stopped (exit {code})")


BROKER = []  # the Broker, for the watchdog
SEED = None


def main():
    global SEED
    if len(sys.argv) not in (4, 5):
        print(f"usage: {sys.argv[0]} BINARY DATA_DIR PORT [KILLS]", file=sys.stderr)
        return 2
    binary, data_dir, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    kills = int(sys.argv[4]) if len(sys.argv) == 5 else 10
    SEED = int(os.environ.get("KEELMQ_CRASH_SEED") or random.SystemRandom().randrange(1 << 32))
    os.makedirs(data_dir, exist_ok=True)
    # Each cycle takes about 1.5 s; the settling at the end at most 3 x SETTLE_TIMEOUT_S.
    watchdog_s = 30 + 4 * kills

    def watchdog():
        print(f"watchdog: still running after {watchdog_s}s (seed {SEED})", file=sys.stderr, flush=True)
        proc = BROKER[0].proc if BROKER else None
        if proc is not None and proc.returncode is None:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            print("--- broker log tail", *list(BROKER[0].log_tail)[-40:], sep="\n", file=sys.stderr, flush=True)
        os._exit(3)

    timer = threading.Timer(watchdog_s, watchdog)
    timer.daemon = True
    timer.start()
    log(f"KEELMQ_CRASH_SEED={SEED} kills={kills} paho-mqtt {paho.mqtt.__version__} broker {binary}")
    try:
        violations = run(binary, data_dir, port, kills, SEED)
    except Exception:  # noqa: BLE001 - report every failure the same way
        traceback.print_exc()
        violations = None
    if violations is None or violations:
        for v in violations or []:
            print(f"VIOLATION: {v}", file=sys.stderr, flush=True)
        if BROKER:
            print("--- broker log tail", *list(BROKER[0].log_tail)[-40:], sep="\n", file=sys.stderr, flush=True)
        print(f"FAIL (seed {SEED}, rerun with KEELMQ_CRASH_SEED={SEED})", file=sys.stderr, flush=True)
        return 1
    log(f"PASS in {time.monotonic() - START:.1f}s")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # do not wait for paho threads
