#!/usr/bin/env python3
"""KeelMQ's TLS, WebSocket and secure WebSocket listeners driven by Eclipse Paho (paho-mqtt 2.x).

Usage: transports.py SCENARIO HOST TCP_PORT TLS_PORT WS_PORT WSS_PORT WRONG_NAME_PORT CA_FILE

Scenarios:
  tls             QoS 0/1/2 round trips over TLS, MQTT 3.1.1 and 5 (the server certificate is
                  verified against CA_FILE, hostname included)
  ws              the same over WebSocket (path /mqtt, subprotocol mqtt)
  wss             the same over secure WebSocket
  resume          a QoS 2 persistent session started over TCP, resumed over WSS: the message
                  queued meanwhile arrives exactly once
  wrong_hostname  a verifying client refuses the listener whose certificate names another host

Exits 0 when every check passed; a failed check raises `Failure`, prints the traceback and exits
1; a watchdog ends a hung run (exit 3).
"""

import os
import queue
import ssl
import sys
import threading
import time
import traceback

import paho.mqtt.client as mqtt

V311, V5 = mqtt.MQTTv311, mqtt.MQTTv5
TIMEOUT = 5.0
GRACE = 0.5
WATCHDOG = 50.0


class Failure(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Failure(msg)


START = time.monotonic()


def log(msg):
    print(f"[{time.monotonic() - START:6.2f}s] {msg}", flush=True)


class Peer:
    """A paho client on one transport, with a queue of received messages."""

    def __init__(self, client_id, version, transport, port, clean=True, tls=False):
        self.messages = queue.Queue()
        self.connected = threading.Event()
        self.result = None
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=version,
            transport=transport,
            clean_session=None if version == V5 else clean,
        )
        self.version, self.port, self.clean = version, port, clean
        if transport == "websockets":
            self.client.ws_set_options(path="/mqtt")
        if tls:
            self.client.tls_set(ca_certs=CA_FILE, cert_reqs=ssl.CERT_REQUIRED)
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda c, u, m: self.messages.put(m)

    def _on_connect(self, client, userdata, flags, reason, properties):
        self.result = (reason, flags)
        self.connected.set()

    def connect(self, expiry=None):
        kwargs = {}
        if self.version == V5:
            from paho.mqtt.properties import Properties
            from paho.mqtt.packettypes import PacketTypes

            p = Properties(PacketTypes.CONNECT)
            if expiry is not None:
                p.SessionExpiryInterval = expiry
            kwargs = {"clean_start": self.clean, "properties": p}
        self.client.connect(HOST, self.port, keepalive=30, **kwargs)
        self.client.loop_start()
        check(self.connected.wait(TIMEOUT), f"CONNACK within {TIMEOUT}s on port {self.port}")
        reason, flags = self.result
        check(not reason.is_failure, f"connection accepted, got {reason}")
        return flags

    def subscribe(self, topic, qos):
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe(topic, qos)
        check(done.wait(TIMEOUT), "SUBACK")

    def publish(self, topic, payload, qos):
        info = self.client.publish(topic, payload, qos)
        info.wait_for_publish(TIMEOUT)
        check(info.is_published(), f"{topic} acknowledged")

    def expect(self, topic, payload):
        try:
            m = self.messages.get(timeout=TIMEOUT)
        except queue.Empty:
            raise Failure(f"expected {topic} {payload!r}, got nothing")
        check((m.topic, m.payload) == (topic, payload), f"expected {topic} {payload!r}, got {m.topic} {m.payload!r}")
        return m

    def expect_nothing(self):
        try:
            m = self.messages.get(timeout=GRACE)
        except queue.Empty:
            return
        raise Failure(f"expected nothing, got {m.topic} {m.payload!r}")

    def stop(self):
        self.client.disconnect()
        self.client.loop_stop()


def round_trips(transport, port, tls, tag):
    for version in (V311, V5):
        name = f"{tag}-{'v5' if version == V5 else 'v311'}"
        sub = Peer(f"{name}-sub", version, transport, port, tls=tls)
        sub.connect()
        sub.subscribe(f"{name}/#", 2)
        pub = Peer(f"{name}-pub", version, transport, port, tls=tls)
        pub.connect()
        for qos in (0, 1, 2):
            payload = f"qos{qos} over {name}".encode() * 50
            pub.publish(f"{name}/{qos}", payload, qos)
            sub.expect(f"{name}/{qos}", payload)
        pub.stop()
        sub.stop()
        log(f"{name}: QoS 0/1/2 round trips")


def scenario_tls():
    round_trips("tcp", TLS_PORT, True, "tls")


def scenario_ws():
    round_trips("websockets", WS_PORT, False, "ws")


def scenario_wss():
    round_trips("websockets", WSS_PORT, True, "wss")


def scenario_resume():
    sub = Peer("roamer", V5, "tcp", TCP_PORT, clean=True)
    sub.connect(expiry=3600)
    sub.subscribe("roam/#", 2)
    sub.stop()
    pub = Peer("roam-pub", V311, "tcp", TCP_PORT)
    pub.connect()
    pub.publish("roam/1", b"while away", 2)
    pub.stop()
    back = Peer("roamer", V5, "websockets", WSS_PORT, clean=False, tls=True)
    flags = back.connect(expiry=3600)
    check(flags.session_present, "session present over WSS")
    back.expect("roam/1", b"while away")
    back.expect_nothing()
    back.stop()
    log("QoS 2 session from TCP resumed over WSS, the message once")


def scenario_wrong_hostname():
    peer = Peer("wrong-name", V5, "tcp", WRONG_NAME_PORT, tls=True)
    try:
        peer.client.connect(HOST, WRONG_NAME_PORT, keepalive=30)
    except ssl.SSLCertVerificationError as e:
        log(f"refused as expected: {e}")
        return
    raise Failure("a certificate for wrong.example was accepted for 127.0.0.1")


SCENARIOS = {
    "tls": scenario_tls,
    "ws": scenario_ws,
    "wss": scenario_wss,
    "resume": scenario_resume,
    "wrong_hostname": scenario_wrong_hostname,
}


def main():
    global HOST, TCP_PORT, TLS_PORT, WS_PORT, WSS_PORT, WRONG_NAME_PORT, CA_FILE
    if len(sys.argv) != 9 or sys.argv[1] not in SCENARIOS:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    name, HOST = sys.argv[1], sys.argv[2]
    TCP_PORT, TLS_PORT, WS_PORT, WSS_PORT, WRONG_NAME_PORT = map(int, sys.argv[3:8])
    CA_FILE = sys.argv[8]
    watchdog = threading.Timer(WATCHDOG, lambda: os._exit(3))
    watchdog.daemon = True
    watchdog.start()
    try:
        SCENARIOS[name]()
    except Exception:
        traceback.print_exc()
        sys.stdout.flush()
        os._exit(1)
    log(f"scenario {name}: passed")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
