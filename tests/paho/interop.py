#!/usr/bin/env python3
"""KeelMQ interoperability scenarios driven by the Eclipse Paho Python client (paho-mqtt 2.x).

Usage: interop.py SCENARIO HOST PORT

Runs one scenario against a broker that is already listening on HOST:PORT and exits 0 when every
check passed. A failed check raises `Failure` naming what was expected and what was seen, the
script prints the traceback and exits 1. Every wait has a timeout, and a watchdog ends the process
(exit 3) if a scenario hangs anyway, so the Rust test that runs this never waits forever.

Scenarios check positive facts where they can: "nothing arrives" is shown by a marker message that
the same client receives after the point where the unwanted message would have been queued (the
broker keeps one FIFO queue per session), rather than by a long sleep.

Paho does not resolve topic aliases on the PUBLISH packets it receives (it hands the empty topic
and the TopicAlias property to the application), so the topic-alias scenario resolves them itself,
as an application using paho has to.
"""

import os
import queue
import socket
import sys
import threading
import time
import traceback

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

V31, V311, V5 = mqtt.MQTTv31, mqtt.MQTTv311, mqtt.MQTTv5
VERSION_NAME = {V31: "3.1", V311: "3.1.1", V5: "5"}
TAG = {V31: "v31", V311: "v311", V5: "v5"}

# Longest wait for anything the broker should do promptly (CONNACK, SUBACK, a delivery).
TIMEOUT = 5.0
# Time given to an unwanted duplicate to show up after the wanted message arrived.
GRACE = 0.3
# The whole scenario must end within this many seconds.
WATCHDOG = 50.0

HOST = "127.0.0.1"
PORT = 1883


class Failure(Exception):
    """A check failed: the message says what was expected and what happened."""


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def log(msg):
    print(f"[{time.monotonic() - START:6.2f}s] {msg}", flush=True)


START = time.monotonic()


def props(packet_type, **values):
    p = Properties(packet_type)
    for k, v in values.items():
        setattr(p, k, v)
    return p


def prop(message_or_props, name, default=None):
    p = message_or_props
    if not isinstance(p, Properties) and p is not None:
        p = p.properties  # a received message
    if p is None:
        return default
    return getattr(p, name, default)


