#!/usr/bin/env bash
# A real single-host Slurm (Debian 12: Slurm 22.05) for the integration tests, or to try the
# orchestrator's slurm backend on one machine. No systemd: daemons are started directly and
# stopped by their pid files. Two nodes on this host, matching the shipped profiles:
#   sphinx1 -> partition sphinx (default), 8 fake a100 GPUs
#   miso1   -> partition miso,             8 fake h200 GPUs
# slurmdbd on MariaDB gives a working sacct (without it a cancelled job is never "done").
#
# usage (as root): local_cluster.sh {start|stop|restart|status|install}    idempotent
# env: LOCAL_SLURM_CPUS (32) and LOCAL_SLURM_GPUS (8) per node; LOCAL_SLURM_CLEAN=1 starts
#      slurmctld with -c (forget jobs and node states)
set -euo pipefail

CPUS=${LOCAL_SLURM_CPUS:-32}
GPUS=${LOCAL_SLURM_GPUS:-8}
NODES=(sphinx1 miso1)
ETC=/etc/slurm
LOGS=/var/log/slurm
FAKE_GPUS=/var/lib/slurm/fakegpu
DB_PASSWORD=slurmdbpass
CONFIG_CHANGED=0

say() { echo "[local-slurm] $*" >&2; }
die() { say "error: $*"; exit 1; }

# running PIDFILE NAME: the pid is a live process called NAME. PID 1 here may reap
# orphans late, so a stopped daemon can linger as a zombie: kill -0 is not enough.
running() {
  local pid
  pid=$(cat "$1" 2>/dev/null) && [[ $pid =~ ^[0-9]+$ ]] && [ -r "/proc/$pid/status" ] || return 1
  ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}

