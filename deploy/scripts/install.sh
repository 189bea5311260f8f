#!/usr/bin/env bash
# Install Metacrypt on a systemd host: accounts, directories, binaries, units
# and, if none exists yet, the configuration file.
#
# usage: install.sh [--bin-dir DIR] [--prefix DIR] [--dry-run]
#
#   --bin-dir DIR  directory containing the built metacrypt-keyd,
#                  metacrypt-frontd and metacrypt binaries
#                  (default: target/release of this repository)
#   --prefix DIR   install the files under DIR instead of / (for staging a
#                  package or testing); accounts are still those of this host
#   --dry-run      print every change instead of making it
#
# Running it again is safe: existing accounts and an existing
# /srv/metacrypt/metacrypt.toml are kept, directory modes and owners are set
# again, and binaries, units and documentation are replaced. The database is
# never touched.
#
# What it creates (paths under the prefix):
#   group metacrypt            may connect to keyd's front socket
#   user  metacrypt-keyd       runs keyd; primary group metacrypt
#   user  metacrypt-frontd     runs frontd; own group, member of metacrypt
#   /srv/metacrypt             0700 metacrypt-keyd:metacrypt (data)
#   /srv/metacrypt/certs       0750 root:metacrypt-frontd (TLS files of frontd)
#   /srv/metacrypt/backups     0700 metacrypt-keyd:metacrypt (snapshots)
#   /srv/metacrypt/metacrypt.toml  0640 root:metacrypt
#   /usr/local/bin/{metacrypt-keyd,metacrypt-frontd,metacrypt,metacrypt-backup}
#   /etc/systemd/system/metacrypt-*.{socket,service,timer}
#   /usr/local/share/doc/metacrypt/README.md
set -euo pipefail
umask 022

program=install.sh
script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$script_dir/../.." && pwd)

bin_dir="$repo/target/release"
prefix=/
dry_run=no

die() {
    echo "$program: $*" >&2
    exit 1
}

usage() {
    cat >&2 <<'EOF'
usage: install.sh [--bin-dir DIR] [--prefix DIR] [--dry-run]
  --bin-dir DIR  directory containing metacrypt-keyd, metacrypt-frontd and metacrypt
                 (default: target/release of this repository)
  --prefix DIR   install the files under DIR instead of /
  --dry-run      print every change instead of making it
EOF
    exit 2
}

