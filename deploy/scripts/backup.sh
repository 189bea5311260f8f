#!/usr/bin/env bash
# metacrypt-backup RETENTION_DAYS
#
# Writes a consistent snapshot of the keyd database into the backup directory
# as metacrypt-YYYYMMDDTHHMMSSZ.db (UTC), mode 0600, then deletes the
# snapshots there that are older than RETENTION_DAYS days. Nothing is deleted
# unless the new snapshot was written and checked.
#
# The snapshot is taken by `metacrypt snapshot --config FILE --output FILE`,
# which requests an SQLite copy of the live database from keyd over its
# admin socket. A CLI without that command cannot make a backup: the script then
# fails, says so and changes nothing.
#
# A snapshot holds the same encrypted data as the live database, so
# restoring it still needs the seal password.
#
# Environment:
#   METACRYPT_CLI         the metacrypt CLI (default: metacrypt from PATH)
#   METACRYPT_CONFIG      the config file (default /srv/metacrypt/metacrypt.toml)
#   METACRYPT_BACKUP_DIR  the backup directory (default /srv/metacrypt/backups)
#
# Installed as /usr/local/bin/metacrypt-backup; metacrypt-backup.service runs
# it daily as metacrypt-keyd.
set -euo pipefail
umask 077

program=metacrypt-backup

die() {
    echo "$program: $*" >&2
    exit 1
}

usage() {
    echo "usage: $program RETENTION_DAYS" >&2
    echo "  RETENTION_DAYS: delete snapshots older than this many days (a whole number from 1 to 36500)" >&2
    exit 2
}

if [[ $# -ne 1 ]]; then
    usage
fi
retention=$1
if [[ ! "$retention" =~ ^[0-9]+$ ]] || ((10#$retention < 1 || 10#$retention > 36500)); then
    echo "$program: invalid RETENTION_DAYS \"$retention\"" >&2
    usage
fi
retention=$((10#$retention))

cli=${METACRYPT_CLI:-metacrypt}
config=${METACRYPT_CONFIG:-/srv/metacrypt/metacrypt.toml}
backup_dir=${METACRYPT_BACKUP_DIR:-/srv/metacrypt/backups}

if ! command -v "$cli" >/dev/null 2>&1; then
    die "the metacrypt CLI \"$cli\" was not found; install it as /usr/local/bin/metacrypt or set METACRYPT_CLI"
fi

# A clap CLI exits with status 0 for `SUBCOMMAND --help` only when it has
# that subcommand, and the help text lists the subcommand's options.
help_status=0
help_output=$("$cli" snapshot --help 2>&1) || help_status=$?
if [[ $help_status -ne 0 || "$help_output" != *--output* ]]; then
    echo "$program: \"$cli\" has no snapshot command with an --output option, so no backup was made." >&2
    echo "$program: backups need \`metacrypt snapshot --output FILE\`; install a metacrypt CLI that provides it." >&2
    echo "$program: \`$cli snapshot --help\` exited with status $help_status: $(head -n 1 <<<"$help_output")" >&2
    exit 1
fi

if [[ ! -d "$backup_dir" ]]; then
    die "backup directory $backup_dir does not exist (install.sh creates it, mode 0700, owned by metacrypt-keyd)"
fi
if [[ ! -w "$backup_dir" ]]; then
    die "backup directory $backup_dir is not writable by uid $(id -u)"
fi

stamp=$(date -u +%Y%m%dT%H%M%SZ)
final="$backup_dir/metacrypt-$stamp.db"
partial="$backup_dir/.metacrypt-$stamp.db.partial"
if [[ -e "$final" ]]; then
    die "$final already exists; not overwriting it"
fi

# The snapshot is written under a hidden name and renamed only after it has
# been checked, so a failed run never leaves a file that looks like a backup.
trap 'rm -f -- "$partial"' EXIT
rm -f -- "$partial"

status=0
"$cli" snapshot --config "$config" --output "$partial" || status=$?
if [[ $status -ne 0 ]]; then
    die "\`$cli snapshot\` failed with status $status; no backup was made and no old backup was deleted"
fi
if [[ ! -s "$partial" ]]; then
    die "\`$cli snapshot\` succeeded but wrote nothing to $partial; no old backup was deleted"
fi
# Every SQLite database file starts with the 16 bytes "SQLite format 3\0".
header=$(head -c 15 -- "$partial")
if [[ "$header" != "SQLite format 3" ]]; then
    die "$partial is not an SQLite database; no backup was made and no old backup was deleted"
fi

chmod 0600 -- "$partial"
mv -- "$partial" "$final"
sync -- "$final"
echo "$program: wrote $final ($(stat -c %s -- "$final") bytes)"

# Retention: snapshots whose modification time is more than RETENTION_DAYS
# whole days ago (find -mtime +N), and hidden partial files left by a run
# that was killed.
while IFS= read -r -d '' old; do
    rm -f -- "$old"
    echo "$program: deleted $old (older than $retention days)"
done < <(find "$backup_dir" -maxdepth 1 -type f -name 'metacrypt-*.db' -mtime +"$retention" -print0)
while IFS= read -r -d '' stale; do
    rm -f -- "$stale"
    echo "$program: deleted the unfinished snapshot $stale"
done < <(find "$backup_dir" -maxdepth 1 -type f -name '.metacrypt-*.db.partial' -mtime +0 -print0)
