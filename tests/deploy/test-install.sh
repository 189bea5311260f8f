#!/usr/bin/env bash
# Tests deploy/scripts/install.sh in a temporary root, without creating real
# accounts: getent, groupadd, useradd, usermod, chown and systemctl are
# replaced, through PATH, by small scripts that keep accounts in text files
# and log each call. Every other command (install, mkdir,
# sed, stat) is the real one, so file contents and modes are real.
#
# The real (non-dry) runs need root, because install.sh refuses to run
# without it; as another user they are skipped with a SKIP line.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$here/lib.sh"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# Stand-ins for the built binaries.
bins="$scratch/bin"
mkdir -p "$bins"
for name in metacrypt-keyd metacrypt-frontd metacrypt; do
    printf '#!/bin/sh\necho %s\n' "$name" >"$bins/$name"
    chmod 0755 "$bins/$name"
done

# Account and service-manager doubles. State lives in $SHIM_STATE:
# passwd and group in /etc format, calls.log with one line per call.
shims="$scratch/shims"
mkdir -p "$shims"
cat >"$shims/getent" <<'EOF'
#!/usr/bin/env bash
set -euo pipefail
db=$1 name=$2
file="$SHIM_STATE/$db"
[[ -f "$file" ]] || exit 2
grep "^$name:" "$file" || exit 2
EOF
cat >"$shims/groupadd" <<'EOF'
#!/usr/bin/env bash
set -euo pipefail
echo "groupadd $*" >>"$SHIM_STATE/calls.log"
name=${!#}
gid=$((990 + $(wc -l <"$SHIM_STATE/group")))
echo "$name:x:$gid:" >>"$SHIM_STATE/group"
EOF
cat >"$shims/useradd" <<'EOF'
#!/usr/bin/env bash
set -euo pipefail
echo "useradd $*" >>"$SHIM_STATE/calls.log"
name=${!#}
gid="" extra=""
while [[ $# -gt 1 ]]; do
    case $1 in
    --gid) gid=$2; shift 2 ;;
    --groups) extra=$2; shift 2 ;;
    --user-group) gid=$name; shift ;;
    *) shift ;;
    esac
done
if [[ "$gid" == "$name" ]]; then
    echo "$name:x:$((990 + $(wc -l <"$SHIM_STATE/group"))):" >>"$SHIM_STATE/group"
fi
uid=$((900 + $(wc -l <"$SHIM_STATE/passwd")))
numeric_gid=$(grep "^$gid:" "$SHIM_STATE/group" | cut -d: -f3)
echo "$name:x:$uid:$numeric_gid::/nonexistent:/usr/sbin/nologin" >>"$SHIM_STATE/passwd"
if [[ -n "$extra" ]]; then
    sed -i "s/^\($extra:x:[0-9]*:\)\(.*\)\$/\1\2,$name/; s/:,/:/" "$SHIM_STATE/group"