while [[ $# -gt 0 ]]; do
    case $1 in
    --bin-dir)
        [[ $# -ge 2 ]] || die "--bin-dir needs a directory"
        bin_dir=$2
        shift 2
        ;;
    --prefix)
        [[ $# -ge 2 ]] || die "--prefix needs a directory"
        prefix=$2
        shift 2
        ;;
    --dry-run)
        dry_run=yes
        shift
        ;;
    -h | --help)
        usage
        ;;
    *)
        echo "$program: unknown argument \"$1\"" >&2
        usage
        ;;
    esac
done

[[ "$prefix" == /* ]] || die "--prefix must be an absolute path, not \"$prefix\""
prefix=${prefix%/}
if [[ "$dry_run" == no && $EUID -ne 0 ]]; then
    die "must run as root to create accounts and set owners (use --dry-run to see the steps)"
fi

# Prints a command, quoted for a shell, and runs it, or only prints it in a
# dry run.
run() {
    local quoted
    quoted=$(printf ' %q' "$@")
    echo "+${quoted}"
    if [[ "$dry_run" == no ]]; then
        "$@"
    fi
}

note() {
    echo "= $*"
}

# The sources, checked before anything changes.
binaries=(metacrypt-keyd metacrypt-frontd metacrypt)
units_src="$repo/systemd"
example_config="$repo/deploy/examples/metacrypt.toml"
backup_script="$script_dir/backup.sh"
readme="$repo/deploy/README.md"
for name in "${binaries[@]}"; do
    [[ -f "$bin_dir/$name" && -x "$bin_dir/$name" ]] ||
        die "binary $bin_dir/$name is missing or not executable; build with \`cargo build --release\` or pass --bin-dir"
done
for file in "$example_config" "$backup_script" "$readme"; do
    [[ -f "$file" ]] || die "$file is missing; run this script from a complete Metacrypt source tree"
done
mapfile -t units < <(cd "$units_src" && ls -- *.socket *.service *.timer 2>/dev/null)
[[ ${#units[@]} -gt 0 ]] || die "no unit files found in $units_src"

nologin=/bin/false
for candidate in /usr/sbin/nologin /sbin/nologin; do
    if [[ -x "$candidate" ]]; then
        nologin=$candidate
        break
    fi
done

echo "== accounts"
if getent group metacrypt >/dev/null; then
    note "group metacrypt exists, keeping it"
else
    run groupadd --system metacrypt
fi

if getent passwd metacrypt-keyd >/dev/null; then
    note "user metacrypt-keyd exists, keeping it"
else
    run useradd --system --gid metacrypt --home-dir /srv/metacrypt --no-create-home \
        --shell "$nologin" --comment "Metacrypt key daemon" metacrypt-keyd
fi

if getent passwd metacrypt-frontd >/dev/null; then
    note "user metacrypt-frontd exists, keeping it"
    members=$(getent group metacrypt | cut -d: -f4)
    if [[ ",$members," != *,metacrypt-frontd,* ]]; then
        run usermod --append --groups metacrypt metacrypt-frontd
    fi
else
    run useradd --system --user-group --groups metacrypt --home-dir /nonexistent \
        --no-create-home --shell "$nologin" --comment "Metacrypt HTTPS front end" metacrypt-frontd
fi

echo "== directories"
data="$prefix/srv/metacrypt"
# Creates directory $1 with mode $2 and owner $3, or sets them again.
owned_dir() {
    run install -d -m "$2" "$1"
    run chown "$3" "$1"
}
owned_dir "$data" 0700 metacrypt-keyd:metacrypt
owned_dir "$data/certs" 0750 root:metacrypt-frontd
owned_dir "$data/backups" 0700 metacrypt-keyd:metacrypt
for dir in "$prefix/usr/local/bin" "$prefix/etc/systemd/system" "$prefix/usr/local/share/doc/metacrypt"; do
    [[ -d "$dir" ]] || run mkdir -p "$dir"
done

echo "== binaries"
for name in "${binaries[@]}"; do
    run install -m 0755 "$bin_dir/$name" "$prefix/usr/local/bin/$name"
done
run install -m 0755 "$backup_script" "$prefix/usr/local/bin/metacrypt-backup"

echo "== systemd units"
for unit in "${units[@]}"; do
    run install -m 0644 "$units_src/$unit" "$prefix/etc/systemd/system/$unit"
done
run install -m 0644 "$readme" "$prefix/usr/local/share/doc/metacrypt/README.md"

echo "== configuration"
config="$data/metacrypt.toml"
if [[ -e "$config" ]]; then
    note "$config exists, keeping it"
    mode=$(stat -c %a -- "$config")
    if (((8#$mode & 8#007) != 0)); then
        echo "$program: warning: $config has mode $mode and is open to other users; expected 0640, owner root, group metacrypt" >&2
    fi
else
    # keyd admits frontd on the front socket by uid (SO_PEERCRED carries only
    # the primary gid, and frontd's primary group is its own).
    frontd_uid=$(getent passwd metacrypt-frontd | cut -d: -f3 || true)
    if [[ -z "$frontd_uid" ]]; then
        if [[ "$dry_run" == no ]]; then
            die "user metacrypt-frontd has no uid after its creation"
        fi
        frontd_uid="<uid of metacrypt-frontd>"
    fi
    note "$config from $example_config with keyd.front_allowed_uids = [$frontd_uid]"
    if [[ "$dry_run" == no ]]; then
        staged=$(mktemp "$data/.metacrypt.toml.XXXXXX")
        trap 'rm -f -- "$staged"' EXIT
        sed "s/^front_allowed_uids = \[\]\$/front_allowed_uids = [$frontd_uid]/" \
            "$example_config" >"$staged"
        grep -qx "front_allowed_uids = \[$frontd_uid\]" "$staged" ||
            die "$example_config has no line \"front_allowed_uids = []\" to fill in"
    else
        staged="$example_config"
    fi
    run install -m 0640 "$staged" "$config"
    run chown root:metacrypt "$config"
fi

if [[ "$prefix" == "" && -d /run/systemd/system ]]; then
    run systemctl daemon-reload
fi

cat <<EOF
== next steps
1. Put the TLS certificate and key of frontd in $data/certs/
   (server.crt, and server.key with mode 0640, owner root, group metacrypt-frontd).
2. Edit $config: at least mcias.server_url.
3. Start keyd's sockets and initialize through the admin socket before
   frontd listens, because POST /v1/init needs no authentication (init
   leaves keyd unsealed):
     systemctl enable --now metacrypt-keyd-front.socket metacrypt-keyd-admin.socket
     metacrypt init --config $config
4. Start frontd:
     systemctl enable --now metacrypt-frontd.socket
   After every restart of metacrypt-keyd, unseal it:
     metacrypt unseal --config $config
EOF
if [[ "$dry_run" == yes ]]; then
    echo "(dry run: nothing was changed)"
fi
