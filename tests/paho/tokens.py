#!/usr/bin/env python3
"""KeelMQ's JWT authentication with tokens minted by PyJWT (an independent implementation) and
checked by Eclipse Paho: the exact CONNACK, PUBACK and DISCONNECT reason codes.

Usage: tokens.py keys DIR          writes DIR/rsa_public.pem, DIR/jwks.json (an EC P-256 key, kid
                                "ec-1") and the private keys the check uses
       tokens.py check HOST PORT DIR

The broker's chain (tests/suite/jwt.rs): jwt with SECRET (verify_claims sub =
${clientid}, acl_claim "acl"), jwt with DIR/rsa_public.pem, jwt with DIR/jwks.json, then the
password file (alice / alice-pw); allow_anonymous = false.

Exits 0 when every check passed, 1 on a failed check (with its traceback), 3 on a hang.
"""

import json
import os
import queue
import sys
import threading
import time
import traceback

import jwt
from jwt.algorithms import ECAlgorithm

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

V311, V5 = mqtt.MQTTv311, mqtt.MQTTv5
TIMEOUT = 5.0
SECRET = "s3cret-" + "k" * 60  # long enough for HS512
BAD_CREDENTIALS, NOT_AUTHORIZED = 0x86, 0x87


class Failure(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def pem(key, private):
    if private:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def keys(directory):
    os.makedirs(directory, exist_ok=True)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    files = {"rsa.pem": pem(rsa_key, True), "rsa_public.pem": pem(rsa_key, False),
             "ec.pem": pem(ec_key, True)}
    for name, data in files.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
    jwk = json.loads(ECAlgorithm.to_jwk(ec_key.public_key()))
    jwk.update({"kid": "ec-1", "alg": "ES256", "use": "sig"})
    with open(os.path.join(directory, "jwks.json"), "w") as f:
        json.dump({"keys": [jwk]}, f)


class Conn:
    """A paho client: its CONNACK reason code, PUBACK codes and disconnect reason."""

    def __init__(self, host, port, client_id, password, version=V5, username="u"):
        self.connack = queue.Queue()
        self.disconnects = queue.Queue()
        self.pubacks = queue.Queue()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=version, reconnect_on_failure=False)
        if username is not None:
            self.c.username_pw_set(username, password)
        self.c.on_connect = lambda c, u, f, rc, p: self.connack.put(rc.value)
        self.c.on_disconnect = lambda c, u, f, rc, p: self.disconnects.put(rc.value)
        self.c.on_publish = lambda c, u, mid, rc, p: self.pubacks.put(rc.value)
        self.c.connect(host, port, 30)
        self.c.loop_start()
        try:
            self.code = self.connack.get(timeout=TIMEOUT)
        except queue.Empty:
            raise Failure(f"{client_id}: no CONNACK")

    def publish(self, topic):
        self.c.publish(topic, b"x", qos=1)
        return self.pubacks.get(timeout=TIMEOUT)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def token(key, alg, headers=None, **claims):
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


def run_checks(host, port, directory):
    now = int(time.time())
    read = lambda name: open(os.path.join(directory, name), "rb").read()
    rsa_key, ec_key = read("rsa.pem"), read("ec.pem")
    other_rsa = pem(rsa.generate_private_key(public_exponent=65537, key_size=2048), True)
    hs = lambda **c: token(SECRET, "HS256", **c)
    cases = [
        ("HS256", "car-1", hs(sub="car-1", exp=now + 600), V5, 0),
        ("HS512", "car-1", token(SECRET, "HS512", sub="car-1"), V5, 0),
        ("expired", "car-1", hs(sub="car-1", exp=now - 10), V5, BAD_CREDENTIALS),
        # (paho reports a 3.1.1 return code as its 5.0 equivalent: 4 is 0x86.)
        ("expired, 3.1.1", "car-1", hs(sub="car-1", exp=now - 10), V311, BAD_CREDENTIALS),
        ("not yet valid", "car-1", hs(sub="car-1", nbf=now + 60), V5, BAD_CREDENTIALS),
        ("wrong secret", "car-1", token("o" * 64, "HS256", sub="car-1"), V5, BAD_CREDENTIALS),
        ("claim mismatch", "car-1", hs(sub="car-2"), V5, BAD_CREDENTIALS),
        ("claim missing", "car-1", hs(exp=now + 600), V5, BAD_CREDENTIALS),
        ("RS256 (second entry)", "car-3", token(rsa_key, "RS256", sub="x"), V5, 0),
        ("PS256", "car-3", token(rsa_key, "PS256"), V5, 0),
        ("RS256, other key", "car-3", token(other_rsa, "RS256"), V5, BAD_CREDENTIALS),
        ("ES256 by kid (third entry)", "car-4",
         token(ec_key, "ES256", headers={"kid": "ec-1"}), V5, 0),
        # Nobody knows this kid: passed on to the end of the chain; anonymous is refused.
        ("unknown kid", "car-4", token(ec_key, "ES256", headers={"kid": "ec-9"}), V5,
         BAD_CREDENTIALS),
        # Not a JWT: the password file decides.
        ("password of the file", "car-5", "alice-pw", V5, 0),
    ]
    for what, client_id, password, version, expected in cases:
        username = "alice" if what == "password of the file" else "u"
        conn = Conn(host, port, client_id, password, version, username)
        check(conn.code == expected, f"{what}: CONNACK {conn.code:#x}, expected {expected:#x}")
        conn.close()

    acl = [{"permission": "allow", "action": "publish", "topic": "t/${clientid}"},
           {"permission": "deny", "action": "publish", "topic": "t/forbidden/#"}]
    conn = Conn(host, port, "car-6", hs(sub="car-6", acl=acl))
    check(conn.code == 0, "token with an ACL claim")
    check(conn.publish("t/car-6") < 0x80, "the claim allows t/${clientid}")
    check(conn.publish("t/forbidden/x") == NOT_AUTHORIZED, "the claim denies t/forbidden/#")
    conn.close()
    conn = Conn(host, port, "car-7", hs(sub="car-7", acl="nonsense"))
    check(conn.code == BAD_CREDENTIALS, f"a malformed ACL claim: {conn.code:#x}")
    conn.close()

    conn = Conn(host, port, "car-8", hs(sub="car-8", exp=now + 2))
    check(conn.code == 0, "a token about to expire")
    try:
        reason = conn.disconnects.get(timeout=TIMEOUT + 2)
    except queue.Empty:
        raise Failure("no disconnect when the token expired")
    check(reason == NOT_AUTHORIZED, f"DISCONNECT {reason:#x} at expiry, expected 0x87")
    conn.c.loop_stop()

    # MQTT 5 enhanced authentication (an Authentication Method) is refused cleanly.
    props = Properties(PacketTypes.CONNECT)
    props.AuthenticationMethod = "SCRAM-SHA-256"
    props.AuthenticationData = b"n,,n=alice,r=abc"
    codes = queue.Queue()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="scram", protocol=V5,
                    reconnect_on_failure=False)
    c.on_connect = lambda client, u, f, rc, p: codes.put(rc.value)
    c.connect(host, port, 30, properties=props)
    c.loop_start()
    code = codes.get(timeout=TIMEOUT)
    check(code == 0x8C, f"enhanced authentication: CONNACK {code:#x}, expected 0x8c")
    c.loop_stop()


def main():
    threading.Timer(50.0, lambda: os._exit(3)).start()
    try:
        if sys.argv[1] == "keys":
            keys(sys.argv[2])
        else:
            run_checks(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    except Exception:
        traceback.print_exc()
        sys.stdout.flush()
        os._exit(1)
    print("OK", flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
