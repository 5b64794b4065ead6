#!/usr/bin/env bash
# A one-node SLURM cluster on this (Debian) machine, for CI and for trying the cluster paths:
#
#   scripts/slurm_cluster.sh start    # installs slurm-wlm + munge if missing, starts everything
#   scripts/slurm_cluster.sh status   # sinfo
#   scripts/slurm_cluster.sh stop     # kills the daemons, removes the config and state
#
# Runs as root (daemons, apt-get). No systemd and no cgroups needed: proctrack/linuxproc and
# task/none. Config, spool, state and logs live in $SLURM_CLUSTER_DIR (default
# /tmp/slurm-cluster); /etc/slurm/slurm.conf becomes a symlink to its slurm.conf so that sinfo,
# srun and sbatch find it without SLURM_CONF. An /etc/slurm/slurm.conf that is not ours is never
# touched: start refuses instead. Partition: `debug` (the default), every core of the machine.
set -euo pipefail

DIR="${SLURM_CLUSTER_DIR:-/tmp/slurm-cluster}"
CONF=/etc/slurm/slurm.conf
PARTITION=debug

log() { echo "slurm_cluster: $*" >&2; }
die() { echo "error: slurm_cluster: $*" >&2; exit 1; }

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v srun \
      >/dev/null && command -v munged >/dev/null; then
    return
  fi
  command -v apt-get >/dev/null || die "slurm-wlm and munge are missing and there is no apt-get."
  log "installing slurm-wlm and munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null
}

start_munge() {
  # Already running? (its pid file; pgrep may be missing on a minimal image)
  if [[ -s /run/munge/munged.pid ]] && kill -0 "$(cat /run/munge/munged.pid)" 2>/dev/null; then
    return
  fi
  mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
  [[ -s /etc/munge/munge.key ]] || mungekey -c -k /etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
  chmod 0400 /etc/munge/munge.key
  chmod 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged
}

write_conf() {
  local host cpus
  host="$(hostname)"
  cpus="$(nproc --all)"
  mkdir -p "$DIR/state" "$DIR/spool" /etc/slurm
  cat >"$DIR/slurm.conf" <<EOF
# Written by scripts/slurm_cluster.sh: a one-node cluster on $host.
ClusterName=research
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
# Requeue allowed (sbatch --requeue, scontrol requeue); a finished job's record stays 60 s.
JobRequeue=1
MinJobAge=60
# scancel and time limits: SIGTERM, then SIGKILL after KillWait seconds (time to checkpoint).
KillWait=30
SchedulerParameters=sched_interval=2
NodeName=$host CPUs=$cpus State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  if [[ -e $CONF || -L $CONF ]] && [[ "$(readlink -f "$CONF")" != "$DIR/slurm.conf" ]]; then
    die "$CONF exists and is not this script's; move it away to run a test cluster here."
  fi
  ln -sfn "$DIR/slurm.conf" "$CONF"
}

wait_idle() {
  local deadline=$((SECONDS + 60))
  until sinfo -h -N -o '%t' 2>/dev/null | grep -qx 'idle'; do
    if ((SECONDS > deadline)); then
      sinfo -N -l >&2 || true
      tail -n 20 "$DIR/slurmctld.log" "$DIR/slurmd.log" >&2 || true
      die "the node did not become idle within 60s (logs in $DIR)."
    fi
    sleep 0.5
  done
}

start() {
  [[ $(id -u) == 0 ]] || die "start needs root (it starts daemons and may apt-get install)."
  local t0=$SECONDS
  if sinfo -h -N -o '%t' 2>/dev/null | grep -qx 'idle\|mix\|alloc'; then
    log "already running:"
    sinfo
    return
  fi
  install_packages
  start_munge
  write_conf
  slurmctld -i
  slurmd
  wait_idle
  log "one-node cluster up in $((SECONDS - t0))s ($(nproc --all) CPUs, partition $PARTITION," \
    "state in $DIR)"
  sinfo
}

kill_pidfile() {
  local file="$1" pid
  [[ -s $file ]] || return 0
  pid="$(cat "$file")"
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
}

stop() {
  scancel --full --signal=KILL --user=root 2>/dev/null || true
  kill_pidfile "$DIR/slurmd.pid"
  kill_pidfile "$DIR/slurmctld.pid"
  # munged stays: other programs on the machine may use it, and restarting it is cheap.
  if [[ -L $CONF && "$(readlink -f "$CONF")" == "$DIR/slurm.conf" ]]; then
    rm -f "$CONF"
  fi
  rm -rf "$DIR"
  log "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) sinfo ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
