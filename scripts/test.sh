#!/usr/bin/env bash
# Runs every test of the workspace: unit, property, known-answer, serial (real ptys and emulator
# processes), pool, raft storage, and multi-process cluster tests, PKCS#11 clients included.
# Needs the `openssl` 3 CLI (independent verification of signatures) and, for the PKCS#11
# client tests, pkcs11-tool, p11tool, OpenSSL's libp11 engine and a C compiler; .ci/run
# installs them on a bare Debian 12 machine.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v pkcs11-tool >/dev/null 2>&1 || missing+=(opensc)
command -v p11tool >/dev/null 2>&1 || missing+=(gnutls-bin)
engines=$(openssl version -e 2>/dev/null | sed -n 's/^ENGINESDIR: "\(.*\)"$/\1/p' || true)
[ -n "$engines" ] && [ -e "$engines/pkcs11.so" ] || missing+=(libengine-pkcs11-openssl)
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
if [ ${#missing[@]} -gt 0 ]; then
  echo "scripts/test.sh: missing tools (Debian: apt-get install ${missing[*]})" >&2
  exit 1
fi
# The integration tests (tests/, crate cloudkey-tests) start the real `cloudkey-node` and
# `cloudkey` binaries and load the built libcloudkey_pkcs11.so; cargo builds only the tested
# package's own binaries, so build the whole workspace first. The harness then need not
# rebuild anything (CLOUDKEY_TEST_NO_BUILD).
cargo build --workspace --locked -j"${CARGO_BUILD_JOBS:-2}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
CLOUDKEY_TEST_NO_BUILD=1 cargo test --workspace --locked -j"${CARGO_BUILD_JOBS:-2}" "$@" 2>&1 \
  | tee "$log" || status=$?
# One closing line for the whole workspace (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6; i += $8 }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
exit "$status"
