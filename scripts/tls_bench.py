#!/usr/bin/env python3
"""TLS benchmarks, in one run on one machine (loopback only, brokers one at a time):

  1. durable QoS 1 throughput, 10 publishers -> 1 persistent subscriber, 64 B, unpaced:
     KeelMQ over TLS and over secure WebSocket as a ratio of KeelMQ over plain TCP;
  2. TLS handshakes per second (new connections with CONNECT/CONNACK, TLS 1.3, ECDSA P-256):
     KeelMQ against Mosquitto's TLS listener with the same certificate;
  3. broker RSS bytes per idle TLS connection (10,000 connections), KeelMQ and Mosquitto.

Usage: tls_bench.py --keelmq target/release/keelmq [--mosquitto /usr/sbin/mosquitto]
                    [--duration 10] [--handshakes 2000] [--idle 10000] [--json FILE]

The certificates are made with `openssl` (a CA and a server certificate for 127.0.0.1,
ECDSA P-256). Load comes from `keelmq bench` with `--cafile`. Every broker runs with a fresh
data directory and is stopped by PID. Prints a Markdown table.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402
from compare import log, summary_of, wait_port, wait_ready  # noqa: E402
from procstat import cpu_seconds, status_kb  # noqa: E402

TCP_PORT, TLS_PORT, WSS_PORT = 21883, 28883, 28084


def make_certs(work):
    """A CA and a server certificate for 127.0.0.1 and localhost (ECDSA P-256)."""
    def run(*cmd):
        subprocess.run(cmd, check=True, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run("openssl", "req", "-x509", *ec, "-days", "30", "-keyout", "ca.key", "-out", "ca.pem",
        "-subj", "/CN=bench CA")
    run("openssl", "req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=bench")
    with open(os.path.join(work, "ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "30", "-out", "server.pem", "-extfile", "ext")
    # Mosquitto started as root drops to its own user, which must read these.
    os.chmod(work, 0o755)
    for f in os.listdir(work):
        os.chmod(os.path.join(work, f), 0o644)
    return {k: os.path.join(work, f) for k, f in
            [("ca", "ca.pem"), ("cert", "server.pem"), ("key", "server.key")]}


class Broker(compare.Broker):
    """A broker with a TCP and a TLS listener (KeelMQ also WSS); stopped by PID on exit."""

    def __init__(self, kind, args, certs):
        super().__init__(kind, args, args.work, TCP_PORT)
        self.certs = certs

    def __enter__(self):
        c = self.certs
        if self.kind == "keelmq":
            conf = os.path.join(self.dir, "keelmq.toml")
            with open(conf, "w") as f:
                f.write(f'data_dir = "{self.dir}/data"\n\n'
                        f'[[listeners]]\nkind = "tcp"\nbind = "127.0.0.1:{TCP_PORT}"\n\n'
                        f'[[listeners]]\nkind = "tls"\nbind = "127.0.0.1:{TLS_PORT}"\n'
                        f'cert_file = "{c["cert"]}"\nkey_file = "{c["key"]}"\n'
                        f'versions = ["tls1.3"]\n\n'
                        f'[[listeners]]\nkind = "wss"\nbind = "127.0.0.1:{WSS_PORT}"\n'
                        f'cert_file = "{c["cert"]}"\nkey_file = "{c["key"]}"\n')
            cmd = [self.args.keelmq, "serve", "--config", conf]
        else:
            conf = os.path.join(self.dir, "mosquitto.conf")
            with open(conf, "w") as f:
                f.write(f"listener {TCP_PORT} 127.0.0.1\n"
                        f"listener {TLS_PORT} 127.0.0.1\n"
                        f"certfile {c['cert']}\nkeyfile {c['key']}\n"
                        "tls_version tlsv1.3\n"
                        "allow_anonymous true\npersistence true\n"
                        f"persistence_location {self.dir}/\n"
                        "max_queued_messages 1000\nmax_inflight_messages 32\nlog_dest none\n")
            cmd = [self.args.mosquitto, "-c", conf]
        self.log = open(os.path.join(self.dir, "broker.log"), "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log,
                                     env=dict(os.environ, RUST_LOG="warn"))
        wait_port(TCP_PORT, self.proc)
        wait_port(TLS_PORT, self.proc)
        return self


def bench(args, mode, port, extra, tls=False, ws=False, background=False):
    cmd = [args.keelmq, "bench", mode, "-p", str(port), "--quiet", "--threads", "2"]
    if tls:
        cmd += ["--cafile", args.certs["ca"]]
    if ws:
        cmd += ["--ws-path", "/mqtt"]
    cmd += [str(x) for x in extra]
    if background:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         timeout=args.duration + 180)
    return summary_of(out.stdout, out.stderr, cmd)


def throughput(args, name):
    """Durable QoS 1, 10 -> 1 persistent subscriber, on KeelMQ over tcp, tls or wss."""
    port = {"tcp": TCP_PORT, "tls": TLS_PORT, "wss": WSS_PORT}[name]
    tls, ws = name != "tcp", name == "wss"
    with Broker("keelmq", args, args.certs) as b:
        sub = bench(args, "sub", port, ["-c", 1, "-t", "bench/#", "-q", 1, "--idle-exit", 3,
                                        "-d", args.duration + 60, "--persistent",
                                        "--prefix", f"sub-{name}"], tls=tls, ws=ws,
                    background=True)
        wait_ready(sub)
        cpu0 = cpu_seconds(b.pid)
        p = bench(args, "pub", port, ["-c", 10, "-t", "bench/%i", "-q", 1, "-s", 64,
                                      "-d", args.duration, "-F", 32, "--prefix", f"pub-{name}"],
                  tls=tls, ws=ws)
        out, err = sub.communicate(timeout=args.duration + 120)
        s = summary_of(out, err, ["bench", "sub"])
        cpu = cpu_seconds(b.pid) - cpu0
    row = {"transport": name, "acked": p["acked"], "delivered": s["unique"],
           "delivered_per_s": s["unique"] / s["elapsed_s"] if s["unique"] else 0.0,
           "p99_us": s["latency"]["p99_us"],
           "cpu_us_per_msg": 1e6 * cpu / s["unique"] if s["unique"] else 0.0}
    log(f"keelmq qos1 over {name}: {row['delivered']} of {row['acked']} acked, "
        f"{row['delivered_per_s']:.0f}/s p99 {row['p99_us']} µs cpu {row['cpu_us_per_msg']:.2f} µs/msg")
    return row


def handshakes(args, kind):
    """New TLS connections (CONNECT/CONNACK included) per second, as fast as accepted: the
    time from the load generator's start to its `ready:` line (every client connected)."""
    with Broker(kind, args, args.certs) as b:
        cpu0 = cpu_seconds(b.pid)
        t0 = time.monotonic()
        conn = bench(args, "conn", TLS_PORT, ["-c", args.handshakes, "-R", 0, "-d", 120,
                                              "--prefix", f"hs-{kind}"], tls=True, background=True)
        ready = wait_ready(conn, timeout=120)
        elapsed = time.monotonic() - t0
        connected = int(ready.split()[1])
        cpu = cpu_seconds(b.pid) - cpu0
        conn.send_signal(signal.SIGTERM)
        try:
            conn.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            conn.kill()
            conn.communicate()
    rate = connected / elapsed
    row = {"broker": kind, "connected": connected, "elapsed_s": elapsed,
           "handshakes_per_s": rate, "cpu_us_per_handshake": 1e6 * cpu / max(1, connected)}
    log(f"{kind:9} TLS handshakes: {connected} of {args.handshakes} in {elapsed:.2f} s, {rate:.0f}/s, "
        f"cpu {row['cpu_us_per_handshake']:.0f} µs each")
    return row


