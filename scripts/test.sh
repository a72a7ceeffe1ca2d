#!/usr/bin/env bash
# The whole KeelMQ test suite, as README.md gives it and as CI runs it.
#
# Installs what the build and the interoperability tests need when it is missing
# (scripts/setup.sh: libclang, g++, Debian's mosquitto, mosquitto-clients and slapd, Python's
# paho-mqtt and PyJWT), so that those tests never silently skip, then runs every test of the workspace.
# Builds go to a stable target directory outside the checkout (CARGO_TARGET_DIR, default
# ~/.cache/keelmq-target) so that a reused machine rebuilds incrementally; RocksDB alone takes
# about 11 minutes to compile cold on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keelmq-target}"
export KEELMQ_REQUIRE_INTEROP=1   # interop tests fail, not skip, when a peer is missing

# Dependencies (apt and pip), installed when missing.
./scripts/setup.sh
PYTHON="${PYTHON:-python3}"
export KEELMQ_PYTHON="$PYTHON"

echo "== cargo test --workspace (target dir $CARGO_TARGET_DIR)"
# Bounded: a cold build takes about 12 minutes and the tests about 5; a test that hangs fails
# the run instead of holding it for ever.
timeout -s KILL 3600 cargo test --workspace --locked "$@"

# The fuzz targets depend on the codec, config, auth, rules and WAL crates only (no RocksDB); keep them
# compiling. Running them needs cargo-fuzz and a nightly toolchain (see README.md).
echo "== cargo check of the fuzz targets (fuzz/)"
cargo check --manifest-path fuzz/Cargo.toml --locked --bins
