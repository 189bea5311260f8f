#!/usr/bin/env bash
# Tests deploy/scripts/backup.sh against test doubles of the metacrypt CLI:
# two without a snapshot command (one failing as clap does, one exiting 0 for
# anything), one whose snapshot writes a real SQLite file with sqlite3, one
# whose snapshot fails and one whose snapshot is not a database. When a
# built metacrypt CLI is found and lacks the snapshot command, it is checked
# as well.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$here/lib.sh"

backup="$repo/deploy/scripts/backup.sh"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
doubles="$scratch/doubles"
mkdir -p "$doubles"

# A CLI without the subcommand fails as clap does, with status 2.
cat >"$doubles/no-snapshot" <<'EOF'
#!/usr/bin/env bash
echo "error: unrecognized subcommand '$1'" >&2
exit 2
EOF
# A CLI that exits 0 for any arguments and prints nothing, as a main() with
# no command parsing does.
printf '#!/bin/sh\nexit 0\n' >"$doubles/silent"
# A CLI whose snapshot writes a real SQLite database to --output.
cat >"$doubles/sqlite-snapshot" <<'EOF'
#!/usr/bin/env bash
set -euo pipefail
[[ "$1" == snapshot ]] || exit 2
[[ "${2:-}" == --help ]] && { echo "Usage: metacrypt snapshot --output <FILE>"; exit 0; }
output=""
while [[ $# -gt 0 ]]; do
    case $1 in
    --output) output=$2; shift 2 ;;
    *) shift ;;
    esac
