#!/usr/bin/env bash
# Start, stop or describe the real single-node Slurm cluster that the integration tests use.
#
# Usage: scripts/local-slurm.sh start|stop|env|status
#   start   as root: install the Debian packages when one is missing, then start munged,
#           MariaDB, slurmdbd, slurmctld and slurmd under the prefix, wait until the node is
#           idle and a smoke job has finished, and print how long each step took. When every
#           daemon already runs, it only checks that the controller responds.
#   stop    as root: cancel the jobs still in the cluster, then stop each daemon by the pid
#           file it wrote (SIGTERM, SIGKILL after 30 s). Nothing else is signalled.
#   env     print the export line for the clients: eval "$(scripts/local-slurm.sh env)"
#           makes sbatch, squeue, sacct and scontrol use this cluster; jobs inherit it.
#   status  print which daemons run, and exit 0 when the controller responds to
#           `scontrol ping`.
#
# The cluster is one node, this host (`hostname -s`, address 127.0.0.1), advertising 16 CPUs,
# 64 GiB and 4 GPUs whatever the hardware has. The GPUs are fake: character devices with the
# numbers of /dev/null, so Slurm schedules --gres=gpu:N and sets CUDA_VISIBLE_DEVICES.
# Partitions: debug (default) and low are preemptible (requeued, 30 s grace after the job's
# --signal); jobs in high (PriorityTier=10) preempt them. short is like debug with MaxTime=10
# (minutes), for the tests of site limits. MaxArraySize=101 allows array indices 0 to 100,
# above the largest array of the tests. CPUs are consumable, memory is not (CR_Core).
# Accounting goes through slurmdbd to MariaDB, so sacct works.
#
# Settings (environment):
#   HPC_TUNE_SLURM_PREFIX        config, state, logs, sockets, pid files (default /tmp/hpc-tune-slurm)
#   HPC_TUNE_SLURM_CPUS          CPUs advertised for the node (default 16)
#   HPC_TUNE_SLURM_GPUS          fake GPUs, 0 for none (default 4)
#   HPC_TUNE_SLURM_MEMORY_MB     RealMemory of the node in MB; a job's --mem must not exceed
#                                it (default 65536)
#   HPC_TUNE_SLURM_CTLD_PORT     slurmctld port (default 6817)
#   HPC_TUNE_SLURM_SLURMD_PORT   slurmd port (default 6818)
#   HPC_TUNE_SLURM_DBD_PORT      slurmdbd port (default 6819)
#   HPC_TUNE_SLURM_MARIADB_PORT  MariaDB port on 127.0.0.1 (default 53307)
# Settings are read when the daemons start; `stop` then `start` applies new ones.
#
# Listening sockets: slurmctld, slurmd and slurmdbd listen on every address on their ports,
# because Slurm 22.05 has no bind-address setting for them. MariaDB listens on 127.0.0.1 only
# and munged on a Unix socket under the prefix.
#
# TEST CLUSTER ONLY: the daemons and the jobs run as root and the node advertises resources
# it does not have. No cgroups are used (proctrack/linuxproc, task/none), so nothing limits a
# job's memory or CPUs.
#
# Exit status: 0 success, 1 error, 2 usage, 3 the packages are missing and apt-get could not
# install them (tests skip on 3).
set -euo pipefail