def idle(args, kind, n):
    with Broker(kind, args, args.certs) as b:
        time.sleep(1.0)
        rss0 = status_kb(b.pid, "VmRSS")
        hold = 15 + n // 1000
        conn = bench(args, "conn", TLS_PORT, ["-c", n, "-R", 2000, "-d", hold,
                                              "--prefix", "idle"], tls=True, background=True)
        wait_ready(conn, timeout=hold + 60)
        time.sleep(2.0)
        rss1 = status_kb(b.pid, "VmRSS")
        out, err = conn.communicate(timeout=hold + 60)
        s = summary_of(out, err, ["bench", "conn"])
    per = (rss1 - rss0) * 1024.0 / max(1, s["connected"])
    log(f"{kind:9} idle TLS {n}: {s['connected']} connected, {per:.0f} B per connection")
    return {"broker": kind, "connected": s["connected"], "bytes_per_conn": per}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keelmq", required=True)
    ap.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--handshakes", type=int, default=2000)
    ap.add_argument("--idle", type=int, default=10000)
    ap.add_argument("--json")
    args = ap.parse_args()
    args.work = tempfile.mkdtemp(prefix="keelmq-tls-bench-")
    try:
        args.certs = make_certs(args.work)
        tcp, tls, wss = (throughput(args, t) for t in ("tcp", "tls", "wss"))
        hs = {k: handshakes(args, k) for k in ("mosquitto", "keelmq")}
        idles = {k: idle(args, k, args.idle) for k in ("mosquitto", "keelmq")} if args.idle else {}
    finally:
        shutil.rmtree(args.work, ignore_errors=True)
    r = lambda a, b: f"{a / b:.2f}" if b else "n/a"
    print("| benchmark | KeelMQ | reference | ratio |")
    print("|---|---|---|---|")
    print(f"| durable QoS 1 10 → 1, delivered msgs/s: TLS vs TCP | {tls['delivered_per_s']:,.0f} | "
          f"{tcp['delivered_per_s']:,.0f} (TCP) | {r(tls['delivered_per_s'], tcp['delivered_per_s'])} |")
    print(f"| ... broker CPU µs per message | {tls['cpu_us_per_msg']:.2f} | {tcp['cpu_us_per_msg']:.2f} (TCP) | "
          f"{r(tls['cpu_us_per_msg'], tcp['cpu_us_per_msg'])} |")
    print(f"| durable QoS 1 10 → 1, delivered msgs/s: WSS vs TCP | {wss['delivered_per_s']:,.0f} | "
          f"{tcp['delivered_per_s']:,.0f} (TCP) | {r(wss['delivered_per_s'], tcp['delivered_per_s'])} |")
    print(f"| ... broker CPU µs per message | {wss['cpu_us_per_msg']:.2f} | {tcp['cpu_us_per_msg']:.2f} (TCP) | "
          f"{r(wss['cpu_us_per_msg'], tcp['cpu_us_per_msg'])} |")
    m, k = hs["mosquitto"], hs["keelmq"]
    print(f"| TLS 1.3 handshakes + CONNACK per s ({args.handshakes} new connections) | "
          f"{k['handshakes_per_s']:,.0f} | {m['handshakes_per_s']:,.0f} (Mosquitto) | "
          f"{r(k['handshakes_per_s'], m['handshakes_per_s'])} |")
    print(f"| ... broker CPU µs per handshake | {k['cpu_us_per_handshake']:.0f} | "
          f"{m['cpu_us_per_handshake']:.0f} (Mosquitto) | {r(k['cpu_us_per_handshake'], m['cpu_us_per_handshake'])} |")
    if idles:
        m, k = idles["mosquitto"], idles["keelmq"]
        print(f"| RSS bytes per idle TLS connection ({args.idle:,}) | {k['bytes_per_conn']:,.0f} | "
              f"{m['bytes_per_conn']:,.0f} (Mosquitto) | {r(k['bytes_per_conn'], m['bytes_per_conn'])} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"tcp": tcp, "tls": tls, "wss": wss, "handshakes": hs, "idle": idles}, f,
                      indent=1)


if __name__ == "__main__":
    main()
