#!/usr/bin/env bash
# One entry point for a fresh machine:
#   ./run.sh demo    set up (first time) and run the BO demo on the shipped default PFN
#   ./run.sh test    set up (first time) and run the test suite (CI runs this)
# Other commands: ./run.sh setup | python ARGS... | bench NAME [ARGS...]
set -euo pipefail
cd "$(dirname "$0")"
VENV="${VENV:-.venv}"
PY="$VENV/bin/python"

setup() {
    if [ ! -x "$PY" ] || [ pyproject.toml -nt "$VENV/.deps-installed" ]; then
        echo "[run.sh] creating $VENV and installing dependencies (first run only)..."
        python3 -m venv "$VENV"
        "$PY" -m pip install -q --upgrade pip
        # Pin torch first: the CPU build on this machine's disk. A loose requirement
        # would pull a multi-GB CUDA build.
        "$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q "torch==2.13.0"
        "$PY" -m pip install -q ".[ax,notebooks,dev]"
        touch "$VENV/.deps-installed"
    fi
    # (Re)install our package itself, non-editable, so it is imported from any folder.
    find botorch_community -name __pycache__ -prune -exec rm -rf {} + 2>/dev/null || true
    "$PY" -m pip install -q --no-deps --no-build-isolation --force-reinstall . 2>&1 \
        | grep -v "^WARNING: Location" || true
}

cmd="${1:-help}"
shift || true
case "$cmd" in
    setup) setup ;;
    demo) setup; exec "$PY" -m botorch_community.demo "$@" ;;
    test)
        setup
        # Tests, then the notebooks executed top to bottom (nbmake).
        "$PY" -m pytest -q -p no:cacheprovider tests "$@"
        if ls notebooks/*.ipynb >/dev/null 2>&1; then
            "$PY" -m pytest -q -p no:cacheprovider --nbmake --nbmake-timeout=900 notebooks
        fi
        ;;
    python) setup; exec "$PY" "$@" ;;
    bench) setup; name="$1"; shift; exec "$PY" "benchmarks/$name.py" "$@" ;;
    *) sed -n '2,6p' "$0"; exit 2 ;;
esac
