#!/usr/bin/env bash
# KeelMQ against Mosquitto, side by side, in one run; prints a Markdown table with the ratios.
#
#   ./scripts/compare.sh [--duration SECS] [--idle N] [--only SCENARIO,...] [--json FILE]
#
# Installs Debian's mosquitto if it is missing, builds the release `keelmq` binary (its `bench`
# command is the load generator), then runs scripts/compare.py: every scenario starts one broker
# at a time on a loopback port (21883), runs the same load against it, and stops it by PID.
# Bounded: about 2 x (7 x (duration + 5 s) + 30 s), under 4 minutes with the default 10 s.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keelmq-target}"
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

need_apt=()
ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1 || need_apt+=(libclang-dev)
command -v g++ >/dev/null 2>&1 || need_apt+=(g++)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]} (apt)" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# The Debian package starts a system-wide mosquitto on port 1883; we use our own on 21883.
MOSQUITTO="$(command -v mosquitto || echo /usr/sbin/mosquitto)"

echo "== cargo build --release --bin keelmq" >&2
cargo build --release --locked --bin keelmq >&2

# 10,000 idle connections need as many descriptors in the broker and in the load generator.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

exec python3 scripts/compare.py --keelmq "$CARGO_TARGET_DIR/release/keelmq" --mosquitto "$MOSQUITTO" "$@"
