#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests/test_slurm.py and for trying `phbench sweep --executor slurm`.
# Run as root. Installs Debian's slurm-wlm and munge when they are missing, writes /etc/slurm/slurm.conf for this
# host (state, spool, pid files and logs under $PHBENCH_SLURM_DIR, default /tmp/phbench-slurm), starts munged (unless
# one answers already), slurmctld and slurmd, and waits until `sinfo` shows the node idle.
# scripts/slurm/stop.sh stops what this started. Exit 1 with one line saying why when the cluster cannot start.
set -euo pipefail
DIR="${PHBENCH_SLURM_DIR:-/tmp/phbench-slurm}"
CONF=/etc/slurm/slurm.conf
MARK="# written by phbench scripts/slurm/start.sh"
die() { echo "[slurm] cluster not started: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (it installs packages and runs the daemons as root)"
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    echo "[slurm] installing slurm-wlm and munge" >&2
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq slurm-wlm munge; } >"${TMPDIR:-/tmp}/phbench-slurm-apt.log" 2>&1 \
        || die "apt-get could not install slurm-wlm and munge (see ${TMPDIR:-/tmp}/phbench-slurm-apt.log)"
fi
if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    die "$CONF exists and was not written by this script (a real cluster's configuration is left alone)"
fi
if [ -f "$DIR/slurmctld.pid" ] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null; then
    die "a cluster from $DIR is running already (scripts/slurm/stop.sh stops it)"
fi
mkdir -p "$DIR/state" "$DIR/spool"

# munge: authentication between the SLURM daemons and clients (one key on this one host)
if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
fi
install -d -o munge -g munge -m 0755 /run/munge
rm -f "$DIR/munged.ours"
if ! munge -n >/dev/null 2>&1; then
    runuser -u munge -- munged || die "munged did not start (see /var/log/munge/munged.log)"
    touch "$DIR/munged.ours"  # stop.sh stops only a munged this script started
fi

HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)  # below the total: slurmd drains a node that has less
cat > "$CONF" <<CONF
$MARK ($(date -u +%FT%TZ)); stop.sh removes it
ClusterName=phbench
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF

slurmctld -c || die "slurmctld did not start (see $DIR/slurmctld.log)"
slurmd || die "slurmd did not start (see $DIR/slurmd.log)"
for _ in $(seq 60); do
    state=$(sinfo -h -N -o %t 2>/dev/null | head -n1)
    if [ "$state" = idle ]; then
        echo "[slurm] node $HOST idle: $CPUS CPUs, ${MEM_MB} MB; config $CONF, logs in $DIR"
        exit 0
    fi
    sleep 0.5
done
tail -n 5 "$DIR/slurmctld.log" "$DIR/slurmd.log" >&2 || true
die "node $HOST not idle after 30 s (sinfo says '${state:-nothing}'); logs above"
