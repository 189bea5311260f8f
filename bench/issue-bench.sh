#!/usr/bin/env bash
# Load benchmark of certificate issuance through the REST API.
#
# Starts `metacrypt dev` (development MCIAS, keyd and frontd) on a fresh
# directory with every daemon pinned to SERVER_CPUS. Then oha, pinned to
# LOADGEN_CPUS, drives POST /v1/pki/pki/issue over keep-alive HTTPS
# connections. The script prints one line per scenario: requests per second,
# latency percentiles and CPU time per request of keyd and frontd. Every
# certificate is stored durably before its response is sent.
#
# Usage: bench/issue-bench.sh [DURATION]     (default 15s per scenario)
# Environment:
#   BIN_DIR        directory with the release binaries (default target/release)
#   OHA_BIN        oha binary (default /tmp/bench-tools/bin/oha; install it with
#                  `cargo install oha --version 1.16.0 --locked --root /tmp/bench-tools`)
#   SERVER_CPUS    CPU list for the daemons (default 1)
#   LOADGEN_CPUS   CPU list for oha (default 0)
#   PORT           loopback port for frontd (default 18443)
#   OUT_CSV        append one CSV row per scenario
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
duration=${1:-15s}
bin_dir=${BIN_DIR:-$root/target/release}
oha=${OHA_BIN:-/tmp/bench-tools/bin/oha}
server_cpus=${SERVER_CPUS:-1}
loadgen_cpus=${LOADGEN_CPUS:-0}
port=${PORT:-18443}

for tool in "$bin_dir/metacrypt" "$oha"; do
  [[ -x "$tool" ]] || { echo "$tool not found: build with cargo build --release --workspace --bins, and install oha" >&2; exit 2; }
done
command -v jq >/dev/null || { echo "jq not found: install it (apt-get install jq)" >&2; exit 2; }

dir=$(mktemp -d /tmp/metacrypt-bench.XXXXXX)
dev_pid=""
cleanup() {
  if [[ -n "$dev_pid" ]] && kill -0 "$dev_pid" 2>/dev/null; then
    kill -INT "$dev_pid"
    wait "$dev_pid" 2>/dev/null || true
  fi
  rm -rf "$dir"
}
trap cleanup EXIT

taskset -c "$server_cpus" "$bin_dir/metacrypt" dev --dir "$dir/dev" --addr "127.0.0.1:$port" \
  >"$dir/dev.out" 2>&1 &
dev_pid=$!
for _ in $(seq 1 200); do
  [[ -s "$dir/dev/dev.env" ]] && grep -q "running" "$dir/dev.out" && break
  kill -0 "$dev_pid" 2>/dev/null || { cat "$dir/dev.out" >&2; exit 1; }
  sleep 0.1
done
# shellcheck source=/dev/null
source "$dir/dev/dev.env"
keyd_pid=$(pgrep -f -- "metacrypt-keyd --config $dir/dev/metacrypt.toml" | head -n1)
frontd_pid=$(pgrep -f -- "metacrypt-frontd --config $dir/dev/metacrypt.toml" | head -n1)
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
echo "idle RSS: keyd $(rss "$keyd_pid") KiB, frontd $(rss "$frontd_pid") KiB"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run() {
  local label=$1 body=$2 conc=$3 amount=$4 args=()
  if [[ "$amount" =~ ^[0-9]+$ ]]; then args=(-n "$amount"); else args=(-z "$amount" -w); fi
  local k0 f0 k1 f1
  k0=$(cpu_ticks "$keyd_pid") f0=$(cpu_ticks "$frontd_pid")
  taskset -c "$loadgen_cpus" "$oha" --no-tui --output-format json -c "$conc" "${args[@]}" \
    --worker-threads 1 --cacert "$METACRYPT_CA_CERT" \
    -H "Authorization: Bearer $METACRYPT_TOKEN" -m POST -T application/json -d "$body" \
    "$METACRYPT_ADDR/v1/pki/pki/issue" >"$dir/oha.json"
  k1=$(cpu_ticks "$keyd_pid") f1=$(cpu_ticks "$frontd_pid")
  jq -r --arg name "$label" --arg conc "$conc" \
    --arg keyd_ms "$(( (k1 - k0) * 1000 / $(getconf CLK_TCK) ))" \
    --arg frontd_ms "$(( (f1 - f0) * 1000 / $(getconf CLK_TCK) ))" '
    (.statusCodeDistribution["200"] // 0) as $ok
    | "\($name) c=\($conc): \($ok) ok, \((.statusCodeDistribution | to_entries | map(.value) | add) - $ok) failed, "
      + "\(.summary.requestsPerSec | floor) req/s, p50 \(.latencyPercentiles.p50 * 1000 | . * 100 | floor / 100) ms, "
      + "p99 \(.latencyPercentiles.p99 * 1000 | . * 100 | floor / 100) ms, "
      + "CPU ms/req keyd \(($keyd_ms | tonumber) / ([$ok, 1] | max) | . * 1000 | floor / 1000) "
      + "frontd \(($frontd_ms | tonumber) / ([$ok, 1] | max) | . * 1000 | floor / 1000)"' "$dir/oha.json"
  if [[ -n "${OUT_CSV:-}" ]]; then
    jq -r --arg name "$label" --arg conc "$conc" \
      '[$name, $conc, .summary.requestsPerSec, .latencyPercentiles.p50, .latencyPercentiles.p99] | @csv' \
      "$dir/oha.json" >>"$OUT_CSV"
  fi
}

issue() { printf '{"issuer":"default","profile":"server","common_name":"svc.example.com","ttl":"24h","key_algorithm":"%s"}' "$1"; }
run "issue ecdsa-p256" "$(issue ecdsa-p256)" 1 "$duration"
run "issue ecdsa-p256" "$(issue ecdsa-p256)" 16 "$duration"
run "issue ed25519" "$(issue ed25519)" 16 "$duration"
run "issue ecdsa-p384" "$(issue ecdsa-p384)" 16 "$duration"
run "issue rsa-2048" "$(issue rsa-2048)" 16 200
echo "peak RSS after the runs: keyd $(awk '/^VmHWM:/ {print $2}' "/proc/$keyd_pid/status") KiB, frontd $(awk '/^VmHWM:/ {print $2}' "/proc/$frontd_pid/status") KiB"
