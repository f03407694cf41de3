#!/usr/bin/env bash
# Runs every test of the workspace: unit, property, known-answer, serial (real ptys and emulator
# processes) and pool tests. Needs the `openssl` 3 CLI (independent verification of signatures);
# .ci/run installs it on a bare Debian 12 machine.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v openssl >/dev/null 2>&1; then
  echo "scripts/test.sh: the openssl CLI is missing (Debian: apt-get install openssl)" >&2
  exit 1
fi
exec cargo test --workspace --locked -j"${CARGO_BUILD_JOBS:-2}" "$@"