# wait_until SECONDS WHAT COMMAND...: poll every 0.2 s
wait_until() {
  local seconds=$1 what=$2 i
  shift 2
  for ((i = 0; i < seconds * 5; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "gave up after ${seconds}s waiting for $what"
}

stop_daemon() {  # PIDFILE NAME: TERM, up to 15 s, then KILL
  local pid i
  running "$1" "$2" || { rm -f "$1"; return 0; }
  pid=$(cat "$1")
  say "stopping $2 ($pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 75; i++)); do running "$1" "$2" || break; sleep 0.2; done
  if running "$1" "$2"; then kill -KILL "$pid" 2>/dev/null || true; sleep 0.5; fi
  rm -f "$1"
}

install_packages() {
  # not the slurm-wlm metapackage: it pulls in ~40 packages of plugins
  local wanted=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server) missing=() p
  for p in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  say "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

write_if_changed() {  # PATH MODE < content
  local tmp
  tmp=$(mktemp)
  cat >"$tmp"
  if ! cmp -s "$tmp" "$1" 2>/dev/null; then install -m "$2" "$tmp" "$1"; CONFIG_CHANGED=1; fi
  rm -f "$tmp"
}

write_configs() {
  local node i
  mkdir -p "$ETC" "$LOGS" /var/lib/slurm/slurmctld
  write_if_changed "$ETC/slurm.conf" 0644 <<CONF
# written by the orchestrator's slurm_templates/local_cluster.sh
ClusterName=localcluster
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job may start again only cred_expire seconds later (default 120)
AuthInfo=cred_expire=5
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldPort=6817
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd-%n
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
# the nodes claim more CPUs and memory than this machine has
SlurmdParameters=config_overrides
KillWait=5
# slurmctld forgets a finished job this long after it ends (default 300 s); short here, so the
# tests meet forgotten jobs in seconds. Their history stays in sacct.
MinJobAge=20
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
NodeName=sphinx1 NodeHostname=localhost NodeAddr=127.0.0.1 Port=6821 CPUs=$CPUS RealMemory=1000000 Gres=gpu:a100:$GPUS Features=a100 State=UNKNOWN
NodeName=miso1 NodeHostname=localhost NodeAddr=127.0.0.1 Port=6822 CPUs=$CPUS RealMemory=2000000 Gres=gpu:h200:$GPUS Features=h200 State=UNKNOWN
PartitionName=sphinx Nodes=sphinx1 Default=YES MaxTime=INFINITE State=UP
PartitionName=miso Nodes=miso1 MaxTime=INFINITE State=UP
CONF
  # slurmd drops GPUs without File= and wants character devices: copies of /dev/null,
  # never opened with task/none
  for node in "${NODES[@]}"; do
    mkdir -p "$FAKE_GPUS/$node"
    for ((i = 0; i < GPUS; i++)); do
      [ -c "$FAKE_GPUS/$node/nvidia$i" ] || mknod -m 0666 "$FAKE_GPUS/$node/nvidia$i" c 1 3
    done
  done
  write_if_changed "$ETC/gres.conf" 0644 <<CONF
NodeName=sphinx1 Name=gpu Type=a100 File=$FAKE_GPUS/sphinx1/nvidia[0-$((GPUS - 1))]
NodeName=miso1 Name=gpu Type=h200 File=$FAKE_GPUS/miso1/nvidia[0-$((GPUS - 1))]
CONF
  write_if_changed "$ETC/slurmdbd.conf" 0600 <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=$LOGS/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageUser=slurm
StoragePass=$DB_PASSWORD
StorageLoc=slurm_acct_db
CONF
}

resolve_node_names() {
  # jobs address each other by node name (torch.distributed's MASTER_ADDR is the first
  # node of the job), so the fake nodes' names must resolve to this host
  local node
  for node in "${NODES[@]}"; do
    getent hosts "$node" >/dev/null || echo "127.0.0.1 $node  # local_cluster.sh" >>/etc/hosts
  done
}

start_munge() {
  [ -s /etc/munge/munge.key ] || mungekey -c -k /etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  running /run/munge/munged.pid munged || { say "starting munged"; runuser -u munge -- /usr/sbin/munged; }
  wait_until 10 munge bash -c 'munge -n | unmunge'
}

start_mariadb() {
  install -d -o mysql -g root -m 0755 /run/mysqld
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  if ! running /run/mysqld/mysqld.pid mariadbd; then
    say "starting mariadbd"
    setsid /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 --innodb-buffer-pool-size=32M \
      --performance-schema=OFF </dev/null >>"$LOGS/mariadb.log" 2>&1 &
  fi
  wait_until 60 mariadb mariadb-admin ping
  mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
}

nodes_idle() {
  [ "$(sinfo -h -N -o '%N %T' | sort -u | grep -cE ' (idle|mixed|allocated|completing)$')" = "${#NODES[@]}" ]
}

start() {
  local node
  [ "$(id -u)" = 0 ] || die "run as root"
  install_packages
  write_configs
  resolve_node_names
  if [ "$CONFIG_CHANGED" = 1 ] && running /run/slurmctld.pid slurmctld; then
    say "configuration changed: restarting the slurm daemons"
    for node in "${NODES[@]}"; do stop_daemon "/run/slurmd-$node.pid" slurmd; done
    stop_daemon /run/slurmctld.pid slurmctld
    stop_daemon /run/slurmdbd.pid slurmdbd
  fi
  start_munge
  start_mariadb
  running /run/slurmdbd.pid slurmdbd || { say "starting slurmdbd"; slurmdbd; }
  wait_until 60 slurmdbd sacctmgr -n -P show cluster
  if ! running /run/slurmctld.pid slurmctld; then
    say "starting slurmctld"
    if [ "${LOCAL_SLURM_CLEAN:-0}" = 1 ]; then slurmctld -c; else slurmctld; fi
  fi
  wait_until 30 slurmctld bash -c 'scontrol ping | grep -q UP'
  for node in "${NODES[@]}"; do
    running "/run/slurmd-$node.pid" slurmd || { say "starting slurmd -N $node"; slurmd -N "$node"; }
  done
  wait_until 30 "nodes to register" bash -c "! sinfo -h -N -o '%T' | grep -qE 'unk|\\*'"
  # a DRAIN survives restarts, and ReturnToService=2 only revives DOWN nodes
  for node in $(sinfo -h -N -t drain,drained,draining,down -o '%N' | sort -u); do
    scontrol update nodename="$node" state=resume || true
  done
  wait_until 30 "idle nodes" nodes_idle
  say "ready: $(sinfo -h -o '%P:%N:%T:%G' | tr '\n' ' ')"
}

stop() {
  local node i
  if running /run/slurmctld.pid slurmctld; then
    squeue -h -o %A 2>/dev/null | xargs -r scancel 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.2; done
  fi
  for node in "${NODES[@]}"; do stop_daemon "/run/slurmd-$node.pid" slurmd; done
  stop_daemon /run/slurmctld.pid slurmctld
  stop_daemon /run/slurmdbd.pid slurmdbd
  stop_daemon /run/mysqld/mysqld.pid mariadbd
  stop_daemon /run/munge/munged.pid munged
}

status() {
  local entry
  for entry in /run/munge/munged.pid:munged /run/mysqld/mysqld.pid:mariadbd /run/slurmdbd.pid:slurmdbd \
    /run/slurmctld.pid:slurmctld /run/slurmd-sphinx1.pid:slurmd /run/slurmd-miso1.pid:slurmd; do
    if running "${entry%%:*}" "${entry##*:}"; then echo "${entry##*:} ${entry%%:*}: running"; else echo "${entry##*:} ${entry%%:*}: stopped"; fi
  done
  running /run/slurmctld.pid slurmctld && sinfo -N -o '%N %P %T %G'
  return 0
}

case "${1:-start}" in
  install) install_packages ;;
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) status ;;
  *) die "usage: $0 {start|stop|restart|status|install}" ;;
esac
