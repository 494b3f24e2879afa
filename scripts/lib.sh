# shellcheck shell=bash
# Shared set-up steps for scripts/up, scripts/test and .ci/run.
#
# Source this file from bash with `set -euo pipefail` in effect. Every
# ensure_* function is idempotent: when its job is already done it costs a
# quick check, so a second run of the set-up takes a few seconds. Services
# that are already running (dockerd, RabbitMQ) are reused, never restarted.

FNHOST_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$FNHOST_ROOT" || exit 1

FNHOST_SETUP_LOCK="${FNHOST_SETUP_LOCK:-/tmp/fnhost-setup.lock}"
FNHOST_DOCKERD_LOG="${FNHOST_DOCKERD_LOG:-/var/log/fnhost-dockerd.log}"
FNHOST_RABBITMQ_LOG="${FNHOST_RABBITMQ_LOG:-/var/log/fnhost-rabbitmq-start.log}"
# Open-files limit RabbitMQ is started with (see ensure_rabbitmq).
FNHOST_RABBITMQ_NOFILE="${FNHOST_RABBITMQ_NOFILE:-65536}"

_FNHOST_APT_UPDATED=0

step() { printf '==> %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# Run a command as root (directly when we already are root, else with sudo).
as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root for: $*"
    fi
}

# Seconds since the epoch with a fractional part, for timings.
now() { date +%s.%N; }
# Elapsed seconds since START (from `now`), one decimal.
elapsed_since() { awk -v s="$1" -v e="$(now)" 'BEGIN { printf "%.1f", e - s }'; }

# apt-get install PACKAGE..., running `apt-get update` once per run first.
_apt_install() {
    local -a apt=(env DEBIAN_FRONTEND=noninteractive apt-get -y -q
        -o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0)
    if [[ $_FNHOST_APT_UPDATED -eq 0 ]]; then
        as_root "${apt[@]}" update </dev/null >/dev/null
        _FNHOST_APT_UPDATED=1
    fi
    # Installing rabbitmq-server may print "invoke-rc.d: policy-rc.d denied
    # execution of start" on machines without an init system: that is fine,
    # ensure_rabbitmq starts it.
    as_root "${apt[@]}" install "$@" </dev/null >/dev/null
}

