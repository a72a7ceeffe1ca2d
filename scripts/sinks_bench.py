#!/usr/bin/env python3
"""The PostgreSQL sink against its physical limit, in one run on the same machine and the same
throwaway PostgreSQL cluster (Debian's, fsync on, started here on a loopback port):

1. the limit: `benches/pg_loop.rs`, a plain tokio-postgres loop inserting N rows with the
   sink's statement shape (ON CONFLICT DO NOTHING on the id), 100 per transaction of pipelined
   executes of one prepared statement;
2. the sink: KeelMQ (release build, its defaults: fsync before every acknowledgement) with a
   PostgreSQL sink on `bench/#` (batch_size 100), loaded by `keelmq bench pub` (10 publishers,
   QoS 1, JSON payloads, unpaced) for --duration seconds while the sink's table does not exist
   yet (the sink retries, the messages wait in its queue); then the table is created and the
   sink's rate is the backlog over the time it takes to drain into the table. (Measured while
   the publishers run, the sink keeps up with them: the broker's durable ingest bounds it.)

Prints both rates and their ratio (the target is >= 0.7x), and whether every acknowledged
message has its row, once.

With --mqtt it measures the MQTT sink instead: 10 QoS 1 publishers for --duration seconds
into KeelMQ, whose MQTT sink (qos 1) forwards `bench/#` to a Mosquitto (the comparison's
configuration) where a persistent QoS 1 subscriber counts what arrives, against the same
publishers publishing to that Mosquitto directly; rates are what the subscriber received per
second.

With --backlog N it measures what a sink's backlog costs: 10 QoS 1 publishers put N messages
(JSON payloads of --size bytes, default 64) into the PostgreSQL sink's queue while its table does not exist, the
broker's resident memory (VmRSS) sampled twice a second from start to drained; then the table
is created and the backlog drains. Prints the RSS at start, with the backlog, and at its
peak, and the memory per queued message.

Usage: scripts/sinks_bench.py --keelmq target/release/keelmq [--duration 10] [--backlog N]
(the pg_loop bench is built with `cargo bench --bench pg_loop --no-run` beforehand, or here)
"""

import argparse
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import Broker, bench, summary_of, wait_ready  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(cmd):
    if os.geteuid() == 0:
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"] + cmd
    return cmd