class Peer:
    """One paho client running its network loop in a thread; its callbacks feed queues."""

    def __init__(self, name, version, clean_session=True, manual_ack=False):
        self.name = name
        self.version = version
        kwargs = dict(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=name,
            protocol=version,
            reconnect_on_failure=False,  # a kicked client must not take its session back
            manual_ack=manual_ack,
        )
        if version != V5:
            kwargs["clean_session"] = clean_session
        self.c = mqtt.Client(**kwargs)
        self.messages = queue.Queue()
        self.connacks = queue.Queue()
        self.disconnects = queue.Queue()
        self.cond = threading.Condition()
        self.published = {}  # mid -> ReasonCode of the acknowledgement (or of the send, QoS 0)
        self.subacks = {}  # mid -> list of ReasonCode
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_publish = self._on_publish
        self.c.on_subscribe = self._on_subscribe
        self.aliases = {}  # inbound topic aliases, for resolve()
        self.received_log = []  # paho's "Received ..." debug lines, to see packets it handles itself
        self.c.on_log = self._on_log

    def _on_log(self, client, userdata, level, buf):
        if buf.startswith("Received "):
            self.received_log.append(buf)

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connacks.put((flags, reason_code, properties))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.disconnects.put((reason_code, properties))

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self.cond:
            self.published[mid] = reason_code
            self.cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self.cond:
            self.subacks[mid] = list(reason_codes)
            self.cond.notify_all()

    # ------------------------------------------------------------------ connection

    def connect(self, keepalive=30, clean_start=True, properties=None, expect_session=None):
        """Connects, starts the loop and waits for a successful CONNACK; returns its flags."""
        if self.version == V5:
            self.c.connect(HOST, PORT, keepalive, clean_start=clean_start, properties=properties)
        else:
            self.c.connect(HOST, PORT, keepalive)
        self.c.loop_start()
        try:
            flags, rc, connack_props = self.connacks.get(timeout=TIMEOUT)
        except queue.Empty:
            raise Failure(f"{self.name}: no CONNACK within {TIMEOUT}s")
        check(not rc.is_failure, f"{self.name}: CONNACK refused: {rc} ({rc.value:#x})")
        if expect_session is not None:
            check(
                flags.session_present == expect_session,
                f"{self.name}: CONNACK session_present={flags.session_present}, "
                f"expected {expect_session}",
            )
        self.connack_props = connack_props
        return flags

    def disconnect(self, reasoncode=None, properties=None):
        """Sends DISCONNECT and waits for the socket to close."""
        self.c.disconnect(reasoncode=reasoncode, properties=properties)
        self.wait_disconnect()
        self.c.loop_stop()

    def wait_disconnect(self, timeout=TIMEOUT):
        try:
            return self.disconnects.get(timeout=timeout)
        except queue.Empty:
            raise Failure(f"{self.name}: not disconnected within {timeout}s")

    def drop(self):
        """Closes the socket without DISCONNECT (a lost connection), then stops the loop.

        shutdown() sends the FIN at once and wakes paho's select(), which sees end of file and
        ends the loop thread (no reconnection), without sending anything.
        """
        sock = self.c.socket()
        check(sock is not None, f"{self.name}: no socket to drop")
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.c.loop_stop()
        sock.close()

    def stop(self):
        """Ends the client at the end of a scenario, however it is."""
        try:
            if self.c.is_connected() and self.c.socket() is not None:
                self.c.disconnect()
                try:
                    self.disconnects.get(timeout=1.0)
                except queue.Empty:
                    pass
        finally:
            self.c.loop_stop()

    # ------------------------------------------------------------------ requests

    def subscribe(self, topic, qos=0, properties=None, expect=None):
        """Subscribes and waits for SUBACK; checks the granted QoS / reason codes."""
        mid = self.send_subscribe(topic, qos, properties)
        codes = self.wait_suback(mid, topic)
        if expect is None:
            expect = [q if not isinstance(q, SubscribeOptions) else q.QoS for _, q in topic] \
                if isinstance(topic, list) else [qos.QoS if isinstance(qos, SubscribeOptions) else qos]
        check(codes == expect, f"{self.name}: SUBACK for {topic}: {codes}, expected {expect}")
        return codes

    def send_subscribe(self, topic, qos=0, properties=None):
        """Sends SUBSCRIBE without waiting; returns its mid for wait_suback()."""
        if isinstance(topic, list):
            rc, mid = self.c.subscribe(topic, properties=properties)
        else:
            rc, mid = self.c.subscribe(topic, qos, properties=properties)
        check(rc == mqtt.MQTT_ERR_SUCCESS, f"{self.name}: subscribe({topic}) failed to send: {rc}")
        return mid

    def wait_suback(self, mid, what):
        with self.cond:
            ok = self.cond.wait_for(lambda: mid in self.subacks, timeout=TIMEOUT)
            check(ok, f"{self.name}: no SUBACK for {what} within {TIMEOUT}s")
            return [c.value for c in self.subacks[mid]]

    def unsubscribe(self, topic):
        """Unsubscribes and waits for UNSUBACK."""
        done = threading.Event()
        self.c.on_unsubscribe = lambda *args: done.set()
        rc, _ = self.c.unsubscribe(topic)
        check(rc == mqtt.MQTT_ERR_SUCCESS, f"{self.name}: unsubscribe({topic}) failed to send: {rc}")
        check(done.wait(TIMEOUT), f"{self.name}: no UNSUBACK for {topic} within {TIMEOUT}s")

    def publish(self, topic, payload, qos=0, retain=False, properties=None):
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        check(info.rc == mqtt.MQTT_ERR_SUCCESS, f"{self.name}: publish({topic}) not sent: {info.rc}")
        return info.mid

    def wait_published(self, mids, expect_rc=None):
        """Waits until on_publish fired for every mid (PUBACK/PUBCOMP for QoS 1/2 arrived)."""
        mids = list(mids)
        with self.cond:
            ok = self.cond.wait_for(lambda: all(m in self.published for m in mids), timeout=TIMEOUT)
            missing = [m for m in mids if m not in self.published]
            check(ok, f"{self.name}: no acknowledgement for mids {missing} within {TIMEOUT}s")
            codes = {m: self.published[m].value for m in mids}
        if expect_rc is not None:
            bad = {m: c for m, c in codes.items() if c != expect_rc}
            check(not bad, f"{self.name}: acknowledgement reason codes {bad}, expected {expect_rc:#x}")
        return codes

    def publish_and_wait(self, topic, payload, qos=0, retain=False, properties=None, expect_rc=None):
        mid = self.publish(topic, payload, qos, retain, properties)
        self.wait_published([mid], expect_rc)

    # ------------------------------------------------------------------ deliveries

    def resolve(self, m):
        """The topic of a received message, resolving a v5 topic alias the broker used."""
        alias = prop(m, "TopicAlias")
        if alias is None:
            return m.topic
        if m.topic:
            self.aliases[alias] = m.topic
            return m.topic
        check(alias in self.aliases, f"{self.name}: unknown inbound topic alias {alias}")
        return self.aliases[alias]

    def next(self, timeout=TIMEOUT, what="a message"):
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise Failure(f"{self.name}: {what} not received within {timeout}s")

    def collect(self, n, timeout=TIMEOUT, what=None):
        """Returns the next n messages; fails if they do not all arrive in time."""
        end = time.monotonic() + timeout
        got = []
        while len(got) < n:
            left = end - time.monotonic()
            try:
                got.append(self.messages.get(timeout=max(left, 0.001)))
            except queue.Empty:
                seen = [(m.topic, m.payload) for m in got]
                raise Failure(
                    f"{self.name}: {what or 'messages'}: received {len(got)} of {n} within "
                    f"{timeout}s: {seen}"
                )
        return got

    def until(self, payload, timeout=TIMEOUT):
        """Returns the messages received before the one carrying `payload` (a marker)."""
        end = time.monotonic() + timeout
        before = []
        while True:
            left = end - time.monotonic()
            try:
                m = self.messages.get(timeout=max(left, 0.001))
            except queue.Empty:
                seen = [(x.topic, x.payload) for x in before]
                raise Failure(f"{self.name}: marker {payload!r} not received within {timeout}s; saw {seen}")
            if m.payload == payload:
                return before
            before.append(m)

    def quiet(self, duration, what):
        """Checks that nothing arrives for `duration` seconds."""
        try:
            m = self.messages.get(timeout=duration)
        except queue.Empty:
            return
        raise Failure(f"{self.name}: {what}: unexpected message {m.topic} {m.payload!r} qos={m.qos}")


def stop_all(*peers):
    for p in peers:
        try:
            p.stop()
        except Exception:  # noqa: BLE001 - cleanup must not hide the real failure
            pass


# ========================================================================== scenarios


