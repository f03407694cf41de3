#!/usr/bin/env bash
# The benchmarks of BENCHMARKS.md, from a clean clone: builds the workspace in release, starts a
# local 3-node cluster, sets up a SoftHSMv2 token with the same key types, runs the comparisons
# with cloudkey-loadtest, writes JSON, SVG and text results into a results directory, and tears
# everything down (also on failure or Ctrl-C).
#
#   scripts/bench.sh [RESULTS_DIR]        (default target/bench/<UTC timestamp>)
#
# Tunables (environment): DURATION (measured seconds per step, 6), WARMUP (2), ROUNDS (3),
# WORKERS (32), SWEEP (worker counts of the sweep, "1,4,16,32"), CARGO_BUILD_JOBS (2).
# Needs softhsm2 (Debian: apt-get install -y softhsm2; installed here when run as root).
# The whole run takes about five minutes on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${DURATION:-6}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-3}
WORKERS=${WORKERS:-32}
SWEEP=${SWEEP:-1,4,16,32}
JOBS=${CARGO_BUILD_JOBS:-2}
RESULTS=${1:-target/bench/$(date -u +%Y%m%dT%H%M%SZ)}

say() { printf '\n== %s\n' "$*" >&2; }

if ! command -v softhsm2-util >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    say "installing softhsm2"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq softhsm2 >/dev/null
  else
    echo "scripts/bench.sh: softhsm2-util is missing (Debian: sudo apt-get install -y softhsm2)" >&2
    exit 1
  fi
fi
SOFTHSM_MODULE=""
for m in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
  /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so /usr/local/lib/softhsm/libsofthsm2.so; do
  if [ -f "$m" ]; then SOFTHSM_MODULE=$m; break; fi
done
[ -n "$SOFTHSM_MODULE" ] || { echo "scripts/bench.sh: libsofthsm2.so not found" >&2; exit 1; }

say "cargo build --release (-j$JOBS)"
cargo build --release --locked -j"$JOBS"

mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cloudkey-bench.XXXXXX")
CLUSTER=$WORK/cluster
cleanup() {
  "$ROOT/target/release/cloudkey" dev down --dir "$CLUSTER" --purge >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "starting a 3-node cluster in $CLUSTER"
target/release/cloudkey dev up --dir "$CLUSTER" >&2
export CLOUDKEY_PKCS11_CONFIG=$CLUSTER/pkcs11.toml

say "SoftHSMv2 token 'bench' in $WORK/softhsm"
mkdir -p "$WORK/softhsm/tokens"
cat >"$WORK/softhsm/softhsm2.conf" <<EOF
directories.tokendir = $WORK/softhsm/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
EOF
export SOFTHSM2_CONF=$WORK/softhsm/softhsm2.conf
softhsm2-util --init-token --free --label bench --pin 1234 --so-pin 12345678 >&2

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
  echo "nproc: $(nproc)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "softhsm: $(softhsm2-util --version 2>/dev/null || echo unknown) ($SOFTHSM_MODULE)"
  echo "settings: DURATION=$DURATION WARMUP=$WARMUP ROUNDS=$ROUNDS WORKERS=$WORKERS SWEEP=$SWEEP"
} | tee "$RESULTS/machine.txt" >&2

LT=target/release/cloudkey-loadtest
OURS=(pkcs11 --module "$ROOT/target/release/libcloudkey_pkcs11.so" --token dev --pin 1234 --name cloudkey)
SOFT=(pkcs11 --module "$SOFTHSM_MODULE" --token bench --pin 1234 --name softhsm)
CHIP=(chip --name chip)
TIME=(--duration "$DURATION" --warmup "$WARMUP")

# Runs the load tester, keeping its exact command line and its output.
run() {
  local name=$1
  shift
  say "$name: cloudkey-loadtest $*"
  echo "$LT $*" >"$RESULTS/$name.cmd"
  "$LT" --no-progress --json "$RESULTS/$name.json" --plot "$RESULTS/$name.svg" "$@" \
    | tee "$RESULTS/$name.txt"
}

run p256-sign --alg p256 --workers "$WORKERS" "${TIME[@]}" --compare --rounds "$ROUNDS" \
  "${OURS[@]}" -- "${SOFT[@]}" -- "${CHIP[@]}"

run rsa2048-sign --alg rsa2048 --workers "$WORKERS" "${TIME[@]}" --compare --rounds "$ROUNDS" \
  "${OURS[@]}" -- "${SOFT[@]}"

# Open loop at half of our median closed-loop throughput above.
MAX=$(awk '$3 == "cloudkey" { print $5 }' "$RESULTS/p256-sign.txt" | sort -n \
  | awk '{ v[NR] = $1 } END { if (NR == 0) exit 1; print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
RATE=$(awk -v m="$MAX" 'BEGIN { printf "%d", m / 2 }')
echo "open loop at $RATE/s (half of the median $MAX ops/s)" | tee "$RESULTS/open-loop-rate.txt" >&2
run p256-open --alg p256 --workers "$WORKERS" --rate "$RATE" --duration $((DURATION + 2)) \
  --warmup "$WARMUP" "${OURS[@]}"

run keygen --workload keygen --alg p256 --workers "$WORKERS" "${TIME[@]}" "${OURS[@]}"

# Throughput against workers, one round each (for the plot).
SWEEP_TIME=(--duration $(((DURATION + 1) / 2)) --warmup 1)
run p256-sweep --alg p256 --workers "$SWEEP" "${SWEEP_TIME[@]}" --compare --rounds 1 \
  "${OURS[@]}" -- "${SOFT[@]}" -- "${CHIP[@]}"

echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$RESULTS/machine.txt" >&2
say "results in $RESULTS"
