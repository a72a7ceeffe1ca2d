#!/usr/bin/env python3
"""KeelMQ's ACL (a Mosquitto-format acl_file) checked with Eclipse Paho (paho-mqtt 2.x): every
refusal by its exact reason code, as the client sees it.

Usage: acl.py SCENARIO HOST PORT

The broker runs with the password file and ACL of tests/suite/acl.rs (users alice, admin and
mallory, password "<user>-pw"; no_match = "deny"; allow_anonymous = true).

Scenarios:
  rules       SUBACK and PUBACK codes for user, anonymous, %c and %u rules, $SYS, shared
              subscriptions, MQTT 5 and 3.1.1; denied messages are not routed; retained
              messages reach only subscriptions the ACL allows
  will        a will the client may not publish is not published; an allowed one is
  disconnect  (broker with deny_action = "disconnect") a denied PUBLISH ends the connection
              with DISCONNECT 0x87

Exits 0 when every check passed; a failed check raises `Failure`, prints the traceback and exits
1; a watchdog ends a hung run (exit 3).
"""

import os
import queue
import sys
import threading
import time
import traceback

import paho.mqtt.client as mqtt

V311, V5 = mqtt.MQTTv311, mqtt.MQTTv5
TIMEOUT = 5.0
GRACE = 0.7
WATCHDOG = 50.0
GRANTED_QOS1 = 1
V5_NOT_AUTHORIZED = 0x87
V3_FAILURE = 0x80


class Failure(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Failure(msg)


class Peer:
    """One paho client with its acknowledgements and received messages."""

    def __init__(self, host, port, client_id, version=V5, user=None, will=None):
        self.messages = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = queue.Queue()
        self.subacks = {}
        self.pubacks = {}
        self.cond = threading.Condition()
        self.version = version
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=version)
        if user is not None:
            self.c.username_pw_set(user, f"{user}-pw")
        if will is not None:
            self.c.will_set(will, b"will", qos=1)
        self.c.on_connect = lambda c, u, f, rc, p: self.connected.set()
        self.c.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload, m.retain))
        self.c.on_subscribe = self._on_subscribe
        self.c.on_publish = self._on_publish
        self.c.on_disconnect = lambda c, u, f, rc, p: self.disconnected.put(rc.value)
        self.c.connect(host, port, 30)
        self.c.loop_start()
        check(self.connected.wait(TIMEOUT), f"{client_id}: no CONNACK")

    def _on_subscribe(self, client, userdata, mid, codes, properties):
        with self.cond:
            self.subacks[mid] = [rc.value for rc in codes]
            self.cond.notify_all()

    def _on_publish(self, client, userdata, mid, rc, properties):
        with self.cond:
            self.pubacks[mid] = rc.value
            self.cond.notify_all()

    def subscribe(self, topic, qos=1):
        """The SUBACK's code for `topic`."""
        rc, mid = self.c.subscribe(topic, qos)
        check(rc == mqtt.MQTT_ERR_SUCCESS, f"subscribe {topic}: {rc}")
        with self.cond:
            check(self.cond.wait_for(lambda: mid in self.subacks, TIMEOUT), f"no SUBACK for {topic}")
            return self.subacks[mid][0]

    def publish(self, topic, payload=b"x", qos=1, retain=False):
        """The PUBACK's reason code (always 0 for 3.1.1, which has none)."""
        info = self.c.publish(topic, payload, qos=qos, retain=retain)
        with self.cond:
            check(self.cond.wait_for(lambda: info.mid in self.pubacks, TIMEOUT),
                  f"no PUBACK for {topic}")
            return self.pubacks[info.mid]

    def received(self, wait=GRACE):
        """The topics received within `wait`."""
        out = []
        end = time.monotonic() + wait
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return out
            try:
                out.append(self.messages.get(timeout=left))
            except queue.Empty:
                return out

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def expect_subacks(peer, cases):
    for topic, expected in cases:
        got = peer.subscribe(topic)
        check(got == expected, f"{peer.c._client_id!r} v{peer.version} SUBSCRIBE {topic}: "
                               f"{got:#x}, expected {expected:#x}")