PREFIX=${HPC_TUNE_SLURM_PREFIX:-/tmp/hpc-tune-slurm}
CPUS=${HPC_TUNE_SLURM_CPUS:-16}
GPUS=${HPC_TUNE_SLURM_GPUS:-4}
MEMORY_MB=${HPC_TUNE_SLURM_MEMORY_MB:-65536}
CTLD_PORT=${HPC_TUNE_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${HPC_TUNE_SLURM_SLURMD_PORT:-6818}
DBD_PORT=${HPC_TUNE_SLURM_DBD_PORT:-6819}
MARIADB_PORT=${HPC_TUNE_SLURM_MARIADB_PORT:-53307}

PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
EXIT_NO_PACKAGES=3
CLUSTER=hpctune
NODE=$(hostname -s 2>/dev/null || uname -n)
NODE=${NODE%%.*}
ETC=$PREFIX/etc
RUN=$PREFIX/run
LOG_DIR=$PREFIX/log
MUNGE_DIR=$PREFIX/munge
MUNGE_SOCKET=$MUNGE_DIR/munge.socket.2
MARIADB_DIR=$PREFIX/mariadb
MARIADB_SOCKET=$MARIADB_DIR/mysqld.sock
# daemon name (its /proc/<pid>/comm) and the pid file it writes, in start order
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)
declare -A PID_FILES=(
    [munged]=$MUNGE_DIR/munged.pid
    [mariadbd]=$MARIADB_DIR/mysqld.pid
    [slurmdbd]=$RUN/slurmdbd.pid
    [slurmctld]=$RUN/slurmctld.pid
    [slurmd]=$RUN/slurmd.pid
)
declare -A PORTS=(
    [mariadbd]=$MARIADB_PORT [slurmdbd]=$DBD_PORT [slurmctld]=$CTLD_PORT [slurmd]=$SLURMD_PORT
)
declare -A PORT_SETTINGS=(
    [mariadbd]=HPC_TUNE_SLURM_MARIADB_PORT [slurmdbd]=HPC_TUNE_SLURM_DBD_PORT
    [slurmctld]=HPC_TUNE_SLURM_CTLD_PORT [slurmd]=HPC_TUNE_SLURM_SLURMD_PORT
)
export SLURM_CONF=$ETC/slurm.conf

# Print the microseconds since the epoch. EPOCHREALTIME's decimal separator follows the
# locale, so every non-digit is dropped.
now_us() { echo "${EPOCHREALTIME//[!0-9]/}"; }
T0=$(now_us)
log() { echo "local-slurm: $*" >&2; }
die() { log "error: $*"; exit 1; }
# Log a step with the seconds since the command began.
step() {
    local us=$(($(now_us) - T0))
    printf 'local-slurm: [%3d.%02d s] %s\n' $((us / 1000000)) $((us / 10000 % 100)) "$*" >&2
}
require_root() { [ "$(id -u)" = 0 ] || die "'$1' must run as root (it runs daemons as root)"; }

# Succeed when process $1 is alive (not a zombie) and its name is $2.
process_alive() {
    local pid=$1 name=$2 comm state
    read -r comm < "/proc/$pid/comm" 2>/dev/null || return 1
    [ "$comm" = "$name" ] || return 1
    # /proc/<pid>/stat reads "<pid> (<name>) <state> ...", and a zombie (Z) has exited.
    read -r _ _ state _ < "/proc/$pid/stat" 2>/dev/null || return 1
    [ "$state" != Z ]
}

# Print the pid of the live daemon named $1, read from its pid file, or fail.
running_pid() {
    local name=$1 pid
    [ -r "${PID_FILES[$name]}" ] || return 1
    # A pid file without a final newline makes read fail after it has read the pid.
    read -r pid < "${PID_FILES[$name]}" || [ -n "${pid:-}" ] || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    process_alive "$pid" "$name" || return 1
    echo "$pid"
}

controller_responds() {
    [ -f "$SLURM_CONF" ] && command -v scontrol >/dev/null \
        && timeout 10 scontrol ping >/dev/null 2>&1
}

