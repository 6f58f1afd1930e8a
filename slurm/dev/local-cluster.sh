#!/usr/bin/env bash
# A real single-node Slurm 22.05 cluster (munged + slurmctld + slurmd) on this machine, every address
# 127.0.0.1, for developing and testing qforge's Slurm operation (sbatch, srun --mpi=pmix, signals,
# requeue, dependencies, arrays) without a site cluster. Debian 12, run as root, no systemd needed.
#
#   slurm/dev/local-cluster.sh start    install the packages if missing, write the config, start the
#                                       daemons, wait until the node is idle (no-op if already up)
#   slurm/dev/local-cluster.sh stop     cancel all jobs, stop the daemons this script started
#   slurm/dev/local-cluster.sh status   print the daemons and the node; exit 0 only if the cluster is up
#   slurm/dev/local-cluster.sh env      print export lines: eval "$(slurm/dev/local-cluster.sh env)"
#
# Always eval `env` before any Slurm command (sbatch, squeue, sinfo, scontrol, sacct, srun, scancel):
# a Slurm client that finds no config file falls back to "configless" mode and sends a DNS SRV query
# off the machine; one that is pointed at a missing file retries for 60 s.
#
# Environment (all optional):
#   QFORGE_SLURM_DIR          config, state, spool, logs, pid records   (default /tmp/qforge-slurm)
#   QFORGE_SLURM_CPUS         CPUs the node advertises (default: detected, at least 4, so a job can
#                             run 2-4 MPI ranks on a 2-core machine; more than the hardware oversubscribes)
#   QFORGE_SLURM_CTLD_PORT    slurmctld TCP port                          (default 6817)
#   QFORGE_SLURM_SLURMD_PORT  slurmd TCP port                             (default 6818)
#   QFORGE_SLURM_CRED_EXPIRE  job credential lifetime in seconds; a requeued job becomes eligible again
#                             this + 1 s after the requeue (Slurm's default is 120, here 10)
#   QFORGE_SLURM_TIMEOUT      seconds to wait for each daemon             (default 60)
#   QFORGE_SLURM_NO_INSTALL=1 never run apt-get; fail if a package is missing
#
# For tests: plain `sacct` only says "Slurm accounting storage is disabled" (there is no slurmdbd); use
# `sacct -c` (job-completion log) or `scontrol show job` (finished jobs are kept an hour). A requeued job
# runs again ~12 s after `scontrol requeue` (see cred_expire below), or ~1 s after
# `scontrol update JobId=ID StartTime=now` issued once it is PENDING. `--signal=B:USR1@60` can arrive
# tens of seconds early. mpirun needs the OMPI_ALLOW_RUN_AS_ROOT* variables `env` prints; srun does not.
#
# Every failure exits non-zero with a message on stderr (the same with and without CI=true).
# Installed packages are left in place by `stop`.
set -euo pipefail

DIR=${QFORGE_SLURM_DIR:-/tmp/qforge-slurm}
CTLD_PORT=${QFORGE_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${QFORGE_SLURM_SLURMD_PORT:-6818}
CRED_EXPIRE=${QFORGE_SLURM_CRED_EXPIRE:-10}
TIMEOUT=${QFORGE_SLURM_TIMEOUT:-60}
NODE=localhost            # node name, independent of the machine's hostname (slurmd -N localhost)
CONF=$DIR/etc/slurm.conf
RUN=$DIR/run              # daemons' pid files, and our records of the daemons this script started

# Point every Slurm command this script runs at our file (see the DNS note above).
export SLURM_CONF=$CONF

# Set once `start` has started a daemon, so that a later failure says how to clean up.
CLEANUP_HINT=""
log() { printf 'local-cluster: %s\n' "$*" >&2; }
die() {
  printf 'local-cluster: error: %s\n' "$*" >&2
  [ -z "$CLEANUP_HINT" ] || printf 'local-cluster: %s\n' "$CLEANUP_HINT" >&2
  exit 1
}
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }

# ------------------------------------------------------------------------------------------------------
# Process records. A pid file alone is not proof that a process is ours (pids are reused, and another
# Slurm may run from a different directory), so for each daemon we start we record "pid starttime" in
# $RUN/NAME.ours, where starttime is field 22 of /proc/PID/stat (clock ticks since boot). `stop` only
# signals a pid whose command name and start time still match the record.

proc_start() {  # proc_start PID -> start time of PID; fails if PID does not exist
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }                   # the command name may contain spaces; skip past it
  # shellcheck disable=SC2086  # split the remaining fields on purpose
  set -- $stat
  echo "${20}"                        # field 22 overall = 20th after "pid (comm)"
}

