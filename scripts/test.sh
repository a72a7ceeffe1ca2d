#!/usr/bin/env bash
# The whole KeelMQ test suite, as README.md gives it and as CI runs it.
#
# Installs what the interoperability tests need when it is missing (Debian's mosquitto and
# mosquitto-clients, Python's paho-mqtt), so that those tests never silently skip, then runs
# every test of the workspace. Builds go to a stable target directory outside the checkout
# (CARGO_TARGET_DIR, default ~/.cache/keelmq-target) so that a reused machine rebuilds
# incrementally; RocksDB alone takes about 25 minutes to compile cold on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keelmq-target}"
export KEELMQ_REQUIRE_INTEROP=1   # interop tests fail, not skip, when a peer is missing

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

need_apt=()
# RocksDB (keelmq-storage) is built from source: bindgen needs libclang, the build a C++ compiler.
ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1 || need_apt+=(libclang-dev)
command -v g++ >/dev/null 2>&1 || need_apt+=(g++)
command -v mosquitto_pub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]} (apt)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import paho.mqtt' >/dev/null 2>&1; then
  echo "== installing paho-mqtt (pip)"
  "$PYTHON" -m pip install --quiet 'paho-mqtt>=2,<3'
fi
export KEELMQ_PYTHON="$PYTHON"

echo "== cargo test --workspace (target dir $CARGO_TARGET_DIR)"
cargo test --workspace --locked "$@"

# The fuzz targets build the crate without its `broker` feature (no RocksDB); keep them
# compiling. Running them needs cargo-fuzz and a nightly toolchain (see README.md).
echo "== cargo check of the fuzz targets (fuzz/)"
cargo check --manifest-path fuzz/Cargo.toml --locked --bins
