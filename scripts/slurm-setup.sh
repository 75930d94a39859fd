#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for tests: Debian's slurm-wlm
# (slurmctld + slurmd 22.05) and a private munged, all on loopback, everything
# (config, state, spool, logs, pid files, munge key and socket) under
#
#   ${RAZOR_SLURM_DIR:-/tmp/razor-slurm}
#
# With RAZOR_SLURM_NODES=2 (up to 9), a separate multi-node cluster instead (see below), under
# ${RAZOR_SLURM_DIR:-/tmp/razor-slurm2}: its own munged, ports, ClusterName and state.
#
# Usage:
#   scripts/slurm-setup.sh [start]   install if needed, start (or keep) the cluster, wait until the
#                                    nodes are up; the last line of stdout is `export SLURM_CONF=...`
#   scripts/slurm-setup.sh status    exit 0 (and print the export line) if the cluster is running
#   scripts/slurm-setup.sh stop      cancel its jobs, stop the slurmd, slurmctld and munged it started
#                                    (and remove its network namespaces and links)
#
# So a shell or a test can do:
#
#   eval "$(scripts/slurm-setup.sh | tail -1)" && sinfo
#   eval "$(RAZOR_SLURM_NODES=2 scripts/slurm-setup.sh | tail -1)" && sinfo   # node1, node2
#
# Progress and errors go to stderr. Idempotent: when the daemons it started are running with the
# same configuration, start only waits for the node and prints the line again; two concurrent
# starts are serialized by a lock file. Needs root (apt-get, slurmd).
#
# The cluster: ClusterName=razor; one node, this host (`hostname -s`, NodeAddr 127.0.0.1) with
# CPUs=$(nproc) and a RealMemory a bit below the machine's; partition `debug` (the default).
# No cgroups (proctrack/linuxproc, task/none), no accounting (sacct does not work: use
# `scontrol show job`, which forgets a job MinJobAge after it ended: RAZOR_SLURM_MIN_JOB_AGE,
# 30 s by default, so that the tests see razorctl answer for jobs slurmctld no longer knows; the
# purge itself runs once a minute, so a job is gone 30 to 90 s after it ended). CPUs are the consumable resource (CR_CPU) and memory is not, so two 1-CPU
# jobs run side by side. A requeued job may start again after AuthInfo's cred_expire (SLURM's
# default is 120 s, here RAZOR_SLURM_CRED_EXPIRE, 10 s by default).
#
# The multi-node cluster (RAZOR_SLURM_NODES=N, N >= 2): ClusterName=razorN, nodes node1..nodeN in
# partition `debug`, each a slurmd in its own network namespace (razor-node1 ...) and UTS namespace
# (its hostname is node1 ...), with its own address on a private subnet: a bridge in a namespace of
# its own (razor-switch, out of reach of the host's firewall) joins eth0 of every node and a veth on
# the host, razor-host, where slurmctld listens:
#
#   host: razor-host 10.77.0.1/24 (slurmctld)    node1: eth0 10.77.0.11    node2: eth0 10.77.0.12
#
# /etc/netns/razor-nodeK/hosts (which `ip netns exec` shows as /etc/hosts) names the nodes, so
# node1 resolves to its address on every node, as on a real cluster; slurmctld reaches the nodes by
# NodeAddr, so the host's /etc/hosts is not touched. Nothing else on the host changes (no route but
# the subnet's, no sysctl, no firewall rule). One multi-node cluster per machine: the names are
# fixed. Exit code 3 when this machine cannot make network namespaces (no CAP_SYS_ADMIN/NET_ADMIN).
#
# Environment:
#   RAZOR_SLURM_DIR          where everything lives (default /tmp/razor-slurm, /tmp/razor-slurmN)
#   RAZOR_SLURM_NODES        1 (default): this host on loopback; 2-9: nodes in network namespaces
#   RAZOR_SLURM_NET          the multi-node cluster's /24, its first three numbers (default 10.77.0)
#   RAZOR_SLURM_HOLDER       a process id: start records it as a user of the cluster, stop then only
#                            removes it, and stops the cluster when no other live user is left
#   RAZOR_SLURM_WAIT         seconds to wait for each daemon and for the nodes (default 60)
#   RAZOR_SLURM_CRED_EXPIRE  AuthInfo cred_expire in seconds (default 10)
#   RAZOR_SLURM_MIN_JOB_AGE  MinJobAge in seconds (default 30; SLURM's own default is 300)
set -euo pipefail