fi
EOF
cat >"$shims/usermod" <<'EOF'
#!/usr/bin/env bash
set -euo pipefail
echo "usermod $*" >>"$SHIM_STATE/calls.log"
EOF
cat >"$shims/chown" <<'EOF'
#!/usr/bin/env bash
set -euo pipefail
echo "chown $*" >>"$SHIM_STATE/calls.log"
EOF
cat >"$shims/systemctl" <<'EOF'
#!/usr/bin/env bash
set -euo pipefail
echo "systemctl $*" >>"$SHIM_STATE/calls.log"
EOF
chmod 0755 "$shims"/*

# Gives a fresh, empty account state and sets SHIM_STATE to it.
reset_state() {
    SHIM_STATE="$scratch/state-$1"
    rm -rf "$SHIM_STATE"
    mkdir -p "$SHIM_STATE"
    : >"$SHIM_STATE/passwd"
    : >"$SHIM_STATE/group"
    : >"$SHIM_STATE/calls.log"
    export SHIM_STATE
}

# Runs install.sh with the doubles first in PATH; sets $output and $status.
install_sh() {
    status=0
    output=$(PATH="$shims:$PATH" "$repo/deploy/scripts/install.sh" "$@" 2>&1) || status=$?
}

echo "== dry run into an empty root"
reset_state dry
root="$scratch/root-dry"
mkdir -p "$root"
install_sh --dry-run --prefix "$root" --bin-dir "$bins"
expect_status "dry run" 0 "$status"
expect_contains "dry run" "$output" "+ groupadd --system metacrypt"
expect_contains "dry run" "$output" "+ useradd --system --gid metacrypt"
expect_contains "dry run" "$output" "--groups metacrypt --home-dir /nonexistent"
expect_contains "dry run" "$output" "+ install -d -m 0700 $root/srv/metacrypt"
expect_contains "dry run" "$output" "+ chown metacrypt-keyd:metacrypt $root/srv/metacrypt"
expect_contains "dry run" "$output" "+ install -d -m 0750 $root/srv/metacrypt/certs"
expect_contains "dry run" "$output" "+ chown root:metacrypt-frontd $root/srv/metacrypt/certs"
expect_contains "dry run" "$output" "+ install -d -m 0700 $root/srv/metacrypt/backups"
expect_contains "dry run" "$output" "$root/usr/local/bin/metacrypt-backup"
expect_contains "dry run" "$output" "$root/etc/systemd/system/metacrypt-keyd.service"
expect_contains "dry run" "$output" "+ chown root:metacrypt $root/srv/metacrypt/metacrypt.toml"
expect_contains "dry run" "$output" "front_allowed_uids = [<uid of metacrypt-frontd>]"
expect_contains "dry run" "$output" "(dry run: nothing was changed)"
left=$(find "$root" -mindepth 1 | head -n 5)
if [[ -z "$left" ]]; then
    pass "dry run created no file"
else
    fail "dry run created files: $left"
fi
if [[ -s "$SHIM_STATE/calls.log" ]]; then
    fail "dry run ran account commands: $(cat "$SHIM_STATE/calls.log")"
else
    pass "dry run ran no account command"
fi

echo "== argument errors"
install_sh --dry-run --prefix "$root" --bin-dir "$scratch/nowhere"
expect_failure "missing binaries" "$status"
expect_contains "missing binaries" "$output" "binary $scratch/nowhere/metacrypt-keyd is missing"
install_sh --dry-run --prefix relative/root --bin-dir "$bins"
expect_failure "relative prefix" "$status"
expect_contains "relative prefix" "$output" "--prefix must be an absolute path"
install_sh --frobnicate
expect_status "unknown argument" 2 "$status"
expect_contains "unknown argument" "$output" "unknown argument \"--frobnicate\""

if [[ $EUID -ne 0 ]]; then
    echo "SKIP: install runs need root (install.sh refuses to run without it); only the dry run was tested"
    finish
    exit 0
fi

echo "== install without root"
if command -v setpriv >/dev/null 2>&1; then
    status=0
    output=$(setpriv --reuid=65534 --regid=65534 --clear-groups \
        env PATH="$shims:$PATH" "$repo/deploy/scripts/install.sh" --prefix "$scratch/root-nobody" \
        --bin-dir "$bins" 2>&1) || status=$?
    expect_failure "install as nobody" "$status"
    expect_contains "install as nobody" "$output" "must run as root"
else
    echo "SKIP: setpriv is not installed, so the refusal without root was not tested"
fi

echo "== first install"
reset_state real
root="$scratch/root-real"
mkdir -p "$root"
install_sh --prefix "$root" --bin-dir "$bins"
expect_status "first install" 0 "$status"
calls=$(cat "$SHIM_STATE/calls.log")
expect_contains "first install" "$calls" "groupadd --system metacrypt"
expect_contains "first install" "$calls" "--comment Metacrypt key daemon metacrypt-keyd"
expect_contains "first install" "$calls" "--comment Metacrypt HTTPS front end metacrypt-frontd"
expect_contains "first install" "$calls" "chown metacrypt-keyd:metacrypt $root/srv/metacrypt"
expect_contains "first install" "$calls" "chown root:metacrypt-frontd $root/srv/metacrypt/certs"
expect_contains "first install" "$calls" "chown metacrypt-keyd:metacrypt $root/srv/metacrypt/backups"
expect_contains "first install" "$calls" "chown root:metacrypt $root/srv/metacrypt/metacrypt.toml"
expect_lacks "first install" "$calls" "systemctl"
expect_mode "$root/srv/metacrypt" 700
expect_mode "$root/srv/metacrypt/certs" 750
expect_mode "$root/srv/metacrypt/backups" 700
expect_mode "$root/srv/metacrypt/metacrypt.toml" 640
for name in metacrypt-keyd metacrypt-frontd metacrypt metacrypt-backup; do
    expect_mode "$root/usr/local/bin/$name" 755
done
for unit in "$repo"/systemd/*; do
    expect_mode "$root/etc/systemd/system/$(basename "$unit")" 644
done
expect_mode "$root/usr/local/share/doc/metacrypt/README.md" 644
if cmp -s "$repo/deploy/scripts/backup.sh" "$root/usr/local/bin/metacrypt-backup"; then
    pass "metacrypt-backup is backup.sh"
else
    fail "metacrypt-backup differs from deploy/scripts/backup.sh"
fi
frontd_uid=$(grep '^metacrypt-frontd:' "$SHIM_STATE/passwd" | cut -d: -f3)
config_text=$(cat "$root/srv/metacrypt/metacrypt.toml")
expect_contains "installed config" "$config_text" "front_allowed_uids = [$frontd_uid]"
expect_lacks "installed config" "$config_text" "front_allowed_uids = []"
left=$(find "$root/srv/metacrypt" -name '.metacrypt.toml.*')
if [[ -z "$left" ]]; then
    pass "no staging file left in the data directory"
else
    fail "staging file left: $left"
fi
expect_absent "$root/srv/metacrypt/metacrypt.db"

echo "== second install keeps accounts and config"
echo "# edited by the operator" >>"$root/srv/metacrypt/metacrypt.toml"
: >"$SHIM_STATE/calls.log"
install_sh --prefix "$root" --bin-dir "$bins"
expect_status "second install" 0 "$status"
calls=$(cat "$SHIM_STATE/calls.log")
expect_lacks "second install" "$calls" "groupadd"
expect_lacks "second install" "$calls" "useradd"
expect_lacks "second install" "$calls" "usermod"
expect_contains "second install" "$output" "group metacrypt exists, keeping it"
expect_contains "second install" "$output" "$root/srv/metacrypt/metacrypt.toml exists, keeping it"
config_text=$(cat "$root/srv/metacrypt/metacrypt.toml")
expect_contains "second install" "$config_text" "# edited by the operator"
expect_mode "$root/srv/metacrypt" 700

echo "== existing config open to other users"
chmod 0644 "$root/srv/metacrypt/metacrypt.toml"
install_sh --prefix "$root" --bin-dir "$bins"
expect_status "open config" 0 "$status"
expect_contains "open config" "$output" "has mode 644 and is open to other users"

echo "== frontd user outside the metacrypt group"
sed -i 's/^\(metacrypt:x:[0-9]*:\).*/\1/' "$SHIM_STATE/group"
: >"$SHIM_STATE/calls.log"
install_sh --prefix "$root" --bin-dir "$bins"
expect_status "group repair" 0 "$status"
calls=$(cat "$SHIM_STATE/calls.log")
expect_contains "group repair" "$calls" "usermod --append --groups metacrypt metacrypt-frontd"

finish