def scenario_qos(versions=(V31, V311, V5)):
    """QoS 0/1/2 each way between two clients of one version, every (publish, subscription) QoS
    pair: delivered at min(publish QoS, granted QoS), each publish acknowledged; then across
    versions."""
    for v in versions:
        t = TAG[v]
        a, b = Peer(f"qa-{t}", v), Peer(f"qb-{t}", v)
        try:
            a.connect(expect_session=False)
            b.connect(expect_session=False)
            for sender, receiver in ((a, b), (b, a)):
                base = f"qos/{t}/to-{receiver.name}"
                for s in range(3):
                    receiver.subscribe(f"{base}/s{s}/#", s)
                mids, expected = [], {}
                for s in range(3):
                    for p in range(3):
                        topic, payload = f"{base}/s{s}/p{p}", f"{sender.name} p{p} s{s}".encode()
                        mids.append(sender.publish(topic, payload, p))
                        expected[topic] = (payload, min(p, s))
                codes = sender.wait_published(mids)
                if v == V5:
                    check(all(c == 0 for c in codes.values()), f"v5 ack reason codes {codes}, expected all 0")
                got = receiver.collect(9, what=f"{VERSION_NAME[v]} {sender.name}->{receiver.name}")
                seen = {}
                for m in got:
                    check(m.topic not in seen, f"{m.topic} delivered twice")
                    seen[m.topic] = (m.payload, m.qos)
                    check(not m.retain, f"{m.topic}: retain flag set on a live delivery")
                check(seen == expected, f"deliveries {seen}, expected {expected}")
                receiver.quiet(GRACE, "after the 9 expected deliveries")
                log(f"ok: {VERSION_NAME[v]} QoS matrix {sender.name} -> {receiver.name}")
        finally:
            stop_all(a, b)
    # Across versions: the broker translates between the publisher's and the subscriber's version.
    pairs = [(V31, V5), (V5, V31), (V311, V5), (V5, V311), (V31, V311)]
    for pv, sv in pairs:
        p, s = Peer(f"xp-{TAG[pv]}-{TAG[sv]}", pv), Peer(f"xs-{TAG[pv]}-{TAG[sv]}", sv)
        try:
            p.connect()
            s.connect()
            s.subscribe("cross/#", 2)
            mids = [p.publish(f"cross/q{q}", f"q{q}".encode(), q) for q in range(3)]
            p.wait_published(mids)
            got = s.collect(3, what="cross-version deliveries")
            check(
                sorted((m.topic, m.payload, m.qos) for m in got)
                == [(f"cross/q{q}", f"q{q}".encode(), q) for q in range(3)],
                f"cross-version {VERSION_NAME[pv]} -> {VERSION_NAME[sv]}: "
                f"{[(m.topic, m.payload, m.qos) for m in got]}",
            )
            log(f"ok: {VERSION_NAME[pv]} publisher -> {VERSION_NAME[sv]} subscriber")
        finally:
            stop_all(p, s)


def scenario_retained():
    """Retained messages: set, replace, delete; later subscribers (exact and wildcard filters) get
    the current one with the retain flag; after the delete, none."""
    for v in (V311, V5):
        t = TAG[v]
        topic = f"ret/{t}/dev/state"
        filters = (topic, f"ret/{t}/+/state", f"ret/{t}/#")
        pub = Peer(f"rp-{t}", v)
        peers = [pub]
        try:
            pub.connect()

            def new_subscriber(flt):
                s = Peer(f"rs{len(peers)}-{t}", v)
                peers.append(s)
                s.connect()
                s.subscribe(flt, 1)
                return s

            def retained_for_new_subscribers():
                """What a new subscriber to each filter receives before a live marker message
                (retained messages are queued behind the SUBACK, so before the marker)."""
                found = {}
                for flt in filters:
                    s = new_subscriber(flt)
                    pub.publish_and_wait(topic, b"marker", 1)  # not retained
                    found[flt] = [(m.topic, m.payload, m.qos, m.retain) for m in s.until(b"marker")]
                    s.stop()
                return found

            def expect_retained(payload, qos):
                found = retained_for_new_subscribers()
                want = [(topic, payload, qos, True)]
                for flt, got in found.items():
                    check(got == want, f"new subscriber to {flt} got {got}, expected {want}")

            pub.publish_and_wait(topic, b"first", 1, retain=True)
            expect_retained(b"first", 1)
            log(f"ok: {VERSION_NAME[v]} retained message set")
            # Replaced, at QoS 0 now: the retained copy carries its own QoS. Nothing acknowledges a
            # QoS 0 PUBLISH, so a QoS 1 one on the same connection, acknowledged after it was
            # handled, tells when the retained store holds it.
            pub.publish_and_wait(topic, b"second", 0, retain=True)
            pub.publish_and_wait(f"fence/{t}", b"fence", 1)
            expect_retained(b"second", 0)
            log(f"ok: {VERSION_NAME[v]} retained message replaced")
            # A live subscriber sees the delete as an ordinary empty message, without retain.
            live = new_subscriber(f"ret/{t}/#")
            m = live.next(what="the current retained message")
            check((m.payload, m.retain) == (b"second", True), f"live subscriber first got {(m.payload, m.retain)}")
            pub.publish_and_wait(topic, b"", 1, retain=True)
            m = live.next(what="the empty retained message")
            check((m.topic, m.payload, m.retain) == (topic, b"", False),
                  f"delete seen by a live subscriber as {(m.topic, m.payload, m.retain)}")
            found = retained_for_new_subscribers()
            for flt, got in found.items():
                check(got == [], f"after the delete, a new subscriber to {flt} still got {got}")
            log(f"ok: {VERSION_NAME[v]} retained message deleted by an empty payload")
        finally:
            stop_all(*peers)


def scenario_retained_race():
    """A retained update racing new subscriptions: every subscription made while a retained QoS 1
    PUBLISH is being handled (its SUBACK and the PUBACK both arrive) must get that message, either
    live (subscribed first) or as the retained copy (subscribed after), never neither."""
    topic = "race/state"
    pub = Peer("race-pub", V311)
    subs = [Peer(f"race-sub-{i}", V311) for i in range(12)]
    try:
        pub.connect()
        for s in subs:
            s.connect()
        pub.publish_and_wait(topic, b"v0", 1, retain=True)
        missed = []
        for r in range(1, 21):
            payload = f"v{r}".encode()
            mid = pub.publish(topic, payload, 1, retain=True)
            pending = []
            for i, s in enumerate(subs):
                pending.append(s.send_subscribe(topic, 1))
                time.sleep(0.0005 * (i % 3))  # spread the SUBSCRIBEs over the handling of the PUBLISH
            for s, smid in zip(subs, pending):
                s.wait_suback(smid, topic)
            pub.wait_published([mid])
            pub.publish_and_wait(topic, b"marker", 1)
            for s in subs:
                got = [m.payload for m in s.until(b"marker")]
                if payload not in got:
                    missed.append((r, s.name, got))
                s.unsubscribe(topic)
        check(not missed, f"{len(missed)} subscriptions (of {20 * len(subs)}) made while retained {topic} was "
              f"replaced got the new message neither live nor retained: (round, client, received before the "
              f"next message) {missed[:8]}")
        log(f"ok: {20 * len(subs)} racing subscriptions all saw the retained update")
    finally:
        stop_all(pub, *subs)


