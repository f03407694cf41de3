#!/usr/bin/env bash
# Runs every test of the workspace: unit, property, known-answer, serial (real ptys and emulator
# processes), pool, raft storage, and multi-process cluster tests. Needs the `openssl` 3 CLI (independent verification of signatures);
# .ci/run installs it on a bare Debian 12 machine.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v openssl >/dev/null 2>&1; then
  echo "scripts/test.sh: the openssl CLI is missing (Debian: apt-get install openssl)" >&2
  exit 1
fi
# The integration tests (tests/, crate cloudkey-tests) start the real `cloudkey-node` and
# `cloudkey` binaries and load the built libcloudkey_pkcs11.so; cargo builds only the tested
# package's own binaries, so build the whole workspace first. The harness then need not
# rebuild anything (CLOUDKEY_TEST_NO_BUILD).
cargo build --workspace --locked -j"${CARGO_BUILD_JOBS:-2}"
CLOUDKEY_TEST_NO_BUILD=1 exec cargo test --workspace --locked -j"${CARGO_BUILD_JOBS:-2}" "$@"