# Debian packages the platform needs on the host, each checked by a file it
# installs: docker.io, rabbitmq-server, debootstrap, wrk.
ensure_apt_packages() {
    local -a missing=()
    [[ -x /usr/sbin/dockerd ]] || missing+=(docker.io)
    [[ -x /usr/sbin/rabbitmq-server ]] || missing+=(rabbitmq-server)
    [[ -x /usr/sbin/debootstrap ]] || missing+=(debootstrap)
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    if [[ ${#missing[@]} -eq 0 ]]; then
        step "debian packages: present"
        return
    fi
    step "debian packages: installing ${missing[*]}"
    _apt_install "${missing[@]}"
}

# The Docker engine: reuse a running one, else start dockerd in the
# background and wait up to 60 s for it to answer.
ensure_dockerd() {
    if docker info >/dev/null 2>&1; then
        step "docker engine: running"
        return
    fi
    command -v dockerd >/dev/null 2>&1 || die "dockerd not found (install docker.io)"
    step "docker engine: starting dockerd (log: $FNHOST_DOCKERD_LOG)"
    local -a sudo=()
    [[ $EUID -eq 0 ]] || sudo=(sudo)
    # setsid + nohup in a subshell that exits at once: the daemon outlives
    # this script, is nobody's child but init's and is not in the terminal's
    # process group, so Ctrl-C on scripts/up does not reach it.
    local pid
    pid="$(
        exec_without_lock "${sudo[@]}" setsid nohup dockerd >>"$FNHOST_DOCKERD_LOG" 2>&1 </dev/null &
        echo $!
    )"
    local deadline=$((SECONDS + 60))
    until docker info >/dev/null 2>&1; do
        if [[ ! -d /proc/$pid ]] && ! docker info >/dev/null 2>&1; then
            tail -n 20 "$FNHOST_DOCKERD_LOG" >&2 || true
            die "dockerd exited; see $FNHOST_DOCKERD_LOG"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 20 "$FNHOST_DOCKERD_LOG" >&2 || true
            die "dockerd did not answer within 60 s; see $FNHOST_DOCKERD_LOG"
        fi
        sleep 0.5
    done
}

# True when something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# Raise this shell's open-files limit to WANT, or as far as the hard limit
# allows when that is lower (raising the hard limit needs CAP_SYS_RESOURCE,
# which a container may lack). Never lowers it. Call it in a subshell.
raise_nofile() {
    local want=$1
    [[ $(ulimit -Sn) == unlimited ]] && return
    (($(ulimit -Sn) >= want)) && return
    ulimit -n "$want" 2>/dev/null && return
    ulimit -n "$(ulimit -Hn)"
    warn "open-files limit is $(ulimit -Sn), not $want: the hard limit is lower"
}

# rabbitmq-server -detached with this shell's open-files limit. Debian's
# wrapper, run as root, switches to the rabbitmq user with su, whose
# pam_limits puts the soft limit back to 1024 (the hard limit passes): so
# switch user here and set the soft limit after su. Run as rabbitmq, the
# wrapper starts the node as the packaged service unit does (User=rabbitmq,
# LimitNOFILE=65536); its output goes to /var/log/rabbitmq/startup_log.
_start_rabbitmq_detached() {
    local server nofile
    server="$(command -v rabbitmq-server)"
    nofile="$(ulimit -Sn)"
    if id -u rabbitmq >/dev/null 2>&1; then
        as_root su rabbitmq -s /bin/sh -c "ulimit -n $nofile; exec $server -detached"
    else
        as_root "$server" -detached
    fi
}

# RabbitMQ on 127.0.0.1:5672: reuse a running broker, else
# start rabbitmq-server detached and wait for it (up to 120 s). No plugin is
# enabled. A broker started here gets FNHOST_RABBITMQ_NOFILE open files: with
# the common default of 1024, a vhost start under test load blocked on file
# handles and wedged rabbitmqctl. A running broker keeps the limit it has.
ensure_rabbitmq() {
    if port_open 5672; then
        step "rabbitmq: running on 127.0.0.1:5672"
        return
    fi
    command -v rabbitmq-server >/dev/null 2>&1 || die "rabbitmq-server not found (install rabbitmq-server)"
    local deadline=$((SECONDS + 120))
    if rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
        # The node is up but its AMQP listener is not yet: another run is
        # starting it. Wait for that one instead of starting a second node.
        step "rabbitmq: node is starting, waiting"
    else
        step "rabbitmq: starting rabbitmq-server (log: $FNHOST_RABBITMQ_LOG)"
        # The limit is raised in a subshell: only the broker inherits it.
        (
            raise_nofile "$FNHOST_RABBITMQ_NOFILE"
            without_lock _start_rabbitmq_detached >>"$FNHOST_RABBITMQ_LOG" 2>&1 </dev/null
        ) ||
            die "rabbitmq-server -detached failed; see $FNHOST_RABBITMQ_LOG and /var/log/rabbitmq/"
    fi
    # The AMQP listener opens near the end of the boot; await_startup then
    # confirms the broker is fully up.
    until port_open 5672; do
        ((SECONDS < deadline)) || die "rabbitmq did not listen on 127.0.0.1:5672 within 120 s; see /var/log/rabbitmq/"
        sleep 0.5
    done
    local left=$((deadline - SECONDS))
    ((left > 5)) || left=5
    rabbitmqctl -q await_startup --timeout "$left" >/dev/null ||
        die "rabbitmq did not finish starting; see /var/log/rabbitmq/"
}

# ensure_vhost NAME [USER]: the RabbitMQ vhost NAME exists and USER (default
# guest) may use it fully.
ensure_vhost() {
    local vhost=$1 user=${2:-guest}
    # One call answers both questions: USER has permissions on NAME only if
    # NAME exists.
    if rabbitmqctl -s list_user_permissions "$user" 2>/dev/null |
        awk -F'\t' -v v="$vhost" '$1 == v { found = 1 } END { exit !found }'; then
        step "rabbitmq vhost $vhost: present"
        return
    fi
    step "rabbitmq vhost $vhost: creating"
    local out
    # add_vhost fails when the vhost exists (another run may have just made
    # it): only a vhost that is still missing afterwards is an error.
    if ! out="$(rabbitmqctl -q add_vhost "$vhost" 2>&1)" &&
        ! rabbitmqctl -s list_vhosts name | grep -qxF -- "$vhost"; then
        printf '%s\n' "$out" >&2
        die "could not create the rabbitmq vhost $vhost"
    fi
    rabbitmqctl -q set_permissions -p "$vhost" "$user" ".*" ".*" ".*" >/dev/null
}

# The platform's RabbitMQ account (scripts/up): a user of its own, not guest.
FNHOST_RABBITMQ_USER="${FNHOST_RABBITMQ_USER:-fnhost}"
FNHOST_RABBITMQ_VHOST="${FNHOST_RABBITMQ_VHOST:-fnhost}"

# rabbitmq_user_exists USER
rabbitmq_user_exists() {
    rabbitmqctl -s list_users 2>/dev/null |
        awk -F'\t' -v u="$1" '$1 == u { found = 1 } END { exit !found }'
}

# ensure_platform_amqp: the platform's RabbitMQ user FNHOST_RABBITMQ_USER with
# a password generated once and kept in $FNHOST_DATA_DIR/rabbitmq-password
# (mode 0600), allowed on the vhost FNHOST_RABBITMQ_VHOST only (guest gets no
# permission there), and FNHOST_AMQP_URL exported with it. A FNHOST_AMQP_URL
# already set is kept as it is. Passwords go to rabbitmqctl on its standard
# input, never on a command line (which `ps` shows to every user).
ensure_platform_amqp() {
    if [[ -n ${FNHOST_AMQP_URL:-} ]]; then
        step "rabbitmq user: FNHOST_AMQP_URL is set, using it"
        return
    fi
    [[ -n ${FNHOST_DATA_DIR:-} ]] || die "FNHOST_DATA_DIR is not set"
    local user=$FNHOST_RABBITMQ_USER vhost=$FNHOST_RABBITMQ_VHOST
    local file="$FNHOST_DATA_DIR/rabbitmq-password" password
    if [[ ! -s $file ]]; then
        step "rabbitmq user $user: generating a password in $file"
        # 24 random bytes as hex: nothing to escape in a URL. Written under
        # umask 077 and renamed into place, so it is never readable by others
        # nor seen half-written.
        (
            umask 077
            od -An -N24 -tx1 /dev/urandom | tr -d ' \n' >"$file.new" &&
                mv -f "$file.new" "$file"
        ) || die "could not write $file"
    fi
    chmod 600 "$file"
    password="$(<"$file")"
    [[ $password =~ ^[0-9a-f]{48}$ ]] || die "$file does not hold a generated password (remove it to make a new one)"
    if ! rabbitmq_user_exists "$user"; then
        step "rabbitmq user $user: creating"
        # add_user fails when another run has just made the user: the
        # password check below settles it.
        printf '%s' "$password" | rabbitmqctl -q add_user "$user" >/dev/null 2>&1 ||
            rabbitmq_user_exists "$user" || die "could not create the rabbitmq user $user"
    fi
    if ! printf '%s' "$password" | rabbitmqctl -q authenticate_user "$user" >/dev/null 2>&1; then
        # The user was made with another password file (a data directory
        # removed since): this one is the password now.
        step "rabbitmq user $user: setting the password from $file"
        printf '%s' "$password" | rabbitmqctl -q change_password "$user" >/dev/null ||
            die "could not set the password of the rabbitmq user $user"
    fi
    ensure_vhost "$vhost" "$user"
    export FNHOST_AMQP_URL="amqp://$user:$password@127.0.0.1:5672/$vhost"
    step "rabbitmq user $user: ready on vhost $vhost"
}

# Print the name of a Python 3.11 interpreter on PATH.
_python311() {
    local candidate
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    return 1
}

# The project's virtualenv in .venv, with `pip install -e '.[embedded,test]'`
# re-run only when pyproject.toml changed since the last successful install.
ensure_venv() {
    local venv="$FNHOST_ROOT/.venv"
    local stamp="$venv/.fnhost-installed"
    if [[ -d $venv ]] && ! "$venv/bin/python" -c \
        'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
        step "venv: .venv is broken or not Python 3.11, recreating"
        rm -rf "$venv"
    fi
    if [[ ! -d $venv ]]; then
        local py
        py="$(_python311)" || die "Python 3.11 not found on PATH (python3.11 or python3)"
        if ! "$py" -c 'import ensurepip, venv' 2>/dev/null; then
            # Debian's own python3.11 needs python3.11-venv for `-m venv`.
            step "venv: installing python3.11-venv"
            _apt_install python3.11-venv
        fi
        step "venv: creating .venv with $py"
        "$py" -m venv "$venv"
    fi
    local want have=""
    want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
    [[ -f $stamp ]] && have="$(<"$stamp")"
    if [[ $want == "$have" ]]; then
        step "venv: up to date"
        return
    fi
    step "venv: pip install -e '.[embedded,test]'"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/python" -m pip install -q \
        -e '.[embedded,test]' </dev/null
    printf '%s\n' "$want" >"$stamp"
}

# The function runtime image (fnhost/python3.11); scripts/build-image is
# idempotent and returns quickly when its inputs have not changed.
ensure_image() {
    local builder="$FNHOST_ROOT/scripts/build-image"
    [[ -f $builder ]] || die "scripts/build-image is missing"
    step "runtime image: scripts/build-image"
    if [[ -x $builder ]]; then
        "$builder"
    else
        bash "$builder"
    fi
}

# Every step above, in order. Runs of the set-up on one machine are
# serialised with a lock so that two of them never install or start the same
# thing at once.
setup_all() {
    exec {FNHOST_LOCK_FD}>>"$FNHOST_SETUP_LOCK"
    if ! flock -n "$FNHOST_LOCK_FD"; then
        step "set-up: waiting for another run's set-up to finish"
        flock -w 900 "$FNHOST_LOCK_FD" || die "could not take $FNHOST_SETUP_LOCK within 900 s"
    fi
    ensure_apt_packages
    ensure_dockerd
    ensure_rabbitmq
    ensure_venv
    ensure_image
    # Close the lock so that processes started later (scripts/up execs the
    # platform) do not hold it.
    exec {FNHOST_LOCK_FD}>&-
    unset FNHOST_LOCK_FD
}

# Runs a command without the set-up lock's descriptor: a daemon that inherited
# it (dockerd, RabbitMQ) would hold the lock for as long as it runs.
# exec_without_lock is for a background job (`exec_without_lock cmd &`): the
# job's subshell drops the descriptor and becomes the command, so no shell
# holding it is left waiting for the daemon.
exec_without_lock() {
    if [[ -n ${FNHOST_LOCK_FD:-} ]]; then
        exec {FNHOST_LOCK_FD}>&-
    fi
    exec "$@"
}

without_lock() {
    if [[ -n ${FNHOST_LOCK_FD:-} ]]; then
        "$@" {FNHOST_LOCK_FD}>&-
    else
        "$@"
    fi
}
