#!/usr/bin/env python3
"""Recovery benchmark: how long KeelMQ takes to accept connections after kill -9 with a large
durable state, and how much memory recovery needs.

  python3 scripts/recovery_bench.py --keelmq target/release/keelmq \
      [--sessions 100000] [--queued-per-session 10] [--retained 1000000]

1. Starts `keelmq serve` on a fresh data directory (loopback port 22883).
2. Creates SESSIONS persistent sessions (MQTT 5, session expiry 1 day), each subscribed at
   QoS 1 to its own topic `q/<n>`, and disconnects them (in rounds of 10,000 connections).
3. Publishes QUEUED-PER-SESSION QoS 1 messages (64 B) to every `q/<n>`, so they wait in the
   offline queues, and RETAINED retained QoS 1 messages on distinct topics; every one of them is
   acknowledged, hence durable.
4. SIGKILLs the broker, starts it again on the same directory, and measures the time from
   spawn to the first CONNACK, the time until the retained messages (loaded in the background
   while the broker serves; SUBSCRIBE waits for them) are all in, the broker's peak RSS
   (VmHWM) after that, and what the broker's recovery log lines say.
Every step is bounded in time; the broker is stopped by PID at the end.
"""

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import shutil

from procstat import status_kb

PORT = 22883


def log(msg):
    print(f"[recovery {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def probe_connack(timeout=0.5):
    """One MQTT 3.1.1 CONNECT (clean session); True on CONNACK 0."""
    connect = bytes([0x10, 17, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 60, 0, 5]) + b"probe"
    try:
        with socket.create_connection(("127.0.0.1", PORT), timeout=timeout) as s:
            s.sendall(connect)
            data = s.recv(4)
            return data[:1] == b"\x20" and data[3:4] == b"\x00"
    except OSError:
        return False


def start(args, data_dir, log_path):
    out = open(log_path, "a")
    env = dict(os.environ, RUST_LOG="info")
    p = subprocess.Popen([args.keelmq, "serve", "--listen", f"127.0.0.1:{PORT}",
                          "--data-dir", data_dir], stdout=out, stderr=out, env=env)
    return p, out


def wait_accepting(p, limit):
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if p.poll() is not None:
            raise RuntimeError(f"broker exited with {p.returncode}")
        if probe_connack():
            return time.monotonic() - t0
        time.sleep(0.01)
    raise RuntimeError(f"broker not accepting after {limit} s")


def bench(args, mode, extra, timeout):
    cmd = [args.keelmq, "bench", mode, "-p", str(PORT), "--quiet"] + [str(x) for x in extra]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=timeout)
    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}")
    return json.loads(lines[-1])


def load(args, data, broker_log, result):
    """Steps 1-3 and the kill: builds the durable state and leaves the killed data directory."""
    p, out = start(args, data, broker_log)
    try:
        wait_accepting(p, 60)
        round_size = 10_000
        t = time.monotonic()
        for first in range(0, args.sessions, round_size):
            n = min(round_size, args.sessions - first)
            s = bench(args, "sub", ["-c", n, "--first-index", first, "-R", 5000, "-V", "5",
                                    "--persistent", "--session-expiry", 86400, "-t", "q/%i",
                                    "-q", 1, "--prefix", "rs", "--exit-when-subscribed",
                                    "-d", 120], 180)
            if s["subscribed"] != n:
                raise RuntimeError(f"only {s['subscribed']} of {n} subscribed: {s}")
        log(f"{args.sessions} persistent sessions in {time.monotonic() - t:.0f} s")
        pubs = 10
        t = time.monotonic()
        if args.queued_per_session:
            # QUEUED-PER-SESSION publishers each send one message to every q/<n> (topic q/%s).
            s = bench(args, "pub", ["-c", args.queued_per_session, "-t", "q/%s", "-q", 1,
                                    "-s", 64, "-L", args.sessions, "-F", 64, "--prefix", "rq"],
                      1800)
            log(f"{s['acked']} queued messages acknowledged in {time.monotonic() - t:.0f} s "
                f"({s['acked_per_s']:.0f}/s)")
            result["queued_acked"] = s["acked"]
        t = time.monotonic()
        if args.retained:
            s = bench(args, "pub", ["-c", pubs, "-t", "r/%i/%s", "-q", 1, "-s", 64, "--retain",
                                    "-L", args.retained // pubs, "-F", 64, "--prefix", "rr"], 1800)
            log(f"{s['acked']} retained messages acknowledged in {time.monotonic() - t:.0f} s "
                f"({s['acked_per_s']:.0f}/s)")
            result["retained_acked"] = s["acked"]
        result["rss_before_kill_mb"] = status_kb(p.pid, "VmRSS") / 1024
        result["peak_rss_before_kill_mb"] = status_kb(p.pid, "VmHWM") / 1024
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
        out.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keelmq", required=True)
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--queued-per-session", type=int, default=10)
    ap.add_argument("--retained", type=int, default=1_000_000)
    ap.add_argument("--keep", action="store_true", help="keep the data directory")
    ap.add_argument("--save-killed", metavar="DIR",
                    help="also copy the data directory as the kill left it to DIR")
    ap.add_argument("--from-killed", metavar="DIR",
                    help="skip steps 1-3: restart from a copy of a directory saved with "
                         "--save-killed")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="keelmq-recovery-")
    data = os.path.join(work, "data")
    broker_log = os.path.join(work, "broker.log")
    result = {}
    p, out = None, None
    try:
        if args.from_killed:
            shutil.copytree(args.from_killed, data)
        else:
            load(args, data, broker_log, result)
            if args.save_killed:
                shutil.copytree(data, args.save_killed)
        du = subprocess.run(["du", "-sm", data], capture_output=True, text=True).stdout.split()[0]
        result["data_dir_mb"] = int(du)
        log(f"killed; data dir {du} MB; restarting")
        t0 = time.monotonic()
        log_from = os.path.getsize(broker_log) if os.path.exists(broker_log) else 0
        p, out = start(args, data, broker_log)
        result["time_to_accept_s"] = wait_accepting(p, 600)
        # Retained messages load in the background (SUBSCRIBE waits for them): measure until
        # they are all in, and the peak memory of the whole recovery.
        while time.monotonic() - t0 < 600:
            with open(broker_log) as f:
                f.seek(log_from)
                if "retained messages loaded" in f.read():
                    break
            if p.poll() is not None:
                raise RuntimeError(f"broker exited with {p.returncode}")
            time.sleep(0.05)
        result["time_to_retained_loaded_s"] = time.monotonic() - t0
        time.sleep(1.0)
        result["peak_rss_after_restart_mb"] = status_kb(p.pid, "VmHWM") / 1024
        result["rss_after_restart_mb"] = status_kb(p.pid, "VmRSS") / 1024
        with open(broker_log) as f:
            f.seek(log_from)
            recovered = [l.strip() for l in f if re.search(r"recover|retained messages loaded", l, re.I)]
        result["recovery_log"] = recovered[-2:]
        # One session of the recovered ones gets its queue back.
        s = bench(args, "sub", ["-c", 1, "--first-index", 7, "-V", "5", "--persistent",
                                "--session-expiry", 86400, "-t", "q/%i", "-q", 1, "--prefix",
                                "rs", "--idle-exit", 2, "-d", 20], 60)
        result["sample_session_received"] = s["received"]
    finally:
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if out is not None:
            out.close()
        if args.keep:
            log(f"data kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