NODES="${RAZOR_SLURM_NODES:-1}"
if [[ ! "$NODES" =~ ^[1-9]$ ]]; then
  echo "slurm-setup: error: RAZOR_SLURM_NODES must be 1 to 9 (got '$NODES')" >&2
  exit 2
fi
if ((NODES == 1)); then
  DIR="${RAZOR_SLURM_DIR:-/tmp/razor-slurm}"
else
  DIR="${RAZOR_SLURM_DIR:-/tmp/razor-slurm$NODES}"
fi
WAIT="${RAZOR_SLURM_WAIT:-60}"
CRED_EXPIRE="${RAZOR_SLURM_CRED_EXPIRE:-10}"
MIN_JOB_AGE="${RAZOR_SLURM_MIN_JOB_AGE:-30}"
if [[ ! "$MIN_JOB_AGE" =~ ^[0-9]+$ ]]; then
  echo "slurm-setup: error: RAZOR_SLURM_MIN_JOB_AGE must be a number of seconds (got '$MIN_JOB_AGE')" >&2
  exit 2
fi
HOLDER="${RAZOR_SLURM_HOLDER:-}"

CONF="$DIR/etc/slurm.conf"
MUNGE_DIR="$DIR/munge"
MUNGE_KEY="$MUNGE_DIR/munge.key"
MUNGE_SOCKET="$MUNGE_DIR/munge.socket.2"
MUNGE_PID="$MUNGE_DIR/munged.pid"
RUN_DIR="$DIR/run"
LOG_DIR="$DIR/log"
CTLD_PID="$RUN_DIR/slurmctld.pid"
CTLD_LOG="$LOG_DIR/slurmctld.log"
HOLDERS="$DIR/holders"
HOST="$(hostname -s)"
# NODE_NAMES[i], NODE_ADDRS[i]: the nodes; ADDR: slurmctld's address.
if ((NODES == 1)); then
  CLUSTER=razor
  ADDR=127.0.0.1
  NODE_NAMES=("$HOST")
  NODE_ADDRS=("$ADDR")
  PORT_BASE=6817
else
  CLUSTER="razor$NODES"
  NET="${RAZOR_SLURM_NET:-10.77.0}"
  case "$NET" in
    10.*.* | 192.168.* | 172.1[6-9].* | 172.2[0-9].* | 172.3[01].*) private=1 ;;
    *) private=0 ;;
  esac
  if ((!private)) || [[ ! "$NET" =~ ^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$ ]]; then
    echo "slurm-setup: error: RAZOR_SLURM_NET must be a private /24 like 10.77.0 (got '$NET')" >&2
    exit 2
  fi
  ADDR="$NET.1"
  NODE_NAMES=()
  NODE_ADDRS=()
  for ((k = 1; k <= NODES; k++)); do
    NODE_NAMES+=("node$k")
    NODE_ADDRS+=("$NET.$((10 + k))")
  done
  PORT_BASE=6827   # away from the one-node cluster's 6817/6818
  SWITCH_NS=razor-switch   # holds the bridge br0
  NETNS_DIR=/var/run/netns # where `ip netns add` mounts them
  HOST_IF=razor-host       # the host's end of its veth to the bridge
  NETNS_MARK="$RUN_DIR/netns"   # written before the namespaces are made: they are this cluster's
fi
# The namespace of node NAME (multi-node only).
node_ns() { echo "razor-$1"; }
slurmd_pid() { echo "$RUN_DIR/slurmd-$1.pid"; }
slurmd_log() { echo "$LOG_DIR/slurmd-$1.log"; }

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
  local need=() p pkgs=(slurm-wlm munge) cmds=(slurmctld slurmd sinfo scontrol sbatch munged)
  if ((NODES > 1)); then
    pkgs+=(iproute2)   # ip netns, ip link (veth, bridge)
    cmds+=(ip nsenter unshare)
  fi
  for p in "${pkgs[@]}"; do
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
  for p in "${cmds[@]}"; do
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
  local file="$1" ctld_port="$2" slurmd_port="$3" cpus mem_mb real_mb what k
  cpus="$(nproc)"
  mem_mb=$(($(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo) / 1024))
  # A bit below what slurmd measures: a node with more RealMemory than it has is drained.
  real_mb=$((mem_mb * 95 / 100))
  ((real_mb > 0)) || real_mb=1
  what="a one-node test cluster on loopback"
  ((NODES == 1)) || what="a $NODES-node test cluster, one network namespace per node"
  {
  cat <<EOF
# Written by scripts/slurm-setup.sh: $what. Do not edit, it is
# rewritten (and the daemons restarted) whenever what the script would write differs.
ClusterName=$CLUSTER
SlurmctldHost=$HOST($ADDR)
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
# jobs for a while: razorctl then reads the record its submit wrote).
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
MinJobAge=$MIN_JOB_AGE
JobRequeue=1
MailProg=/bin/true
EOF
  for k in "${!NODE_NAMES[@]}"; do
    echo "NodeName=${NODE_NAMES[k]} NodeAddr=${NODE_ADDRS[k]} NodeHostname=${NODE_NAMES[k]}" \
      "CPUs=$cpus RealMemory=$real_mb State=UNKNOWN"
  done
  echo "PartitionName=debug Nodes=$(IFS=,; echo "${NODE_NAMES[*]}") Default=YES MaxTime=INFINITE State=UP"
  } >"$file"
}

