#!/usr/bin/env bash
# Stops the one-node cluster of scripts/slurm/start.sh: cancels its jobs, stops slurmd and slurmctld (by their pid
# files), munged when start.sh started it, and removes the slurm.conf start.sh wrote. Safe to run when nothing runs.
set -uo pipefail
DIR="${PHBENCH_SLURM_DIR:-/tmp/phbench-slurm}"
CONF=/etc/slurm/slurm.conf
MARK="# written by phbench scripts/slurm/start.sh"

stop_pid() {  # stop_pid NAME PIDFILE: TERM, wait up to 10 s, then KILL
    local name=$1 file=$2 pid
    [ -f "$file" ] || return 0
    pid=$(cat "$file")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        if kill -0 "$pid" 2>/dev/null; then echo "[slurm] $name ($pid) did not stop: killing it" >&2; kill -9 "$pid"; fi
    fi
    rm -f "$file"
}

if [ -f "$CONF" ] && grep -qF "$MARK" "$CONF"; then
    jobs=$(timeout 10 squeue -h -o %A 2>/dev/null || true)
    if [ -n "$jobs" ]; then
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null || true
        for _ in $(seq 40); do [ -z "$(timeout 5 squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.25; done
    fi
fi
stop_pid slurmd "$DIR/slurmd.pid"
stop_pid slurmctld "$DIR/slurmctld.pid"
if [ -f "$DIR/munged.ours" ]; then
    stop_pid munged /run/munge/munged.pid
    rm -f "$DIR/munged.ours"
fi
if [ -f "$CONF" ] && grep -qF "$MARK" "$CONF"; then rm -f "$CONF"; fi
echo "[slurm] stopped (state and logs kept in $DIR)"
