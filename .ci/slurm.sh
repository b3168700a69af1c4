#!/usr/bin/env bash
# A real single-node SLURM cluster for tests/test_slurm.py: Debian's slurmctld, slurmd,
# slurm-client and munge, a minimal slurm.conf for this machine, the daemons started directly
# (no systemd), then wait until `sinfo` shows the node idle. Idempotent: a cluster that already
# answers is left as it is. Settings that matter in a gVisor sandbox: ../shared/notes/slurm.md.
set -euo pipefail
SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)

# slurmdbd on MariaDB is the accounting: submitit polls `sacct` for the state of every job.
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v slurmdbd >/dev/null 2>&1 \
  || ! command -v mariadbd >/dev/null 2>&1; then
  $SUDO apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    slurmctld slurmd slurm-client munge slurmdbd mariadb-server
fi

if sinfo -h -o %t 2>/dev/null | grep -qx idle && sacct -n -X >/dev/null 2>&1; then
  echo "slurm: already up: $(sinfo -h -o '%P %D %t')"
  exit 0
fi

# munge: a key, then the daemon as its own user.
if [ ! -s /etc/munge/munge.key ]; then
  $SUDO mkdir -p /etc/munge
  $SUDO dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
$SUDO mkdir -p /run/munge /var/log/munge /var/lib/munge
$SUDO chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
$SUDO chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  $SUDO runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
fi

# Accounting: MariaDB, a database for slurmdbd, slurmdbd itself.
$SUDO service mariadb start >/dev/null
for _ in $(seq 30); do $SUDO mysql -e 'select 1' >/dev/null 2>&1 && break; sleep 1; done
$SUDO mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
  CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
$SUDO mkdir -p /etc/slurm /var/log/slurm
$SUDO tee /etc/slurm/slurmdbd.conf >/dev/null <<'CONF'
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
CONF
$SUDO chmod 600 /etc/slurm/slurmdbd.conf

# slurm.conf: this machine is the controller and the one node (its line from `slurmd -C`).
NODE=$(slurmd -C | head -n1)
HOST=$(echo "$NODE" | sed -E 's/^NodeName=([^ ]+).*/\1/')
$SUDO mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
$SUDO tee /etc/slurm/slurm.conf >/dev/null <<CONF
ClusterName=trpo
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
# A requeued job otherwise waits for the 120 s credential expiry before it starts again.
AuthInfo=cred_expire=10
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
# gVisor: no cgroups for tracking or binding processes.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=sched_interval=1
# SLURM's own default is 30 s: a job SIGTERMed (scancel, scontrol requeue) closes its records
# before the SIGKILL; 5 s was too short for a trpo-tune worker on a loaded machine.
KillWait=15
JobRequeue=1
MailProg=/bin/true
ReturnToService=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
$NODE State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF

pgrep -x slurmdbd >/dev/null || $SUDO slurmdbd
for _ in $(seq 30); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 1; done
sacctmgr -n list cluster format=cluster | grep -qw trpo || $SUDO sacctmgr -i add cluster trpo >/dev/null

pgrep -x slurmctld >/dev/null || $SUDO slurmctld
pgrep -x slurmd >/dev/null || $SUDO slurmd
for _ in $(seq 30); do squeue -h >/dev/null 2>&1 && break; sleep 1; done
# The controller recovers the jobs of an earlier, ended run from StateSaveLocation (a machine
# whose test run was killed keeps its "running" jobs): they would hold the node. Nothing of ours
# has been submitted yet, so whatever is queued is such a leftover.
leftover=$(squeue -h -o %F 2>/dev/null | sort -u | tr '\n' ' ')
if [ -n "${leftover// }" ]; then
  echo "slurm: cancelling jobs left from an earlier run: $leftover"
  # shellcheck disable=SC2086
  $SUDO scancel $leftover
fi
for _ in $(seq 60); do
  state=$(sinfo -h -o %t 2>/dev/null || true)
  [ "$state" = idle ] && break
  sleep 1
done
[ "$state" = idle ] || { echo "slurm: node is '$state', not idle" >&2; exit 1; }
echo "slurm: up: $(sinfo -h -o '%P %D %t')"