def will_props(delay=None, extra=True):
    p = Properties(PacketTypes.WILLMESSAGE)
    if extra:
        p.UserProperty = [("reason", "lost"), ("n", "1"), ("reason", "again")]
        p.ContentType = "text/plain"
    if delay is not None:
        p.WillDelayInterval = delay
    return p


def scenario_will():
    """Wills: published when the connection is lost (with their properties, retained), not after a
    clean DISCONNECT, published after DISCONNECT 0x04 (v5), and a delayed will cancelled by a
    reconnection within its delay while another, not resumed, arrives after its delay."""
    for v in (V31, V311, V5):
        t = TAG[v]
        watcher = Peer(f"ww-{t}", v)
        peers = [watcher]
        try:
            watcher.connect()
            watcher.subscribe(f"will/{t}/#", 1)
            # Lost connection -> will.
            a = Peer(f"wa-{t}", v)
            peers.append(a)
            a.c.will_set(f"will/{t}/a", b"a is gone", qos=1, retain=True,
                         properties=will_props() if v == V5 else None)
            a.connect()
            a.drop()
            m = watcher.next(what=f"{VERSION_NAME[v]} will after a lost connection")
            check((m.topic, m.payload, m.qos) == (f"will/{t}/a", b"a is gone", 1),
                  f"will delivered as {(m.topic, m.payload, m.qos)}")
            if v == V5:
                check(prop(m, "UserProperty") == [("reason", "lost"), ("n", "1"), ("reason", "again")],
                      f"will user properties {prop(m, 'UserProperty')}")
                check(prop(m, "ContentType") == "text/plain", f"will content type {prop(m, 'ContentType')}")
            # The will was retained: a later subscriber gets it with the retain flag.
            late = Peer(f"wl-{t}", v)
            peers.append(late)
            late.connect()
            late.subscribe(f"will/{t}/a", 1)
            r = late.next(what="retained will")
            check((r.payload, r.retain) == (b"a is gone", True), f"retained will {(r.payload, r.retain)}")
            late.stop()
            log(f"ok: {VERSION_NAME[v]} will published on a lost connection, retained")

            # Clean DISCONNECT -> no will.
            b = Peer(f"wb-{t}", v)
            peers.append(b)
            b.c.will_set(f"will/{t}/b", b"b is gone", qos=1)
            b.connect()
            b.disconnect()
            time.sleep(GRACE)
            watcher.publish_and_wait(f"will/{t}/marker", b"marker-b", 1)
            before = watcher.until(b"marker-b")
            check(not before, f"will published after a clean DISCONNECT: {[(x.topic, x.payload) for x in before]}")
            log(f"ok: {VERSION_NAME[v]} no will after a clean DISCONNECT")

            if v != V5:
                continue
            # DISCONNECT with reason code 0x04 -> will.
            c = Peer(f"wc-{t}", v)
            peers.append(c)
            c.c.will_set(f"will/{t}/c", b"c asked", qos=1, properties=will_props())
            c.connect()
            c.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=0x04))
            m = watcher.next(what="will after DISCONNECT 0x04")
            check((m.topic, m.payload) == (f"will/{t}/c", b"c asked"), f"got {(m.topic, m.payload)}")
            log("ok: 5 will published after DISCONNECT 0x04")

            # Will Delay Interval 2 s: d reconnects within it (will cancelled), e does not.
            session = props(PacketTypes.CONNECT, SessionExpiryInterval=60)
            d = Peer(f"wd-{t}", v)
            e = Peer(f"we-{t}", v)
            peers += [d, e]
            d.c.will_set(f"will/{t}/d", b"d delayed", qos=1, properties=will_props(delay=2, extra=False))
            e.c.will_set(f"will/{t}/e", b"e delayed", qos=1, properties=will_props(delay=2, extra=False))
            d.connect(properties=session)
            e.connect(properties=session)
            d.drop()
            e.drop()
            lost = time.monotonic()
            time.sleep(0.3)
            d2 = Peer(f"wd-{t}", v)
            peers.append(d2)
            d2.connect(clean_start=False, properties=props(PacketTypes.CONNECT, SessionExpiryInterval=60),
                       expect_session=True)
            m = watcher.next(timeout=5.0, what="the delayed will of the client that did not reconnect")
            waited = time.monotonic() - lost
            check((m.topic, m.payload) == (f"will/{t}/e", b"e delayed"),
                  f"first will after the delay was {(m.topic, m.payload)}, expected e's "
                  f"(d reconnected within its will delay, so its will must be cancelled)")
            check(waited >= 1.7, f"delayed will published after {waited:.2f}s, before its 2 s delay")
            watcher.quiet(1.0, "d's will after d resumed its session within the will delay")
            log(f"ok: 5 delayed will cancelled by reconnecting; the other arrived after {waited:.2f}s")
        finally:
            stop_all(*peers)