# ---- network (multi-node only) ----------------------------------------------
ns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qx -- "$1"; }

# /etc/hosts as the nodes see it: the nodes' names, and this host's name for slurmctld.
hosts_file() {
  local k
  echo "127.0.0.1 localhost"
  echo "::1 localhost ip6-localhost ip6-loopback"
  echo "$ADDR $HOST"
  for k in "${!NODE_NAMES[@]}"; do
    echo "${NODE_ADDRS[k]} ${NODE_NAMES[k]}"
  done
}

# Whether the namespaces, the links and the addresses are all there, as net_up makes them.
net_ok() {
  local k ns
  [[ -r "$NETNS_MARK" ]] && ns_exists "$SWITCH_NS" || return 1
  ip -4 -o addr show dev "$HOST_IF" 2>/dev/null | grep -q " $ADDR/24 " || return 1
  for k in "${!NODE_NAMES[@]}"; do
    ns="$(node_ns "${NODE_NAMES[k]}")"
    ns_exists "$ns" && cmp -s <(hosts_file) "/etc/netns/$ns/hosts" || return 1
    ip -n "$ns" -4 -o addr show dev eth0 2>/dev/null | grep -q " ${NODE_ADDRS[k]}/24 " || return 1
  done
}

# Remove the namespaces named in NETNS_MARK (those net_up made), their /etc/netns files and
# the host's veth. Processes still in a node's namespace (job steps that outlived slurmd) are
# this cluster's: they are ended first.
net_down() {
  [[ -r "$NETNS_MARK" ]] || return 0
  local ns pid i
  while read -r ns; do
    [[ "$ns" == razor-* ]] || continue
    if ns_exists "$ns"; then
      pid="$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')"
      if [[ -n "${pid// /}" ]]; then
        log "ending processes left in $ns: $pid"
        # shellcheck disable=SC2086
        kill -TERM $pid 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
          [[ -z "$(ip netns pids "$ns" 2>/dev/null)" ]] && break
          sleep 0.1
        done
        # shellcheck disable=SC2046
        kill -KILL $(ip netns pids "$ns" 2>/dev/null) 2>/dev/null || true
      fi
      log "removing network namespace $ns"
      ip netns del "$ns"
    fi
    rm -rf "/etc/netns/$ns"
  done <"$NETNS_MARK"
  rmdir /etc/netns 2>/dev/null || true
  # The veths go with their namespaces, the host's end too, a moment later (the kernel cleans
  # up a namespace asynchronously): wait, so that a start right after can make them again.
  ip link del "$HOST_IF" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    ip link show "$HOST_IF" >/dev/null 2>&1 || break
    sleep 0.1
  done
  rm -f "$NETNS_MARK"
}

