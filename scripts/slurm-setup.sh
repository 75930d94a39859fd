#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for tests: Debian's slurm-wlm
# (slurmctld + slurmd 22.05) and a private munged, all on loopback, everything
# (config, state, spool, logs, pid files, munge key and socket) under
#
#   ${RAZOR_SLURM_DIR:-/tmp/razor-slurm}
#
# Usage:
#   scripts/slurm-setup.sh [start]   install if needed, start (or keep) the cluster, wait until the
#                                    node is up; the last line of stdout is `export SLURM_CONF=...`
#   scripts/slurm-setup.sh status    exit 0 (and print the export line) if the cluster is running
#   scripts/slurm-setup.sh stop      cancel its jobs, stop the slurmd, slurmctld and munged it started
#
# So a shell or a test can do:
#
#   eval "$(scripts/slurm-setup.sh | tail -1)" && sinfo
#
# Progress and errors go to stderr. Idempotent: when the daemons it started are running with the
# same configuration, start only waits for the node and prints the line again; two concurrent
# starts are serialized by a lock file. Needs root (apt-get, slurmd).
#
# The cluster: ClusterName=razor; one node, this host (`hostname -s`, NodeAddr 127.0.0.1) with
# CPUs=$(nproc) and a RealMemory a bit below the machine's; partition `debug` (the default).
# No cgroups (proctrack/linuxproc, task/none), no accounting (sacct does not work: use
# `scontrol show job`). CPUs are the consumable resource (CR_CPU) and memory is not, so two 1-CPU
# jobs run side by side. A requeued job may start again after AuthInfo's cred_expire (SLURM's
# default is 120 s, here RAZOR_SLURM_CRED_EXPIRE, 10 s by default).
#
# Environment:
#   RAZOR_SLURM_DIR          where everything lives (default /tmp/razor-slurm)
#   RAZOR_SLURM_WAIT         seconds to wait for each daemon and for the node (default 60)
#   RAZOR_SLURM_CRED_EXPIRE  AuthInfo cred_expire in seconds (default 10)
set -euo pipefail

DIR="${RAZOR_SLURM_DIR:-/tmp/razor-slurm}"
WAIT="${RAZOR_SLURM_WAIT:-60}"
CRED_EXPIRE="${RAZOR_SLURM_CRED_EXPIRE:-10}"

CONF="$DIR/etc/slurm.conf"
MUNGE_DIR="$DIR/munge"
MUNGE_KEY="$MUNGE_DIR/munge.key"
MUNGE_SOCKET="$MUNGE_DIR/munge.socket.2"
MUNGE_PID="$MUNGE_DIR/munged.pid"
RUN_DIR="$DIR/run"
LOG_DIR="$DIR/log"
CTLD_PID="$RUN_DIR/slurmctld.pid"
ADDR=127.0.0.1
NODE="$(hostname -s)"
SLURMD_PID="$RUN_DIR/slurmd-$NODE.pid"
SLURMD_LOG="$LOG_DIR/slurmd-$NODE.log"
CTLD_LOG="$LOG_DIR/slurmctld.log"