def scenario_session():
    """Persistent sessions: QoS 1 messages published while the subscriber is offline are delivered
    when it reconnects with the same client id, and CONNACK says the session is present."""
    for v in (V311, V5):
        t = TAG[v]
        pub = Peer(f"sp-{t}", v)
        peers = [pub]
        try:
            pub.connect()
            if v == V5:
                first = Peer(f"ss-{t}", v)
                first.connect(clean_start=True, expect_session=False,
                              properties=props(PacketTypes.CONNECT, SessionExpiryInterval=60))
            else:
                # The broker is fresh: no session for this client id yet.
                first = Peer(f"ss-{t}", v, clean_session=False)
                first.connect(expect_session=False)
            peers.append(first)
            first.subscribe(f"sess/{t}/#", 1)
            first.disconnect()
            mids = [pub.publish(f"sess/{t}/m{i}", f"offline {i}".encode(), 1) for i in range(5)]
            mids.append(pub.publish(f"sess/{t}/q2", b"offline qos2", 2))
            pub.wait_published(mids)
            if v == V5:
                again = Peer(f"ss-{t}", v)
                again.connect(clean_start=False, expect_session=True,
                              properties=props(PacketTypes.CONNECT, SessionExpiryInterval=60))
            else:
                again = Peer(f"ss-{t}", v, clean_session=False)
                again.connect(expect_session=True)
            peers.append(again)
            got = again.collect(6, what="messages queued while offline")
            seen = [(m.topic, m.payload, m.qos) for m in got]
            expected = [(f"sess/{t}/m{i}", f"offline {i}".encode(), 1) for i in range(5)]
            expected.append((f"sess/{t}/q2", b"offline qos2", 1))
            check(seen == expected, f"offline deliveries {seen}, expected (in order) {expected}")
            # The subscription survived too: a new message is delivered live.
            pub.publish_and_wait(f"sess/{t}/live", b"live", 1)
            m = again.next(what="live message on the resumed subscription")
            check(m.payload == b"live", f"got {m.payload!r}")
            again.quiet(GRACE, "after the offline and live messages")
            log(f"ok: {VERSION_NAME[v]} session resumed with its queued messages")

            # In flight when the connection is lost: an unacknowledged QoS 1 PUBLISH is sent again
            # with DUP set, and a QoS 2 message whose PUBREL was not completed gets its PUBREL
            # again, not a second PUBLISH [MQTT-4.4.0-1].
            again.subscribe(f"sess2/{t}/#", 2)
            again.disconnect()

            def resume(manual_ack):
                if v == V5:
                    r = Peer(f"ss-{t}", v, manual_ack=manual_ack)
                    r.connect(clean_start=False, expect_session=True,
                              properties=props(PacketTypes.CONNECT, SessionExpiryInterval=60))
                else:
                    r = Peer(f"ss-{t}", v, clean_session=False, manual_ack=manual_ack)
                    r.connect(expect_session=True)
                peers.append(r)
                return r

            holder = resume(manual_ack=True)
            pub.publish_and_wait(f"sess/{t}/unacked", b"not acknowledged", 1)
            pub.publish_and_wait(f"sess2/{t}/uncompleted", b"not completed", 2)
            got = holder.collect(2, what="messages that will stay unacknowledged")
            check([(m.topic, m.qos, m.dup) for m in got]
                  == [(f"sess/{t}/unacked", 1, False), (f"sess2/{t}/uncompleted", 2, False)],
                  f"first deliveries {[(m.topic, m.qos, m.dup) for m in got]}")
            holder.drop()  # neither PUBACK nor PUBCOMP sent
            final = resume(manual_ack=False)
            m = final.next(what="the unacknowledged QoS 1 message again")
            check((m.topic, m.payload, m.qos, m.dup) == (f"sess/{t}/unacked", b"not acknowledged", 1, True),
                  f"resent as {(m.topic, m.payload, m.qos, m.dup)}, expected the same message with DUP set")
            pub.publish_and_wait(f"sess2/{t}/marker", b"marker", 2)
            before = final.until(b"marker")
            check(not before, f"QoS 2 message delivered again after its PUBREL: "
                  f"{[(x.topic, x.payload, x.dup) for x in before]}")
            pubrels = [line for line in final.received_log if line.startswith("Received PUBREL")]
            check(pubrels, f"no PUBREL re-sent for the uncompleted QoS 2 message; received {final.received_log}")
            log(f"ok: {VERSION_NAME[v]} in-flight QoS 1 re-sent with DUP, QoS 2 PUBREL re-sent")
        finally:
            stop_all(*peers)


def scenario_clean_session_takeover():
    """3.1.1: a session made with CleanSession=1 lasts as long as its network connection and is
    never reused [MQTT-3.1.2-6]; a CleanSession=0 connection taking over its client id starts with
    no session: session present 0, and none of the old subscriptions."""
    old = Peer("cst", V311, clean_session=True)
    new = Peer("cst", V311, clean_session=False)
    pub = Peer("cst-pub", V311)
    try:
        pub.connect()
        old.connect(expect_session=False)
        old.subscribe("cst/old", 1)
        flags = new.connect()
        old.wait_disconnect()
        new.subscribe("cst/marker", 1)
        pub.publish_and_wait("cst/old", b"for the old subscription", 1)
        pub.publish_and_wait("cst/marker", b"marker", 1)
        inherited = [(m.topic, m.payload) for m in new.until(b"marker")]
        check(not flags.session_present and not inherited,
              f"CleanSession=0 connection taking over a CleanSession=1 one: session present "
              f"{int(flags.session_present)} (expected 0), messages of the old session's subscriptions "
              f"{inherited} (expected none)")
        log("ok: 3.1.1 clean session not reused by a CleanSession=0 takeover")
    finally:
        stop_all(old, new, pub)


def scenario_takeover():
    """A second connection with the same client id takes the session over: the first is
    disconnected (v5: DISCONNECT 0x8E), the second works."""
    for v in (V311, V5):
        t = TAG[v]
        first, second, other = Peer(f"to-{t}", v), Peer(f"to-{t}", v), Peer(f"tx-{t}", v)
        try:
            other.connect()
            other.subscribe(f"takewill/{t}", 1)
            first.c.will_set(f"takewill/{t}", b"first's will", qos=1)
            first.connect()
            first.subscribe(f"take/{t}/#", 1)
            second.connect()
            rc, _ = first.wait_disconnect()
            if v == V5:
                check(rc is not None and rc.value == 0x8E,
                      f"first connection disconnected with {rc} ({getattr(rc, 'value', None)}), expected 0x8E")
            check(first.c.socket() is None, "first connection's socket still open after on_disconnect")
            second.subscribe(f"take/{t}/#", 1)
            other.publish_and_wait(f"take/{t}/x", b"to the second", 1)
            m = second.next(what="message for the new connection")
            check(m.payload == b"to the second", f"got {m.payload!r}")
            second.publish_and_wait(f"take/{t}/y", b"from the second", 1)
            m = second.next(what="own message through the new connection")
            check(m.payload == b"from the second", f"got {m.payload!r}")
            check(first.messages.empty(), "the old connection received a message after the takeover")
            # The server closed the first connection without a DISCONNECT from it: its will (no
            # delay) is published, once.
            other.publish_and_wait(f"takewill/{t}", b"marker", 1)
            wills = [(x.topic, x.payload) for x in other.until(b"marker")]
            check(wills == [(f"takewill/{t}", b"first's will")],
                  f"wills published for the taken-over connection: {wills}, expected exactly one")
            log(f"ok: {VERSION_NAME[v]} takeover (old connection closed with {rc})")
        finally:
            stop_all(first, second, other)


