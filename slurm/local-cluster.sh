#!/usr/bin/env bash
# A real two-node SLURM cluster on this one machine (Debian's slurm-wlm; as root), to test and try the cluster
# features without a cluster: nodes n1 and n2, one CPU each, partition "debug", no accounting daemon.
#   slurm/local-cluster.sh up      install (apt) if needed, start munge + slurmctld + two slurmd; idempotent
#   slurm/local-cluster.sh down    cancel every job, stop the slurm daemons (and munged, if up started it)
#   slurm/local-cluster.sh status  sinfo + squeue
# State, logs and spool live in $CNNLAB_SLURM_DIR (default /tmp/cnnlab-slurm).
set -euo pipefail
DIR=${CNNLAB_SLURM_DIR:-/tmp/cnnlab-slurm}
CONF=/etc/slurm/slurm.conf
die() { echo "local-cluster: $*" >&2; exit 1; }

write_conf() {
  local host cpus=${CNNLAB_SLURM_CPUS:-1}
  host=$(hostname -s)
  mkdir -p /etc/slurm "$DIR/state"
  cat > "$DIR/slurm.conf.new" <<CONF
# written by cnnlab slurm/local-cluster.sh: two nodes on one host ($host)
ClusterName=cnnlab
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobRequeue=1
ReturnToService=2
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
StateSaveLocation=$DIR/state
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdSpoolDir=$DIR/spool-%n
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmdLogFile=$DIR/slurmd-%n.log
NodeName=n1 NodeHostname=$host NodeAddr=127.0.0.1 Port=17001 CPUs=$cpus RealMemory=4000 State=UNKNOWN
NodeName=n2 NodeHostname=$host NodeAddr=127.0.0.1 Port=17002 CPUs=$cpus RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP
CONF
  if ! cmp -s "$DIR/slurm.conf.new" "$CONF"; then
    mv "$DIR/slurm.conf.new" "$CONF"
    return 0  # changed: daemons must (re)start
  fi
  return 1
}

up() {
  [ "$(id -u)" = 0 ] || die "needs root (it installs packages and starts daemons as root); you are $(id -un)"
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || die "slurmctld/munged not found and no apt-get to install them"
    echo "local-cluster: installing slurmctld slurmd slurm-client munge (apt)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
  fi
  [ -s /etc/munge/munge.key ] || mungekey -c -k /etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge && chown munge:munge /run/munge
  mkdir -p "$DIR"
  pgrep -x munged >/dev/null || { runuser -u munge -- munged && touch "$DIR/munged.ours"; }  # down stops only ours
  if write_conf; then down_daemons; fi
  pgrep -x slurmctld >/dev/null || slurmctld
  for n in n1 n2; do pgrep -f "slurmd -N $n" >/dev/null || slurmd -N "$n"; done
  for _ in $(seq 60); do
    if [ "$(sinfo -h -o '%D %t' 2>/dev/null | awk '$2 ~ /^(idle|mix|alloc)$/ {s += $1} END {print s + 0}')" = 2 ]; then
      sinfo; return 0
    fi
    # a node left down or drained by an earlier unclean stop comes back
    scontrol update nodename=n[1-2] state=resume >/dev/null 2>&1 || true
    sleep 1
  done
  sinfo || true
  die "the two nodes did not become idle within 60 s; logs in $DIR"
}

down_daemons() {
  pkill -x slurmd 2>/dev/null || true
  pkill -x slurmctld 2>/dev/null || true
  for _ in $(seq 20); do pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || return 0; sleep 0.5; done
}

case "${1:-}" in
  up) up ;;
  down) scancel --user="$(id -un)" 2>/dev/null || true; down_daemons
        if [ -e "$DIR/munged.ours" ]; then pkill -x munged 2>/dev/null || true; rm -f "$DIR/munged.ours"; fi ;;
  status) sinfo; squeue ;;
  *) die "usage: $0 up|down|status" ;;
esac
