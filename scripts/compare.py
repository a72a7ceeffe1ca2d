#!/usr/bin/env python3
"""KeelMQ against Mosquitto, side by side, in one run (called by scripts/compare.sh).

Each scenario starts one broker on a loopback port with a fresh data directory, runs the same
`keelmq bench` load against it, reads the broker's CPU time and peak RSS from /proc, and stops
it (by PID). Mosquitto runs with persistence on and the limits KeelMQ uses by default
(max_queued_messages 1000, max_inflight_messages 32); KeelMQ runs on its defaults, which means
every QoS 1/2 acknowledgement waits for fdatasync. Prints a Markdown table with the ratios
(KeelMQ / Mosquitto) and, with --json FILE, writes every raw summary.

Scenarios (per the benchmark issue):
  1. QoS 0, 10 publishers -> 1 subscriber, 64 B, unpaced, and paced at 10k msg/s in total;
  2. QoS 1 and QoS 2 the same, with a persistent subscriber;
  3. QoS 0 fan-out, 1 publisher -> 50 subscribers;
  4. 10,000 idle connections: broker RSS per connection;
  5. broker CPU time per delivered message (every row; the target is for the paced rows).
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from procstat import cpu_seconds, status_kb
PAGE = os.sysconf("SC_PAGE_SIZE")


def log(msg):
    print(f"[compare {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def wait_port(port, proc, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class Broker:
    """One broker process with its own data directory; always stopped by PID."""

    def __init__(self, kind, args, work, port):
        self.kind, self.args, self.port = kind, args, port
        self.dir = tempfile.mkdtemp(prefix=f"{kind}-", dir=work)
        self.proc = None

    def __enter__(self):
        if self.kind == "keelmq":
            # The API on the next port: its /metrics gives the fdatasync latency histogram.
            cmd = [self.args.keelmq, "serve", "--listen", f"127.0.0.1:{self.port}",
                   "--api-bind", f"127.0.0.1:{self.port + 1}",
                   "--data-dir", os.path.join(self.dir, "data")]
            if self.args.keelmq_config:
                cmd += ["--config", self.args.keelmq_config]
        else:
            conf = os.path.join(self.dir, "mosquitto.conf")
            with open(conf, "w") as f:
                f.write(
                    f"listener {self.port} 127.0.0.1\n"
                    "allow_anonymous true\n"
                    "persistence true\n"
                    f"persistence_location {self.dir}/\n"
                    "max_queued_messages 1000\n"
                    "max_inflight_messages 32\n"
                    "log_dest none\n"
                )
            cmd = [self.args.mosquitto, "-c", conf]
        self.log_path = os.path.join(self.dir, "broker.log")
        self.log = open(self.log_path, "w")
        # KeelMQ logs each checkpoint (debug, keelmq::persistence): their times go in the
        # latency timeline.
        env = dict(os.environ, RUST_LOG="warn,keelmq::persistence=debug,keelmq_wal=debug")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, env=env)
        wait_port(self.port, self.proc)
        return self

    @property
    def pid(self):
        return self.proc.pid

    def checkpoints(self):
        """Wall-clock times (epoch seconds) of the checkpoints the broker logged, and the
        lines (with how long the image was locked, the store write, the truncation)."""
        times, lines = [], []
        try:
            with open(self.log_path) as f:
                for line in f:
                    for what in ("checkpoint written", "WAL segment rotated"):
                        if what not in line:
                            continue
                        stamp = line.split()[0].rstrip("Z")
                        t = datetime.datetime.fromisoformat(stamp[:26])
                        t = t.replace(tzinfo=datetime.timezone.utc).timestamp()
                        if what == "checkpoint written":
                            times.append(t)
                        lines.append((t, f"{what}: {line.split(what, 1)[1].strip()}"))
        except (OSError, ValueError):
            pass
        return times, lines

    def fsyncs(self):
        """KeelMQ's WAL fdatasyncs so far, from its /metrics histogram: how many, how many took
        longer than 10 ms, and the upper bound (seconds) of the slowest one's bucket."""
        if self.kind != "keelmq":
            return None
        try:
            url = f"http://127.0.0.1:{self.port + 1}/metrics"
            with urllib.request.urlopen(url, timeout=5) as r:
                text = r.read().decode()
        except (OSError, ValueError):
            return None
        buckets = []
        for line in text.splitlines():
            if line.startswith('keelmq_wal_fsync_seconds_bucket{le="'):
                le, n = line.split('le="', 1)[1].split('"}')
                buckets.append((float(le), int(n)))
        if not buckets:
            return None
        total = buckets[-1][1]
        over_10ms = total - max((n for le, n in buckets if le <= 0.01), default=0)
        slowest = next((le for le, n in buckets if n == total), float("inf"))
        return {"count": total, "over_10ms": over_10ms, "slowest_le_s": slowest}

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def bench(args, mode, port, extra, background=False, live=False):
    cmd = [args.keelmq, "bench", mode, "-p", str(port), "--threads", str(args.threads)]
    if not live:
        cmd.append("--quiet")
    cmd += [str(x) for x in extra]
    if background:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         timeout=args.duration + 120)
    return summary_of(out.stdout, out.stderr, cmd)