def scenario_shared():
    """Shared subscription $share/g/t/#: 20 messages, each to exactly one member, both get some."""
    for v in (V311, V5):
        t = TAG[v]
        s1, s2, pub = Peer(f"sh1-{t}", v), Peer(f"sh2-{t}", v), Peer(f"shp-{t}", v)
        try:
            for p in (s1, s2, pub):
                p.connect()
            s1.subscribe(f"$share/g/sh{t}/#", 1)
            s2.subscribe(f"$share/g/sh{t}/#", 1)
            mids = [pub.publish(f"sh{t}/{i % 3}", f"m{i}".encode(), 1) for i in range(20)]
            pub.wait_published(mids)
            got1, got2 = [], []
            end = time.monotonic() + TIMEOUT
            while len(got1) + len(got2) < 20 and time.monotonic() < end:
                for s, got in ((s1, got1), (s2, got2)):
                    try:
                        got.append(s.messages.get(timeout=0.02).payload)
                    except queue.Empty:
                        pass
            time.sleep(GRACE)
            for s, got in ((s1, got1), (s2, got2)):
                while not s.messages.empty():
                    got.append(s.messages.get().payload)
            everything = got1 + got2
            check(len(everything) == 20 and set(everything) == {f"m{i}".encode() for i in range(20)},
                  f"shared deliveries: member 1 {got1}, member 2 {got2}; expected each of m0..m19 once")
            check(got1 and got2, f"one member got nothing: member 1 {len(got1)}, member 2 {len(got2)}")
            log(f"ok: {VERSION_NAME[v]} shared subscription split {len(got1)}/{len(got2)}")
        finally:
            stop_all(s1, s2, pub)


def scenario_topic_alias():
    """v5 topic aliases: inbound (publisher sets alias, then publishes with an empty topic) and
    outbound (a subscriber allowing 5 aliases gets correct topics, aliases within its maximum; one
    allowing none gets no alias)."""
    pub, plain, aliased = Peer("ta-pub", V5), Peer("ta-plain", V5), Peer("ta-alias", V5)
    try:
        pub.connect()
        check(prop(pub.connack_props, "TopicAliasMaximum", 0) >= 2,
              f"broker Topic Alias Maximum {prop(pub.connack_props, 'TopicAliasMaximum')}")
        plain.connect()
        aliased.connect(properties=props(PacketTypes.CONNECT, TopicAliasMaximum=5))
        plain.subscribe("alias/#", 1)
        aliased.subscribe("alias/#", 1)

        def alias(n):
            return props(PacketTypes.PUBLISH, TopicAlias=n)

        sent = []  # (topic as the broker must deliver it, payload)
        mids = []
        # Aliases 1 and 2 set, then used with an empty topic, interleaved.
        for topic, payload, a in [("alias/one", b"1 set", 1), ("", b"1 used", 1), ("alias/two", b"2 set", 2),
                                  ("", b"2 used", 2), ("", b"1 again", 1)]:
            mids.append(pub.publish(topic, payload, 1, properties=alias(a)))
            sent.append(("alias/one" if a == 1 else "alias/two", payload))
        # Alias 1 re-pointed to another topic.
        mids.append(pub.publish("alias/three", b"1 remapped", 1, properties=alias(1)))
        sent.append(("alias/three", b"1 remapped"))
        mids.append(pub.publish("", b"1 remapped used", 1, properties=alias(1)))
        sent.append(("alias/three", b"1 remapped used"))
        # More distinct topics than the aliased subscriber allows aliases.
        for i in range(7):
            mids.append(pub.publish(f"alias/many/{i}", f"many {i}".encode(), 1))
            sent.append((f"alias/many/{i}", f"many {i}".encode()))
        for i in range(7):
            mids.append(pub.publish(f"alias/many/{i}", f"many {i} again".encode(), 1))
            sent.append((f"alias/many/{i}", f"many {i} again".encode()))
        pub.wait_published(mids, expect_rc=0)

        got = plain.collect(len(sent), what="deliveries to the subscriber without aliases")
        check([(m.topic, m.payload) for m in got] == sent,
              f"subscriber without aliases got {[(m.topic, m.payload) for m in got]}, expected {sent}")
        with_alias = [m.topic for m in got if prop(m, "TopicAlias") is not None]
        check(not with_alias, f"topic alias sent to a client that allows none, on {with_alias}")
        log("ok: inbound topic aliases resolved (subscriber without aliases sees full topics)")

        got = aliased.collect(len(sent), what="deliveries to the subscriber allowing 5 aliases")
        resolved = [(aliased.resolve(m), m.payload) for m in got]
        check(resolved == sent, f"subscriber allowing aliases resolved {resolved}, expected {sent}")
        used = sorted({prop(m, "TopicAlias") for m in got if prop(m, "TopicAlias") is not None})
        check(all(1 <= a <= 5 for a in used), f"aliases {used} outside the client's maximum 5")
        log(f"ok: outbound topic aliases within the maximum (used {used})")
    finally:
        stop_all(pub, plain, aliased)


