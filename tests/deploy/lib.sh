# shellcheck shell=bash
# Assertion helpers shared by the deployment tests. Source it; each check
# prints one "ok:" or "FAIL:" line, and `finish` exits 1 if any check failed.

failures=0

indent() {
    sed 's/^/    /'
}

pass() {
    echo "ok: $*"
}

fail() {
    echo "FAIL: $*"
    failures=$((failures + 1))
}

# expect_status NAME EXPECTED ACTUAL
expect_status() {
    if [[ "$3" == "$2" ]]; then
        pass "$1: exit status $3"
    else
        fail "$1: expected exit status $2, got $3"
    fi
}

# expect_failure NAME ACTUAL: any non-zero status.
expect_failure() {
    if [[ "$2" -ne 0 ]]; then
        pass "$1: failed with status $2"
    else
        fail "$1: expected a failure, got status 0"
    fi
}

# expect_contains NAME TEXT NEEDLE
expect_contains() {
    if [[ "$2" == *"$3"* ]]; then
        pass "$1: output contains \"$3\""
    else
        fail "$1: output lacks \"$3\"; output was:"
        indent <<<"$2"
    fi
}

# expect_lacks NAME TEXT NEEDLE
expect_lacks() {
    if [[ "$2" != *"$3"* ]]; then
        pass "$1: output lacks \"$3\""
    else
        fail "$1: output unexpectedly contains \"$3\""
    fi
}

# expect_mode PATH MODE: PATH exists with the octal MODE.
expect_mode() {
    local actual
    if [[ ! -e "$1" ]]; then
        fail "$1 does not exist"
        return
    fi
    actual=$(stat -c %a -- "$1")
    if [[ "$actual" == "$2" ]]; then
        pass "$1 has mode $2"
    else
        fail "$1 has mode $actual, expected $2"
    fi
}

# expect_absent PATH
expect_absent() {
    if [[ ! -e "$1" ]]; then
        pass "$1 does not exist"
    else
        fail "$1 exists"
    fi
}

finish() {
    if [[ $failures -ne 0 ]]; then
        echo "$failures check(s) failed"
        exit 1
    fi
    echo "all checks passed"
}