def rules(host, port):
    admin = Peer(host, port, "admin-1", user="admin")
    check(admin.subscribe("#") == GRANTED_QOS1, "admin subscribes to everything")
    # Retained messages, one of them on a topic alice may not read.
    for t in ("fleet/alice/pos", "fleet/alice/secret"):
        check(admin.publish(t, b"r", retain=True) == 0, f"admin retains {t}")
    admin.received()

    for version, denied in ((V5, V5_NOT_AUTHORIZED), (V311, V3_FAILURE)):
        alice = Peer(host, port, f"alice-{version}", version=version, user="alice")
        expect_subacks(alice, [
            ("fleet/alice/pos", GRANTED_QOS1),
            ("fleet/alice/+/x", GRANTED_QOS1),
            ("fleet/alice/#", denied),          # could receive fleet/alice/secret
            ("fleet/alice/secret", denied),
            ("fleet/bob/#", denied),
            ("#", denied),
            ("+/alice/pos", denied),
            ("$SYS/broker/uptime", GRANTED_QOS1),
            ("$SYS/#", denied),
            ("$share/g/fleet/alice/pos", GRANTED_QOS1),
            ("$share/g/fleet/bob/pos", denied),
        ])
        got = [(t, r) for t, _, r in alice.received() if not t.startswith("$SYS")]
        check(got == [("fleet/alice/pos", True)],
              f"v{version}: only the allowed retained message arrives: {got}")
        alice.close()

    alice = Peer(host, port, "alice-pub", user="alice")
    check(alice.publish("fleet/alice/pos") == 0, "alice publishes to her own topic")
    check(alice.publish("fleet/alice/secret") == V5_NOT_AUTHORIZED, "denied topic: 0x87")
    check(alice.publish("fleet/bob/pos") == V5_NOT_AUTHORIZED, "no rule, no_match deny: 0x87")
    # (QoS 2: paho ignores a PUBREC's reason code; tests/suite/acl.rs checks it with
    # mosquitto_pub.)
    alice.close()
    # A topic name with wildcards (paho refuses to send one, so it goes through paho's own
    # packet writer) is not a correctly formed PUBLISH [MQTT-3.3.2-2]: never routed, the
    # connection is closed with 0x81 Malformed Packet (0x90 is for well-formed names).
    for topic in ("fleet/alice/#", "fleet/+/pos", "#"):
        sneaky = Peer(host, port, "alice-wild", user="alice")
        sneaky.c._send_publish(sneaky.c._mid_generate(), topic.encode(), b"x", qos=1)
        try:
            reason = sneaky.disconnected.get(timeout=TIMEOUT)
        except queue.Empty:
            raise Failure(f"no disconnect after PUBLISH to {topic}")
        check(reason == 0x81, f"PUBLISH to {topic}: DISCONNECT {reason:#x}, expected 0x81")
        sneaky.c.loop_stop()
    alice3 = Peer(host, port, "alice-pub3", version=V311, user="alice")
    check(alice3.publish("fleet/bob/v3") == 0, "3.1.1: acknowledged all the same")
    alice3.close()
    got = sorted(t for t, _, _ in admin.received())
    check(got == ["fleet/alice/pos"], f"only the allowed message was routed: {got}")

    # Patterns: %c for every client (anonymous too), %u for users.
    car = Peer(host, port, "car7")
    check(car.publish("devices/car7/up") == 0, "%c: own topic")
    check(car.publish("devices/car8/up") == V5_NOT_AUTHORIZED, "%c: another client's topic")
    expect_subacks(car, [
        ("devices/car7/#", GRANTED_QOS1),
        ("devices/+/up", V5_NOT_AUTHORIZED),
        ("inbox/+/x", V5_NOT_AUTHORIZED),       # %u needs a username
        ("public/news", GRANTED_QOS1),          # anonymous rules
    ])
    car.close()
    plus = Peer(host, port, "+")
    expect_subacks(plus, [("devices/+/#", V5_NOT_AUTHORIZED), ("devices/#", V5_NOT_AUTHORIZED)])
    plus.close()
    mallory = Peer(host, port, "m-1", user="mallory")
    expect_subacks(mallory, [
        ("inbox/mallory/x", GRANTED_QOS1),
        ("inbox/alice/x", V5_NOT_AUTHORIZED),
        ("public/news", V5_NOT_AUTHORIZED),     # anonymous rules are not a user's
    ])
    check(mallory.publish("devices/m-1/up") == 0, "%c applies to users too")
    mallory.close()
    admin.close()


def will(host, port):
    admin = Peer(host, port, "admin-w", user="admin")
    check(admin.subscribe("fleet/#") == GRANTED_QOS1, "admin watches fleet/#")
    admin.received()  # retained messages of earlier scenarios
    for topic, published in (("fleet/bob/will", False), ("fleet/alice/will", True)):
        alice = Peer(host, port, "alice-w", user="alice", will=topic)
        # An abnormal end: the socket closes without DISCONNECT (the loop stopped first, so
        # that paho does not reconnect).
        alice.c.loop_stop()
        alice.c.socket().close()
        got = [t for t, _, _ in admin.received(1.5)]
        check(got == ([topic] if published else []), f"will on {topic}: received {got}")
    admin.close()


def disconnect(host, port):
    alice = Peer(host, port, "alice-d", user="alice")
    # 0x10 (no matching subscribers) is a success.
    check(alice.publish("fleet/alice/pos") < 0x80, "allowed publish")
    alice.c.publish("fleet/bob/pos", b"x", qos=1)
    try:
        reason = alice.disconnected.get(timeout=TIMEOUT)
    except queue.Empty:
        raise Failure("no disconnect after a denied PUBLISH")
    check(reason == V5_NOT_AUTHORIZED, f"DISCONNECT {reason:#x}, expected 0x87")
    alice.c.loop_stop()


def main():
    scenario, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    threading.Timer(WATCHDOG, lambda: os._exit(3)).start()
    try:
        {"rules": rules, "will": will, "disconnect": disconnect}[scenario](host, port)
    except Exception:
        traceback.print_exc()
        sys.stdout.flush()
        os._exit(1)
    print(f"{scenario}: OK", flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
