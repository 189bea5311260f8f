#!/usr/bin/env bash
# Run every deployment check and test in this directory; exits 1 if any
# of them failed.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
failed=()
for script in check-units.sh check-docker.sh test-install.sh test-backup.sh; do
    echo "### $script"
    if ! bash "$here/$script"; then
        failed+=("$script")
    fi
done
if [[ ${#failed[@]} -ne 0 ]]; then
    echo "failed: ${failed[*]}"
    exit 1
fi
echo "all deployment checks passed"
