#!/usr/bin/env bash
# Check the systemd units in systemd/ without a running systemd:
#   1. `systemd-analyze verify` on every unit, inside a throwaway root that
#      contains the distribution's units (verify needs sysinit.target and
#      friends), the project's units and an executable stand-in for every
#      ExecStart= binary (verify rejects a missing binary);
#   2. two broken copies of keyd's unit (a missing binary, a misspelled
#      setting) must fail verify, so a pass means something;
#   3. the settings that keyd, frontd and the config crate rely on: socket
#      names, modes and paths, Type=notify, keyd's lack of network;
#   4. `systemd-analyze security --offline=yes` on every service, printing
#      the exposure score and failing above a per-unit threshold.
#
# Exits 0 without checking anything, with a SKIP line, only when
# systemd-analyze is not installed. Every other problem fails the run.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
units_dir="$repo/systemd"

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "SKIP: systemd-analyze is not installed, so the systemd units were not checked"
    exit 0
fi

failures=0
fail() {
    echo "FAIL: $*"
    failures=$((failures + 1))
}
pass() {
    echo "ok: $*"
}
indent() {
    sed 's/^/    /'
}

# Where the distribution keeps its unit files.
host_units=""
if command -v pkg-config >/dev/null 2>&1; then
    host_units=$(pkg-config --variable=systemdsystemunitdir systemd 2>/dev/null || true)
fi
for candidate in "$host_units" /usr/lib/systemd/system /lib/systemd/system; do
    if [[ -n "$candidate" && -f "$candidate/sysinit.target" ]]; then
        host_units=$candidate
        break
    fi
done
if [[ ! -f "$host_units/sysinit.target" ]]; then
    echo "FAIL: no systemd unit directory with sysinit.target found (tried pkg-config, /usr/lib/systemd/system, /lib/systemd/system)"
    exit 1
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
root="$scratch/root"
mkdir -p "$root/usr/lib/systemd" "$root/etc/systemd/system"
cp -a "$host_units" "$root/usr/lib/systemd/system"