class Postgres:
    """A throwaway cluster, stopped by PID (SIGQUIT) at the end."""

    def __init__(self, work):
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not bins:
            sys.exit("PostgreSQL is not installed (scripts/setup.sh installs it)")
        self.bin = bins[-1]
        self.dir = tempfile.mkdtemp(prefix="pg-", dir=work)
        self.port = free_port()

    def __enter__(self):
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", "postgres:postgres", self.dir], check=True)
        data = os.path.join(self.dir, "data")
        subprocess.run(as_postgres([f"{self.bin}/initdb", "-D", data, "-U", "keelmq",
                                    "--auth=trust", "-E", "UTF8"]),
                       check=True, stdout=subprocess.DEVNULL)
        self.proc = subprocess.Popen(as_postgres([
            f"{self.bin}/postgres", "-D", data, "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.dir}"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.psql("SELECT 1", db="postgres", check=False) == "1":
                break
            time.sleep(0.2)
        self.psql("CREATE DATABASE bench", db="postgres")
        self.psql(TABLE.format(name="loop_rows"))
        return self

    def psql(self, sql, db="bench", check=True):
        out = subprocess.run(as_postgres([f"{self.bin}/psql", "-h", "127.0.0.1", "-p",
                                          str(self.port), "-U", "keelmq", "-d", db, "-At",
                                          "-c", sql]),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if check and out.returncode != 0:
            raise RuntimeError(out.stderr)
        return out.stdout.strip()

    def url(self):
        return f"postgres://keelmq@127.0.0.1:{self.port}/bench"

    def __exit__(self, *exc):
        self.proc.send_signal(3)  # SIGQUIT: immediate shutdown, backends included
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def pg_loop(rows, url, root):
    env = dict(os.environ, PG_LOOP_URL=url, PG_LOOP_ROWS=str(rows), PG_LOOP_BATCH="100")
    # The build directory scripts/test.sh uses, unless one is set.
    env.setdefault("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/keelmq-target"))
    out = subprocess.run(["cargo", "bench", "--quiet", "--bench", "pg_loop"], cwd=root, env=env,
                         stdout=subprocess.PIPE, text=True, check=True).stdout
    return json.loads([l for l in out.splitlines() if l.startswith("{")][-1])


TABLE = "CREATE TABLE {name}(id bigint PRIMARY KEY, topic text, body text)"

# Every row a different message, counted in one statement (the sink may still be writing the
# messages stored as the publishers stopped).
ONCE = "SELECT count(*) = count(DISTINCT id) FROM sink_rows"

SINK = """
[[sinks]]
name = "bench"
kind = "postgresql"
url = "{url}"
topics = ["bench/#"]
sql = "INSERT INTO sink_rows(id, topic, body) VALUES (${{id}}, ${{topic}}, ${{payload}}) ON CONFLICT DO NOTHING"
batch_size = 100
retry = {{ initial_ms = 20, max_ms = 50 }}
inflight_batches = {inflight}
"""


def sink_run(args, pg):
    args.keelmq_config = os.path.join(args.work, "sink.toml")
    with open(args.keelmq_config, "w") as f:
        f.write(SINK.format(url=pg.url(), inflight=args.inflight))
    with Broker("keelmq", args, args.work, args.port):
        ingest_started = time.monotonic()
        p = bench(args, "pub", args.port, ["-c", 10, "-t", "bench/%i", "-q", 1, "-s", 128,
                                           "-d", args.duration, "-F", 32, "--json",
                                           "--prefix", "pub"])
        acked = p["acked"]
        ingest = acked / (time.monotonic() - ingest_started)
        pg.psql(TABLE.format(name="sink_rows"))
        started = time.monotonic()
        deadline = time.monotonic() + 600
        rows = 0
        while time.monotonic() < deadline:
            rows = int(pg.psql("SELECT count(*) FROM sink_rows"))
            if rows >= acked:
                break
            time.sleep(0.05)
        elapsed = time.monotonic() - started
    return {"acked": acked, "rows": rows, "secs": round(elapsed, 3),
            "rate": round(acked / elapsed, 1), "ingest_rate": round(ingest, 1)}


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def backlog_run(args, pg):
    """N messages queued for the sink while its target refuses them, then drained."""
    import threading
    args.keelmq_config = os.path.join(args.work, "backlog.toml")
    with open(args.keelmq_config, "w") as f:
        f.write(SINK.format(url=pg.url(), inflight=args.inflight) + "max_queued_messages = 2000000\n"
                "[limits]\nmax_queued_bytes = 1073741824\nmax_queued_bytes_total = 2147483648\n")
    with Broker("keelmq", args, args.work, args.port) as broker:
        time.sleep(1)
        start_kib = rss_kib(broker.pid)
        peak = [start_kib]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], rss_kib(broker.pid))
                time.sleep(0.5)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        per = args.backlog // 10
        p = bench(args, "pub", args.port, ["-c", 10, "-t", "bench/%i", "-q", 1,
                                           "-s", args.size, "-L", per, "-d", 3600, "-F", 32, "--json",
                                           "--prefix", "pub"])
        acked = p["acked"]
        time.sleep(2)
        backlog_kib = rss_kib(broker.pid)
        pg.psql(TABLE.format(name="sink_rows"))
        started = time.monotonic()
        rows = 0
        while time.monotonic() < started + 1800:
            rows = int(pg.psql("SELECT count(*) FROM sink_rows"))
            if rows >= acked:
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        stop.set()
        sampler.join()
        drained_kib = rss_kib(broker.pid)
    return {"acked": acked, "payload_bytes": args.size, "rows": rows,
            "drain_secs": round(elapsed, 1),
            "rss_start_mib": round(start_kib / 1024, 1),
            "rss_backlog_mib": round(backlog_kib / 1024, 1),
            "rss_peak_mib": round(peak[0] / 1024, 1),
            "rss_drained_mib": round(drained_kib / 1024, 1),
            "bytes_per_queued_message": round((backlog_kib - start_kib) * 1024 / max(acked, 1))}


MQTT_SINK = """
[[sinks]]
name = "bench"
kind = "mqtt"
server = "127.0.0.1:{port}"
client_id = "keelmq-bench-bridge"
qos = 1
topics = ["bench/#"]
"""


def received_at_mosquitto(args, mosquitto_port, publish_port):
    """Publishes to `publish_port` while a subscriber on Mosquitto counts; its summary."""
    sub = bench(args, "sub", mosquitto_port, ["-c", 1, "-t", "bench/#", "-q", 1,
                                              "--idle-exit", 3, "-d", args.duration + 60,
                                              "--prefix", "far", "--persistent"],
                background=True)
    wait_ready(sub)
    p = bench(args, "pub", publish_port, ["-c", 10, "-t", "bench/%i", "-q", 1, "-s", 128,
                                          "-d", args.duration, "-F", 32, "--prefix", "pub"])
    out, err = sub.communicate(timeout=args.duration + 300)
    s = summary_of(out, err, ["bench", "sub"])
    return {"acked": p["acked"], "received": s["unique"], "duplicated": s["duplicated"],
            "rate": round(s["unique"] / s["elapsed_s"], 1) if s["unique"] else 0.0}


def mqtt_runs(args):
    """The MQTT sink against publishing to Mosquitto directly, one after the other."""
    mosquitto_port = free_port()
    with Broker("mosquitto", args, args.work, mosquitto_port):
        direct = received_at_mosquitto(args, mosquitto_port, mosquitto_port)
    with Broker("mosquitto", args, args.work, mosquitto_port):
        args.keelmq_config = os.path.join(args.work, "mqtt-sink.toml")
        with open(args.keelmq_config, "w") as f:
            f.write(MQTT_SINK.format(port=mosquitto_port))
        with Broker("keelmq", args, args.work, args.port):
            sink = received_at_mosquitto(args, mosquitto_port, args.port)
    return {"direct": direct, "sink": sink, "ratio": round(sink["rate"] / direct["rate"], 2)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keelmq", required=True)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mqtt", action="store_true", help="measure the MQTT sink instead")
    ap.add_argument("--backlog", type=int, default=0,
                    help="measure the memory of a PostgreSQL sink's backlog of this many")
    ap.add_argument("--size", type=int, default=64, help="payload bytes (--backlog)")
    ap.add_argument("--inflight", type=int, default=1,
                    help="the PostgreSQL sink's inflight_batches (batches written at once)")
    ap.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    args = ap.parse_args()
    args.port = args.port or free_port()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args.work = tempfile.mkdtemp(prefix="sinks-bench-")
    os.chmod(args.work, 0o755)  # the postgres user reaches its cluster below it
    try:
        if args.mqtt:
            print(json.dumps(mqtt_runs(args)))
            return
        if args.backlog:
            with Postgres(args.work) as pg:
                run = backlog_run(args, pg)
                run["one_row_per_message"] = pg.psql(ONCE) == "t"
            print(json.dumps(run))
            return
        with Postgres(args.work) as pg:
            sink = sink_run(args, pg)
            print("sink:", json.dumps(sink), file=sys.stderr)
            limit = pg_loop(sink["acked"], pg.url(), root)
            once = pg.psql(ONCE) == "t"
        print(json.dumps({"sink": sink, "pg_loop": limit,
                          "ratio": round(sink["rate"] / limit["rate"], 2),
                          # Every acknowledged message has its row (the bench counts only the
                          # acknowledgements it saw; a message stored as it stopped may add one).
                          "none_missing": sink["rows"] >= sink["acked"],
                          "one_row_per_message": once}))
    finally:
        shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