def scenario_expiry():
    """v5 Message Expiry Interval: a message that expires while queued for an offline session is
    not delivered; one that does not is delivered with its remaining interval."""
    pub, sub = Peer("ex-pub", V5), Peer("ex-sub", V5)
    peers = [pub, sub]
    try:
        pub.connect()
        session = props(PacketTypes.CONNECT, SessionExpiryInterval=60)
        sub.connect(clean_start=True, properties=session)
        sub.subscribe("exp/#", 1)
        sub.disconnect()
        mids = [
            pub.publish("exp/short", b"expires", 1, properties=props(PacketTypes.PUBLISH, MessageExpiryInterval=1)),
            pub.publish("exp/long", b"lasts", 1, properties=props(PacketTypes.PUBLISH, MessageExpiryInterval=60)),
        ]
        # Retained messages expire too.
        mids += [
            pub.publish("exr/short", b"expiring retained", 1, retain=True,
                        properties=props(PacketTypes.PUBLISH, MessageExpiryInterval=1)),
            pub.publish("exr/long", b"lasting retained", 1, retain=True,
                        properties=props(PacketTypes.PUBLISH, MessageExpiryInterval=60)),
        ]
        pub.wait_published(mids)
        time.sleep(2.5)
        again = Peer("ex-sub", V5)
        peers.append(again)
        again.connect(clean_start=False, properties=session, expect_session=True)
        m = again.next(what="the message with expiry 60")
        check((m.topic, m.payload) == ("exp/long", b"lasts"),
              f"first delivery {(m.topic, m.payload)}; exp/short (expiry 1 s, 2.5 s offline) must have expired")
        left = prop(m, "MessageExpiryInterval")
        check(left is not None and 55 <= left <= 60, f"remaining MessageExpiryInterval {left}, expected 55..60")
        again.quiet(GRACE, "after the unexpired message")
        log(f"ok: expired message dropped, the other delivered with {left}s left")
        late = Peer("ex-late", V5)
        peers.append(late)
        late.connect()
        late.subscribe("exr/+", 1)
        m = late.next(what="the retained message with expiry 60")
        left = prop(m, "MessageExpiryInterval")
        check((m.topic, m.retain) == ("exr/long", True),
              f"first retained delivery {(m.topic, m.retain)}; exr/short (expiry 1 s) must have expired")
        check(left is not None and 55 <= left <= 59, f"retained copy's MessageExpiryInterval {left}, expected 55..59")
        late.quiet(GRACE, "the expired retained message")
        log(f"ok: expired retained message dropped, the other delivered with {left}s left")
    finally:
        stop_all(*peers)


def scenario_sub_ids():
    """Overlapping subscriptions: one copy at the highest granted QoS; v5 carries every matching
    Subscription Identifier."""
    for v in (V311, V5):
        t = TAG[v]
        sub, pub = Peer(f"si-{t}", v), Peer(f"sip-{t}", v)
        try:
            sub.connect()
            pub.connect()
            id1 = props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=1) if v == V5 else None
            id2 = props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=2) if v == V5 else None
            sub.subscribe(f"{t}/a/+", 1, properties=id1)
            sub.subscribe(f"{t}/a/#", 2, properties=id2)
            pub.publish_and_wait(f"{t}/a/b", b"both", 2)
            pub.publish_and_wait(f"{t}/a/b/c", b"only #", 2)
            got = sub.collect(2, what="deliveries for overlapping subscriptions")
            m, deep = got
            check((m.topic, m.payload, m.qos) == (f"{t}/a/b", b"both", 2),
                  f"first delivery {(m.topic, m.payload, m.qos)}, expected one copy at QoS 2")
            check((deep.topic, deep.payload) == (f"{t}/a/b/c", b"only #"),
                  f"second delivery {(deep.topic, deep.payload)}: a/b delivered more than once?")
            if v == V5:
                ids = prop(m, "SubscriptionIdentifier")
                check(ids is not None and sorted(ids) == [1, 2], f"SubscriptionIdentifier {ids}, expected [1, 2]")
                ids = prop(deep, "SubscriptionIdentifier")
                check(ids == [2], f"a/b/c SubscriptionIdentifier {ids}, expected [2]")
            sub.quiet(GRACE, "a second copy")
            log(f"ok: {VERSION_NAME[v]} overlapping subscriptions give one copy at QoS 2")
            if v == V5:
                pub.publish_and_wait(f"{t}/r/x", b"retained", 1, retain=True)
                sub.subscribe(f"{t}/r/+", 1, properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=77))
                m = sub.next(what="retained message on subscribe")
                check((m.topic, m.retain, prop(m, "SubscriptionIdentifier")) == (f"{t}/r/x", True, [77]),
                      f"retained delivery {(m.topic, m.retain, prop(m, 'SubscriptionIdentifier'))}, "
                      f"expected the new subscription's identifier [77]")
                log("ok: 5 retained message on subscribe carries the Subscription Identifier")
        finally:
            stop_all(sub, pub)


def scenario_sys():
    """$SYS: an explicit subscription gets $SYS/broker/uptime; `#` and `+/...` get no $SYS topic."""
    sys_sub = Peer("sys-sub", V311)
    hash_subs = [Peer("sys-hash-v311", V311), Peer("sys-hash-v5", V5)]
    plus = Peer("sys-plus", V311)
    pub = Peer("sys-pub", V311)
    try:
        for h in hash_subs:
            h.connect()
            h.subscribe("#", 0)
        plus.connect()
        plus.subscribe("+/broker/uptime", 0)
        sys_sub.connect()
        sys_sub.subscribe("$SYS/broker/uptime", 0)
        m = sys_sub.next(timeout=3.0, what="$SYS/broker/uptime")
        check(m.topic == "$SYS/broker/uptime" and m.payload, f"got {(m.topic, m.payload)}")
        log(f"ok: $SYS/broker/uptime = {m.payload!r}")
        pub.connect()
        time.sleep(2.5)  # at least two $SYS rounds at interval_secs = 1
        pub.publish_and_wait("normal/topic", b"marker", 1)
        for h in hash_subs + [plus]:
            before = h.until(b"marker") if h is not plus else []
            leaked = [x.topic for x in before if x.topic.startswith("$")]
            check(not leaked, f"{h.name} subscribed to a wildcard received {leaked}")
        plus.quiet(GRACE, "+/broker/uptime must not match $SYS/broker/uptime")
        log("ok: wildcard subscribers received no $SYS topic in 2.5 s")
    finally:
        stop_all(sys_sub, plus, pub, *hash_subs)


