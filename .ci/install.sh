#!/usr/bin/env bash
# Create or update a virtual environment with ppkd and its pinned stack.
# Usage: .ci/install.sh VENV PADDLE_SPEC   (e.g. .venv paddlepaddle==3.3.1)
# Idempotent: does nothing when the requirements and the paddle spec match
# what the environment was last installed with.
set -euo pipefail
venv=${1:-.venv}
paddle=${2:-paddlepaddle==3.3.1}
cd "$(dirname "$0")/.."
want=$(cat requirements.txt requirements-nodeps.txt pyproject.toml | sha256sum | cut -c1-16)-$paddle
stamp="$venv/.ppkd-installed"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
echo "installing into $venv ($paddle)"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip="$venv/bin/python -m pip --disable-pip-version-check -q"
# Only one paddle wheel may be installed at a time.
case "$paddle" in
    paddlepaddle-gpu*) $pip uninstall -y paddlepaddle >/dev/null 2>&1 || true ;;
    *) $pip uninstall -y paddlepaddle-gpu >/dev/null 2>&1 || true ;;
esac
$pip install "$paddle" -r requirements.txt
$pip install --no-deps -r requirements-nodeps.txt
$pip install --no-deps -e .
echo "$want" > "$stamp"