# Succeed when something accepts TCP connections on 127.0.0.1:$1.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Wait up to $1 seconds for the command that follows to succeed.
wait_for() {
    local timeout_s=$1 deadline
    shift
    deadline=$(($(now_us) + timeout_s * 1000000))
    until "$@"; do
        [ "$(now_us)" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

missing_packages() {
    local package
    for package in "${PACKAGES[@]}"; do
        [ "$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null)" = "install ok installed" ] \
            || echo "$package"
    done
}

install_packages() {
    local missing apt_log=$LOG_DIR/apt.log policy=/usr/sbin/policy-rc.d added_policy=0 status=0
    command -v dpkg-query >/dev/null || { log "error: no dpkg-query: this script installs \
Slurm from Debian or Ubuntu packages"; exit "$EXIT_NO_PACKAGES"; }
    missing=$(missing_packages | tr '\n' ' ')
    missing=${missing% }
    [ -n "$missing" ] || return 0
    command -v apt-get >/dev/null || { log "error: missing packages $missing and no \
apt-get to install them"; exit "$EXIT_NO_PACKAGES"; }

    step "installing with apt-get (missing: $missing), output in $apt_log"
    # Package scripts must not start system-wide daemons (munge, MariaDB on port 3306, Slurm
    # with /etc/slurm): a policy-rc.d that exits 101 makes invoke-rc.d skip every start.
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod 755 "$policy"
        added_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get update -qq >>"$apt_log" 2>&1 \
        || log "apt-get update failed; installing with the package lists already there"
    timeout 900 apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=120 \
        "${PACKAGES[@]}" >>"$apt_log" 2>&1 || status=$?
    [ "$added_policy" = 0 ] || rm -f "$policy"
    if [ "$status" != 0 ]; then
        tail -n 20 "$apt_log" >&2
        log "error: apt-get install ${PACKAGES[*]} failed with status $status (full output \
in $apt_log)"
        exit "$EXIT_NO_PACKAGES"
    fi
    step "packages installed"
}

# Print the password of the MariaDB user 'slurm', generated at random on first use and kept
# in a 0600 file.
mariadb_password() {
    local file=$ETC/mariadb-password
    if [ ! -s "$file" ]; then
        (umask 077 && od -An -N16 -tx1 /dev/urandom | tr -d ' \n' > "$file")
    fi
    cat "$file"
}

write_configs() {
    local gres_types="" gpu_tres="" node_gres="" i last_gpu
    : > "$ETC/gres.conf"
    if [ "$GPUS" -gt 0 ]; then
        # Slurm 22.05 drops a GPU without File= and wants a character device there.
        last_gpu=$((GPUS - 1))
        for i in $(seq 0 "$last_gpu"); do
            [ -c "$PREFIX/fakedev/nvidia$i" ] || mknod "$PREFIX/fakedev/nvidia$i" c 1 3
        done
        echo "NodeName=$NODE Name=gpu File=$PREFIX/fakedev/nvidia[0-$last_gpu]" > "$ETC/gres.conf"
        gres_types="GresTypes=gpu"
        # Accounting tracks GPUs, so a QOS or an association can limit gres/gpu.
        gpu_tres="AccountingStorageTRES=gres/gpu"
        node_gres="Gres=gpu:$GPUS"
    fi

    cat > "$ETC/slurm.conf" <<EOF
# Written by scripts/local-slurm.sh: a single-node test cluster, see that script.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
StateSaveLocation=$PREFIX/state
SlurmdSpoolDir=$PREFIX/spool/slurmd
SlurmctldPidFile=${PID_FILES[slurmctld]}
SlurmdPidFile=${PID_FILES[slurmd]}
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups: processes are tracked through /proc and tasks are not bound to CPUs
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# the connections to slurmdbd take the munge socket from here, not from AuthInfo
AccountingStoragePass=$MUNGE_SOCKET
$gpu_tres
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
# no mail: slurmctld logs an error at start when MailProg is missing
MailProg=/bin/true
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
# memory is not consumable: CR_Core_Memory without DefMemPerCPU gives each job the whole node
SelectTypeParameters=CR_Core
# take the CPU and memory counts below even though the hardware has fewer
SlurmdParameters=config_overrides
ReturnToService=2
$gres_types
MinJobAge=300
# low enough for the tests of site limits to exceed, above the tests' largest array (8 tasks)
MaxArraySize=101
KillWait=5
InactiveLimit=0
Waittime=0
# A job in a higher PriorityTier preempts one in debug or low: the preempted job gets its
# --signal at once, SIGTERM and then SIGKILL after GraceTime, and is requeued.
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEMORY_MB $node_gres State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=30
PartitionName=low Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=30
PartitionName=high Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
PartitionName=short Nodes=ALL MaxTime=10 State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=30
EOF
    # slurmdbd reads slurmdbd.conf next to slurm.conf and requires mode 0600, owner SlurmUser.
    (umask 077 && cat > "$ETC/slurmdbd.conf") <<EOF
DbdHost=$NODE
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MARIADB_PORT
StorageUser=slurm
StoragePass=$(mariadb_password)
StorageLoc=slurm_acct_db
PidFile=${PID_FILES[slurmdbd]}
LogFile=$LOG_DIR/slurmdbd.log
DebugLevel=info
EOF
    chmod 600 "$ETC/slurmdbd.conf"
}

# Fail, naming the port's setting, when another program listens on the port of a daemon that
# is about to start. Checking every port first avoids a half-started cluster.
check_ports_free() {
    local name port setting
    for name in mariadbd slurmdbd slurmctld slurmd; do
        ! running_pid "$name" >/dev/null || continue
        port=${PORTS[$name]}
        setting=${PORT_SETTINGS[$name]}
        ! port_in_use "$port" || die "port $port is already in use, not by this cluster's \
$name: stop that program or set $setting to a free port"
    done
}

start_munged() {
    chown munge:munge "$MUNGE_DIR"
    # munged refuses a socket folder that other users cannot enter.
    chmod 0755 "$MUNGE_DIR"
    [ -f "$MUNGE_DIR/munge.key" ] \
        || runuser -u munge -- mungekey --create --keyfile="$MUNGE_DIR/munge.key"
    # munged detaches itself. 9>&- keeps every daemon from holding the start lock.
    runuser -u munge -- munged --socket="$MUNGE_SOCKET" --key-file="$MUNGE_DIR/munge.key" \
        --log-file="$MUNGE_DIR/munged.log" --pid-file="${PID_FILES[munged]}" \
        --seed-file="$MUNGE_DIR/munged.seed" </dev/null >>"$LOG_DIR/munged.out" 2>&1 9>&- \
        || die "munged failed to start (log: $MUNGE_DIR/munged.log, $LOG_DIR/munged.out)"
    munge -n --socket="$MUNGE_SOCKET" | unmunge --socket="$MUNGE_SOCKET" >/dev/null \
        || die "munged does not respond on $MUNGE_SOCKET (log: $MUNGE_DIR/munged.log)"
}

mariadb_responds() {
    mariadb-admin --no-defaults --socket="$MARIADB_SOCKET" -u root ping >/dev/null 2>&1
}

start_mariadbd() {
    local password
    mkdir -p "$MARIADB_DIR/data"
    chown -R mysql:mysql "$MARIADB_DIR"
    if [ ! -d "$MARIADB_DIR/data/mysql" ]; then
        mariadb-install-db --no-defaults --user=mysql --datadir="$MARIADB_DIR/data" \
            --skip-test-db --auth-root-authentication-method=socket \
            >"$LOG_DIR/mariadb-install.log" 2>&1 \
            || { tail -n 20 "$LOG_DIR/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
    fi
    # mariadbd stays in the foreground: setsid puts it in its own session, away from the
    # caller's terminal and signals. It drops root for user mysql itself.
    setsid mariadbd --no-defaults --user=mysql --datadir="$MARIADB_DIR/data" \
        --socket="$MARIADB_SOCKET" --pid-file="${PID_FILES[mariadbd]}" \
        --bind-address=127.0.0.1 --port="$MARIADB_PORT" --skip-name-resolve \
        --log-error="$MARIADB_DIR/mariadb.log" --innodb-buffer-pool-size=256M \
        --innodb-lock-wait-timeout=900 </dev/null >>"$LOG_DIR/mariadbd.out" 2>&1 9>&- &
    wait_for 60 mariadb_responds \
        || die "MariaDB did not respond within 60 s (log: $MARIADB_DIR/mariadb.log)"

    password=$(mariadb_password)
    mariadb --no-defaults --socket="$MARIADB_SOCKET" -u root -e "
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$password';
        ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$password';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
}

start_slurmdbd() {
    slurmdbd </dev/null >>"$LOG_DIR/slurmdbd.out" 2>&1 9>&- \
        || die "slurmdbd failed to start (log: $LOG_DIR/slurmdbd.log)"
    # The first start creates the accounting tables before it listens.
    wait_for 60 port_in_use "$DBD_PORT" \
        || die "slurmdbd did not listen on port $DBD_PORT within 60 s (log: $LOG_DIR/slurmdbd.log)"
    if [ -z "$(timeout 30 sacctmgr -n -P show cluster "$CLUSTER" format=cluster)" ]; then
        timeout 30 sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null
    fi
}

start_slurmctld() {
    slurmctld </dev/null >>"$LOG_DIR/slurmctld.out" 2>&1 9>&- \
        || die "slurmctld failed to start (log: $LOG_DIR/slurmctld.log)"
}

start_slurmd() {
    slurmd -N "$NODE" </dev/null >>"$LOG_DIR/slurmd.out" 2>&1 9>&- \
        || die "slurmd failed to start (log: $LOG_DIR/slurmd.log)"
}

node_state() { timeout 10 sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n 1; }
node_ready() { [[ $(node_state) =~ ^(idle|mixed|allocated)$ ]]; }

# Wait until the node takes jobs, resuming it once if it came back down or drained.
wait_node_ready() {
    wait_for 15 node_ready && return 0
    log "node $NODE is '$(node_state)': resuming it"
    timeout 10 scontrol update nodename="$NODE" state=resume 2>/dev/null || true
    wait_for 45 node_ready && return 0
    timeout 10 sinfo -N -o '%N %T %E' >&2 || true
    die "node $NODE is not idle after 60 s (logs: $LOG_DIR/slurmctld.log, $LOG_DIR/slurmd.log)"
}

start() {
    local name pid all_running=1
    require_root start
    mkdir -p "$PREFIX"
    chmod 755 "$PREFIX"
    # One start or stop at a time, when several test runs begin together.
    exec 9>"$PREFIX/lock"
    flock -w 600 9 || die "timed out waiting for $PREFIX/lock"

    for name in "${DAEMONS[@]}"; do running_pid "$name" >/dev/null || all_running=0; done
    if [ "$all_running" = 1 ] && controller_responds; then
        wait_node_ready
        step "already running: $(scontrol ping | head -n 1), node $NODE $(node_state)"
        return 0
    fi

    mkdir -p "$ETC" "$RUN" "$LOG_DIR" "$MUNGE_DIR" "$MARIADB_DIR" "$PREFIX/state" \
        "$PREFIX/spool/slurmd" "$PREFIX/fakedev"
    check_ports_free
    install_packages
    write_configs
    step "configuration written in $ETC ($(slurmctld -V))"

    for name in "${DAEMONS[@]}"; do
        if pid=$(running_pid "$name"); then
            step "$name already running (pid $pid)"
            continue
        fi
        "start_$name"
        # slurmctld and slurmd write their pid file a moment after they detach.
        wait_for 10 running_pid "$name" >/dev/null \
            || die "$name is not running: no live pid in ${PID_FILES[$name]} (logs in $LOG_DIR)"
        step "$name started (pid $(running_pid "$name"))"
    done

    wait_node_ready
    step "node $NODE $(node_state): $(sinfo -h -N -n "$NODE" -o '%c CPUs, %m MB, %G' | head -n 1)"
    timeout 120 sbatch --wait -Q -J local-slurm-smoke -o /dev/null --wrap true \
        || die "the smoke job did not finish (logs: $LOG_DIR/slurmctld.log, $LOG_DIR/slurmd.log)"
    step "smoke job finished: the cluster is ready; run: eval \"\$($0 env)\""
}

process_gone() { ! process_alive "$@"; }

# Send SIGTERM to the daemon named $1, and SIGKILL when it still runs after 30 s.
# The daemons delete their pid file before they finish shutting down, so this waits on the pid.
stop_daemon() {
    local name=$1 pid
    pid=$(running_pid "$name") || return 0
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_for 30 process_gone "$pid" "$name"; then
        log "$name (pid $pid) still runs 30 s after SIGTERM: sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_for 5 process_gone "$pid" "$name" || die "$name (pid $pid) did not stop"
    fi
    step "$name stopped (pid $pid)"
}

no_active_jobs() { [ -z "$(timeout 10 squeue -h -t running,completing -o %A 2>/dev/null)" ]; }

stop() {
    local jobs
    require_root stop
    [ -d "$PREFIX" ] || { log "not running (no $PREFIX)"; return 0; }
    exec 9>"$PREFIX/lock"
    flock -w 600 9 || die "timed out waiting for $PREFIX/lock"

    # Killing slurmd would leave the jobs' processes running, so Slurm ends them first.
    if running_pid slurmctld >/dev/null && controller_responds; then
        jobs=$(timeout 10 squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
        jobs=${jobs% }
        if [ -n "${jobs// /}" ]; then
            # shellcheck disable=SC2086
            timeout 10 scancel $jobs 2>/dev/null || true
            wait_for 20 no_active_jobs || log "jobs still running 20 s after scancel: $jobs"
            step "cancelled jobs $jobs"
        fi
    fi
    # slurmctld sends its last accounting records to slurmdbd as it stops.
    stop_daemon slurmd
    stop_daemon slurmctld
    stop_daemon slurmdbd
    stop_daemon mariadbd
    stop_daemon munged
    step "stopped"
}

status() {
    local name pid
    for name in "${DAEMONS[@]}"; do
        if pid=$(running_pid "$name"); then
            echo "$name: running (pid $pid)"
        else
            echo "$name: not running"
        fi
    done
    controller_responds
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    env) printf 'export SLURM_CONF=%q\n' "$SLURM_CONF" ;;
    status) status ;;
    *) echo "usage: $0 start|stop|env|status" >&2; exit 2 ;;
esac