done
sqlite3 "$output" "CREATE TABLE barrier_entries (path TEXT); INSERT INTO barrier_entries VALUES ('x');"
EOF
# A CLI whose snapshot fails after writing part of a file.
cat >"$doubles/failing-snapshot" <<'EOF'
#!/usr/bin/env bash
[[ "${2:-}" == --help ]] && { echo "Usage: metacrypt snapshot --output <FILE>"; exit 0; }
while [[ $# -gt 0 ]]; do
    [[ $1 == --output ]] && printf 'SQLite format 3\0partial' >"$2"
    shift
done
echo "metacrypt: keyd is not running" >&2
exit 1
EOF
# A CLI whose snapshot writes something that is not an SQLite database.
cat >"$doubles/garbage-snapshot" <<'EOF'
#!/usr/bin/env bash
[[ "${2:-}" == --help ]] && { echo "Usage: metacrypt snapshot --output <FILE>"; exit 0; }
while [[ $# -gt 0 ]]; do
    [[ $1 == --output ]] && echo "not a database" >"$2"
    shift
done
exit 0
EOF
chmod 0755 "$doubles"/*

# Runs backup.sh with CLI $1, retention $2, in a backup directory given by
# $backups; sets $output and $status.
run_backup() {
    status=0
    output=$(METACRYPT_CLI="$1" METACRYPT_BACKUP_DIR="$backups" \
        METACRYPT_CONFIG="$scratch/metacrypt.toml" "$backup" "$2" 2>&1) || status=$?
}

# Lists the files of the backup directory, hidden ones included.
listing() {
    find "$backups" -mindepth 1 -printf '%f\n' | sort
}

# Fills the backup directory with an old snapshot, a recent one and an
# unrelated old file.
seed_backups() {
    rm -rf "$backups"
    mkdir -p "$backups"
    touch -d '40 days ago' "$backups/metacrypt-20200101T020000Z.db"
    touch -d '10 days ago' "$backups/metacrypt-20200131T020000Z.db"
    touch -d '40 days ago' "$backups/notes.txt"
}

backups="$scratch/backups"

echo "== argument errors"
seed_backups
for bad in "" abc 0 -3 36501; do
    run_backup "$doubles/sqlite-snapshot" "$bad"
    expect_status "retention \"$bad\"" 2 "$status"
    expect_contains "retention \"$bad\"" "$output" "usage: metacrypt-backup RETENTION_DAYS"
done
status=0
output=$("$backup" 2>&1) || status=$?
expect_status "no argument" 2 "$status"

echo "== CLI not found"
run_backup "$scratch/no-such-cli" 30
expect_failure "missing CLI" "$status"
expect_contains "missing CLI" "$output" "was not found"

echo "== CLI without a snapshot command"
seed_backups
before=$(listing)
run_backup "$doubles/no-snapshot" 30
expect_failure "no snapshot command" "$status"
expect_contains "no snapshot command" "$output" "has no snapshot command with an --output option, so no backup was made"
expect_contains "no snapshot command" "$output" "unrecognized subcommand 'snapshot'"
if [[ "$(listing)" == "$before" ]]; then
    pass "no snapshot command: backup directory unchanged"
else
    fail "no snapshot command: backup directory changed: $(listing)"
fi

seed_backups
before=$(listing)
run_backup "$doubles/silent" 30
expect_failure "silent CLI" "$status"
expect_contains "silent CLI" "$output" "has no snapshot command with an --output option"
if [[ "$(listing)" == "$before" ]]; then
    pass "silent CLI: backup directory unchanged"
else
    fail "silent CLI: backup directory changed: $(listing)"
fi

built_cli=""
for candidate in "${CARGO_TARGET_DIR:-$repo/target}/debug/metacrypt" \
    "${CARGO_TARGET_DIR:-$repo/target}/release/metacrypt"; do
    if [[ -x "$candidate" ]]; then
        built_cli=$candidate
        break
    fi
done
if [[ -z "$built_cli" ]]; then
    echo "SKIP: no built metacrypt CLI found, so backup.sh was not run against it"
elif "$built_cli" snapshot --help 2>/dev/null | grep -q -- --output; then
    echo "SKIP: $built_cli has a snapshot command; a real snapshot needs a running keyd"
else
    run_backup "$built_cli" 30
    expect_failure "built CLI without snapshot" "$status"
    expect_contains "built CLI without snapshot" "$output" "has no snapshot command"
fi

echo "== successful snapshot with retention"
if command -v sqlite3 >/dev/null 2>&1; then
    seed_backups
    run_backup "$doubles/sqlite-snapshot" 30
    expect_status "snapshot" 0 "$status"
    mapfile -t written < <(find "$backups" -name 'metacrypt-2*.db' -newer "$backups/notes.txt" \
        ! -name 'metacrypt-2020*')
    if [[ ${#written[@]} -eq 1 ]]; then
        pass "snapshot: one new backup ${written[0]##*/}"
        expect_mode "${written[0]}" 600
        expect_contains "snapshot" "$output" "wrote ${written[0]}"
        rows=$(sqlite3 "${written[0]}" "SELECT count(*) FROM barrier_entries")
        if [[ "$rows" == 1 ]]; then
            pass "snapshot: the backup is the database the CLI wrote"
        else
            fail "snapshot: expected 1 row in the backup, found $rows"
        fi
        if [[ "${written[0]##*/}" =~ ^metacrypt-[0-9]{8}T[0-9]{6}Z\.db$ ]]; then
            pass "snapshot: name has a UTC timestamp"
        else
            fail "snapshot: unexpected name ${written[0]##*/}"
        fi
    else
        fail "snapshot: expected one new backup, found ${#written[@]}: $(listing)"
    fi
    expect_absent "$backups/metacrypt-20200101T020000Z.db"
    expect_contains "snapshot" "$output" "deleted $backups/metacrypt-20200101T020000Z.db"
    if [[ -e "$backups/metacrypt-20200131T020000Z.db" ]]; then
        pass "snapshot: the 10-day-old backup is kept"
    else
        fail "snapshot: the 10-day-old backup was deleted"
    fi
    if [[ -e "$backups/notes.txt" ]]; then
        pass "snapshot: files not named like backups are kept"
    else
        fail "snapshot: notes.txt was deleted"
    fi
    hidden=$(find "$backups" -name '.*' | head -n 1)
    if [[ -z "$hidden" ]]; then
        pass "snapshot: no partial file left"
    else
        fail "snapshot: partial file left: $hidden"
    fi

    echo "== stale partial file from a killed run"
    seed_backups
    touch -d '2 days ago' "$backups/.metacrypt-20200102T020000Z.db.partial"
    run_backup "$doubles/sqlite-snapshot" 30
    expect_status "stale partial" 0 "$status"
    expect_absent "$backups/.metacrypt-20200102T020000Z.db.partial"
else
    echo "SKIP: sqlite3 is not installed, so a successful snapshot was not tested"
fi

echo "== failing snapshot"
seed_backups
before=$(listing)
run_backup "$doubles/failing-snapshot" 30
expect_failure "failing snapshot" "$status"
expect_contains "failing snapshot" "$output" "failed with status 1; no backup was made and no old backup was deleted"
if [[ "$(listing)" == "$before" ]]; then
    pass "failing snapshot: old backups kept and no partial file left"
else
    fail "failing snapshot: backup directory changed: $(listing)"
fi

echo "== snapshot that is not a database"
seed_backups
before=$(listing)
run_backup "$doubles/garbage-snapshot" 30
expect_failure "garbage snapshot" "$status"
expect_contains "garbage snapshot" "$output" "is not an SQLite database"
if [[ "$(listing)" == "$before" ]]; then
    pass "garbage snapshot: old backups kept and no file left"
else
    fail "garbage snapshot: backup directory changed: $(listing)"
fi

echo "== missing backup directory"
rm -rf "$backups"
run_backup "$doubles/sqlite-snapshot" 30
expect_failure "missing directory" "$status"
expect_contains "missing directory" "$output" "backup directory $backups does not exist"

finish
