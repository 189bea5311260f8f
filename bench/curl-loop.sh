#!/usr/bin/env bash
# Issues certificates one after another with curl, one process per request,
# against a running development setup, and prints the rate together with the
# resident memory of keyd and frontd before and after.
#
# Usage: bench/curl-loop.sh DEV_ENV [COUNT] [KEY_ALGORITHM]
#   DEV_ENV        the dev.env file written by `metacrypt dev`
#   COUNT          number of certificates (default 200)
#   KEY_ALGORITHM  ecdsa-p256 (default), ecdsa-p384, ed25519 or rsa-2048
# Only loopback addresses are accepted.
set -euo pipefail

env_file=${1:?usage: bench/curl-loop.sh DEV_ENV [COUNT] [KEY_ALGORITHM]}
count=${2:-200}
algorithm=${3:-ecdsa-p256}
# shellcheck source=/dev/null
source "$env_file"
case "$METACRYPT_ADDR" in
  https://127.*|https://localhost:*|https://\[::1\]:*) ;;
  *) echo "rejected non-loopback address $METACRYPT_ADDR: this script sends traffic to loopback only" >&2; exit 2 ;;
esac
dir=$(dirname "$env_file")

rss_kib() {
  local pid
  pid=$(pgrep -f -- "$1 --config $dir/metacrypt.toml" | head -n1 || true)
  if [[ -z "$pid" ]]; then echo "?"; return; fi
  awk '/^VmRSS:/ {print $2}' "/proc/$pid/status"
}

body=$(printf '{"issuer":"default","profile":"server","common_name":"svc.example.com","ttl":"24h","key_algorithm":"%s"}' "$algorithm")
echo "keyd RSS before: $(rss_kib metacrypt-keyd) KiB, frontd RSS before: $(rss_kib metacrypt-frontd) KiB"
start=$(date +%s%N)
for ((i = 0; i < count; i++)); do
  curl --silent --show-error --fail --output /dev/null \
    --cacert "$METACRYPT_CA_CERT" \
    -H "Authorization: Bearer $METACRYPT_TOKEN" \
    -H "Content-Type: application/json" \
    -d "$body" "$METACRYPT_ADDR/v1/pki/pki/issue"
done
end=$(date +%s%N)
awk -v n="$count" -v ns=$((end - start)) -v alg="$algorithm" \
  'BEGIN { printf "%d %s certificates in %.2f s: %.1f per second, %.2f ms each\n", n, alg, ns / 1e9, n / (ns / 1e9), ns / 1e6 / n }'
echo "keyd RSS after: $(rss_kib metacrypt-keyd) KiB, frontd RSS after: $(rss_kib metacrypt-frontd) KiB"