mapfile -t units < <(cd "$units_dir" && ls -- *.socket *.service *.timer)
if [[ ${#units[@]} -eq 0 ]]; then
    echo "FAIL: no unit files in $units_dir"
    exit 1
fi
for unit in "${units[@]}"; do
    cp "$units_dir/$unit" "$root/etc/systemd/system/$unit"
done

# One stand-in executable per ExecStart= binary (the first word after any
# systemd prefix characters such as "-" or "+").
mapfile -t binaries < <(sed -n 's/^ExecStart=[-+!@:]*\([^ ]*\).*/\1/p' "$units_dir"/*.service | sort -u)
for binary in "${binaries[@]}"; do
    if [[ "$binary" != /* ]]; then
        fail "ExecStart binary $binary is not an absolute path"
        continue
    fi
    mkdir -p "$root$(dirname "$binary")"
    printf '#!/bin/sh\nexit 0\n' >"$root$binary"
    chmod 0755 "$root$binary"
done

echo "== systemd-analyze verify ($(systemd-analyze --version | head -n 1))"
# Runs verify on UNIT and succeeds only when it exits 0 and prints nothing:
# an unknown or misspelled setting is only a warning ("Unknown key ...,
# ignoring"), with exit status 0.
verify_clean() {
    local output
    if ! output=$(systemd-analyze verify --man=no --root="$root" "$1" 2>&1); then
        echo "$output"
        return 1
    fi
    if [[ -n "$output" ]]; then
        echo "$output"
        return 1
    fi
}

for unit in "${units[@]}"; do
    if output=$(verify_clean "$unit"); then
        pass "verify $unit"
    else
        fail "verify $unit"
        indent <<<"$output"
    fi
done

# Two broken copies of keyd's unit must be rejected, or the verify step above
# proves nothing on this machine: one whose ExecStart= binary does not exist,
# one with a misspelled setting.
broken="$root/etc/systemd/system/metacrypt-broken.service"
sed 's|^ExecStart=/usr/local/bin/metacrypt-keyd|ExecStart=/usr/local/bin/metacrypt-missing|' \
    "$units_dir/metacrypt-keyd.service" >"$broken"
if verify_clean metacrypt-broken.service >/dev/null; then
    fail "verify accepted a unit whose ExecStart= binary does not exist"
else
    pass "verify rejects a missing ExecStart= binary"
fi
sed 's/^ProtectSystem=/ProtectSytem=/' "$units_dir/metacrypt-keyd.service" >"$broken"
if verify_clean metacrypt-broken.service >/dev/null; then
    fail "verify accepted a unit with the misspelled setting ProtectSytem="
else
    pass "verify rejects a misspelled setting"
fi
rm "$broken"

echo "== socket settings"
# Prints the value of KEY in UNIT (the last assignment wins, as in systemd).
setting() {
    sed -n "s/^$2=//p" "$units_dir/$1" | tail -n 1
}
expect_setting() {
    local unit=$1 key=$2 expected=$3 actual
    actual=$(setting "$unit" "$key")
    if [[ "$actual" == "$expected" ]]; then
        pass "$unit $key=$expected"
    else
        fail "$unit: expected $key=$expected, found ${actual:-nothing}"
    fi
}

# The socket paths keyd, frontd and the CLI use when the config does not set
# them; the units must bind the same paths.
default_of() {
    sed -n "s/^pub const $1: &str = \"\(.*\)\";/\1/p" "$repo/config/src/lib.rs"
}
front_default=$(default_of DEFAULT_FRONT_SOCKET)
admin_default=$(default_of DEFAULT_ADMIN_SOCKET)
if [[ -z "$front_default" || -z "$admin_default" ]]; then
    fail "DEFAULT_FRONT_SOCKET or DEFAULT_ADMIN_SOCKET not found in config/src/lib.rs"
fi

expect_setting metacrypt-keyd-front.socket ListenStream "$front_default"
expect_setting metacrypt-keyd-front.socket FileDescriptorName front
expect_setting metacrypt-keyd-front.socket SocketMode 0660
expect_setting metacrypt-keyd-front.socket SocketGroup metacrypt
expect_setting metacrypt-keyd-front.socket Service metacrypt-keyd.service
expect_setting metacrypt-keyd-admin.socket ListenStream "$admin_default"
expect_setting metacrypt-keyd-admin.socket FileDescriptorName admin
expect_setting metacrypt-keyd-admin.socket SocketMode 0600
expect_setting metacrypt-keyd-admin.socket SocketUser metacrypt-keyd
expect_setting metacrypt-keyd-admin.socket Service metacrypt-keyd.service
expect_setting metacrypt-frontd.socket ListenStream 8443
expect_setting metacrypt-keyd.service Type notify
expect_setting metacrypt-keyd.service PrivateNetwork yes
expect_setting metacrypt-keyd.service RestrictAddressFamilies AF_UNIX
expect_setting metacrypt-keyd.service CapabilityBoundingSet ""
expect_setting metacrypt-keyd.service LimitCORE 0
expect_setting metacrypt-frontd.service Type notify
expect_setting metacrypt-frontd.service SupplementaryGroups metacrypt
expect_setting metacrypt-backup.timer OnCalendar "*-*-* 02:00:00"
expect_setting metacrypt-backup.timer RandomizedDelaySec 5min

echo "== systemd-analyze security --offline=yes"
# Maximum accepted exposure per service. systemd-analyze prints the exposure
# from 0.0 (fully restricted) to 10.0 (unrestricted) but takes --threshold=
# as an integer ten times that: 15 means 1.5.
declare -A thresholds=(
    [metacrypt-keyd.service]=15
    [metacrypt-frontd.service]=25
    [metacrypt-backup.service]=15
)
for unit in "${units[@]}"; do
    [[ "$unit" == *.service ]] || continue
    threshold=${thresholds[$unit]:-}
    if [[ -z "$threshold" ]]; then
        fail "$unit has no exposure threshold in check-units.sh"
        continue
    fi
    status=0
    output=$(systemd-analyze security --offline=yes --root="$root" \
        --threshold="$threshold" "$unit" 2>&1) || status=$?
    score=$(echo "$output" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
    if [[ -z "$score" ]]; then
        fail "$unit: no exposure level in the output of systemd-analyze security"
        tail -n 5 <<<"$output" | indent
    elif [[ $status -ne 0 ]]; then
        fail "$unit: exposure $score is above the threshold $((threshold / 10)).$((threshold % 10))"
        grep '✗' <<<"$output" | indent || true
    else
        pass "$unit: exposure $score (threshold $((threshold / 10)).$((threshold % 10)))"
    fi
done

if [[ $failures -ne 0 ]]; then
    echo "$failures check(s) failed"
    exit 1
fi
echo "all unit checks passed"