# The namespaces, the bridge, the veths, the addresses and /etc/netns/<ns>/hosts, from scratch
# unless all are there already.
net_up() {
  local k name ns err
  net_ok && return 0
  if ns_exists "$SWITCH_NS" && [[ ! -r "$NETNS_MARK" ]]; then
    die "the network namespace $SWITCH_NS exists but this cluster ($DIR) did not make it: another" \
        "multi-node cluster of slurm-setup.sh? Stop that one first (its RAZOR_SLURM_DIR, then stop)"
  fi
  net_down
  # The subnet must be free: an address or a route in it (other than the default route) is
  # someone else's.
  if [[ -n "$(ip -4 -o addr show to "$NET.0/24")" ||
        -n "$(ip -4 route show to match "$ADDR" | grep -v '^default')" ]]; then
    die "$NET.0/24 is in use on this host (ip addr / ip route): set RAZOR_SLURM_NET to a free" \
        "private /24, e.g. RAZOR_SLURM_NET=10.78.0"
  fi
  mkdir -p "$RUN_DIR"
  { echo "$SWITCH_NS"; for name in "${NODE_NAMES[@]}"; do node_ns "$name"; done; } >"$NETNS_MARK"
  log "network: bridge in namespace $SWITCH_NS, host $HOST_IF $ADDR/24," \
      "$(for k in "${!NODE_NAMES[@]}"; do printf '%s ' "${NODE_NAMES[k]}=${NODE_ADDRS[k]}"; done)"
  if ! err="$(ip netns add "$SWITCH_NS" 2>&1)"; then
    rm -f "$NETNS_MARK"
    echo "slurm-setup: error: cannot make a network namespace on this machine ($err):" \
         "the multi-node cluster needs CAP_SYS_ADMIN and CAP_NET_ADMIN" >&2
    exit 3
  fi
  ip -n "$SWITCH_NS" link set lo up
  ip -n "$SWITCH_NS" link add br0 type bridge
  ip -n "$SWITCH_NS" link set br0 up
  ip link add "$HOST_IF" type veth peer name host netns "$SWITCH_NS"
  ip -n "$SWITCH_NS" link set host master br0 up
  ip addr add "$ADDR/24" dev "$HOST_IF"
  ip link set "$HOST_IF" up
  for k in "${!NODE_NAMES[@]}"; do
    name="${NODE_NAMES[k]}"
    ns="$(node_ns "$name")"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$SWITCH_NS" link add "$name" type veth peer name eth0 netns "$ns"
    ip -n "$SWITCH_NS" link set "$name" master br0 up
    ip -n "$ns" addr add "${NODE_ADDRS[k]}/24" dev eth0
    ip -n "$ns" link set eth0 up
    # The node's /etc/hosts (start_slurmd mounts it, as `ip netns exec` would by hand).
    mkdir -p "/etc/netns/$ns"
    hosts_file >"/etc/netns/$ns/hosts"
  done
  net_ok || die "the network did not come up as expected (ip netns list; ip -n razor-node1 addr)"
}

# ---- users of the cluster (RAZOR_SLURM_HOLDER) ---------------------------------
# A holder's file is named by its pid and holds the process's start time (pids are reused).
proc_start() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20; }

hold() {
  [[ -n "$HOLDER" ]] || return 0
  [[ "$HOLDER" =~ ^[0-9]+$ && -d "/proc/$HOLDER" ]] || die "RAZOR_SLURM_HOLDER=$HOLDER is not a running process"
  mkdir -p "$HOLDERS"
  proc_start "$HOLDER" >"$HOLDERS/$HOLDER"
}