record() {  # record NAME PID : remember that this script started daemon NAME as PID
  local start
  start=$(proc_start "$2") || die "$1 (pid $2) exited right after starting; see $DIR/log/$1.log"
  echo "$2 $start" > "$RUN/$1.ours"
}

ours() {  # ours NAME -> pid of daemon NAME if this script started it and it is still alive
  local pid start
  [ -s "$RUN/$1.ours" ] || return 1
  read -r pid start < "$RUN/$1.ours" || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] || return 1
  [ "$(proc_start "$pid")" = "$start" ] || return 1
  echo "$pid"
}

pid_from_file() {  # pid_from_file NAME PIDFILE -> pid if PIDFILE names a live process called NAME
  local pid
  pid=$(cat "$2" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] && echo "$pid"
}

stop_pids() {  # stop_pids PID... : SIGTERM, up to 15 s to exit (slurmd/slurmctld take ~2 s), then SIGKILL
  local p left
  [ $# -gt 0 ] || return 0
  kill "$@" 2>/dev/null || true
  for _ in $(seq 150); do
    left=()
    for p in "$@"; do kill -0 "$p" 2>/dev/null && left+=("$p"); done
    [ ${#left[@]} -eq 0 ] && return 0
    sleep 0.1
  done
  log "pid(s) ${left[*]} ignored SIGTERM for 15 s; sending SIGKILL"
  kill -9 "${left[@]}" 2>/dev/null || true
}

port_busy() {  # port_busy PORT : something LISTENs on TCP PORT (reads /proc, needs no ss/netstat)
  local hex
  hex=$(printf '%04X' "$1")
  awk -v h=":$hex" 'FNR > 1 && $4 == "0A" && substr($2, length($2) - 4) == h { f = 1 } END { exit !f }' \
    /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
# Slurm clients run only while $CONF exists: pointed at a missing file they retry for 60 s.
ctld_up() { [ -f "$CONF" ] && scontrol ping 2>/dev/null | grep -q 'is UP'; }
node_state() {
  if [ -f "$CONF" ]; then sinfo -h -n "$NODE" -o %T 2>/dev/null || true; fi
}

show_log_tail() {  # show_log_tail FILE : last lines of a daemon log, to make a failure explainable in CI
  [ -s "$1" ] || return 0
  log "last lines of $1:"
  tail -n 20 "$1" >&2
}

# ------------------------------------------------------------------------------------------------------
# Packages. slurm-wlm-basic-plugins (a dependency of slurmd) holds mpi_pmix.so / mpi_pmix_v4.so, which
# do not link PMIx but dlopen /usr/lib/x86_64-linux-gnu/pmix2/lib/libpmix.so at step launch: that
# unversioned name is shipped only by libpmix-dev, and no Slurm package depends on it. Debian's Open MPI
# is built against the same external PMIx and has no PMI-1/PMI-2 client, so `srun --mpi=pmix` is the
# only srun launch that works for it. openmpi-bin/libopenmpi-dev give mpicc and mpirun for jobs.
PACKAGES=(slurmctld slurmd slurm-client slurm-wlm-basic-plugins munge
  libpmix2 libpmix-dev openmpi-bin libopenmpi-dev)

install_packages() {
  local missing=() p policy_added=0 rc=0
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "${QFORGE_SLURM_NO_INSTALL:-0}" = 1 ] && die "missing packages: ${missing[*]} (QFORGE_SLURM_NO_INSTALL=1)"
  command -v apt-get >/dev/null || die "missing packages: ${missing[*]}, and there is no apt-get"
  log "installing ${missing[*]} (apt log: $DIR/log/apt.log)"
  # The packages' maintainer scripts would start Debian's own munge (and, given an /etc/slurm/slurm.conf,
  # slurm) services: daemons that are not ours and that `stop` could not stop. A policy-rc.d that
  # answers 101 forbids that; add one only for the install, and only if the machine has none.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# temporary, from qforge slurm/dev/local-cluster.sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    policy_added=1
  fi
  {
    apt-get update &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
  } >> "$DIR/log/apt.log" 2>&1 || rc=$?
  [ $policy_added -eq 1 ] && rm -f /usr/sbin/policy-rc.d
  if [ $rc -ne 0 ]; then
    tail -n 20 "$DIR/log/apt.log" >&2
    die "apt-get failed (exit $rc) installing ${missing[*]}; full log: $DIR/log/apt.log"
  fi
}

# ------------------------------------------------------------------------------------------------------
# Configuration, written from `man slurm.conf` (22.05); see ../shared/docs/slurm-local/NOTES.md for
# what goes wrong without each line.
write_config() {
  local hw hw_cpus hw_mem cpus mem node_hw overrides
  # What slurmd detects, e.g. "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ..."
  hw=$(slurmd -C 2>/dev/null | head -n 1) || true
  hwval() { sed -n "s/.*[[:space:]]$1=\([0-9]*\).*/\1/p" <<<"$hw"; }
  hw_cpus=$(hwval CPUs)
  hw_mem=$(hwval RealMemory)
  if [ -z "$hw_cpus" ] || [ -z "$hw_mem" ]; then
    die "could not read the hardware from 'slurmd -C' (got: '$hw')"
  fi
  cpus=${QFORGE_SLURM_CPUS:-$(( hw_cpus > 4 ? hw_cpus : 4 ))}
  [[ $cpus =~ ^[1-9][0-9]*$ ]] || die "QFORGE_SLURM_CPUS must be a positive integer, got '$cpus'"
  mem=$(( hw_mem * 9 / 10 ))
  if [ "$cpus" = "$hw_cpus" ]; then
    # the real topology, which keeps slurmd from logging "Node configuration differs from hardware"
    node_hw="CPUs=$cpus Boards=1 SocketsPerBoard=$(hwval SocketsPerBoard) CoresPerSocket=$(hwval CoresPerSocket) ThreadsPerCore=$(hwval ThreadsPerCore)"
    overrides=""
  else
    # more CPUs than cores: slurmd would otherwise replace the configured counts by the detected ones
    node_hw="CPUs=$cpus Boards=1 SocketsPerBoard=1 CoresPerSocket=$cpus ThreadsPerCore=1"
    overrides="SlurmdParameters=config_overrides"
  fi
  cat <<EOF
# Generated by qforge slurm/dev/local-cluster.sh: a single-node test cluster on 127.0.0.1.
# Edits are overwritten by the next start.
# slurmctld refuses to start without a ClusterName.
ClusterName=qforge-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire is the job credential lifetime, and a requeued job is held (Reason=BeginTime) for
# cred_expire + 1 s before it may run again: 121 s with the default 120, which makes requeue tests slow.
AuthInfo=cred_expire=$CRED_EXPIRE
# Everything under $DIR: this Debian build would otherwise write job state straight into /var/spool.
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# The default proctrack/cgroup fails every step launch without a cgroup.conf and writable cgroups.
# linuxproc tracks job processes by parent pid: a process that daemonizes escapes scancel.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# Debian's Open MPI only speaks PMIx to srun: plain 'srun ./mpi_program' then works too.
MpiDefault=pmix
JobRequeue=1
# The node comes back by itself after a daemon restart instead of staying DOWN.
ReturnToService=2
# There is no /bin/mail; the default MailProg logs an error at every start.
MailProg=/bin/true
# batch_sched_delay=0: start batch jobs at the next scheduler tick (~1 s), not after the default 3 s.
# sched_interval=2: a job that only waits for its begin time (a requeued job, see cred_expire) is
# started by the periodic scheduler pass, which by default runs every 60 s, by backfill every 30 s.
SchedulerParameters=batch_sched_delay=0,sched_interval=2
# Cancel a job whose dependency can never be satisfied instead of leaving it pending forever.
DependencyParameters=kill_invalid_depend
# Finished jobs stay visible to scontrol/squeue for an hour (default 300 s).
MinJobAge=3600
# No slurmdbd, so no accounting database: plain sacct fails. The job-completion log below
# makes 'sacct -c' list finished jobs (changing it needs a slurmctld restart, not a reconfigure).
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
JobAcctGatherType=jobacct_gather/none
$overrides
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE $node_hw RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

# ------------------------------------------------------------------------------------------------------
start_munge() {
  if munge_ok; then
    # A munged that answers is reused whoever started it; `stop` leaves it alone unless it is ours.
    return 0
  fi
  if [ ! -s /etc/munge/munge.key ]; then
    # normally created by the munge package's postinst
    log "creating /etc/munge/munge.key"
    install -d -o munge -g munge -m 0700 /etc/munge
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 0600 /etc/munge/munge.key
  fi
  # No systemd here: create the socket directory and run munged as Debian's unit would, as user munge.
  install -d -o munge -g munge -m 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged \
    || die "munged failed to start; see /var/log/munge/munged.log"
  # up to 10 s: after a killed munged, the new one first has to clean up the stale socket (~2 s)
  for _ in $(seq 100); do munge_ok && break; sleep 0.1; done
  munge_ok || { show_log_tail /var/log/munge/munged.log; die "munged started but does not answer"; }
  local pid
  pid=$(pid_from_file munged /run/munge/munged.pid) || die "munged answers but /run/munge/munged.pid names no munged"
  record munged "$pid"
  CLEANUP_HINT="'$0 stop' stops the daemons this start left running"
  log "started munged (pid $pid)"
}

cmd_start() {
  [ "$(id -u)" -eq 0 ] || die "start must run as root (slurmd runs jobs as their users and needs root)"
  case "$DIR" in /*) ;; *) die "QFORGE_SLURM_DIR must be an absolute path, got '$DIR'" ;; esac
  [ "$DIR" != / ] || die "QFORGE_SLURM_DIR must not be /"
  local v
  for v in CTLD_PORT SLURMD_PORT CRED_EXPIRE TIMEOUT; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "QFORGE_SLURM_$v must be a positive integer, got '${!v}'"
  done
  [ "$CRED_EXPIRE" -ge 5 ] || die "QFORGE_SLURM_CRED_EXPIRE must be at least 5 (Slurm ignores smaller values)"
  mkdir -p "$DIR/etc" "$DIR/state" "$DIR/spool" "$DIR/log" "$RUN"

  install_packages
  start_munge

  local newconf ctld slurmd
  newconf=$(write_config)
  ctld=$(ours slurmctld || true)
  slurmd=$(ours slurmd || true)

  if [ -n "$ctld" ] && [ -n "$slurmd" ] && [ "$newconf" = "$(cat "$CONF" 2>/dev/null)" ] && ctld_up; then
    case "$(node_state)" in
      idle|mixed|allocated|completing)
        log "already running (slurmctld $ctld, slurmd $slurmd); nothing to do"
        return 0 ;;
    esac
  fi

  # Half up, or the settings changed: restart our daemons. Running job steps survive a slurmd restart.
  if [ -n "$ctld$slurmd" ]; then
    log "restarting slurmctld ${ctld:--} / slurmd ${slurmd:--} to apply the configuration"
    # shellcheck disable=SC2086  # an empty pid must vanish
    stop_pids $slurmd $ctld
  fi
  rm -f "$RUN/slurmctld.ours" "$RUN/slurmd.ours"
  # A Slurm we did not start (another QFORGE_SLURM_DIR, a system slurmctld) is never touched; we can only
  # refuse to start beside it on the same ports.
  for port in "$CTLD_PORT" "$SLURMD_PORT"; do
    if port_busy "$port"; then
      die "TCP port $port is in use by a process this script did not start (another Slurm?); stop it or set QFORGE_SLURM_CTLD_PORT / QFORGE_SLURM_SLURMD_PORT"
    fi
  done

  printf '%s\n' "$newconf" > "$CONF"
  chmod 644 "$CONF"

  local pid state=""
  CLEANUP_HINT="'$0 stop' stops the daemons this start left running"
  slurmctld -f "$CONF" || { show_log_tail "$DIR/log/slurmctld.log"; die "slurmctld failed to start"; }
  # slurmctld daemonizes and writes its pid file before it answers
  for _ in $(seq $(( TIMEOUT * 10 ))); do ctld_up && break; sleep 0.1; done
  pid=$(pid_from_file slurmctld "$RUN/slurmctld.pid") \
    || { show_log_tail "$DIR/log/slurmctld.log"; die "slurmctld exited after starting"; }
  record slurmctld "$pid"
  ctld_up || { show_log_tail "$DIR/log/slurmctld.log"; die "slurmctld (pid $pid) not answering after ${TIMEOUT}s"; }

  slurmd -f "$CONF" -N "$NODE" || { show_log_tail "$DIR/log/slurmd.log"; die "slurmd failed to start"; }
  for _ in $(seq 50); do pid=$(pid_from_file slurmd "$RUN/slurmd.pid") && break; sleep 0.1; done
  pid=$(pid_from_file slurmd "$RUN/slurmd.pid") \
    || { show_log_tail "$DIR/log/slurmd.log"; die "slurmd exited after starting"; }
  record slurmd "$pid"

  for _ in $(seq $(( TIMEOUT * 10 ))); do
    state=$(node_state)
    case "$state" in
      idle|mixed|allocated|completing) break ;;
      # e.g. DOWN in the saved state of an earlier run; ReturnToService=2 normally prevents this
      down*|drain*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.1
  done
  case "$state" in
    idle|mixed|allocated|completing) ;;
    *) show_log_tail "$DIR/log/slurmd.log"; show_log_tail "$DIR/log/slurmctld.log"
       die "node $NODE is '${state:-unknown}' after ${TIMEOUT}s, not idle" ;;
  esac
  log "up: Slurm $(dpkg-query -W -f='${Version}' slurm-client), node $NODE $(sinfo -h -n "$NODE" -o '%c CPUs'), state $state; eval \"\$($0 env)\""
}

# ------------------------------------------------------------------------------------------------------
cmd_stop() {
  local ctld slurmd munged ids p
  ctld=$(ours slurmctld || true)
  slurmd=$(ours slurmd || true)

  # Cancel every job first, so that no slurmstepd or job process outlives slurmd; only when the
  # controller answering on our config is the one we started.
  if [ -n "$ctld" ] && ctld_up; then
    ids=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
    if [ -n "${ids// /}" ]; then
      log "cancelling jobs: $ids"
      # shellcheck disable=SC2086  # one id per word
      scancel $ids 2>/dev/null || true
      # KillWait (30 s) passes between SIGTERM and SIGKILL of a job that ignores SIGTERM
      for _ in $(seq 450); do
        squeue -h -t PD,R,CG,CF,S 2>/dev/null | grep -q . || break
        sleep 0.1
      done
    fi
  fi

  if [ -n "$ctld$slurmd" ]; then
    log "stopping slurmd ${slurmd:--} and slurmctld ${ctld:--}"
    # shellcheck disable=SC2086  # an empty pid must vanish
    stop_pids $slurmd $ctld
  fi

  # Step daemons of our slurmd that are still there (they run in our log directory, like slurmd).
  for p in /proc/[0-9]*; do
    [ "$(cat "$p/comm" 2>/dev/null)" = slurmstepd ] || continue
    case "$(readlink "$p/cwd" 2>/dev/null)" in
      "$DIR"/*) log "stopping leftover slurmstepd ${p#/proc/}"; stop_pids "${p#/proc/}" ;;
    esac
  done

  munged=$(ours munged || true)
  if [ -n "$munged" ]; then
    log "stopping munged $munged"
    stop_pids "$munged"
  fi

  if [ -z "$ctld$slurmd$munged" ]; then
    log "no daemon started by this script is running (state dir $DIR)"
  fi
  rm -f "$RUN"/*.ours "$RUN/slurmctld.pid" "$RUN/slurmd.pid" 2>/dev/null || true
}

# ------------------------------------------------------------------------------------------------------
cmd_status() {
  local name pid up=0
  for name in munged slurmctld slurmd; do
    if pid=$(ours "$name"); then
      printf '%-10s running, pid %s (started by this script)\n' "$name" "$pid"
    elif [ "$name" = munged ] && munge_ok; then
      printf '%-10s running (not started by this script)\n' "$name"
    else
      printf '%-10s not running\n' "$name"
      up=3
    fi
  done
  printf 'state dir  %s\n' "$DIR"
  if [ $up -eq 0 ] && [ -f "$CONF" ] && ctld_up; then
    printf 'node       %s\n' "$(sinfo -h -n "$NODE" -o '%N %T %c CPUs' 2>/dev/null)"
    case "$(node_state)" in idle|mixed|allocated|completing) ;; *) up=3 ;; esac
  else
    up=3
  fi
  # 3 is the LSB code for "not running"
  return $up
}

cmd_env() {
  [ -f "$CONF" ] || die "no config at $CONF; run '$0 start' first (with the same QFORGE_SLURM_DIR)"
  printf 'export QFORGE_SLURM_DIR=%q\n' "$DIR"
  printf 'export SLURM_CONF=%q\n' "$CONF"
  if [ "$(id -u)" -eq 0 ]; then
    # Open MPI's mpirun (not srun --mpi=pmix) refuses to run as root without both. sbatch exports the
    # submitter's environment (--export=ALL), so jobs submitted after the eval get them too.
    echo 'export OMPI_ALLOW_RUN_AS_ROOT=1'
    echo 'export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1'
  fi
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  -h|--help|help) usage ;;
  "") usage >&2; die "missing subcommand (start, stop, status or env)" ;;
  *) usage >&2; die "unknown subcommand '$1' (start, stop, status or env)" ;;
esac