def summary_of(stdout, stderr, cmd):
    lines = [l for l in stdout.splitlines() if l.startswith("{")]
    if not lines:
        raise RuntimeError(f"{' '.join(cmd)} printed no summary:\n{stdout}\n{stderr}")
    return json.loads(lines[-1])


def wait_ready(proc, timeout=60.0):
    """Reads the background bench's stderr until its `ready:` line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            raise RuntimeError(f"bench exited before it was ready ({proc.wait()})")
        if line.startswith("ready:"):
            return line.strip()
    raise RuntimeError("bench not ready in time")


def pubsub(args, kind, port, name, qos, pubs, subs, rate=None):
    with Broker(kind, args, args.work, port) as b:
        sub_args = ["-c", subs, "-t", "bench/#", "-q", qos, "--idle-exit", 3,
                    "-d", args.duration + 60, "--prefix", f"sub-{name}"]
        if qos > 0:
            sub_args.append("--persistent")
        # Paced runs keep the subscriber's live line: a latency timeline, second by second.
        sub = bench(args, "sub", port, sub_args, background=True, live=bool(rate))
        ready = wait_ready(sub)
        started = time.time()
        cpu0 = cpu_seconds(b.pid)
        pub_args = ["-c", pubs, "-t", "bench/%i", "-q", qos, "-s", 64, "-d", args.duration,
                    "-F", 32, "--prefix", f"pub-{name}"]
        if rate:
            pub_args += ["--rate", rate]
        p = bench(args, "pub", port, pub_args)
        out, err = sub.communicate(timeout=args.duration + 120)
        s = summary_of(out, err, ["bench", "sub"])
        cpu = cpu_seconds(b.pid) - cpu0
        hwm = status_kb(b.pid, "VmHWM")
        times, events = b.checkpoints()
        checkpoints = [round(t - started, 1) for t in times if t >= started]
        checkpoint_lines = [f"at {t - started:.1f} s {what}" for t, what in events if t >= started]
        fsyncs = b.fsyncs() if qos > 0 else None
    timeline = [l.strip() for l in err.splitlines() if " sub conns " in l and "latency" in l]
    expected = (p["acked"] if qos > 0 else p["sent"]) * subs
    row = {
        "broker": kind, "scenario": name, "ready": ready,
        "sent": p["sent"], "acked": p["acked"], "expected": expected,
        "delivered": s["unique"], "duplicated": s["duplicated"],
        "delivered_pct": 100.0 * s["unique"] / expected if expected else 0.0,
        "lost": max(0, expected - s["unique"]),
        "delivered_per_s": s["unique"] / s["elapsed_s"] if s["unique"] else 0.0,
        "p50_us": s["latency"]["p50_us"], "p99_us": s["latency"]["p99_us"],
        "max_us": s["latency"]["max_us"], "checkpoints_s": checkpoints, "timeline": timeline,
        "fsyncs": fsyncs,
        "ack_p99_us": p["ack_latency"]["p99_us"],
        "cpu_us_per_msg": 1e6 * cpu / s["unique"] if s["unique"] else 0.0,
        "peak_rss_mb": hwm / 1024.0,
        "pub": p, "sub": s,
    }
    log(f"{kind:9} {name:22} delivered {row['delivered']:>9} of {expected:>9} "
        f"({row['delivered_pct']:.1f}%) {row['delivered_per_s']:>9.0f}/s p99 {row['p99_us']} µs "
        f"cpu {row['cpu_us_per_msg']:.2f} µs/msg rss {row['peak_rss_mb']:.0f} MB")
    if rate and args.timeline:
        log(f"{kind} {name} checkpoints at s {checkpoints}")
        for line in checkpoint_lines:
            log(f"  checkpoint {line}")
        for line in timeline:
            log(f"  {line}")
    return row


def idle_conns(args, kind, port, n):
    with Broker(kind, args, args.work, port) as b:
        time.sleep(1.0)
        rss0 = status_kb(b.pid, "VmRSS")
        hold = 15 + n // 1000
        conn = bench(args, "conn", port, ["-c", n, "-R", 2000, "-d", hold, "--prefix", "idle"],
                     background=True)
        ready = wait_ready(conn, timeout=hold + 30)
        time.sleep(2.0)
        rss1 = status_kb(b.pid, "VmRSS")
        out, err = conn.communicate(timeout=hold + 60)
        s = summary_of(out, err, ["bench", "conn"])
    per_conn = (rss1 - rss0) * 1024.0 / max(1, s["connected"])
    log(f"{kind:9} idle {n}: {s['connected']} connected ({ready}); RSS {rss0} -> {rss1} kB, "
        f"{per_conn:.0f} B per connection")
    return {"broker": kind, "scenario": f"idle-{n}", "connected": s["connected"],
            "rss_before_kb": rss0, "rss_after_kb": rss1, "bytes_per_conn": per_conn,
            "conn": s}


SCENARIOS = [
    # name, qos, publishers, subscribers, rate
    ("qos0-saturation", 0, 10, 1, None),
    ("qos0-paced-10k", 0, 10, 1, 10000),
    ("qos1-saturation", 1, 10, 1, None),
    ("qos1-paced-10k", 1, 10, 1, 10000),
    ("qos2-saturation", 2, 10, 1, None),
    ("qos2-paced-10k", 2, 10, 1, 10000),
    ("qos0-fanout-1to50", 0, 1, 50, None),
]


def ratio(k, m):
    return f"{k / m:.2f}" if m else "n/a"


def table(rows, idle):
    by = {(r["broker"], r["scenario"]): r for r in rows}
    out = ["| scenario | metric | Mosquitto | KeelMQ | KeelMQ / Mosquitto |",
           "|---|---|---|---|---|"]
    for name, qos, *_ in SCENARIOS:
        m, k = by.get(("mosquitto", name)), by.get(("keelmq", name))
        if not (m and k):
            continue
        out.append(f"| {name} | delivered msgs/s | {m['delivered_per_s']:,.0f} | "
                   f"{k['delivered_per_s']:,.0f} | {ratio(k['delivered_per_s'], m['delivered_per_s'])} |")
        out.append(f"| | delivered / {'acknowledged' if qos else 'sent'} | "
                   f"{m['delivered']:,} / {m['expected']:,} ({m['delivered_pct']:.1f}%) | "
                   f"{k['delivered']:,} / {k['expected']:,} ({k['delivered_pct']:.1f}%) | |")
        if m["duplicated"] or k["duplicated"]:
            out.append(f"| | duplicated | {m['duplicated']:,} | {k['duplicated']:,} | |")
        out.append(f"| | latency p50 / p99 / max (µs) | {m['p50_us']:,} / {m['p99_us']:,} / {m['max_us']:,} | "
                   f"{k['p50_us']:,} / {k['p99_us']:,} / {k['max_us']:,} | {ratio(k['p99_us'], m['p99_us'])} (p99) |")
        if k["checkpoints_s"]:
            out.append(f"| | KeelMQ checkpoints (s into the run) | | "
                       f"{', '.join(str(c) for c in k['checkpoints_s'])} | |")
        f = k.get("fsyncs")
        if f:
            out.append(f"| | KeelMQ fdatasyncs: all / over 10 ms / slowest under (ms) | | "
                       f"{f['count']:,} / {f['over_10ms']:,} / {1000 * f['slowest_le_s']:g} | |")
        out.append(f"| | broker CPU µs per delivered msg | {m['cpu_us_per_msg']:.2f} | "
                   f"{k['cpu_us_per_msg']:.2f} | {ratio(k['cpu_us_per_msg'], m['cpu_us_per_msg'])} |")
        out.append(f"| | broker peak RSS (MB) | {m['peak_rss_mb']:.0f} | {k['peak_rss_mb']:.0f} | "
                   f"{ratio(k['peak_rss_mb'], m['peak_rss_mb'])} |")
    m = next((r for r in idle if r["broker"] == "mosquitto"), None)
    k = next((r for r in idle if r["broker"] == "keelmq"), None)
    if m and k:
        out.append(f"| {k['scenario']} idle connections | broker RSS bytes per connection | "
                   f"{m['bytes_per_conn']:,.0f} ({m['connected']:,} conns) | "
                   f"{k['bytes_per_conn']:,.0f} ({k['connected']:,} conns) | "
                   f"{ratio(k['bytes_per_conn'], m['bytes_per_conn'])} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keelmq", required=True, help="the keelmq binary (release build)")
    ap.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    ap.add_argument("--keelmq-config", help="a TOML config file for KeelMQ (default: none, "
                    "its built-in defaults)")
    ap.add_argument("--duration", type=int, default=10, help="seconds of load per scenario")
    ap.add_argument("--idle", type=int, default=10000, help="idle connections (0 to skip)")
    ap.add_argument("--only", default="", help="comma-separated scenario names")
    ap.add_argument("--threads", type=int, default=2, help="load generator worker threads")
    ap.add_argument("--port", type=int, default=21883)
    ap.add_argument("--json", help="write every raw result here")
    ap.add_argument("--timeline", action="store_true",
                    help="log the paced runs' per-second latency and the checkpoint times")
    args = ap.parse_args()
    args.work = tempfile.mkdtemp(prefix="keelmq-compare-")
    only = set(filter(None, args.only.split(",")))
    versions = {
        "keelmq": subprocess.run([args.keelmq, "--version"], capture_output=True, text=True).stdout.strip(),
        "mosquitto": subprocess.run([args.mosquitto, "-h"], capture_output=True, text=True).stdout.splitlines()[0],
    }
    rows, idle = [], []
    try:
        for name, qos, pubs, subs, rate in SCENARIOS:
            if only and name not in only:
                continue
            # Mosquitto first, then KeelMQ, for each scenario: both see the same machine state.
            for kind in ("mosquitto", "keelmq"):
                rows.append(pubsub(args, kind, args.port, name, qos, pubs, subs, rate))
        if args.idle and (not only or "idle" in only):
            for kind in ("mosquitto", "keelmq"):
                idle.append(idle_conns(args, kind, args.port, args.idle))
    finally:
        shutil.rmtree(args.work, ignore_errors=True)
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on "
          f"{platform.node()}: {os.cpu_count()} cores ({cpu}), Linux {platform.release()}; "
          f"{versions['keelmq']}, {versions['mosquitto']}; {args.duration} s per scenario, "
          f"load generator `keelmq bench` on the same cores.\n")
    print(table(rows, idle))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"versions": versions, "rows": rows, "idle": idle}, f, indent=1)


if __name__ == "__main__":
    main()