def scenario_properties():
    """v5 publish properties pass through unchanged, user property order (and duplicates) kept,
    live and retained."""
    pub, sub = Peer("pp-pub", V5), Peer("pp-sub", V5)
    late = None
    try:
        pub.connect()
        sub.connect()
        sub.subscribe("props/#", 2)
        user = [("k1", "v1"), ("k2", "v2"), ("k1", "v3"), ("ünï", "cødé")]
        p = props(PacketTypes.PUBLISH, UserProperty=user, ContentType="application/json",
                  ResponseTopic="props/reply/7", CorrelationData=b"\x00\x01corr\xff",
                  PayloadFormatIndicator=1)
        payload = '{"temp": 21.5, "unit": "°C"}'.encode()

        def check_props(m, how):
            got = {
                "UserProperty": prop(m, "UserProperty"),
                "ContentType": prop(m, "ContentType"),
                "ResponseTopic": prop(m, "ResponseTopic"),
                "CorrelationData": prop(m, "CorrelationData"),
                "PayloadFormatIndicator": prop(m, "PayloadFormatIndicator"),
            }
            want = {"UserProperty": user, "ContentType": "application/json",
                    "ResponseTopic": "props/reply/7", "CorrelationData": b"\x00\x01corr\xff",
                    "PayloadFormatIndicator": 1}
            check(got == want, f"{how}: properties {got}, expected {want}")
            check(m.payload == payload, f"{how}: payload {m.payload!r}")

        for q in range(3):
            pub.publish_and_wait(f"props/q{q}", payload, q, properties=p)
            m = sub.next(what=f"QoS {q} message with properties")
            check((m.topic, m.qos) == (f"props/q{q}", q), f"got {(m.topic, m.qos)}")
            check_props(m, f"live QoS {q}")
        pub.publish_and_wait("props/retained", payload, 1, retain=True, properties=p)
        check_props(sub.next(what="retained publish, live"), "retained, live")
        late = Peer("pp-late", V5)
        late.connect()
        late.subscribe("props/retained", 1)
        m = late.next(what="retained message with properties")
        check(m.retain, "retain flag not set on the retained copy")
        check_props(m, "retained copy")
        log("ok: v5 properties pass through unchanged (live QoS 0/1/2 and retained)")
    finally:
        stop_all(pub, sub, *([late] if late else []))


def scenario_keepalive():
    """Keep-alive 1 s: a client that keeps pinging stays connected; once its network loop stops
    (socket open, no PINGREQ) the broker closes it within 1.5 x keep-alive, and its will shows it."""
    watcher = Peer("ka-watch", V311)
    quiet = [Peer("ka-v311", V311), Peer("ka-v5", V5)]
    try:
        watcher.connect()
        watcher.subscribe("ka/#", 0)
        for q in quiet:
            q.c.will_set(f"ka/{TAG[q.version]}", b"timed out", qos=0)
            q.connect(keepalive=1)
        # While its loop runs, paho pings every second and stays connected.
        watcher.quiet(2.2, "a will while the clients were still pinging")
        for q in quiet:
            check(q.c.is_connected(), f"{q.name} lost its connection while pinging")
        for q in quiet:
            q.c.loop_stop()
        got = watcher.collect(2, timeout=4.0, what="wills of the silent clients")
        by_topic = {m.topic: m for m in got}
        check(sorted(by_topic) == ["ka/v311", "ka/v5"], f"got {[m.topic for m in got]}")
        for q in quiet:
            # Paho stamps both its last sent packet and each received message with time.monotonic.
            silent = by_topic[f"ka/{TAG[q.version]}"].timestamp - q.c._last_msg_out
            check(1.3 <= silent <= 3.0,
                  f"{q.name}: will arrived {silent:.2f}s after its last packet, expected 1.5 x keep-alive "
                  f"(1.5 s) plus delivery time")
            log(f"ok: {q.name} (keep-alive 1 s) disconnected {silent:.2f}s after its last packet")
    finally:
        for q in quiet:
            sock = q.c.socket()
            if sock is not None:
                sock.close()
        stop_all(watcher)


SCENARIOS = {
    "qos": scenario_qos,
    "retained": scenario_retained,
    "retained_race": scenario_retained_race,
    "will": scenario_will,
    "session": scenario_session,
    "takeover": scenario_takeover,
    "clean_session_takeover": scenario_clean_session_takeover,
    "shared": scenario_shared,
    "topic_alias": scenario_topic_alias,
    "expiry": scenario_expiry,
    "sub_ids": scenario_sub_ids,
    "sys": scenario_sys,
    "properties": scenario_properties,
    "keepalive": scenario_keepalive,
}


def main():
    global HOST, PORT
    if len(sys.argv) != 4 or sys.argv[1] not in SCENARIOS:
        print(f"usage: {sys.argv[0]} {{{'|'.join(SCENARIOS)}}} HOST PORT", file=sys.stderr)
        return 2
    name, HOST, PORT = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def watchdog():
        print(f"watchdog: scenario {name} still running after {WATCHDOG}s", file=sys.stderr, flush=True)
        os._exit(3)

    timer = threading.Timer(WATCHDOG, watchdog)
    timer.daemon = True
    timer.start()
    log(f"scenario {name} against {HOST}:{PORT} (paho-mqtt {paho.mqtt.__version__})")
    try:
        SCENARIOS[name]()
    except Exception:  # noqa: BLE001 - report every failure the same way
        traceback.print_exc()
        print(f"FAIL: scenario {name}", file=sys.stderr, flush=True)
        return 1
    log(f"PASS: scenario {name}")
    return 0


if __name__ == "__main__":
    sys.stdout.flush()
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # do not wait for paho threads of clients left mid-scenario
