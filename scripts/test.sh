#!/usr/bin/env bash
# Builds every binary and runs every test: unit tests of each crate and the
# integration tests in tests/, which start the real daemons as processes.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins --locked
cargo test --workspace --locked -- --test-threads "${TEST_THREADS:-2}"
# The end-to-end tests of `metacrypt dev` are ignored in a plain `cargo test`
# because they need the other binaries, which the build above provides.
cargo test -p metacrypt-cli --locked -- --ignored
# systemd units, container files and the install and backup scripts.
bash tests/deploy/run.sh