# Forget HOLDER (and holders that have exited); true, with a note, if a live one is left.
others_hold() {
  local f pid left=()
  rm -f "$HOLDERS/$HOLDER"
  for f in "$HOLDERS"/*; do
    [[ -f "$f" ]] || continue
    pid="${f##*/}"
    if [[ -n "$(proc_start "$pid")" && "$(proc_start "$pid")" == "$(cat "$f")" ]]; then
      left+=("$pid")
    else
      rm -f "$f"
    fi
  done
  ((${#left[@]})) || return 1
  log "still used by process(es) ${left[*]}: left running"
}

# ---- daemons -----------------------------------------------------------------
running() {
  local name
  pid_of "$CTLD_PID" slurmctld >/dev/null && pid_of "$MUNGE_PID" munged >/dev/null || return 1
  for name in "${NODE_NAMES[@]}"; do
    pid_of "$(slurmd_pid "$name")" slurmd >/dev/null || return 1
  done
  ((NODES == 1)) || net_ok
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
  local f
  for f in "$RUN_DIR"/slurmd-*.pid; do
    [[ -e "$f" ]] && stop_pid "$f" slurmd
  done
  stop_pid "$CTLD_PID" slurmctld
}

start_slurmd() {
  local name="$1" slurmd_log
  slurmd_log="$(slurmd_log "$name")"
  if ((NODES == 1)); then
    slurmd -f "$CONF" -N "$name" </dev/null >>"$slurmd_log" 2>&1 9>&-
  else
    # In the node's network namespace, with a UTS and a mount namespace of its own: `hostname` in
    # the node's jobs is the node's name, and /etc/hosts the node's, where that name resolves to
    # the node's address, as on a real cluster (gloo finds the address to use from the hostname).
    # Not `ip netns exec`: it mounts a new /sys, without the host's /sys/fs/cgroup, and slurmd
    # needs that. Mounts propagate from the host (slave), not back (the /etc/hosts bind).
    local ns
    ns="$(node_ns "$name")"
    nsenter --net="$NETNS_DIR/$ns" unshare --mount --propagation slave --uts sh -c \
      'mount --bind "$3" /etc/hosts && echo "$1" >/proc/sys/kernel/hostname && exec slurmd -f "$2" -N "$1"' \
      sh "$name" "$CONF" "/etc/netns/$ns/hosts" </dev/null >>"$slurmd_log" 2>&1 9>&-
  fi || {
    show_log "$slurmd_log"
    die "slurmd for node $name failed to start"
  }
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

node_state() { SLURM_CONF="$CONF" timeout 5 sinfo -h -N -n "$1" -o %T 2>/dev/null | head -1; }

node_states() {
  local name out=()
  for name in "${NODE_NAMES[@]}"; do
    out+=("$name $(node_state "$name")")
  done
  (IFS=,; echo "${out[*]}" | sed 's/,/, /g')
}

wait_nodes() {
  local i name state="" waiting
  local -A resumed=()
  for ((i = 0; i < WAIT * 5; i++)); do
    waiting=""
    for name in "${NODE_NAMES[@]}"; do
      state="$(node_state "$name")" || state=""
      case "$state" in
        idle | mixed | allocated | completing) continue ;;
        drained | draining | down | fail | failing)
          # Left over in the saved state (ReturnToService=2 brings back DOWN nodes, not drained ones).
          if [[ -z "${resumed[$name]:-}" ]] && pid_of "$(slurmd_pid "$name")" slurmd >/dev/null; then
            log "node $name is $state: resuming it"
            SLURM_CONF="$CONF" scontrol update NodeName="$name" State=RESUME >&2 || true
            resumed[$name]=1
          fi ;;
      esac
      waiting="$name"
      break
    done
    [[ -n "$waiting" ]] || return 0
    sleep 0.2
  done
  show_log "$CTLD_LOG"
  show_log "$(slurmd_log "$waiting")"
  die "node $waiting not up after ${WAIT}s (state '${state}'; logs in $LOG_DIR)"
}

start() {
  install_packages
  ((EUID == 0)) || die "needs root: slurmd runs jobs as their users, and the daemons here run as root"
  umask 022
  mkdir -p "$DIR" "$DIR/etc" "$DIR/state" "$RUN_DIR" "$LOG_DIR" "$MUNGE_DIR"
  local name
  for name in "${NODE_NAMES[@]}"; do
    # SlurmdSpoolDir=spool/%n, which slurmd does not create.
    mkdir -p "$DIR/spool/$name"
  done
  chmod 0755 "$DIR" "$MUNGE_DIR"
  exec 9>"$DIR/.lock"
  flock -w 300 9 || die "another slurm-setup.sh holds $DIR/.lock"
  if [[ -r "$CONF" && "$(conf_value ClusterName)" != "$CLUSTER" ]]; then
    die "$DIR holds the cluster '$(conf_value ClusterName)', not '$CLUSTER' (RAZOR_SLURM_NODES=$NODES):" \
        "use another RAZOR_SLURM_DIR"
  fi

  munge_key
  start_munged

  # The ports: those of the running cluster, else PORT_BASE and the next or the next free ones.
  local ctld_port slurmd_port new="$DIR/etc/slurm.conf.new"
  if running && [[ -r "$CONF" ]]; then
    ctld_port="$(conf_value SlurmctldPort)"
    slurmd_port="$(conf_value SlurmdPort)"
  else
    stop_slurm
    ctld_port="$(first_free_port "$PORT_BASE")"
    slurmd_port="$(first_free_port $((PORT_BASE + 1)) "$ctld_port")"
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
    ((NODES == 1)) || net_up
    mv -f "$new" "$CONF"
    export SLURM_CONF="$CONF"
    log "starting slurmctld on $ADDR:$ctld_port (log $CTLD_LOG)"
    # -c: a fresh start forgets the jobs of an earlier run (their processes are gone).
    if ! slurmctld -c -f "$CONF" </dev/null >>"$CTLD_LOG" 2>&1 9>&-; then
      show_log "$CTLD_LOG"
      die "slurmctld failed to start"
    fi
    wait_ctld
    for name in "${NODE_NAMES[@]}"; do
      log "starting slurmd for node $name on :$slurmd_port (log $(slurmd_log "$name"))"
      start_slurmd "$name"
    done
  fi
  wait_nodes
  hold
  log "$(node_states)"
  export_line
}

status() {
  if running && SLURM_CONF="$CONF" timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP'; then
    log "running: $(node_states)"
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
  if [[ -n "$HOLDER" ]] && others_hold; then
    return 0
  fi
  stop_slurm
  stop_pid "$MUNGE_PID" munged
  ((NODES == 1)) || net_down
  rm -rf "$HOLDERS"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  -h | --help | help) usage ;;
  *) usage; exit 2 ;;
esac