log() { echo "slurm-setup: $*" >&2; }
die() { echo "slurm-setup: error: $*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; }

# Show the end of a log file on stderr (when something fails).
show_log() {
  local f="$1"
  if [[ -s "$f" ]]; then
    echo "---- last lines of $f ----" >&2
    tail -n 25 "$f" >&2
    echo "----" >&2
  fi
}

# pid_of PIDFILE NAME: the pid in PIDFILE if that process is alive and is NAME (its comm).
pid_of() {
  local file="$1" name="$2" pid comm
  [[ -r "$file" ]] || return 1
  pid="$(tr -dc '0-9' <"$file")"
  [[ -n "$pid" && -r "/proc/$pid/comm" ]] || return 1
  comm="$(cat "/proc/$pid/comm" 2>/dev/null)" || return 1
  [[ "$comm" == "$name"* ]] || return 1
  echo "$pid"
}

# stop_pid PIDFILE NAME: SIGTERM, then SIGKILL after 15 s.
stop_pid() {
  local file="$1" name="$2" pid i
  if pid="$(pid_of "$file" "$name")"; then
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
      [[ -d "/proc/$pid" ]] || break
      sleep 0.1
    done
    if [[ -d "/proc/$pid" ]]; then
      log "$name (pid $pid) still running after 15 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$file"
}

port_free() { [[ -z "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]]; }

# first_free_port START [EXCEPT]: the first port >= START that nothing listens on (and != EXCEPT).
first_free_port() {
  local p="$1" except="${2:-0}"
  while ((p < 65000)); do
    if ((p != except)) && port_free "$p"; then
      echo "$p"
      return 0
    fi
    ((p++))
  done
  die "no free port from $1"
}

conf_value() { sed -n "s/^$1=//p" "$CONF" 2>/dev/null | head -1; }

export_line() { echo "export SLURM_CONF=$CONF"; }

# ---- packages ----------------------------------------------------------------
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

install_packages() {
  local need=() p
  for p in slurm-wlm munge; do
    installed "$p" || need+=("$p")
  done
  ((${#need[@]})) || return 0
  ((EUID == 0)) || die "packages missing (${need[*]}) and not root: apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  log "installing ${need[*]} (apt-get)"
  # apt-get update only when the package lists are missing or too old to install from.
  if [[ -z "$(ls /var/lib/apt/lists/ 2>/dev/null | grep -v -e '^lock$' -e '^partial$' -e '^auxfiles$')" ]] ||
     ! apt-get install -y --no-install-recommends "${need[@]}" >&2; then
    log "apt-get update"
    apt-get update >&2
    apt-get install -y --no-install-recommends "${need[@]}" >&2
  fi
  for p in slurmctld slurmd sinfo scontrol sbatch munged; do
    command -v "$p" >/dev/null || die "$p not found after installing ${need[*]}"
  done
}

# ---- munge -------------------------------------------------------------------
munge_key() {
  [[ -s "$MUNGE_KEY" ]] && return 0
  log "writing a munge key: $MUNGE_KEY"
  rm -f "$MUNGE_KEY"
  if command -v mungekey >/dev/null; then
    mungekey --create --keyfile="$MUNGE_KEY" >&2
  else
    (umask 077 && dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none)
  fi
  chmod 0600 "$MUNGE_KEY"
}

start_munged() {
  if pid_of "$MUNGE_PID" munged >/dev/null && [[ -S "$MUNGE_SOCKET" ]]; then
    return 0
  fi
  rm -f "$MUNGE_PID"
  log "starting munged (socket $MUNGE_SOCKET)"
  # --force: the razor dir may sit under a world-writable /tmp.
  if ! munged --force --key-file="$MUNGE_KEY" --socket="$MUNGE_SOCKET" --pid-file="$MUNGE_PID" \
       --log-file="$LOG_DIR/munged.log" --seed-file="$MUNGE_DIR/munged.seed" \
       </dev/null >>"$LOG_DIR/munged.log" 2>&1 9>&-; then
    show_log "$LOG_DIR/munged.log"
    die "munged did not start"
  fi
  local i
  for ((i = 0; i < WAIT * 10; i++)); do
    if [[ -S "$MUNGE_SOCKET" ]] && munge -n --socket="$MUNGE_SOCKET" 2>/dev/null |
       unmunge --socket="$MUNGE_SOCKET" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  show_log "$LOG_DIR/munged.log"
  die "munged not answering on $MUNGE_SOCKET after ${WAIT}s"
}

# ---- slurm.conf --------------------------------------------------------------
# write_conf FILE CTLD_PORT SLURMD_PORT
write_conf() {
  local file="$1" ctld_port="$2" slurmd_port="$3" cpus mem_mb real_mb
  cpus="$(nproc)"
  mem_mb=$(($(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo) / 1024))
  # A bit below what slurmd measures: a node with more RealMemory than it has is drained.
  real_mb=$((mem_mb * 95 / 100))
  ((real_mb > 0)) || real_mb=1
  cat >"$file" <<EOF
# Written by scripts/slurm-setup.sh: a one-node test cluster on loopback. Do not edit, it is
# rewritten (and the daemons restarted) whenever what the script would write differs.
ClusterName=razor
SlurmctldHost=$NODE($ADDR)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=$CRED_EXPIRE
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$RUN_DIR/slurmd-%n.pid
SlurmctldLogFile=$CTLD_LOG
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups (a container may have none to give).
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# Accounting off: sacct does not work here, scontrol show job does (MinJobAge keeps finished
# jobs for 5 minutes).
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# CPUs are consumable, memory is not: two 1-CPU jobs share the node.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
PreemptType=preempt/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=300
JobRequeue=1
MailProg=/bin/true
NodeName=$NODE NodeAddr=$ADDR NodeHostname=$NODE CPUs=$cpus RealMemory=$real_mb State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

# ---- daemons -----------------------------------------------------------------
running() {
  pid_of "$CTLD_PID" slurmctld >/dev/null && pid_of "$SLURMD_PID" slurmd >/dev/null &&
    pid_of "$MUNGE_PID" munged >/dev/null
}

stop_slurm() {
  if pid_of "$CTLD_PID" slurmctld >/dev/null; then
    # Cancel what is left so no job step outlives the cluster.
    local jobs
    jobs="$(SLURM_CONF="$CONF" timeout 10 squeue -h -o %i 2>/dev/null | tr '\n' ' ')" || true
    if [[ -n "${jobs// /}" ]]; then
      log "cancelling jobs: $jobs"
      # shellcheck disable=SC2086
      SLURM_CONF="$CONF" timeout 10 scancel $jobs 2>/dev/null || true
      local i
      for ((i = 0; i < 100; i++)); do
        [[ -z "$(SLURM_CONF="$CONF" timeout 5 squeue -h -t R,CG -o %i 2>/dev/null)" ]] && break
        sleep 0.1
      done
    fi
  fi
  stop_pid "$SLURMD_PID" slurmd
  stop_pid "$CTLD_PID" slurmctld
}

wait_ctld() {
  local i
  for ((i = 0; i < WAIT * 10; i++)); do
    pid_of "$CTLD_PID" slurmctld >/dev/null && SLURM_CONF="$CONF" timeout 5 scontrol ping 2>/dev/null |
      grep -q 'is UP' && return 0
    sleep 0.1
  done
  show_log "$CTLD_LOG"
  die "slurmctld not up after ${WAIT}s (log: $CTLD_LOG)"
}

node_state() { SLURM_CONF="$CONF" timeout 5 sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -1; }

wait_node() {
  local i state="" resumed=0
  for ((i = 0; i < WAIT * 5; i++)); do
    state="$(node_state)" || state=""
    case "$state" in
      idle | mixed | allocated | completing) return 0 ;;
      drained | draining | down | fail | failing)
        # Left over in the saved state (ReturnToService=2 brings back DOWN nodes, not drained ones).
        if ((!resumed)) && pid_of "$SLURMD_PID" slurmd >/dev/null; then
          log "node $NODE is $state: resuming it"
          SLURM_CONF="$CONF" scontrol update NodeName="$NODE" State=RESUME >&2 || true
          resumed=1
        fi ;;
    esac
    sleep 0.2
  done
  show_log "$CTLD_LOG"
  show_log "$SLURMD_LOG"
  die "node $NODE not up after ${WAIT}s (state '${state}'; logs in $LOG_DIR)"
}

start() {
  install_packages
  ((EUID == 0)) || die "needs root: slurmd runs jobs as their users, and the daemons here run as root"
  umask 022
  # spool/<node>: SlurmdSpoolDir=spool/%n, which slurmd does not create.
  mkdir -p "$DIR" "$DIR/etc" "$DIR/state" "$DIR/spool/$NODE" "$RUN_DIR" "$LOG_DIR" "$MUNGE_DIR"
  chmod 0755 "$DIR" "$MUNGE_DIR"
  exec 9>"$DIR/.lock"
  flock -w 300 9 || die "another slurm-setup.sh holds $DIR/.lock"

  munge_key
  start_munged

  # The ports: those of the running cluster, else 6817/6818 or the next free ones.
  local ctld_port slurmd_port new="$DIR/etc/slurm.conf.new"
  if running && [[ -r "$CONF" ]]; then
    ctld_port="$(conf_value SlurmctldPort)"
    slurmd_port="$(conf_value SlurmdPort)"
  else
    stop_slurm
    ctld_port="$(first_free_port 6817)"
    slurmd_port="$(first_free_port 6818 "$ctld_port")"
  fi
  write_conf "$new" "$ctld_port" "$slurmd_port"
  if running && cmp -s "$new" "$CONF"; then
    rm -f "$new"
    log "already running (slurmctld :$ctld_port, slurmd :$slurmd_port)"
  else
    if running; then
      log "configuration changed: restarting"
      stop_slurm
    fi
    mv -f "$new" "$CONF"
    export SLURM_CONF="$CONF"
    log "starting slurmctld on $ADDR:$ctld_port (log $CTLD_LOG)"
    # -c: a fresh start forgets the jobs of an earlier run (their processes are gone).
    if ! slurmctld -c -f "$CONF" </dev/null >>"$CTLD_LOG" 2>&1 9>&-; then
      show_log "$CTLD_LOG"
      die "slurmctld failed to start"
    fi
    wait_ctld
    log "starting slurmd for node $NODE on :$slurmd_port (log $SLURMD_LOG)"
    if ! slurmd -f "$CONF" -N "$NODE" </dev/null >>"$SLURMD_LOG" 2>&1 9>&-; then
      show_log "$SLURMD_LOG"
      die "slurmd failed to start"
    fi
  fi
  wait_node
  log "node $NODE is $(node_state)"
  export_line
}

status() {
  if running && SLURM_CONF="$CONF" timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP'; then
    log "running: node $NODE is $(node_state)"
    export_line
    return 0
  fi
  log "not running"
  return 1
}

stop() {
  if [[ -d "$DIR" ]]; then
    exec 9>"$DIR/.lock"
    flock -w 300 9 || die "another slurm-setup.sh holds $DIR/.lock"
  fi
  stop_slurm
  stop_pid "$MUNGE_PID" munged
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  -h | --help | help) usage ;;
  *) usage; exit 2 ;;
esac
