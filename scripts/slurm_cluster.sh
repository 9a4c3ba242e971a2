#!/usr/bin/env bash
# A single-node SLURM on this machine, for testing `snakemake --profile profiles/slurm` for real.
#
#   scripts/slurm_cluster.sh install   apt-get install slurmctld slurmd slurm-client munge (root, Debian/Ubuntu)
#   scripts/slurm_cluster.sh start     write /etc/slurm/slurm.conf + gres.conf, start munged, slurmctld, slurmd
#   scripts/slurm_cluster.sh status    sinfo / squeue
#   scripts/slurm_cluster.sh stop      stop the daemons this script started (by the PIDs it recorded)
#
# No accounting database: accounting_storage/none, proctrack/linuxproc, task/none. This node, with all its
# cores and a fake GPU (Gres=gpu:fake:1, File=/dev/null, so GPU requests -- --gpus / --gres -- are scheduled
# on a CPU-only machine), in two partitions: `debug` (the default) and `gpu` (the GPU partition named in
# profiles/slurm). Submit with profiles/slurm-test layered on
# profiles/slurm (slurm-status-command: squeue, slurm-no-account: true).
#
# State (PIDs, daemon logs, spool) lives in $EMGUARD_SLURM_DIR (default /tmp/emguard-slurm). `start` refuses
# to overwrite a slurm.conf it did not write, and does nothing when a cluster already answers `sinfo`.
set -euo pipefail

STATE=${EMGUARD_SLURM_DIR:-/tmp/emguard-slurm}
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
MARKER="# written by emguard scripts/slurm_cluster.sh"
PARTITION=debug

die() { echo "slurm_cluster: $*" >&2; exit 1; }
log() { echo "slurm_cluster: $*" >&2; }

need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root"; }

have_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null
}

install() {
    if have_packages; then log "packages already installed"; return 0; fi
    need_root install
    command -v apt-get >/dev/null || die "install: no apt-get (install slurmctld slurmd slurm-client munge by hand)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
    have_packages || die "install: packages installed but slurmctld/slurmd/sbatch/munged not on PATH"
}

alive() { [ -f "$STATE/$1.pid" ] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

write_conf() {
    local host cpus mem
    host=$(hostname -s)
    cpus=$(nproc)
    # what slurmd itself detects, less 10% so a job request never exceeds what the node reports
    mem=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    mem=$(( ${mem:-4096} * 9 / 10 ))
    if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
        die "start: $CONF exists and was not written by this script; not touching it"
    fi
    mkdir -p "$CONF_DIR" "$STATE/spool/ctld" "$STATE/spool/d" "$STATE/log"
    cat >"$CONF" <<EOF
$MARKER
ClusterName=emguard
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/slurmctld.daemon.pid
SlurmdPidFile=$STATE/slurmd.daemon.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldPort=${EMGUARD_SLURMCTLD_PORT:-6817}
SlurmdPort=${EMGUARD_SLURMD_PORT:-6818}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=3600
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$host CPUs=$cpus RealMemory=$mem Gres=gpu:fake:1 State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$host MaxTime=INFINITE State=UP
EOF
    cat >"$CONF_DIR/gres.conf" <<EOF
$MARKER
AutoDetect=off
NodeName=$host Name=gpu Type=fake File=/dev/null
EOF
}

start_munge() {
    if alive munged; then return 0; fi
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        log "a munged is already running (not ours); using it"
        return 0
    fi
    [ -f /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || /usr/sbin/create-munge-key -f; }
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 755 /run/munge
    # setpriv execs munged directly, so $! is munged itself
    setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged --foreground \
        >"$STATE/log/munged.out" 2>&1 &
    echo $! >"$STATE/munged.pid"
    for _ in $(seq 50); do
        munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "start: munged did not come up (see $STATE/log/munged.out)"
}

start() {
    have_packages || die "start: SLURM is not installed (run: $0 install)"
    need_root start
    mkdir -p "$STATE/log"
    if ! alive slurmctld && sinfo >/dev/null 2>&1; then
        log "a SLURM cluster already answers sinfo; not starting another"
        return 0
    fi
    write_conf
    start_munge
    if ! alive slurmctld; then
        slurmctld -D -c >"$STATE/log/slurmctld.out" 2>&1 &
        echo $! >"$STATE/slurmctld.pid"
    fi
    if ! alive slurmd; then
        slurmd -D >"$STATE/log/slurmd.out" 2>&1 &
        echo $! >"$STATE/slurmd.pid"
    fi
    # wait until the node is up and schedulable
    for _ in $(seq 120); do
        state=$(sinfo -h -p "$PARTITION" -o %t 2>/dev/null | head -1 || true)
        case "$state" in
            idle*|mix*|alloc*) log "up: partition $PARTITION, node $(hostname -s) ($state)"; return 0 ;;
            *drain*|*down*) scontrol update nodename="$(hostname -s)" state=resume 2>/dev/null || true ;;
        esac
        sleep 0.5
    done
    tail -n 20 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 2>/dev/null || true
    die "start: node did not become idle (logs in $STATE/log)"
}

stop_one() {
    local name=$1 pid
    [ -f "$STATE/$name.pid" ] || return 0
    pid=$(cat "$STATE/$name.pid")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
        log "stopped $name ($pid)"
    fi
    rm -f "$STATE/$name.pid"
}

stop() {
    # cancel what is still queued or running (jobs of any user: this cluster is ours)
    if alive slurmctld; then
        for p in $PARTITION gpu; do scancel --full --quiet "--partition=$p" 2>/dev/null || true; done
    fi
    stop_one slurmd
    stop_one slurmctld
    stop_one munged
}

status() {
    sinfo && squeue
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
