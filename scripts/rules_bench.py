#!/usr/bin/env python3
"""The rule engine's end-to-end cost: durable QoS 1, 10 publishers -> 1 persistent subscriber,
JSON payloads (`keelmq bench pub --json`), unpaced, KeelMQ on its defaults (fsync before every
acknowledgement) — once without rules and once with the rule

    SELECT payload.a AS a, payload.h AS h, clientid FROM "bench/#" WHERE payload.b > 0

republishing every message at QoS 1 to `derived/<clientid>`: inline, once with nobody
subscribed to the republished topic and once with a second persistent subscriber there; then
the same rule on a durable consumer (RETAIN from a field), nobody on its output. The four runs
in one invocation, one after the other on the same machine; prints the rates and their ratios
to the run without rules (the target is >= 0.6x) and whether every acknowledged message
reached the derived subscriber exactly once.

Usage: scripts/rules_bench.py --keelmq target/release/keelmq [--duration 10]
"""

import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import Broker, bench, summary_of, wait_ready  # noqa: E402
from procstat import cpu_seconds  # noqa: E402

RULE = """
[[rules]]
id = "bench"
sql = 'SELECT payload.a AS a, payload.h AS h, clientid FROM "bench/#" WHERE payload.b > 0'
actions = [
  { kind = "republish", topic = "derived/${clientid}", qos = 1, payload = '{"a":${a},"b":1,"h":"${h}"}' },
]
"""


def subscriber(args, port, topic, name):
    sub_args = ["-c", 1, "-t", topic, "-q", 1, "--idle-exit", 3, "-d", args.duration + 60,
                "--prefix", name, "--persistent"]
    proc = bench(args, "sub", port, sub_args, background=True)
    wait_ready(proc)
    return proc


# The same rule with RETAIN from a field of its own: it runs on a durable consumer, not inline.
CONSUMER_RULE = RULE.replace("qos = 1,", "qos = 1, retain = '${keep}',").replace(
    "clientid FROM", "clientid, false AS keep FROM")


def run(args, with_rule, derived_subscriber=True, rule=RULE):
    args.keelmq_config = None
    if with_rule:
        args.keelmq_config = os.path.join(args.work, "rules.toml")
        with open(args.keelmq_config, "w") as f:
            f.write(rule)
    with Broker("keelmq", args, args.work, args.port) as b:
        subs = [subscriber(args, args.port, "bench/#", "sub-src")]
        if with_rule and derived_subscriber:
            subs.append(subscriber(args, args.port, "derived/#", "sub-derived"))
        cpu0 = cpu_seconds(b.pid)
        p = bench(args, "pub", args.port, ["-c", 10, "-t", "bench/%i", "-q", 1, "-s", 128,
                                           "-d", args.duration, "-F", 32, "--json",
                                           "--prefix", "pub"])
        results = []
        for s in subs:
            out, err = s.communicate(timeout=args.duration + 120)
            results.append(summary_of(out, err, ["bench", "sub"]))
        cpu = cpu_seconds(b.pid) - cpu0
    src = results[0]
    row = {"acked": p["acked"], "delivered": src["unique"],
           "rate": src["unique"] / src["elapsed_s"] if src["unique"] else 0.0,
           "p99_us": src["latency"]["p99_us"], "cpu_us": 1e6 * cpu / max(1, src["unique"])}
    if len(results) > 1:
        d = results[1]
        row.update(derived=d["unique"], derived_dup=d["duplicated"],
                   derived_rate=d["unique"] / d["elapsed_s"] if d["unique"] else 0.0)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keelmq", required=True)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--port", type=int, default=21893)
    args = ap.parse_args()
    args.work = tempfile.mkdtemp(prefix="keelmq-rules-bench-")
    try:
        plain = run(args, False)
        alone = run(args, True, derived_subscriber=False)
        ruled = run(args, True)
        consumer = run(args, True, derived_subscriber=False, rule=CONSUMER_RULE)
    finally:
        shutil.rmtree(args.work, ignore_errors=True)
    ratio = lambda r: f"{r['rate'] / max(1.0, plain['rate']):.2f}x"
    runs = [plain, alone, ruled, consumer]
    print("| durable QoS 1, 10 pubs -> 1 persistent sub, 128 B JSON | without rules "
          "| inline rule, nobody on its output | inline rule, a persistent sub on its output "
          "| consumer rule, nobody on its output |")
    print("|---|---|---|---|---|")
    print("| delivered msgs/s (source topic) | " + " | ".join(f"{r['rate']:,.0f}" for r in runs) + " |")
    print("| ratio to without rules | | " + " | ".join(ratio(r) for r in runs[1:]) + " |")
    print("| end-to-end p99 | " + " | ".join(f"{r['p99_us'] / 1000:.1f} ms" for r in runs) + " |")
    print("| broker CPU per source message | " + " | ".join(f"{r['cpu_us']:.1f} µs" for r in runs) + " |")
    print(f"| republished msgs/s delivered | | | {ruled['derived_rate']:,.0f} | |")
    print(f"| acknowledged / republished and delivered / duplicated | | | "
          f"{ruled['acked']:,} / {ruled['derived']:,} / {ruled['derived_dup']:,} | |")


if __name__ == "__main__":
    main()
