#!/usr/bin/env bash
# One entry point for users and CI: creates .venv on first use, installs phbench, runs what is asked.
#   ./reproduce.sh table1 [--profile default|smoke|paper] [...]   render a table (main job)
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
# Re-install only when the dependency list changed (idempotent, fast on re-use).
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
    echo "[reproduce] installing phbench and its test extras into $VENV" >&2
    "$PY" -m pip install --quiet --disable-pip-version-check -e ".[test]"
    echo "$want" > "$STAMP"
fi

cmd="${1:-table1}"
[ $# -gt 0 ] && shift
case "$cmd" in
    test)
        exec "$PY" -m pytest -q "$@" ;;
    table)  # "table <id>" is the CLI verb itself; "table1", "lgg-table"... are table ids
        exec "$PY" -m benchmark "$cmd" "$@" ;;
    table*|*-table*)
        exec "$PY" -m benchmark table "$cmd" "$@" ;;
    *)
        exec "$PY" -m benchmark "$cmd" "$@" ;;
esac
